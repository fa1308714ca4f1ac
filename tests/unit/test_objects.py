"""Pod-object helpers with one home in gpupool/objects.py and gpupool/slots.py: gate, assignment,
nomination annotation, and which slot may carry which slice."""

from __future__ import annotations

from typing import Any

import pytest

from gpupool import objects, resources, slots
from gpupool.assignment import Assignment, SliceRecord
from gpupool.errors import AssignmentError, GpupoolError
from gpupool.ledger import HoldingKind
from gpupool.request import QoS

KEY = b"0123456789abcdef"


def pod(uid: str = "uid-1", *, annotations: dict[str, str] | None = None, gates: Any = None,
        phase: str = "Pending") -> dict[str, Any]:  # fmt: skip
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": uid, "annotations": annotations or {}},
        "spec": {"containers": [{"name": "c"}], "schedulingGates": gates},
        "status": {"phase": phase},
    }


def signed(owner: str = "uid-1", key: bytes = KEY) -> str:
    record = Assignment(owner, "n1", (SliceRecord(0, "GPU-a", "n1", 30, 4096, "gpu0-0"),), "2025-01-01T00:00:00Z")
    return record.signed(key).to_annotation()


@pytest.mark.parametrize(
    ("gates", "expected"),
    [
        ([{"name": resources.ADMISSION_GATE}], True),
        ([{"name": "other"}, {"name": resources.ADMISSION_GATE}], True),
        ([{"name": "other"}], False),
        ([], False),
        (None, False),
        (["not-an-object"], False),
    ],
)
def test_pod_gated(gates: Any, expected: bool) -> None:
    assert objects.pod_gated(pod(gates=gates)) is expected
    assert objects.pod_gated({}) is False


def test_assignment_verified_and_unverified() -> None:
    text = signed()
    assert objects.pod_assignment(pod(), KEY) is None
    verified = objects.pod_assignment(pod(annotations={resources.ASSIGNMENT: text}), KEY)
    assert verified is not None and verified.node == "n1"
    forged = pod(annotations={resources.ASSIGNMENT: signed(key=b"another-key-0000")})
    with pytest.raises(AssignmentError, match="wrong signature"):
        objects.pod_assignment(forged, KEY)
    unverified = objects.pod_assignment(forged, None)  # read-only tools without the key
    assert unverified is not None and unverified.slices == verified.slices


@pytest.mark.parametrize("key", [KEY, None])
def test_assignment_of_another_pod_is_refused_with_or_without_the_key(key: bytes | None) -> None:
    other = pod(annotations={resources.ASSIGNMENT: signed(owner="uid-2")})
    with pytest.raises(AssignmentError, match="ns/p carries the assignment of pod uid-2"):
        objects.pod_assignment(other, key)
    with pytest.raises(AssignmentError):
        objects.holding_from_pod(other, key)


def test_holding_from_pod() -> None:
    annotations = {resources.ASSIGNMENT: signed(), resources.QOS: "best-effort"}
    holding = objects.holding_from_pod(pod(annotations=annotations), KEY)
    assert holding is not None
    assert (holding.pod, holding.node, holding.kind, holding.qos) == ("uid-1", "n1", HoldingKind.ASSIGNED,
                                                                      QoS.BEST_EFFORT)  # fmt: skip
    assert objects.holding_from_pod(pod(annotations=annotations, phase="Succeeded"), KEY) is None
    assert objects.holding_from_pod(pod(), KEY) is None


def test_nomination_round_trip() -> None:
    text = objects.nomination_annotation("n1", 2e9)
    assert text == '{"node":"n1","expires":"2033-05-18T03:33:20Z"}'
    assert objects.parse_nomination(text) == ("n1", 2e9)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("not json", "not JSON"),
        ("[]", "expected"),
        ('{"expires":"2033-05-18T03:33:20Z"}', ".node"),
        ('{"node":"n1","expires":"soon"}', ".expires"),
        ('{"node":"n1"}', ".expires"),
    ],
)
def test_bad_nomination_names_the_field(text: str, needle: str) -> None:
    with pytest.raises(GpupoolError, match=f"gpupool.io/nominated.*{needle}"):
        objects.parse_nomination(text)


