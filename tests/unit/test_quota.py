"""Quota and cohort arithmetic (gpupool.quota): numbers first, the message formatted from them."""

from __future__ import annotations

from collections.abc import Callable

from gpupool.queues import QueueSpec
from gpupool.quota import (
    Limit,
    QuotaProblem,
    Resources,
    Shortage,
    borrowed,
    check,
    cohort_nominal,
    message,
)


def spec(name: str, compute: int | None, memory: int | None = None, **kw: object) -> QueueSpec:
    return QueueSpec(name=name, nominal=Limit(compute, memory), **kw)  # type: ignore[arg-type]


def usage(table: dict[str, Resources]) -> Callable[[str], Resources]:
    return lambda q: table.get(q, Resources())


def test_fits_within_nominal_without_cohort() -> None:
    a = spec("a", 400)
    assert check(a, Resources(400, 0), usage({}), []) is None
    p = check(a, Resources(100, 0), usage({"a": Resources(400, 0)}), [])
    assert p == QuotaProblem("a", Shortage.NOMINAL, "compute", used=400, need=100, nominal=400)
    assert message(p) == "quota 400/400 compute in use, needs 100 more"


def test_memory_is_checked_after_compute_and_unlimited_when_absent() -> None:
    a = spec("a", 1000, 10000)
    p = check(a, Resources(30, 6000), usage({"a": Resources(30, 6000)}), [])
    assert p is not None and (p.resource, p.used, p.need, p.nominal) == ("memory", 6000, 6000, 10000)
    assert message(p) == "quota 6000/10000 MiB memory in use, needs 6000 MiB more"
    assert check(spec("b", 1000), Resources(0, 10**9), usage({}), []) is None


def test_borrowing_limit_and_cohort_total() -> None:
    a = spec("a", 200, cohort="c", borrowing_limit=Limit(100))
    b = spec("b", 300, cohort="c")
    members = [a, b]
    p = check(a, Resources(100, 0), usage({"a": Resources(300, 0)}), members)
    assert p is not None and p.shortage is Shortage.BORROWING_LIMIT and p.borrowing_limit == 100
    assert message(p) == "quota 300/200 compute in use, needs 100 more; borrowing limit 100 reached"
    full = usage({"a": Resources(250, 0), "b": Resources(250, 0)})
    p = check(a, Resources(50, 0), full, members)
    assert p is not None and p.shortage is Shortage.COHORT
    assert (p.cohort_used, p.cohort_nominal) == (500, 500)
    assert message(p).endswith("; cohort c has 500/500 in use")


def test_lent_quota_names_the_borrowers_with_numbers() -> None:
    a = spec("a", 200, cohort="c")
    b = spec("b", 100, cohort="c", reclaim_borrowed=False)
    used = usage({"b": Resources(300, 0)})
    p = check(a, Resources(100, 0), used, [a, b])
    assert p is not None and p.shortage is Shortage.LENT and p.borrowers == (("b", 200),)
    assert message(p) == (
        "quota 0/200 compute in use, needs 100 more (within nominal); cohort c has 300/300 compute in use; "
        "waiting for reclaim of the quota borrowed by b (200)"
    )
    p = check(b, Resources(100, 0), usage({"a": Resources(300, 0)}), [a, b])
    assert p is not None and "reclaimBorrowed is off" in message(p) and "a (100)" in message(p)


def test_borrowed_and_cohort_nominal() -> None:
    a = spec("a", 200, 1000)
    assert borrowed(a, Resources(300, 500)) == Resources(100, 0)
    assert borrowed(spec("b", 200), Resources(300, 500)) == Resources(100, 0)  # no memory limit: none borrowed
    assert cohort_nominal([a, spec("b", 100)], "compute") == 300
    assert cohort_nominal([a, spec("b", 100)], "memory") is None
    assert cohort_nominal([], "compute") is None


def test_missing_queue_message() -> None:
    assert message(QuotaProblem("gone", Shortage.NO_QUEUE)) == "GPUQueue gone does not exist"
