"""Soak: the two invariants under churn, crashes and inventory flaps on the local cluster (issue 12).

    python bench/soak.py --minutes 30 --json OUT.json [--nodes 500] [--seed 1]

One local control plane (e2e.cluster) with N kwok nodes of 1-8 fake GPUs and the gpupool stack (e2e.stack) on it.
For ``--minutes``:

* **churn**: ordinary gpupool pods (webhooks, queue admission, the scheduler and the extender) are created at a
  steady rate in two namespaces, each served by a GPUQueue, with random slice sizes (10-50 % slices, a whole GPU,
  two whole GPUs); each lives an exponentially distributed time, then is deleted, bound or not. A share of them
  select the few "hot" nodes, so those GPUs stay full and pods wait for room there.
* **crashes**: every few minutes (random) the extender, the controller or the node agent (the multi-node GPUNode
  publisher) is SIGKILLed and restarted.
* **flaps**: a GPU leaves a GPUNode's ``status.gpus`` and returns, or a GPUNode is deleted and re-created.
* **sampling**: once a second, a recount from API objects (the bound pods' verified assignments against the GPUs
  of ``status.gpus``); a sample where a GPU is over compute or memory capacity counts in ``over_capacity_samples``.

At the end (churn stopped, every flap undone, pods settled): each component's ledger against the recount (the
extender's ``/debug/pool``, the controller's ``gpupool_gpu_allocated`` metric), every bound pod's assignment (valid
signature, its own uid and node, held in the extender's ledger with the same slices), and every pending pod that
could fit on a GPU the recount shows free. Exit 1 if an invariant broke. Results and settings: docs/e2e.md "Soak".
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e_throughput import Api, pool  # noqa: E402
from e2e.cluster import Cluster, FakeNode  # noqa: E402
from e2e.stack import CONTROLLER, EXTENDER, PUBLISHER, Stack  # noqa: E402
from gpupool import assignment as assignment_format  # noqa: E402
from gpupool import objects, resources  # noqa: E402
from gpupool.errors import AssignmentError  # noqa: E402
from gpupool.signing_key import read_keys  # noqa: E402

GPUNODES = f"/apis/{objects.GROUP}/{objects.VERSION}/gpunodes"
SOAK_LABEL = "soak.gpupool.io/pod"
HOT_LABEL = "soak.gpupool.io/hot"
QUEUES = ("soak-a", "soak-b")  # pods for any node
HOT = "soak-hot"  # pods for the hot nodes: a queue of their own, as a blocked head holds back its queue
IMAGE = "registry.k8s.io/pause:3.10"
#: (gpus, compute %, memory MiB or None = whole memory): the pod sizes, drawn uniformly
SIZES: tuple[tuple[int, int, int | None], ...] = (
    (1, 10, 2048), (1, 25, 4096), (1, 30, 6144), (1, 50, 8192), (1, 100, None), (2, 100, None),
)  # fmt: skip
COMPONENTS = (EXTENDER, CONTROLLER, PUBLISHER)
DETAILS = 20  # examples kept per broken invariant


# ------------------------------------------------------------------------------------------------ recount


@dataclass
class Recount:
    """What the API objects say: GPU capacities, and per GPU the slices of bound pods' verified assignments."""

    gpus: dict[str, tuple[str, int]] = field(default_factory=dict)  # uuid -> (node, memory MiB) in status.gpus
    node_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    used: dict[str, list[int]] = field(default_factory=dict)  # uuid -> [compute, memory, slices]
    holdings: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)  # uid -> sorted slices
    bound: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> pod
    pending: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)  # bound pods without a valid assignment of their own
    on_gpu: dict[str, list[str]] = field(default_factory=dict)  # uuid -> "ns/name compute/memory", for reports

    def over_capacity(self) -> list[str]:
        out = []
        for uuid, (c, m, _) in self.used.items():
            if uuid not in self.gpus:
                continue  # a GPU out of status.gpus (a flap): its pods stay, nothing can be placed on it
            cap = self.gpus[uuid][1]
            if c > 100 or m > cap:
                out.append(f"{uuid}: compute {c}/100, memory {m}/{cap}")
        return out


