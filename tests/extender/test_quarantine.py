"""Blast radius: one pod whose assignment cannot be trusted or no longer fits is quarantined.

Its claim stays counted as far as capacity allows, it is named in /readyz and a gauge, and scheduling
goes on for every other pod (issue 11, finding 2). On the old code the extender turned not ready and
every filter answered an error.
"""

from __future__ import annotations

import contextlib

import pytest

from gpupool import assignment, resources
from gpupool.assignment import SliceRecord
from tests.extender.conftest import (
    add_gpu_node,
    bind_body,
    create_pod,
    filter_body,
    pod,
    start_extender,
    wait_for,
)

PODS = "/api/v1/namespaces/default/pods"
GPU = "GPU-gpu-0-0"


@pytest.fixture
def ext(extender_factory):  # type: ignore[no-untyped-def]
    """Several same-size pods bind to one node with no kubelet taking their devices: identity rule off."""
    return extender_factory(identity_wait_seconds=0)


def _fits(ext, p: dict) -> bool:  # type: ignore[no-untyped-def]
    r = ext.post("filter", filter_body(p, ["gpu-0"])).json()
    assert not r.get("Error"), r  # never an error for everyone
    return r["NodeNames"] == ["gpu-0"]


def test_forged_assignment_is_quarantined_its_claim_held_and_scheduling_goes_on(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=1)
    good = create_pod(kube, pod("good", compute=30))
    assert ext.post("bind", bind_body(good, "gpu-0")).json() == {"Error": ""}
    # a pod bound to gpu-0 whose assignment is signed with another key (a forgery, or a key gpupool lost)
    claim = (SliceRecord(0, GPU, "gpu-0", 50, 4096, "gpu0-5"),)
    fake = assignment.Assignment("uid-evil", "gpu-0", claim, "2026-01-01T00:00:00Z").signed(b"not-the-key")
    evil = pod("evil", uid="uid-evil", compute=50, annotations={resources.ASSIGNMENT: fake.to_annotation()})
    evil["spec"]["nodeName"] = "gpu-0"
    create_pod(kube, evil)
    wait_for(lambda: "uid-evil" in ext.service.problems, 5, "quarantine")
    assert ext.service.ready
    ready = ext.http.get(ext.url + "/readyz")
    assert ready.status_code == 200, ready.text
    assert "signature" in ready.json()["problems"]["uid-evil"] and "default/evil" in ready.text
    text = ext.http.get(ext.url + "/metrics").text
    assert "gpupool_extender_quarantined_pods 1.0" in text
    assert "gpupool_extender_assignment_problems_total 1.0" in text
    # its claimed slice stays counted (a forged pod held nothing yet: its claim is held, unverified)
    held = ext.service.ledger.holding("uid-evil")
    assert held is not None and held.slices == claim
    assert ext.service.ledger.gpu(GPU).used_compute == 80
    # scheduling goes on for everyone else, around the quarantined slices
    assert _fits(ext, pod("small", compute=20))
    assert not _fits(ext, pod("large", compute=30))
    small = create_pod(kube, pod("small", compute=20))
    assert ext.post("bind", bind_body(small, "gpu-0")).json() == {"Error": ""}
    # a fresh extender (a restart) is ready at once and holds the same claim
    second = start_extender(kube, identity_wait_seconds=0)
    try:
        assert second.service.ready and "uid-evil" in second.service.problems
        # both ledgers are fed by watches (the first one's still delivering the bind of "small" under load: a CI
        # run once compared them mid-way), so they are compared once both settled, within a few seconds
        with contextlib.suppress(TimeoutError):  # the assertion below shows the difference
            wait_for(lambda: second.service.ledger_snapshot() == ext.service.ledger_snapshot(), 10, "same ledgers")
        assert second.service.ledger_snapshot() == ext.service.ledger_snapshot()
    finally:
        second.stop()
    kube.delete(f"{PODS}/evil")
    wait_for(lambda: not ext.service.problems, 5, "quarantine lifted once the pod is gone")
    assert ext.service.ledger.gpu(GPU).used_compute == 50
    assert "gpupool_extender_quarantined_pods 0.0" in ext.http.get(ext.url + "/metrics").text


