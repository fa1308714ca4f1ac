"""Bad pods are refused at admission (validating webhook), each with a message that says what to change."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from gpupool import resources
from tests.e2e.gpupool.gp_helpers import DEBUG_POOL, GP, gpu_pod

pytestmark = pytest.mark.local_harness(DEBUG_POOL)

CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("compute-too-big", {"compute": 150}, [resources.GPU_COMPUTE, "100"]),
    ("compute-zero", {"compute": 0}, [resources.GPU_COMPUTE]),
    ("memory-too-big", {"memory": 200_000}, [resources.GPU_MEMORY]),
    ("too-many-slices", {"gpus": 64}, [resources.GPU]),
    ("bad-locality", {"annotations": {resources.LOCALITY: "remote"}}, [resources.LOCALITY, "pool"]),
    ("bad-qos", {"annotations": {resources.QOS: "gold"}}, [resources.QOS]),
    ("bad-policy", {"annotations": {resources.POLICY: "magic"}}, [resources.POLICY]),
    ("unknown-annotation", {"annotations": {"gpupool.io/colour": "blue"}}, ["gpupool.io/colour"]),
    ("forged-assignment", {"annotations": {resources.ASSIGNMENT: '{"v":1}'}}, [resources.ASSIGNMENT]),
]


@pytest.mark.parametrize(("name", "kwargs", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_pod_rejected_with_message(gp: GP, name: str, kwargs: dict[str, Any], words: list[str]) -> None:
    ns = gp.namespace()
    with pytest.raises(ApiException) as info:
        gp.create(ns, gpu_pod(name, **kwargs))
    err = info.value
    assert err.status in (400, 403, 422), err
    body = str(err.body)
    assert "validate-pods.gpupool.io" in body or "denied the request" in body, body
    for w in words:
        assert w in body, f"{w!r} not in the rejection: {body}"


def test_good_pod_in_same_namespace_is_accepted(gp: GP) -> None:
    ns = gp.namespace()
    created = gp.create(ns, gpu_pod("good", compute=10, memory=512))
    assert created.spec.scheduler_name == resources.SCHEDULER_NAME
    gp.wait_bound(ns, "good")
