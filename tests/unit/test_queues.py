"""Pure queue / quota / admission logic (gpupool.queues): no Kubernetes, deterministic clock."""

from __future__ import annotations

import pytest

from controller import status
from gpupool.errors import GpupoolError
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.ledger import HoldingKind, Ledger
from gpupool.objects import queue_spec_from_object
from gpupool.placement import Placer
from gpupool.policies import make_policy
from gpupool.queues import IMPLICIT_QUEUE, LabelSelector, PodEntry, QueueManager, QueueSpec, State, Strategy
from gpupool.quota import Limit, Resources
from gpupool.request import ContainerRequest, PodRequest


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_manager(nodes: int = 1, gpus: int = 4, memory: int = 40960, **kw: object) -> tuple[QueueManager, Clock]:
    ledger = Ledger()
    for n in range(nodes):
        ledger.upsert_node(
            NodeInfo(f"node-{n}", tuple(GPUInfo(f"GPU-{n}-{i}", i, "A100", memory) for i in range(gpus)))
        )
    placer = Placer(ledger, {"binpack": make_policy("binpack")}, "binpack")
    clock = Clock()
    return QueueManager(ledger, placer, clock=clock, **kw), clock  # type: ignore[arg-type]


_seq = iter(range(1, 10**9))


def pod(
    name: str,
    *,
    count: int = 1,
    compute: int = 100,
    memory: int | None = None,
    priority: int = 0,
    namespace: str = "team-a",
    queue: str | None = None,
    created: float | None = None,
) -> PodEntry:
    request = PodRequest(
        uid=f"uid-{name}",
        namespace=namespace,
        name=name,
        containers=(ContainerRequest("main", 0, count, compute, memory),),
        priority=priority,
        queue=queue,
    )
    return PodEntry(request=request, created=float(next(_seq)) if created is None else created, gated=True)


def queue(name: str, compute: int | None, **kw: object) -> QueueSpec:
    return QueueSpec(name=name, nominal=Limit(compute, kw.pop("memory", None)), namespaces=frozenset({name}), **kw)  # type: ignore[arg-type]


def admitted(result: object) -> list[str]:
    return [a.key.split("/")[1] for a in result.admitted]  # type: ignore[attr-defined]


def test_order_is_priority_then_creation() -> None:
    m, _ = make_manager(gpus=2)
    m.set_queue(queue("team-a", 1000))
    m.upsert_pod(pod("old-low", priority=0, created=1))
    m.upsert_pod(pod("new-high", priority=10, created=5))
    m.upsert_pod(pod("mid-low", priority=0, created=2))
    r = m.schedule()
    assert admitted(r) == ["new-high", "old-low"]
    assert "2nd in line" not in r.waiting["uid-mid-low"]  # it is the only one left: 1st
    assert r.waiting["uid-mid-low"].startswith("queue team-a: 1st in line; no capacity")


def test_quota_holds_then_releases() -> None:
    m, _ = make_manager(gpus=8)
    m.set_queue(queue("team-a", 400))
    for i in range(6):
        m.upsert_pod(pod(f"p{i}"))
    r = m.schedule()
    assert admitted(r) == ["p0", "p1", "p2", "p3"]
    assert r.waiting["uid-p4"] == "queue team-a: 1st in line; quota 400/400 compute in use, needs 100 more"
    assert "2nd in line" in r.waiting["uid-p5"]
    assert m.usage("team-a") == Resources(400, 4 * 40960)  # whole-memory slices charge the GPU's memory
    assert status.queue_status(m, "team-a")["computeSummary"] == "400/400"
    m.remove_pod("uid-p0")
    r = m.schedule()
    assert admitted(r) == ["p4"]
    assert status.queue_status(m, "team-a") | {} == {
        "pending": 1, "admitted": 4, "usage": {"compute": 400, "memoryMiB": 4 * 40960},
        "borrowed": {"compute": 0, "memoryMiB": 0}, "computeSummary": "400/400", "memorySummary": "163840/-",
        "sharePercent": 100, "fairSharePercent": 100,  # outside a cohort: of its own quota
    }  # fmt: skip