@pytest.mark.parametrize(
    ("slot", "gpu_index", "needle"),
    [
        ("gpu2-0", 2, None),
        ("gpu2-31", 2, None),
        ("gpu2-32", 2, "does not belong to GPU 2"),  # k beyond slots_per_gpu
        ("gpu1-0", 2, "does not belong to GPU 2"),
        ("remote-0", 2, "does not belong to GPU 2"),
        ("remote-15", None, None),
        ("remote-16", None, "remote-<k> with k < 16"),
        ("gpu0-0", None, "remote-<k>"),
        ("gpu-x", 0, "not a gpupool slot id"),
    ],
)
def test_slot_problem(slot: str, gpu_index: int | None, needle: str | None) -> None:
    problem = slots.slot_problem(slot, gpu_index, slots_per_gpu=32, remote_slots=16)
    if needle is None:
        assert problem is None
    else:
        assert problem is not None and needle in problem


def test_gpunode_agent_endpoint_reaches_the_node_info() -> None:
    """`status.agentEndpoint` is a per-node fact of the pool model: placement serves remote slices only from
    nodes that publish one."""
    obj: dict[str, Any] = {
        "metadata": {"name": "n1"},
        "status": {
            "gpus": [{"uuid": "GPU-a", "index": 0, "model": "T4", "memoryMiB": 16384}],
            "agentEndpoint": " 10.1.2.3:9403 ",
        },
    }
    assert objects.node_info_from_gpunode(obj).agent_endpoint == "10.1.2.3:9403"
    del obj["status"]["agentEndpoint"]
    assert objects.node_info_from_gpunode(obj).agent_endpoint == ""


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({}, (None, None)),
        ({resources.COMPUTE_MODE: "share"}, ("share", None)),
        ({resources.COMPUTE_MODE: "ceiling"}, ("ceiling", None)),
    ],
)
def test_pod_compute_mode(annotations: dict[str, str], expected: tuple[str | None, str | None]) -> None:
    assert objects.pod_compute_mode({"metadata": {"annotations": annotations}}) == expected


def test_a_bad_compute_mode_reads_as_the_default_with_the_reason() -> None:
    mode, problem = objects.pod_compute_mode({"metadata": {"annotations": {resources.COMPUTE_MODE: "turbo"}}})
    assert mode is None and problem is not None and "'ceiling' or 'share'" in problem


def test_verified_texts_skip_the_check_but_never_a_forgery_or_another_pods_record(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`pod_assignment(..., verified)`: a text verified once is read from the caller's table after; a forged
    text is never stored; a stored text copied onto another pod is still refused (the uid check is per call)."""
    from gpupool import assignment as assignment_format

    record = Assignment("uid-1", "n", (SliceRecord(0, "GPU-0", "n", 50, 1024, "0"),), "2026-12-02T00:00:00Z")
    text = record.signed(KEY).to_annotation()
    verified: dict[str, Assignment] = {}
    mine = pod(annotations={resources.ASSIGNMENT: text})
    assert objects.holding_from_pod(mine, KEY, verified) is not None and list(verified) == [text]
    calls = []
    real = assignment_format.verify
    monkeypatch.setattr(assignment_format, "verify", lambda t, k: calls.append(t) or real(t, k))
    held = objects.holding_from_pod(mine, KEY, verified)
    assert held is not None and held.slices == record.slices and calls == []  # from the table
    with pytest.raises(AssignmentError, match="carries the assignment of pod uid-1"):
        objects.pod_assignment(pod("uid-2", annotations={resources.ASSIGNMENT: text}), KEY, verified)
    forged = text.replace('"compute":50', '"compute":100')
    assert forged != text
    with pytest.raises(AssignmentError):
        objects.pod_assignment(pod(annotations={resources.ASSIGNMENT: forged}), KEY, verified)
    assert list(verified) == [text] and calls == [forged]
    unverified: dict[str, Assignment] = {}
    assert objects.pod_assignment(mine, None, unverified) == record.signed(KEY) and unverified == {}  # never stored
