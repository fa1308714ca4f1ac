"""The controller against a real kube-apiserver: webhooks registered for real, queue admission, Lease HA.

One control plane for the module (etcd + kube-apiserver + KCM, no kwok; see tests/controller/real_api.py).
`gpupool-controller` runs as a process (`python -m controller.main`) under the ServiceAccount
gpupool-system/gpupool-controller, serving /mutate-pods and /validate-pods on https://127.0.0.1 with the
cluster's webhook certificate; the Mutating/ValidatingWebhookConfigurations come from
`controller.webhooks.render_webhook_configurations` with caBundle = the cluster CA.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from e2e.polling import wait_for
from gpupool import resources
from gpupool.objects import AdmissionDecision, pod_admission_decision, pod_gated
from kubeio.client import ApiError
from tests.controller.real_api import ControllerProcess, RealAPI, gpu_pod, plain_pod, wait_webhook_serving

#: the pool: two GPUNodes (6 x 16384 MiB); the largest GPU bounds gpu-memory at admission
NODES = {"rgpu-0": 2, "rgpu-1": 4}
GPU_MIB = 16384
VALIDATE_HOOK = "validate-pods.gpupool.io"


@pytest.fixture(scope="module")
def real(request: pytest.FixtureRequest) -> Iterator[RealAPI]:
    from tests.controller.real_api import skip_without_binaries

    skip_without_binaries()
    api = RealAPI.start("controller")
    failed_before = request.session.testsfailed
    try:
        api.service_account("gpupool-controller")
        api.apply([
            {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "rt-high"},
             "value": 1000},
            {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "rt-low"},
             "value": 100},
        ])  # fmt: skip
        for name, gpus in NODES.items():
            api.gpu_node(name, gpus=gpus, memory_mib=GPU_MIB)
        yield api
    finally:
        api.down(failed=request.session.testsfailed > failed_before)


@pytest.fixture(scope="module")
def controller(real: RealAPI) -> Iterator[ControllerProcess]:
    """The module's controller (Lease holder `ctl-a`) with the webhooks pointing at it."""
    ctl = ControllerProcess(real, "ctl-a").start()
    ctl.install_webhooks()
    ns = real.namespace("probe")
    wait_webhook_serving(real, ns, lambda n: real.create_pod(ns, gpu_pod(n)))
    yield ctl
    ctl.stop()


@pytest.fixture(autouse=True)
def _log_tails_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    before = request.session.testsfailed
    yield
    if request.session.testsfailed > before and "real" in request.fixturenames:
        api: RealAPI = request.getfixturevalue("real")
        print(api.cluster.log_tails(60, [n for n in api.cluster.processes if n.startswith("ctl")]))


@pytest.fixture
def ns(real: RealAPI, controller: ControllerProcess) -> str:
    return real.namespace("c")


def create_queue(real: RealAPI, namespace: str, compute: int, *, strategy: str = "StrictFIFO") -> str:
    name = f"q-{secrets.token_hex(3)}"
    body = {
        "apiVersion": "gpupool.io/v1alpha1", "kind": "GPUQueue", "metadata": {"name": name},
        "spec": {"namespaces": [namespace], "nominalQuota": {"compute": compute}, "queueingStrategy": strategy,
                 "preemption": {"withinQueue": "Never", "reclaimBorrowed": False}},
    }  # fmt: skip
    real.custom.create_cluster_custom_object("gpupool.io", "v1alpha1", "gpuqueues", body)

    def seen() -> bool:  # the leader writes the status of every queue it knows
        obj = real.custom.get_cluster_custom_object("gpupool.io", "v1alpha1", "gpuqueues", name)
        return "admitted" in (obj.get("status") or {})

    wait_for(seen, 20, f"the controller to see GPUQueue {name}", 0.1)
    return name


def rejection(real: RealAPI, namespace: str, body: dict[str, Any]) -> ApiException:
    with pytest.raises(ApiException) as info:
        real.create_pod(namespace, body)
    return info.value


def message(err: ApiException) -> str:
    """The Status message the API server answered (what kubectl prints)."""
    try:
        return str(json.loads(err.body or "").get("message") or err.body)
    except (TypeError, ValueError):
        return str(err.body)