def test_memory_quota_and_fractional_units() -> None:
    m, _ = make_manager(gpus=2)
    m.set_queue(queue("team-a", 1000, memory=10000))
    m.upsert_pod(pod("a", compute=30, memory=6000))
    m.upsert_pod(pod("b", compute=30, memory=6000))
    r = m.schedule()
    assert admitted(r) == ["a"]
    assert "quota 6000/10000 MiB memory in use, needs 6000 MiB more" in r.waiting["uid-b"]
    assert m.usage("team-a") == Resources(30, 6000)


def test_strict_fifo_blocks_behind_head() -> None:
    m, _ = make_manager(gpus=2)
    m.set_queue(queue("team-a", 1000, strategy=Strategy.STRICT_FIFO))
    m.upsert_pod(pod("big", count=4))  # needs 4 GPUs; the node has 2
    m.upsert_pod(pod("small", compute=10, memory=100))
    r = m.schedule()
    assert admitted(r) == []
    assert "behind team-a/big" in r.waiting["uid-small"]


def test_best_effort_fifo_lets_smaller_pods_pass_a_capacity_blocked_head() -> None:
    m, _ = make_manager(gpus=2)
    m.set_queue(queue("team-a", 1000))
    m.upsert_pod(pod("big", count=4))
    m.upsert_pod(pod("small", compute=10, memory=100))
    m.upsert_pod(pod("bigger", count=5))
    r = m.schedule()
    assert admitted(r) == ["small"]
    assert "behind team-a/big" in r.waiting["uid-bigger"]  # not smaller than the head: waits


def test_best_effort_fifo_keeps_the_heads_quota() -> None:
    m, _ = make_manager(gpus=2)
    m.set_queue(queue("team-a", 300))
    m.upsert_pod(pod("head", count=3))  # quota ok (300), capacity not (2 GPUs)
    m.upsert_pod(pod("small", compute=10, memory=100))
    r = m.schedule()
    # the head needs the whole 300 of quota: admitting "small" would delay it
    assert admitted(r) == []
    assert "behind team-a/head" in r.waiting["uid-small"]


def test_quota_blocked_head_blocks_best_effort_queue() -> None:
    m, _ = make_manager(gpus=4)
    m.set_queue(queue("team-a", 100))
    m.upsert_pod(pod("first"))
    m.upsert_pod(pod("head", count=1))
    m.upsert_pod(pod("small", compute=10, memory=100))
    r = m.schedule()
    assert admitted(r) == ["first"]
    assert "behind team-a/head" in r.waiting["uid-small"]


def test_borrowing_within_cohort_and_limit() -> None:
    m, _ = make_manager(gpus=8)
    m.set_queue(queue("team-a", 200, cohort="research", borrowing_limit=Limit(compute=300)))
    m.set_queue(queue("team-b", 600, cohort="research"))
    for i in range(7):
        m.upsert_pod(pod(f"a{i}"))
    r = m.schedule()
    assert admitted(r) == ["a0", "a1", "a2", "a3", "a4"]  # 200 nominal + 300 borrowed
    assert "borrowing limit 300 reached" in r.waiting["uid-a5"]
    assert m.borrowed("team-a") == Resources(300, 0)
    assert status.queue_status(m, "team-a")["borrowed"] == {"compute": 300, "memoryMiB": 0}


def test_borrowing_bounded_by_cohort_idle_quota() -> None:
    m, _ = make_manager(gpus=8)
    m.set_queue(queue("team-a", 200, cohort="research"))
    m.set_queue(queue("team-b", 300, cohort="research"))
    m.upsert_pod(pod("b0", namespace="team-b", count=2))
    for i in range(5):
        m.upsert_pod(pod(f"a{i}"))
    r = m.schedule()
    assert sorted(admitted(r)) == ["a0", "a1", "a2", "b0"]  # cohort 500: b uses 200, a gets 300
    assert "cohort research has 500/500 in use" in r.waiting["uid-a3"]