def live(pod: Mapping[str, Any]) -> bool:
    """Not finished. A pod being deleted still runs on its GPUs until it is gone: it counts."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def recount(api: Api, keys_dir: Path) -> Recount:
    r = Recount()
    for gn in api.request("GET", GPUNODES)["items"]:
        for g in (gn.get("status") or {}).get("gpus") or []:
            r.gpus[g["uuid"]] = (gn["metadata"]["name"], int(g["memoryMiB"]))
    keys = read_keys(keys_dir)
    for p in api.request("GET", f"/api/v1/pods?labelSelector={SOAK_LABEL}")["items"]:
        if not live(p):
            continue
        meta, node = p["metadata"], (p.get("spec") or {}).get("nodeName")
        if not node:
            if not meta.get("deletionTimestamp"):
                r.pending.append(p)
            continue
        uid = meta["uid"]
        r.bound[uid] = p
        text = (meta.get("annotations") or {}).get(resources.ASSIGNMENT)
        try:
            a = assignment_format.verify(text, keys)
            if a.pod != uid or a.node != node:
                raise AssignmentError(f"assignment names pod {a.pod} on {a.node}")
        except AssignmentError as e:
            r.invalid.append(f"{meta['namespace']}/{meta['name']} on {node}: {e}")
            continue
        r.holdings[uid] = sorted((s.gpu, s.compute, s.memory_mib) for s in a.slices)
        for s in a.slices:
            u = r.used.setdefault(s.gpu, [0, 0, 0])
            u[0] += s.compute
            u[1] += s.memory_mib
            u[2] += 1
            gone = " (deleted)" if meta.get("deletionTimestamp") else ""
            r.on_gpu.setdefault(s.gpu, []).append(f"{objects.pod_key(p)} {s.compute}/{s.memory_mib}{gone}")
    return r


def node_labels(api: Api) -> dict[str, dict[str, str]]:
    items = api.request("GET", "/api/v1/nodes")["items"]
    return {n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in items}


def could_fit(pod: Mapping[str, Any], r: Recount, labels: Mapping[str, Mapping[str, str]]) -> str | None:
    """A GPU set the recount shows free for this pending pod (its node selector honoured), or None."""
    spec = pod.get("spec") or {}
    limits = spec["containers"][0]["resources"]["limits"]
    n = int(limits[resources.GPU])
    compute = int(limits.get(resources.GPU_COMPUTE, 100))
    sel = spec.get("nodeSelector") or {}
    by_node: dict[str, list[str]] = {}
    for uuid, (node, _) in r.gpus.items():
        by_node.setdefault(node, []).append(uuid)
    for node, uuids in sorted(by_node.items()):
        if any(labels.get(node, {}).get(k) != v for k, v in sel.items()):
            continue
        free = []
        for uuid in uuids:
            c, m, _ = r.used.get(uuid, [0, 0, 0])
            mem = int(limits.get(resources.GPU_MEMORY, r.gpus[uuid][1]))
            whole = resources.GPU_MEMORY not in limits
            if (c == 0 and m == 0) if whole else (c + compute <= 100 and m + mem <= r.gpus[uuid][1]):
                free.append(uuid)
        if len(free) >= n:
            return f"{node}: {free[:n]}"
    return None


def heads(pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pending pods gpupool must have run if they fit: every one of the any-node queues (the pool is far from
    full), only the first in line of the hot queue (BestEffortFIFO lets no larger pod pass a blocked head; a
    smaller one may, but need not be checked here)."""
    out = [p for p in pending if p["metadata"]["namespace"] != HOT]
    hot = sorted((p for p in pending if p["metadata"]["namespace"] == HOT),
                 key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))  # fmt: skip
    return out + hot[:1]


