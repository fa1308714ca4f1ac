"""Extender latency: filter+prioritize over HTTP and in-process, bind, and RSS, on a synthetic pool.

    .venv/bin/python bench/extender_latency.py --nodes 1000 [--json OUT.json]

The pool: N nodes x 8 GPUs (32 GiB each), loaded through the extender's own bind path
with pods of the openb default mix (`../shared/data/openb/openb_pod_list_default.csv`
relative to the repo root when present, compute = gpu_milli / 10; else a built-in mix)
until 8 x N slices are held (40,000 at 5,000 nodes). Every pod stays in the extender's
pod cache with its signed assignment, as the pod watch would leave it.

* bind: `PoolService.bind` with the API writes stubbed at the HTTP-client boundary
  (`PodAPI`): it excludes API-server time (annotation PATCH and Binding POST), and
  includes plan, commit, signing and the bookkeeping around them.
* filter+prioritize over HTTP: the app is served by uvicorn in a forked child (the
  same loaded service, so the client does not share its GIL); each sample is one
  /filter with every node name (as kube-scheduler sends them) plus one /prioritize
  with the names that passed, on loopback, with a keep-alive connection.
* in-process: the same two calls on the service, including the decoding of the JSON body, with the
  cyclic GC tuned as `gpupool-extender` tunes it after its first sync (`extender.main.tune_gc`).
* `--names-per-call N`: each call asks about N nodes instead of all, a window that moves on by N every
  call, as kube-scheduler sends only the feasible nodes it looked for (`scheduler`: its adaptive
  percentageOfNodesToScore, 50 % - nodes/125, at least 5 % and 100 nodes: 500 of 5,000).
* RSS: of the serving child after the HTTP run (VmRSS).
* `--cycle K` (the HTTP layer's own cost, issue 16): K pods of the e2e burst's shape (1 GPU, 50 %, 4096 MiB) each
  go through kube-scheduler's cycle over one keep-alive connection to the extender served as `gpupool-extender`
  serves it (`extender.main`, uvicorn on uvloop, in a forked child): /filter with the names of `--names-per-call`,
  /prioritize with the names that passed, /bind to the best-scored node (writes stubbed, the identity rule off:
  the stub has no kubelet). Per verb: the server's CPU per call (on-CPU time of all its threads from
  /proc/<pid>/task/*/schedstat around each call, the client idle meanwhile), latency p50/p99 at the client, the
  answer's size, and the same calls in-process on the parent's copy of the service (the state at the fork, so
  the same answers): body decode + the service's work, i.e. what is left of a call without the HTTP server and
  the answer's encoding. `http_overhead_cpu_ms` = server CPU - in-process CPU. `--http-answers FILE` writes
  every answer (parsed, keys sorted) to compare code versions.

Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import json
import os
import random
import signal
import socket
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from extender import wire  # noqa: E402
from extender.main import build  # noqa: E402
from extender.settings import ExtenderSettings  # noqa: E402
from gpupool import resources  # noqa: E402

GPUS_PER_NODE = 8
GPU_MEMORY = 32768
KEY = b"bench-key"
OPENB = ROOT.parent / "shared" / "data" / "openb" / "openb_pod_list_default.csv"

#: (num_gpu, gpu_milli, weight) when the openb trace is absent
BUILTIN_MIX = [(1, 1000, 30), (1, 500, 20), (1, 250, 15), (1, 100, 10), (2, 1000, 10), (4, 1000, 5),
               (8, 1000, 3), (1, 750, 7)]  # fmt: skip


class NullAPI:
    """The HTTP-client boundary, stubbed: no API server, no network."""

    def __init__(self) -> None:
        self.rv = 1000
        #: (namespace, name) -> annotations the last Binding carried (the API server copies them onto the pod)
        self.bound: dict[tuple[str, str], dict[str, str]] = {}

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        raise AssertionError("bench pods are always in the cache")

    def patch_pod(self, namespace: str, name: str, patch: Any, content_type: str = "") -> dict[str, Any]:
        self.rv += 1
        return {"metadata": {"resourceVersion": str(self.rv)}}

    def bind_pod(
        self, namespace: str, name: str, uid: str, node: str, annotations: Mapping[str, str] | None = None
    ) -> None:
        self.bound[(namespace, name)] = dict(annotations or {})


def load_mix() -> tuple[list[tuple[int, int]], str]:
    if OPENB.is_file():
        shapes = []
        with OPENB.open(newline="") as fh:
            for row in csv.DictReader(fh):
                n, milli = int(row["num_gpu"]), int(row["gpu_milli"])
                if n >= 1 and milli >= 10:
                    shapes.append((n, milli))
        return shapes, str(OPENB.relative_to(ROOT.parent))
    out = []
    for n, milli, w in BUILTIN_MIX:
        out.extend([(n, milli)] * w)
    return out, "built-in mix"


def make_pod(i: int, shape: tuple[int, int]) -> dict[str, Any]:
    n, milli = shape
    compute = max(1, min(100, milli // 10))
    limits: dict[str, Any] = {resources.GPU: str(n), resources.GPU_COMPUTE: str(compute)}
    if compute < 100:
        limits[resources.GPU_MEMORY] = str(max(1, GPU_MEMORY * compute // 100))
    name = f"bench-{i:06d}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "bench", "uid": f"uid-{i:06d}", "resourceVersion": "1",
                     "labels": {"app": "bench", "shape": f"{n}x{milli}"}},
        "spec": {"schedulerName": "gpupool-scheduler", "priority": 0,
                 "containers": [{"name": "main", "image": "registry.example/trainer:1.0",
                                 "resources": {"limits": limits, "requests": dict(limits)}}]},
        "status": {"phase": "Pending"},
    }  # fmt: skip


def gpunode(name: str) -> dict[str, Any]:
    gpus = [{"uuid": f"GPU-{name}-{k}", "index": k, "model": "A100-SXM4-32GB", "memoryMiB": GPU_MEMORY,
             "health": "Healthy"} for k in range(GPUS_PER_NODE)]  # fmt: skip
    return {"metadata": {"name": name}, "spec": {}, "status": {"gpus": gpus}}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def names_per_call(option: str, nodes: int) -> int:
    """Nodes per filter call: all, kube-scheduler's adaptive share (percentageOfNodesToScore unset), or a number."""
    if option == "all":
        return nodes
    if option == "scheduler":
        if nodes < 100:
            return nodes
        percent = max(5, 50 - nodes // 125)
        return min(nodes, max(100, nodes * percent // 100))
    return max(1, min(nodes, int(option)))


def http_run(
    service: Any, bodies: list[bytes], queries: list[dict[str, Any]]
) -> tuple[list[float], list[float], float]:
    """filter+prioritize over HTTP, served by a forked child: (call ms, filter-alone ms, the child's RSS MiB)."""
    pid, port = serve_forked(service)
    http_ms: list[float] = []
    filter_only: list[float] = []
    try:
        # a plain keep-alive connection: the measure is the extender's, not a Python HTTP client's
        client = connect(port)
        headers = {"Content-Type": "application/json"}

        def post(path: str, body: bytes) -> Any:
            client.request("POST", path, body=body, headers=headers)
            response = client.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"{path}: HTTP {response.status}: {data[:200]!r}")
            return json.loads(data)

        for k, body in enumerate(bodies[:10] + bodies):
            query = queries[k] if k < min(10, len(bodies)) else queries[k - min(10, len(bodies))]
            started = time.perf_counter()
            passing = post("/filter", body)["NodeNames"]
            mid = time.perf_counter()
            post("/prioritize", json.dumps({"Pod": query, "Nodes": None, "NodeNames": passing}).encode())
            http_ms.append((time.perf_counter() - started) * 1000)
            filter_only.append((mid - started) * 1000)
        http_ms, filter_only = http_ms[10:], filter_only[10:]
        rss = rss_mib(pid)
        client.close()
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    return http_ms, filter_only, rss


def server_cpu_ns(pid: int) -> int:
    """On-CPU time of every thread of `pid` so far, in ns (first field of each thread's schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total


def serve_forked(service: Any) -> tuple[int, int]:
    """The extender's HTTP app over `service`, served in a forked child as `gpupool-extender` serves it: (pid, port)."""
    import extender.main as extender_main
    from extender.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # child: serve until SIGTERM
        try:
            extender_main.tune_gc()
            app = create_app(service)
            if hasattr(extender_main, "http_server"):
                server = extender_main.http_server(app, "127.0.0.1", port, "error")
            else:  # code before it (a before/after comparison): the listener main() built then
                import uvicorn

                server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                                       access_log=False))  # fmt: skip
            extender_main._run(server.serve())
        finally:
            os._exit(0)
    return pid, port


