"""First publish and heartbeat of the multi-node node agent (kwok clusters) against a real API server.

    .venv/bin/python bench/publish_latency.py --nodes 5000 [--code /work/main --code .] [--json OUT.json]

Starts etcd + kube-apiserver (the e2e harness, no kwok, no Nodes: label patches answer 404, as before
kwok made the Nodes), applies the CRDs, writes a fake inventory of N nodes x 8 GPUs, and for each `--code`
root runs `MultiNodeAgent.publish_all()` twice in a child with that root first on its path: the first
round (creates every GPUNode) and a heartbeat (one status patch each). Each root gets its own node names,
so every root's first round creates its GPUNodes. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from e2e.cluster import Cluster  # noqa: E402

CHILD = """
import json, sys, time
from deviceplugin.agent import MultiNodeAgent
from deviceplugin.kube import Kube, load_api_client
from deviceplugin.settings import DevicePluginSettings
settings = DevicePluginSettings(multi_node=True, fake_inventory=sys.argv[1], kubeconfig=sys.argv[2])
kube = Kube(load_api_client(settings.kubeconfig), timeout_s=60)
agent = MultiNodeAgent(settings, kube)
out = {}
for round_ in ("first", "heartbeat"):
    t = time.perf_counter()
    ok = agent.publish_all()
    out[round_ + "_s"] = round(time.perf_counter() - t, 2)
    out[round_ + "_ok"] = ok
print(json.dumps(out))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--code", action="append", help="a code root to measure (repeatable; default: this one)")
    ap.add_argument("--json", dest="json_out", type=Path)
    args = ap.parse_args()
    roots = [str(Path(r).resolve()) for r in args.code or [str(ROOT)]]
    run_dir = Path(tempfile.mkdtemp(prefix="gpupool-publish-"))
    c = Cluster(run_dir=run_dir, nodes=[])
    results = {}
    try:
        c.up(kwok=False, nodes=False)
        c.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        c.kubectl("wait", "--for=condition=Established", "crd/gpunodes.gpupool.io", "--timeout=60s")
        for k, root in enumerate(roots):
            gpus = [{"model": "A100-80GB", "memoryMiB": 81920, "count": 8}]
            inventory = run_dir / f"inventory-{k}.json"  # JSON is YAML
            inventory.write_text(json.dumps({f"r{k}-{i:05d}": gpus for i in range(args.nodes)}))
            env = {**os.environ, "PYTHONPATH": root}
            child = subprocess.run(
                [sys.executable, "-c", CHILD, str(inventory), str(c.kubeconfig)],
                env=env, capture_output=True, text=True, timeout=3600,
            )  # fmt: skip
            if child.returncode != 0:
                raise SystemExit(f"{root}: {child.stderr[-2000:]}")
            results[root] = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"{root}: {args.nodes} nodes: {results[root]}", flush=True)
    finally:
        c.down(remove_run_dir=True)
    if args.json_out:
        args.json_out.write_text(json.dumps({"nodes": args.nodes, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
