"""The one interface every placement policy implements, and the fit helpers they share.

A policy sees a `NodeView` (free capacity of a node's eligible GPUs, in index order)
and a `Demand` (slice groups plus host resources) and answers a `Choice`: an integer
score 0..100 (higher is better) and which GPUs (positions in the view) serve each
group, or None when the demand does not fit. Policies are pure: the same view and
demand give the same choice, so the placement engine evaluates each distinct node
state once. A policy that draws random numbers says so (`deterministic = False`) and
gets its generator, seeded explicitly, at construction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from gpupool.capacity import CapacityIndex
from gpupool.ledger import NodeView
from gpupool.request import WHOLE_GPU_COMPUTE, PodRequest

MAX_SCORE = 100


@dataclass(frozen=True, slots=True)
class SliceGroup:
    """`count` slices of (`compute`, `memory_mib`) on distinct GPUs; memory None = the whole GPU's."""

    count: int
    compute: int
    memory_mib: int | None

    @property
    def sharing(self) -> bool:
        """A fractional slice (the paper's "GPU-sharing task")."""
        return self.count == 1 and (self.compute < WHOLE_GPU_COMPUTE or self.memory_mib is not None)


@dataclass(frozen=True, slots=True)
class Demand:
    """The shape of a pod as policies see it: hashable, no identity."""

    groups: tuple[SliceGroup, ...]
    cpu_milli: int = 0
    memory_mib: int = 0
    #: the pod's GPU-model allow-list (empty = any); views are already restricted to it
    models: frozenset[str] = frozenset()

    @staticmethod
    def of(request: PodRequest) -> Demand:
        return Demand(
            groups=tuple(SliceGroup(c.count, c.compute, c.memory_mib) for c in request.containers),
            cpu_milli=request.cpu_milli,
            memory_mib=request.host_memory_mib,
            models=request.models,
        )

    @property
    def gpu_units(self) -> int:
        return sum(g.count * g.compute for g in self.groups)


@dataclass(frozen=True, slots=True)
class Choice:
    """A policy's answer for one node: its score and the view positions serving each group."""

    score: int
    picks: tuple[tuple[int, ...], ...]


class Policy(ABC):
    """A placement policy. Subclasses set `name` and implement `evaluate` (or `choose` + `score`)."""

    name: ClassVar[str]
    deterministic: ClassVar[bool] = True
    #: pick one uniformly random feasible node instead of the best score (the paper's Random)
    random_node: ClassVar[bool] = False

    def evaluate(self, view: NodeView, demand: Demand) -> Choice | None:
        if not host_fits(view, demand):
            return None
        picks = self.choose(view, demand)
        if picks is None:
            return None
        return Choice(self.score(view, demand, picks), picks)

    def evaluate_rows(self, index: CapacityIndex, rows: list[int], demand: Demand) -> list[Choice | None] | None:
        """`evaluate` of the node states in `rows` of `index` (the ledger's capacity index, current) at once, for
        policies that vectorise it (fgd, fgdpp); None: evaluate them one by one (the default)."""
        return None

    def score_rows(
        self, index: CapacityIndex, rows: list[int], demand: Demand
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]] | None:
        """The scores of `evaluate_rows` and where the pod fits (score meaningless elsewhere), for policies that
        have them without building choices; None: take them from `evaluate_rows` or `evaluate` (the default)."""
        return None

    def choose(self, view: NodeView, demand: Demand) -> tuple[tuple[int, ...], ...] | None:
        """GPUs for each group: best fit (smallest free that fits, lowest index on ties)."""
        return best_fit(view, demand)

    @abstractmethod
    def score(self, view: NodeView, demand: Demand, picks: tuple[tuple[int, ...], ...]) -> int:
        """0..100 for placing `demand` on `view` with `picks`."""

    def rescore(self, choices: Sequence[Choice]) -> list[Choice]:
        """Adjust the scores of all feasible nodes together (BestFit normalises); default: unchanged."""
        return list(choices)

    def placed(self, node: str, demand: Demand) -> None:
        """Told after a pod of `demand` was committed on `node` (stateful policies: GpuClustering); default: nothing."""
        return None

    def released(self, node: str, demand: Demand) -> None:
        """Told after a pod of `demand` left `node`; default: nothing."""
        return None

    def pool_models(self, gpus: Mapping[str, int]) -> bool:
        """Told the pool's GPU count per model whenever it changes (the placer calls it); True when this policy
        now scores differently, so remembered choices must go. Default: nothing depends on it."""
        return False


