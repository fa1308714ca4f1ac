"""The admission bad-input matrix and the mutation, through the kopf handler functions (no server)."""

from __future__ import annotations

import copy
import threading
from typing import Any

import jsonpatch
import kopf
import pytest

from controller import admission, handlers
from controller.admission import AdmissionConfig, PoolLimits
from gpupool import resources

LIMITS = PoolLimits(largest_gpu_mib=81920, largest_node_gpus=8, total_gpus=32, models=frozenset({"A100"}))
SYSTEM = {"username": "system:serviceaccount:gpupool-system:gpupool-controller"}
USER = {"username": "alice"}


def make_pod(limits: dict[str, Any] | None = None, annotations: dict[str, str] | None = None, **spec: Any) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "team-a", "annotations": annotations or {}},
        "spec": {
            "containers": [
                {"name": "main", "image": "x", "resources": {"limits": limits or {resources.GPU: "1"}}, **spec}
            ]
        },
    }


def check(pod: dict, **kw: Any) -> list[str]:
    kw.setdefault("limits", LIMITS)
    kw.setdefault("userinfo", USER)
    return [str(e) for e in admission.validate(pod, **kw)]


C = "spec.containers[0].resources.limits"


@pytest.mark.parametrize(
    ("pod", "field", "hint"),
    [
        (make_pod({resources.GPU_COMPUTE: "0"}), f"{C}[gpupool.io/gpu-compute]", "1..100"),
        (make_pod({resources.GPU_COMPUTE: "101"}), f"{C}[gpupool.io/gpu-compute]", "1..100"),
        (make_pod({resources.GPU_COMPUTE: "abc"}), f"{C}[gpupool.io/gpu-compute]", "whole number"),
        (make_pod({resources.GPU_MEMORY: "0"}), f"{C}[gpupool.io/gpu-memory]", "at least 1"),
        (make_pod({resources.GPU_MEMORY: "90000"}), f"{C}[gpupool.io/gpu-memory]", "write at most 81920"),
        (make_pod({resources.GPU: "0", resources.GPU_COMPUTE: "10"}), f"{C}[gpupool.io/gpu]", "at least 1"),
        (make_pod({resources.GPU: "9"}), f"{C}[gpupool.io/gpu]", "write at most 8"),
        (make_pod(annotations={resources.LOCALITY: "far"}), "metadata.annotations[gpupool.io/locality]", "'pool'"),
        (make_pod(annotations={resources.QOS: "gold"}), "metadata.annotations[gpupool.io/qos]", "best-effort"),
        (make_pod(annotations={resources.POLICY: "magic"}), "metadata.annotations[gpupool.io/policy]", "binpack"),
        (
            make_pod(annotations={resources.COMPUTE_MODE: "burst"}),
            "metadata.annotations[gpupool.io/compute-mode]",
            "'ceiling' or 'share'",
        ),
        (make_pod(annotations={"gpupool.io/colour": "x"}), "metadata.annotations[gpupool.io/colour]", "allowed are"),
        (make_pod(annotations={resources.POD_GROUP: "g", resources.MIN_MEMBERS: "0"}),
         "metadata.annotations[gpupool.io/min-members]", "whole number from 1"),
        (make_pod(annotations={resources.MIN_MEMBERS: "2"}), "metadata.annotations[gpupool.io/min-members]",
         "needs gpupool.io/pod-group"),
        (make_pod(annotations={resources.POD_GROUP: "Not_A_Name"}), "metadata.annotations[gpupool.io/pod-group]",
         "not a group name"),
        (make_pod(annotations={resources.ASSIGNMENT: "{}"}), "metadata.annotations[gpupool.io/assignment]", "remove"),
        (make_pod(annotations={resources.NOMINATED: "{}"}), "metadata.annotations[gpupool.io/nominated]", "remove"),
        (make_pod(annotations={resources.ALLOCATED: "x"}), "metadata.annotations[gpupool.io/allocated]", "remove"),
        (
            make_pod(securityContext={"privileged": True}),
            "spec.containers[0].securityContext.privileged",
            "remove privileged",
        ),
    ],
)
def test_bad_input_is_rejected_naming_the_field(
    pod: dict, field: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class State:
        ready = True
        admission = AdmissionConfig()
        lock = threading.Lock()

        def pool_limits(self) -> PoolLimits:
            return LIMITS

        def queue_problem(self, namespace: str, named: str) -> str | None:
            return None

        def group_problem(self, pod: dict) -> tuple[str, str] | None:
            return None

    monkeypatch.setattr(handlers, "STATE", State())
    errors = check(pod)
    assert errors, "expected a rejection"
    assert any(e.startswith(field) and hint in e for e in errors), errors
    with pytest.raises(kopf.AdmissionError) as info:
        handlers.validate_pods(body=kopf.Body(pod), old=None, operation="CREATE", userinfo=USER)
    assert field in str(info.value) and info.value.code == 400
    assert str(info.value).startswith("gpupool: ")


def test_pool_bound_for_pool_locality_and_empty_pool() -> None:
    pod = make_pod({resources.GPU: "9"}, annotations={resources.LOCALITY: "pool"})
    assert check(pod) == []
    assert check(make_pod({resources.GPU: "40"}, annotations={resources.LOCALITY: "pool"}))
    assert check(make_pod({resources.GPU_MEMORY: "90000"}), limits=PoolLimits()) == []  # unknown pool: no bound


def test_system_user_may_write_system_annotations_and_privileged_is_configurable() -> None:
    assert check(make_pod(annotations={resources.NOMINATED: "{}"}), userinfo=SYSTEM) == []
    pod = make_pod(securityContext={"privileged": True})
    assert check(pod, config=AdmissionConfig(allow_privileged=True)) == []


def test_update_of_system_annotations_and_gate_by_users_is_rejected() -> None:
    old = admission.mutate(make_pod())
    old["metadata"]["annotations"][resources.ASSIGNMENT] = "signed"
    new = copy.deepcopy(old)
    new["metadata"]["annotations"][resources.ASSIGNMENT] = "forged"
    errors = check(new, old=old, operation="UPDATE")
    assert any("gpupool.io/assignment" in e for e in errors)
    assert check(new, old=old, operation="UPDATE", userinfo=SYSTEM) == []
    ungated = copy.deepcopy(old)
    ungated["spec"]["schedulingGates"] = []
    assert any("schedulingGates" in e for e in check(ungated, old=old, operation="UPDATE"))
    assert check(ungated, old=old, operation="UPDATE", userinfo=SYSTEM) == []
    relabel = copy.deepcopy(old)
    relabel["metadata"]["labels"] = {"x": "y"}
    assert check(relabel, old=old, operation="UPDATE") == []


def test_valid_pods_pass() -> None:
    for pod in (
        make_pod(),
        make_pod({resources.GPU: "2", resources.GPU_COMPUTE: "30", resources.GPU_MEMORY: "4Gi"[:-2] + "096"}),
        make_pod(annotations={resources.QUEUE: "team-a", resources.QOS: "best-effort", resources.POLICY: "spread"}),
    ):
        assert check(pod) == []
        handlers.validate_pods(body=kopf.Body(pod), old=None, operation="CREATE", userinfo=USER)


def test_mutation_rewrites_aliases_and_sets_scheduler_gate_defaults() -> None:
    pod = make_pod({"pool.kubernetes.io/gpu-compute": "30", "pool.kubernetes.io/gpu-memory": "4096"})
    new = admission.mutate(pod, node_selector={"tenant": "a"})
    limits = new["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {resources.GPU_COMPUTE: "30", resources.GPU_MEMORY: "4096", resources.GPU: "1"}
    assert new["spec"]["schedulerName"] == resources.SCHEDULER_NAME
    assert new["spec"]["schedulingGates"] == [{"name": resources.ADMISSION_GATE}]
    assert new["spec"]["nodeSelector"] == {"tenant": "a"}
    assert check(new) == []
    assert admission.mutate(new) == {**new, "spec": {**new["spec"], "nodeSelector": {"tenant": "a"}}}  # idempotent


def test_mutate_handler_produces_a_json_patch_and_ignores_other_pods() -> None:
    pod = make_pod({"pool.kubernetes.io/gpu": "1"})
    ops = handlers.mutate_pods(pod)
    paths = {op["path"] for op in ops}
    assert "/spec/schedulerName" in paths and "/spec/schedulingGates" in paths
    assert jsonpatch.apply_patch(pod, ops) == admission.mutate(pod)
    plain = {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1"}}}]}}
    assert handlers.mutate_pods(plain) == []  # valid pods without gpupool resources are untouched
    assert check(plain) == []


def test_webhook_manifests_render() -> None:
    from controller.webhooks import render_webhook_configurations

    docs = render_webhook_configurations("https://127.0.0.1:8443", b"-----BEGIN CERTIFICATE-----\n")
    assert [d["kind"] for d in docs] == ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
    for d in docs:
        hook = d["webhooks"][0]
        assert hook["failurePolicy"] == "Fail" and hook["matchConditions"]
        assert hook["clientConfig"]["url"].startswith("https://127.0.0.1:8443/")
        assert hook["clientConfig"]["caBundle"]


def test_zero_slices_alone_is_refused_on_create_but_never_blocks_updates() -> None:
    pod = make_pod({resources.GPU: "0"})
    errors = check(pod, operation="CREATE")
    assert errors and f"{C}[gpupool.io/gpu]" in errors[0] and "asks for no slice" in errors[0]
    assert check(pod, operation="UPDATE", old=copy.deepcopy(pod)) == []


def test_update_that_leaves_the_gpupool_request_alone_passes_even_if_the_pool_shrank() -> None:
    old = make_pod({resources.GPU: "1", resources.GPU_MEMORY: "40000"})
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = {"touched": "yes"}
    small_pool = PoolLimits(largest_gpu_mib=16384, largest_node_gpus=8, total_gpus=8)
    assert check(new, operation="UPDATE", old=old, limits=small_pool) == []
    new["metadata"]["annotations"][resources.QOS] = "platinum"
    assert any("gpupool.io/qos" in e for e in check(new, operation="UPDATE", old=old, limits=small_pool))


@pytest.mark.parametrize("value", ["1e999999", "1e1000000"])
def test_admission_refuses_huge_quantities_naming_the_field(value: str) -> None:
    """Issue 12 #2: one such manifest froze the webhook for the whole cluster (or answered a traceback)."""
    errors = check(make_pod({resources.GPU_MEMORY: value}))
    assert len(errors) == 1 and errors[0].startswith(f"{C}[gpupool.io/gpu-memory]: ")
    assert "out of range" in errors[0]


@pytest.mark.parametrize("name", ["NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "CUDA_MPS_PIPE_DIRECTORY",
                                  "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "LD_PRELOAD", "GPUPOOL_SLICES",
                                  "GPUPOOL_BACKEND", "CUDA_DEVICE_MEMORY_LIMIT_0", "CUDA_DEVICE_SM_LIMIT"])
def test_admission_refuses_environment_gpupool_owns_naming_it(name: str) -> None:
    """Issue 12 #7: a container could set its own NVIDIA_VISIBLE_DEVICES (etc.) and widen its slices."""
    p = make_pod({resources.GPU: "1"}, env=[{"name": "HOME", "value": "/x"}, {"name": name, "value": "all"}])
    p["spec"]["initContainers"] = [{"name": "init", "image": "x", "env": [{"name": name, "value": "all"}]}]
    errors = check(p)
    assert errors and all(name in e for e in errors)
    assert {e.split(":")[0] for e in errors} == {f"spec.containers[0].env[1] ({name})",
                                                 f"spec.initContainers[0].env[0] ({name})"}
    # the env of a stored pod is immutable: updates of pods created before the rule are not blocked
    assert check(p, operation="UPDATE", old=copy.deepcopy(p)) == []


def test_admission_refuses_an_envfrom_prefix_that_lands_in_gpupool_names() -> None:
    p = make_pod({resources.GPU: "1"}, envFrom=[{"prefix": "CUDA_", "configMapRef": {"name": "c"}},
                                                {"prefix": "APP_", "configMapRef": {"name": "c"}},
                                                {"configMapRef": {"name": "c"}}])
    errors = check(p)
    assert len(errors) == 1 and errors[0].startswith("spec.containers[0].envFrom[0].prefix")
    assert check(make_pod({resources.GPU: "1"}, env=[{"name": "CUDA_HOME", "value": "/usr/local/cuda"}])) == []


def test_every_variable_allocate_sets_is_one_admission_refuses() -> None:
    """The Allocate environment (deviceplugin/allocate.py) and the refused names stay one list."""
    from deviceplugin.allocate import ContainerPlan, build_response
    from deviceplugin.settings import Backend, DevicePluginSettings
    from gpupool.assignment import SliceRecord

    slices = (SliceRecord(0, "GPU-a", "n0", 30, 1024, "gpu0-0"), SliceRecord(0, "GPU-b", "n1", 30, 1024, "remote-0"))
    plan = ContainerPlan("u", "ns/p", "0", ("gpu0-0", "remote-0"), slices, "n0", "test")
    for backend in Backend:
        settings = DevicePluginSettings(node_name="n0", backend=backend)
        response = build_response(plan, settings, {"GPU-a": 0}, {"n1": "10.0.0.1:1"})
        assert response.envs and all(resources.is_runtime_env(k) for k in response.envs), dict(response.envs)


def test_mutate_gates_a_pod_whose_gate_list_is_null() -> None:
    pod = make_pod()
    pod["spec"]["schedulingGates"] = None
    assert admission.mutate(pod)["spec"]["schedulingGates"] == [{"name": resources.ADMISSION_GATE}]


# --- tenancy (issue 11 finding 3 and 2): queue membership, fields fixed at admission ----------------------


def served(namespace: str, named: str) -> str | None:
    return None if (namespace, named) == ("team-a", "team-a") else f"GPUQueue {named} serves namespaces team-a"


def tenancy(pod: dict, **kw: Any) -> list[str]:
    kw.setdefault("queue_problem", served)
    return [str(e) for e in admission.tenancy_errors(pod, **kw)]


def test_a_pod_naming_a_queue_of_another_namespace_is_refused() -> None:
    thief = make_pod(annotations={resources.QUEUE: "team-a"})
    thief["metadata"]["namespace"] = "team-b"
    errors = tenancy(thief)
    assert errors == ["metadata.annotations[gpupool.io/queue]: GPUQueue team-a serves namespaces team-a"]
    assert tenancy(make_pod(annotations={resources.QUEUE: "team-a"})) == []
    assert tenancy(thief, queue_problem=None) == []  # the controller's cache is not built yet
    # renaming the queue of a gated pod is checked too; other updates of it are not
    old = admission.mutate(make_pod())
    new = copy.deepcopy(old)
    new["metadata"]["namespace"] = old["metadata"]["namespace"] = "team-b"
    new["metadata"]["annotations"][resources.QUEUE] = "team-a"
    assert len(tenancy(new, old=old, operation="UPDATE")) == 1
    assert tenancy(new, old=new, operation="UPDATE") == []


def admitted_pod(**annotations: str) -> dict:
    pod = make_pod({resources.GPU: "1", resources.GPU_COMPUTE: "20"}, annotations=dict(annotations))
    pod["spec"]["schedulingGates"] = []
    return pod


@pytest.mark.parametrize(
    ("field", "change"),
    [
        (resources.QOS, "guaranteed"),
        (resources.QUEUE, "team-a"),
        (resources.LOCALITY, "pool"),
        (resources.POLICY, "spread"),
        (resources.GPU_MODEL, "H100"),
        (resources.GPU_UUID, "GPU-1"),
        (resources.COMPUTE_MODE, "share"),
    ],
)
def test_accounting_annotations_are_fixed_once_admitted(field: str, change: str) -> None:
    """Issue 11 finding 2: the webhook let a user turn a bound best-effort pod into a guaranteed one."""
    old = admitted_pod(**{resources.QOS: "best-effort"})
    new = copy.deepcopy(old)
    new["metadata"]["annotations"][field] = change
    for user in (USER, SYSTEM):
        errors = tenancy(new, old=old, operation="UPDATE")
        assert len(errors) == 1 and errors[0].startswith(f"metadata.annotations[{field}]: is fixed once"), errors
        # through the webhook handler as well, whoever asks
        with pytest.raises(kopf.AdmissionError, match=r"is fixed once gpupool admitted the pod"):
            handlers.validate_pods(body=new, old=old, operation="UPDATE", userinfo=user)
    # the same edit while the pod still waits for admission is allowed
    gated_old, gated_new = copy.deepcopy(old), copy.deepcopy(new)
    for p in (gated_old, gated_new):
        p["spec"]["schedulingGates"] = [{"name": resources.ADMISSION_GATE}]
    assert tenancy(gated_new, old=gated_old, operation="UPDATE") == []


def test_requests_are_fixed_once_admitted_and_other_updates_pass() -> None:
    old = admitted_pod()
    new = copy.deepcopy(old)
    new["spec"]["containers"][0]["resources"]["limits"][resources.GPU_COMPUTE] = "90"
    errors = tenancy(new, old=old, operation="UPDATE")
    assert errors == [
        "spec.containers[0].resources.limits[gpupool.io/gpu-compute]: is fixed once gpupool admitted the pod "
        "(it decides the pod's queue, quota and slices); keep '20', or delete and recreate the pod"
    ]
    labelled = copy.deepcopy(old)
    labelled["metadata"]["labels"] = {"x": "y"}
    labelled["metadata"]["annotations"]["other.io/note"] = "fine"
    assert tenancy(labelled, old=old, operation="UPDATE") == []
