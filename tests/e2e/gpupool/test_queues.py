"""GPUQueues end to end: priority order, quota holding pods back, borrowing in a cohort and reclaim, preemption.

Quota is in pool units: 100 compute = one whole GPU. Every pod here asks for one slice of 100 compute (or 60) and
1 GiB, so the pool (26 GPUs) never limits: only quota does.
"""

from __future__ import annotations

from typing import Any

import pytest

from e2e.polling import wait_for
from gpupool import resources
from tests.e2e.gpupool.gp_helpers import DEBUG_POOL, GP, HIGH, KWOK_NODES, LOW, gpu_pod

pytestmark = pytest.mark.local_harness(
    f"{KWOK_NODES}: borrowing, reclaim and preemption pin pods to the two H100-80GB GPUs of gpu-h100-0; "
    f"and {DEBUG_POOL}"
)


def _whole(name: str, prio: str | None = None, compute: int = 100, h100: bool = False) -> dict[str, Any]:
    ann = {resources.GPU_MODEL: "H100-80GB"} if h100 else {}
    return gpu_pod(name, compute=compute, memory=1024, priority_class=prio, annotations=ann)


def test_queue_admits_by_priority(gp: GP) -> None:
    ns = gp.namespace()
    gp.queue("prio", {"namespaces": [ns], "nominalQuota": {"compute": 100}, "preemption": {"withinQueue": "Never"}})
    gp.create(ns, _whole("blocker", LOW))
    gp.wait_bound(ns, "blocker")
    gp.create(ns, _whole("low", LOW))
    gp.create(ns, _whole("high", HIGH))
    gp.stays_gated(ns, "low", 2)
    gp.stays_gated(ns, "high", 0.5)
    gp.delete(ns, "blocker")
    gp.wait_bound(ns, "high")
    gp.stays_gated(ns, "low", 2)  # 100/100 used by high
    gp.delete(ns, "high")
    gp.wait_bound(ns, "low")


def test_quota_holds_pods_back_and_releases_them(gp: GP) -> None:
    ns = gp.namespace()
    q = gp.queue("quota", {"namespaces": [ns], "nominalQuota": {"compute": 100}})
    gp.create(ns, _whole("first", compute=60))
    gp.wait_bound(ns, "first")
    gp.create(ns, _whole("second", compute=60))
    gp.stays_gated(ns, "second", 3)
    # the controller says why it waits
    wait_for(
        lambda: any(q in e for e in gp.events(ns, "second")), timeout=15, what="an event naming the queue on 'second'"
    )
    gp.delete(ns, "first")
    gp.wait_bound(ns, "second")


def test_borrowing_and_reclaim(gp: GP) -> None:
    """The borrower fills both H100s (one on its own quota, one borrowed from the idle lender); when the lender's
    pod needs its quota back and the pool has no room, one borrowing pod is evicted (reclaim)."""
    lender_ns, borrower_ns = gp.namespace(), gp.namespace()
    cohort = f"c-{lender_ns[3:]}"
    gp.queue(
        "borrower",
        {"namespaces": [borrower_ns], "cohort": cohort, "nominalQuota": {"compute": 100},
         "borrowingLimit": {"compute": 100}},
    )  # fmt: skip
    gp.queue("lender", {"namespaces": [lender_ns], "cohort": cohort, "nominalQuota": {"compute": 100}})
    gp.create(borrower_ns, _whole("b-0", h100=True))
    gp.wait_bound(borrower_ns, "b-0")
    gp.create(borrower_ns, _whole("b-1", h100=True))  # over its own quota: borrows the lender's idle 100
    gp.wait_bound(borrower_ns, "b-1")
    gp.create(borrower_ns, _whole("b-2", h100=True))  # over quota + borrowing limit (and no room)
    gp.stays_gated(borrower_ns, "b-2", 2)
    gp.create(lender_ns, _whole("l-0", h100=True))
    wait_for(
        lambda: sum(gp.exists(borrower_ns, f"b-{i}") for i in range(2)) == 1,
        timeout=30,
        what="exactly one of the borrower's two admitted pods reclaimed",
    )
    gp.wait_bound(lender_ns, "l-0", timeout=60)
    assert gp.exists(borrower_ns, "b-2")
    assert gp.pod(borrower_ns, "b-2").spec.node_name is None  # still over quota


def test_preemption_within_queue(gp: GP) -> None:
    ns = gp.namespace()
    gp.queue("preempt", {"namespaces": [ns], "nominalQuota": {"compute": 100}})
    gp.create(ns, _whole("victim", LOW))
    gp.wait_bound(ns, "victim")
    gp.create(ns, _whole("preemptor", HIGH))
    gp.wait_gone(ns, "victim", timeout=30)
    pod = gp.wait_bound(ns, "preemptor", timeout=60)
    assert pod.spec.priority == 1000