def connect(port: int) -> http.client.HTTPConnection:
    """A keep-alive connection to the served app, once it answers /healthz."""
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    deadline = time.time() + 60
    while True:
        try:
            client.request("GET", "/healthz")
            if client.getresponse().read() == b"ok":
                return client
        except OSError:
            client.close()
            if time.time() > deadline:
                raise
            time.sleep(0.05)


CYCLE_VERBS = ("filter", "prioritize", "bind")


def cycle_run(service: Any, pods: list[dict[str, Any]], windows: list[list[str]], answers_out: str | None,
              ) -> dict[str, Any]:  # fmt: skip
    """kube-scheduler's cycle (filter, prioritize, bind) per pod over HTTP, then the same calls in-process."""
    service.identity_wait_seconds = 0  # no kubelet here to mark bound pods Running (in both copies of the service)
    for p in pods:
        service.on_pod_event("ADDED", p)
    bodies = [json.dumps({"Pod": p, "Nodes": None, "NodeNames": w}).encode()
              for p, w in zip(pods, windows, strict=True)]  # fmt: skip
    pid, port = serve_forked(service)
    headers = {"Content-Type": "application/json"}
    cpu: dict[str, list[float]] = {v: [] for v in CYCLE_VERBS}
    wall: dict[str, list[float]] = {v: [] for v in CYCLE_VERBS}
    size: dict[str, list[int]] = {v: [] for v in CYCLE_VERBS}
    sent: list[tuple[str, bytes]] = []  # (verb, body) in the order sent, for the in-process replay
    answers: list[Any] = []
    try:
        client = connect(port)

        def post(verb: str, body: bytes) -> Any:
            c0, t0 = server_cpu_ns(pid), time.perf_counter()
            client.request("POST", f"/{verb}", body=body, headers=headers)
            response = client.getresponse()
            data = response.read()
            t1 = time.perf_counter()
            c1 = server_cpu_ns(pid)
            if response.status != 200:
                raise RuntimeError(f"{verb}: HTTP {response.status}: {data[:200]!r}")
            cpu[verb].append((c1 - c0) / 1e6)
            wall[verb].append((t1 - t0) * 1000)
            size[verb].append(len(data))
            sent.append((verb, body))
            answer = json.loads(data)
            answers.append({"verb": verb, "answer": answer})
            return answer

        for p, body in zip(pods, bodies, strict=True):
            passing = post("filter", body)["NodeNames"] or []
            if not passing:
                continue
            scores = post("prioritize", json.dumps({"Pod": p, "Nodes": None, "NodeNames": passing}).encode())
            best = max(scores, key=lambda h: (h["Score"], h["Host"]))["Host"]
            m = p["metadata"]
            post("bind", json.dumps({"PodName": m["name"], "PodNamespace": m["namespace"], "PodUID": m["uid"],
                                     "Node": best}).encode())  # fmt: skip
        rss = rss_mib(pid)
        client.close()
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    if answers_out:
        Path(answers_out).write_text("".join(json.dumps(a, sort_keys=True) + "\n" for a in answers))
    # the same calls on this process's copy of the service (the state the child started from): decode + work
    from extender.main import tune_gc

    tune_gc()  # as the child did
    inproc: dict[str, list[float]] = {v: [] for v in CYCLE_VERBS}
    for verb, body in sent:
        c0 = time.thread_time()
        if verb == "bind":
            b = wire.ExtenderBindingArgs.model_validate_json(body)
            error = service.bind(b.PodName, b.PodNamespace, b.PodUID, b.Node)
            if error:
                raise RuntimeError(f"in-process bind: {error}")
        else:
            a = wire.ExtenderArgs.model_validate_json(body)
            names, _ = a.node_names()
            if verb == "filter":
                answer = service.filter(a.Pod, names)
                wire.failure_groups(answer.failed, answer.unresolvable)
            else:
                service.prioritize(a.Pod, names)
        inproc[verb].append((time.thread_time() - c0) * 1000)
    out: dict[str, Any] = {"cycle_pods": len(pods), "cycle_rss_mib": round(rss, 1)}
    for verb in CYCLE_VERBS:
        if not cpu[verb]:
            continue
        server, local = statistics.fmean(cpu[verb]), statistics.fmean(inproc[verb])
        out[verb] = {
            "calls": len(cpu[verb]),
            "server_cpu_ms_per_call": round(server, 3),
            "inproc_cpu_ms_per_call": round(local, 3),
            "http_overhead_cpu_ms": round(server - local, 3),
            "server_cpu_p50_ms": round(pct(cpu[verb], 50), 3),
            "p50_ms": round(pct(wall[verb], 50), 3),
            "p99_ms": round(pct(wall[verb], 99), 3),
            "answer_bytes_mean": round(statistics.fmean(size[verb])),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.getLogger("gpupool").setLevel(logging.CRITICAL)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=200, help="filter+prioritize samples per mode")
    ap.add_argument("--bind-samples", type=int, default=2000)
    ap.add_argument("--policy", default=None, help="default policy (default: gpupool's DEFAULT_POLICY)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", dest="json_out", default=None)
    ap.add_argument("--names-per-call", default="all", help="nodes per filter call: all, scheduler or a number")
    ap.add_argument("--profile", default=None, help="write a cProfile of the measured in-process calls here")
    ap.add_argument("--answers", default=None, help="write every in-process answer (JSON) here, to compare code")
    ap.add_argument("--no-http", action="store_true", help="skip the HTTP run (and the RSS it reports)")
    ap.add_argument("--cycle", type=int, default=0, metavar="K",
                    help="only kube-scheduler's cycle over HTTP (filter, prioritize, bind) for K pods: server CPU per "
                         "call and latency per verb")
    ap.add_argument("--http-answers", default=None, help="with --cycle: write every HTTP answer (JSON lines) here")
    args = ap.parse_args(argv)

    rng = random.Random(args.seed)
    mix, source = load_mix()
    settings = ExtenderSettings(_cli_parse_args=False, **({"default_policy": args.policy} if args.policy else {}))
    api = NullAPI()
    ext = build(settings, api=api, key=KEY)  # type: ignore[arg-type]
    service = ext.service
    names = [f"node-{i:05d}" for i in range(args.nodes)]
    t0 = time.perf_counter()
    service.on_node_list([{"metadata": {"name": n}} for n in names])
    service.on_gpunode_list([gpunode(n) for n in names])
    service.on_pod_list([])
    assert service.ready

    target = GPUS_PER_NODE * args.nodes
    held = 0
    i = 0
    bind_ms: list[float] = []
    misses = 0
    cursor = 0
    while held < target and misses < 20 * args.nodes:
        pod = make_pod(i, mix[rng.randrange(len(mix))])
        i += 1
        service.on_pod_event("ADDED", pod)
        node = names[cursor % len(names)]
        started = time.perf_counter()
        error = service.bind(pod["metadata"]["name"], "bench", pod["metadata"]["uid"], node)
        elapsed = (time.perf_counter() - started) * 1000
        if error:
            service.on_pod_event("DELETED", pod)
            cursor += 1
            misses += 1
            continue
        if held >= target - args.bind_samples:
            bind_ms.append(elapsed)
        h = service.ledger.holding(pod["metadata"]["uid"])
        held += len(h.slices) if h else 0
        # what the watch then delivers: the pod with its assignment, bound, and (once the kubelet has taken its
        # devices) Running, so that it no longer holds back pods of its slot count on the node
        written = api.bound.pop(("bench", pod["metadata"]["name"]), {})
        meta = {**pod["metadata"], "annotations": {**(pod["metadata"].get("annotations") or {}), **written}}
        spec = {**pod["spec"], "nodeName": node}
        service.on_pod_event("MODIFIED", {**pod, "metadata": meta, "spec": spec, "status": {"phase": "Running"}})
        if rng.random() < 0.5:
            cursor += 1
    fill_s = time.perf_counter() - t0
    if not bind_ms:
        raise SystemExit(f"no bind succeeded while filling the pool ({misses} failed): see the log lines above")
    holdings = sum(1 for _ in service.ledger.holdings())
    totals = service.ledger.totals()
    print(f"pool: {args.nodes} nodes x {GPUS_PER_NODE} GPUs; {held} slices held by {holdings} pods "
          f"({100 * totals['used_compute'] / totals['compute']:.1f}% compute); mix: {source}; "
          f"filled in {fill_s:.1f} s")  # fmt: skip

    queries = [make_pod(10_000_000 + k, mix[rng.randrange(len(mix))]) for k in range(args.samples)]
    per_call = names_per_call(args.names_per_call, len(names))
    if args.cycle:  # the burst's pods (bench/e2e_throughput.py): 1 GPU, 50 %, 4096 MiB
        pods = [make_pod(20_000_000 + k, (1, 500)) for k in range(args.cycle)]
        for p in pods:
            for section in p["spec"]["containers"][0]["resources"].values():
                section[resources.GPU_MEMORY] = "4096"
        windows = [[names[(k * per_call + j) % len(names)] for j in range(per_call)] for k in range(len(pods))]
        cycle = cycle_run(service, pods, windows, args.http_answers)
        cycle.update(nodes=args.nodes, names_per_call=per_call, load_average_1m=round(os.getloadavg()[0], 2),
                     slices_held=held, pods_held=holdings)  # fmt: skip
        for verb in CYCLE_VERBS:
            if verb in cycle:
                c = cycle[verb]
                print(f"{verb:>10} x{c['calls']}: server CPU {c['server_cpu_ms_per_call']} ms/call (in-process "
                      f"{c['inproc_cpu_ms_per_call']}, HTTP layer {c['http_overhead_cpu_ms']}); p50 {c['p50_ms']} ms, "
                      f"p99 {c['p99_ms']} ms; answer {c['answer_bytes_mean']} B")  # fmt: skip
        print(f"load average {cycle['load_average_1m']}; RSS of the serving process {cycle['cycle_rss_mib']} MiB")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(cycle, indent=2) + "\n")
        return 0
    windows = [[names[(k * per_call + j) % len(names)] for j in range(per_call)] for k in range(len(queries))]
    bodies = [
        json.dumps({"Pod": q, "Nodes": None, "NodeNames": w}).encode() for q, w in zip(queries, windows, strict=True)
    ]

    # --- in-process -------------------------------------------------------------------------------
    from extender.main import tune_gc

    tune_gc()  # as gpupool-extender does after its first sync (the HTTP child below does the same)
    inproc: list[float] = []
    inproc_cpu: list[float] = []  # this thread's CPU time: less at the mercy of other jobs on a shared machine
    stages: list[tuple[float, float, float]] = []  # CPU ms of decode, filter, prioritize
    passing_counts: list[int] = []
    answers: list[dict[str, Any]] = []
    profiler = None
    for k, body in enumerate(bodies[:10] + bodies):
        if k == 10 and args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        started, cpu_started = time.perf_counter(), time.thread_time()
        a = wire.ExtenderArgs.model_validate_json(body)
        cpu_decoded = time.thread_time()
        answer = service.filter(a.Pod, a.NodeNames or [])
        cpu_filtered = time.thread_time()
        scores = service.prioritize(a.Pod, answer.passing)
        cpu_done = time.thread_time()
        inproc.append((time.perf_counter() - started) * 1000)
        inproc_cpu.append((cpu_done - cpu_started) * 1000)
        stages.append(((cpu_decoded - cpu_started) * 1000, (cpu_filtered - cpu_decoded) * 1000,
                       (cpu_done - cpu_filtered) * 1000))  # fmt: skip
        passing_counts.append(len(answer.passing))
        if args.answers:
            answers.append({"passing": answer.passing, "failed": answer.failed, "unresolvable": answer.unresolvable,
                            "error": answer.error, "scores": scores})  # fmt: skip
    inproc, inproc_cpu, stages = inproc[10:], inproc_cpu[10:], stages[10:]
    if args.answers:
        Path(args.answers).write_text(json.dumps(answers, sort_keys=True) + "\n")
    if profiler is not None:
        import pstats

        profiler.disable()
        profiler.dump_stats(args.profile)
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(25)

    # --- over HTTP, served by a forked child --------------------------------------------------------
    if args.no_http:
        http_ms = filter_only = [float("nan")]
        rss = rss_mib(os.getpid())
    else:
        http_ms, filter_only, rss = http_run(service, bodies, queries)

    result = {
        "nodes": args.nodes,
        "gpus": args.nodes * GPUS_PER_NODE,
        "slices_held": held,
        "pods_held": holdings,
        "policy": service.placer.default_policy,
        "names_per_call": per_call,
        "mix": source,
        "filter_prioritize_http_p50_ms": round(pct(http_ms, 50), 3),
        "filter_prioritize_http_p99_ms": round(pct(http_ms, 99), 3),
        "filter_http_p50_ms": round(pct(filter_only, 50), 3),
        "filter_prioritize_inproc_p50_ms": round(pct(inproc, 50), 3),
        "filter_prioritize_inproc_p99_ms": round(pct(inproc, 99), 3),
        "filter_prioritize_inproc_cpu_p50_ms": round(pct(inproc_cpu, 50), 3),
        "filter_prioritize_inproc_cpu_p99_ms": round(pct(inproc_cpu, 99), 3),
        "inproc_cpu_decode_filter_prioritize_p50_ms": [round(pct([s[i] for s in stages], 50), 3) for i in range(3)],
        "inproc_cpu_decode_filter_prioritize_p99_ms": [round(pct([s[i] for s in stages], 99), 3) for i in range(3)],
        "load_average_1m": round(os.getloadavg()[0], 2),
        "bind_p50_ms": round(pct(bind_ms, 50), 3),
        "bind_p99_ms": round(pct(bind_ms, 99), 3),
        "bind_samples": len(bind_ms),
        "passing_nodes_median": statistics.median(passing_counts),
        "rss_mib": round(rss, 1),
        "note": "bind excludes API-server time (writes stubbed at the HTTP-client boundary)",
    }
    print(
        f"filter+prioritize over HTTP: p50 {result['filter_prioritize_http_p50_ms']} ms, "
        f"p99 {result['filter_prioritize_http_p99_ms']} ms  (filter alone p50 {result['filter_http_p50_ms']} ms)"
    )
    print(
        f"filter+prioritize in-process: p50 {result['filter_prioritize_inproc_p50_ms']} ms, "
        f"p99 {result['filter_prioritize_inproc_p99_ms']} ms; CPU p50 {result['filter_prioritize_inproc_cpu_p50_ms']} "
        f"ms, p99 {result['filter_prioritize_inproc_cpu_p99_ms']} ms  (passing {result['passing_nodes_median']})"
    )
    print(
        f"in-process CPU of decode / filter / prioritize: p50 {result['inproc_cpu_decode_filter_prioritize_p50_ms']} "
        f"ms, p99 {result['inproc_cpu_decode_filter_prioritize_p99_ms']} ms"
    )
    print(
        f"bind (API writes stubbed): p50 {result['bind_p50_ms']} ms, p99 {result['bind_p99_ms']} ms "
        f"over {len(bind_ms)} binds"
    )
    print(f"RSS of the serving process: {result['rss_mib']} MiB")  # fmt: skip
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
