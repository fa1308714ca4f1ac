"""Allocate latency of the gpupool device plugin with many bound pods waiting on one node.

Real gRPC over a unix socket (a fake kubelet dials the plugin as the kubelet would); the API server is kmock
(in-process) or, with --kubeconfig, a real one (pods are created in --namespace and deleted afterwards).
For every pod, in bind order, the "kubelet" calls GetPreferredAllocation(available, 1) and then Allocate with
the answer; each Allocate includes matching and the `gpupool.io/allocated` write to the API server.

    .venv/bin/python bench/allocate_latency.py [--pods 100] [--concurrency 1] [--backend mps] [--json]

Reports, never asserts (DESIGN.md §9).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent import futures
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deviceplugin.agent import Agent  # noqa: E402
from deviceplugin.api import pb2  # noqa: E402
from deviceplugin.inventory import NvmlInventory  # noqa: E402
from deviceplugin.kube import Kube, load_api_client  # noqa: E402
from deviceplugin.settings import DevicePluginSettings  # noqa: E402
from gpupool import resources  # noqa: E402
from tests.deviceplugin.helpers import (  # noqa: E402
    KEY,
    FakeApiServer,
    FakeKubelet,
    FakeNvmlBackend,
    assignment_for,
    make_pod,
    nvml_devices,
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 50) * 1e3,
        "p99_ms": percentile(values, 99) * 1e3,
        "mean_ms": statistics.fmean(values) * 1e3,
        "max_ms": max(values) * 1e3,
    }


def create_pods(kube: Kube, node: str, namespace: str, count: int, gpus: list[str]) -> list[tuple[str, str]]:
    """Bound pods with one signed single-slice assignment each; returns (name, slot) in bind order."""
    out = []
    for i in range(count):
        name = f"bench-{i:04d}-{uuid.uuid4().hex[:6]}"
        pod = make_pod(name, node, [1], namespace=namespace, created=f"2025-01-01T00:{i // 60:02d}:{i % 60:02d}Z")
        created = kube.request(
            "POST", f"/api/v1/namespaces/{namespace}/pods", body=pod, content_type="application/json"
        )
        pod["metadata"]["uid"] = created["metadata"]["uid"]
        gpu = i % len(gpus)
        slot = f"gpu{gpu}-{i // len(gpus)}"
        text = assignment_for(
            pod, node, [(0, gpus[gpu], slot, 10, 1000)], at=f"2025-01-01T01:{i // 60:02d}:{i % 60:02d}Z"
        )
        kube.patch_pod_annotations(namespace, name, {resources.ASSIGNMENT: text})
        out.append((name, slot))
    return out


def feed_pods(agent: Agent, node: str, count: int, gpus: list[str]) -> list[tuple[str, str]]:
    """The same pods as `create_pods`, handed to the pod cache directly (no API server)."""
    out, objs = [], []
    for i in range(count):
        name = f"bench-{i:04d}"
        pod = make_pod(name, node, [1], created=f"2025-01-01T00:{i // 60:02d}:{i % 60:02d}Z")
        gpu = i % len(gpus)
        slot = f"gpu{gpu}-{i // len(gpus)}"
        pod["metadata"]["annotations"][resources.ASSIGNMENT] = assignment_for(
            pod, node, [(0, gpus[gpu], slot, 10, 1000)], at=f"2025-01-01T01:{i // 60:02d}:{i % 60:02d}Z"
        )
        objs.append(pod)
        out.append((name, slot))
    agent.cache.replace_all(objs)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    api = None
    kube: Kube | None
    if args.kubeconfig:
        kube = Kube(load_api_client(args.kubeconfig))
        where = "real API server"
    elif args.api == "none":
        kube = None
        where = "no API server (pods fed to the cache; no annotation write): the plugin's own cost"
    else:
        api = FakeApiServer()
        kube = api.kube()
        where = "kmock"
    directory = Path(tempfile.mkdtemp(prefix="dp"))
    key_file = directory / "key"
    key_file.write_bytes(KEY)
    node = f"bench-node-{uuid.uuid4().hex[:6]}"
    gpus_count = max(1, -(-args.pods // 32))
    devices = nvml_devices(gpus_count)
    settings = DevicePluginSettings(
        node_name=node,
        plugin_dir=str(directory),
        signing_key_file=str(key_file),
        backend=args.backend,
        kubelet_poll_seconds=0.05,
        metrics_enabled=False,
        heartbeat_interval_seconds=3600,
    )
    kubelet = FakeKubelet(directory)
    kubelet.start()
    agent = Agent(settings, kube, NvmlInventory(FakeNvmlBackend(devices), numa_of=lambda _: 0), KEY)
    agent.start()
    pods: list[tuple[str, str]] = []
    try:
        kubelet.wait_registration()
        if kube is not None:
            pods = create_pods(kube, node, args.namespace, args.pods, [d.uuid for d in devices])
        else:
            pods = feed_pods(agent, node, args.pods, [d.uuid for d in devices])
        deadline = time.monotonic() + 60
        while len(agent.cache.entries()) < args.pods and time.monotonic() < deadline:
            time.sleep(0.05)
        available = [f"gpu{g}-{k}" for g in range(gpus_count) for k in range(32)]
        preferred_s: list[float] = []
        allocate_s: list[float] = []
        wrong = 0

        def serve(stub: Any, expected_slot: str, pick: list[str]) -> None:
            nonlocal wrong
            t0 = time.perf_counter()
            response = stub.Allocate(
                pb2.AllocateRequest(container_requests=[pb2.ContainerAllocateRequest(devices_ids=pick)]), timeout=30
            )
            allocate_s.append(time.perf_counter() - t0)
            if response.container_responses[0].annotations["gpupool.io/slots"] != expected_slot:
                wrong += 1

        started = time.perf_counter()
        with kubelet.dial(settings.socket_name) as stub:
            if args.concurrency <= 1:
                for _name, slot in pods:
                    t0 = time.perf_counter()
                    answer = stub.GetPreferredAllocation(
                        pb2.PreferredAllocationRequest(
                            container_requests=[
                                pb2.ContainerPreferredAllocationRequest(
                                    available_deviceIDs=available, allocation_size=1
                                )
                            ]
                        ),
                        timeout=30,
                    )
                    preferred_s.append(time.perf_counter() - t0)
                    pick = list(answer.container_responses[0].deviceIDs)
                    serve(stub, slot, pick)
                    available.remove(pick[0])
            else:
                with futures.ThreadPoolExecutor(args.concurrency) as pool:
                    list(pool.map(lambda p: serve(stub, p[1], [p[1]]), pods))
        elapsed = time.perf_counter() - started
        result: dict[str, Any] = {
            "api_server": where,
            "pods": args.pods,
            "gpus": gpus_count,
            "backend": args.backend,
            "concurrency": args.concurrency,
            "allocate": summary(allocate_s),
            "wrong_pod": wrong,
            "allocations_per_s": len(allocate_s) / elapsed,
        }
        if preferred_s:
            result["get_preferred_allocation"] = summary(preferred_s)
        return result
    finally:
        agent.stop()
        kubelet.stop()
        if args.kubeconfig and kube is not None:
            for name, _ in pods:
                try:
                    kube.request("DELETE", f"/api/v1/namespaces/{args.namespace}/pods/{name}")
                except Exception as exc:
                    print(f"cleanup of pod {name} failed: {exc}", file=sys.stderr)
        if api is not None:
            api.close()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=100, help="bound pods waiting on the node (default 100)")
    parser.add_argument("--concurrency", type=int, default=1, help="parallel Allocates (1 = kubelet-like, in turn)")
    parser.add_argument("--backend", default="mps", choices=["mps", "hami-core", "none"])
    parser.add_argument("--kubeconfig", help="use a real API server instead of kmock")
    parser.add_argument(
        "--api", default="kmock", choices=["kmock", "none"], help="none = measure the plugin alone (no API calls)"
    )
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        a = result["allocate"]
        print(
            f"Allocate latency, {result['pods']} bound pods on one node ({result['api_server']}, "
            f"backend {result['backend']}, concurrency {result['concurrency']}):"
        )
        print(
            f"  p50 {a['p50_ms']:.2f} ms   p99 {a['p99_ms']:.2f} ms   "
            f"mean {a['mean_ms']:.2f} ms   max {a['max_ms']:.2f} ms"
        )
        if "get_preferred_allocation" in result:
            g = result["get_preferred_allocation"]
            print(f"  GetPreferredAllocation p50 {g['p50_ms']:.2f} ms   p99 {g['p99_ms']:.2f} ms")
        print(f"  {result['allocations_per_s']:.0f} allocations/s; served the wrong pod: {result['wrong_pod']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
