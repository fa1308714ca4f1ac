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
from dataclasses import dataclass, field
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


@dataclass
class Loss:
    """One run up to 100 % arrived. Compute in units (100 per GPU); `points` converts units to % of capacity."""

    capacity: int
    arrived: int = 0
    allocated: int = 0
    free_gpus: int = 0
    #: arrived % when the last fully free GPU was taken / the first whole-GPU pod failed (None: never)
    last_free_at: float | None = None
    first_whole_failure_at: float | None = None
    #: (GPUs, compute per GPU) -> pods that failed
    failed: Counter[tuple[int, int]] = field(default_factory=Counter)
    #: (compute, smallest remainder a partially used GPU would have left, None: none could) -> sharing pods that
    #: took a fully free GPU after the `after` point
    openings: Counter[tuple[int, int | None]] = field(default_factory=Counter)
    #: remainder -> idle units on partially used GPUs with that remainder
    idle_by_remainder: Counter[int] = field(default_factory=Counter)
    #: (slices held, descending; remainder) -> partially used GPUs
    compositions: Counter[tuple[tuple[int, ...], int]] = field(default_factory=Counter)

    @property
    def points(self) -> float:
        return 100.0 / self.capacity


def analyse(nodes: list[TraceNode], pods: list[TracePod], policy: str, seed: int, after: float = 80.0) -> Loss:
    """Replay (nodes, pods, policy, seed) as `gpupool simulate` does, up to 100 % arrived, and account for it."""
    rng = random.Random(seed)
    capacity_milli = total_gpu_milli(nodes)
    order = shuffled_pods(pods, rng, capacity_milli, DEFAULT_TUNE)
    rank = node_rank(nodes, rng)
    config = pool_config(policy, seed, target_workload(pods), reservation_workload=target_workload(pods, 1.0))
    pool = build_pool(config, rank=rank.__getitem__)
    ledger, placer, engine = build_ledger(nodes, pool.ledger), pool.placer, pool.policies[policy]
    loss = Loss(sum(n.gpus for n in nodes) * WHOLE_GPU_COMPUTE, free_gpus=sum(n.gpus for n in nodes))
    slices_on: defaultdict[str, list[int]] = defaultdict(list)
    arrived_milli = 0
    for pod in order:
        arrived_milli += pod.gpu_request_milli
        arrived = 100.0 * arrived_milli / capacity_milli
        if arrived > 100.0:
            break
        loss.arrived += pod.num_gpu * pod.compute
        request = pod_request(pod)
        plan = placer.best(request)
        if plan is None:
            loss.failed[(pod.num_gpu, pod.compute)] += 1
            if pod.compute == WHOLE_GPU_COMPUTE and loss.first_whole_failure_at is None:
                loss.first_whole_failure_at = arrived
            continue
        for s in plan.slices:
            if ledger.gpu_free(s.gpu)[0] == WHOLE_GPU_COMPUTE:
                loss.free_gpus -= 1
                if loss.free_gpus == 0:
                    loss.last_free_at = arrived
                if pod.compute < WHOLE_GPU_COMPUTE and arrived > after:
                    loss.openings[(pod.compute, best_partial_remainder(ledger, nodes, pod))] += 1
            slices_on[s.gpu].append(s.compute)
        ledger.commit(pod.name, plan.node, plan.slices, cpu_milli=pod.cpu_milli, host_memory_mib=pod.memory_mib)
        engine.placed(plan.node, Demand.of(request))
        loss.allocated += pod.num_gpu * pod.compute
    for n in nodes:
        for gpu in ledger.gpus_of(n.name):
            free = ledger.gpu_free(gpu.uuid)[0]
            if 0 < free < WHOLE_GPU_COMPUTE:
                loss.idle_by_remainder[free] += free
                loss.compositions[(tuple(sorted(slices_on[gpu.uuid], reverse=True)), free)] += 1
    return loss


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

    loss = analyse(load_nodes(args.nodes), load_pods(args.pods), args.policy, args.seed, args.after)
    points = loss.points
    print(f"{args.pods.name} {args.policy} seed {args.seed}: allocated {loss.allocated * points:.2f} % at 100 % "
          f"arrived (the pods arrived by then ask {loss.arrived * points:.2f} %)")  # fmt: skip
    last = "never" if loss.last_free_at is None else f"at {loss.last_free_at:.2f} % arrived"
    first = "none" if loss.first_whole_failure_at is None else f"at {loss.first_whole_failure_at:.2f} %"
    print(f"  last fully free GPU taken: {last}; first whole-GPU pod failed: {first}; {loss.free_gpus} GPUs free")
    print("failed pods (GPUs, compute per GPU): count, points")
    for (count, compute), k in sorted(loss.failed.items(), key=lambda kv: -kv[1] * kv[0][0] * kv[0][1])[: args.top]:
        print(f"  {count} x {compute:3d}: {k:5d}  {k * count * compute * points:.2f}")
    print(f"sharing pods that took a free GPU after {args.after:g} % arrived (compute, best partial remainder): count")
    for (compute, alternative), k in sorted(loss.openings.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {compute:3d}, {'no partially used GPU fits' if alternative is None else alternative}: {k}")
    print("idle compute by remainder (remainder: points)")
    for free, units in sorted(loss.idle_by_remainder.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {free:3d}: {units * points:.2f}")
    print("partially used GPUs by slices held (slices, remainder: GPUs, points)")
    for (held, free), k in sorted(loss.compositions.items(), key=lambda kv: -kv[1] * kv[0][1])[: args.top]:
        print(f"  {held}, {free}: {k}  {k * free * points:.2f}")
    print(f"(arrived % counts GPU demand in milli-GPU, {MILLI} per GPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
