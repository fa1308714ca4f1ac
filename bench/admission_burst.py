"""A burst of ordinary pods through the controller's adapter, in process: time to ungate them all, CPU per pod.

Setup: `controller.runtime.Controller` over N GPUNodes x 8 GPUs (80 GiB) and one GPUQueue with room for every
pod, fed as its watches would feed it; M gated pods (one GPU each by default, `--fraction` for 25 % slices)
arrive at once, then the cycle runs (`Controller.cycle`, as `run_cycles` would) until every pod is ungated.
The API is a fake whose every write costs `--write-ms` in a worker thread (the real client's calls run in
threads too), and whose writes of the pod come back through the pod watch (`on_pod`), as kopf would deliver
them. Measured: wall seconds from the burst to the last gate removal, per-pod latency (burst -> its gate
removal) p50/p99, the controller's CPU ms per pod, and the cycles taken. `--preempt-heads K` adds K blocked
queues whose head may preempt (best-effort pods fill part of the pool), to time `find_preemption` per cycle.
`--profile OUT` writes a cProfile of the run (pstats).

`--kopf` delivers the pod events (the burst's ADDED, every write's MODIFIED) the way `gpupool-controller` receives
them: since session 10 its own pod watch's (`Controller.on_pod_event`, each object decoded from JSON, on a thread
of its own); in a checkout before that (`--code`), kopf's event processing to the handlers `controller.handlers`
registers, with the settings it gives kopf, one object's events in order, on the loop the cycle runs on. The pods
then carry what the API server adds to a pod (service-account volume, tolerations, managedFields): the cost per
event grows with the pod.
`--code=DIR` runs another checkout's controller (e.g. --code=/work/main, for a before/after).

    .venv/bin/python bench/admission_burst.py [--nodes 1000 --pods 1000 --write-ms 5] [--kopf] [--json OUT]
        [--profile OUT] [--code=DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import json
import statistics
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

# `--code=DIR`: gpupool and controller from that checkout
sys.path.insert(0, next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--code=")),
                        str(Path(__file__).resolve().parents[1])))  # fmt: skip

from controller.runtime import Controller
from controller.settings import ControllerSettings
from gpupool import resources, timefmt


class BurstKube:
    """The API as the controller sees it: every write takes `write_s` in a thread; pod writes are echoed."""

    def __init__(self, write_s: float) -> None:
        self.write_s = write_s
        self.controller: Controller | None = None
        self.ungated: dict[str, float] = {}  # "ns/name" -> when its gate came off (perf_counter)
        self.writes = 0
        self.pods: dict[str, dict[str, Any]] = {}  # "ns/name" -> the pod as the API server has it
        self.threads = ThreadPoolExecutor(max_workers=32)  # as many as controller.kube.Kube's
        self.kopf: WatchEvents | KopfEvents | None = None  # `--kopf`: events as gpupool-controller receives them

    async def _write(self) -> None:
        self.writes += 1
        if self.write_s > 0:
            await asyncio.get_running_loop().run_in_executor(self.threads, time.sleep, self.write_s)

    def _echo(self, key: str) -> None:
        c = self.controller
        if self.kopf is not None and key in self.pods:
            self.kopf.deliver("MODIFIED", self.pods[key])
        elif c is not None and key in self.pods:
            with c.lock:
                c.on_pod("MODIFIED", self.pods[key])

    async def remove_gate(self, namespace: str, name: str, uid: str, gates: list[dict[str, Any]],
                          queue: str | None = None) -> None:  # fmt: skip
        await self._write()
        key = f"{namespace}/{name}"
        pod = self.pods[key]
        meta = pod["metadata"]
        if queue:  # recorded in the same write (controller/kube.py)
            meta = {**meta, "annotations": {**meta.get("annotations", {}), resources.QUEUE: queue}}
        self.pods[key] = {**pod, "metadata": meta, "spec": {**pod["spec"], "schedulingGates": []}}
        self.ungated[key] = time.perf_counter()
        self._echo(key)

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, Any]) -> None:
        await self._write()
        key = f"{namespace}/{name}"
        pod = self.pods[key]
        merged = {k: v for k, v in {**pod["metadata"].get("annotations", {}), **annotations}.items() if v is not None}
        self.pods[key] = {**pod, "metadata": {**pod["metadata"], "annotations": merged}}
        self._echo(key)

    async def set_pod_condition(self, namespace: str, name: str, condition: dict[str, Any]) -> None:
        await self._write()
        key = f"{namespace}/{name}"
        pod = self.pods[key]
        others = [c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") != condition["type"]]
        self.pods[key] = {**pod, "status": {**pod.get("status", {}), "conditions": [*others, condition]}}
        self._echo(key)

    async def evict(self, namespace: str, name: str, *, dry_run: bool = False) -> bool:
        await self._write()
        return True

    async def event(self, pod: dict[str, Any], reason: str, message: str, type_: str = "Normal") -> None:
        await self._write()

    async def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        await self._write()

    async def list_pods(self) -> list[dict[str, Any]]:
        return list(self.pods.values())

    async def get_object(self, path: str) -> dict[str, Any] | None:
        return None


class WatchEvents:
    """Pod events as the controller's pod watch delivers them (`controller.handlers.startup`): JSON decoded by
    `kubeio.client.loads`, then `Controller.on_pod_event` (it takes the lock), in order, on one thread."""

    def __init__(self, c: Controller) -> None:
        from kubeio.client import dumps, loads

        self.c, self.dumps, self.loads = c, dumps, loads
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pod-watch")
        self.last: Future[None] | None = None
        self.events = 0

    def deliver(self, kind: str, pod: dict[str, Any]) -> None:
        data = self.dumps(pod)  # what the watch reads: the object shares nothing with the fake's
        self.last = self.thread.submit(lambda: self.c.on_pod_event(kind, self.loads(data)))
        self.events += 1

    async def drain(self) -> None:
        if self.last is not None:
            await asyncio.wrap_future(self.last)


class KopfEvents:
    """Pod events through kopf's `process_resource_event` and the handlers `controller.handlers` registers, one
    object's events in order (kopf runs one worker per object), as tasks on the running loop."""

    def __init__(self) -> None:
        import kopf
        from kopf._cogs.structs import ephemera, references
        from kopf._core.actions import lifecycles
        from kopf._core.engines import indexing
        from kopf._core.intents import registries
        from kopf._core.reactor import inventory, processing

        from controller import handlers

        settings = kopf.OperatorSettings()
        configure = getattr(handlers, "configure", None)  # absent before issue 16's change: kopf's defaults
        if configure is not None:
            configure(settings)
        resource = references.Resource(group="", version="v1", plural="pods", kind="Pod", singular="pod",
                                       namespaced=True, verbs=frozenset({"list", "watch"}))  # fmt: skip
        self.process = functools.partial(
            processing.process_resource_event, lifecycle=lifecycles.all_at_once,
            indexers=indexing.OperatorIndexers(), registry=registries.get_default_registry(), settings=settings,
            memories=inventory.ResourceMemories(), memobase=ephemera.AnyMemo(kopf.Memo()), resource=resource,
            event_queue=asyncio.Queue())  # fmt: skip
        self.last: dict[str, asyncio.Task[None]] = {}  # uid -> its latest event's delivery
        self.events = 0

    def deliver(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        raw = json.loads(json.dumps(pod))  # what the watch decodes: the body shares nothing with the fake's
        self.last[uid] = asyncio.ensure_future(self._after(self.last.get(uid), kind, raw))
        self.events += 1

    async def _after(self, previous: asyncio.Task[None] | None, kind: str, raw: dict[str, Any]) -> None:
        if previous is not None:
            await previous
        await self.process(raw_event={"type": kind, "object": raw})  # type: ignore[typeddict-item]

    async def drain(self) -> None:
        await asyncio.gather(*self.last.values())


def api_defaults(pod: dict[str, Any]) -> dict[str, Any]:
    """`pod` with what kube-apiserver adds to every pod (the defaults and the built-in admission plugins')."""
    volume = "kube-api-access-x7k2q"
    meta, spec = pod["metadata"], pod["spec"]
    meta["managedFields"] = [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                              "time": meta["creationTimestamp"], "fieldsType": "FieldsV1",
                              "fieldsV1": {"f:spec": {"f:containers": {'k:{"name":"c"}': {
                                  ".": {}, "f:image": {}, "f:name": {}, "f:resources": {".": {}, "f:limits": {}}}},
                                  "f:terminationGracePeriodSeconds": {}}}}]  # fmt: skip
    spec.update({
        "volumes": [{"name": volume, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}],
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 0, "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default", "serviceAccount": "default", "securityContext": {},
        "schedulerName": resources.SCHEDULER_NAME, "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerThanOrEqual",
        "tolerations": [{"key": f"node.kubernetes.io/{k}", "operator": "Exists", "effect": "NoExecute",
                         "tolerationSeconds": 300} for k in ("not-ready", "unreachable")],
    })  # fmt: skip
    for container in spec["containers"]:
        container.update({"image": "registry.k8s.io/pause:3.10", "imagePullPolicy": "IfNotPresent",
                          "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                          "volumeMounts": [{"name": volume, "readOnly": True, "mountPath":
                                            "/var/run/secrets/kubernetes.io/serviceaccount"}]})  # fmt: skip
    pod["status"]["qosClass"] = "BestEffort"
    return pod