def test_no_borrowing_without_cohort() -> None:
    m, _ = make_manager(gpus=8)
    m.set_queue(queue("team-a", 100))
    m.set_queue(queue("team-b", 700))
    m.upsert_pod(pod("a0"))
    m.upsert_pod(pod("a1"))
    assert admitted(m.schedule()) == ["a0"]


def test_capacity_needs_reservations() -> None:
    m, _ = make_manager(gpus=2)
    m.set_queue(queue("team-a", 1000))
    m.upsert_pod(pod("a", compute=60, memory=100))
    m.upsert_pod(pod("b", compute=60, memory=100))
    m.upsert_pod(pod("c", compute=60, memory=100))
    r = m.schedule()
    assert admitted(r) == ["a", "b"]
    holding = m.ledger.holding("uid-a")
    assert holding is not None and holding.kind is HoldingKind.RESERVED
    assert "60% compute" in r.waiting["uid-c"]


def test_queue_resolution() -> None:
    m, _ = make_manager(require_queue=True)
    m.set_queue(queue("team-a", 100))
    m.set_queue(QueueSpec("labelled", Limit(100), namespace_selector=LabelSelector((("tier", "gold"),))))
    m.set_namespace("ns-gold", {"tier": "gold"})
    assert m.resolve_queue("team-a", None) == ("team-a", None)
    assert m.resolve_queue("ns-gold", None) == ("labelled", None)
    name, why = m.resolve_queue("other", None)
    assert name is None and "no GPUQueue serves namespace other" in str(why)
    name, why = m.resolve_queue("team-a", "nope")
    assert name is None and "GPUQueue nope" in str(why)
    m.upsert_pod(pod("lost", namespace="other"))
    assert "no GPUQueue serves namespace other" in m.schedule().waiting["uid-lost"]


def test_a_pod_may_not_name_a_queue_that_does_not_serve_its_namespace() -> None:
    """Issue 11 finding 3: a pod in team-b naming team-a's queue was admitted against team-a's quota."""
    m, _ = make_manager()
    m.set_queue(queue("team-a", 100))
    m.set_queue(QueueSpec("labelled", Limit(100), namespace_selector=LabelSelector((("tier", "gold"),))))
    m.set_namespace("ns-gold", {"tier": "gold"})
    name, why = m.resolve_queue("ns-gold", "team-a")
    assert name is None
    assert "GPUQueue team-a serves namespaces team-a, not namespace ns-gold" in str(why)
    assert m.membership_problem("ns-gold", "labelled") is None
    assert m.membership_problem("team-a", "nope") is None  # a missing queue is reported when resolving
    m.upsert_pod(pod("thief", namespace="team-b", queue="team-a"))
    r = m.schedule()
    assert admitted(r) == []
    assert "GPUQueue team-a serves namespaces team-a, not namespace team-b" in r.waiting["uid-thief"]
    assert m.usage("team-a") == Resources()
    # a thief that bypassed the webhook entirely (never gated) is not charged to team-a either
    ungated = pod("ungated", namespace="team-b", queue="team-a")
    ungated.gated = False
    m.upsert_pod(ungated)
    assert m.usage("team-a") == Resources()
    assert m.pods["uid-ungated"].queue is None


def test_a_queue_without_members_serves_no_namespace_and_empty_selector_serves_all() -> None:
    m, _ = make_manager()
    m.set_queue(QueueSpec("closed", Limit(100)))
    assert m.resolve_queue("team-a", "closed")[0] is None
    assert "serves no namespace" in str(m.resolve_queue("team-a", "closed")[1])
    assert m.resolve_queue("team-a", None) == (IMPLICIT_QUEUE, None)
    open_spec = queue_spec_from_object(
        {"metadata": {"name": "open"}, "spec": {"namespaceSelector": {}, "nominalQuota": {"compute": 100}}}
    )
    m.set_queue(open_spec)
    assert m.resolve_queue("team-a", "open") == ("open", None)
    assert m.resolve_queue("team-a", None) == ("open", None)
    # a namespace list, then a label selector, win over the catch-all `{}` whatever the names
    m.set_queue(QueueSpec("b-gold", Limit(100), namespace_selector=LabelSelector((("tier", "gold"),))))
    m.set_namespace("ns-gold", {"tier": "gold"})
    assert m.resolve_queue("ns-gold", None) == ("b-gold", None)
    m.set_queue(QueueSpec("c-list", Limit(100), namespaces=frozenset({"ns-gold"})))
    assert m.resolve_queue("ns-gold", None) == ("c-list", None)