def pending_state(pod: Mapping[str, Any]) -> str:
    """Why a pending pod waits, as its object tells: scheduling gates, the PodScheduled condition."""
    gates = [g.get("name") for g in (pod.get("spec") or {}).get("schedulingGates") or []]
    conds = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
    said = "; ".join(f"{t} {c.get('status')} {c.get('lastTransitionTime')} {str(c.get('message'))[:200]}"
                     for t, c in conds.items())  # fmt: skip
    return f"gates {gates}, created {pod['metadata'].get('creationTimestamp')}; {said}"


# ------------------------------------------------------------------------------------------------ ledgers


def extender_mismatches(stack: Stack, r: Recount) -> list[str]:
    snap = stack.debug_pool()
    out = []
    ledger_gpus = {g["uuid"]: g for n in snap["nodes"].values() for g in n["gpus"]}
    for uuid in sorted(set(r.gpus) | set(ledger_gpus)):
        g = ledger_gpus.get(uuid)
        want = r.used.get(uuid, [0, 0, 0]) if uuid in r.gpus else None
        have = None if g is None else [g["used_compute"], g["used_memory_mib"], g["slices"]]
        if have != want:
            out.append(f"extender GPU {uuid}: ledger {have}, recount {want} ({', '.join(r.on_gpu.get(uuid, []))})")
    held = {
        uid: sorted((s["gpu"], int(s["compute"]), int(s["memory"])) for s in h["slices"])
        for uid, h in snap["holdings"].items()
    }  # fmt: skip
    for uid in sorted(set(held) | set(r.holdings)):
        if held.get(uid) != r.holdings.get(uid):
            out.append(f"extender holding {uid}: ledger {held.get(uid)}, recount {r.holdings.get(uid)}")
    return out


_ALLOC = re.compile(r'^gpupool_gpu_allocated\{([^}]*)\} (\S+)$', re.M)


def controller_mismatches(stack: Stack, r: Recount) -> list[str]:
    have: dict[str, list[int]] = {}
    for labels, value in _ALLOC.findall(stack.controller_metrics()):
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        have.setdefault(lab["gpu"], [0, 0])[0 if lab["resource"] == "compute" else 1] = int(float(value))
    out = []
    for uuid in sorted(r.gpus):  # gauges of GPUs gone from the pool keep their last value: only present GPUs
        want = r.used.get(uuid, [0, 0, 0])[:2]
        if have.get(uuid) != want:
            out.append(f"controller GPU {uuid}: gpupool_gpu_allocated {have.get(uuid)}, recount {want} "
                       f"({', '.join(r.on_gpu.get(uuid, []))})")
    return out


# ------------------------------------------------------------------------------------------------ the run