def test_claim_beyond_capacity_is_held_as_far_as_it_fits_and_the_rest_reported(kube, ext):
    add_gpu_node(kube, "gpu-0", gpus=2)
    good = create_pod(kube, pod("good", compute=80))
    assert ext.post("bind", bind_body(good, "gpu-0")).json() == {"Error": ""}
    gpu_of_good = ext.service.ledger.holding(good["metadata"]["uid"]).slices[0].gpu
    other = "GPU-gpu-0-1" if gpu_of_good == GPU else GPU
    index = {GPU: 0, "GPU-gpu-0-1": 1}
    claim = (
        SliceRecord(0, gpu_of_good, "gpu-0", 50, 1024, f"gpu{index[gpu_of_good]}-3"),  # does not fit: 80 + 50
        SliceRecord(0, other, "gpu-0", 60, 1024, f"gpu{index[other]}-3"),  # fits
    )
    fake = assignment.Assignment("uid-greedy", "gpu-0", claim, "2026-01-01T00:00:00Z").signed(b"other")
    greedy = pod("greedy", uid="uid-greedy", count=2, annotations={resources.ASSIGNMENT: fake.to_annotation()})
    greedy["spec"]["nodeName"] = "gpu-0"
    create_pod(kube, greedy)
    wait_for(lambda: "uid-greedy" in ext.service.problems, 5, "quarantine")
    held = ext.service.ledger.holding("uid-greedy")
    assert held is not None and held.slices == claim[1:]
    assert ext.service.ledger.gpu(gpu_of_good).used_compute == 80  # never past capacity
    problem = ext.service.problems["uid-greedy"]
    assert "not held" in problem and f"{gpu_of_good} {claim[0].slot}" in problem
    assert ext.service.ready


def test_unbound_pod_with_forged_claim_holds_nothing(kube, ext):
    """An unbound pod runs nothing: its forged claim is quarantined but takes no capacity."""
    add_gpu_node(kube, "gpu-0", gpus=1)
    claim = (SliceRecord(0, GPU, "gpu-0", 100, 4096, "gpu0-0"),)
    fake = assignment.Assignment("uid-squat", "gpu-0", claim, "2026-01-01T00:00:00Z").signed(b"other")
    create_pod(kube, pod("squat", uid="uid-squat", annotations={resources.ASSIGNMENT: fake.to_annotation()}))
    wait_for(lambda: "uid-squat" in ext.service.problems, 5, "quarantine")
    assert ext.service.ledger.holding("uid-squat") is None
    assert _fits(ext, pod("x", compute=100))
    # unreadable text is quarantined the same way
    create_pod(kube, pod("junk", annotations={resources.ASSIGNMENT: "{not json"}))
    wait_for(lambda: "uid-default-junk" in ext.service.problems, 5, "junk quarantined")
    assert ext.service.ready and _fits(ext, pod("y", compute=100))


def test_qos_edited_to_guaranteed_after_overcommitted_bind_does_not_stop_scheduling(kube, extender_factory):
    """Finding 2: a tenant edits gpupool.io/qos of its bound best-effort pod to guaranteed (over-commit on)."""
    ext = extender_factory(overcommit_compute_percent=200, identity_wait_seconds=0)
    add_gpu_node(kube, "gpu-0", gpus=1)
    g = create_pod(kube, pod("g", compute=60))
    b = create_pod(kube, pod("b", compute=60, annotations={resources.QOS: "best-effort"}))
    for p in (g, b):
        assert ext.post("bind", bind_body(p, "gpu-0")).json() == {"Error": ""}
    kube.patch(f"{PODS}/b", {"metadata": {"annotations": {resources.QOS: "guaranteed"}}})
    uid = b["metadata"]["uid"]
    wait_for(lambda: uid in ext.service.problems, 5, "quarantine")
    assert "does not fit" in ext.service.problems[uid]
    assert ext.service.ready and ext.http.get(ext.url + "/readyz").status_code == 200
    assert ext.service.ledger.gpu(GPU).used_compute == 120  # its slice stays held (as it was bound)
    assert _fits(ext, pod("be", compute=50, annotations={resources.QOS: "best-effort"}))
    # a restart is ready and counts both slices (one of the two pods, in replay order, is held as best-effort
    # and quarantined: the signature does not cover the annotation; the admission webhook refuses the edit)
    second = extender_factory(overcommit_compute_percent=200, identity_wait_seconds=0)
    # after a restart the pod replayed second no longer fits as signed: the ledger quarantines it (it holds
    # nothing, its GPU takes no new slice: `Ledger.quarantine`), so the GPU is still never handed out twice
    assert second.service.ready and len(second.service.ledger.quarantined) == 1
    assert second.service.readiness()["quarantined"]
    assert not _fits(second, pod("late", compute=10))
