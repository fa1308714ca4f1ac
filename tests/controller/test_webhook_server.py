"""The webhooks' own HTTPS server (`controller.webhook_server`, issue 16): the AdmissionReview answers the API server
reads, over TLS, and the certificate read again when its files change."""

from __future__ import annotations

import asyncio
import base64
import copy
import http.client
import json
import ssl
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from cryptography import x509
from hypothesis import given

from controller import admission, handlers, webhook_server
from controller.webhooks import MUTATE_PATH, VALIDATE_PATH
from e2e import pki
from gpupool import objects, resources
from tests.fuzz.strategies import FUZZ, pods

ALICE = {"username": "alice", "groups": ["system:authenticated"]}
CONTROLLER = {"username": "system:serviceaccount:gpupool-system:gpupool-controller"}


def user_pod(limits: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a", "uid": "u-1"},
            "spec": {"containers": [{"name": "main", "image": "x",
                                     "resources": {"limits": limits or {resources.GPU: "1"}}}]}}  # fmt: skip


def review(operation: str, obj: Any, old: Any = None, user: Any = ALICE, uid: str = "r-1") -> bytes:
    request = {"uid": uid, "operation": operation, "userInfo": user, "object": obj, "oldObject": old,
               "resource": {"group": "", "version": "v1", "resource": "pods"}}  # fmt: skip
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}).encode()


@pytest.fixture
def tls(tmp_path: Path) -> tuple[str, str, str]:
    pki.write_ca(tmp_path)
    cert, key = pki.issue(tmp_path, "webhook", "gpupool-webhook", server=True, sans=("127.0.0.1",))
    return str(cert), str(key), str(tmp_path / "ca.crt")


def post(port: int, ca: str, path: str, body: bytes) -> tuple[int, dict[str, Any], bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=ca), timeout=10)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if resp.status == 200 else {}, data
    finally:
        conn.close()