class Soak:
    def __init__(self, args: argparse.Namespace, c: Cluster, stack: Stack, api: Api) -> None:
        self.args, self.c, self.stack, self.api = args, c, stack, api
        self.rng = random.Random(args.seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.created = 0
        self.create_errors = 0
        self.deleted = 0
        self.deadlines: dict[tuple[str, str], float] = {}  # (ns, name) -> when to delete
        self.bound_uids: set[str] = set()
        self.samples = 0
        self.sample_errors = 0
        self.over: list[str] = []
        self.over_samples = 0
        self.invalid_seen: dict[str, str] = {}
        self.kills: Counter[str] = Counter()
        self.restart_s: list[float] = []
        self.flaps: Counter[str] = Counter()
        self.errors: list[str] = []
        self.hot = [n.name for n in stack.nodes if n.labels.get(HOT_LABEL)]

    def log(self, msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    def guarded(self, name: str, fn: Any) -> threading.Thread:
        def run() -> None:
            try:
                fn()
            except Exception:
                self.errors.append(f"{name}: {traceback.format_exc()}")
                self.log(f"{name} crashed:\n{traceback.format_exc()}")

        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        return t

    # -- churn

    def pod_body(self, name: str, rng: random.Random, hot: bool) -> dict[str, Any]:
        gpus, compute, memory = rng.choice(SIZES)
        limits = {resources.GPU: str(gpus)}
        if compute < 100 or memory is not None:
            limits[resources.GPU_COMPUTE] = str(compute)
            if memory is not None:
                limits[resources.GPU_MEMORY] = str(memory)
        spec: dict[str, Any] = {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": IMAGE, "resources": {"limits": limits}}],
        }
        if hot:
            spec["nodeSelector"] = {HOT_LABEL: "true"}
        meta = {"name": name, "labels": {SOAK_LABEL: "1"}}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}

    def churn(self) -> None:
        rng = random.Random(self.args.seed + 1)
        period = 1.0 / self.args.rate
        nxt = time.monotonic()
        while not self.stop.is_set():
            hot = rng.random() < self.args.hot_share
            ns = HOT if hot else rng.choice(QUEUES)
            name = f"p-{self.created:06d}"
            try:
                self.api.request("POST", f"/api/v1/namespaces/{ns}/pods", self.pod_body(name, rng, hot))
                with self.lock:
                    self.deadlines[(ns, name)] = time.monotonic() + rng.expovariate(1.0 / self.args.lifetime)
            except Exception as e:  # an admission webhook down for a moment (controller restarting): counted
                self.create_errors += 1
                if self.create_errors <= DETAILS:
                    self.log(f"create {ns}/{name}: {str(e)[:240]}")
            self.created += 1
            nxt += period
            self.stop.wait(max(0.0, nxt - time.monotonic()))

    def reaper(self) -> None:
        """Deletes each pod when its lifetime is up (its own thread: a slow API server does not slow creation)."""
        while not self.stop.wait(0.5):
            now = time.monotonic()
            with self.lock:
                due = sorted(k for k, t in self.deadlines.items() if t <= now)
                for k in due:
                    del self.deadlines[k]
            for ns, n in due:
                try:
                    self.api.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{n}")
                    self.deleted += 1
                except Exception as e:
                    if "404" not in str(e):
                        self.log(f"delete {ns}/{n}: {str(e)[:240]}")

    # -- crashes

    def chaos(self) -> None:
        rng = random.Random(self.args.seed + 2)
        while not self.stop.wait(rng.uniform(0.5, 1.5) * self.args.kill_every):
            name = rng.choice(COMPONENTS)
            self.log(f"SIGKILL {name}")
            self.stack.kill(name)
            self.kills[name] += 1
            time.sleep(rng.uniform(0.0, 3.0))
            t0 = time.monotonic()
            self.c.restart_process(name, ready_timeout=600)
            self.restart_s.append(time.monotonic() - t0)
            self.log(f"{name} back in {time.monotonic() - t0:.1f} s")

    # -- flaps

    def gpunode(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.api.request("GET", f"{GPUNODES}/{name}"))
        except RuntimeError as e:
            if "404" in str(e):
                return None
            raise

    def set_gpus(self, name: str, gpus: list[dict[str, Any]]) -> None:
        self.api.request("PATCH", f"{GPUNODES}/{name}/status", {"status": {"gpus": gpus}},
                         "application/merge-patch+json")  # fmt: skip

    def restore(self, name: str, status: Mapping[str, Any]) -> None:
        """The GPUNode back as the agent published it (re-created if gone)."""
        if self.gpunode(name) is None:
            body = {"apiVersion": objects.API_VERSION, "kind": "GPUNode", "metadata": {"name": name}, "spec": {}}
            try:
                self.api.request("POST", GPUNODES, body)
            except RuntimeError as e:
                if "409" not in str(e):
                    raise
        keep = {k: status[k] for k in ("gpus", "agentEndpoint", "slotsPerGPU", "remoteSlots") if k in status}
        keep["heartbeatTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.api.request("PATCH", f"{GPUNODES}/{name}/status", {"status": keep}, "application/merge-patch+json")

    def flap(self) -> None:
        rng = random.Random(self.args.seed + 3)
        gpu_nodes = [n.name for n in self.stack.nodes if n.gpus]
        while not self.stop.wait(rng.uniform(0.5, 1.5) * self.args.flap_every):
            # hot nodes carry the load: flap them half of the time
            name = rng.choice(self.hot) if self.hot and rng.random() < 0.5 else rng.choice(gpu_nodes)
            gn = self.gpunode(name)
            if gn is None or not (gn.get("status") or {}).get("gpus"):
                continue
            status = gn["status"]
            kind = rng.choice(("gpu", "gpunode"))
            try:
                if kind == "gpu":
                    gpus = list(status["gpus"])
                    gone = gpus.pop(rng.randrange(len(gpus)))
                    self.log(f"flap: GPU {gone['uuid']} leaves {name}")
                    self.set_gpus(name, gpus)
                else:
                    self.log(f"flap: GPUNode {name} deleted")
                    self.api.request("DELETE", f"{GPUNODES}/{name}")
                self.flaps[kind] += 1
                time.sleep(rng.uniform(1.0, 10.0))
            finally:
                self.restore(name, status)

    # -- sampling

    def sampler(self) -> None:
        while not self.stop.wait(1.0):
            try:
                r = recount(self.api, self.stack.key_dir)
            except Exception as e:
                self.sample_errors += 1
                self.log(f"sample: {e}")
                continue
            self.samples += 1
            self.bound_uids |= r.bound.keys()
            over = r.over_capacity()
            if over:
                self.over_samples += 1
                self.log(f"OVER CAPACITY: {over}")
                self.over.extend(over[: DETAILS - len(self.over)])
            for line in r.invalid:
                self.invalid_seen.setdefault(line.split(" ", 1)[0], line)

    # -- the end

    def settle(self) -> tuple[Recount, list[str], list[str], list[str]]:
        """Churn stopped: wait (bounded) until pending pods that could fit are bound and the ledgers agree."""
        labels = node_labels(self.api)
        deadline = time.monotonic() + self.args.settle
        while True:
            r = recount(self.api, self.stack.key_dir)
            fit = [f"{p['metadata']['namespace']}/{p['metadata']['name']} fits {w}; {pending_state(p)}"
                   for p in heads(r.pending) if (w := could_fit(p, r, labels))]  # fmt: skip
            try:
                ext, ctl = extender_mismatches(self.stack, r), controller_mismatches(self.stack, r)
            except Exception as e:
                ext, ctl = [f"extender or controller unreachable: {e}"], []
            if (not fit and not ext and not ctl) or time.monotonic() > deadline:
                return r, fit, ext, ctl
            time.sleep(2.0)


def make_nodes(n: int, seed: int) -> list[FakeNode]:
    rng = random.Random(seed)
    hot = max(2, n // 60)
    out = []
    for i in range(n):
        labels = {HOT_LABEL: "true"} if i < hot else {}
        gpus = 2 if i < hot else rng.choice((1, 2, 4, 8))
        out.append(FakeNode(f"s-{i:04d}", gpus=gpus, gpu_model="A100-40GB", gpu_memory_mib=40960, labels=labels))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=float, default=1.5, help="pods created per second")
    ap.add_argument("--lifetime", type=float, default=90.0, help="mean seconds a pod lives before it is deleted")
    ap.add_argument("--hot-share", type=float, default=0.3, help="share of pods that select the hot nodes")
    ap.add_argument("--kill-every", type=float, default=120.0, help="mean seconds between two SIGKILLs")
    ap.add_argument("--flap-every", type=float, default=20.0, help="mean seconds between two GPUNode flaps")
    ap.add_argument("--settle", type=float, default=180.0, help="seconds the end waits for pods and ledgers")
    ap.add_argument("--keep", action="store_true", help="leave the run directory (logs)")
    args = ap.parse_args()

    nodes = make_nodes(args.nodes, args.seed)
    run_dir = Path(tempfile.mkdtemp(prefix="gpupool-soak-"))
    print(f"# run dir {run_dir}", flush=True)
    c = Cluster(run_dir=run_dir, nodes=[])
    stack = Stack(c, nodes=nodes, scheduler_verbosity=1,
                  publisher_env={"GPUPOOL_HEARTBEAT_INTERVAL_SECONDS": "60"})  # fmt: skip
    ok = False
    try:
        t0 = time.monotonic()
        c.up(nodes=False)
        api = Api(c)
        pool(8)(lambda n: api.request("POST", "/api/v1/nodes", n.manifest()), nodes)
        c.wait_nodes_ready([n.name for n in nodes], timeout=1800)
        stack.up(timeout=1800)
        for ns in (*QUEUES, HOT):
            api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": ns}})  # fmt: skip
            c.create_namespace(ns)
            api.request("POST", f"/apis/{objects.GROUP}/{objects.VERSION}/gpuqueues", {
                "apiVersion": objects.API_VERSION, "kind": "GPUQueue", "metadata": {"name": ns},
                "spec": {"namespaces": [ns], "nominalQuota": {"compute": 1_000_000}},
            })  # fmt: skip
        time.sleep(2.0)  # the controller and the webhook see the queues
        setup_s = time.monotonic() - t0
        print(f"# cluster, {args.nodes} nodes ({sum(n.gpus for n in nodes)} GPUs) and stack up in {setup_s:.0f} s",
              flush=True)  # fmt: skip
        s = Soak(args, c, stack, api)
        threads = [s.guarded(n, f) for n, f in
                   (("sampler", s.sampler), ("churn", s.churn), ("reaper", s.reaper), ("chaos", s.chaos),
                    ("flap", s.flap))]  # fmt: skip
        t_run = time.monotonic()
        s.stop.wait(args.minutes * 60)
        s.stop.set()
        for t in threads:
            t.join(900)
        run_s = time.monotonic() - t_run
        s.log("churn stopped; settling")
        # a component left dead by a crashed chaos thread would hide everything else: make sure all run
        for name in COMPONENTS:
            if not c.processes[name].alive():
                c.restart_process(name, ready_timeout=600)
        r, fit, ext, ctl = s.settle()
        snap = stack.debug_pool()
        lost = list(r.invalid)
        for uid, pod in sorted(r.bound.items()):
            if uid in r.holdings and uid not in snap["holdings"]:
                lost.append(f"{pod['metadata']['namespace']}/{pod['metadata']['name']}: not in the extender's ledger")
        out: dict[str, Any] = {
            "minutes": round(run_s / 60, 2),
            "nodes": args.nodes,
            "gpus": sum(n.gpus for n in nodes),
            "seed": args.seed,
            "pods_created": s.created,
            "pods_deleted": s.deleted,
            "pods_bound": len(s.bound_uids | r.bound.keys()),
            "pods_bound_at_end": len(r.bound),
            "pods_pending_at_end": len(r.pending),
            "create_errors": s.create_errors,
            "kills": sum(s.kills.values()),
            "kills_by_component": dict(s.kills),
            "restart_seconds_max": round(max(s.restart_s), 1) if s.restart_s else None,
            "flaps": dict(s.flaps),
            "samples": s.samples,
            "sample_errors": s.sample_errors,
            "over_capacity_samples": s.over_samples,
            "lost_assignments": len(lost),
            "invalid_assignments_seen": len(s.invalid_seen),
            "ledger_mismatches": len(ext) + len(ctl),
            "ledger_mismatches_by_component": {"extender": len(ext), "controller": len(ctl)},
            "unscheduled_but_fit": len(fit),
            "harness_errors": len(s.errors),
            "setup_seconds": round(setup_s, 1),
            "details": {
                "over_capacity": s.over[:DETAILS], "lost": lost[:DETAILS], "extender": ext[:DETAILS],
                "controller": ctl[:DETAILS], "unscheduled_but_fit": fit[:DETAILS],
                "invalid_seen": list(s.invalid_seen.values())[:DETAILS], "harness_errors": s.errors[:DETAILS],
            },
        }  # fmt: skip
        ok = not (s.over_samples or lost or ext or ctl or fit or s.errors or s.invalid_seen)
        out["ok"] = ok
        print(json.dumps({k: v for k, v in out.items() if k != "details"}), flush=True)
        if not ok:
            print(json.dumps(out["details"], indent=2), flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2) + "\n")
    finally:
        stack.down()
        c.down(remove_run_dir=ok and not args.keep)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
