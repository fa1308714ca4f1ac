"""gpupool's own simple policies: `binpack` fills the fullest node, `spread` the emptiest."""

from __future__ import annotations

from typing import ClassVar

from gpupool.ledger import NodeView
from gpupool.policies.base import MAX_SCORE, Demand, Picks, Policy, SliceGroup, apply_picks, choose_per_group
from gpupool.request import WHOLE_GPU_COMPUTE


def _used_share_after(view: NodeView, demand: Demand, picks: tuple[tuple[int, ...], ...]) -> int:
    """Per-mille of the node's eligible compute and memory in use after the placement (mean of both)."""
    if not view.free_compute:
        return 0
    free_c, free_m = apply_picks(view, demand, picks)
    cap_c = WHOLE_GPU_COMPUTE * len(free_c)
    cap_m = sum(view.total_memory) or 1
    used_c = 1000 * (cap_c - sum(free_c)) // cap_c
    used_m = 1000 * (cap_m - sum(free_m)) // cap_m
    return (used_c + used_m) // 2


class BinPack(Policy):
    """Prefer the node (and GPU, by best fit) that is fullest after the placement."""

    name: ClassVar[str] = "binpack"

    def score(self, view: NodeView, demand: Demand, picks: tuple[tuple[int, ...], ...]) -> int:
        return _used_share_after(view, demand, picks) * MAX_SCORE // 1000


def _largest_free(fitting: list[int], free_c: list[int], free_m: list[int], group: SliceGroup) -> tuple[int, ...]:
    return tuple(sorted(sorted(fitting, key=lambda j: (-free_c[j], -free_m[j], j))[: group.count]))


class Spread(Policy):
    """Prefer the emptiest node, and on it the emptiest GPUs."""

    name: ClassVar[str] = "spread"

    def choose(self, view: NodeView, demand: Demand) -> Picks | None:
        return choose_per_group(view, demand, _largest_free)

    def score(self, view: NodeView, demand: Demand, picks: tuple[tuple[int, ...], ...]) -> int:
        return (1000 - _used_share_after(view, demand, picks)) * MAX_SCORE // 1000
