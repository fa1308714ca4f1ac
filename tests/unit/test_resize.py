"""Resizing a running pod (gpupool/resize.py): the request format, the decision, and the ledger never over capacity."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from gpupool import resize as rz
from gpupool import resources
from gpupool.assignment import Assignment, SliceRecord
from gpupool.errors import InvalidRequest, OverAllocation
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.ledger import Holding, Ledger, PlannedSlice
from gpupool.placement import NoFit, Placer
from gpupool.policies import make_policy
from gpupool.queues import PodEntry, QueueManager, QueueSpec
from gpupool.quota import Limit, Resources
from gpupool.request import ContainerRequest, PodRequest, QoS

GIB = 1024


def ledger(memory: int = 16 * GIB) -> Ledger:
    out = Ledger()
    out.upsert_node(NodeInfo("n0", (GPUInfo("G0", 0, "A100", memory), GPUInfo("G1", 1, "A100", memory))))
    return out


def record(compute: int = 30, memory: int = 4 * GIB, gpu: str = "G0", slot: str = "gpu0-0") -> Assignment:
    return Assignment("uid-a", "n0", (SliceRecord(0, gpu, "n0", compute, memory, slot),), "2025-01-01T00:00:00Z")


def pod(request: dict[str, Any] | None = None, history: list[dict[str, Any]] | None = None,
        usage: str | None = None) -> dict[str, Any]:  # fmt: skip
    annotations: dict[str, str] = {}
    if request is not None:
        annotations[rz.REQUEST] = json.dumps(request)
    if history is not None:
        annotations[rz.STATUS] = json.dumps({"history": history})
    if usage is not None:
        annotations[rz.USAGE] = usage
    return {
        "metadata": {"name": "a", "namespace": "ns", "uid": "uid-a", "annotations": annotations},
        "spec": {"containers": [{"name": "side"}, {"name": "train", "resources": {"limits": {resources.GPU: "1"}}}]},
    }


def holding(a: Assignment, qos: QoS = QoS.GUARANTEED) -> Holding:
    return Holding(a.pod, a.node, a.slices, qos=qos)


def pending_for(a: Assignment, **req: Any) -> rz.Pending:
    p = rz.pending(pod({"seq": 1, "container": "train", **req}), tuple(a.slices))
    assert p is not None
    return p


# the container "train" is spec.containers[1]: the assignment's slice must name container 1
A = Assignment("uid-a", "n0", (SliceRecord(1, "G0", "n0", 30, 4 * GIB, "gpu0-0"),), "2025-01-01T00:00:00Z")


# --- the request ------------------------------------------------------------------------------------------------


def test_request_round_trips_and_leaving_a_value_out_keeps_it() -> None:
    r = rz.parse_request('{"seq":3,"container":"train","compute":60}')
    assert r == rz.ResizeRequest(3, "train", 60, None)
    assert rz.parse_request(r.to_annotation()) == r
    p = pending_for(A, compute=60)
    assert [(s.compute, s.memory_mib) for s in p.new] == [(60, 4 * GIB)]


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ('{"seq":1,"container":"train","compute":0}', ".compute", "from 1 to 100"),
        ('{"seq":1,"container":"train","compute":101}', ".compute", "from 1 to 100"),
        ('{"seq":1,"container":"train","compute":true}', ".compute", "whole number"),
        ('{"seq":1,"container":"train","memory":0}', ".memory", "MiB per slice"),
        ('{"seq":1,"container":"train","memory":99999999999}', ".memory", "MiB per slice"),
        ('{"seq":-1,"container":"train","memory":5}', ".seq", "from 0"),
        ('{"container":"train","memory":5}', ".seq", "missing"),
        ('{"seq":1,"container":"","memory":5}', ".container", "app container"),
        ('{"seq":1,"container":"train"}', "]", "asks for nothing"),
        ('{"seq":1,"container":"train","memory":5,"gpu":"G1"}', ".gpu", "unknown field"),
        ("not json", "]", "not JSON"),
        ("[1]", "]", "JSON object"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(text: str, field: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        rz.parse_request(text)
    assert any(e.field.startswith(f"metadata.annotations[{rz.REQUEST}]") and e.field.endswith(field)
               and words in e.message for e in exc.value.errors), exc.value.errors  # fmt: skip


def test_next_request_picks_the_only_container_with_slices_and_follows_the_history() -> None:
    p = pod({"seq": 4, "container": "train", "compute": 50}, [{"seq": 7, "state": "Applied", "message": "", "at": ""}])
    r = rz.next_request(p, None, 60, 8 * GIB)
    assert (r.seq, r.container, r.compute, r.memory_mib) == (8, "train", 60, 8 * GIB)
    with pytest.raises(InvalidRequest, match="--compute"):
        rz.next_request(p, None, 500, None)


# --- the decision -----------------------------------------------------------------------------------------------


def test_grow_with_room_holds_the_new_slices() -> None:
    led = ledger()
    led.hold(holding(A))
    p = pending_for(A, compute=60, memory=8 * GIB)
    assert p.growth == Resources(30, 4 * GIB) and not p.shrinks_memory
    held = rz.hold_envelope(led, holding(A), p.new)
    assert led.holding("uid-a") == held
    assert [(s.compute, s.memory_mib, s.slot) for s in held.slices] == [(60, 8 * GIB, "gpu0-0")]
    assert led.gpu_free("G0") == (40, 8 * GIB)


def test_grow_without_room_is_refused_and_changes_nothing() -> None:
    led = ledger()
    led.hold(holding(A))
    led.commit("uid-b", "n0", [PlannedSlice(0, False, "G0", 50, 10 * GIB)])
    before = led.snapshot()
    with pytest.raises(OverAllocation, match="GPU G0"):
        rz.hold_envelope(led, holding(A), pending_for(A, compute=60).new)
    with pytest.raises(OverAllocation, match="GPU G0"):
        rz.hold_envelope(led, holding(A), pending_for(A, memory=8 * GIB).new)
    assert led.snapshot() == before and led.holding("uid-a") == holding(A)


def test_a_guaranteed_slice_grows_only_where_the_total_stays_physical() -> None:
    led = Ledger(overcommit_compute_percent=200)
    led.upsert_node(NodeInfo("n0", (GPUInfo("G0", 0, "A100", 16 * GIB),)))
    led.hold(holding(A))
    led.commit("uid-be", "n0", [PlannedSlice(0, False, "G0", 60, GIB)], qos=QoS.BEST_EFFORT)
    with pytest.raises(OverAllocation, match="room for 40% / 15360 MiB besides this pod; asked 50%"):
        rz.hold_envelope(led, holding(A), pending_for(A, compute=50).new)
    rz.hold_envelope(led, holding(A), pending_for(A, compute=40).new)


def test_shrink_always_fits_and_holds_the_old_slices_until_the_assignment_is_written() -> None:
    led = ledger()
    led.hold(holding(A))
    led.commit("uid-b", "n0", [PlannedSlice(0, False, "G0", 70, 12 * GIB)])  # the GPU is full
    p = pending_for(A, compute=10, memory=GIB)
    assert p.growth == Resources(0, 0) and p.shrinks_memory
    assert rz.hold_envelope(led, holding(A), p.new) == holding(A)  # envelope = old: nothing freed yet
    led.release("uid-a")
    led.hold(holding(rz.reissued(A, p)))  # the watch brings the new assignment: it always fits
    assert led.gpu_free("G0") == (20, 3 * GIB)


def test_shrink_below_memory_in_use_is_refused_with_the_figures() -> None:
    usage = rz.usage_annotation(1, {"1": {"G0": 3000}}, "", 1.8e9)
    p = rz.pending(pod({"seq": 1, "container": "train", "memory": 2048}, usage=usage), A.slices)
    assert p is not None
    problem, _ = rz.usage_problem(p, rz.usage_of(pod(usage=usage)))
    assert problem is not None and "uses 3000 MiB of GPU G0" in problem and "at least 3000 MiB" in problem
    fine, _ = rz.usage_problem(pending_for(A, memory=3000), rz.usage_of(pod(usage=usage)))
    assert fine is None


def test_unknown_usage_lets_the_shrink_through_and_says_so() -> None:
    usage = rz.usage_annotation(1, None, "the node agent runs the none backend", 1.8e9)
    problem, note = rz.usage_problem(pending_for(A, memory=2048), rz.usage_of(pod(usage=usage)))
    assert problem is None and "memory in use unknown (the node agent runs the none backend)" in note


def test_pending_follows_the_history() -> None:
    request = {"seq": 2, "container": "train", "compute": 60}
    assert rz.pending(pod(request), A.slices) is not None
    approved = [{"seq": 2, "state": "Approved", "message": "", "at": ""}]
    p = rz.pending(pod(request, approved), A.slices)
    assert p is not None and p.approved
    assert rz.reserved_growth(pod(request, approved), A.slices) == Resources(30, 0)
    assert rz.pending(pod(request, [{"seq": 2, "state": "Applied", "message": "", "at": ""}]), A.slices) is None
    assert rz.pending(pod(request, [{"seq": 5, "state": "Refused", "message": "", "at": ""}]), A.slices) is None
    refused = rz.pending(pod({**request, "container": "nope"}), A.slices)
    assert refused is not None and refused.problem is not None and "no app container 'nope'" in refused.problem
    side = rz.pending(pod({**request, "container": "side"}), A.slices)
    assert side is not None and side.problem == "container 'side' holds no gpupool slices"
    unbound = rz.pending(pod(request), None)
    assert unbound is not None and unbound.problem is not None and "not bound" in unbound.problem


def test_status_replaces_approved_and_keeps_a_bounded_history() -> None:
    p = pod(history=[{"seq": 1, "state": "Approved", "message": "", "at": ""}])
    value = rz.status_annotation(p, rz.outcome(rz.ResizeRequest(1, "train", 60, None), rz.State.APPLIED, "ok", 0))
    assert [(o.seq, o.state) for o in rz.history_of(pod(history=json.loads(value)["history"]))] == [
        (1, rz.State.APPLIED)
    ]
    long = pod(history=[{"seq": i, "state": "Applied", "message": "", "at": ""} for i in range(20)])
    value = rz.status_annotation(long, rz.outcome(rz.ResizeRequest(20, "t", 1, None), rz.State.REFUSED, "no", 0))
    seqs = [o["seq"] for o in json.loads(value)["history"]]
    assert seqs == list(range(11, 21))


def test_describe_prints_the_pending_request_and_the_history() -> None:
    refused = {"seq": 1, "state": "Refused", "message": "quota", "at": "2025-01-01T00:00:00Z"}
    lines = rz.describe(pod({"seq": 2, "container": "train", "compute": 60}, [refused]))
    assert lines[0].startswith("resize #2 pending (60% for container 'train')")
    assert lines[-1] == "  #1 Refused at 2025-01-01T00:00:00Z: quota"


# --- quota: an approved growth is charged before it is applied --------------------------------------------------


def test_an_approved_growth_is_charged_to_the_queue() -> None:
    led = ledger()
    manager = QueueManager(led, Placer(led, {"binpack": make_policy("binpack")}, "binpack"))
    manager.set_queue(QueueSpec(name="q", nominal=Limit(100, None), namespaces=frozenset({"ns"})))
    request = PodRequest("uid-a", (ContainerRequest("train", 1, 1, 30, 4 * GIB),), "ns", "a", queue="q")
    entry = PodEntry(request, created=0.0, gated=False, assigned=holding(A), resize_growth=Resources(30, 4 * GIB))
    manager.upsert_pod(entry)
    assert manager.usage("q") == Resources(60, 8 * GIB)
    assert manager.quota_problem("q", Resources(41, 0)) is not None  # 60 + 41 > 100
    manager.upsert_pod(PodEntry(request, created=0.0, gated=False, assigned=holding(A)))  # refused or applied
    assert manager.usage("q") == Resources(30, 4 * GIB)


# --- a resize racing binds on the same GPU: the ledger never goes over capacity --------------------------------


@pytest.mark.parametrize("order", list(itertools.permutations(["grow", "bind-b", "bind-c"])))
def test_resize_racing_binds_never_over_capacity(order: tuple[str, ...]) -> None:
    """Each step is what the extender does under its lock: a resize's envelope, or a bind's plan + commit (the
    placer is offered only G0, whose room all three contend for). 30 + 40 more + 25 + 25 > 100: one loses."""
    led = Ledger()
    led.upsert_node(NodeInfo("n0", (GPUInfo("G0", 0, "A100", 16 * GIB),)))
    led.hold(holding(A))
    placer = Placer(led, {"binpack": make_policy("binpack")}, "binpack")
    won = {}
    for step in order:
        try:
            if step == "grow":
                rz.hold_envelope(led, holding(A), pending_for(A, compute=70, memory=10 * GIB).new)
            else:
                req = PodRequest(f"uid-{step}", (ContainerRequest("c", 0, 1, 25, 3 * GIB),), "ns", step)
                led.commit(req.uid, "n0", placer.plan(req, "n0").slices)
            won[step] = True
        except (OverAllocation, NoFit):
            won[step] = False
        g = led.gpu("G0")
        assert g.used_compute <= 100 and g.used_memory <= g.memory_mib
    assert sum(won.values()) == 2 and won[order[0]] and won[order[1]]


def test_two_containers_of_a_pod_on_one_gpu_are_counted_together() -> None:
    """Container 1 grows on G0, where container 0 of the same pod also holds a slice: the room is for both."""
    slices = (SliceRecord(0, "G0", "n0", 30, GIB, "gpu0-0"), SliceRecord(1, "G0", "n0", 30, GIB, "gpu0-1"))
    two = Assignment("uid-a", "n0", slices, "2025-01-01T00:00:00Z")
    led = Ledger(overcommit_compute_percent=200)
    led.upsert_node(NodeInfo("n0", (GPUInfo("G0", 0, "A100", 16 * GIB),)))
    led.hold(holding(two))
    led.commit("uid-be", "n0", [PlannedSlice(0, False, "G0", 20, GIB)], qos=QoS.BEST_EFFORT)
    p = rz.pending(pod({"seq": 1, "container": "train", "compute": 60}), two.slices)
    assert p is not None and p.problem is None
    with pytest.raises(OverAllocation, match=r"room for 80% .* asked 90%"):  # 30 + 60 + 20 > 100
        rz.hold_envelope(led, holding(two), p.new)
    assert led.holding("uid-a") == holding(two)


def test_a_gpu_the_agent_did_not_report_is_unknown_not_free() -> None:
    remote = Assignment("uid-a", "n0", (SliceRecord(1, "G9", "n9", 30, 4 * GIB, "remote-0"),), "2025-01-01T00:00:00Z")
    usage = rz.usage_of(pod(usage=rz.usage_annotation(1, {"1": {}}, "", 1.8e9)))
    problem, note = rz.usage_problem(pending_for(remote, memory=GIB), usage)
    assert problem is None and "memory in use on G9 unknown" in note
