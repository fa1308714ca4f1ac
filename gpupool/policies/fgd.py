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
import numpy.typing as npt

from gpupool.capacity import UNLIMITED, CapacityIndex
from gpupool.fragmentation import Floats, Ints, Workload, default_workload
from gpupool.ledger import NodeView
from gpupool.policies.base import Choice, Demand, Policy, SliceGroup, host_fits, slice_fits, slice_memory
from gpupool.request import WHOLE_GPU_COMPUTE

Bools = npt.NDArray[np.bool_]
_MEMO_LIMIT = 1_000_000
#: fewer states than this are evaluated one by one (`evaluate_many`)
_MANY = 16
#: the picks of one slice on position j
_ONE: tuple[tuple[tuple[int, ...], ...], ...] = tuple(((j,),) for j in range(1024))
_MISS = object()


#: ΔF (compute units) per unit of the sigmoid's argument: 1000 milli-GPU = 100 units
SIGMOID_SCALE = 100.0


def fgd_score(delta: float) -> int:
    """⌊100 · σ(delta / 100)⌋ for delta = F0 − F1 in compute units."""
    return math.floor(100.0 / (1.0 + math.exp(-delta / SIGMOID_SCALE)))


def _owner(cls: type, name: str) -> type:
    return next(c for c in cls.__mro__ if name in c.__dict__)


def _vectorised(cls: type) -> bool:
    """Whether `cls`'s vectorised measure is its own: a subclass that changes the measure, the per-GPU value or
    the node's score without its array form is evaluated state by state."""
    fragment = _owner(cls, "fragment")
    return (
        _owner(cls, "fragment_many") is fragment
        and _owner(cls, "fragment_before_after") is fragment
        and _owner(cls, "node_offset") is _owner(cls, "node_choice")
        and _owner(cls, "gpu_value").__name__ == "FGD"
        and _owner(cls, "slice_key") is _owner(cls, "slice_keys")
        and _owner(cls, "slice_score") is _owner(cls, "slice_scores")
    )


def _spare(free_memory: int, taken: int, total_memory: int) -> float:
    """A GPU's memory left after a slice takes `taken`, in compute units at the GPU's memory per unit (0 without
    memory): what `slice_key` compares with the compute left."""
    return (free_memory - taken) * WHOLE_GPU_COMPUTE / total_memory if total_memory else 0.0


def fgd_scores(delta: Floats) -> Ints:
    """`fgd_score` of many deltas: numpy's exp may differ from the C library's in the last bit, so values within
    1e-9 of an integer, where that bit could move the floor, are computed again by `fgd_score`."""
    flat = delta.reshape(-1)
    value = 100.0 / (1.0 + np.exp(-flat / SIGMOID_SCALE))
    out = np.floor(value).astype(np.int64)
    for i in np.flatnonzero(np.abs(value - np.round(value)) < 1e-9).tolist():
        out[i] = fgd_score(float(flat[i]))
    return out.reshape(delta.shape)


def _first_of_equals(fc: Ints, fm: Ints, tm: Ints) -> Bools:
    """Per state (row) and GPU: no lower GPU of the state has the same free compute, free memory and total memory
    (a GPU equal to a lower one gives the same state and loses the tie). The three in one integer per GPU where
    they fit (free compute < 2^15, memories < 2^24 MiB), compared GPU-major."""
    n = fc.shape[1]
    first = np.ones(fc.shape, dtype=bool)
    if n < 2 or not fc.size:
        return first
    if fc.min() >= 0 and fm.min() >= 0 and tm.min() >= 0 and fc.max() < 1 << 15 and max(fm.max(), tm.max()) < 1 << 24:
        key = np.ascontiguousarray(((fc << 48) | (fm << 24) | tm).T)
        by_gpu = first.T
        for j in range(1, n):
            by_gpu[j] = (key[:j] != key[j]).all(axis=0)
        return first
    for j in range(1, n):
        for k in range(j):
            first[:, j] &= (fc[:, j] != fc[:, k]) | (fm[:, j] != fm[:, k]) | (tm[:, j] != tm[:, k])
    return first


