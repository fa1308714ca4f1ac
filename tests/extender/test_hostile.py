"""Issue 12: hostile objects and unlucky event orders against the extender's cache and verbs (no HTTP)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from gpupool import assignment, resources
from gpupool.assignment import Assignment, SliceRecord
from tests.extender.conftest import KEY, gpunode, node, pod
from tests.extender.hostile import RacyAPI, service

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


def assigned_pod(name: str, gpu: str = "GPU-n0-0", node_name: str = "n0", memory: int = 1024,
                 compute: int = 30, sig: str | None = None) -> dict[str, Any]:
    p = pod(name, compute=compute, memory=memory)
    uid = p["metadata"]["uid"]
    record = Assignment(uid, node_name, (SliceRecord(0, gpu, node_name, compute, memory, "gpu0-0"),),
                        "2026-12-01T00:00:00Z").signed(KEY)
    data = json.loads(record.to_annotation())
    if sig is not None:
        data["sig"] = sig
    p["metadata"]["annotations"] = {resources.ASSIGNMENT: json.dumps(data)}
    p["spec"]["nodeName"] = node_name
    p["status"]["phase"] = "Running"
    return p


@pytest.mark.parametrize(
    "text",
    [
        "non-ascii-sig",
        "[" * 50_000 + "]" * 50_000,
    ],
)
def test_an_unreadable_assignment_is_reported_per_pod_not_relisted_forever(text: str) -> None:
    """Issue 12 #4: TypeError / RecursionError escaped `on_pod_list`, so the reflector relisted in a loop
    and the extender said "still listing pods" naming no pod."""
    s = service()
    s.on_node_list([node("n0")])
    s.on_gpunode_list([gpunode("n0", gpus=1)])
    bad = assigned_pod("bad", sig="é" * 64) if text == "non-ascii-sig" else assigned_pod("bad")
    if text != "non-ascii-sig":
        bad["metadata"]["annotations"][resources.ASSIGNMENT] = text
    good = assigned_pod("good", memory=2048)
    good["metadata"]["annotations"][resources.ASSIGNMENT] = assignment.Assignment(
        good["metadata"]["uid"], "n0", (SliceRecord(0, "GPU-n0-0", "n0", 30, 2048, "gpu0-1"),),
        "2026-12-01T00:00:00Z").signed(KEY).to_annotation()
    s.on_pod_list([bad, good])
    state = s.readiness()
    assert state["synced"]["pods"] is True
    assert list(state["problems"]) == [bad["metadata"]["uid"]]
    assert "default/bad" in state["problems"][bad["metadata"]["uid"]]
    assert s.ledger.holding(good["metadata"]["uid"]) is not None
    s.on_pod_event("MODIFIED", bad)  # a watch event for it is reported again, never raised
    assert "default/bad" in s.readiness()["problems"][bad["metadata"]["uid"]]


def _bad_pods() -> list[tuple[dict[str, Any], str]]:
    def with_(path: str, value: Any) -> dict[str, Any]:
        p = pod("p")
        *parents, last = path.split(".")
        obj = p
        for part in parents:
            obj = obj[part][0] if part == "containers" else obj[part]
        obj[last] = value
        return p

    return [
        (with_("metadata", "x"), "metadata"),
        (with_("spec.containers", [None]), "spec.containers[0]"),
        (with_("metadata.annotations", {resources.QOS: 5}), "metadata.annotations[gpupool.io/qos]"),
        (with_("spec.containers.resources", "lots"), "spec.containers[0].resources"),
        (with_("spec.priority", "high"), "spec.priority"),
        (with_("spec", []), "spec"),
        (with_("metadata.uid", 12), "metadata.uid"),
    ]


@pytest.mark.parametrize("verb", ["filter", "prioritize", "preempt"])
@pytest.mark.parametrize(("bad", "field"), _bad_pods())
def test_wrong_typed_pods_get_400_naming_the_field_not_500(verb: str, bad: dict[str, Any], field: str) -> None:
    """Issue 12 #5: `metadata: "x"`, `containers: [null]`, a number annotation answered 500 with a traceback."""
    from fastapi.testclient import TestClient

    from extender.app import create_app

    s = service()
    s.on_node_list([node("n0")])
    s.on_gpunode_list([gpunode("n0", gpus=1)])
    s.on_pod_list([])
    body: dict[str, Any] = {"Pod": bad, "NodeNames": ["n0"]}
    if verb == "preempt":
        body = {"Pod": bad, "NodeNameToMetaVictims": {"n0": {"Pods": [{"UID": "v"}], "NumPDBViolations": 0}}}
    with TestClient(create_app(s)) as client:
        r = client.post(f"/{verb}", json=body)
    assert r.status_code == 400, r.text
    assert field in r.json()["Error"]