def is_sharing(group: SliceGroup) -> bool:
    """A fractional-compute slice (the paper's GPU-sharing task), judged by compute alone."""
    return group.count == 1 and group.compute < WHOLE_GPU_COMPUTE


def gpu_class(demand: Demand) -> str:
    """The paper's GPU affinity class: "" (no GPU), "share" or "<k>-gpu"."""
    slices = sum(g.count for g in demand.groups)
    if slices == 0:
        return ""
    if len(demand.groups) == 1 and is_sharing(demand.groups[0]):
        return "share"
    return f"{slices}-gpu"


def host_fits(view: NodeView, demand: Demand) -> bool:
    if view.cpu_free is not None and view.cpu_free < demand.cpu_milli:
        return False
    if view.memory_free is not None and view.memory_free < demand.memory_mib:
        return False
    return view.pods_free is None or view.pods_free >= 1


def slice_fits(free_c: int, free_m: int, total_m: int, group: SliceGroup) -> bool:
    if free_c < group.compute:
        return False
    if group.memory_mib is None:
        return free_m == total_m and free_m > 0
    return free_m >= group.memory_mib


def slice_memory(total_m: int, group: SliceGroup) -> int:
    """The memory one slice of `group` takes on a GPU with `total_m` MiB."""
    return total_m if group.memory_mib is None else group.memory_mib


Picks = tuple[tuple[int, ...], ...]
#: given the fitting positions (index order), the free compute and memory and the group, the positions to use
Selector = Callable[[list[int], list[int], list[int], SliceGroup], tuple[int, ...]]


def choose_per_group(view: NodeView, demand: Demand, select: Selector) -> Picks | None:
    """GPUs for every group, applied one after another on a hypothetical state; None when a group does not fit.

    `select` picks `group.count` of the fitting positions; the policies differ only there.
    """
    free_c = list(view.free_compute)
    free_m = list(view.free_memory)
    total_m = view.total_memory
    picks: list[tuple[int, ...]] = []
    for group in demand.groups:
        fitting = [j for j in range(len(free_c)) if slice_fits(free_c[j], free_m[j], total_m[j], group)]
        if len(fitting) < group.count:
            return None
        chosen = select(fitting, free_c, free_m, group)
        for j in chosen:
            free_c[j] -= group.compute
            free_m[j] -= slice_memory(total_m[j], group)
        picks.append(chosen)
    return tuple(picks)


def _smallest_free(fitting: list[int], free_c: list[int], free_m: list[int], group: SliceGroup) -> tuple[int, ...]:
    return tuple(sorted(sorted(fitting, key=lambda j: (free_c[j], free_m[j], j))[: group.count]))


def best_fit(view: NodeView, demand: Demand) -> Picks | None:
    """Best-fit GPUs for every group: the smallest free that fits, lowest index on ties."""
    return choose_per_group(view, demand, _smallest_free)


def apply_picks(
    view: NodeView, demand: Demand, picks: tuple[tuple[int, ...], ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Free compute and memory per view position after placing `demand` with `picks`."""
    free_c = list(view.free_compute)
    free_m = list(view.free_memory)
    for group, chosen in zip(demand.groups, picks, strict=True):
        for j in chosen:
            free_c[j] -= group.compute
            free_m[j] -= slice_memory(view.total_memory[j], group)
    return tuple(free_c), tuple(free_m)
