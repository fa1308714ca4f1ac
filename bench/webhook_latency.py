"""The controller's admission webhooks under a create burst: latency and CPU per AdmissionReview call.

Setup: `controller.runtime.Controller` over N GPUNodes x 8 GPUs and a GPUQueue serving the bench's namespace
(ready, as after `rebuild`), and the webhook server as `gpupool-controller` serves it: TLS with a certificate
signed by a throwaway CA (e2e/pki.py), the handlers of `controller.handlers` behind kopf's `WebhookServer` and
kopf's admission engine (`--server kopf`, what the product ran before issue 16) or behind
`controller.webhook_server` (`--server lean`, what it runs now). No kube-apiserver: a child process plays its
part, `--concurrency` keep-alive HTTPS connections (kube-apiserver keeps its webhook connections open), each
sending, for its share of `--pods` pods, the calls one pod costs on its way in:

* `mutate-create`: /mutate-pods, CREATE by a user, the pod as the API server holds it at admission time
  (defaulted: service-account volume, tolerations, managedFields);
* `validate-create`: /validate-pods, CREATE, the pod with the mutation's JSON patch applied;
* `validate-ungate`: /validate-pods, UPDATE by the controller, the queue annotation added and the admission gate
  removed in one write (`--writes one`, the controller since issue 16); with `--writes two` (before), the
  annotation is one UPDATE (`validate-queue`) and the gate removal another.

Measured: per kind p50/p99 of the client's wall time per call (send to full answer), and the server process's
CPU ms per call and per pod (`time.process_time` over the burst: the client is another process). Every answer is
checked (allowed, and the mutation adds the gate and the scheduler). `--profile OUT` writes a cProfile (pstats)
of the server over the burst, every thread of it (kopf runs sync handlers in worker threads).

    .venv/bin/python bench/webhook_latency.py [--nodes 1000 --pods 1000 --concurrency 16] [--json OUT] [--profile OUT]
    .venv/bin/python bench/webhook_latency.py --code=/work/main --server kopf --writes two   # the code before
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import http.client
import json
import os
import pstats
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# `--code=DIR`: gpupool, controller and e2e from that checkout (e.g. --code=/work/main, for a before/after)
sys.path.insert(0, next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--code=")),
                        str(Path(__file__).resolve().parents[1])))  # fmt: skip

import jsonpatch

from gpupool import resources

CODE = Path(sys.path[0]).resolve()
NS = "bench"
CONTROLLER = "system:serviceaccount:gpupool-system:gpupool-controller"
KINDS = ("mutate-create", "validate-create", "validate-queue", "validate-ungate")
TOKEN_VOLUME = "kube-api-access-x7k2q"


# ------------------------------------------------------------------------------------------------ the requests


def user_pod(name: str, uid: str) -> dict[str, Any]:
    """A one-slice pod as kube-apiserver sends it to the mutating webhook: the user's manifest after defaulting
    and the built-in admission plugins (ServiceAccount, DefaultTolerationSeconds, Priority)."""
    limits = {resources.GPU: "1", resources.GPU_COMPUTE: "50", resources.GPU_MEMORY: "4096"}
    fields = {"f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:bench": {}}},
              "f:spec": {"f:containers": {'k:{"name":"main"}': {
                  ".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {},
                  "f:resources": {".": {}, "f:limits": {".": {}, **{f"f:{k}": {} for k in limits}}},
                  "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}}},
                  "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {},
                  "f:securityContext": {}, "f:terminationGracePeriodSeconds": {}}}  # fmt: skip
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": name, "namespace": NS, "uid": uid, "creationTimestamp": "2026-12-02T07:00:00Z",
            "labels": {"app": "train", "bench": "gpupool"},
            "managedFields": [{"manager": "python-requests", "operation": "Update", "apiVersion": "v1",
                               "time": "2026-12-02T07:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": fields}],
        },
        "spec": {
            "volumes": [{"name": TOKEN_VOLUME, "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                              "fieldPath": "metadata.namespace"}}]}},
            ], "defaultMode": 420}}],
            "containers": [{
                "name": "main", "image": "registry.k8s.io/pause:3.10",
                "resources": {"limits": dict(limits), "requests": dict(limits)},
                "volumeMounts": [{"name": TOKEN_VOLUME, "readOnly": True,
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 0, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "serviceAccount": "default", "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [{"key": f"node.kubernetes.io/{k}", "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 300} for k in ("not-ready", "unreachable")],
            "priority": 0, "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerThanOrEqual",
        },
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    }  # fmt: skip


def review(operation: str, obj: dict[str, Any], old: dict[str, Any] | None, username: str, n: int) -> bytes:
    kind = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions"}[operation]
    groups = ["system:serviceaccounts", "system:authenticated"] if username.startswith("system:") else [
        "system:authenticated"]  # fmt: skip
    body = {
        "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": f"00000000-0000-4000-8000-{n:012d}",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": obj["metadata"]["name"], "namespace": NS, "operation": operation,
            "userInfo": {"username": username, "uid": "u-1", "groups": groups},
            "object": obj, "oldObject": old, "dryRun": False,
            "options": {"kind": kind, "apiVersion": "meta.k8s.io/v1"},
        },
    }  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------------------------ the client


class Client:
    """One keep-alive HTTPS connection, as kube-apiserver holds to a webhook."""

    def __init__(self, port: int, ca: str) -> None:
        ctx = ssl.create_default_context(cafile=ca)
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)

    def post(self, path: str, body: bytes) -> tuple[float, dict[str, Any]]:
        t = time.perf_counter()
        self.conn.request("POST", f"/{path}", body, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        took = time.perf_counter() - t
        if resp.status != 200:
            raise SystemExit(f"/{path}: HTTP {resp.status} {resp.reason}: {data[:300]!r}")
        return took, json.loads(data)["response"]


def pod_calls(i: int, writes: str = "one") -> list[tuple[str, str, bytes]]:
    """The calls one pod costs, (kind, path, body), built before the burst so the client's CPU stays small: the
    validating calls carry the pod as `controller.admission.mutate` gates it (checked against the server's
    patch in the warm-up). `writes`: how the controller admits it, `one` update (queue annotation and gate
    removal together, since issue 16) or `two` (the annotation, then the gate)."""
    from controller.admission import mutate

    pod = user_pod(f"p{i:05d}", f"uid-{i:08d}")
    gated = mutate(pod)
    queued = json.loads(json.dumps(gated))
    queued["metadata"].setdefault("annotations", {})[resources.QUEUE] = f"{NS}-queue"
    ungated = json.loads(json.dumps(queued))
    ungated["spec"]["schedulingGates"] = []
    calls = [("mutate-create", "mutate-pods", review("CREATE", pod, None, "alice", 4 * i)),
             ("validate-create", "validate-pods", review("CREATE", gated, None, "alice", 4 * i + 1))]
    if writes == "two":
        calls += [("validate-queue", "validate-pods", review("UPDATE", queued, gated, CONTROLLER, 4 * i + 2)),
                  ("validate-ungate", "validate-pods", review("UPDATE", ungated, queued, CONTROLLER, 4 * i + 3))]
    else:
        calls.append(("validate-ungate", "validate-pods", review("UPDATE", ungated, gated, CONTROLLER, 4 * i + 3)))
    return calls


def send(client: Client, calls: list[tuple[str, str, bytes]], out: dict[str, list[float]],
         check: bool = False) -> None:  # fmt: skip
    for kind, path, body in calls:
        took, answer = client.post(path, body)
        if not answer.get("allowed"):
            raise SystemExit(f"{kind} refused: {answer}")
        if kind == "mutate-create":
            if "patch" not in answer:
                raise SystemExit(f"the mutation did not patch the pod: {answer}")
            if check:  # the server's patch gives the pod the validating calls carry
                pod = json.loads(body)["request"]["object"]
                mutated = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(answer["patch"])))
                if mutated != json.loads(calls[1][2])["request"]["object"]:
                    raise SystemExit(f"the server's mutation differs from controller.admission.mutate: {mutated}")
        out[kind].append(took)  # list.append is atomic


def run_client(port: int, ca: str, pods: int, concurrency: int, warmup: int, writes: str) -> int:
    """The child: `warmup` pods on one connection, then the burst on `concurrency`; JSON on stdout."""
    scratch: dict[str, list[float]] = {k: [] for k in KINDS}
    first = Client(port, ca)
    for i in range(warmup):
        send(first, pod_calls(100_000 + i, writes), scratch, check=True)
    burst = [pod_calls(i, writes) for i in range(pods)]
    sys.stdout.write("warm\n")
    sys.stdout.flush()
    sys.stdin.readline()  # the server's CPU meter starts
    out: dict[str, list[float]] = {k: [] for k in KINDS}
    shares = [list(range(pods))[w::concurrency] for w in range(concurrency)]
    clients = [Client(port, ca) for _ in range(concurrency)]

    def worker(w: int) -> None:
        for i in shares[w]:
            send(clients[w], burst[i], out)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    wall = time.perf_counter() - t0
    sys.stdout.write(json.dumps({"wall_s": wall, "latencies": out}) + "\n")
    sys.stdout.flush()
    return 0


# ------------------------------------------------------------------------------------------------ the server


def make_controller(nodes: int) -> Any:
    from bench.admission_burst import gpunode  # the same GPUNode bodies as the admission bench
    from controller import handlers
    from controller.runtime import Controller
    from controller.settings import ControllerSettings

    settings = ControllerSettings(leader_election=False, metrics_port=0)
    c = Controller(settings, None, b"bench-key")
    for n in range(nodes):
        c.on_gpunode("ADDED", gpunode(f"node-{n:04d}", 8))
    c.on_queue("ADDED", {"metadata": {"name": f"{NS}-queue"},
                         "spec": {"namespaces": [NS], "nominalQuota": {"compute": nodes * 800}}})  # fmt: skip
    c.ready = True
    handlers.SETTINGS, handlers.STATE = settings, c
    return c


@contextlib.asynccontextmanager
async def kopf_server(cert: str, key: str, executor: ThreadPoolExecutor) -> Any:
    """kopf's `WebhookServer` and admission engine, wired as `kopf.operator` wires them (kopf/_core/reactor)."""
    import functools

    import kopf
    from kopf._cogs.structs import ephemera, references
    from kopf._core.engines import admission as kopf_admission
    from kopf._core.engines import indexing
    from kopf._core.intents import registries
    from kopf._core.reactor import inventory

    import controller.handlers  # noqa: F401  (registers the handlers)

    settings = kopf.OperatorSettings()
    settings.execution.executor = executor
    insights = references.Insights()
    insights.webhook_resources.add(references.Resource(group="", version="v1", plural="pods", kind="Pod",
                                                       singular="pod", namespaced=True,
                                                       verbs=frozenset({"create", "update"})))  # fmt: skip
    fn = functools.partial(kopf_admission.serve_admission_request, settings=settings,
                           registry=registries.get_default_registry(), insights=insights,
                           memories=inventory.ResourceMemories(), memobase=ephemera.AnyMemo(kopf.Memo()),
                           indices=indexing.OperatorIndexers().indices)  # fmt: skip
    server = kopf.WebhookServer(addr="127.0.0.1", port=0, certfile=cert, pkeyfile=key)
    server.port = server._allocate_free_port()
    configs = server(fn)
    await anext(configs)
    try:
        yield server.port
    finally:
        await configs.aclose()  # type: ignore[attr-defined]  # an async generator


