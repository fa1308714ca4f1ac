"""GPU memory in placement: the default policy against a memory-blind one on a memory-annotated openb variant.

Build the variant first (how memory is assigned: `bench/openb_variants.py`, `--memory`):

    .venv/bin/python bench/openb_variants.py --pods ../shared/data/openb/openb_pod_list_default.csv --share 0 \\
        --seed 1 --out /tmp/mem/pods.csv --memory /tmp/mem/nodes.csv
    .venv/bin/python bench/openb_memory.py --pods /tmp/mem/pods.csv --nodes /tmp/mem/nodes.csv --seeds 3 --jobs 2

Prints, per policy, the allocation ratio and the stranded GPU memory (`protocol.stranded_gpu_memory`, % of all
GPU memory) at 80, 90, 100 and 130 % arrived, mean over seeds. `fgdpp-blind` is fgdpp with its GPU-memory term off
(`fgdpp.GPU_MEMORY_WEIGHT = 0`), everything else equal. Where the memory strands, per GPU size:
`bench/openb_memory_where.py`. Figures and reading: docs/openb.md "### GPU memory".
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpupool.policies import fgdpp
from gpupool.simulator.metrics import discretise, mean_sd
from gpupool.simulator.protocol import replay
from gpupool.simulator.trace import load_nodes, load_pods

POLICIES = ("fgd", "fgdpp-blind", "fgdpp")
#: arrived % at which to report (at 80 and 90 no policy has failed a GPU pod yet: equal allocation)
POINTS = (80, 90, 100, 130)


def run(nodes_path: str, pods_path: str, policy: str, seed: int) -> dict[int, tuple[float, float]]:
    """(alloc, stranded memory) at 80, 90, 100 and 130 % arrived, of one run."""
    fgdpp.GPU_MEMORY_WEIGHT = 0.0 if policy == "fgdpp-blind" else 1.0  # read when the policy is built
    r = replay(load_nodes(nodes_path), load_pods(pods_path), policy.removesuffix("-blind"), seed)
    alloc = discretise(r.arrived, r.allocated)
    stranded = discretise(r.arrived, r.memory_stranded)
    return {x: (alloc[x], stranded[x]) for x in POINTS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=Path, required=True)
    parser.add_argument("--nodes", type=Path, required=True)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-base", type=int, default=42)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    policies = args.policies.split(",")
    seeds = list(range(args.seed_base, args.seed_base + args.seeds))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {(p, s): pool.submit(run, str(args.nodes), str(args.pods), p, s) for p in policies for s in seeds}
        results = {key: f.result() for key, f in futures.items()}
    print("alloc % / stranded GPU memory % (of all GPU memory) at arrived %, mean over seeds")
    print(f"{'policy':<12} " + " ".join(f"{f'@{x}':>15}" for x in POINTS))
    for p in policies:
        cells = []
        for x in POINTS:
            a = mean_sd([results[(p, s)][x][0] for s in seeds])[0]
            m = mean_sd([results[(p, s)][x][1] for s in seeds])[0]
            cells.append(f"{a:>7.2f} / {m:<5.2f}")
        print(f"{p:<12} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
