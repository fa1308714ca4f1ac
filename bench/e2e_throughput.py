"""Scheduling throughput of the real kube-scheduler with the gpupool extender vs. a plain extended resource.

    python bench/e2e_throughput.py --nodes 1000 --pods 1000 [--json OUT.json] [--full-path]

One local control plane (e2e.cluster) with N kwok nodes of 8 fake GPUs each, which also advertise
``example.com/gpu: 8``; the gpupool stack (e2e.stack) on it. In the same run, the same ``gpupool-scheduler``
process (one KubeSchedulerConfiguration) binds:

* **plain**: M pods requesting ``example.com/gpu: 1`` — the extender is not called (not a managed resource);
* **gpupool**: M pods requesting ``gpupool.io/gpu: 1, gpu-compute: 50, gpu-memory: 4096`` — filter, prioritize and
  bind go through the extender, which writes the signed assignment and the Binding.

Both sets are created ungated with ``schedulerName: gpupool-scheduler`` in a namespace the admission webhooks skip,
so both measure the scheduler path alone; ``--full-path`` adds a third run through the webhook and the controller's
queue admission (gate removal). Pods are created by 16 threads; the time is from the first create to the last
bound (a 0.25 s poll of the pods). Extender verb latencies come from its /metrics.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from e2e.cluster import Cluster, FakeNode  # noqa: E402
from e2e.stack import Stack  # noqa: E402

PLAIN = "example.com/gpu"


def node_body(n: FakeNode) -> dict[str, Any]:
    body = n.manifest()
    for k in ("capacity", "allocatable"):
        body["status"][k][PLAIN] = str(n.gpus)
    return body


def create_nodes(c: Cluster, nodes: list[FakeNode]) -> None:
    from kubernetes import client

    with c.api_client() as api:
        v1: Any = client.CoreV1Api(api)
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda n: v1.create_node(node_body(n), _preload_content=False), nodes))


def pod_body(name: str, kind: str, gated_path: bool) -> dict[str, Any]:
    if kind == "plain":
        limits = {PLAIN: "1"}
    else:
        limits = {"gpupool.io/gpu": "1", "gpupool.io/gpu-compute": "50", "gpupool.io/gpu-memory": "4096"}
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10", "resources": {"limits": limits}}],
    }
    if not gated_path:
        spec["schedulerName"] = "gpupool-scheduler"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": kind}}, "spec": spec}


def run(c: Cluster, ns: str, kind: str, m: int, gated_path: bool = False) -> dict[str, float]:
    """Create m pods with 16 threads; return the seconds from the first create to the last bound."""
    from kubernetes import client

    url = f"{c.api_url}/api/v1/namespaces/{ns}/pods?labelSelector=bench%3D{kind}"
    ctx = c._ssl_for(c.api_url)

    def count_bound() -> int:  # a poll of raw JSON every 0.25 s (same cost for both kinds)
        with urllib.request.urlopen(url, timeout=30, context=ctx) as r:
            items = json.loads(r.read())["items"]
        return sum(1 for p in items if (p.get("spec") or {}).get("nodeName"))

    names = [f"{kind}-{i:05d}" for i in range(m)]
    with c.api_client() as api:
        api.configuration.connection_pool_maxsize = 32
        v1: Any = client.CoreV1Api(api)
        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda n: v1.create_namespaced_pod(ns, pod_body(n, kind, gated_path),
                                                           _preload_content=False), names))  # fmt: skip
        created = time.monotonic() - t0
    deadline = time.monotonic() + 600
    while (n := count_bound()) < m:
        if time.monotonic() > deadline:
            raise SystemExit(f"{kind}: only {n}/{m} pods bound after 600 s")
        time.sleep(0.25)
    last = time.monotonic() - t0
    return {"seconds": round(last, 2), "pods_per_s": round(m / last, 1), "create_seconds": round(created, 2)}


def verb_latency(metrics: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for verb in ("filter", "prioritize", "bind", "preempt"):
        s = re.search(rf'gpupool_extender_request_duration_seconds_sum{{verb="{verb}"}} (\S+)', metrics)
        n = re.search(rf'gpupool_extender_request_duration_seconds_count{{verb="{verb}"}} (\S+)', metrics)
        if s and n and float(n.group(1)):
            out[verb] = {"count": float(n.group(1)), "mean_ms": round(1000 * float(s.group(1)) / float(n.group(1)), 2)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--pods", type=int, default=500)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--full-path", action="store_true", help="also run pods through the webhook and the controller")
    ap.add_argument("--percentage-of-nodes-to-score", type=int, default=0, help="0 = kube-scheduler's default")
    ap.add_argument("--keep", action="store_true", help="leave the run directory")
    args = ap.parse_args()

    nodes = [FakeNode(f"n-{i:04d}", gpus=8, gpu_model="A100-80GB", gpu_memory_mib=81920) for i in range(args.nodes)]
    run_dir = Path(tempfile.mkdtemp(prefix="gpupool-bench-"))
    c = Cluster(run_dir=run_dir, nodes=[])
    t0 = time.monotonic()
    c.up(nodes=False)
    create_nodes(c, nodes)
    c.wait_nodes_ready([n.name for n in nodes], timeout=300)
    print(f"# control plane + {args.nodes} kwok nodes in {time.monotonic() - t0:.1f} s", flush=True)
    sched_cfg = None
    if args.percentage_of_nodes_to_score:
        import yaml

        from e2e.cluster import TEMPLATES

        cfg = yaml.safe_load((TEMPLATES / "sched-gpupool.yaml").read_text())
        cfg["percentageOfNodesToScore"] = args.percentage_of_nodes_to_score
        sched_cfg = yaml.safe_dump(cfg)
    stack = Stack(
        c, nodes=nodes, scheduler_config=sched_cfg, scheduler_verbosity=1,
        publisher_env={"GPUPOOL_HEARTBEAT_INTERVAL_SECONDS": "3600", "GPUPOOL_HEALTH_INTERVAL_SECONDS": "5"},
    )  # fmt: skip
    try:
        stack.up(timeout=600)
        print(f"# gpupool stack up {stack.timings} (scheduler config: {stack.scheduler_config_source})", flush=True)
        for ns in ("warm", "bench-plain", "bench-gpupool"):
            c.create_namespace(ns)
            c.kubectl("label", "namespace", ns, "gpupool.io/webhook=ignore")
        # warm-up: a few pods of each kind (informers, connection pools, the extender's first requests)
        results: dict[str, Any] = {}
        run(c, "warm", "plain", 20)
        run(c, "warm", "gpupool", 20)
        results["plain"] = run(c, "bench-plain", "plain", args.pods)
        print(f"plain:   {results['plain']}", flush=True)
        before = verb_latency(stack.extender_metrics())
        results["gpupool"] = run(c, "bench-gpupool", "gpupool", args.pods)
        print(f"gpupool: {results['gpupool']}", flush=True)
        after = verb_latency(stack.extender_metrics())
        lat = {
            v: {
                "count": after[v]["count"] - before.get(v, {}).get("count", 0),
                "mean_ms_cumulative": after[v]["mean_ms"],
            }
            for v in after
        }
        print(f"extender verbs: {lat}", flush=True)
        if args.full_path:
            c.create_namespace("full")
            results["gpupool_full_path"] = run(c, "full", "gpupool", args.pods, gated_path=True)
            print(f"gpupool via webhook + controller: {results['gpupool_full_path']}", flush=True)
        ratio = results["gpupool"]["pods_per_s"] / results["plain"]["pods_per_s"]
        out = {
            "nodes": args.nodes,
            "pods": args.pods,
            "gpupool_pods_per_s": results["gpupool"]["pods_per_s"],
            "plain_pods_per_s": results["plain"]["pods_per_s"],
            "ratio": round(ratio, 3),
            "details": results,
            "extender_verbs": lat,
            "percentage_of_nodes_to_score": args.percentage_of_nodes_to_score or "default",
        }
        print(
            f"nodes={args.nodes} pods={args.pods} gpupool {out['gpupool_pods_per_s']} pods/s, "
            f"plain {out['plain_pods_per_s']} pods/s, ratio {out['ratio']}"
        )
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2))
    finally:
        stack.down()
        c.down(remove_run_dir=not args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
