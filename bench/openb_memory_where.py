"""Where the stranded GPU memory sits: one replay of a memory-annotated openb variant, cut at an arrived %.

    .venv/bin/python bench/openb_memory_where.py --pods /tmp/mem/pods.csv --nodes /tmp/mem/nodes.csv \\
        --policy fgdpp-blind --seed 42 --at 100

(the variant: `bench/openb_memory.py`'s docstring). Prints, per GPU size: GPUs, GPUs with no compute left, the
stranded memory (`protocol.stranded_gpu_memory`, % of all GPU memory) on GPUs with no compute left and on GPUs
with some, free memory, and the compute left without memory (GPU memory per compute unit short of the free
compute). The run is the protocol's (`protocol.replay`) with its pod order cut at the first pod where `--at` %
has arrived, so the figures are the replay's at that point. `fgdpp-blind` = fgdpp with its GPU-memory term off.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpupool.ledger import Ledger
from gpupool.policies import fgdpp
from gpupool.request import WHOLE_GPU_COMPUTE
from gpupool.simulator import protocol
from gpupool.simulator.trace import MILLI, TraceNode, TracePod, load_nodes, load_pods


def cut_replay(nodes: list[TraceNode], pods: list[TracePod], policy: str, seed: int, at: float) -> tuple[
        protocol.RunResult, Ledger]:  # fmt: skip
    """The protocol's replay stopped once `at` % of the GPU capacity has arrived, and its ledger then."""
    capacity = sum(n.gpus for n in nodes) * MILLI
    shuffled, build = protocol.shuffled_pods, protocol.build_ledger
    held: list[Ledger] = []

    def cut(order_of: list[TracePod], *args: object) -> list[TracePod]:
        order = shuffled(order_of, *args)  # type: ignore[arg-type]
        arrived = 0
        for i, pod in enumerate(order):
            arrived += pod.gpu_request_milli
            if arrived * 100 >= at * capacity:
                return order[: i + 1]
        return order

    def keep(n: list[TraceNode], ledger: Ledger | None = None) -> Ledger:
        held.append(build(n, ledger))
        return held[-1]

    protocol.shuffled_pods, protocol.build_ledger = cut, keep  # type: ignore[assignment]
    try:
        result = protocol.replay(nodes, pods, policy, seed)
    finally:
        protocol.shuffled_pods, protocol.build_ledger = shuffled, build
    return result, held[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=Path, required=True)
    parser.add_argument("--nodes", type=Path, required=True)
    parser.add_argument("--policy", default="fgdpp")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--at", type=float, default=100.0, help="arrived %% at which to look")
    args = parser.parse_args(argv)
    fgdpp.GPU_MEMORY_WEIGHT = 0.0 if args.policy == "fgdpp-blind" else 1.0  # read when the policy is built
    nodes = load_nodes(args.nodes)
    result, ledger = cut_replay(nodes, load_pods(args.pods), args.policy.removesuffix("-blind"), args.seed, args.at)
    rows: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    memory = 0
    for n in nodes:
        view = ledger.view(n.name)
        for c, m, t in zip(view.free_compute, view.free_memory, view.total_memory, strict=True):
            memory += t
            row = rows[t]
            row["gpus"] += 1
            row["full"] += c == 0
            row["free_mib"] += m
            usable = c * t // WHOLE_GPU_COMPUTE
            if m > usable:
                row["stranded_full" if c == 0 else "stranded_partial"] += m - usable
            short = c - m * WHOLE_GPU_COMPUTE / t
            if short > 0:
                row["compute_short"] += short
    print(f"{args.policy} seed {args.seed} at {result.arrived[-1]:.2f} % arrived: alloc {result.allocated[-1]:.2f} %, "
          f"stranded GPU memory {result.memory_stranded[-1]:.2f} %")  # fmt: skip
    print(f"{'GPU':>7} {'GPUs':>6} {'no compute':>10} {'stranded there':>14} {'elsewhere':>9} {'free memory':>11} "
          f"{'compute w/o memory':>18}")  # fmt: skip
    for t in sorted(rows):
        r = rows[t]
        print(f"{t // 1024:>4} GiB {r['gpus']:>6.0f} {r['full']:>10.0f} {100 * r['stranded_full'] / memory:>13.2f}% "
              f"{100 * r['stranded_partial'] / memory:>8.2f}% {r['free_mib'] / 1024:>7.0f} GiB "
              f"{r['compute_short'] / WHOLE_GPU_COMPUTE:>11.1f} GPUs")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
