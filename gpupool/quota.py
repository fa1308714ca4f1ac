"""Quota and cohort arithmetic in pool units: does a charge fit a queue's quota, and if not, by how much.

`check` answers with numbers (`QuotaProblem`); `message` turns them into the one line a waiting pod's
Event shows. The rules (nominal quota, borrowing within a cohort, the cohort's total) are DESIGN.md §4.1
and docs/contracts.md ("quota memory", "cohort borrowing"); the queue manager supplies the usage.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

#: the two quota resources: compute (100 = one GPU) and memory (MiB)
RESOURCES = ("compute", "memory")


@dataclass(frozen=True, slots=True)
class Resources:
    """Pool units: compute (100 = one GPU) and memory MiB."""

    compute: int = 0
    memory_mib: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.compute + other.compute, self.memory_mib + other.memory_mib)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.compute - other.compute, self.memory_mib - other.memory_mib)

    def get(self, resource: str) -> int:
        return self.compute if resource == "compute" else self.memory_mib


ZERO = Resources()


@dataclass(frozen=True, slots=True)
class Limit:
    """A per-resource limit; None = unlimited."""

    compute: int | None = None
    memory_mib: int | None = None

    def get(self, resource: str) -> int | None:
        return self.compute if resource == "compute" else self.memory_mib


class QuotaSpec(Protocol):
    """What the arithmetic reads of a queue (a `gpupool.queues.QueueSpec`)."""

    @property
    def name(self) -> str: ...
    @property
    def nominal(self) -> Limit: ...
    @property
    def borrowing_limit(self) -> Limit: ...
    @property
    def cohort(self) -> str | None: ...
    @property
    def reclaim_borrowed(self) -> bool: ...


class Shortage(enum.StrEnum):
    """Why a charge does not fit."""

    NO_QUEUE = "NoQueue"  # the queue does not exist
    NOMINAL = "Nominal"  # above the nominal quota, and no cohort to borrow from
    BORROWING_LIMIT = "BorrowingLimit"  # borrowing would pass the queue's borrowingLimit
    COHORT = "Cohort"  # the cohort's nominal quotas are used up
    LENT = "Lent"  # within the nominal quota, but cohort members borrow what it needs


@dataclass(frozen=True, slots=True)
class QuotaProblem:
    """A charge that does not fit, in numbers (the first resource that fails: compute, then memory)."""

    queue: str
    shortage: Shortage
    resource: str = "compute"
    #: the queue's usage before the charge, the charge, and the nominal quota
    used: int = 0
    need: int = 0
    nominal: int = 0
    cohort: str | None = None
    #: the cohort's usage before the charge and the sum of its members' nominal quotas
    cohort_used: int = 0
    cohort_nominal: int = 0
    borrowing_limit: int | None = None
    #: (queue, amount above its nominal quota) of the other cohort members, for `Shortage.LENT`
    borrowers: tuple[tuple[str, int], ...] = ()
    reclaim_borrowed: bool = True


def borrowed(spec: QuotaSpec, usage: Resources) -> Resources:
    """How much of `usage` lies above the queue's nominal quota (borrowed from its cohort)."""
    nc = spec.nominal.compute or 0
    nm = spec.nominal.memory_mib
    return Resources(max(0, usage.compute - nc), 0 if nm is None else max(0, usage.memory_mib - nm))


def cohort_nominal(members: Sequence[QuotaSpec], resource: str) -> int | None:
    """The sum of the members' nominal quotas; None without members or when one is unlimited."""
    if not members:
        return None
    total = 0
    for m in members:
        n = m.nominal.get(resource)
        if n is None:
            return None
        total += n
    return total


def check(
    spec: QuotaSpec, charge: Resources, used: Callable[[str], Resources], members: Sequence[QuotaSpec]
) -> QuotaProblem | None:
    """None when `charge` more fits `spec`'s quota, given each queue's `used` and the cohort's `members`."""
    after = used(spec.name) + charge
    for resource in RESOURCES:
        nominal = spec.nominal.get(resource)
        if nominal is None:
            continue
        value, need = after.get(resource), charge.get(resource)
        capacity = cohort_nominal(members, resource)
        total = None if capacity is None else sum(used(m.name).get(resource) for m in members) + need
        problem = QuotaProblem(
            spec.name, Shortage.NOMINAL, resource, value - need, need, nominal, spec.cohort,
            0 if total is None else total - need, capacity or 0, reclaim_borrowed=spec.reclaim_borrowed,
        )  # fmt: skip
        if value <= nominal:
            if need == 0 or total is None or capacity is None or total <= capacity:
                continue
            # within its nominal quota, but other members borrow it: they must give it back first
            lent = []
            for m in members:
                m_used = used(m.name).get(resource)
                m_nominal = m.nominal.get(resource) or 0
                if m.name != spec.name and m_used > m_nominal:
                    lent.append((m.name, m_used - m_nominal))
            return replace(problem, shortage=Shortage.LENT, borrowers=tuple(lent))
        if spec.cohort is None:
            return problem
        limit = spec.borrowing_limit.get(resource)
        if limit is not None and value - nominal > limit:
            return replace(problem, shortage=Shortage.BORROWING_LIMIT, borrowing_limit=limit)
        if total is not None and capacity is not None and total > capacity:
            return replace(problem, shortage=Shortage.COHORT)
    return None


def message(p: QuotaProblem) -> str:
    """The problem as one line for a waiting pod's Event and `gpupool explain`."""
    if p.shortage is Shortage.NO_QUEUE:
        return f"GPUQueue {p.queue} does not exist"
    unit = "" if p.resource == "compute" else " MiB"
    text = f"quota {p.used}/{p.nominal}{unit} {p.resource} in use, needs {p.need}{unit} more"
    cohort = f"cohort {p.cohort} has {p.cohort_used}/{p.cohort_nominal}{unit}"
    if p.shortage is Shortage.BORROWING_LIMIT:
        return f"{text}; borrowing limit {p.borrowing_limit}{unit} reached"
    if p.shortage is Shortage.COHORT:
        return f"{text}; {cohort} in use"
    if p.shortage is Shortage.LENT:
        lent = ", ".join(f"{name} ({amount}{unit})" for name, amount in p.borrowers) or "other queues"
        how = (
            "waiting for reclaim of the quota borrowed by"
            if p.reclaim_borrowed
            else "reclaimBorrowed is off: waiting for the borrowers to release it,"
        )
        return f"{text} (within nominal); {cohort} {p.resource} in use; {how} {lent}"
    return text