def gpunode(name: str, gpus: int) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {},
            "status": {"gpus": [{"uuid": f"GPU-{name}-{i}", "index": i, "model": "A100-80GB", "memoryMiB": 81920,
                                 "health": "Healthy"} for i in range(gpus)]}}  # fmt: skip


def gated_pod(ns: str, name: str, limits: dict[str, str], created: float, priority: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}", "annotations": {},
                     "creationTimestamp": timefmt.format_time(created)},
        "spec": {"priority": priority, "containers": [{"name": "c", "resources": {"limits": limits}}],
                 "schedulingGates": [{"name": resources.ADMISSION_GATE}]},
        "status": {"phase": "Pending"},
    }  # fmt: skip


def setup(args: argparse.Namespace) -> tuple[Controller, BurstKube]:
    kube = BurstKube(args.write_ms / 1000)
    settings = ControllerSettings(leader_election=False, webhook_enabled=False, metrics_port=0)
    c = Controller(settings, kube, b"bench-key")  # type: ignore[arg-type]
    kube.controller = c
    c.ready = True
    if args.kopf:  # the handlers kopf calls feed this controller
        from controller import handlers

        handlers.STATE = c
    for n in range(args.nodes):
        c.on_gpunode("ADDED", gpunode(f"node-{n:04d}", 8))
    c.on_queue("ADDED", {"metadata": {"name": "burst"},
                         "spec": {"namespaces": ["burst"], "nominalQuota": {"compute": args.nodes * 800}}})  # fmt: skip
    for k in range(args.preempt_heads):  # a full queue whose head may evict the best-effort pods of another
        q = f"tight{k}"
        c.on_queue("ADDED", {"metadata": {"name": q}, "spec": {"namespaces": [q], "nominalQuota": {"compute": 100},
                                                               "cohort": "c"}})  # fmt: skip
    if args.preempt_heads:
        c.on_queue("ADDED", {"metadata": {"name": "lender"},
                             "spec": {"namespaces": ["lender"], "nominalQuota": {"compute": 0}, "cohort": "c"}})
    return c, kube


