"""kube-apiserver CPU per GPUNode status write: the CRD as shipped against schema variants (issue 16).

    python bench/gpunode_status_write.py --rounds 3 --json OUT.json

The controller writes a GPUNode's ``status`` (its allocation rows and summary) after binds on that node, up to
``gpunode_status_writes_per_second`` across the cluster; in a 1,000-pod burst that is one write per node touched.
A local control plane (e2e.cluster: etcd, kube-apiserver, kube-controller-manager, whose garbage collector watches
every resource), no kwok nodes. Per round and variant: the GPUNode CRD is (re)created, ``--objects`` GPUNodes get a
node agent's ``status.gpus`` (8 GPUs) and a controller's status, then ``--writes`` merge patches of
``status.allocated`` + ``computePercent`` (what `controller.runtime.write_status` sends) go out from 4 threads;
the API server's CPU over them (``/proc/<pid>/stat``) / writes. Variants, alternated every round:

* ``shipped``: crds/gpunode.yaml as is;
* ``keyed``: ``status.allocated`` as a list keyed by ``uuid`` (``x-kubernetes-list-type: map``; gpupool's schema
  before 2026-12-03): managedFields then list every key's fields;
* ``summary``: no ``status.allocated`` at all, only the summary columns: what the rows themselves cost.

Prints one line per round and variant, then the medians and each round's ``keyed`` / ``shipped`` and
``summary`` / ``shipped`` (the host drifts within a run; a round's variants run back to back). docs/e2e.md, issue 16.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from e2e_throughput import Api, cpu_seconds

from e2e.cluster import Cluster

ROOT = Path(__file__).resolve().parent.parent
BASE = "/apis/gpupool.io/v1alpha1/gpunodes"
MERGE = "application/merge-patch+json"
VARIANTS = ("shipped", "keyed", "summary")
GPUS = [{"uuid": f"GPU-{i:08x}-0000-4000-8000-{i:012x}", "index": i, "model": "A100-80GB", "memoryMiB": 81920,
         "health": "Healthy"} for i in range(8)]  # fmt: skip


def crd(variant: str) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(yaml.safe_load((ROOT / "crds" / "gpunode.yaml").read_text()))
    if variant == "keyed":
        allocated = body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
            "allocated"
        ]
        allocated["x-kubernetes-list-type"] = "map"
        allocated["x-kubernetes-list-map-keys"] = ["uuid"]
    return body


def allocated(k: int) -> list[dict[str, Any]]:
    return [{"uuid": g["uuid"], "compute": (7 * k + j) % 100, "memoryMiB": (4096 * k + j) % 81920, "slices": k % 7,
             "reservedCompute": 0, "reservedMemoryMiB": 0} for j, g in enumerate(GPUS)]  # fmt: skip


def status_patch(variant: str, k: int) -> dict[str, Any]:
    summary = {"computePercent": k % 100, "memoryPercent": k % 90}
    return {"status": summary if variant == "summary" else {"allocated": allocated(k), **summary}}


def recreate_crd(c: Cluster, body: dict[str, Any]) -> None:
    """Replace the GPUNode CRD by *body* (its objects go with the old one) and wait until it is served."""
    name = body["metadata"]["name"]
    c.kubectl("delete", "crd", name, "--ignore-not-found", "--wait=true", timeout=120)
    c.kubectl("apply", "-f", "-", input=yaml.safe_dump(body))
    c.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s", timeout=90)
    time.sleep(2.0)  # the new resource's handler and the garbage collector's informer in place


def setup_objects(api: Api, variant: str, n: int) -> None:
    agent = {"status": {"gpus": GPUS, "heartbeatTime": "2026-12-03T00:00:00Z", "agentEndpoint": "10.0.0.1:9400",
                        "slotsPerGPU": 7, "remoteSlots": 0}}  # fmt: skip
    for i in range(n):
        name = f"n-{i:05d}"
        for _ in range(50):  # the resource may answer 404 for a moment after Established
            try:
                api.request("POST", BASE, {"apiVersion": "gpupool.io/v1alpha1", "kind": "GPUNode",
                                           "metadata": {"name": name}, "spec": {}})  # fmt: skip
                break
            except RuntimeError as exc:
                if "HTTP 409" in str(exc):
                    break
                time.sleep(0.2)
        api.request("PATCH", f"{BASE}/{name}/status", agent, MERGE)
        summary = {"gpuCount": 8, "model": "A100-80GB", "healthy": "8/8"}
        first = status_patch(variant, 0)
        api.request("PATCH", f"{BASE}/{name}/status", {"status": {**first["status"], **summary}}, MERGE)


def measure(api: Api, pid: int, variant: str, n: int, writes: int, threads: int = 4) -> dict[str, float]:
    def worker(t: int) -> None:
        for k in range(t, writes, threads):
            api.request("PATCH", f"{BASE}/n-{k % n:05d}/status", status_patch(variant, k + 1), MERGE)

    c0, t0 = cpu_seconds(pid), time.monotonic()
    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - c0
    size = len(json.dumps(api.request("GET", f"{BASE}/n-00001")))
    return {"cpu_ms_per_write": round(1000 * cpu / writes, 3), "wall_ms_per_write": round(1000 * wall / writes, 3),
            "object_bytes": size}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--objects", type=int, default=200)
    ap.add_argument("--writes", type=int, default=1500)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    c = Cluster(run_dir=Path(tempfile.mkdtemp(prefix="gpupool-gpunode-write-")), nodes=[])
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    try:
        c.up(kwok=False, nodes=False)
        api = Api(c)
        pid = c.processes["kube-apiserver"].pid
        assert pid is not None
        for r in range(args.rounds):
            for variant in VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS)):
                recreate_crd(c, crd("shipped" if variant == "summary" else variant))
                setup_objects(api, variant, args.objects)
                got = measure(api, pid, variant, args.objects, args.writes)
                runs[variant].append(got)
                print(f"round {r} {variant}: {json.dumps(got)}", flush=True)
    finally:
        c.down(remove_run_dir=True)
    med = {v: statistics.median(x["cpu_ms_per_write"] for x in rs) for v, rs in runs.items()}

    def by_round(v: str) -> list[float]:  # each round's own ratio: the host's drift over the run cancels out
        pairs = zip(runs[v], runs["shipped"], strict=True)
        return [round(a["cpu_ms_per_write"] / b["cpu_ms_per_write"], 3) for a, b in pairs]

    out = {"median_cpu_ms_per_write": med,
           "keyed_over_shipped": statistics.median(by_round("keyed")), "keyed_over_shipped_by_round": by_round("keyed"),
           "summary_over_shipped": statistics.median(by_round("summary")),
           "summary_over_shipped_by_round": by_round("summary"), "runs": runs}  # fmt: skip
    print("median: " + json.dumps({k: v for k, v in out.items() if k != "runs"}), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
