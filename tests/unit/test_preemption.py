"""Pure preemption / reclaim logic (gpupool.preemption) over the same Ledger/Placer as admission."""

from __future__ import annotations

from gpupool.ledger import HoldingKind
from gpupool.preemption import find_preemption
from gpupool.queues import State, WithinQueue
from gpupool.quota import Limit
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


# --- cohort reclaim when the lender is within its nominal quota (the cohort's total stays within quota) ---


def _lender_and_borrower(reclaim: bool = True):  # type: ignore[no-untyped-def]
    """team-a lends 100 of its quota to team-b; the pool (4 GPUs) still has room for 2 more GPUs."""
    m, clock = make_manager(nodes=1, gpus=4)
    m.set_queue(queue("team-a", 100, cohort="c", reclaim_borrowed=reclaim))
    m.set_queue(queue("team-b", 100, cohort="c"))
    m.upsert_pod(pod("b0", namespace="team-b", priority=100))
    m.upsert_pod(pod("b1", namespace="team-b", priority=100))
    assert sorted(admitted(m.schedule())) == ["b0", "b1"]
    assert m.borrowed("team-b").compute == 100
    return m, clock


def test_lender_within_nominal_waits_for_reclaim_instead_of_overrunning_the_cohort() -> None:
    m, _ = _lender_and_borrower()
    m.upsert_pod(pod("a0"))
    r = m.schedule()
    # spare capacity, team-a within its nominal 100 — but the cohort (quota 200) already uses 200
    assert admitted(r) == []
    reason = r.waiting["uid-a0"]
    assert "reclaim" in reason and "team-b (100)" in reason and "cohort c has 200/200" in reason, reason
    assert r.preemptors == {"uid-a0": "team-a"}  # the controller runs find_preemption for it
    assert m.usage("team-a").compute + m.usage("team-b").compute == 200
    plan = find_preemption(m, "uid-a0")
    assert plan is not None and plan.reclaim and len(plan.victims) == 1
    assert plan.victims[0].queue == "team-b" and plan.victims[0].key in ("team-b/b0", "team-b/b1")
    m.nominate("uid-a0", plan.plan, [plan.victims[0].uid])
    r = m.schedule()
    assert admitted(r) == [] and "waiting for 1 preempted pod(s)" in r.waiting["uid-a0"]
    m.remove_pod(plan.victims[0].uid)
    assert admitted(m.schedule()) == ["a0"]
    assert m.usage("team-a").compute == 100 and m.usage("team-b").compute == 100
    assert m.borrowed("team-b").compute == 0


def test_lender_is_admitted_when_the_borrower_gives_back_on_its_own() -> None:
    m, _ = _lender_and_borrower()
    m.upsert_pod(pod("a0"))
    assert admitted(m.schedule()) == []
    m.remove_pod("uid-b1")  # finished
    assert admitted(m.schedule()) == ["a0"]


def test_no_reclaim_when_reclaim_borrowed_is_off_the_lender_still_waits() -> None:
    m, _ = _lender_and_borrower(reclaim=False)
    m.upsert_pod(pod("a0"))
    r = m.schedule()
    assert admitted(r) == []
    assert "reclaimBorrowed is off" in r.waiting["uid-a0"] and "team-b" in r.waiting["uid-a0"]
    assert find_preemption(m, "uid-a0") is None
    m.remove_pod("uid-b0")
    assert admitted(m.schedule()) == ["a0"]


def test_reclaim_prefers_borrowers_over_the_lenders_own_lower_priority_pods() -> None:
    m, _ = make_manager(nodes=1, gpus=4)
    m.set_queue(queue("team-a", 200, cohort="c"))
    m.set_queue(queue("team-b", 100, cohort="c"))
    m.upsert_pod(pod("a-low", priority=0))
    m.upsert_pod(pod("b0", namespace="team-b", priority=100))
    m.upsert_pod(pod("b1", namespace="team-b", priority=100))
    assert len(m.schedule().admitted) == 3  # cohort 300/300: team-b borrows 100 of team-a's quota
    m.upsert_pod(pod("a-urgent", priority=10))
    r = m.schedule()
    assert "reclaim" in r.waiting["uid-a-urgent"]
    plan = find_preemption(m, "uid-a-urgent")
    assert plan is not None and [v.queue for v in plan.victims] == ["team-b"]


