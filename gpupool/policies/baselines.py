"""The paper's baseline policies, as the authors implemented them (docs/openb-benchmark.md §8).

GPU choice for sharing slices is best fit (smallest free that fits, lowest index on
ties) except for `random` (a uniformly random fitting GPU); whole and multi-GPU
slices take the lowest-index fully free GPUs. Scores use the simulator's integer
arithmetic. Capacities are normalised by the paper's largest node spec: 128 cores
and 8 GPUs (8000 milli-GPU = 800 compute units).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar

from gpupool.ledger import NodeView
from gpupool.policies.base import (
    MAX_SCORE,
    Choice,
    Demand,
    Picks,
    Policy,
    SliceGroup,
    choose_per_group,
    gpu_class,
    is_sharing,
)
from gpupool.request import WHOLE_GPU_COMPUTE

#: the paper's normalisation constants
MAX_SPEC_CPU_MILLI = 128_000
MAX_SPEC_GPU_UNITS = 8 * WHOLE_GPU_COMPUTE


def _cpu(view: NodeView) -> float:
    """Free CPU for scoring; untracked CPU (live extender) counts as none to weigh."""
    return 0.0 if view.cpu_free is None else float(view.cpu_free)


def lowest_index_fit(view: NodeView, demand: Demand, rng: random.Random | None = None) -> Picks | None:
    """Whole/multi slices on the lowest-index fitting GPUs; sharing slices on a random one (with `rng`)."""

    def select(fitting: list[int], free_c: list[int], free_m: list[int], group: SliceGroup) -> tuple[int, ...]:
        if rng is not None and is_sharing(group):
            return (fitting[rng.randrange(len(fitting))],)
        return tuple(fitting[: group.count])

    return choose_per_group(view, demand, select)


class RandomPolicy(Policy):
    """`random`: a uniformly random feasible node, and a uniformly random fitting GPU for sharing slices."""

    name: ClassVar[str] = "random"
    deterministic: ClassVar[bool] = False
    random_node: ClassVar[bool] = True

    def __init__(self, seed: int | None = None) -> None:
        self.rng = random.Random(seed)

    def pick_node(self, feasible: Sequence[str]) -> str:
        """One of `feasible` (sorted by rank), uniformly."""
        return feasible[self.rng.randrange(len(feasible))]

    def choose(self, view: NodeView, demand: Demand) -> Picks | None:
        return lowest_index_fit(view, demand, self.rng)

    def score(self, view: NodeView, demand: Demand, picks: Picks) -> int:
        return MAX_SCORE


class DotProd(Policy):
    """`dotprod`: prefer the node whose free (CPU, GPU) vector has the smallest dot product with the request."""

    name: ClassVar[str] = "dotprod"

    def score(self, view: NodeView, demand: Demand, picks: Picks) -> int:
        node = (_cpu(view) / MAX_SPEC_CPU_MILLI, view.idle_compute / MAX_SPEC_GPU_UNITS)
        pod = (demand.cpu_milli / MAX_SPEC_CPU_MILLI, demand.gpu_units / MAX_SPEC_GPU_UNITS)
        dot = (node[0] * pod[0] + node[1] * pod[1]) / 2
        return int(MAX_SCORE * (1 - dot))


class BestFit(Policy):
    """`bestfit`: the node with the least CPU and GPU left after the placement (min–max normalised)."""

    name: ClassVar[str] = "bestfit"

    def score(self, view: NodeView, demand: Demand, picks: Picks) -> int:
        raw = (_cpu(view) - demand.cpu_milli) / MAX_SPEC_CPU_MILLI * 0.5
        raw += (view.idle_compute - demand.gpu_units) / MAX_SPEC_GPU_UNITS * 0.5
        return max(0, int((1.0 - raw) * MAX_SCORE))

    def rescore(self, choices: Sequence[Choice]) -> list[Choice]:
        if not choices:
            return []
        low = min(c.score for c in choices)
        high = max(c.score for c in choices)
        span = high - low
        if span == 0:
            return [Choice(0, c.picks) for c in choices]
        return [Choice((c.score - low) * MAX_SCORE // span, c.picks) for c in choices]


class Packing(Policy):
    """`packing`: already shared GPUs first, then partly used nodes, then empty nodes (fewest GPUs first)."""

    name: ClassVar[str] = "packing"

    def score(self, view: NodeView, demand: Demand, picks: Picks) -> int:
        if demand.gpu_units <= 0:
            return 0
        free = view.free_compute
        fully_free = sum(1 for r in free if r >= WHOLE_GPU_COMPUTE)
        if fully_free == view.gpu_count:
            return max(MAX_SCORE // 3 - fully_free, fully_free)
        used = [j for chosen in picks for j in chosen]
        fully_free_used = sum(1 for j in set(used) if free[j] >= WHOLE_GPU_COMPUTE)
        if fully_free_used > 0:
            return max(MAX_SCORE // 2 - fully_free_used, MAX_SCORE // 3)
        # free milli × 100 / 1000 per GPU = free compute units
        ratio = sum(free[j] for j in used)
        return max(MAX_SCORE - ratio // 10, MAX_SCORE // 2)


class Clustering(Policy):
    """`clustering`: keep pods of one class ("share", "k-gpu") together.

    Stateful: it must know which classes each node hosts. The simulator tells it
    through `placed`; the extender and the controller do not offer it (`SIMULATOR_ONLY`).
    Because the state is not in the node view, nodes are not grouped by view
    (`deterministic = False`).
    """

    name: ClassVar[str] = "clustering"
    deterministic: ClassVar[bool] = False

    def __init__(self) -> None:
        self.classes: dict[str, Counter[str]] = {}

    def placed(self, node: str, demand: Demand) -> None:
        cls = gpu_class(demand)
        if cls:
            self.classes.setdefault(node, Counter())[cls] += 1

    def released(self, node: str, demand: Demand) -> None:
        cls = gpu_class(demand)
        counts = self.classes.get(node)
        if cls and counts and counts[cls] > 0:
            counts[cls] -= 1
            if counts[cls] == 0:
                del counts[cls]

    def score(self, view: NodeView, demand: Demand, picks: Picks) -> int:
        cls = gpu_class(demand)
        if not cls:
            return 0
        left = view.idle_compute  # compute units; 8000 milli = 800 units
        fill = (MAX_SCORE // 4) * (MAX_SPEC_GPU_UNITS - left) // MAX_SPEC_GPU_UNITS
        hosted = self.classes.get(view.name)
        if hosted and hosted.get(cls, 0) > 0:
            return fill + (MAX_SCORE * 3 // 4 if len(hosted) == 1 else MAX_SCORE * 2 // 4)
        if not hosted:
            return fill + MAX_SCORE // 4
        return fill