@contextlib.asynccontextmanager
async def lean_server(cert: str, key: str, executor: ThreadPoolExecutor) -> Any:
    from controller import handlers, webhook_server

    server = webhook_server.AdmissionServer("127.0.0.1", 0, cert, key, handlers.WEBHOOKS)
    await server.start()
    try:
        yield server.port
    finally:
        await server.stop()


class ThreadProfiles:
    """cProfile in every worker thread of `executor` as well as the loop's: merged into one pstats file."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.local = threading.local()
        self.profiles: list[cProfile.Profile] = []
        self.on = False

    def initializer(self) -> None:
        prof = cProfile.Profile()
        self.profiles.append(prof)
        self.local.prof = prof
        if self.on:
            prof.enable()

    def each_thread(self, executor: ThreadPoolExecutor, action: Callable[[cProfile.Profile], None]) -> None:
        barrier = threading.Barrier(self.workers)

        def run() -> None:
            barrier.wait(10)
            prof = getattr(self.local, "prof", None)
            if prof is not None:
                action(prof)

        for f in [executor.submit(run) for _ in range(self.workers)]:
            f.result()

    @contextlib.contextmanager
    def profiling(self, executor: ThreadPoolExecutor, out: Path) -> Iterator[None]:
        main = cProfile.Profile()
        self.on = True
        self.each_thread(executor, lambda p: p.enable())
        main.enable()
        try:
            yield
        finally:
            main.disable()
            self.each_thread(executor, lambda p: p.disable())
            stats = pstats.Stats(main)
            for p in self.profiles:
                with contextlib.suppress(TypeError):  # a thread that never ran while profiling
                    stats.add(p)
            stats.dump_stats(str(out))


async def serve_and_measure(args: argparse.Namespace, cert: str, key: str, ca: str) -> dict[str, Any]:
    workers = min(32, (os.cpu_count() or 1) + 4)  # as large as kopf's default executor (ThreadPoolExecutor())
    profiles = ThreadProfiles(workers)
    executor = ThreadPoolExecutor(workers, initializer=profiles.initializer)
    factory = kopf_server if args.server == "kopf" else lean_server
    async with factory(cert, key, executor) as port:
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, f"--code={CODE}", "--client", str(port), "--ca", ca, "--pods", str(args.pods),
            "--concurrency", str(args.concurrency), "--warmup", str(args.warmup), "--writes", args.writes,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=1 << 24)  # fmt: skip
        assert child.stdin is not None and child.stdout is not None
        if (await child.stdout.readline()).strip() != b"warm":
            raise SystemExit("the client failed during the warm-up")
        with profiles.profiling(executor, args.profile) if args.profile else contextlib.nullcontext():
            cpu0 = time.process_time()
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            line = await child.stdout.readline()
            cpu = time.process_time() - cpu0
        if await child.wait() != 0 or not line:
            raise SystemExit("the client failed")
    executor.shutdown()
    result = json.loads(line)
    calls = sum(len(v) for v in result["latencies"].values())
    out: dict[str, Any] = {"server": args.server, "writes": args.writes, "code": str(CODE),
                           "nodes": args.nodes, "pods": args.pods,
                           "concurrency": args.concurrency, "calls": calls, "wall_s": round(result["wall_s"], 3),
                           "calls_per_s": round(calls / result["wall_s"], 1),
                           "server_cpu_ms_per_call": round(1000 * cpu / calls, 3),
                           "server_cpu_ms_per_pod": round(1000 * cpu / args.pods, 3)}  # fmt: skip
    everything: list[float] = []
    for kind in KINDS:
        lat = sorted(result["latencies"][kind])
        if not lat:
            continue
        everything += lat
        out[kind] = {"p50_ms": round(1000 * statistics.median(lat), 2),
                     "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2)}  # fmt: skip
    everything.sort()
    out["all_p50_ms"] = round(1000 * statistics.median(everything), 2)
    out["all_p99_ms"] = round(1000 * everything[min(len(everything) - 1, int(0.99 * len(everything)))], 2)
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16, help="keep-alive connections (kube-apiserver's side)")
    ap.add_argument("--warmup", type=int, default=20, help="pods sent on one connection before the burst")
    ap.add_argument("--server", choices=("kopf", "lean"), default="lean",
                    help="kopf: kopf's WebhookServer + admission engine; lean: controller.webhook_server")
    ap.add_argument("--writes", choices=("one", "two"), default="one",
                    help="the controller's updates per admitted pod: one (since issue 16) or two (before)")
    ap.add_argument("--code", type=Path, default=CODE, help="the checkout whose controller serves (write --code=DIR)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--profile", type=Path, default=None, help="write a cProfile (pstats) of the server here")
    ap.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)  # the child: the server's port
    ap.add_argument("--ca", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client is not None:
        return run_client(args.client, args.ca, args.pods, args.concurrency, args.warmup, args.writes)
    from e2e import pki

    make_controller(args.nodes)
    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmp:
        d = Path(tmp)
        pki.write_ca(d)
        cert, key = pki.issue(d, "webhook", "gpupool-webhook", server=True, sans=("127.0.0.1",))
        out = asyncio.run(serve_and_measure(args, str(cert), str(key), str(d / "ca.crt")))
    print(json.dumps(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
