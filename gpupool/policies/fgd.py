"""`fgd`: Fragmentation Gradient Descent (Weng et al., ATC'23; docs/openb-benchmark.md §7).

For each feasible node, place the pod hypothetically and measure how much the node's
expected fragmentation F_n(M) grows; prefer the smallest growth. The score is the
paper's ⌊100 · σ((F0 − F1) / 1000 milli-GPU)⌋, i.e. σ((F0 − F1) / 100) in compute
units. Sharing slices try every fitting GPU (ascending index, strict `>`: ties to the
lowest); whole and multi-GPU slices take the first fully free GPUs by index.

Evaluations are memoised on the node state and the pod shape (host memory and pod
count are checked first, they are not inputs of the score).
"""

from __future__ import annotations

import math
from typing import ClassVar

from gpupool.fragmentation import Workload, default_workload
from gpupool.ledger import NodeView
from gpupool.policies.base import Choice, Demand, Policy, host_fits, slice_fits, slice_memory
from gpupool.request import WHOLE_GPU_COMPUTE

_MEMO_LIMIT = 1_000_000
_MISS = object()

#: ΔF (compute units) per unit of the sigmoid's argument: 1000 milli-GPU = 100 units
SIGMOID_SCALE = 100.0


def fgd_score(delta: float) -> int:
    """⌊100 · σ(delta / 100)⌋ for delta = F0 − F1 in compute units."""
    return math.floor(100.0 / (1.0 + math.exp(-delta / SIGMOID_SCALE)))


class FGD(Policy):
    """The paper's FGD, integer score and all."""

    name: ClassVar[str] = "fgd"

    def __init__(self, workload: Workload | None = None) -> None:
        self.workload = workload if workload is not None else default_workload()
        self._memo: dict[tuple[object, ...], object] = {}

    def evaluate(self, view: NodeView, demand: Demand) -> Choice | None:
        if not host_fits(view, demand):
            return None
        key = (view.model, view.free_compute, view.free_memory, view.total_memory, view.cpu_free,
               demand.cpu_milli, demand.groups, *self.memo_extra(view, demand))  # fmt: skip
        hit = self._memo.get(key, _MISS)
        if hit is _MISS:
            hit = self._evaluate(view, demand)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = hit
        return hit  # type: ignore[return-value]

    def memo_extra(self, view: NodeView, demand: Demand) -> tuple[object, ...]:
        """More inputs of a subclass's evaluation, for the memo key."""
        return ()

    def score(self, view: NodeView, demand: Demand, picks: tuple[tuple[int, ...], ...]) -> int:
        choice = self.evaluate(view, demand)
        return 0 if choice is None else choice.score

    # --- the gradient ------------------------------------------------------------------------------

    def fragment(self, cpu_free: int | None, free_compute: list[int], model: str, memory_free: int | None = None,
                 gpu_memory: tuple[list[int], tuple[int, ...]] | None = None) -> float:  # fmt: skip
        """The node measure FGD descends: F_n(M) in compute units (`gpu_memory`: each GPU's free and total
        memory, for measures that look at it; FGD does not)."""
        return self.workload.node_fragment(cpu_free, free_compute, model)

    def gpu_value(self, f0: float, f1: float) -> float:
        """How good a hypothetical state is for the per-GPU choice (higher is better)."""
        return float(fgd_score(f0 - f1))

    def node_choice(self, view: NodeView, demand: Demand, f0: float, f1: float,
                    picks: tuple[tuple[int, ...], ...]) -> Choice:  # fmt: skip
        return Choice(fgd_score(f0 - f1), picks)

    def _evaluate(self, view: NodeView, demand: Demand) -> Choice | None:
        model = view.model
        cpu0 = view.cpu_free
        cpu1 = None if cpu0 is None else cpu0 - demand.cpu_milli
        mem0 = view.memory_free
        mem1 = None if mem0 is None else mem0 - demand.memory_mib
        fc = list(view.free_compute)
        fm = list(view.free_memory)
        tm = view.total_memory
        n = len(fc)
        f0 = self.fragment(cpu0, fc, model, mem0, (fm, tm))
        picks: list[tuple[int, ...]] = []
        for group in demand.groups:
            memory = group.memory_mib
            if group.compute < WHOLE_GPU_COMPUTE:
                chosen: list[int] = []
                for _ in range(group.count):
                    best_j = -1
                    best_v = -math.inf
                    seen: set[tuple[int, int, int]] = set()
                    for j in range(n):
                        if j in chosen or not slice_fits(fc[j], fm[j], tm[j], group):
                            continue
                        sig = (fc[j], fm[j], tm[j])
                        if sig in seen:  # equal GPUs give equal states: keep the lowest index
                            continue
                        seen.add(sig)
                        taken = tm[j] if memory is None else memory
                        fc[j] -= group.compute
                        fm[j] -= taken
                        f1 = self.fragment(cpu1, fc, model, mem1, (fm, tm))
                        fc[j] += group.compute
                        fm[j] += taken
                        v = self.gpu_value(f0, f1)
                        if v > best_v:
                            best_v, best_j = v, j
                    if best_j < 0:
                        return None
                    chosen.append(best_j)
                    fc[best_j] -= group.compute
                    fm[best_j] -= tm[best_j] if memory is None else memory
                picks.append(tuple(sorted(chosen)))
            else:
                fitting = [j for j in range(n) if slice_fits(fc[j], fm[j], tm[j], group)]
                if len(fitting) < group.count:
                    return None
                first = tuple(fitting[: group.count])
                for j in first:
                    fc[j] -= group.compute
                    fm[j] -= slice_memory(tm[j], group)
                picks.append(first)
        f1 = self.fragment(cpu1, fc, model, mem1, (fm, tm))
        return self.node_choice(view, demand, f0, f1, tuple(picks))
