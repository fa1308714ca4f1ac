"""Where one openb run loses GPU allocation at 100 % arrived (docs/openb.md, "Where the loss sits").

Replays one (trace, policy, seed) exactly as `gpupool simulate` does (`gpupool.simulator.protocol`), up to the
pod that brings the arrived GPU demand past 100 % of capacity, and prints:

* the allocation there, and the arrived % at which the last fully free GPU went and the first whole-GPU pod failed;
* the failed pods by (GPUs, compute per GPU), in points of capacity;
* the sharing pods that took a fully free GPU after `--after` % arrived, by whether any partially used GPU could
  have taken them (CPU, host memory and model allowing), with the smallest remainder such a GPU would have left;
* the idle compute by remainder, and the most wasteful GPU compositions (the slices each partially used GPU holds).

    .venv/bin/python bench/openb_loss.py --policy fgdpp --seed 42
    .venv/bin/python bench/openb_loss.py --pods ../shared/data/openb/openb_pod_list_gpushare40.csv --policy fgd
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpupool.ledger import Ledger
from gpupool.policies.base import Demand
from gpupool.pool import build_pool
from gpupool.request import WHOLE_GPU_COMPUTE
from gpupool.simulator.protocol import (
    DEFAULT_TUNE,
    build_ledger,
    node_rank,
    pod_request,
    pool_config,
    shuffled_pods,
)
from gpupool.simulator.report import default_data_dir
from gpupool.simulator.trace import MILLI, TraceNode, TracePod, load_nodes, load_pods, target_workload, total_gpu_milli


def best_partial_remainder(ledger: Ledger, nodes: list[TraceNode], pod: TracePod) -> int | None:
    """The smallest compute a partially used GPU would keep after taking `pod` (None: no such GPU can)."""
    best: int | None = None
    for n in nodes:
        if pod.models and n.model not in pod.models:
            continue
        view = ledger.view(n.name)
        if (view.cpu_free is not None and view.cpu_free < pod.cpu_milli) or (
            view.memory_free is not None and view.memory_free < pod.memory_mib
        ):
            continue
        for free in view.free_compute:
            if pod.compute <= free < WHOLE_GPU_COMPUTE and (best is None or free - pod.compute < best):
                best = free - pod.compute
    return best


def main(argv: list[str] | None = None) -> int:
    data = default_data_dir()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=Path, default=data / "openb_pod_list_default.csv")
    parser.add_argument("--nodes", type=Path, default=data / "openb_node_list_gpu_node.csv")
    parser.add_argument("--policy", default="fgdpp")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--after", type=float, default=80.0, help="report free-GPU openings after this arrived %%")
    parser.add_argument("--top", type=int, default=20, help="rows per list")
    args = parser.parse_args(argv)

    nodes, pods = load_nodes(args.nodes), load_pods(args.pods)
    rng = random.Random(args.seed)
    capacity_milli = total_gpu_milli(nodes)
    order = shuffled_pods(pods, rng, capacity_milli, DEFAULT_TUNE)
    rank = node_rank(nodes, rng)
    config = pool_config(args.policy, args.seed, target_workload(pods),
                         reservation_workload=target_workload(pods, 1.0))  # fmt: skip
    pool = build_pool(config, rank=rank.__getitem__)
    ledger, placer, engine = build_ledger(nodes, pool.ledger), pool.placer, pool.policies[args.policy]
    capacity = sum(n.gpus for n in nodes) * WHOLE_GPU_COMPUTE
    points = 100.0 / capacity

    free_gpus = sum(n.gpus for n in nodes)
    last_free_at: float | None = None
    first_whole_failure_at: float | None = None
    failed: Counter[tuple[int, int]] = Counter()
    openings: Counter[tuple[int, int | None]] = Counter()
    slices_on: defaultdict[str, list[int]] = defaultdict(list)
    arrived_milli = allocated = 0
    for pod in order:
        arrived_milli += pod.gpu_request_milli
        arrived = 100.0 * arrived_milli / capacity_milli
        if arrived > 100.0:
            break
        request = pod_request(pod)
        plan = placer.best(request)
        if plan is None:
            failed[(pod.num_gpu, pod.compute)] += 1
            if pod.compute == WHOLE_GPU_COMPUTE and first_whole_failure_at is None:
                first_whole_failure_at = arrived
            continue
        for s in plan.slices:
            if ledger.gpu_free(s.gpu)[0] == WHOLE_GPU_COMPUTE:
                free_gpus -= 1
                if free_gpus == 0:
                    last_free_at = arrived
                if pod.compute < WHOLE_GPU_COMPUTE and arrived > args.after:
                    openings[(pod.compute, best_partial_remainder(ledger, nodes, pod))] += 1
            slices_on[s.gpu].append(s.compute)
        ledger.commit(pod.name, plan.node, plan.slices, cpu_milli=pod.cpu_milli, host_memory_mib=pod.memory_mib)
        engine.placed(plan.node, Demand.of(request))
        allocated += pod.num_gpu * pod.compute

    print(f"{args.pods.name} {args.policy} seed {args.seed}: allocated {allocated * points:.2f} % at 100 % arrived")
    last = "never" if last_free_at is None else f"at {last_free_at:.2f} % arrived"
    first = "none" if first_whole_failure_at is None else f"at {first_whole_failure_at:.2f} %"
    print(f"  last fully free GPU taken: {last}; first whole-GPU pod failed: {first}; {free_gpus} GPUs free")
    print("failed pods (GPUs, compute per GPU): count, points")
    for (count, compute), k in sorted(failed.items(), key=lambda kv: -kv[1] * kv[0][0] * kv[0][1])[: args.top]:
        print(f"  {count} x {compute:3d}: {k:5d}  {k * count * compute * points:.2f}")
    print(f"sharing pods that took a free GPU after {args.after:g} % arrived (compute, best partial remainder): count")
    for (compute, alternative), k in sorted(openings.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {compute:3d}, {'no partially used GPU fits' if alternative is None else alternative}: {k}")
    idle_by_remainder: Counter[int] = Counter()
    compositions: Counter[tuple[tuple[int, ...], int]] = Counter()
    for n in nodes:
        for gpu in ledger.gpus_of(n.name):
            free = ledger.gpu_free(gpu.uuid)[0]
            if 0 < free < WHOLE_GPU_COMPUTE:
                idle_by_remainder[free] += free
                compositions[(tuple(sorted(slices_on[gpu.uuid], reverse=True)), free)] += 1
    print("idle compute by remainder (remainder: points)")
    for free, units in sorted(idle_by_remainder.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {free:3d}: {units * points:.2f}")
    print("partially used GPUs by slices held (slices, remainder: GPUs, points)")
    for (held, free), k in sorted(compositions.items(), key=lambda kv: -kv[1] * kv[0][1])[: args.top]:
        print(f"  {held}, {free}: {k}  {k * free * points:.2f}")
    print(f"(arrived % counts GPU demand in milli-GPU, {MILLI} per GPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