async def burst(c: Controller, kube: BurstKube, args: argparse.Namespace) -> dict[str, Any]:
    limits = ({resources.GPU: "1", resources.GPU_COMPUTE: "25", resources.GPU_MEMORY: "8192"} if args.fraction
              else {resources.GPU: "1"})  # fmt: skip
    base = time.time()
    pods = [gated_pod("burst", f"p{i:05d}", limits, base + i * 1e-3) for i in range(args.pods)]
    if args.kopf:
        pods = [api_defaults(p) for p in pods]
        kube.kopf = WatchEvents(c) if hasattr(c, "on_pod_event") else KopfEvents()
    for k in range(args.preempt_heads):
        pods.append(gated_pod(f"tight{k}", "head", {resources.GPU: "2"}, base, priority=100))
    for p in pods:
        kube.pods[f"{p['metadata']['namespace']}/{p['metadata']['name']}"] = p
    cpu0, t0 = time.process_time(), time.perf_counter()
    for p in pods:
        if kube.kopf is not None:
            kube.kopf.deliver("ADDED", p)
        else:
            with c.lock:
                c.on_pod("ADDED", p)
    cycles = 0
    cycle_s: list[float] = []
    want = {f"burst/{p['metadata']['name']}" for p in pods if p["metadata"]["namespace"] == "burst"}
    while not want <= kube.ungated.keys() and cycles < args.max_cycles:
        s = time.perf_counter()
        await c.cycle(now=time.time())
        cycle_s.append(time.perf_counter() - s)
        cycles += 1
        if kube.kopf is not None:  # the events go on meanwhile; `run_cycles` waits as long after a nudge
            await asyncio.sleep(max(c.settings.admission_coalesce_seconds, c.decision_seconds))
    wall = time.perf_counter() - t0
    if kube.kopf is not None:
        await kube.kopf.drain()  # the last writes' events: their CPU is the burst's too
    cpu = time.process_time() - cpu0
    lat = sorted(kube.ungated[k] - t0 for k in want if k in kube.ungated)
    return {
        "code": sys.path[0], "kopf": args.kopf,
        "nodes": args.nodes, "pods": args.pods, "write_ms": args.write_ms, "preempt_heads": args.preempt_heads,
        "ungated": len(lat), "cycles": cycles, "cycle_s": [round(x, 3) for x in cycle_s],
        "wall_s": round(wall, 3), "controller_cpu_ms_per_pod": round(1000 * cpu / max(1, args.pods), 2),
        "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
        "latency_p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3) if lat else None,
        "api_writes": kube.writes, "kopf_events": kube.kopf.events if kube.kopf is not None else None,
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--write-ms", type=float, default=5.0, help="time each API write takes (in a worker thread)")
    ap.add_argument("--fraction", action="store_true", help="25 %% / 8 GiB slices instead of whole GPUs")
    ap.add_argument("--preempt-heads", type=int, default=0, help="blocked heads that may preempt, each cycle")
    ap.add_argument("--max-cycles", type=int, default=50, help="(with --kopf: 100 times as many)")
    ap.add_argument("--kopf", action="store_true",
                    help="pod events as gpupool-controller receives them: its pod watch (kopf before session 10)")
    ap.add_argument("--code", default=None, help="run this checkout's controller (write --code=DIR)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--profile", type=Path, default=None, help="write a cProfile (pstats) of the burst here")
    args = ap.parse_args()
    if args.kopf:
        args.max_cycles *= 100
    t = time.perf_counter()
    c, kube = setup(args)
    if args.preempt_heads:  # best-effort pods of the lender hold half of the pool: the heads may reclaim them
        for i in range(args.nodes * 4):
            p = gated_pod("lender", f"be{i:05d}", {resources.GPU: "1"}, time.time() - 100)
            p["metadata"]["annotations"][resources.QOS] = "best-effort"
            kube.pods[f"lender/be{i:05d}"] = p
            c.on_pod("ADDED", p)
        asyncio.run(c.cycle(now=time.time()))
    setup_s = time.perf_counter() - t
    prof = cProfile.Profile() if args.profile else None
    if prof is not None:
        prof.enable()
    out = asyncio.run(burst(c, kube, args))
    if prof is not None:
        prof.disable()
        prof.dump_stats(str(args.profile))
    out["setup_s"] = round(setup_s, 2)
    print(json.dumps(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
