"""Pod groups (gpupool.groups): all-or-nothing admission, release as one, bad groups named; a property test."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool import groups, resources
from gpupool.errors import InvalidRequest
from gpupool.groups import GroupSpec, Owner
from gpupool.ledger import HoldingKind
from gpupool.queues import PodEntry, QueueManager, State
from tests.unit.test_queues import admitted, make_manager, pod, queue


def member(name: str, group: GroupSpec, **kw: object) -> PodEntry:
    entry = pod(name, **kw)  # type: ignore[arg-type]
    entry.group = group
    return entry


def job(name: str, size: int, namespace: str = "team-a") -> GroupSpec:
    spec = groups.from_owner(namespace, Owner("Job", name, size, "spec.parallelism"))
    assert spec is not None
    return spec


def test_two_four_pod_jobs_on_six_gpus_one_admitted_whole_the_other_waits_whole() -> None:
    m, _ = make_manager(nodes=2, gpus=3)
    m.set_queue(queue("team-a", None))
    a, b = job("a", 4), job("b", 4)
    for i in range(4):  # interleaved: pod by pod, each job would get three GPUs and neither would run
        m.upsert_pod(member(f"a{i}", a))
        m.upsert_pod(member(f"b{i}", b))
    r = m.schedule()
    assert admitted(r) == ["a0", "a1", "a2", "a3"]
    assert {x.group for x in r.admitted} == {"team-a/job/a"}
    assert all(m.pods[f"uid-b{i}"].state is State.PENDING for i in range(4))
    assert m.ledger.holding("uid-b0") is None
    why = r.waiting["uid-b0"]
    assert "group team-a/job/b: no place for all 4 member(s) together; the largest without one" in why
    assert "uid-b0" in r.preemptors  # the group's first member blocks its queue and may preempt for it
    for i in range(4):
        m.remove_pod(f"uid-a{i}")
    r = m.schedule()
    assert admitted(r) == ["b0", "b1", "b2", "b3"]


def test_pod_by_pod_the_same_jobs_deadlock() -> None:
    """The case gangs fix: without groups both jobs hold three GPUs each."""
    m, _ = make_manager(nodes=2, gpus=3)
    m.set_queue(queue("team-a", None))
    for i in range(4):
        m.upsert_pod(pod(f"a{i}"))
        m.upsert_pod(pod(f"b{i}"))
    r = m.schedule()
    assert sorted(admitted(r)) == ["a0", "a1", "a2", "b0", "b1", "b2"]


def test_missing_members_wait_without_blocking_the_queue() -> None:
    m, _ = make_manager(gpus=4)
    m.set_queue(queue("team-a", None))
    g = job("j", 4)
    for i in range(3):
        m.upsert_pod(member(f"j{i}", g, created=i))
    m.upsert_pod(pod("solo", created=10))
    r = m.schedule()
    assert admitted(r) == ["solo"]
    assert "group team-a/job/j: 3 of 4 members present (Job team-a/j spec.parallelism); waiting for 1 more" in (
        r.waiting["uid-j1"]
    )
    m.upsert_pod(member("j3", g, created=3))
    m.remove_pod("uid-solo")
    assert admitted(m.schedule()) == ["j0", "j1", "j2", "j3"]


def test_quota_for_the_whole_group_or_none() -> None:
    m, _ = make_manager(gpus=8)
    m.set_queue(queue("team-a", 300))
    g = job("j", 4)
    for i in range(4):
        m.upsert_pod(member(f"j{i}", g))
    r = m.schedule()
    assert admitted(r) == []
    assert "group team-a/job/j of 4 member(s): quota 0/300 compute in use, needs 400 more" in r.waiting["uid-j0"]
    assert m.usage("team-a").compute == 0 and not list(m.ledger.holdings())


def test_members_beyond_min_members_are_admitted_pod_by_pod() -> None:
    m, _ = make_manager(gpus=3)
    m.set_queue(queue("team-a", None))
    g = groups.from_annotations("team-a", {resources.POD_GROUP: "train", resources.MIN_MEMBERS: "2"})
    assert g is not None
    for i in range(4):
        m.upsert_pod(member(f"w{i}", g, created=i))
    r = m.schedule()
    assert admitted(r) == ["w0", "w1", "w2"]  # the gang of two, then one more as capacity allows
    assert "no capacity" in r.waiting["uid-w3"]


def test_bad_groups_are_reported_naming_the_field() -> None:
    m, _ = make_manager(gpus=4)
    m.set_queue(queue("team-a", None))
    m.set_queue(queue("team-b", None))
    too_big = GroupSpec("team-a/pod-group/x", 3, 2, f"annotation {resources.MIN_MEMBERS}")
    m.upsert_pod(member("x0", too_big))
    mixed = GroupSpec("team-a/pod-group/y", 2)
    m.upsert_pod(member("y0", mixed, priority=1))
    m.upsert_pod(member("y1", mixed, priority=2))
    queues = GroupSpec("team-a/pod-group/z", 2)
    m.upsert_pod(member("z0", queues))
    m.upsert_pod(member("z1", queues, namespace="team-b"))
    broken = groups.unreadable("team-a", "PyTorchJob", "p", "403 Forbidden")
    m.upsert_pod(member("p0", broken))
    r = m.schedule()
    assert admitted(r) == []
    assert "can never have more than 2; lower gpupool.io/min-members" in r.waiting["uid-x0"]
    assert "mixes priorities 1, 2; give every member the same spec.priorityClassName" in r.waiting["uid-y0"]
    assert "mixes queues team-a, team-b; give every member the same gpupool.io/queue" in r.waiting["uid-z0"]
    assert "cannot read its owner PyTorchJob team-a/p to size its pod group: 403 Forbidden" in r.waiting["uid-p0"]
    assert not r.preemptors


def test_unbound_group_released_as_one_after_the_timeout() -> None:
    m, clock = make_manager(gpus=4, group_bind_ttl=60.0)
    m.set_queue(queue("team-a", None))
    g = job("j", 3)
    for i in range(3):
        m.upsert_pod(member(f"j{i}", g))
    assert len(m.schedule().admitted) == 3
    held = m.ledger.holding("uid-j0")
    assert held is not None
    bound = member("j0", g)  # j0 binds: its signed assignment arrives
    bound.gated = False
    bound.assigned = held.__class__(held.pod, held.node, held.slices, HoldingKind.ASSIGNED, held.qos)
    m.upsert_pod(bound)
    clock.now += 30
    assert not m.schedule().released_groups
    clock.now += 31
    r = m.schedule()
    assert sorted(r.released_groups) == ["uid-j1", "uid-j2"]
    assert "group team-a/job/j: 1 of 3 admitted member(s) bound within 60 s" in r.released_groups["uid-j1"]
    assert m.ledger.holding("uid-j1") is None and m.ledger.holding("uid-j0") is not None


def test_group_annotations_are_checked_naming_the_field() -> None:
    assert resources.pod_group({}) is None
    assert resources.pod_group({resources.POD_GROUP: "g"}) == ("g", 1)
    with pytest.raises(InvalidRequest, match=r"min-members\]: '0' is not a member count"):
        resources.pod_group({resources.POD_GROUP: "g", resources.MIN_MEMBERS: "0"})
    with pytest.raises(InvalidRequest, match=r"min-members\]: needs gpupool.io/pod-group"):
        resources.pod_group({resources.MIN_MEMBERS: "2"})
    with pytest.raises(InvalidRequest, match=r"pod-group\]: 'Bad_Name' is not a group name"):
        resources.pod_group({resources.POD_GROUP: "Bad_Name"})


def test_owner_inference() -> None:
    assert groups.from_owner("ns", Owner("Deployment", "web", 5)) is None
    assert groups.from_owner("ns", Owner("ReplicaSet", "web-1", 5)) is None
    assert groups.from_owner("ns", Owner("Job", "one", 1)) is None  # a single pod needs no gang
    spec = groups.from_owner("ns", Owner("StatefulSet", "db", 3, "spec.replicas"))
    assert spec == GroupSpec("ns/statefulset/db", 3, 3, "StatefulSet ns/db spec.replicas")
    annotated = groups.group_of("ns", {resources.POD_GROUP: "g", resources.MIN_MEMBERS: "4"}, Owner("Job", "j", 2))
    assert annotated is not None and annotated.capacity == 2 and annotated.min_members == 4


# --- property: never a partially admitted group, never past capacity or quota ---------------------------------


def _admitted_by_group(m: QueueManager) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in m.pods.values():
        if e.group is not None and e.state is State.ADMITTED:
            out[e.group.key] = out.get(e.group.key, 0) + 1
    return out


def _cycle(m: QueueManager, specs: dict[str, GroupSpec], quotas: dict[str, int | None]) -> None:
    before = _admitted_by_group(m)
    r = m.schedule()
    new: dict[str, int] = {}
    for a in r.admitted:
        entry = m.pods[a.uid]
        if entry.group is not None:
            new[entry.group.key] = new.get(entry.group.key, 0) + 1
    for key, n in new.items():  # a group is admitted with all it still needs, or not at all
        assert before.get(key, 0) + n >= specs[key].min_members, (key, before.get(key, 0), n)
    for q, limit in quotas.items():
        if limit is not None:
            assert m.usage(q).compute <= limit
    used: dict[str, list[int]] = {}
    for h in m.ledger.holdings():
        for sl in h.slices:
            row = used.setdefault(sl.gpu, [0, 0])
            row[0] += sl.compute
            row[1] += sl.memory_mib
    for uuid, (compute, memory) in used.items():
        assert compute <= 100 and memory <= m.ledger.gpu(uuid).memory_mib


shapes = st.tuples(st.integers(1, 2), st.sampled_from([25, 50, 100]))


@settings(max_examples=60, deadline=None)
@given(
    gpus=st.integers(1, 6),
    quotas=st.lists(st.one_of(st.none(), st.integers(0, 800)), min_size=1, max_size=3),
    gangs=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 2), shapes, st.integers(0, 1)), min_size=1,
                   max_size=6),
    finish=st.lists(st.integers(0, 40), max_size=6),
)  # fmt: skip
def test_property_no_partial_group_no_overrun(
    gpus: int,
    quotas: list[int | None],
    gangs: list[tuple[int, int, tuple[int, int], int]],
    finish: list[int],
) -> None:
    m, _ = make_manager(nodes=2, gpus=gpus)
    names = [f"q{i}" for i in range(len(quotas))]
    for name, limit in zip(names, quotas, strict=True):
        m.set_queue(queue(name, limit))
    specs: dict[str, GroupSpec] = {}
    serial = 0
    for g, (size, qi, (count, compute), missing) in enumerate(gangs):
        ns = names[qi % len(names)]
        spec = groups.from_owner(ns, Owner("Job", f"j{g}", size, "spec.parallelism"))
        for _ in range(max(1, size - missing)):
            serial += 1
            entry = pod(f"p{serial}", count=count, compute=compute, namespace=ns)
            entry.group = spec
            m.upsert_pod(entry)
        if spec is not None:
            specs[spec.key] = spec
    quota_of = dict(zip(names, quotas, strict=True))
    _cycle(m, specs, quota_of)
    for step in finish:  # members finish, the next cycles admit others
        done = [u for u, e in sorted(m.pods.items()) if e.state is State.ADMITTED]
        if done:
            m.remove_pod(done[step % len(done)])
        _cycle(m, specs, quota_of)


# --- workload-level preemption ----------------------------------------------------------------------------------


def test_a_gang_victim_is_evicted_whole_or_not_at_all() -> None:
    from gpupool.preemption import find_preemption

    m, _ = make_manager(gpus=4)
    m.set_queue(queue("team-a", None))
    gang = job("low", 2)
    m.upsert_pod(member("g0", gang, created=1))
    m.upsert_pod(member("g1", gang, created=2))
    m.upsert_pod(pod("s0", created=3))
    m.upsert_pod(pod("s1", created=4))
    assert len(m.schedule().admitted) == 4
    m.upsert_pod(pod("one", priority=10))
    m.schedule()
    plan = find_preemption(m, "uid-one")
    assert plan is not None and [v.key for v in plan.victims] == ["team-a/s0"]  # a single pod, not the gang
    m.remove_pod("uid-one")
    m.upsert_pod(pod("three", count=3, priority=10))
    m.schedule()
    plan = find_preemption(m, "uid-three")
    assert plan is not None
    # two single pods free only two GPUs and a gang member may not go alone: the whole gang and one more
    assert sorted(v.key for v in plan.victims) == ["team-a/g0", "team-a/g1", "team-a/s0"]


def test_a_gang_preempts_for_all_of_its_members_together() -> None:
    from gpupool.preemption import find_preemption

    m, _ = make_manager(gpus=4)
    m.set_queue(queue("team-a", None))
    for i in range(4):
        m.upsert_pod(pod(f"low{i}", created=i))
    assert len(m.schedule().admitted) == 4
    high = job("high", 3)
    for i in range(3):
        m.upsert_pod(member(f"h{i}", high, priority=10, created=10 + i))
    r = m.schedule()
    assert list(r.preemptors) == ["uid-h0"]
    plan = find_preemption(m, "uid-h0")
    assert plan is not None and len(plan.victims) == 3
    assert sorted(u for u, _ in plan.members) == ["uid-h1", "uid-h2"]
    victims = [v.uid for v in plan.victims]
    m.nominate("uid-h0", plan.plan, victims)
    for uid, member_plan in plan.members:
        m.nominate(uid, member_plan, victims)
    assert not m.schedule().admitted  # the victims are still there
    for v in victims:
        m.remove_pod(v)
    assert admitted(m.schedule()) == ["h0", "h1", "h2"]