def test_re_annotating_an_admitted_pod_does_not_move_its_charge() -> None:
    """Issue 11 finding 3: editing gpupool.io/queue on a bound pod moved its charge to another queue."""
    m, _ = make_manager()
    m.set_queue(queue("team-a", 400))
    m.set_queue(QueueSpec("shared", Limit(400), namespace_selector=LabelSelector()))
    m.upsert_pod(pod("a0", compute=100))
    assert admitted(m.schedule()) == ["a0"]
    assert m.usage("team-a") == Resources(100, 40960)
    edited = pod("a0", compute=100, queue="shared")
    edited.gated = False
    m.upsert_pod(edited)
    assert m.pods["uid-a0"].queue == "team-a"
    assert m.usage("team-a") == Resources(100, 40960) and m.usage("shared") == Resources()


def test_reserved_nodes_serve_only_their_queue() -> None:
    """Issue 11 finding 3: nodes selected by a queue were not reserved; now `reserveNodes` keeps others off."""
    m, _ = make_manager(nodes=2, gpus=1)
    m.set_node_labels("node-0", {"tenant": "a"})
    m.set_node_labels("node-1", {"tenant": "b"})
    m.set_queue(queue("team-a", 1000, node_selector=(("tenant", "a"),), reserve_nodes=True))
    m.set_queue(queue("team-b", 1000))
    m.upsert_pod(pod("b0", namespace="team-b"))
    m.upsert_pod(pod("b1", namespace="team-b"))
    m.upsert_pod(pod("free", namespace="elsewhere"))
    m.upsert_pod(pod("a0"))
    r = m.schedule()
    assert sorted(admitted(r)) == ["a0", "b0"]
    assert {a.key: a.node for a in r.admitted} == {"team-a/a0": "node-0", "team-b/b0": "node-1"}
    assert "reserved for the pods of GPUQueue team-a" in r.waiting["uid-b1"]
    assert "reserved for the pods of GPUQueue team-a" in r.waiting["uid-free"]


def test_a_shape_that_failed_for_another_queue_is_planned_again_for_the_owner_of_reserved_nodes() -> None:
    m, _ = make_manager(nodes=2, gpus=1)
    m.set_node_labels("node-0", {"tenant": "a"})
    m.set_queue(queue("team-a", 1000, node_selector=(("tenant", "a"),), reserve_nodes=True))
    m.set_queue(queue("team-b", 1000, node_selector=(("tenant", "a"),)))  # same nodes, no reservation
    m.upsert_pod(pod("b0", namespace="team-b", priority=1))
    m.upsert_pod(pod("a0"))
    r = m.schedule()
    assert admitted(r) == ["a0"]
    assert "reserved for the pods of GPUQueue team-a" in r.waiting["uid-b0"]


def test_implicit_queue_without_require_queue() -> None:
    m, _ = make_manager()
    m.upsert_pod(pod("free", namespace="anywhere"))
    r = m.schedule()
    assert admitted(r) == ["free"]
    assert r.admitted[0].queue == IMPLICIT_QUEUE


