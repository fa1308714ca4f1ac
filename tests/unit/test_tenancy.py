"""Tenancy rules (gpupool.tenancy): queue membership in words, and reserved nodes in placement."""

from __future__ import annotations

from gpupool import tenancy
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.ledger import Ledger
from gpupool.placement import NoFit, Placer
from gpupool.policies import make_policy
from gpupool.queues import LabelSelector, QueueSpec
from gpupool.quota import Limit
from gpupool.request import ContainerRequest, Locality, PodRequest


def test_members_text_names_what_the_queue_serves() -> None:
    listed = QueueSpec("a", Limit(1), namespaces=frozenset({"x", "w"}))
    assert tenancy.members_text(listed) == "namespaces w, x"
    labelled = QueueSpec("b", Limit(1), namespace_selector=LabelSelector((("tier", "gold"),), (("env", "In", ("p",)),)))
    assert tenancy.members_text(labelled) == "namespaces labelled tier=gold, env In (p)"
    assert "every namespace" in tenancy.members_text(QueueSpec("c", Limit(1), namespace_selector=LabelSelector()))
    assert "no namespace" in tenancy.members_text(QueueSpec("d", Limit(1)))
    problem = tenancy.membership_problem(listed, "team-b", {})
    assert problem is not None and problem.startswith("GPUQueue a serves namespaces w, x, not namespace team-b")
    assert tenancy.membership_problem(labelled, "n", {"tier": "gold", "env": "p"}) is None


def reserving(name: str, **selector: str) -> QueueSpec:
    return QueueSpec(name, Limit(1000), node_selector=tuple(sorted(selector.items())), reserve_nodes=True)


def test_reservations_follow_queues_and_labels() -> None:
    r = tenancy.Reservations()
    assert not r and r.allows("n0", None)
    r.set_node_labels("n0", {"t": "a"})
    r.set_node_labels("n1", {"t": "a", "gpu": "big"})
    r.set_queue(reserving("qa", t="a"))
    r.set_queue(reserving("qbig", gpu="big"))
    r.set_queue(QueueSpec("qnot", Limit(1), node_selector=(("t", "a"),)))  # selects, does not reserve
    assert r.owners("n0") == {"qa"} and r.owners("n1") == {"qa", "qbig"}
    assert r.allows("n1", "qbig") and not r.allows("n0", "qbig") and not r.allows("n0", None)
    assert not r.allows("n0", "qnot")
    version = r.version
    r.set_node_labels("n0", {"t": "b"})
    assert r.version > version and r.allows("n0", None)
    r.remove_queue("qa")
    assert r.owners("n1") == {"qbig"}
    r.set_queue(QueueSpec("qbig", Limit(1), node_selector=(("gpu", "big"),)))  # no longer reserves
    assert not r and r.allows("n1", "anyone")


def pool() -> Placer:
    ledger = Ledger()
    ledger.upsert_node(NodeInfo("cpu-0", ()))
    for n in range(2):
        ledger.upsert_node(NodeInfo(f"gpu-{n}", tuple(GPUInfo(f"GPU-{n}{i}", i, "A100", 81920) for i in range(2))))
    placer = Placer(ledger, {"binpack": make_policy("binpack")}, "binpack")
    placer.reservations.set_node_labels("gpu-0", {"tenant": "a"})
    placer.reservations.set_queue(reserving("team-a", tenant="a"))
    return placer


def req(queue: str | None, count: int = 1, locality: Locality = Locality.LOCAL) -> PodRequest:
    return PodRequest("u", (ContainerRequest("c", 0, count, 50, 1024),), locality=locality, queue=queue)


def test_filter_and_plan_keep_other_queues_off_reserved_nodes() -> None:
    p = pool()
    for queue in (None, "team-b"):
        result = p.filter(req(queue), ["gpu-0", "gpu-1"])
        assert result.passing == ["gpu-1"]
        assert "reserved for the pods of GPUQueue team-a" in result.unresolvable["gpu-0"]
        assert not p.verdict(req(queue), "gpu-0").fits
        try:
            p.plan(req(queue), "gpu-0")
            raise AssertionError("planned on a reserved node")
        except NoFit as exc:
            assert "reserved" in exc.reason and not exc.resolvable
        best = p.best(req(queue))
        assert best is not None and best.node == "gpu-1"
    assert p.filter(req("team-a"), ["gpu-0", "gpu-1"]).passing == ["gpu-0", "gpu-1"]


def test_remote_slices_never_come_from_reserved_nodes() -> None:
    p = pool()
    plan = p.plan(req(None, count=2, locality=Locality.POOL), "cpu-0")
    assert plan.remote == 2 and {s.gpu for s in plan.slices} == {"GPU-10", "GPU-11"}
    # three slices need three distinct GPUs: only two are open to a pod of no queue
    assert not p.filter(req(None, count=3, locality=Locality.POOL), ["cpu-0"]).passing
    mine = p.plan(req("team-a", count=3, locality=Locality.POOL), "cpu-0")
    assert mine.remote == 3