def test_wrong_typed_victims_and_node_items_are_400_or_ignored() -> None:
    from fastapi.testclient import TestClient

    from extender.app import create_app

    s = service()
    s.on_node_list([])
    s.on_gpunode_list([])
    s.on_pod_list([])
    with TestClient(create_app(s)) as client:
        r = client.post("/preempt", json={"Pod": pod("p"), "NodeNameToVictims": {"n0": {"Pods": [{"metadata": 7}]}}})
        assert r.status_code == 400 and "metadata" in r.json()["Error"]
        r = client.post("/filter", json={"Pod": pod("p"), "Nodes": {"items": [{"metadata": "x"}, None, 5]}})
        assert r.status_code == 200 and r.json()["Nodes"]["items"] == []


def _two_pods_on_one_gpu() -> list[dict[str, Any]]:
    pods = []
    for i, name in enumerate(("a", "b")):
        p = pod(name, compute=30, memory=6000)
        uid = p["metadata"]["uid"]
        record = Assignment(uid, "n0", (SliceRecord(0, "GPU-n0-0", "n0", 30, 6000, f"gpu0-{i}"),),
                            "2026-12-01T00:00:00Z").signed(KEY)
        p["metadata"]["annotations"] = {resources.ASSIGNMENT: record.to_annotation()}
        p["spec"]["nodeName"] = "n0"
        p["status"]["phase"] = "Running"
        pods.append(p)
    return pods


def _within_capacity(s: Any) -> bool:
    return all(g.used_memory <= g.memory_mib and g.used_compute <= 100
               for n in s.ledger.node_names() for g in s.ledger.gpus_of(n))


def test_a_gpu_that_shrinks_live_quarantines_the_excess_and_stays_ready() -> None:
    """Issue 12 #3, live: the GPUNode update re-held 12,000 MiB on an 8,192 MiB GPU."""
    s = service()
    s.on_node_list([node("n0")])
    s.on_gpunode_list([gpunode("n0", gpus=1, memory=16384)])
    s.on_pod_list(_two_pods_on_one_gpu())
    assert s.ready and s.ledger.gpu("GPU-n0-0").used_memory == 12000
    s.on_gpunode_event("MODIFIED", gpunode("n0", gpus=1, memory=8192))
    assert _within_capacity(s) and s.ready
    assert list(s.readiness()["quarantined"]) == ["default/b"]
    assert s.metrics.quarantined._value.get() == 1
    s.on_gpunode_event("MODIFIED", gpunode("n0", gpus=1, memory=16384))  # room again: held again
    assert s.readiness()["quarantined"] == {} and s.ledger.gpu("GPU-n0-0").used_memory == 12000


def test_a_restart_after_a_gpu_shrank_is_ready_with_the_excess_quarantined() -> None:
    """Issue 12 #3, restart: the rebuilt extender was not ready (the assignment that did not fit)."""
    s = service()
    s.on_node_list([node("n0")])
    s.on_gpunode_list([gpunode("n0", gpus=1, memory=8192)])
    a, b = _two_pods_on_one_gpu()
    s.on_pod_list([a, b])
    assert s.ready, s.readiness()
    assert _within_capacity(s) and list(s.readiness()["quarantined"]) == ["default/b"]
    s.on_pod_event("DELETED", a)  # a leaves: b fits now and is held
    assert s.readiness()["quarantined"] == {} and s.ledger.holding(b["metadata"]["uid"]) is not None


@pytest.mark.parametrize(("status", "spec"), [
    (True, {}),
    ({"gpus": True}, {}),
    ({"gpus": [{"uuid": "GPU-x", "index": 0, "memoryMiB": 8192}]}, {"disabledGPUs": [["GPU-x"]]}),
    ({"gpus": [{"uuid": "GPU-x", "index": 0, "memoryMiB": float("inf")}]}, {}),
    ({"gpus": [{"uuid": "GPU-x", "index": 0, "memoryMiB": -5}]}, {}),
])  # fmt: skip
def test_a_malformed_gpunode_is_a_named_problem_not_a_watch_crash(status: Any, spec: Any) -> None:
    """Found by tests/fuzz: GPUNode fields of the wrong type raised TypeError/AttributeError/OverflowError
    out of the GPUNode watch handler (or a negative memory entered the ledger)."""
    s = service()
    s.on_node_list([node("n0")])
    obj = {"metadata": {"name": "n0"}, "status": status, "spec": spec}
    s.on_gpunode_list([obj])
    s.on_gpunode_event("MODIFIED", obj)
    assert "GPUNode n0" in s.readiness()["gpunode_problems"]["n0"]
    assert not s.ledger.has_node("n0")


def _flap(s: Any, how: str) -> Callable[[], None]:
    """The watch events of an inventory flap on node n0, as they arrive while a bind is in flight."""
    def run() -> None:
        if how == "gpunode":
            s.on_gpunode_event("DELETED", gpunode("n0", gpus=1))
            s.on_gpunode_event("ADDED", gpunode("n0", gpus=1))
        elif how == "node":
            s.on_node_event("DELETED", node("n0"))
            s.on_node_event("ADDED", node("n0"))
        elif how == "gpu":
            s.on_gpunode_event("MODIFIED", gpunode("n0", gpus=0))
            s.on_gpunode_event("MODIFIED", gpunode("n0", gpus=1))
        else:  # a relist (after 410 Gone) that misses the GPUNode, then the next one that has it
            s.on_gpunode_list([])
            s.on_gpunode_list([gpunode("n0", gpus=1)])

    return run


