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
from collections.abc import Sequence
from typing import ClassVar, cast

import numpy as np

from gpupool.fragmentation import UNLIMITED, Floats, Ints, Workload, default_workload
from gpupool.ledger import NodeView
from gpupool.policies.base import Choice, Demand, Policy, SliceGroup, host_fits, slice_fits, slice_memory
from gpupool.request import WHOLE_GPU_COMPUTE

_MEMO_LIMIT = 1_000_000
#: fewer states than this are evaluated one by one (`evaluate_many`)
_MANY = 16
_MISS = object()

#: ΔF (compute units) per unit of the sigmoid's argument: 1000 milli-GPU = 100 units
SIGMOID_SCALE = 100.0


def fgd_score(delta: float) -> int:
    """⌊100 · σ(delta / 100)⌋ for delta = F0 − F1 in compute units."""
    return math.floor(100.0 / (1.0 + math.exp(-delta / SIGMOID_SCALE)))


def fgd_scores(delta: Floats) -> Ints:
    """`fgd_score` of many deltas: numpy's exp may differ from the C library's in the last bit, so values within
    1e-9 of an integer, where that bit could move the floor, are computed again by `fgd_score`."""
    flat = delta.reshape(-1)
    value = 100.0 / (1.0 + np.exp(-flat / SIGMOID_SCALE))
    out = np.floor(value).astype(np.int64)
    for i in np.flatnonzero(np.abs(value - np.round(value)) < 1e-9).tolist():
        out[i] = fgd_score(float(flat[i]))
    return out.reshape(delta.shape)


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

    def evaluate_many(self, views: Sequence[NodeView], demand: Demand) -> list[Choice | None]:
        """`evaluate` of many node states at once: one-group demands vectorised over the states of each (model,
        GPU count), the same floats in the same order (`fragment_many`), the same choices (docs/e2e.md "Issue 16")."""
        if len(demand.groups) != 1 or len(views) < _MANY or demand.groups[0].compute > WHOLE_GPU_COMPUTE:
            return super().evaluate_many(views, demand)
        (group,) = demand.groups
        if group.compute < WHOLE_GPU_COMPUTE and group.count != 1:
            return super().evaluate_many(views, demand)
        out: list[Choice | None] = [None] * len(views)
        buckets: dict[tuple[str, int], list[int]] = {}
        for i, view in enumerate(views):
            if host_fits(view, demand):
                buckets.setdefault((view.model, len(view.free_compute)), []).append(i)
        for (model, n), members in buckets.items():
            if n == 0:
                continue
            chosen = [views[i] for i in members]
            for i, choice in zip(members, self._evaluate_batch(chosen, demand, group, model), strict=True):
                out[i] = choice
        return out

    def _evaluate_batch(
        self, views: list[NodeView], demand: Demand, group: SliceGroup, model: str
    ) -> list[Choice | None]:
        """`_evaluate` of views of one model and GPU count, for one sharing slice or whole GPUs."""
        fc = np.array([v.free_compute for v in views], dtype=np.int64)
        fm = np.array([v.free_memory for v in views], dtype=np.int64)
        tm = np.array([v.total_memory for v in views], dtype=np.int64)
        cpu0 = np.array([UNLIMITED if v.cpu_free is None else v.cpu_free for v in views], dtype=np.int64)
        mem0 = np.array([UNLIMITED if v.memory_free is None else v.memory_free for v in views], dtype=np.int64)
        cpu1 = np.where(cpu0 == UNLIMITED, UNLIMITED, cpu0 - demand.cpu_milli)
        mem1 = np.where(mem0 == UNLIMITED, UNLIMITED, mem0 - demand.memory_mib)
        b, n = fc.shape
        taken = tm if group.memory_mib is None else np.full_like(tm, group.memory_mib)
        memory_ok = ((fm == tm) & (fm > 0)) if group.memory_mib is None else (fm >= group.memory_mib)
        fits = (fc >= group.compute) & memory_ok
        f0 = self.fragment_many(cpu0, fc, model, mem0, fm, tm)
        if group.compute < WHOLE_GPU_COMPUTE:  # one sharing slice: the best GPU by `gpu_value`, ties to the lowest
            rows = np.repeat(np.arange(b), n)
            cols = np.tile(np.arange(n), b)
            fc1 = fc[rows]
            fm1 = fm[rows]
            fc1[np.arange(b * n), cols] -= group.compute
            fm1[np.arange(b * n), cols] -= taken[rows, cols]
            f1 = self.fragment_many(cpu1[rows], fc1, model, mem1[rows], fm1, tm[rows]).reshape(b, n)
            value = np.where(fits, fgd_scores(np.repeat(f0, n).reshape(b, n) - f1), -1)
            best = np.argmax(value, axis=1)
            ok = fits.any(axis=1)
            f1_best = f1[np.arange(b), best]
            picks: list[tuple[tuple[int, ...], ...]] = [((int(j),),) for j in best]
        else:  # whole GPUs: the first `count` that fit, by index
            ok = np.count_nonzero(fits, axis=1) >= group.count
            first = fits & (np.cumsum(fits, axis=1) <= group.count)
            f1_best = self.fragment_many(
                cpu1, np.where(first, fc - group.compute, fc), model, mem1, np.where(first, fm - taken, fm), tm
            )
            picks = [(tuple(int(j) for j in np.flatnonzero(row)),) for row in first]
        scores = fgd_scores(f0 - f1_best - self.node_offset(model, demand)).tolist()
        fit = cast(list[bool], ok.tolist())
        return [Choice(score, pick) if f else None for score, pick, f in zip(scores, picks, fit, strict=True)]

    def node_offset(self, model: str, demand: Demand) -> float:
        """What `node_choice` takes from F0 − F1 besides F1 (fgdpp: the model's reservation); FGD: nothing."""
        return 0.0

    def fragment_many(self, cpu_free: Ints, free_compute: Ints, model: str, memory_free: Ints, free_memory: Ints,
                      total_memory: Ints) -> Floats:  # fmt: skip
        """`fragment` of many states (rows) at once, bit for bit (`UNLIMITED` stands for None)."""
        return self.workload.fragment_many(cpu_free, free_compute, model)

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
