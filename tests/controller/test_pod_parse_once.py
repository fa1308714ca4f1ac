"""`Controller.on_pod` parses a pod and verifies its assignment once per change of what they read
(`resources.pod_request_key`), not on every watch event (issue 16: 9.2 % of the controller's busy time at 5,000
nodes, `parse_pod` + `pod_shape_errors` + the signature on every status update)."""

from __future__ import annotations

import copy
from typing import Any
from unittest import mock

import pytest

from controller.runtime import Controller
from controller.settings import ControllerSettings
from gpupool import assignment, objects, resources
from gpupool.assignment import KeySet
from gpupool.request import QoS
from tests.controller.test_runtime import KEY, FakeKube, bound, gpunode, make, pod
from tests.controller.test_trust import OTHER, Keys, signed_with


def counting() -> tuple[Any, Any]:
    return (mock.patch.object(resources, "parse_pod", wraps=resources.parse_pod),
            mock.patch.object(objects, "holding_from_pod", wraps=objects.holding_from_pod))  # fmt: skip


def test_status_events_of_a_bound_pod_are_not_parsed_or_verified_again() -> None:
    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    p = bound("run", "n1", 0)
    c.on_pod("ADDED", p)
    parse, verify = counting()
    with parse as parsed, verify as verified:
        for phase in ("Running", "Running", "Pending"):
            event = copy.deepcopy(p)
            event["status"] = {"phase": phase, "conditions": [{"type": "Ready", "status": "True"}]}
            event["metadata"]["labels"] = {"edited": phase}
            event["metadata"]["resourceVersion"] = phase
            c.on_pod("MODIFIED", event)
        assert parsed.call_count == 0 and verified.call_count == 0
    assert c.pods["uid-run"]["metadata"]["labels"] == {"edited": "Pending"}  # the cache holds the latest object
    assert c.ledger.holding("uid-run") is not None


@pytest.mark.parametrize("edit", ["qos", "queue", "limit", "gate", "assignment"])
def test_an_edit_of_what_the_parse_reads_is_seen(edit: str) -> None:
    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_gpunode("ADDED", gpunode("n2", gpus=2))
    p = pod("w") if edit != "assignment" else bound("w", "n1", 0)
    c.on_pod("ADDED", p)
    c.on_pod("MODIFIED", p)  # a cached read
    e = copy.deepcopy(p)
    if edit == "qos":
        e["metadata"]["annotations"][resources.QOS] = "best-effort"
    elif edit == "queue":
        e["metadata"]["annotations"][resources.QUEUE] = "team-b"
    elif edit == "limit":
        e["spec"]["containers"][0]["resources"]["limits"][resources.GPU] = "2"
    elif edit == "gate":
        e["spec"]["schedulingGates"] = []
    else:
        e = bound("w", "n2", 1)
    with counting()[0] as parsed:
        c.on_pod("MODIFIED", e)
        assert parsed.call_count == 1
    entry = c.manager.pods["uid-w"]
    if edit == "qos":
        assert entry.request.qos is QoS.BEST_EFFORT
    elif edit == "queue":
        assert c._parsed["uid-w"][1].queue == "team-b"
    elif edit == "limit":
        assert entry.request.containers[0].count == 2
    elif edit == "gate":
        assert not entry.gated
    else:
        assert entry.assigned is not None and entry.assigned.node == "n2"
        assert c.ledger.holding("uid-w") is not None and c.ledger.holding("uid-w").node == "n2"


def test_an_entry_per_live_pod_dropped_with_it() -> None:
    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    pods = [bound(f"b{g}", "n1", g) for g in range(2)] + [pod("w")]
    for p in pods:
        c.on_pod("ADDED", p)
    assert sorted(c._parsed) == sorted(c.pods)
    c.on_pod("DELETED", pods[0])
    done = copy.deepcopy(pods[1])
    done["status"]["phase"] = "Succeeded"
    c.on_pod("MODIFIED", done)
    assert sorted(c._parsed) == ["uid-w"] == sorted(c.pods)


def test_a_retired_signing_key_is_seen_at_once() -> None:
    """The verification is cached with the parse; a change of the keys reads every pod again at once: a running
    pod signed by a key that was retired is quarantined with no event of its own (it may never have one), its
    slices still held; a pod signed by a key still there stays trusted; the new keys' cache serves the next
    events."""
    keys = Keys(KeySet.of({assignment.LEGACY_KID: KEY, "k2": OTHER}, "k2"))
    c = Controller(ControllerSettings(leader_election=False), FakeKube(), keys)  # type: ignore[arg-type]
    c.ready = True
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    old = signed_with("old", "n1", 0, KeySet.of({"k2": OTHER}, "k2"))
    kept = bound("kept", "n1", 1)  # signed with KEY (the legacy id), which stays
    c.on_pod("ADDED", old)
    c.on_pod("ADDED", kept)
    assert not c.quarantined
    keys.keys = KeySet.single(KEY)  # k2 retired
    c.on_keys_changed()
    assert "k2" in c.quarantined["uid-old"] and "uid-kept" not in c.quarantined
    assert c.ledger.holding("uid-old") is not None and c.ledger.holding("uid-kept") is not None
    parse, verify = counting()
    with parse as parsed, verify as verified:
        c.on_pod("MODIFIED", kept)
        assert parsed.call_count == 0 and verified.call_count == 0
    keys.keys = KeySet.of({assignment.LEGACY_KID: KEY, "k2": OTHER}, "k2")  # k2 back: trusted again at once
    c.on_keys_changed()
    assert not c.quarantined


def test_the_request_key_changes_exactly_with_what_the_parse_reads() -> None:
    base = bound("k", "n1", 0)
    key = resources.pod_request_key(base)
    same = copy.deepcopy(base)
    same["status"] = {"phase": "Running", "conditions": [{"type": "Ready"}]}
    same["metadata"].update(labels={"a": "b"}, resourceVersion="9", ownerReferences=[{"kind": "Job"}])
    same["spec"].update(nodeName="elsewhere", nodeSelector={"x": "y"}, schedulerName="s")
    assert resources.pod_request_key(same) == key
    for path, value in [
        (("metadata", "annotations", resources.QOS), "best-effort"),
        (("spec", "priority"), 5),
        (("spec", "containers", 0, "resources", "limits", resources.GPU_COMPUTE), "50"),
        (("spec", "containers", 0, "env"), [{"name": "A"}]),
        (("spec", "schedulingGates"), [{"name": "x"}]),
        (("spec", "initContainers"), [{"name": "i", "resources": {"limits": {resources.GPU: "1"}}}]),
        (("metadata", "labels"), "not an object"),  # the shape check reads its type
        (("status", "phase"), 3),
    ]:
        other = copy.deepcopy(base)
        target: Any = other
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        assert resources.pod_request_key(other) != key, path
