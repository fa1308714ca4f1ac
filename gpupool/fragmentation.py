"""Expected GPU fragmentation over a target workload (docs/openb-benchmark.md §6).

A *target workload* M is a set of task shapes with popularities p_m (Σ p_m = 1).
The fragment of a node for one task, F_n(m), is the idle GPU compute that task
could not use there; the node's fragmentation is F_n(M) = Σ p_m F_n(m) and the
cluster's F_N(M) = Σ_n F_n(M).

Units: gpupool counts compute in 1 % units (100 per GPU) while the paper counts
milli-GPU (1000 per GPU). Everything here is in **compute units**; multiply by
`MILLI_PER_UNIT` (10) for the paper's milli-GPU. Fragmentation *rates* and
*percentages* are unit-free and equal in both.

`Workload.node_fragment` is memoised on (free CPU, sorted free-compute vector,
model): F_n is invariant under GPU permutation and host memory is no input.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from gpupool.request import WHOLE_GPU_COMPUTE

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]

#: milli-GPU per gpupool compute unit
MILLI_PER_UNIT = 10
#: share of the pods the kept task shapes must cover (the paper's runs: 95 %)
DEFAULT_COVERAGE = 0.95

_MEMO_LIMIT = 500_000
K = TypeVar("K")
#: `Workload._splits` packs two integers in one: the GPUs with enough free compute above this bit, the others'
#: free compute below it
_FIT_SHIFT = 32
_SMALL = (1 << _FIT_SHIFT) - 1


def covering(ranked: Sequence[tuple[K, float]], coverage: float) -> list[tuple[K, float]]:
    """The first items of `ranked` (most weight first) whose weights reach `coverage` of the total weight: the
    rule §6.1 builds M by (`Workload.from_counts`), and fgdpp's pairing bands count M's sharing shares by
    (`gpupool.policies.fgdpp.sharing_bands`)."""
    total = sum(weight for _, weight in ranked)
    kept: list[tuple[K, float]] = []
    covered = 0.0
    for item in ranked:
        kept.append(item)
        covered += item[1]
        if covered >= coverage * total - 1e-9:
            break
    return kept


@dataclass(frozen=True, slots=True)
class TaskShape:
    """One entry of the target workload: `count` GPUs of `compute` units each, plus CPU; `models` empty = any."""

    cpu_milli: int
    compute: int
    count: int
    models: frozenset[str]
    popularity: float

    @property
    def gpu_units(self) -> int:
        return self.compute * self.count


ShapeKey = tuple[int, int, int, frozenset[str]]  # (cpu_milli, compute per GPU, GPU count, models)


class Workload:
    """A target workload M and the fragmentation measure over it."""

    def __init__(self, shapes: Iterable[TaskShape], *, memory_per_unit: float = 0.0) -> None:
        #: host memory (MiB) the GPU pods ask per compute unit; 0 = unknown (M has no memory dimension)
        self.memory_per_unit = memory_per_unit
        self.shapes: tuple[TaskShape, ...] = tuple(shapes)
        if not self.shapes:
            raise ValueError("a target workload needs at least one task shape")
        total = sum(s.popularity for s in self.shapes)
        if total <= 0 or any(s.popularity < 0 for s in self.shapes):
            raise ValueError("task popularities must be non-negative and not all zero")
        if abs(total - 1.0) > 1e-9:
            self.shapes = tuple(
                TaskShape(s.cpu_milli, s.compute, s.count, s.models, s.popularity / total) for s in self.shapes
            )
        # flat tuples for the hot loop: (cpu, compute, count, models, p)
        self._flat = tuple((s.cpu_milli, s.compute, s.count, s.models, s.popularity) for s in self.shapes)
        #: the array measure's per-GPU splits are taken at these compute values, one row each (`_splits`)
        computes = sorted({s.compute for s in self.shapes if s.compute})
        self._computes = np.array(computes, dtype=np.int64).reshape(-1, 1)
        self._split_row = {c: i for i, c in enumerate(computes)}
        self._most_cpu = max(s.cpu_milli for s in self.shapes)
        self._table = np.zeros((len(computes), 0), dtype=np.int64)
        self._memo: dict[tuple[object, ...], float] = {}
        self.memo_hits = 0
        self.memo_misses = 0

    # --- construction ------------------------------------------------------------------------------

    @staticmethod
    def from_counts(
        counts: Mapping[ShapeKey, int], coverage: float = DEFAULT_COVERAGE, *, memory_per_unit: float = 0.0
    ) -> Workload:
        """§6.1: sort by count (desc; ties: larger key first), keep until `coverage` of pods, renormalise."""
        if not counts:
            raise ValueError("no pods to derive a target workload from")
        if not 0 < coverage <= 1:
            raise ValueError("coverage must be in (0, 1]")

        def order(item: tuple[ShapeKey, int]) -> tuple[int, int, int, int, tuple[str, ...]]:
            (cpu, compute, count, models), n = item
            return (n, cpu, compute, count, tuple(sorted(models)))

        ranked = sorted(counts.items(), key=order, reverse=True)
        kept = covering(ranked, coverage)
        covered = sum(n for _, n in kept)
        return Workload(
            (TaskShape(cpu, compute, count, models, n / covered) for (cpu, compute, count, models), n in kept),
            memory_per_unit=memory_per_unit,
        )

    @staticmethod
    def from_shapes(
        keys: Iterable[ShapeKey], coverage: float = DEFAULT_COVERAGE, *, memory_per_unit: float = 0.0
    ) -> Workload:
        """The target workload of a list of pod shapes (one key per pod)."""
        return Workload.from_counts(Counter(keys), coverage, memory_per_unit=memory_per_unit)

    def cpu_per_unit(self) -> float:
        """CPU (milli) the GPU tasks of M ask per compute unit (0 when M has no GPU task)."""
        gpu = [s for s in self.shapes if s.count]
        units = sum(s.popularity * s.gpu_units for s in gpu)
        return sum(s.popularity * s.cpu_milli for s in gpu) / units if units else 0.0

    # --- the measure -------------------------------------------------------------------------------

    def node_fragment(self, cpu_free: int | None, free_compute: Sequence[int], model: str) -> float:
        """F_n(M) in compute units; `free_compute` need not be sorted; `cpu_free` None = unlimited."""
        state = tuple(sorted(free_compute))
        key = (cpu_free, state, model)
        value = self._memo.get(key)
        if value is not None:
            self.memo_hits += 1
            return value
        self.memo_misses += 1
        value = self._compute(cpu_free, state, model)
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = value
        return value

    def fragment_sorted(self, cpu_free: int | None, state: tuple[int, ...], model: str) -> float:
        """`node_fragment` for an already ascending-sorted `state` (saves the sort in hot loops)."""
        key = (cpu_free, state, model)
        value = self._memo.get(key)
        if value is None:
            value = self._compute(cpu_free, state, model)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = value
        return value

    def _compute(self, cpu_free: int | None, state: tuple[int, ...], model: str) -> float:
        idle = sum(state)
        if idle == 0:
            return 0.0
        total = 0.0
        for cpu, compute, count, models, p in self._flat:
            if compute == 0 or (models and model not in models) or (cpu_free is not None and cpu_free < cpu):
                total += p * idle
                continue
            fit = 0
            small = 0
            for r in state:
                if r >= compute:
                    fit += 1
                else:
                    small += r
            total += p * (small if fit >= count else idle)
        return total

    def fragment_many(self, cpu_free: Ints, free_compute: Ints, model: str) -> Floats:
        """`node_fragment` of many nodes of `model` at once (rows of `free_compute`; `cpu_free` with
        `capacity.UNLIMITED` for None), with the same float operations in the same order: the same values."""
        return self._weigh(cpu_free, free_compute.sum(axis=1), model, self._splits(free_compute))

    def fragment_before_after(self, cpu_before: Ints, cpu_after: Ints, free_compute: Ints, model: str, compute: int,
                              rows: Ints, columns: Ints) -> tuple[Floats, Floats]:  # fmt: skip
        """`fragment_many` of the rows of `free_compute` (with `cpu_before`), and of hypothetical states: entry k is
        row `rows[k]` with `compute` less free on GPU `columns[k]` (one slice placed there) and `cpu_after`,
        counted from that row's own splits: less the old GPU's share, plus the new one's."""
        splits = self._splits(free_compute)
        idle = free_compute.sum(axis=1)
        before = self._weigh(cpu_before, idle, model, splits)
        old = free_compute[rows, columns]
        table = self._split_table(int(old.max(initial=0)))
        after_splits = splits[:, rows]  # less the old GPU's share (no borrow: the row holds it), plus the new one's
        after_splits -= table[:, old]
        after_splits += table[:, old - compute]
        after = self._weigh(cpu_after[rows], idle[rows] - compute, model, after_splits)
        return before, after

    def _split_table(self, most: int) -> Ints:
        """Per compute value c of M (`_computes`, a row each) and free compute v = 0..`most` (a column each): one
        GPU's share of a state's split at c, `(v >= c) << 32 | (0 if v >= c else v)` (`_splits`)."""
        table = self._table
        if table.shape[1] <= most:
            v = np.arange(max(most + 1, 2 * table.shape[1], WHOLE_GPU_COMPUTE + 1), dtype=np.int64)
            fits = v >= self._computes
            table = self._table = (fits.astype(np.int64) << _FIT_SHIFT) | np.where(fits, 0, v)
        return table

    def _splits(self, free_compute: Ints) -> Ints:
        """Per compute value c of M (a row each) and state (a column each), packed in one integer: how many GPUs
        have at least c free (<< 32), and the free compute of the others (below; integers, so exact in any order)."""
        if not free_compute.size:
            return np.zeros((len(self._computes), len(free_compute)), dtype=np.int64)
        if int(free_compute.min()) < 0:
            raise ValueError("free compute must not be negative")
        by_value = self._split_table(int(free_compute.max())).T  # a row per free compute value
        splits = by_value[free_compute[:, 0]]  # states x compute values, GPU by GPU (no states x GPUs x values)
        for j in range(1, free_compute.shape[1]):
            splits += by_value[free_compute[:, j]]
        return np.ascontiguousarray(splits.T)

    def _weigh(self, cpu_free: Ints, idle: Ints, model: str, splits: Ints) -> Floats:
        """Σ p_m F_n(m) over the shapes of M in order (`_compute`, vectorised): the same products added in the same
        order, so the same floats. `splits`: `_splits` of the states (or of hypothetical ones)."""
        total = np.zeros(len(idle))
        term = np.empty(len(idle))
        every_cpu = bool((cpu_free >= self._most_cpu).all())
        frags: dict[tuple[int, int], Floats] = {}  # when every state has the CPU of every shape
        for cpu, compute, count, models, p in self._flat:
            if compute == 0 or (models and model not in models):
                total += np.multiply(p, idle, out=term)
                continue
            row = self._split_row[compute]
            frag = frags.get((row, count)) if every_cpu else None
            if frag is None:
                split = splits[row]
                ok = split >= count << _FIT_SHIFT  # at least `count` GPUs with `compute` free
                if not every_cpu:
                    ok &= cpu_free >= cpu
                frag = np.where(ok, split & _SMALL, idle).astype(np.float64)  # exact: p * an int is p * its float
                if every_cpu:
                    frags[(row, count)] = frag
            total += np.multiply(p, frag, out=term)
        return total

    def task_fragment(self, shape: TaskShape, cpu_free: int | None, free_compute: Sequence[int], model: str) -> int:
        """F_n(m) for one task shape, in compute units (exact integer)."""
        idle = sum(free_compute)
        if shape.compute == 0 or (shape.models and model not in shape.models):
            return idle
        if cpu_free is not None and cpu_free < shape.cpu_milli:
            return idle
        if sum(1 for r in free_compute if r >= shape.compute) < shape.count:
            return idle
        return sum(r for r in free_compute if r < shape.compute)

    def __repr__(self) -> str:
        return f"Workload({len(self.shapes)} shapes)"

    def describe(self, top: int = 6) -> str:
        parts = []
        for s in self.shapes[:top]:
            gpu = "CPU-only" if s.count == 0 else f"{s.compute * MILLI_PER_UNIT}x{s.count}"
            parts.append(f"({s.cpu_milli / 1000:g}, {gpu}: {s.popularity:.3f})")
        return ", ".join(parts)


