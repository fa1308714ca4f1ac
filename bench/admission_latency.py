"""Latency from a freed slice to the next admission, through a real kube-apiserver and `gpupool-controller`.

Setup (tests/controller/real_api.py): etcd + kube-apiserver + KCM, one GPUNode with one GPU, a GPUQueue with
quota for one whole GPU, the controller as a process (webhooks registered) with the admission timer at
`--interval` seconds. Each round: pod `holder` is admitted, pod `waiter` waits (its Event says so), then
`holder` is deleted (grace 0: an unbound pod is gone when the DELETE returns); measured is the time from that
DELETE's answer to the first GET (polled every ~5 ms) that shows `waiter` without its admission gate.
Median and p90 over `--rounds`.

`--repo` runs the controller of another checkout (e.g. the code before the event-driven cycle) against the
same harness: `python -m controller.main` is started with that directory as its working directory.

    .venv/bin/python bench/admission_latency.py [--rounds 9] [--interval 1.0] [--repo PATH] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e.polling import wait_for
from gpupool.objects import pod_gated
from tests.controller.real_api import ControllerProcess, RealAPI, gpu_pod, wait_webhook_serving


def whole_gpu(name: str) -> dict[str, Any]:
    return gpu_pod(name, compute=100, memory=1024)


def one_round(api: RealAPI, ns: str, i: int) -> float:
    holder, waiter = f"holder-{i}", f"waiter-{i}"
    api.create_pod(ns, whole_gpu(holder))
    wait_for(lambda: not pod_gated(api.pod(ns, holder)), 30, f"{holder} admitted", 0.05)
    api.create_pod(ns, whole_gpu(waiter))
    wait_for(lambda: any(e.get("reason") == "GPUPoolWaiting" for e in api.events(ns, waiter)), 30,
             f"{waiter} waiting", 0.05)  # fmt: skip
    api.core.delete_namespaced_pod(holder, ns, grace_period_seconds=0)
    freed = time.perf_counter()
    deadline = freed + 30
    while pod_gated(api.pod(ns, waiter)):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{waiter} not admitted within 30 s of the freed slice")
        time.sleep(0.005)
    latency = time.perf_counter() - freed
    api.delete_pod(ns, waiter)
    return latency


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--interval", default="1.0", help="GPUPOOL_ADMISSION_INTERVAL_SECONDS of the controller")
    ap.add_argument("--repo", type=Path, default=None, help="run the controller of this checkout")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    api = RealAPI.start("latency")
    try:
        api.service_account("gpupool-controller")
        api.gpu_node("lat-0", gpus=1, memory_mib=16384)
        ctl = ControllerProcess(api, "ctl-lat", env={"GPUPOOL_ADMISSION_INTERVAL_SECONDS": args.interval})
        api.cluster.start_process(ctl.name, [sys.executable, "-m", "controller.main"], env=ctl.env(),
                                  cwd=args.repo or Path(__file__).resolve().parents[1], ready_check=ctl.ready,
                                  ready_timeout=60)  # fmt: skip
        ctl.install_webhooks()
        probe = api.namespace("probe")
        wait_webhook_serving(api, probe, lambda n: api.create_pod(probe, gpu_pod(n, compute=1, memory=1)))
        ns = api.namespace("lat")
        body = {"apiVersion": "gpupool.io/v1alpha1", "kind": "GPUQueue", "metadata": {"name": "lat"},
                "spec": {"namespaces": [ns], "nominalQuota": {"compute": 100}}}  # fmt: skip
        api.custom.create_cluster_custom_object("gpupool.io", "v1alpha1", "gpuqueues", body)
        samples = [one_round(api, ns, i) for i in range(args.rounds)]
    finally:
        api.down()
    ordered = sorted(samples)
    out = {
        "rounds": args.rounds,
        "interval_s": float(args.interval),
        "repo": str(args.repo or "this checkout"),
        "median_s": round(statistics.median(samples), 4),
        "p90_s": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 4),
        "samples_s": [round(s, 4) for s in samples],
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
