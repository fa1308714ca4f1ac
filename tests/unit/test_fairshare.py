"""Weighted DRF between the queues of a cohort (gpupool.fairshare) and how the queue manager and the
preemption search follow it: weights respected, a queue below its fair share admitted next, reclaim by share
only (never back and forth), no queue starved, more weight never less admitted."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool import fairshare
from gpupool.errors import GpupoolError
from gpupool.objects import queue_spec_from_object
from gpupool.preemption import find_preemption
from gpupool.queues import QueueManager, State
from gpupool.quota import Limit, Resources
from tests.unit.test_queues import make_manager, pod, queue


def cohort(m: QueueManager, weights: dict[str, Fraction | int], lender: int = 800, nominal: int = 0) -> None:
    """Queues of cohort `c` with `nominal` each, and an idle lender queue holding the rest of the quota."""
    for name, weight in weights.items():
        m.set_queue(queue(name, nominal, cohort="c", weight=Fraction(weight)))
    m.set_queue(queue("lender", lender, cohort="c"))


def fill(m: QueueManager, queues: list[str], per_queue: int, *, gpus: int = 1) -> None:
    for i in range(per_queue):  # interleaved creation: order by creation alone would be round robin
        for q in queues:
            m.upsert_pod(pod(f"{q}-{i}", namespace=q, count=gpus))


def admitted_per_queue(m: QueueManager) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in m.pods.values():
        if e.state is State.ADMITTED and e.queue:
            out[e.queue] = out.get(e.queue, 0) + e.charge.compute // 100
    return out


def test_weights_1_1_2_under_saturation_admit_25_25_50() -> None:
    m, _ = make_manager(nodes=2, gpus=4)
    cohort(m, {"a": 1, "b": 1, "c": 2})
    fill(m, ["a", "b", "c"], 8)
    m.schedule()
    assert admitted_per_queue(m) == {"a": 2, "b": 2, "c": 4}
    shares = m.shares()
    quarter, half = Fraction(1, 4), Fraction(1, 2)
    assert {q: shares[q] for q in "abc"} == {"a": (quarter, quarter), "b": (quarter, quarter), "c": (half, half)}
    assert shares["lender"] == (0, 0)


def test_without_weights_creation_order_alone_would_not_share() -> None:
    """The same pods, created queue after queue: priority + creation order alone (the old walk) gave a all 8."""
    m, _ = make_manager(nodes=2, gpus=4)
    cohort(m, {"a": 1, "b": 1, "c": 2})
    for q in ("a", "b", "c"):
        for i in range(8):
            m.upsert_pod(pod(f"{q}-{i}", namespace=q))
    m.schedule()
    assert admitted_per_queue(m) == {"a": 2, "b": 2, "c": 4}


def test_a_queue_below_its_fair_share_gets_the_next_admission() -> None:
    m, _ = make_manager(nodes=2, gpus=4)
    cohort(m, {"a": 1, "b": 1, "c": 2})
    fill(m, ["a", "b", "c"], 8)
    m.schedule()
    # a pod of c finishes: c (3/8 over weight 2) is below a and b (2/8 each), though their pods are older
    done = next(e.uid for e in m.pods.values() if e.queue == "c" and e.state is State.ADMITTED)
    m.remove_pod(done)
    r = m.schedule()
    assert [a.queue for a in r.admitted] == ["c"]
    done = next(e.uid for e in m.pods.values() if e.queue == "b" and e.state is State.ADMITTED)
    m.remove_pod(done)
    assert [a.queue for a in m.schedule().admitted] == ["b"]


def test_nominal_quota_first_then_weights_share_the_rest() -> None:
    m, _ = make_manager(nodes=2, gpus=4)
    m.set_queue(queue("a", 300, cohort="c", weight=Fraction(1)))  # guaranteed 3 GPUs
    m.set_queue(queue("b", 100, cohort="c", weight=Fraction(3)))
    m.set_queue(queue("lender", 400, cohort="c"))
    fill(m, ["a", "b"], 8)
    m.schedule()
    # a: its 3 nominal GPUs; the rest by weight 1:3 over total share: a 3 (3/8 / 1), b 5 (5/8 / 3)
    assert admitted_per_queue(m) == {"a": 3, "b": 5}
    shares = m.shares()
    assert (shares["a"], shares["b"]) == ((Fraction(3, 8), Fraction(3, 8)), (Fraction(5, 8), Fraction(5, 8)))


def test_borrowing_queue_reclaims_by_fair_share_and_never_back() -> None:
    """a came first and borrowed all 8 GPUs; b (same weight) reclaims until both hold 4, then nothing moves."""
    m, _ = make_manager(nodes=2, gpus=4)
    cohort(m, {"a": 1, "b": 1})
    for i in range(8):
        m.upsert_pod(pod(f"a-{i}", namespace="a"))
    m.schedule()
    for i in range(8):
        m.upsert_pod(pod(f"b-{i}", namespace="b"))
    moves = 0
    while True:
        r = m.schedule()
        heads = [uid for uid, q in r.preemptors.items()]
        plans = [p for p in (find_preemption(m, uid) for uid in heads) if p is not None]
        if not plans:
            break
        for plan in plans[:1]:
            assert {v.queue for v in plan.victims} == {"a"}
            m.nominate(plan.preemptor, plan.plan, [v.uid for v in plan.victims])
            for v in plan.victims:
                m.remove_pod(v.uid)
            moves += 1
        assert moves <= 8
    m.schedule()
    assert admitted_per_queue(m) == {"a": 4, "b": 4}


def test_reclaim_rule_is_by_weighted_share_after_the_move() -> None:
    spec_a = queue("a", 0, cohort="c", weight=Fraction(1))
    spec_c = queue("c", 0, cohort="c", weight=Fraction(2))
    cap = Limit(800, None)
    # c at 4 GPUs wants a 5th from a at 3: 5/8/2 = 0.3125 <= 2/8 = 0.25? no
    assert not fairshare.may_reclaim(spec_c, Resources(500), spec_a, Resources(200), cap)
    # c at 2 wants a 3rd from a at 6: 3/16 <= 5/8
    assert fairshare.may_reclaim(spec_c, Resources(300), spec_a, Resources(500), cap)


def test_fair_shares_water_fill_demand_and_guarantee_nominal() -> None:
    a = queue("a", 0, cohort="c", weight=Fraction(1))
    b = queue("b", 0, cohort="c", weight=Fraction(1))
    c = queue("c", 0, cohort="c", weight=Fraction(2))
    lender = queue("lender", 800, cohort="c")
    members = [a, b, c, lender]
    # b wants only one GPU: a and c share the rest 1:2
    fair = fairshare.fair_shares(members, {}, {"a": Resources(800), "b": Resources(100), "c": Resources(800)})
    assert fair == {"a": Fraction(7, 24), "b": Fraction(1, 8), "c": Fraction(7, 12), "lender": 0}
    # everyone's demand fits: fair share = demand
    fair = fairshare.fair_shares(members, {"a": Resources(100)}, {"c": Resources(200)})
    assert fair == {"a": Fraction(1, 8), "b": 0, "c": Fraction(1, 4), "lender": 0}


def test_memory_can_be_the_dominant_resource() -> None:
    cap = Limit(800, 1000)
    assert fairshare.share(Resources(100, 500), cap) == Fraction(1, 2)
    assert fairshare.share(Resources(400, 100), cap) == Fraction(1, 2)
    assert fairshare.share(Resources(400, 100), Limit(800, None)) == Fraction(1, 2)


def test_weight_is_read_from_the_gpuqueue_and_bad_weights_are_refused() -> None:
    def spec(extra: object) -> dict[str, object]:
        return {"metadata": {"name": "q"}, "spec": {"nominalQuota": {"compute": 100}, "fairSharing": extra}}

    assert queue_spec_from_object(spec({"weight": 2})).weight == 2
    assert queue_spec_from_object(spec({"weight": 0.5})).weight == Fraction(1, 2)
    assert queue_spec_from_object(spec(None)).weight == 1
    for bad in ({"weight": 0}, {"weight": -1}, {"weight": "2"}, {"weight": True}, "x"):
        with pytest.raises(GpupoolError, match=r"GPUQueue q spec\.fairSharing"):
            queue_spec_from_object(spec(bad))


@settings(max_examples=40, deadline=None)
@given(
    weights=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    gpus=st.integers(2, 12),
    rounds=st.integers(0, 12),
    seed=st.integers(0, 2**16),
)
def test_no_queue_starves_and_shares_track_weights(weights: list[int], gpus: int, rounds: int, seed: int) -> None:
    """Saturated queues with turnover (a random admitted pod finishes each round): every queue keeps at least
    one pod once the pool holds one per queue, and each queue's weighted share is within one pod of the others'."""
    import random

    rng = random.Random(seed)
    names = [f"q{i}" for i in range(len(weights))]
    m, _ = make_manager(nodes=1, gpus=gpus)
    cohort(m, dict(zip(names, weights, strict=True)), lender=100 * gpus)
    fill(m, names, gpus + rounds)
    m.schedule()
    for _ in range(rounds):
        running = sorted(e.uid for e in m.pods.values() if e.state is State.ADMITTED)
        m.remove_pod(rng.choice(running))
        m.schedule()
    held = admitted_per_queue(m)
    assert sum(held.values()) == gpus
    if gpus >= len(names):
        assert all(held.get(q, 0) >= 1 for q in names), held
    # DRF balance: each queue's last pod went to it while it had the lowest weighted share
    w = dict(zip(names, weights, strict=True))
    for p in names:
        for q in names:
            if held.get(q, 0) > 0:
                assert Fraction(held.get(p, 0), w[p]) >= Fraction(held[q] - 1, w[q]), (p, q, held)


@settings(max_examples=30, deadline=None)
@given(weights=st.lists(st.integers(1, 5), min_size=2, max_size=4), gpus=st.integers(2, 10), up=st.integers(1, 4))
def test_more_weight_never_means_less_admitted(weights: list[int], gpus: int, up: int) -> None:
    names = [f"q{i}" for i in range(len(weights))]

    def run(ws: list[int]) -> dict[str, int]:
        m, _ = make_manager(nodes=1, gpus=gpus)
        cohort(m, dict(zip(names, ws, strict=True)), lender=100 * gpus)
        fill(m, names, gpus)
        m.schedule()
        return admitted_per_queue(m)

    before = run(weights)
    after = run([weights[0] + up, *weights[1:]])
    assert after.get("q0", 0) >= before.get("q0", 0)
    lender = queue("lender", 100 * gpus, cohort="c")

    def fair(ws: list[int]) -> dict[str, Fraction]:
        members = [queue(n, 0, cohort="c", weight=Fraction(x)) for n, x in zip(names, ws, strict=True)]
        return fairshare.fair_shares([*members, lender], {}, {n: Resources(100 * (i + 1)) for i, n in enumerate(names)})

    fair_before, fair_after = fair(weights), fair([weights[0] + up, *weights[1:]])
    assert fair_after["q0"] >= fair_before["q0"]
    assert sum(fair_after.values()) <= 1 and all(fair_after[n] <= Fraction(i + 1, gpus) for i, n in enumerate(names))
