"""The openb benchmark matrix (docs/openb-benchmark.md): every trace × policy, compared with the paper.

Usage (from the repository root; seeds run in parallel processes):

    .venv/bin/python bench/openb.py                                   # default trace: fgd, fgdpp, bestfit; 10 seeds
    .venv/bin/python bench/openb.py --traces all --policies fgd,fgdpp --seeds 10 --jobs 8
    .venv/bin/python bench/openb.py --policies all --seeds 3 --json out/openb-matrix.json

One trace at a time, with tables, a plot and per-run CSV rows:

    .venv/bin/gpupool simulate --policy fgd,fgdpp,bestfit --seeds 10 --jobs 2 \\
        --json out/openb.json --plot out/openb.png --csv out/openb-csv
    .venv/bin/gpupool simulate --pods ../shared/data/openb/openb_pod_list_gpushare40.csv --policy fgd,fgdpp

The data folder is `$GPUPOOL_OPENB_DIR`, else `../shared/data/openb` next to the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpupool.policies import available
from gpupool.simulator.cli import run_one
from gpupool.simulator.report import default_data_dir, load_reference, summarise

TRACES = (
    "default", "gpushare20", "gpushare40", "gpushare60", "gpushare80", "gpushare100",
    "cpu200", "gpuspec25", "multigpu40",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--traces", default="default", help="comma-separated, or 'all'")
    parser.add_argument("--policies", default="fgd,fgdpp,bestfit", help="comma-separated, or 'all'")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--seed-base", type=int, default=42)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    traces = list(TRACES) if args.traces == "all" else args.traces.split(",")
    policies = list(available()) if args.policies == "all" else args.policies.split(",")
    unknown = [p for p in policies if p not in available()]
    if unknown or any(t not in TRACES for t in traces):
        print(f"openb.py: error: unknown policy or trace: {unknown or traces}", file=sys.stderr)
        return 2
    nodes = args.data / "openb_node_list_gpu_node.csv"
    if not nodes.is_file():
        print(f"openb.py: error: {nodes}: no such file (set GPUPOOL_OPENB_DIR)", file=sys.stderr)
        return 2
    seeds = range(args.seed_base, args.seed_base + args.seeds)
    runs: dict[tuple[str, str], list[Any]] = {(t, p): [] for t in traces for p in policies}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            pool.submit(run_one, str(nodes), str(args.data / f"openb_pod_list_{t}.csv"), p, s, 1.3, 0.95): (t, p)
            for t in traces for p in policies for s in seeds
        }  # fmt: skip
        for n, future in enumerate(as_completed(futures), 1):
            runs[futures[future]].append(future.result())
            print(f"\r{n}/{len(futures)} runs", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    out: dict[str, dict[str, Any]] = {}
    print(f"{'trace':<12} {'policy':<11} {'alloc@100':>15} {'paper':>15} {'alloc@130':>15} {'frag@80':>8} {'s/run':>6}")
    for t in traces:
        for p in policies:
            r = sorted(runs[(t, p)], key=lambda x: x.seed)
            s = summarise(r, load_reference(args.data / "expected", f"openb_pod_list_{t}", p))
            out.setdefault(t, {})[p] = s
            paper = s.get("paper", {})
            ref = f"{paper['alloc_at_100']:.2f} ± {paper['alloc_at_100_sd']:.2f}" if paper else "—"
            print(f"{t:<12} {p:<11} {s['alloc_at_100']:>7.2f} ± {s['alloc_at_100_sd']:<5.2f} {ref:>15} "
                  f"{s['alloc_at_130']:>7.2f} ± {s['alloc_at_130_sd']:<5.2f} {s['frag_rate_at_80']:>8.2f} "
                  f"{s['seconds_per_run']:>6.1f}")  # fmt: skip
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