def test_cohort_total_never_exceeds_its_quota_under_random_admissions() -> None:
    import random

    reclaimed = 0
    for seed in range(30):
        rnd = random.Random(seed)
        m, clock = make_manager(nodes=2, gpus=4, memory=10000)
        specs = {}
        for name in ("q0", "q1", "q2"):
            limit = rnd.choice([None, 0, 100, 300])
            spec = queue(
                name, rnd.choice([0, 100, 200, 300]), memory=rnd.choice([None, 20000, 40000]),
                cohort="c", borrowing_limit=Limit(compute=limit), reclaim_borrowed=rnd.random() < 0.7,
            )  # fmt: skip
            m.set_queue(spec)
            specs[name] = spec
        live: list[str] = []
        reclaims = 0
        for step in range(60):
            action = rnd.random()
            if action < 0.55:
                q = rnd.choice(list(specs))
                name = f"s{seed}-{step}"
                m.upsert_pod(pod(name, namespace=q, compute=rnd.choice([25, 50, 100]),
                                 memory=rnd.choice([1000, 5000]), priority=rnd.randint(0, 3)))  # fmt: skip
                live.append(f"uid-{name}")
            elif action < 0.75 and live:
                m.remove_pod(live.pop(rnd.randrange(len(live))))
            clock.now += 1
            r = m.schedule()
            for uid in r.preemptors:  # what the controller does: evict, nominate, the victims leave
                plan = find_preemption(m, uid)
                if plan is None:
                    continue
                m.nominate(uid, plan.plan, [v.uid for v in plan.victims])
                reclaims += plan.reclaim
                for v in plan.victims:
                    m.remove_pod(v.uid)
                    if v.uid in live:
                        live.remove(v.uid)
            m.schedule()
            usage = {q: m.usage(q) for q in specs}
            total_c = sum(u.compute for u in usage.values())
            assert total_c <= sum(s.nominal.compute or 0 for s in specs.values()), (seed, step, usage)
            if all(s.nominal.memory_mib is not None for s in specs.values()):
                assert sum(u.memory_mib for u in usage.values()) <= sum(
                    s.nominal.memory_mib or 0 for s in specs.values()
                ), (seed, step, usage)
            for q, s in specs.items():
                nominal_c = s.nominal.compute or 0
                if s.borrowing_limit.compute is not None:
                    assert usage[q].compute <= nominal_c + s.borrowing_limit.compute, (seed, step, q, usage)
        reclaimed += reclaims
    assert reclaimed > 0  # the loop exercises reclaim, not only admission


def test_preemption_plans_on_a_copy_and_never_touches_the_live_ledger() -> None:
    """Issue 10: the search used to release and re-hold victims on the live ledger. A victim whose node
    shrank under it (a GPUNode re-reported with less memory: the ledger keeps the holding) could then
    not be re-held: the search raised and the live ledger lost the holding."""
    from gpupool.inventory import GPUInfo, NodeInfo

    m, _ = make_manager(nodes=1, gpus=1, memory=40960)
    m.set_queue(queue("team-a", 10000))
    m.upsert_pod(pod("low", compute=50, memory=30000, priority=1))
    assert admitted(m.schedule()) == ["low"]
    m.ledger.upsert_node(NodeInfo("node-0", (GPUInfo("GPU-0-0", 0, "A100", 20000),)))
    held = m.ledger.holding("uid-low")
    assert held is not None  # kept, although 30000 MiB no longer fit the GPU
    m.upsert_pod(pod("urgent", compute=50, memory=1000, priority=100))
    assert "urgent" not in admitted(m.schedule())
    before, generation = m.ledger.snapshot(), m.ledger.generation
    plan = find_preemption(m, "uid-urgent")
    assert plan is not None and [v.key for v in plan.victims] == ["team-a/low"]
    assert m.ledger.holding("uid-low") is held
    assert m.ledger.snapshot() == before and m.ledger.generation == generation  # nothing happened to it


def test_what_if_releases_only_on_a_planning_copy() -> None:
    import pytest

    m, _ = make_manager(nodes=1, gpus=1)
    m.set_queue(queue("team-a", 10000))
    m.upsert_pod(pod("a"))
    m.schedule()
    with pytest.raises(RuntimeError, match="plan on a copy"), m.ledger.without(["uid-a"]):
        pass
    copy = m.ledger.copy()
    with copy.without(["uid-a"]):
        assert copy.holding("uid-a") is None and copy.gpu_free("GPU-0-0") == (100, 40960)
        assert m.ledger.holding("uid-a") is not None and m.ledger.gpu_free("GPU-0-0") == (0, 0)
    assert copy.snapshot() == m.ledger.snapshot()