def test_node_selector_confines_queue() -> None:
    m, _ = make_manager(nodes=2, gpus=1)
    m.set_node_labels("node-0", {"tenant": "a"})
    m.set_node_labels("node-1", {"tenant": "b"})
    m.set_queue(queue("team-a", 1000, node_selector=(("tenant", "a"),)))
    m.upsert_pod(pod("a0"))
    m.upsert_pod(pod("a1"))
    r = m.schedule()
    assert admitted(r) == ["a0"]
    assert r.admitted[0].node == "node-0"
    assert "no capacity on 1 node(s)" in r.waiting["uid-a1"]


def test_assignment_replaces_reservation_and_ttl_releases_unbound() -> None:
    m, clock = make_manager(gpus=2, reservation_ttl=60)
    m.set_queue(queue("team-a", 1000))
    m.upsert_pod(pod("a"))
    m.upsert_pod(pod("b"))
    r = m.schedule()
    assert admitted(r) == ["a", "b"]
    # pod a binds: its assignment replaces the reservation
    reserved = m.ledger.holding("uid-a")
    assert reserved is not None
    from dataclasses import replace

    entry = pod("a", created=m.pods["uid-a"].created)
    entry.gated = False
    entry.assigned = replace(reserved, kind=HoldingKind.ASSIGNED)
    m.upsert_pod(entry)
    holding = m.ledger.holding("uid-a")
    assert holding is not None and holding.kind is HoldingKind.ASSIGNED
    assert m.usage("team-a").compute == 200
    clock.now += 61
    r = m.schedule()
    assert r.expired_reservations == ["uid-b"]
    assert m.ledger.holding("uid-b") is None
    assert m.usage("team-a").compute == 200  # still admitted and charged


def test_restart_rebuild_counts_ungated_pods() -> None:
    m, _ = make_manager(gpus=2)
    m.set_queue(queue("team-a", 100))
    entry = pod("running")
    entry.gated = False
    m.upsert_pod(entry)
    assert m.pods["uid-running"].state is State.ADMITTED
    assert m.usage("team-a").compute == 100
    m.upsert_pod(pod("next"))
    assert admitted(m.schedule()) == []


def test_queue_spec_from_object() -> None:
    spec = queue_spec_from_object(
        {
            "metadata": {"name": "team-a"},
            "spec": {
                "namespaces": ["a"],
                "nominalQuota": {"compute": 400, "memoryMiB": 81920},
                "borrowingLimit": {"compute": 100},
                "cohort": "research",
                "nodeSelector": {"tenant": "a"},
                "queueingStrategy": "StrictFIFO",
                "preemption": {"withinQueue": "Never", "reclaimBorrowed": False},
            },
        }
    )
    assert spec.nominal == Limit(400, 81920)
    assert spec.borrowing_limit == Limit(100, None)
    assert spec.strategy is Strategy.STRICT_FIFO and not spec.reclaim_borrowed
    assert spec.node_selector == (("tenant", "a"),)
    with pytest.raises(GpupoolError, match=r"nominalQuota\.compute"):
        queue_spec_from_object({"metadata": {"name": "x"}, "spec": {"nominalQuota": {"compute": -1}}})
    with pytest.raises(GpupoolError, match=r"LIFO"):
        queue_spec_from_object({"metadata": {"name": "x"}, "spec": {"queueingStrategy": "LIFO"}})
    assert not spec.reserve_nodes and spec.namespace_selector is None
    reserving = queue_spec_from_object(
        {"metadata": {"name": "r"}, "spec": {"nodeSelector": {"t": "a"}, "reserveNodes": True, "namespaceSelector": {}}}
    )
    assert reserving.reserve_nodes and reserving.namespace_selector == LabelSelector()
    with pytest.raises(GpupoolError, match=r"spec\.reserveNodes: .*set a nodeSelector"):
        queue_spec_from_object({"metadata": {"name": "x"}, "spec": {"reserveNodes": True}})
    with pytest.raises(GpupoolError, match=r"spec\.reserveNodes: must be true or false"):
        queue_spec_from_object({"metadata": {"name": "x"}, "spec": {"reserveNodes": "yes", "nodeSelector": {"t": "a"}}})
    with pytest.raises(GpupoolError, match=r"spec\.namespaceSelector"):
        queue_spec_from_object({"metadata": {"name": "x"}, "spec": {"namespaceSelector": ["a"]}})


