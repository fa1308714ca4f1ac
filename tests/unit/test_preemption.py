"""Pure preemption / reclaim logic (gpupool.preemption) over the same Ledger/Placer as admission."""

from __future__ import annotations

from gpupool.ledger import HoldingKind
from gpupool.preemption import find_preemption
from gpupool.queues import Limit, State, WithinQueue
from gpupool.request import QoS
from tests.unit.test_queues import admitted, make_manager, pod, queue


def test_preemption_picks_the_fewest_victims_and_nominates() -> None:
    m, _ = make_manager(nodes=2, gpus=1)
    m.set_queue(queue("team-a", 10000))
    # node-0's GPU: four 25 % pods; node-1's GPU: one whole-GPU pod (all low priority)
    for i in range(4):
        m.upsert_pod(pod(f"small{i}", compute=25, memory=1000))
    m.upsert_pod(pod("whole"))
    r = m.schedule()
    assert len(r.admitted) == 5
    m.upsert_pod(pod("urgent", priority=100))
    r = m.schedule()
    assert "urgent" not in admitted(r)
    assert r.preemptors == {"uid-urgent": "team-a"}
    plan = find_preemption(m, "uid-urgent")
    assert plan is not None
    assert [v.key for v in plan.victims] == ["team-a/whole"]
    assert not plan.reclaim
    gpu_of_victim = plan.victims[0].holding.slices[0].gpu
    m.nominate("uid-urgent", plan.plan, [v.uid for v in plan.victims])
    holding = m.ledger.holding("uid-urgent")
    assert holding is not None and holding.kind is HoldingKind.NOMINATED
    assert holding.slices[0].gpu == gpu_of_victim  # the preemptor gets the freed slice
    # nothing else may take the nominated capacity
    m.upsert_pod(pod("sneaky", priority=1))
    r = m.schedule()
    assert "sneaky" not in admitted(r) and "urgent" not in admitted(r)
    assert "waiting for 1 preempted pod(s) to leave node" in r.waiting["uid-urgent"]
    m.remove_pod("uid-whole")
    r = m.schedule()
    assert admitted(r) == ["urgent"]
    holding = m.ledger.holding("uid-urgent")
    assert holding is not None and holding.kind is HoldingKind.RESERVED


def test_best_effort_victims_first() -> None:
    m, _ = make_manager(nodes=1, gpus=2)
    m.set_queue(queue("team-a", 10000))
    m.upsert_pod(pod("guaranteed", priority=0))
    be = pod("besteffort", priority=5)
    from dataclasses import replace

    be.request = replace(be.request, qos=QoS.BEST_EFFORT)
    m.upsert_pod(be)
    assert len(m.schedule().admitted) == 2
    m.upsert_pod(pod("urgent", priority=10))
    m.schedule()
    plan = find_preemption(m, "uid-urgent")
    assert plan is not None and [v.key for v in plan.victims] == ["team-a/besteffort"]


def test_two_victims_when_one_is_not_enough_and_exclusion_gives_next_set() -> None:
    m, _ = make_manager(nodes=1, gpus=1)
    m.set_queue(queue("team-a", 10000))
    m.upsert_pod(pod("x", compute=50, memory=100, priority=1))
    m.upsert_pod(pod("y", compute=50, memory=100, priority=2))
    m.schedule()
    m.upsert_pod(pod("urgent", priority=10))
    m.schedule()
    plan = find_preemption(m, "uid-urgent")
    assert plan is not None and sorted(v.key for v in plan.victims) == ["team-a/x", "team-a/y"]
    # a PDB refused the eviction of y: no other set exists
    assert find_preemption(m, "uid-urgent", exclude=frozenset({"uid-y"})) is None


def test_pdb_refusal_moves_to_next_victim_set() -> None:
    m, _ = make_manager(nodes=2, gpus=1)
    m.set_queue(queue("team-a", 10000))
    m.upsert_pod(pod("p0", priority=1))
    m.upsert_pod(pod("p1", priority=2))
    m.schedule()
    m.upsert_pod(pod("urgent", priority=10))
    m.schedule()
    first = find_preemption(m, "uid-urgent")
    assert first is not None and [v.key for v in first.victims] == ["team-a/p0"]
    second = find_preemption(m, "uid-urgent", exclude=frozenset({"uid-p0"}))
    assert second is not None and [v.key for v in second.victims] == ["team-a/p1"]


