"""`fgdpp`: FGD that also counts the GPUs a node strands for want of host CPU or memory (gpupool's default).

FGD (`gpupool.policies.fgd`) measures a node's expected fragmentation F_n(M) over a
target workload M, but it sees host CPU only through "does the next task fit right
now". On the openb cluster that is the main remaining loss: CPU-only pods and
CPU-heavy GPU pods drain the CPU of 8-GPU nodes (12 cores per GPU) while 2-GPU T4
nodes keep 50 cores per GPU unused, and GPUs end up idle on nodes without CPU.

`fgdpp` descends a measure that adds the *stranded* GPU compute of the node:

    F'_n = F_n(M) + w_cpu · max(0, idle_n − C_n / r_cpu) + w_mem · max(0, idle_n − H_n / r_mem)

where idle_n is the node's free compute, C_n / H_n its free CPU / host memory, and
r_cpu / r_mem the CPU (milli) / host memory (MiB) the workload asks per compute unit
(from M; r_mem from the trace when known, else the memory term is off). The score and
the GPU choice are FGD's (integer ⌊100 σ(ΔF'/100)⌋, ties to the lowest index, then the
node rank), so it is FGD wherever host resources are plentiful.

With GPU-model constraints the stranding terms alone lose to FGD: they steer CPU-heavy
pods that could run anywhere onto the CPU-rich T4 nodes, whose GPUs the T4-only pods
then lack. So a node's score also charges a pod the *reservation* of the model:
ρ_X · units for a GPU of model X, less ρ of the cheapest model the pod may use, where
ρ_X (`reserved_shares`) is the share of X's GPUs the model-constrained tasks of M would
need if M filled the cluster. A pod pays nothing on its only model; without model
constraints every ρ is 0 and fgdpp is unchanged. ρ follows the pool: the placer tells
the policy its GPUs per model (`pool_models`), live and in the simulator alike.

GPU memory: F'_n also adds, per GPU, the free memory its free compute cannot go with, in
compute units at the GPU's memory per compute unit (`gpu_mismatch`): memory stranded,
the measure of `gpupool.simulator.protocol.stranded_gpu_memory`. Only that side is
charged: charging compute left without memory as well sends memory-heavy slices to the
large GPUs, whose memory then strands (docs/openb.md "### GPU memory"). Where slices ask
memory in proportion to compute (the published trace) it is 0.

Pairing (a pod of one sharing slice): FGD's quantised score cannot tell a GPU the pod fills
to 3 units from one it leaves 13 units on (both ΔF ≈ 29: the same score), and the 13 are
never used. From M's smallest sharing share c_min (`sharing_bands`: among the compute values
covering 95 % of M's sharing tasks, as M covers 95 % of the pods), with t = c_min // 2, a
choice on a partially used GPU is a *near fit* when it leaves at most t units and *dead*
when it leaves more than t and less than c_min (no task of M fits the rest). The GPU
choice inside a node is lexicographic (near fits first — nearly full in memory too: a GPU
whose memory would be left beyond t units' worth is no near fit, unless the GPU-memory term
is off, and so is one on a model the pod pays a reservation for — the smallest remainder first, then
everything else by FGD's value, dead remainders last: `slice_key`), and the node's 0..100
score keeps the three bands apart (`slice_score`): near fits score 100 − remainder, other
choices fgdpp's score clamped to [t + 1, 100 − t − 1], dead ones fgdpp's score scaled into
[0, t]. Whole-GPU and multi-GPU pods are scored as before (docs/openb.md "Pairing").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from gpupool.capacity import UNLIMITED
from gpupool.fragmentation import DEFAULT_COVERAGE, Floats, Ints, Workload, covering
from gpupool.ledger import NodeView
from gpupool.policies.base import MAX_SCORE, Choice, Demand
from gpupool.policies.fgd import FGD, fgd_score
from gpupool.request import WHOLE_GPU_COMPUTE

#: weight of the GPU-memory term (`gpu_mismatch`); 0 = memory-blind (the comparison in docs/openb.md)
GPU_MEMORY_WEIGHT = 1.0


def gpu_mismatch(free_compute: list[int], free_memory: list[int], total_memory: tuple[int, ...]) -> float:
    """Σ over GPUs of the free memory beyond what the free compute can go with, in compute units at the GPU's own
    memory per compute unit: max(0, free memory · 100 / total memory − free compute). 0 on an idle GPU and on one
    whose slices ask memory in proportion to compute (the published trace), so only memory-annotated pods see
    it. Compute left without memory is not charged (docs/openb.md "### GPU memory" says why)."""
    total = 0.0
    for c, m, t in zip(free_compute, free_memory, total_memory, strict=True):
        if t:
            d = m * WHOLE_GPU_COMPUTE / t - c
            if d > 0:
                total += d
    return total


#: a near fit's per-GPU key is above, a dead remainder's below, every FGD value (0..100): `slice_key`
_BAND = 1000


def sharing_bands(workload: Workload, coverage: float = DEFAULT_COVERAGE) -> tuple[int, int] | None:
    """(t, c_min) of fgdpp's pairing bands: c_min the smallest compute of M's one-GPU sharing tasks, counted as M
    itself is (`Workload.from_counts`): the compute values by popularity, most popular first, until `coverage` of
    M's sharing tasks; t = c_min // 2 the largest remainder of a near fit. None when M has no sharing task. (A
    rare small share, which a mix split finely by CPU or model keeps in M, would otherwise set c_min alone.)"""
    shares: dict[int, float] = {}
    for s in workload.shapes:
        if s.count == 1 and 0 < s.compute < WHOLE_GPU_COMPUTE:
            shares[s.compute] = shares.get(s.compute, 0.0) + s.popularity
    if not shares or sum(shares.values()) <= 0:
        return None
    kept = covering(sorted(shares.items(), key=lambda item: (item[1], item[0]), reverse=True), coverage)
    smallest = min(compute for compute, _ in kept)
    return smallest // 2, smallest


def reserved_shares(workload: Workload, model_gpus: Mapping[str, int]) -> dict[str, float]:
    """ρ_X per GPU model X: the share of X's GPUs that the model-constrained tasks of M would need if M filled
    the cluster (each allow-list's demand spread over its models by capacity), at most 1. All 0 when M has no
    model constraint."""
    gpus = {m: n for m, n in model_gpus.items() if n > 0}
    total = sum(gpus.values())
    units = sum(s.popularity * s.gpu_units for s in workload.shapes)
    need = dict.fromkeys(gpus, 0.0)
    if not total or not units:
        return need
    for s in workload.shapes:
        allowed = [m for m in s.models if m in gpus]
        if not s.gpu_units or not allowed:
            continue
        share = s.popularity * s.gpu_units / units * total  # GPUs this shape needs when M fills the cluster
        capacity = sum(gpus[m] for m in allowed)
        for m in allowed:
            need[m] += share * gpus[m] / capacity
    return {m: min(1.0, need[m] / gpus[m]) for m in gpus}


def _mismatch_terms(free_compute: Ints, free_memory: Ints, total_memory: Ints) -> Floats:
    """`gpu_mismatch`'s term of each GPU (0 where the total memory is 0), the same operations."""
    safe = np.where(total_memory == 0, 1, total_memory)
    d = free_memory * WHOLE_GPU_COMPUTE / safe - free_compute
    return np.where((total_memory == 0) | (d <= 0), 0.0, d)


class FGDPlusPlus(FGD):
    name: ClassVar[str] = "fgdpp"

    def __init__(
        self,
        workload: Workload | None = None,
        *,
        cpu_weight: float = 1.0,
        memory_weight: float = 1.0,
        cpu_per_unit: float | None = None,
        memory_per_unit: float | None = None,
        reserved: Mapping[str, float] | None = None,
        reserve_weight: float = 1.0,
        reservation_workload: Workload | None = None,
        gpu_memory_weight: float | None = None,
        pairing: bool = True,
    ) -> None:
        super().__init__(workload)
        #: (t, c_min) of the pairing bands (`sharing_bands`); None = off (M has no sharing task, or `pairing` False)
        self.bands = sharing_bands(self.workload) if pairing else None
        self.cpu_weight = cpu_weight
        self.memory_weight = memory_weight
        self.cpu_per_unit = cpu_per_unit if cpu_per_unit is not None else self.workload.cpu_per_unit()
        self.memory_per_unit = memory_per_unit if memory_per_unit is not None else self.workload.memory_per_unit
        self.reserve_weight = reserve_weight
        self.gpu_memory_weight = GPU_MEMORY_WEIGHT if gpu_memory_weight is None else gpu_memory_weight
        #: whose model constraints set ρ from the pool's GPUs (`pool_models`); None = `reserved` is fixed
        self.reservation_workload = reservation_workload if reserved is None else None
        self._set_reserved(reserved)

    def _set_reserved(self, reserved: Mapping[str, float] | None) -> None:
        #: ρ per model (`reserved_shares`); empty = no reservation term
        self.reserved = dict(reserved) if reserved and self.reserve_weight and any(reserved.values()) else {}
        self._any_floor = min(self.reserved.values(), default=0.0)

    def pool_models(self, gpus: Mapping[str, int]) -> bool:
        """ρ from the reservation workload and the pool's GPUs per model: the live extender and the simulator
        derive it the same way, from what the ledger holds."""
        if self.reservation_workload is None:
            return False
        old = self.reserved
        self._set_reserved(reserved_shares(self.reservation_workload, gpus))
        if self.reserved == old:
            return False
        self._memo.clear()
        return True

    def memo_extra(self, view: NodeView, demand: Demand) -> tuple[object, ...]:
        extra: tuple[object, ...] = (view.memory_free, demand.memory_mib) if self._memory_on() else ()
        return (*extra, demand.models) if self.reserved else extra

    def reservation(self, model: str, demand: Demand) -> float:
        """What placing `demand` on a GPU of `model` takes from the model-constrained tasks that need that model,
        beyond what its cheapest allowed model would take (compute units)."""
        if not self.reserved:
            return 0.0
        allowed = [self.reserved[m] for m in demand.models if m in self.reserved]
        floor = min(allowed) if allowed else self._any_floor
        return self.reserve_weight * (self.reserved.get(model, 0.0) - floor) * demand.gpu_units

    def node_choice(self, view: NodeView, demand: Demand, f0: float, f1: float,
                    picks: tuple[tuple[int, ...], ...]) -> Choice:  # fmt: skip
        return Choice(fgd_score(f0 - f1 - self.reservation(view.model, demand)), picks)

    def node_offset(self, model: str, demand: Demand) -> float:
        return self.reservation(model, demand)

    def _bands(self, free: Any, compute: int, spare: Any, offset: float) -> tuple[Any, Any, Any]:
        """(near fit, dead remainder, remainder) of placing `compute` on GPUs with `free` compute and `spare`
        memory (in compute units), for one GPU (ints) or many (arrays): the one spelling of the bands' rule.
        On a model the pod pays a reservation for (`offset` > 0) a near fit is an ordinary choice."""
        assert self.bands is not None
        near, smallest = self.bands
        left = free - compute
        partial = free < WHOLE_GPU_COMPUTE
        near_fit = partial & (left <= near) & ((spare <= near) | (not self.gpu_memory_weight)) & (offset <= 0)
        return near_fit, partial & (left > near) & (left < smallest), left

    def slice_key(self, value: float, free: int, compute: int, spare: float, offset: float) -> float:
        """Near fits first, the smallest remainder first; dead remainders after every other choice."""
        if self.bands is None:
            return value
        near_fit, dead, left = self._bands(free, compute, spare, offset)
        if near_fit:
            return value + _BAND * (WHOLE_GPU_COMPUTE + 1 - int(left))
        return value - _BAND if dead else value

    def slice_keys(self, values: Ints, free: Ints, compute: int, spare: Floats, offset: float) -> Ints:
        if self.bands is None:
            return values
        near_fit, dead, left = self._bands(free, compute, spare, offset)
        return np.where(near_fit, values + _BAND * (WHOLE_GPU_COMPUTE + 1 - left),
                        np.where(dead, values - _BAND, values))  # fmt: skip

    def slice_score(self, score: int, free: int, compute: int, spare: float, offset: float) -> int:
        """Near fits 100 − remainder; dead remainders fgdpp's score scaled into [0, t]; others clamped between."""
        if self.bands is None:
            return score
        near = self.bands[0]
        near_fit, dead, left = self._bands(free, compute, spare, offset)
        if near_fit:
            return int(MAX_SCORE - left)
        if dead:
            return score * (near + 1) // (MAX_SCORE + 1)
        return min(max(score, near + 1), MAX_SCORE - near - 1)

    def slice_scores(self, scores: Ints, free: Ints, compute: int, spare: Floats, offset: float) -> Ints:
        if self.bands is None:
            return scores
        near = self.bands[0]
        near_fit, dead, left = self._bands(free, compute, spare, offset)
        return np.where(near_fit, MAX_SCORE - left,
                        np.where(dead, scores * (near + 1) // (MAX_SCORE + 1),
                                 np.clip(scores, near + 1, MAX_SCORE - near - 1)))  # fmt: skip

    def fragment_many(self, cpu_free: Ints, free_compute: Ints, model: str, memory_free: Ints, free_memory: Ints,
                      total_memory: Ints) -> Floats:  # fmt: skip
        """`fragment` of many states (rows) at once, the same operations in the same order (`FGD.fragment_many`)."""
        f = self.workload.fragment_many(cpu_free, free_compute, model)
        terms = _mismatch_terms(free_compute, free_memory, total_memory)
        mismatch = np.zeros(len(f))
        for j in range(terms.shape[1]):  # summed GPU by GPU, as `gpu_mismatch` does
            mismatch = mismatch + terms[:, j]
        return self._stranding(f, mismatch, free_compute.sum(axis=1), cpu_free, memory_free)

    def fragment_before_after(
        self, cpu_before: Ints, cpu_after: Ints, memory_before: Ints, memory_after: Ints, free_compute: Ints,
        free_memory: Ints, total_memory: Ints, model: str, compute: int, taken: Ints, rows: Ints, columns: Ints,
    ) -> tuple[Floats, Floats]:  # fmt: skip
        f0, f1 = self.workload.fragment_before_after(cpu_before, cpu_after, free_compute, model, compute, rows, columns)
        terms = np.ascontiguousarray(_mismatch_terms(free_compute, free_memory, total_memory).T)  # a row per GPU
        moved = _mismatch_terms(
            free_compute[rows, columns] - compute, free_memory[rows, columns] - taken[rows, columns],
            total_memory[rows, columns],
        )  # fmt: skip
        terms_after = terms[:, rows]
        terms_after[columns, np.arange(len(rows))] = moved  # GPU `columns[k]`'s term is the moved one
        before = np.zeros(len(f0))
        after = np.zeros(len(rows))
        for j in range(len(terms)):  # GPU by GPU, as `gpu_mismatch`
            before += terms[j]
            after += terms_after[j]
        idle = free_compute.sum(axis=1)
        f0 = self._stranding(f0, before, idle, cpu_before, memory_before)
        return f0, self._stranding(f1, after, idle[rows] - compute, cpu_after[rows], memory_after[rows])

    def _stranding(self, f: Floats, mismatch: Floats, idle: Ints, cpu_free: Ints, memory_free: Ints) -> Floats:
        """The terms `fragment` adds to F_n(M), in its order, over arrays (`UNLIMITED` stands for None)."""
        if self.gpu_memory_weight:
            f = f + self.gpu_memory_weight * mismatch
        if self.cpu_weight and self.cpu_per_unit > 0:
            stranded = idle - cpu_free / self.cpu_per_unit
            f = np.where((cpu_free != UNLIMITED) & (idle > 0) & (stranded > 0), f + self.cpu_weight * stranded, f)
        if self._memory_on():
            stranded = idle - memory_free / self.memory_per_unit
            f = np.where((memory_free != UNLIMITED) & (idle > 0) & (stranded > 0), f + self.memory_weight * stranded, f)
        return f

    def _memory_on(self) -> bool:
        return self.memory_weight > 0 and self.memory_per_unit > 0

    def fragment(self, cpu_free: int | None, free_compute: list[int], model: str, memory_free: int | None = None,
                 gpu_memory: tuple[list[int], tuple[int, ...]] | None = None) -> float:  # fmt: skip
        f = self.workload.node_fragment(cpu_free, free_compute, model)
        if gpu_memory is not None and self.gpu_memory_weight:
            f += self.gpu_memory_weight * gpu_mismatch(free_compute, *gpu_memory)
        idle = sum(free_compute)
        if not idle:
            return f
        if self.cpu_weight and cpu_free is not None and self.cpu_per_unit > 0:
            stranded = idle - cpu_free / self.cpu_per_unit
            if stranded > 0:
                f += self.cpu_weight * stranded
        if memory_free is not None and self._memory_on():
            stranded = idle - memory_free / self.memory_per_unit
            if stranded > 0:
                f += self.memory_weight * stranded
        return f