def test_the_server_answers_both_webhooks_over_tls(tls: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key, ca = tls
    monkeypatch.setattr(handlers, "STATE", None)

    def explode(request: Any) -> dict[str, Any]:
        raise ZeroDivisionError("a bug")

    boom = {"explode": explode}

    async def run() -> None:
        server = webhook_server.AdmissionServer("127.0.0.1", 0, cert, key, {**handlers.WEBHOOKS, **boom})
        await server.start()
        try:
            await asyncio.to_thread(calls, server.port)
        finally:
            await server.stop()

    def calls(port: int) -> None:
        pod = user_pod({"pool.kubernetes.io/gpu-compute": "30"})
        status, answer, _ = post(port, ca, f"/{MUTATE_PATH}", review("CREATE", pod))
        assert status == 200
        assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
        response = answer["response"]
        assert response["uid"] == "r-1" and response["allowed"] is True and response["patchType"] == "JSONPatch"
        mutated = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
        assert mutated == admission.mutate(pod) and objects.pod_gated(mutated)
        # a pod without gpupool resources: allowed, no patch
        plain = user_pod({"cpu": "1"})
        assert post(port, ca, f"/{MUTATE_PATH}", review("CREATE", plain))[1] == {
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": "r-1", "allowed": True}}  # fmt: skip
        # validation: the mutated pod passes; a bad one is refused naming the field, code 400
        assert post(port, ca, f"/{VALIDATE_PATH}", review("CREATE", mutated))[1]["response"]["allowed"] is True
        bad = user_pod({resources.GPU_COMPUTE: "101"})
        response = post(port, ca, f"/{VALIDATE_PATH}", review("CREATE", bad, uid="r-2"))[1]["response"]
        assert response["uid"] == "r-2" and response["allowed"] is False and response["status"]["code"] == 400
        field = "spec.containers[0].resources.limits[gpupool.io/gpu-compute]"
        assert response["status"]["message"].startswith(f"gpupool: {field}: ")
        # the gate: removed by the controller, not by a user
        ungated = copy.deepcopy(mutated)
        ungated["spec"]["schedulingGates"] = []
        refused = post(port, ca, f"/{VALIDATE_PATH}", review("UPDATE", ungated, mutated))[1]["response"]
        assert refused["allowed"] is False and "schedulingGates" in refused["status"]["message"]
        allowed = post(port, ca, f"/{VALIDATE_PATH}", review("UPDATE", ungated, mutated, CONTROLLER))[1]
        assert allowed["response"]["allowed"] is True
        # an UPDATE of a pod with large annotations carries them twice (aiohttp's default limit is 1 MiB)
        big = copy.deepcopy(mutated)
        big["metadata"]["annotations"] = {"example.com/blob": "x" * (1 << 20)}
        status, large, _ = post(port, ca, f"/{VALIDATE_PATH}", review("UPDATE", big, big, CONTROLLER))
        assert status == 200 and large["response"]["allowed"] is True
        # what is not an AdmissionReview: 400; an unknown path: 404; a webhook that fails refuses with 500
        assert post(port, ca, f"/{VALIDATE_PATH}", b"{not json")[0] == 400
        assert post(port, ca, f"/{VALIDATE_PATH}", json.dumps({"request": {"uid": "x"}}).encode())[0] == 400
        assert post(port, ca, "/nowhere", review("CREATE", pod))[0] == 404
        failed = post(port, ca, "/explode", review("CREATE", pod))[1]["response"]
        assert failed["allowed"] is False and failed["status"]["code"] == 500

    asyncio.run(run())


def test_a_renewed_certificate_is_served_to_new_connections(tls: tuple[str, str, str], tmp_path: Path) -> None:
    cert, key, ca = tls

    def served_serial(port: int) -> int:
        ctx = ssl.create_default_context(cafile=ca)
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        try:
            conn.connect()
            assert isinstance(conn.sock, ssl.SSLSocket)
            der = conn.sock.getpeercert(binary_form=True)
            assert der is not None
        finally:
            conn.close()
        return int(x509.load_der_x509_certificate(der).serial_number)

    async def run() -> None:
        server = webhook_server.AdmissionServer("127.0.0.1", 0, cert, key, handlers.WEBHOOKS, check_interval=0.05)
        await server.start()
        try:
            first = await asyncio.to_thread(served_serial, server.port)
            pki.issue(tmp_path, "webhook", "gpupool-webhook", server=True, sans=("127.0.0.1",))  # the same files
            for _ in range(100):
                await asyncio.sleep(0.05)
                if await asyncio.to_thread(served_serial, server.port) != first:
                    return
            raise AssertionError("the renewed certificate was never served")
        finally:
            await server.stop()

    asyncio.run(run())


def _mutate_before_issue_16(pod: Any, node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    """`admission.mutate` as it was (a copy changed in place, the webhook's patch a diff of it): the oracle."""
    out: dict[str, Any] = copy.deepcopy(dict(pod))
    if resources.pod_shape_errors(out):
        return out
    ops = resources.rewrite_aliases(out)
    if ops:
        out = jsonpatch.apply_patch(out, ops)
    if not isinstance(out.get("spec"), dict):
        out["spec"] = {}
    spec = out["spec"]
    for kind in ("initContainers", "containers"):
        for container in spec.get(kind) or []:
            res = container.get("resources") or {}
            limits = res.get("limits") or {}
            requests = res.get("requests") or {}
            names = set(limits) | set(requests)
            if not names & set(resources.CANONICAL):
                continue
            if resources.GPU not in names:
                res["limits"] = {**limits, resources.GPU: "1"}
                if requests:
                    res["requests"] = {**requests, resources.GPU: "1"}
    spec["schedulerName"] = resources.SCHEDULER_NAME
    if not objects.pod_gated(out):
        spec["schedulingGates"] = [*(spec.get("schedulingGates") or []), {"name": resources.ADMISSION_GATE}]
    if node_selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **node_selector}
    return out


@FUZZ
@given(pods)
def test_the_mutation_patch_makes_the_pod_the_old_mutation_made(pod: Any) -> None:
    before = copy.deepcopy(pod)
    for selector in (None, {"pool": "a"}):
        ops = admission.mutation_patch(pod, node_selector=selector)
        assert pod == before  # the pod itself is never changed
        assert jsonpatch.apply_patch(pod, ops) == _mutate_before_issue_16(pod, selector)
        assert admission.mutate(pod, node_selector=selector) == jsonpatch.apply_patch(pod, ops)


@pytest.mark.parametrize("pod", [
    user_pod({"pool.kubernetes.io/gpu-compute": "30", "pool.kubernetes.io/gpu-memory": "4096"}),
    {**user_pod({resources.GPU_COMPUTE: "30"}), "spec": {
        "containers": [{"name": "a", "resources": {"limits": {resources.GPU_COMPUTE: "30"},
                                                   "requests": {resources.GPU_COMPUTE: "30", "cpu": "1"}}}],
        "initContainers": [{"name": "i", "resources": {"requests": {"pool.kubernetes.io/gpu-memory": "10"}}}],
        "schedulingGates": [{"name": "other"}], "schedulerName": "default-scheduler", "nodeSelector": {"x": "y"}}},
    {**user_pod(), "spec": {"containers": [{"name": "a", "resources": {"limits": {resources.GPU: "1"}}}],
                            "schedulingGates": None, "schedulerName": resources.SCHEDULER_NAME}},
    {"metadata": {"name": "p"}},
])  # fmt: skip
def test_the_mutation_patch_on_chosen_pods(pod: dict[str, Any]) -> None:
    for selector in (None, {"pool": "a"}, {"x": "y"}):
        ops = admission.mutation_patch(pod, node_selector=selector)
        assert jsonpatch.apply_patch(pod, ops) == _mutate_before_issue_16(pod, selector)
    assert admission.mutation_patch(admission.mutate(pod)) == []  # nothing left to change