def test_no_preemption_of_equal_or_higher_priority_or_when_never() -> None:
    m, _ = make_manager(nodes=1, gpus=1)
    m.set_queue(queue("team-a", 10000, within_queue=WithinQueue.NEVER))
    m.upsert_pod(pod("low", priority=0))
    m.schedule()
    m.upsert_pod(pod("urgent", priority=10))
    m.schedule()
    assert find_preemption(m, "uid-urgent") is None
    m.set_queue(queue("team-a", 10000))
    assert find_preemption(m, "uid-urgent") is not None
    m.upsert_pod(pod("peer", priority=0))
    assert find_preemption(m, "uid-peer") is None


def test_quota_preemption_within_queue() -> None:
    m, _ = make_manager(nodes=1, gpus=4)
    m.set_queue(queue("team-a", 200))
    m.upsert_pod(pod("low0", priority=0))
    m.upsert_pod(pod("low1", priority=1))
    m.schedule()
    m.upsert_pod(pod("urgent", priority=10))
    r = m.schedule()
    assert "quota 200/200" in r.waiting["uid-urgent"]
    plan = find_preemption(m, "uid-urgent")
    assert plan is not None and [v.key for v in plan.victims] == ["team-a/low0"]


def test_reclaim_borrowed_capacity() -> None:
    m, _ = make_manager(nodes=1, gpus=4)
    m.set_queue(queue("team-a", 200, cohort="c"))
    m.set_queue(queue("team-b", 200, cohort="c"))
    for i in range(4):  # team-b borrows team-a's idle quota and fills the pool
        m.upsert_pod(pod(f"b{i}", namespace="team-b", priority=100))
    assert len(m.schedule().admitted) == 4
    assert m.borrowed("team-b") == m.borrowed("team-b").__class__(200, 0)
    m.upsert_pod(pod("a0", priority=0))
    r = m.schedule()
    assert "a0" not in admitted(r)
    plan = find_preemption(m, "uid-a0")
    assert plan is not None and plan.reclaim and len(plan.victims) == 1
    assert plan.victims[0].queue == "team-b"
    m.nominate("uid-a0", plan.plan, [plan.victims[0].uid])
    m.remove_pod(plan.victims[0].uid)
    assert admitted(m.schedule()) == ["a0"]
    # team-b is back at its nominal quota: no more reclaim from it
    m.upsert_pod(pod("a1", priority=0))
    m.upsert_pod(pod("a2", priority=0))
    m.schedule()
    plan = find_preemption(m, "uid-a1")
    assert plan is not None and plan.victims[0].queue == "team-b"  # b still borrows 100
    m.nominate("uid-a1", plan.plan, [plan.victims[0].uid])
    m.remove_pod(plan.victims[0].uid)
    m.schedule()
    assert m.borrowed("team-b").compute == 0
    assert find_preemption(m, "uid-a2") is None  # a2 would exceed team-a's nominal: no reclaim


def test_no_reclaim_when_disabled_or_preemptor_would_borrow() -> None:
    m, _ = make_manager(nodes=1, gpus=2)
    m.set_queue(queue("team-a", 100, cohort="c", reclaim_borrowed=False))
    m.set_queue(queue("team-b", 100, cohort="c"))
    m.upsert_pod(pod("b0", namespace="team-b"))
    m.upsert_pod(pod("b1", namespace="team-b"))
    m.schedule()
    m.upsert_pod(pod("a0", priority=10))
    m.schedule()
    assert find_preemption(m, "uid-a0") is None
    m.set_queue(queue("team-a", 100, cohort="c", borrowing_limit=Limit(100)))
    m.upsert_pod(pod("a-big", count=2, priority=10))
    m.schedule()
    assert find_preemption(m, "uid-a-big") is None  # 200 > its nominal 100: it may not reclaim


def test_nomination_expires() -> None:
    m, clock = make_manager(nodes=1, gpus=1, nomination_ttl=30)
    m.set_queue(queue("team-a", 10000))
    m.upsert_pod(pod("low"))
    m.schedule()
    m.upsert_pod(pod("urgent", priority=10))
    m.schedule()
    plan = find_preemption(m, "uid-urgent")
    assert plan is not None
    m.nominate("uid-urgent", plan.plan, ["uid-low"])
    clock.now += 31
    r = m.schedule()
    assert r.expired_nominations == ["uid-urgent"]
    assert m.pods["uid-urgent"].state in (State.PENDING, State.ADMITTED)
