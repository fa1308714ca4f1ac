"""gpupool on a real kubelet (containerd + runc): the kubelet's device manager admits, allocates and records.

Each container prints its environment from inside (``env``); the checks compare it with the pod's signed
assignment, and the kubelet's PodResources record with the same assignment. Set-up: conftest.py.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from e2e.polling import wait_for
from tests.realnode.conftest import REAL, RealNodeEnv, wait_capacity
from tests.realnode.helpers import (
    assigned,
    assignment_of,
    check_identity,
    container_keys,
    gpu_pod,
    received,
    slices_assigned,
    slices_seen,
    wait_running,
)

pytestmark = pytest.mark.realnode


def create(rn: RealNodeEnv, ns: str, body: dict[str, Any]) -> Any:
    return rn.v1.create_namespaced_pod(ns, body)


def run(rn: RealNodeEnv, ns: str, body: dict[str, Any]) -> Any:
    create(rn, ns, body)
    return wait_running(rn, ns, body["metadata"]["name"])


def test_fractional_pods_start_and_each_container_sees_its_own_slices(rn: RealNodeEnv, ns: str) -> None:
    pods = [
        run(rn, ns, gpu_pod("small", [(1, 30, 4096)])),
        run(rn, ns, gpu_pod("large", [(1, 50, 8192)])),
        run(rn, ns, gpu_pod("two-gpus", [(2, 20, 2048)])),
    ]
    assert all(p.spec.node_name == REAL.name for p in pods)
    assert check_identity(rn, pods) == []
    env = received(rn, pods[0])["0"]
    assert env["GPUPOOL_BACKEND"] == "none"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert slices_seen(env) == slices_assigned(assignment_of(pods[0]), "0")
    two = received(rn, pods[2])["0"]
    assert len(set(two["NVIDIA_VISIBLE_DEVICES"].split(","))) == 2  # one slice on each GPU


def test_a_pod_asking_compute_and_memory_is_admitted_by_the_kubelet(rn: RealNodeEnv, ns: str) -> None:
    # gpupool.io/gpu-compute and gpupool.io/gpu-memory are not advertised by any device plugin: the kubelet's
    # admission drops such extended resources before its fit check instead of failing the pod with OutOf...
    node = rn.v1.read_node(REAL.name)
    assert "gpupool.io/gpu-compute" not in (node.status.allocatable or {})
    pod = run(rn, ns, gpu_pod("asks-all-three", [(1, 40, 10240)]))
    limits = pod.spec.containers[0].resources.limits
    assert set(limits) >= {"gpupool.io/gpu", "gpupool.io/gpu-compute", "gpupool.io/gpu-memory"}
    assert pod.status.reason is None
    assert check_identity(rn, [pod]) == []


def _twenty(rn: RealNodeEnv, ns: str, prefix: str, order: list[int]) -> list[Any]:
    """20 one-slot pods of different sizes, created at once (threads) in *order*."""
    bodies = {i: gpu_pod(f"{prefix}-{i:02d}", [(1, 3 + i % 5, 1024 + 256 * i)]) for i in range(20)}
    threads = [threading.Thread(target=create, args=(rn, ns, bodies[i])) for i in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [wait_running(rn, ns, bodies[i]["metadata"]["name"], timeout=240) for i in range(20)]


def _delete_all(rn: RealNodeEnv, ns: str) -> None:
    for p in rn.v1.list_namespaced_pod(ns).items:
        rn.v1.delete_namespaced_pod(p.metadata.name, ns, grace_period_seconds=0)
    wait_for(lambda: not rn.v1.list_namespaced_pod(ns).items, timeout=120, what=f"the pods of {ns} gone")


def test_twenty_pods_of_one_slot_and_different_sizes_each_get_their_own(rn: RealNodeEnv, ns: str) -> None:
    pods = _twenty(rn, ns, "fwd", list(range(20)))
    assert check_identity(rn, pods) == []
    _delete_all(rn, ns)
    pods = _twenty(rn, ns, "rev", list(reversed(range(20))))
    assert check_identity(rn, pods) == []


def record_problems(rn: RealNodeEnv, ns: str, pods: list[Any]) -> list[str]:
    """Where the kubelet's own record (PodResources List) differs from gpupool's assignment."""
    record = rn.node.pod_devices()
    out = []
    for pod in pods:
        a = assignment_of(pod)
        for cname, key in container_keys(pod).items():
            want = sorted(s["slot"] for s in assigned(a, key))
            got = record.get((ns, pod.metadata.name, cname), {}).get("gpupool.io/gpu", [])
            if got != want:
                out.append(f"{pod.metadata.name}/{cname}: kubelet recorded {got}, gpupool assigned {want}")
    return out


# Was a race (xfail until sprint 5): the kubelet sees a bound pod (its own watch) and may call
# GetPreferredAllocation before the node agent's pod cache has the pod's assignment; the agent answered "kubelet
# order" and the kubelet recorded slot ids that matched no assignment (about half the runs). Since the identity fix
# the agent re-lists on such a miss: the test passed in 6 runs of its own and in every CI run since, so it is a
# plain test again and a regression fails it.
def test_the_kubelets_record_agrees_with_gpupools_assignments(rn: RealNodeEnv, ns: str) -> None:
    pods = [
        run(rn, ns, gpu_pod("rec-a", [(1, 10, 1024), (2, 15, 2048)])),
        run(rn, ns, gpu_pod("rec-b", [(1, 25, 4096)])),
    ]
    assert check_identity(rn, pods) == []
    assert record_problems(rn, ns, pods) == []


def test_init_and_multi_container_pods(rn: RealNodeEnv, ns: str) -> None:
    pod = run(rn, ns, gpu_pod("multi", [(1, 30, 2048), (1, 40, 4096)], inits=[(1, 20, 1024)]))
    envs = received(rn, pod)
    assert set(envs) == {"0", "1", "init:0"}
    assert check_identity(rn, [pod]) == []
    a = assignment_of(pod)
    assert slices_seen(envs["init:0"]) == slices_assigned(a, "init:0")
    assert slices_seen(envs["0"]) != slices_seen(envs["1"])


def test_deleting_a_pod_frees_its_slices_on_the_real_node(rn: RealNodeEnv, ns: str) -> None:
    whole = [(2, 100, 81920)]  # both GPUs, fully
    first = run(rn, ns, gpu_pod("first", whole))
    create(rn, ns, gpu_pod("second", whole))
    with pytest.raises(TimeoutError):  # no room on the real node while the first holds both GPUs
        wait_for(lambda: rn.v1.read_namespaced_pod("second", ns).spec.node_name, timeout=5, what="second bound")
    rn.v1.delete_namespaced_pod("first", ns, grace_period_seconds=0)
    second = wait_running(rn, ns, "second")
    assert check_identity(rn, [second]) == []
    assert {s["gpu"] for s in assignment_of(second)["slices"]} == {s["gpu"] for s in assignment_of(first)["slices"]}


def test_kubelet_restart_keeps_running_pods_and_starts_new_ones(rn: RealNodeEnv, ns: str) -> None:
    before = run(rn, ns, gpu_pod("before", [(1, 30, 2048)]))
    env_before = received(rn, before)
    rn.node.restart_kubelet()
    wait_capacity(rn, REAL.gpu_slots)  # the node agent registered again with the new kubelet
    after = run(rn, ns, gpu_pod("after", [(1, 35, 3072)]))
    assert check_identity(rn, [before, after]) == []
    still = rn.v1.read_namespaced_pod("before", ns)
    assert still.status.container_statuses[0].restart_count == 0
    assert received(rn, still) == env_before
    # the restarted kubelet restored the running pod's devices from its checkpoint
    assert record_problems(rn, ns, [still]) == []


def _running_or_rejected(rn: RealNodeEnv, ns: str, name: str, timeout: float = 180) -> Any:
    """The pod once it runs, or once the kubelet rejected it at admission (then: None)."""

    def settled() -> Any:
        p = rn.v1.read_namespaced_pod(name, ns)
        if p.status.phase == "Failed":
            assert p.status.reason == "UnexpectedAdmissionError", f"{name}: {p.status.reason}: {p.status.message}"
            return "rejected"
        statuses = p.status.container_statuses or []
        return p if p.status.phase == "Running" and statuses and all(s.state.running for s in statuses) else None

    got = wait_for(settled, timeout=timeout, what=f"{ns}/{name} running or rejected", interval=0.5)
    return None if got == "rejected" else got


def test_node_agent_restart_mid_stream_of_allocates(rn: RealNodeEnv, ns: str) -> None:
    # Pods the kubelet admits while no plugin serves gpupool.io/gpu are rejected by the kubelet itself
    # (UnexpectedAdmissionError: devicemanager checks registration before the device count, kubernetes#109595);
    # every pod that runs must run on its own slices, and a rejected pod, created again, runs on its own.
    before = [run(rn, ns, gpu_pod(f"before-{i}", [(1, 5 + i, 1024 * (i + 1))])) for i in range(3)]
    middle = [gpu_pod(f"middle-{i}", [(1, 10 + i, 2048 * (i + 1))]) for i in range(3)]
    for body in middle:
        create(rn, ns, body)
    rn.cluster.restart_process(rn.agent, wait=False)  # while the kubelet admits the middle pods
    rn.cluster.wait_ready(rn.agent, timeout=60)
    wait_capacity(rn, REAL.gpu_slots)
    after = [run(rn, ns, gpu_pod(f"after-{i}", [(1, 15 + i, 4096 + 1024 * i)])) for i in range(3)]
    settled = [_running_or_rejected(rn, ns, b["metadata"]["name"]) for b in middle]
    again = []
    for body, pod in zip(middle, settled, strict=True):
        if pod is None:  # rejected: what a controller (Job, ReplicaSet) would do is create it again
            rn.v1.delete_namespaced_pod(body["metadata"]["name"], ns, grace_period_seconds=0)
            wait_for(lambda b=body: not _exists(rn, ns, b["metadata"]["name"]), timeout=60, what="rejected pod gone")
            again.append(run(rn, ns, body))
    running = [p for p in settled if p is not None]
    assert check_identity(rn, [rn.v1.read_namespaced_pod(p.metadata.name, ns) for p in before]) == []
    assert check_identity(rn, running + again + after) == []


def _exists(rn: RealNodeEnv, ns: str, name: str) -> bool:
    return any(p.metadata.name == name for p in rn.v1.list_namespaced_pod(ns).items)