class FGD(Policy):
    """The paper's FGD, integer score and all."""

    name: ClassVar[str] = "fgd"

    def __init__(self, workload: Workload | None = None) -> None:
        self.workload = workload if workload is not None else default_workload()
        self._memo: dict[tuple[object, ...], object] = {}
        #: one `Choice` per (score, picks), shared by the states `evaluate_many` gives it
        self._choices: dict[tuple[int, tuple[tuple[int, ...], ...]], Choice] = {}

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
        """`evaluate` of each view, through `evaluate_rows` where it applies (views of distinct names)."""
        index = CapacityIndex()
        for view in views:
            index.put(view)
        done = self.evaluate_rows(index, index.rows([v.name for v in views]), demand)
        return [self.evaluate(view, demand) for view in views] if done is None else done

    def evaluate_rows(self, index: CapacityIndex, rows: list[int], demand: Demand) -> list[Choice | None] | None:
        """`evaluate` of the node states in `rows` of `index` at once for a pod of one group, one sharing slice or
        whole GPUs: vectorised over the states of each (model, GPU count), the same floats in the same order
        (`fragment_many`, `fragment_moves`), so the same choices (docs/e2e.md "Issue 16")."""
        done = self._by_batch(index, rows, demand, True)
        if done is None:
            return None
        out: list[Choice | None] = [None] * len(rows)
        for positions, choices in done:
            for i, choice in zip(positions.tolist(), cast(list[Choice | None], choices), strict=True):
                out[i] = choice
        return out

    def score_rows(self, index: CapacityIndex, rows: list[int], demand: Demand) -> tuple[Ints, Bools] | None:
        """The scores of `evaluate_rows` and where the pod fits, without building its choices (prioritize needs
        only the scores)."""
        done = self._by_batch(index, rows, demand, False)
        if done is None:
            return None
        scores = np.zeros(len(rows), dtype=np.int64)
        fits = np.zeros(len(rows), dtype=bool)
        for positions, batch in done:
            scores[positions], fits[positions] = cast(tuple[Ints, Bools], batch)
        return scores, fits

    def _by_batch(
        self, index: CapacityIndex, rows: list[int], demand: Demand, choices: bool
    ) -> list[tuple[npt.NDArray[np.intp], list[object] | tuple[Ints, Bools]]] | None:
        """`_evaluate_batch` of `rows` grouped by (model, number of eligible GPUs): (positions in `rows`, result)."""
        if not _vectorised(type(self)) or len(demand.groups) != 1 or len(rows) < _MANY:
            return None
        if demand.groups[0].compute > WHOLE_GPU_COMPUTE:
            return None
        (group,) = demand.groups
        if group.compute < WHOLE_GPU_COMPUTE and group.count != 1:
            return None
        at = np.asarray(rows, dtype=np.int64)
        width = index.free_compute.shape[1] + 1
        kind = index.model[at] * width + index.eligible[at]
        if (kind == kind[0]).all():  # one model and GPU count: one batch
            batches = [(int(kind[0]), at, np.arange(len(at)))]
        else:
            batches = [(int(k), at[kind == k], np.flatnonzero(kind == k)) for k in np.unique(kind).tolist()]
        out = []
        for k, where, positions in batches:
            model, n = divmod(k, width)
            if n:
                done = self._evaluate_batch(index, where, n, demand, group, index.models[model], choices)
                out.append((positions, done))
        return out

    def _evaluate_batch(
        self, index: CapacityIndex, rows: Ints, n: int, demand: Demand, group: SliceGroup, model: str, choices: bool
    ) -> list[object] | tuple[Ints, Bools]:
        """`_evaluate` of the states in `rows` of `index`, all of `model` with `n` eligible GPUs, for one sharing
        slice or whole GPUs: their choices, or (`choices` False) their scores and where the pod fits."""
        fc = index.free_compute[rows, :n]
        fm = index.free_memory[rows, :n]
        tm = index.total_memory[rows, :n]
        cpu0 = index.cpu_free[rows]
        mem0 = index.memory_free[rows]
        host_ok = (cpu0 >= demand.cpu_milli) & (mem0 >= demand.memory_mib) & (index.pods_free[rows] >= 1)  # host_fits
        cpu1 = np.where(cpu0 == UNLIMITED, UNLIMITED, cpu0 - demand.cpu_milli)
        mem1 = np.where(mem0 == UNLIMITED, UNLIMITED, mem0 - demand.memory_mib)
        b = len(rows)
        taken = tm if group.memory_mib is None else np.full_like(tm, group.memory_mib)
        memory_ok = ((fm == tm) & (fm > 0)) if group.memory_mib is None else (fm >= group.memory_mib)
        fits = (fc >= group.compute) & memory_ok
        f0 = np.zeros(b)
        picks: list[tuple[tuple[int, ...], ...]] = []
        offset = self.node_offset(model, demand)
        if group.compute < WHOLE_GPU_COMPUTE:  # one sharing slice: the best GPU by `gpu_value`, ties to the lowest
            spare = np.where(tm == 0, 0.0, (fm - taken) * WHOLE_GPU_COMPUTE / np.where(tm == 0, 1, tm))  # `_spare`
            at, col = np.nonzero(fits & _first_of_equals(fc, fm, tm))  # by row, then by column
            ok = fits.any(axis=1)
            best = np.zeros(b, dtype=np.int64)
            f1_best = np.zeros(b)
            if len(at):
                f0, f1 = self.fragment_before_after(
                    cpu0, cpu1, mem0, mem1, fc, fm, tm, model, group.compute, taken, at, col
                )
                value = self.slice_keys(fgd_scores(f0[at] - f1), fc[at, col], group.compute, spare[at, col], offset)
                starts = np.flatnonzero(np.concatenate(([True], at[1:] != at[:-1])))
                top = np.maximum.reduceat(value, starts)
                is_top = np.flatnonzero(value == np.repeat(top, np.diff(np.append(starts, len(at)))))
                winner = is_top[np.concatenate(([True], at[is_top][1:] != at[is_top][:-1]))]  # lowest column of a row
                best[at[winner]] = col[winner]
                f1_best[at[winner]] = f1[winner]
            if choices:
                picks = [_ONE[j] for j in best.tolist()]
        else:  # whole GPUs: the first `count` that fit, by index
            f0 = self.fragment_many(cpu0, fc, model, mem0, fm, tm)
            ok = np.count_nonzero(fits, axis=1) >= group.count
            first = fits & (np.cumsum(fits, axis=1) <= group.count)
            f1_best = self.fragment_many(
                cpu1, np.where(first, fc - group.compute, fc), model, mem1, np.where(first, fm - taken, fm), tm
            )
            if choices:
                rank = np.cumsum(first, axis=1)  # the m-th chosen GPU of a row: the first column of rank m
                columns = [np.argmax(first & (rank == m), axis=1).tolist() for m in range(1, group.count + 1)]
                picks = [(tuple(chosen),) for chosen in zip(*columns, strict=True)] if columns else [((),)] * b
        score_of = fgd_scores(f0 - f1_best - offset)
        if group.compute < WHOLE_GPU_COMPUTE:
            chosen = np.arange(b), best
            score_of = self.slice_scores(score_of, fc[chosen], group.compute, spare[chosen], offset)
        fit = ok & host_ok
        if not choices:
            return score_of, fit
        known = self._choices
        if len(known) > _MEMO_LIMIT:
            known.clear()
        out: list[object] = []
        for score, pick, f in zip(score_of.tolist(), picks, fit.tolist(), strict=True):
            if not f:
                out.append(None)
                continue
            choice = known.get((score, pick))
            if choice is None:
                choice = known[(score, pick)] = Choice(score, pick)
            out.append(choice)
        return out

    def node_offset(self, model: str, demand: Demand) -> float:
        """What `node_choice` takes from F0 − F1 besides F1 (fgdpp: the model's reservation); FGD: nothing."""
        return 0.0

    def fragment_many(self, cpu_free: Ints, free_compute: Ints, model: str, memory_free: Ints, free_memory: Ints,
                      total_memory: Ints) -> Floats:  # fmt: skip
        """`fragment` of many states (rows) at once, bit for bit (`UNLIMITED` stands for None)."""
        return self.workload.fragment_many(cpu_free, free_compute, model)

    def fragment_before_after(
        self, cpu_before: Ints, cpu_after: Ints, memory_before: Ints, memory_after: Ints, free_compute: Ints,
        free_memory: Ints, total_memory: Ints, model: str, compute: int, taken: Ints, rows: Ints, columns: Ints,
    ) -> tuple[Floats, Floats]:  # fmt: skip
        """`fragment_many` of each row as it is, and of row `rows[k]` with one slice (`compute`, `taken` memory)
        placed on GPU `columns[k]` and the pod's host resources taken (`cpu_after`, `memory_after`)."""
        return self.workload.fragment_before_after(cpu_before, cpu_after, free_compute, model, compute, rows, columns)

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

    # --- a pod of one sharing slice: the GPU it takes (fgdpp ranks near fits and dead remainders) --------------

    def slice_key(self, value: float, free: int, compute: int, spare: float, offset: float) -> float:
        """The per-GPU choice's key (higher is better) for a pod of one sharing slice of `compute` units on a GPU
        with `free` units, whose `gpu_value` is `value`; `spare`: the GPU's memory left after it, in compute units
        at the GPU's memory per unit (`_spare`); `offset`: the node's `node_offset`. FGD: the value."""
        return value

    def slice_keys(self, values: Ints, free: Ints, compute: int, spare: Floats, offset: float) -> Ints:
        """`slice_key` of many GPUs (integer `gpu_value`s), the same keys."""
        return values

    def slice_score(self, score: int, free: int, compute: int, spare: float, offset: float) -> int:
        """The node's 0..100 score for a pod of one sharing slice of `compute` units that takes a GPU with `free`
        units (`spare`, `offset` as for `slice_key`), given `node_choice`'s score; FGD: that score."""
        return score

    def slice_scores(self, scores: Ints, free: Ints, compute: int, spare: Floats, offset: float) -> Ints:
        """`slice_score` of many nodes, the same scores."""
        return scores

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
        one = len(demand.groups) == 1 and demand.groups[0].count == 1  # one slice: `slice_key`, `slice_score`
        offset = self.node_offset(model, demand) if one else 0.0
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
                        spare = _spare(fm[j], taken, tm[j])
                        fc[j] -= group.compute
                        fm[j] -= taken
                        f1 = self.fragment(cpu1, fc, model, mem1, (fm, tm))
                        fc[j] += group.compute
                        fm[j] += taken
                        v = self.gpu_value(f0, f1)
                        if one:
                            v = self.slice_key(v, fc[j], group.compute, spare, offset)
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
        choice = self.node_choice(view, demand, f0, f1, tuple(picks))
        if one and (compute := demand.groups[0].compute) < WHOLE_GPU_COMPUTE:
            j = picks[0][0]
            taken = slice_memory(view.total_memory[j], demand.groups[0])
            spare = _spare(view.free_memory[j], taken, view.total_memory[j])
            score = self.slice_score(choice.score, view.free_compute[j], compute, spare, offset)
            if score != choice.score:
                choice = Choice(score, choice.picks)
        return choice
