"""Tenancy as a user meets it with kubectl: a queue of another namespace is refused, admitted pods are fixed.

Issue 11 finding 3 (a pod in team-b naming team-a's queue was admitted against team-a's quota) and finding 2
(editing `gpupool.io/qos` on a bound best-effort pod was allowed).
"""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from gpupool import resources
from tests.e2e.gpupool.gp_helpers import GP, gpu_pod


def test_a_pod_naming_another_namespaces_queue_is_refused(gp: GP) -> None:
    mine, other = gp.namespace(), gp.namespace()
    q = gp.queue("tenant", {"namespaces": [mine], "nominalQuota": {"compute": 100}})
    thief = gpu_pod("thief", compute=10, memory=512, annotations={resources.QUEUE: q})
    with pytest.raises(ApiException) as info:
        gp.create(other, thief)
    body = str(info.value.body)
    assert info.value.status in (400, 403, 422), info.value
    assert f"metadata.annotations[{resources.QUEUE}]" in body, body
    assert f"GPUQueue {q} serves namespaces {mine}, not namespace {other}" in body, body
    # the same with kubectl apply
    applied = gp.cluster.kubectl(
        "apply", "-n", other, "-f", "-", input=json.dumps({**thief, "metadata": {**thief["metadata"], "name": "k"}}),
        check=False,
    )  # fmt: skip
    assert applied.returncode != 0 and f"GPUQueue {q} serves namespaces {mine}" in applied.stderr, applied.stderr
    # in its own namespace the same pod is admitted and bound
    gp.create(mine, thief)
    gp.wait_bound(mine, "thief")


def test_accounting_fields_are_fixed_once_admitted(gp: GP) -> None:
    ns = gp.namespace()
    q = gp.queue("fixed", {"namespaces": [ns], "nominalQuota": {"compute": 100}})
    gp.create(ns, gpu_pod("be", compute=10, memory=512, annotations={resources.QOS: "best-effort"}))
    bound = gp.wait_bound(ns, "be")
    assert bound.metadata.annotations[resources.QUEUE] == q  # recorded at admission
    for key, value in ((resources.QOS, "guaranteed"), (resources.QUEUE, "elsewhere")):
        with pytest.raises(ApiException) as info:
            gp.v1.patch_namespaced_pod("be", ns, {"metadata": {"annotations": {key: value}}})
        body = str(info.value.body)
        assert f"metadata.annotations[{key}]" in body and "is fixed once gpupool admitted the pod" in body, body
    assert gp.pod(ns, "be").metadata.annotations[resources.QOS] == "best-effort"