def shape_key(cpu_milli: int, gpu_milli: int, num_gpu: int, models: Iterable[str] = ()) -> ShapeKey:
    """The §6.1 grouping key of a trace pod, in gpupool units (CPU-only pods: compute 0, count 0)."""
    if num_gpu == 0:
        gpu_milli = 0
    return (cpu_milli, gpu_milli // MILLI_PER_UNIT, num_gpu, frozenset(models))


# --- whole-cluster measures --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fragmentation:
    """Cluster fragmentation in compute units, with the paper's percentages."""

    amount: float  # F_N(M), compute units
    idle: int  # Σ free compute of eligible GPUs
    capacity: int  # Σ capacity of eligible GPUs

    @property
    def amount_percent(self) -> float:
        """F_N(M) as % of capacity (the paper's "fragmentation amount")."""
        return 100.0 * self.amount / self.capacity if self.capacity else 0.0

    @property
    def rate_percent(self) -> float:
        """F_N(M) as % of the idle compute (the paper's "fragmentation rate")."""
        return 100.0 * self.amount / self.idle if self.idle else 0.0

    @property
    def amount_milli(self) -> float:
        return self.amount * MILLI_PER_UNIT


def cluster_fragmentation(ledger: object, workload: Workload) -> Fragmentation:
    """F_N(M) over every node of a `gpupool.ledger.Ledger` (the fragmentation gauge of DESIGN.md §8).

    Uses each node's guaranteed view: unhealthy or disabled GPUs are neither idle nor
    fragment. Nodes without tracked CPU count as having unlimited CPU.
    """
    from gpupool.ledger import Ledger

    assert isinstance(ledger, Ledger)
    amount = 0.0
    idle = 0
    capacity = 0
    for name in ledger.node_names():
        view = ledger.view(name)
        amount += workload.node_fragment(view.cpu_free, view.free_compute, view.model)
        idle += sum(view.free_compute)
        capacity += WHOLE_GPU_COMPUTE * len(view.free_compute)
    return Fragmentation(amount, idle, capacity)


#: M of the default openb trace (§6.1, 95 % coverage, 35 shapes): the live default when no workload is configured.
#: (cpu_milli, compute units per GPU, GPU count, pods)
_OPENB_DEFAULT_COUNTS: tuple[tuple[int, int, int, int], ...] = (
    (3152, 81, 1, 1047), (11300, 100, 1, 874), (11400, 100, 1, 599), (3152, 100, 1, 470), (11908, 47, 1, 388),
    (12500, 0, 0, 366), (8000, 47, 1, 360), (12000, 100, 1, 326), (32000, 0, 0, 290), (18708, 100, 1, 255),
    (11908, 65, 1, 237), (4000, 32, 1, 232), (9810, 100, 1, 195), (8000, 0, 0, 185), (8000, 100, 1, 164),
    (4000, 100, 1, 159), (15700, 100, 1, 158), (11908, 100, 1, 153), (16000, 100, 1, 150), (4000, 23, 1, 122),
    (15400, 0, 0, 120), (6000, 46, 1, 120), (16500, 0, 0, 95), (14200, 100, 1, 93), (24200, 100, 1, 84),
    (3152, 59, 1, 75), (8000, 32, 1, 72), (4152, 55, 1, 72), (11900, 100, 1, 55), (4000, 16, 1, 54),
    (4152, 37, 1, 45), (4000, 22, 1, 43), (8200, 100, 1, 41), (15200, 100, 1, 36), (4152, 81, 1, 31),
)  # fmt: skip


def default_workload() -> Workload:
    """M when none is configured (the live extender before it observed pods): the default openb mix."""
    return Workload.from_counts(
        {(c, g, k, frozenset()): n for c, g, k, n in _OPENB_DEFAULT_COUNTS}, 1.0, memory_per_unit=OPENB_MEMORY_PER_UNIT
    )


#: host MiB per compute unit asked by the GPU pods of the default openb trace
OPENB_MEMORY_PER_UNIT = 411.0