@pytest.mark.parametrize("how", ["gpunode", "node", "gpu", "relist"])
def test_a_bind_racing_an_inventory_flap_keeps_its_holding(how: str) -> None:
    """Issue 12 #1: `_drop_from_pool` skipped the in-flight pod and the bind's success path never re-held
    it, so the next pod was bound to the same whole GPU; both carried valid signed assignments for it."""
    api = RacyAPI()
    s = service(api)
    s.on_node_list([node("n0")])
    s.on_gpunode_list([gpunode("n0", gpus=1)])
    s.on_pod_list([])
    first, second = pod("first", compute=100, memory=None), pod("second", compute=100, memory=None)
    for p in (first, second):
        api.add(p)
        s.on_pod_event("ADDED", p)
    api.during_bind = _flap(s, how)
    assert s.bind("first", "default", first["metadata"]["uid"], "n0") == ""
    held = s.ledger.holding(first["metadata"]["uid"])
    stored = assignment.verify(api.stored("default", "first")["metadata"]["annotations"][resources.ASSIGNMENT], KEY)
    assert held is not None and held.slices == stored.slices
    assert "no longer fits" in s.bind("second", "default", second["metadata"]["uid"], "n0")
    assert s.ledger.gpu("GPU-n0-0").used_compute == 100


def test_a_failed_bind_during_a_flap_holds_nothing() -> None:
    api = RacyAPI()
    s = service(api)
    s.on_node_list([node("n0")])
    s.on_gpunode_list([gpunode("n0", gpus=1)])
    s.on_pod_list([])
    p = pod("p", compute=100, memory=None)
    api.add(p)
    s.on_pod_event("ADDED", p)
    api.during_bind, api.fail_binding = _flap(s, "gpu"), True
    assert "Binding" in s.bind("p", "default", p["metadata"]["uid"], "n0")
    assert s.ledger.holding(p["metadata"]["uid"]) is None and s.ledger.gpu("GPU-n0-0").used_compute == 0
    assert s.readiness()["unplaced"] == [] and s.readiness()["quarantined"] == {}


def _one_node_service(gpus: int = 1) -> tuple[Any, RacyAPI]:
    api = RacyAPI()
    s = service(api)
    s.on_node_list([node("n0")])
    s.on_gpunode_list([gpunode("n0", gpus=gpus)])
    s.on_pod_list([])
    return s, api


def _add(s: Any, api: RacyAPI, p: dict[str, Any]) -> dict[str, Any]:
    api.add(p)
    s.on_pod_event("ADDED", p)
    return p


@pytest.mark.parametrize("end", ["DELETED", "Succeeded"])
def test_a_pod_that_ends_while_its_binding_is_in_flight_holds_nothing(end: str) -> None:
    """Found by the interleaving harness: the bind's success path put a pod deleted meanwhile back into the
    cache with its slices held (held forever), or kept the slices of a pod that finished meanwhile."""
    s, api = _one_node_service()
    p = _add(s, api, pod("p", compute=100, memory=None))
    ended = copy.deepcopy(p)
    ended["status"]["phase"] = "Succeeded"
    api.during_bind = lambda: s.on_pod_event(end if end == "DELETED" else "MODIFIED", ended)
    assert s.bind("p", "default", p["metadata"]["uid"], "n0") == ""
    assert s.ledger.holding(p["metadata"]["uid"]) is None
    assert s.ledger.gpu("GPU-n0-0").used_compute == 0
    assert (p["metadata"]["uid"] in s.pods) is (end != "DELETED")


def test_a_gpu_leaving_status_does_not_free_the_other_gpus_of_its_pods() -> None:
    """Found by the interleaving harness: a GPU gone from status.gpus released the whole holding of the pods
    using it, so their slices on the GPUs that remained were handed out again (double-booked)."""
    s, api = _one_node_service(gpus=2)
    a = _add(s, api, pod("a", count=2, compute=100, memory=None))
    assert s.bind("a", "default", a["metadata"]["uid"], "n0") == ""
    s.on_gpunode_event("MODIFIED", gpunode("n0", gpus=1))  # GPU 1 leaves; a still runs on GPU 0
    assert a["metadata"]["uid"] in s.readiness()["unplaced"]
    b = _add(s, api, pod("b", compute=10, memory=100))
    assert s.filter(b, ["n0"]).passing == []
    assert "no longer fits" in s.bind("b", "default", b["metadata"]["uid"], "n0")
    s.on_gpunode_event("MODIFIED", gpunode("n0", gpus=2))  # back: a is held again, nothing else is
    assert s.ledger.holding(a["metadata"]["uid"]) is not None and s.readiness()["unplaced"] == []