def wait_admitted(real: RealAPI, namespace: str, name: str, timeout: float = 15) -> dict[str, Any]:
    def admitted() -> dict[str, Any] | None:
        pod = real.pod(namespace, name)
        return None if pod_gated(pod) else pod

    return wait_for(admitted, timeout, f"{namespace}/{name} to be admitted (gate removed)", 0.1)


def stays_gated(real: RealAPI, namespace: str, name: str, seconds: float = 1.5) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert pod_gated(real.pod(namespace, name)), f"{namespace}/{name} was admitted but should wait"
        time.sleep(0.1)


def waiting_events(real: RealAPI, namespace: str, name: str) -> list[str]:
    return [e.get("message") or "" for e in real.events(namespace, name) if e.get("reason") == "GPUPoolWaiting"]


# --- the bad-input matrix through the API server --------------------------------------------------------

LIMIT = "spec.containers[0].resources.limits"
MATRIX: list[tuple[str, dict[str, Any], list[str]]] = [
    ("compute-0", {"compute": 0}, [f"{LIMIT}[{resources.GPU_COMPUTE}]", "1..100"]),
    ("compute-101", {"compute": 101}, [f"{LIMIT}[{resources.GPU_COMPUTE}]", "101", "1..100"]),
    ("memory-0", {"memory": 0}, [f"{LIMIT}[{resources.GPU_MEMORY}]", "at least 1"]),
    ("memory-above-largest-gpu", {"memory": GPU_MIB + 1},
     [f"{LIMIT}[{resources.GPU_MEMORY}]", f"{GPU_MIB + 1} MiB", f"write at most {GPU_MIB}"]),
    ("count-0", {"count": 0}, [f"{LIMIT}[{resources.GPU}]", "at least 1 slice"]),
    ("count-above-largest-node", {"count": 5}, [f"{LIMIT}[{resources.GPU}]", "write at most 4"]),
    ("unknown-locality", {"annotations": {resources.LOCALITY: "remote"}},
     [f"metadata.annotations[{resources.LOCALITY}]", "'local' or 'pool'"]),
    ("unknown-qos", {"annotations": {resources.QOS: "gold"}},
     [f"metadata.annotations[{resources.QOS}]", "'guaranteed' or 'best-effort'"]),
    ("unknown-policy", {"annotations": {resources.POLICY: "magic"}},
     [f"metadata.annotations[{resources.POLICY}]", "fgd"]),
    ("unknown-annotation", {"annotations": {"gpupool.io/colour": "blue"}}, ["metadata.annotations[gpupool.io/colour]"]),
    ("user-set-assignment", {"annotations": {resources.ASSIGNMENT: '{"v":1}'}},
     [f"metadata.annotations[{resources.ASSIGNMENT}]", "written by gpupool only"]),
    ("user-set-nominated", {"annotations": {resources.NOMINATED: "x"}},
     [f"metadata.annotations[{resources.NOMINATED}]"]),
    ("privileged-with-slices", {"privileged": True},
     ["spec.containers[0].securityContext.privileged", "remove privileged: true"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "kwargs", "words"), MATRIX, ids=[m[0] for m in MATRIX])
def test_bad_input_rejected_by_the_apiserver_with_the_webhook_message(
    real: RealAPI, ns: str, case: str, kwargs: dict[str, Any], words: list[str]
) -> None:
    err = rejection(real, ns, gpu_pod(case, **kwargs))
    body = message(err)
    assert err.status == 400, body
    assert f'admission webhook "{VALIDATE_HOOK}" denied the request' in body, body
    assert "gpupool: " in body, body
    for word in words:
        assert word in body, f"{word!r} not in the rejection: {body}"
    assert not real.exists(ns, case)


@pytest.mark.parametrize("value", ["abc", "1.5", "500m"])
def test_non_integer_quantities_are_refused_by_the_apiserver_itself(real: RealAPI, ns: str, value: str) -> None:
    """The API server decodes and validates quantities before (or instead of) any webhook: "abc" is not a
    quantity at all, and extended resources must be integers. Either way the pod is not stored."""
    err = rejection(real, ns, gpu_pod(f"q-{value.replace('.', '-')}", compute=value))
    body = message(err)
    assert err.status in (400, 422), body
    if value == "abc":
        assert "quantities must match" in body, body
    else:
        assert f"{LIMIT}[{resources.GPU_COMPUTE}]" in body and "must be an integer" in body, body


def test_count_zero_alone_is_not_stored_as_a_pod_that_waits_forever(real: RealAPI, ns: str) -> None:
    """`gpupool.io/gpu: 0` and nothing else: it mentions gpupool (so the webhook gates it), but asks for no
    slice; it must be rejected, never stored gated with nothing that would ever admit it."""
    err = rejection(real, ns, gpu_pod("zero-alone", count=0, compute=None, memory=None))
    body = message(err)
    assert err.status == 400, body
    assert f"{LIMIT}[{resources.GPU}]" in body, body


def test_system_annotation_and_gate_changes_by_a_user_are_refused_on_update(real: RealAPI, ns: str) -> None:
    create_queue(real, ns, 0)  # no quota: the pod keeps its gate while we try to tamper with it
    real.create_pod(ns, gpu_pod("victim"))
    stays_gated(real, ns, "victim", 0.5)
    for key in (resources.ASSIGNMENT, resources.ALLOCATED, resources.NOMINATED):
        with pytest.raises(ApiException) as info:
            real.core.patch_namespaced_pod("victim", ns, {"metadata": {"annotations": {key: '{"v":1}'}}})
        body = message(info.value)
        assert info.value.status == 400, body
        assert f'"{VALIDATE_HOOK}" denied' in body and f"metadata.annotations[{key}]" in body, body
    with pytest.raises(ApiException) as info:
        real.core.patch_namespaced_pod(
            "victim", ns, [{"op": "replace", "path": "/spec/schedulingGates", "value": []}],
            _content_type="application/json-patch+json",
        )  # fmt: skip
    body = message(info.value)
    assert info.value.status == 400 and f"spec.schedulingGates[{resources.ADMISSION_GATE}]" in body, body
    # an ordinary label change by the same user is allowed
    real.core.patch_namespaced_pod("victim", ns, {"metadata": {"labels": {"team": "a"}}})
    pod = real.pod(ns, "victim")
    assert pod_gated(pod) and resources.ASSIGNMENT not in (pod["metadata"].get("annotations") or {})


# --- mutation -------------------------------------------------------------------------------------------


def test_alias_pod_is_stored_with_canonical_names_scheduler_and_gate(real: RealAPI, ns: str) -> None:
    stored = real.create_pod(ns, gpu_pod("alias", count=2, compute=40, memory=2048, prefix="pool.kubernetes.io"))
    res = stored["spec"]["containers"][0]["resources"]
    for part in ("limits", "requests"):  # the apiserver defaults requests from limits before admission
        names = set(res.get(part) or {})
        assert not any(n.startswith("pool.kubernetes.io/") for n in names), res
    assert res["limits"] == {resources.GPU: "2", resources.GPU_COMPUTE: "40", resources.GPU_MEMORY: "2048"}, res
    assert stored["spec"]["schedulerName"] == resources.SCHEDULER_NAME
    assert stored["spec"]["schedulingGates"] == [{"name": resources.ADMISSION_GATE}]


def test_valid_pod_is_untouched_except_scheduler_and_gate(real: RealAPI, ns: str) -> None:
    outside = real.namespace("nohook", labels={"gpupool.io/webhook": "ignore"})  # namespaceSelector excludes it
    body = gpu_pod("valid", count=1, compute=25, memory=512, annotations={resources.LOCALITY: "pool",
                   resources.QOS: "best-effort", "team.example.com/owner": "x"}, labels={"app": "v"})  # fmt: skip
    body["spec"]["automountServiceAccountToken"] = False  # no random token volume to compare
    body["spec"]["tolerations"] = [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]
    through = real.create_pod(ns, body)
    plain = real.create_pod(outside, body)
    assert plain["spec"]["schedulerName"] == "default-scheduler" and not plain["spec"].get("schedulingGates")
    assert through["spec"]["schedulerName"] == resources.SCHEDULER_NAME
    assert through["spec"]["schedulingGates"] == [{"name": resources.ADMISSION_GATE}]
    a, b = dict(through["spec"]), dict(plain["spec"])
    for spec in (a, b):
        spec.pop("schedulerName")
        spec.pop("schedulingGates", None)
    assert a == b
    for key in ("annotations", "labels"):
        assert through["metadata"].get(key) == plain["metadata"].get(key)


def test_unrelated_pods_never_reach_the_webhook(real: RealAPI, ns: str, controller: ControllerProcess) -> None:
    """With the controller stopped and failurePolicy Fail, gpupool pods fail (the webhook is live) while an
    unrelated pod is created: the matchConditions keep it away from the webhook."""
    controller.stop()
    try:
        err = rejection(real, ns, gpu_pod("needs-hook"))
        assert "failed calling webhook" in message(err) and "mutate-pods.gpupool.io" in message(err), message(err)
        stored = real.create_pod(ns, plain_pod("unrelated"))
        assert stored["spec"]["schedulerName"] == "default-scheduler"
        assert not stored["spec"].get("schedulingGates")
        # updates of unrelated pods do not reach the validating webhook either
        real.core.patch_namespaced_pod("unrelated", ns, {"metadata": {"annotations": {"example.com/x": "1"}}})
    finally:
        controller.start()
    wait_webhook_serving(real, ns, lambda n: real.create_pod(ns, gpu_pod(n)))


def test_updates_of_a_gpupool_pod_reach_the_webhook_only_when_they_touch_what_it_checks(
    real: RealAPI, ns: str, controller: ControllerProcess
) -> None:
    """Issue 16: every UPDATE of a gpupool pod called the validating webhook (a label, a finalizer, another
    scheduling gate), one more round trip per edit that plain pods never pay. Now only an edit of a gpupool.io/
    annotation or of the admission gate does: with the controller stopped and failurePolicy Fail, every other
    edit goes through, those two fail calling the webhook."""
    create_queue(real, ns, 0)  # no quota: the pod keeps its admission gate
    body = gpu_pod("edited", annotations={resources.QOS: "guaranteed", "example.com/note": "a"})
    body["spec"]["schedulingGates"] = [{"name": "example.com/hold"}]
    real.create_pod(ns, body)
    stays_gated(real, ns, "edited", 0.5)
    assert [g["name"] for g in real.pod(ns, "edited")["spec"]["schedulingGates"]] == [
        "example.com/hold", resources.ADMISSION_GATE]  # fmt: skip
    patch = real.core.patch_namespaced_pod
    json_patch = "application/json-patch+json"
    controller.stop()
    try:
        patch("edited", ns, {"metadata": {"labels": {"team": "a"}}})
        patch("edited", ns, {"metadata": {"annotations": {"example.com/note": "b", "example.com/new": "c"}}})
        patch("edited", ns, {"metadata": {"finalizers": ["example.com/keep"]}})
        patch("edited", ns, [{"op": "remove", "path": "/metadata/finalizers"}], _content_type=json_patch)
        # the user's own gate goes, gpupool's stays
        ungate = [{"op": "test", "path": "/spec/schedulingGates/0/name", "value": "example.com/hold"},
                  {"op": "remove", "path": "/spec/schedulingGates/0"}]  # fmt: skip
        patch("edited", ns, ungate, _content_type=json_patch)
        # what else the webhook reads on an update, the API server refuses itself, before any validating webhook
        for path, value in (("/spec/containers/0/resources/limits/gpupool.io~1gpu-compute", "90"),
                            ("/spec/containers/0/securityContext", {"privileged": True})):  # fmt: skip
            with pytest.raises(ApiException) as info:
                patch("edited", ns, [{"op": "add", "path": path, "value": value}], _content_type=json_patch)
            assert info.value.status == 422 and "Forbidden: pod updates may not change" in message(info.value)
        edits: list[Any] = [
            {"metadata": {"annotations": {resources.ASSIGNMENT: '{"v":1}'}}},  # a gpupool annotation added
            {"metadata": {"annotations": {resources.QOS: "best-effort"}}},  # changed
            {"metadata": {"annotations": {resources.QOS: None}}},  # removed
            [{"op": "remove", "path": "/spec/schedulingGates"}],  # the admission gate removed
        ]
        for edit in edits:
            with pytest.raises(ApiException) as info:
                kind = {"_content_type": json_patch} if isinstance(edit, list) else {}
                patch("edited", ns, edit, **kind)
            assert "failed calling webhook" in message(info.value), (edit, message(info.value))
            assert VALIDATE_HOOK in message(info.value), (edit, message(info.value))
    finally:
        controller.start()
    wait_webhook_serving(real, ns, lambda n: real.create_pod(ns, gpu_pod(n)))
    pod = real.pod(ns, "edited")
    assert pod["metadata"]["labels"] == {"team": "a"} and not pod["metadata"].get("finalizers")
    annotations = pod["metadata"]["annotations"]
    assert annotations["example.com/note"] == "b" and annotations[resources.QOS] == "guaranteed"
    assert resources.ASSIGNMENT not in annotations
    assert [g["name"] for g in pod["spec"]["schedulingGates"]] == [resources.ADMISSION_GATE]
    # and the webhook, serving again, still refuses what it refused (the same edits by a user)
    with pytest.raises(ApiException) as info:
        patch("edited", ns, {"metadata": {"annotations": {resources.ASSIGNMENT: '{"v":1}'}}})
    assert f'"{VALIDATE_HOOK}" denied' in message(info.value), message(info.value)
    with pytest.raises(ApiException) as info:
        patch("edited", ns, [{"op": "remove", "path": "/spec/schedulingGates"}], _content_type=json_patch)
    assert f"spec.schedulingGates[{resources.ADMISSION_GATE}]" in message(info.value), message(info.value)


# --- queue admission ------------------------------------------------------------------------------------


def test_queue_admits_within_quota_and_explains_the_wait(real: RealAPI, ns: str) -> None:
    queue = create_queue(real, ns, 100)  # one whole GPU's compute
    for name in ("p1", "p2"):
        real.create_pod(ns, gpu_pod(name, compute=50))
    for name in ("p1", "p2"):
        wait_admitted(real, ns, name)
    real.create_pod(ns, gpu_pod("p3", compute=50))
    messages = wait_for(lambda: waiting_events(real, ns, "p3"), 15, "a GPUPoolWaiting event on p3", 0.1)
    assert any(f"queue {queue}" in m and "quota" in m and "100/100" in m for m in messages), messages
    assert pod_gated(real.pod(ns, "p3"))
    # the decision is published on the pod (gpupool explain reads it): the Event's words, not admitted
    decision = wait_for(lambda: pod_admission_decision(real.pod(ns, "p3")), 15, "p3's Admission condition", 0.1)
    assert not decision.admitted and decision.reason == "Waiting" and decision.message in messages
    real.delete_pod(ns, "p1")
    pod = wait_admitted(real, ns, "p3")
    assert pod_gated(real.pod(ns, "p2")) is False
    def admitted() -> AdmissionDecision | None:
        d = pod_admission_decision(real.pod(ns, "p3"))
        return d if d is not None and d.admitted else None

    decision = wait_for(admitted, 15, "p3's Admission condition True", 0.1)
    assert decision.reason == "Admitted" and f"admitted by queue {queue}" in decision.message, pod


def test_queue_admits_by_priority_then_creation(real: RealAPI, ns: str) -> None:
    create_queue(real, ns, 100)
    for name in ("fill-1", "fill-2"):
        real.create_pod(ns, gpu_pod(name, compute=50, priority_class="rt-low"))
        wait_admitted(real, ns, name)
    real.create_pod(ns, gpu_pod("low", compute=50, priority_class="rt-low"))
    time.sleep(1.1)  # creationTimestamp has one-second resolution
    real.create_pod(ns, gpu_pod("high", compute=50, priority_class="rt-high"))
    wait_for(lambda: waiting_events(real, ns, "high") and waiting_events(real, ns, "low"), 15, "both to wait", 0.1)
    assert any("1st in line" in m for m in waiting_events(real, ns, "high")), waiting_events(real, ns, "high")
    real.delete_pod(ns, "fill-1")
    wait_admitted(real, ns, "high")
    stays_gated(real, ns, "low", 1.0)
    real.delete_pod(ns, "fill-2")
    wait_admitted(real, ns, "low")


def test_queue_is_recorded_at_admission_and_tenancy_is_enforced(real: RealAPI, ns: str) -> None:
    """Issue 11 findings 2 and 3 through a real API server: another namespace's queue, edits after admission."""
    queue = create_queue(real, ns, 100)
    real.create_pod(ns, gpu_pod("mine", compute=10))  # defaulted to the namespace's queue
    admitted = wait_admitted(real, ns, "mine")
    assert admitted["metadata"]["annotations"][resources.QUEUE] == queue
    other = real.namespace("o")
    err = rejection(real, other, gpu_pod("thief", compute=10, annotations={resources.QUEUE: queue}))
    assert f"metadata.annotations[{resources.QUEUE}]" in message(err), message(err)
    assert f"GPUQueue {queue} serves namespaces {ns}, not namespace {other}" in message(err), message(err)
    with pytest.raises(ApiException) as info:
        real.core.patch_namespaced_pod("mine", ns, {"metadata": {"annotations": {resources.QOS: "best-effort"}}})
    assert f"metadata.annotations[{resources.QOS}]: is fixed once gpupool admitted the pod" in message(info.value)


def test_snapshot_round_trips_into_a_timeline_what_if(real: RealAPI, ns: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`gpupool snapshot` of this cluster, read back by `simulate --timeline --snapshot`; a larger quota removes
    the wait of the pod that waits for quota now (docs/timeline.md's recipe)."""
    from controller.cli import main
    from gpupool.simulator import snapshot as snapshot_format

    queue = create_queue(real, ns, 100, strategy="BestEffortFIFO")  # one GPU's compute
    for name in ("s1", "s2"):
        real.create_pod(ns, gpu_pod(name, compute=50))
        wait_admitted(real, ns, name)
    real.create_pod(ns, gpu_pod("s3", compute=50))
    wait_for(lambda: waiting_events(real, ns, "s3"), 15, "s3 to wait for quota", 0.1)
    # a Job of two pods (its controller creates them): one pod group, known from the owner the CLI reads
    jobs = real.namespace("j")
    create_queue(real, jobs, 200)
    template = {"spec": {**gpu_pod("w", compute=60)["spec"], "restartPolicy": "Never"}}
    real.apply([{"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "train", "namespace": jobs},
                 "spec": {"parallelism": 2, "completions": 2, "template": template}}])  # fmt: skip
    # only that they exist: whether the gang fits depends on what the file's earlier tests left on the two nodes
    # (in a full run, 10 % and 50 % free: the gang of 2 x 60 % waits), and the snapshot's groups do not
    wait_for(lambda: len(real.pods(jobs)) == 2, 30, "the Job's two pods to be created", 0.2)
    cluster = tmp_path / "cluster.json"
    assert main(["snapshot", "--kubeconfig", str(real.cluster.kubeconfig), "-o", str(cluster)]) == 0
    snap = snapshot_format.parse(json.loads(cluster.read_text()))
    mine = {e.request.name: e for e in snap.pods if e.request.namespace == ns}
    assert {name: e.gated for name, e in mine.items()} == {"s1": False, "s2": False, "s3": True}
    assert mine["s1"].request.queue == queue and mine["s3"].request.compute_units == 50
    assert {n.name: len(n.gpus) for n in snap.nodes} == NODES and queue in {q.name for q in snap.queues}
    assert ns in snap.namespaces and not snap.problems
    gang = {e.request.name: e.group for e in snap.pods if e.request.namespace == jobs}
    assert len(gang) == 2 and {g.key if g else None for g in gang.values()} == {f"{jobs}/job/train"}, gang
    assert all(g is not None and g.min_members == 2 and "spec.parallelism" in g.origin for g in gang.values())

    def what_if(*extra: str) -> dict[str, Any]:
        out = tmp_path / f"what-if{len(extra)}.json"
        argv = ["simulate", "--timeline", "--snapshot", str(cluster), "--duration", "600", "--json", str(out)]
        assert main([*argv, *extra]) == 0, capsys.readouterr().err
        return dict(json.loads(out.read_text()))

    now = what_if()
    # running pods are not waits; s3 waits for s1 or s2 to finish (a seeded draw in (0, 600] s)
    assert now["admitted_per_queue"][queue] == 1 and 0.0 < now["wait_p50_s"][queue] <= 600.0
    more = what_if("--set-quota", f"{queue}=200")
    assert more["wait_max_s"][queue] == 0.0 and more["admitted_per_queue"][queue] == 1  # s3, at once


# --- Lease HA -------------------------------------------------------------------------------------------


def test_standby_takes_the_lease_and_admits(real: RealAPI, ns: str, controller: ControllerProcess) -> None:
    lease = f"ha-{secrets.token_hex(3)}"
    controller.stop()  # SIGTERM: the module controller gives its Lease up and stops admitting
    a = ControllerProcess(real, "ctl-ha-a", lease_name=lease)
    b = ControllerProcess(real, "ctl-ha-b", lease_name=lease)
    try:
        a.start()
        wait_for(lambda: real.lease_holder(lease) == "ctl-ha-a", 15, "ctl-ha-a to hold the Lease", 0.1)
        b.start()
        a.install_webhooks()
        wait_webhook_serving(real, ns, lambda n: real.create_pod(ns, gpu_pod(n)))
        assert b.metric("gpupool_controller_leader") == 0.0 and a.metric("gpupool_controller_leader") == 1.0
        create_queue(real, ns, 100)
        for name in ("h1", "h2"):
            real.create_pod(ns, gpu_pod(name, compute=50))
            wait_admitted(real, ns, name)
        real.create_pod(ns, gpu_pod("h3", compute=50))
        wait_for(lambda: waiting_events(real, ns, "h3"), 15, "h3 to wait", 0.1)

        a.kill()  # no Lease release: the standby must wait for it to expire (3 s)
        killed = time.monotonic()
        b.install_webhooks()  # what the Service does: the endpoints now name the surviving replica
        real.delete_pod(ns, "h1")
        wait_for(lambda: real.lease_holder(lease) == "ctl-ha-b", 15, "ctl-ha-b to take the Lease", 0.1)
        wait_admitted(real, ns, "h3", timeout=15)
        took = time.monotonic() - killed
        assert took < 12, f"the standby admitted {took:.1f} s after the leader died"
        assert b.metric("gpupool_controller_leader") == 1.0
    finally:
        for p in (a, b):
            if p.alive():
                p.stop()
        controller.start()
        controller.install_webhooks()
        wait_webhook_serving(real, ns, lambda n: real.create_pod(ns, gpu_pod(n)))


def test_the_pod_watch_starts_at_the_startup_list_without_listing_again(real: RealAPI, ns: str) -> None:
    """Session 10: the controller lists pods as raw JSON in pages (`Kube.list_pods`, was one unpaged typed list),
    and its pod watch (a `Reflector`, no longer kopf) starts at that list's resourceVersion: it sees what changed
    since, and lists only after a failure."""
    import asyncio
    import threading

    from controller.kube import PODS, Kube
    from kubeio.reflector import Reflector

    before = {real.create_pod(ns, plain_pod(f"plain-{i}"))["metadata"]["uid"] for i in range(3)}
    kube = Kube(real.api_client)
    listed = {p["metadata"]["uid"] for p in asyncio.run(kube.list_pods(page_size=2))}
    assert before <= listed and kube.pods_listed_at
    lists: list[int] = []
    seen: dict[str, str] = {}
    arrived = threading.Event()

    def on_event(kind: str, obj: dict[str, Any]) -> None:
        seen[obj["metadata"]["name"]] = kind
        if obj["metadata"]["name"] == "after":
            arrived.set()

    watch = Reflector(kube.raw, PODS, lambda items: lists.append(len(items)), on_event, since=kube.pods_listed_at)
    watch.start()
    try:
        real.create_pod(ns, plain_pod("after"))
        assert arrived.wait(30), seen
    finally:
        watch.stop()
        kube.raw.close_streams()
        watch.join(10)
    assert lists == [] and seen.get("after") == "ADDED" and not {f"plain-{i}" for i in range(3)} & seen.keys()


def test_the_gate_removal_records_the_queue_in_one_write_and_names_the_pods_uid(real: RealAPI, ns: str) -> None:
    """Issue 16: `Kube.remove_gate` writes the queue and removes the gate in one merge patch; it keeps the pod's
    other annotations and gates, and the API server refuses it when the name now holds another pod."""
    import asyncio

    from controller.kube import Kube, load_api_client

    body = plain_pod("gated")
    body["metadata"]["annotations"] = {"team": "a"}
    body["spec"]["schedulingGates"] = [{"name": "other/gate"}, {"name": resources.ADMISSION_GATE}]
    uid = real.create_pod(ns, body)["metadata"]["uid"]
    gates = real.pod(ns, "gated")["spec"]["schedulingGates"]
    kube = Kube(load_api_client(str(real.kubeconfigs["gpupool-controller"])))  # the webhook lets it ungate
    with pytest.raises(ApiError) as refused:
        asyncio.run(kube.remove_gate(ns, "gated", "another-uid", gates, "q"))
    assert refused.value.status == 422 and pod_gated(real.pod(ns, "gated"))
    asyncio.run(kube.remove_gate(ns, "gated", uid, gates, "q"))
    pod = real.pod(ns, "gated")
    assert pod["metadata"]["annotations"] == {"team": "a", resources.QUEUE: "q"}
    assert pod["spec"]["schedulingGates"] == [{"name": "other/gate"}]
