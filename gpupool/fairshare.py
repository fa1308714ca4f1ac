"""Weighted dominant-resource fairness (DRF) between the GPUQueues of one cohort (docs/fairshare.md).

Pure arithmetic over quota specs and usages, exact (`Fraction`), so the same inputs give the same order.
A queue's *share* is the larger of its compute and memory usage as a fraction of its cohort's capacity (the
sum of the members' nominal quotas; a resource without a limit does not count); its *weighted share* is the
share divided by `spec.fairSharing.weight`. The queue manager admits, within a cohort, the head of the queue
that stays within its nominal quota first, then the one with the lowest weighted share (`rank`); a queue
that borrows may reclaim from another borrower only while its weighted share after admission stays at or
below the victim queue's after eviction (`may_reclaim`), so two queues never reclaim from each other in
turn. `fair_shares` is what `kubectl get gpuqueues` shows as the fair share: the cohort's capacity
water-filled by weight over what each queue uses and waits for, each queue's nominal quota guaranteed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Protocol

from gpupool.quota import RESOURCES, Limit, QuotaSpec, Resources, cohort_nominal

ZERO_SHARE = Fraction(0)
DEFAULT_WEIGHT = Fraction(1)


class FairSpec(QuotaSpec, Protocol):
    """What fair sharing reads of a queue (a `gpupool.queues.QueueSpec`)."""

    @property
    def weight(self) -> Fraction: ...


def capacity(spec: QuotaSpec, members: Sequence[QuotaSpec]) -> Limit:
    """What shares are fractions of: the cohort's nominal quotas summed, or the queue's own outside a cohort."""
    pool = members if spec.cohort is not None and members else [spec]
    return Limit(cohort_nominal(pool, "compute"), cohort_nominal(pool, "memory"))


def share(usage: Resources, cap: Limit) -> Fraction:
    """The dominant share: the largest usage / capacity over the resources with a positive capacity."""
    best = ZERO_SHARE
    for resource in RESOURCES:
        total = cap.get(resource)
        if total:
            best = max(best, Fraction(max(0, usage.get(resource)), total))
    return best


def weighted(usage: Resources, cap: Limit, weight: Fraction) -> Fraction:
    return share(usage, cap) / weight


def within_nominal(spec: QuotaSpec, usage: Resources) -> bool:
    """Does `usage` stay within every limit of the queue's nominal quota?"""
    return all(
        (n := spec.nominal.get(r)) is None or usage.get(r) <= n for r in RESOURCES
    )  # fmt: skip


def rank(spec: QuotaSpec, usage: Resources, charge: Resources, weighted_share: Fraction) -> tuple[bool, Fraction]:
    """Order of a cohort's queue heads (smallest first): a head its nominal quota covers, then the queue
    with the lowest weighted share (`weighted(usage, ...)`, which the caller keeps while usage stays)."""
    return (not within_nominal(spec, usage + charge), weighted_share)


def may_reclaim(
    preemptor: FairSpec, preemptor_after: Resources, victim: FairSpec, victim_after: Resources, cap: Limit
) -> bool:
    """May a borrowing queue take back capacity from `victim`'s queue (both in one cohort)? Only while its
    weighted share after admission stays at or below the victim queue's after the eviction."""
    return weighted(preemptor_after, cap, preemptor.weight) <= weighted(victim_after, cap, victim.weight)


def fair_shares(
    members: Sequence[FairSpec], usage: Mapping[str, Resources], waiting: Mapping[str, Resources]
) -> dict[str, Fraction]:
    """Each member's fair share of the cohort (a fraction of its capacity, as `share` measures it).

    Each queue is guaranteed what it uses and waits for up to its nominal quota; the rest of the capacity is
    water-filled: every queue grows with its weight (share / weight level) until what it uses and waits for is
    covered or the capacity is spent. A queue that uses and waits for nothing has fair share 0.
    """
    if not members:
        return {}
    cap = capacity(members[0], members)
    demand = {m.name: min(Fraction(1), share(usage.get(m.name, Resources()) + waiting.get(m.name, Resources()), cap))
              for m in members}  # fmt: skip
    floor = {m.name: min(demand[m.name], share(_limit_as_usage(m.nominal), cap)) for m in members}
    return _water_fill([(m.name, m.weight) for m in members], demand, floor)


def _limit_as_usage(limit: Limit) -> Resources:
    return Resources(limit.compute or 0, limit.memory_mib or 0)


def _water_fill(
    weights: Iterable[tuple[str, Fraction]], demand: Mapping[str, Fraction], floor: Mapping[str, Fraction]
) -> dict[str, Fraction]:
    """f_q(λ) = max(floor_q, min(demand_q, w_q λ)); the λ where Σ f_q reaches 1 (or every demand is met)."""
    ws = dict(weights)
    if sum(demand.values(), ZERO_SHARE) <= 1:
        return dict(demand)

    def at(level: Fraction) -> dict[str, Fraction]:
        return {q: max(floor[q], min(demand[q], w * level)) for q, w in ws.items()}

    points = sorted({v / w for q, w in ws.items() for v in (floor[q], demand[q])})
    low = ZERO_SHARE
    if sum(at(low).values(), ZERO_SHARE) >= 1:
        return at(low)  # the guaranteed parts fill the cohort already
    for high in points:
        if sum(at(high).values(), ZERO_SHARE) >= 1:
            # linear between low and high: solve Σ f_q(λ) = 1 for the queues still growing there
            base = at(low)
            growing = [q for q, w in ws.items() if floor[q] <= w * low and w * high <= demand[q]]
            slope = sum((ws[q] for q in growing), ZERO_SHARE)
            if slope == 0:
                return at(high)
            level = low + (1 - sum(base.values(), ZERO_SHARE)) / slope
            return at(level)
        low = high
    return at(low)