def test_cross_queue_priority_order() -> None:
    m, _ = make_manager(gpus=1)
    m.set_queue(queue("team-a", 1000))
    m.set_queue(queue("team-b", 1000))
    m.upsert_pod(pod("a-low", priority=1, created=1))
    m.upsert_pod(pod("b-high", namespace="team-b", priority=5, created=2))
    assert admitted(m.schedule()) == ["b-high"]


def test_the_largest_gpu_memory_follows_the_inventory_not_the_binds() -> None:
    """Memory units of pods asking a fraction of a GPU's memory use the pool's largest GPU: computed again when a
    node or GPU changes, not after every bind (it walked every GPU of the pool, 40,000 at 5,000 nodes, once per
    admission cycle of a burst: issue 16)."""
    m, _ = make_manager(nodes=2, gpus=2, memory=40960)
    ledger = m.ledger
    assert m._largest_gpu_memory() == 40960
    walks = 0
    gpus_of = ledger.gpus_of

    def counted(name: str):  # type: ignore[no-untyped-def]
        nonlocal walks
        walks += 1
        return gpus_of(name)

    ledger.gpus_of = counted  # type: ignore[method-assign]
    m.set_queue(queue("team-a", 1000))
    generation = ledger.generation
    for i in range(3):
        m.upsert_pod(pod(f"p{i}", compute=30, memory=4096))
        assert admitted(m.schedule()) == [f"p{i}"]  # a reservation held: the ledger changed
    assert ledger.generation > generation
    walks = 0
    assert m._largest_gpu_memory() == 40960 and walks == 0
    ledger.upsert_node(NodeInfo("node-2", (GPUInfo("GPU-2-0", 0, "H200", 143771),)))
    assert m._largest_gpu_memory() == 143771 and walks == 3  # every node's GPUs read once
    assert m._largest_gpu_memory() == 143771 and walks == 3
    ledger.remove_node("node-2")
    assert m._largest_gpu_memory() == 40960
    ledger.upsert_node(NodeInfo("node-0", tuple(GPUInfo(f"GPU-0-{i}", i, "A100", 40960) for i in range(2))))
    assert m._largest_gpu_memory() == 40960  # the same inventory again: no change at all


def test_queue_statuses_counted_in_one_pass_equal_each_queue_counted_alone() -> None:
    """`status.member_counts` (one pass over the pods for every queue) gives each queue's pending and admitted
    pods as counting that queue's members alone does, the implicit queue and a queue with no pod included."""
    m, _ = make_manager(nodes=1, gpus=2)
    for name, compute in (("team-a", 150), ("team-b", 1000), ("team-c", 100)):
        m.set_queue(queue(name, compute))
    for i in range(4):
        m.upsert_pod(pod(f"a{i}", compute=50, namespace="team-a"))
        m.upsert_pod(pod(f"b{i}", compute=100, namespace="team-b"))
    m.upsert_pod(pod("loose", compute=10, namespace="elsewhere"))
    m.schedule()
    counts = status.member_counts(m)
    together = status.queue_statuses(m)
    shares = m.shares()
    for name in ("team-a", "team-b", "team-c"):
        assert together[name] == status.queue_status(m, name, shares)
        members = [e for e in m.pods.values() if e.queue == name]  # counted here, apart from member_counts
        admitted = sum(1 for e in members if e.state is State.ADMITTED)
        assert (together[name]["admitted"], together[name]["pending"]) == (admitted, len(members) - admitted)
    assert together["team-c"]["pending"] == together["team-c"]["admitted"] == 0
    for name in ("team-a", "team-b"):
        row = together[name]
        assert row["admitted"] + row["pending"] == 4 and row["admitted"] >= 1 and row["pending"] >= 1
    assert status.queue_status(m, IMPLICIT_QUEUE, {}, counts) == status.queue_status(m, IMPLICIT_QUEUE, {})
