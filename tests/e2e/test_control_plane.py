"""The local control plane itself: apiserver, kwok fake GPU nodes, default scheduler, resource names.

These pin down the ground the gpupool e2e tests stand on, and document DESIGN.md §1.1: the whitepaper alias
``pool.kubernetes.io/gpu`` is accepted by the API server but is a *native* resource name, so the default
scheduler can never place a pod that still carries it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.cluster import K8S_VERSION, Cluster
from e2e.nodes import DEFAULT_NODES, GPU_MODEL_LABEL, GPU_RESOURCE, KWOK_ANNOTATION, NODE_LEASE_SECONDS
from e2e.polling import wait_for

pytestmark = pytest.mark.e2e

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def _pod(name: str, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": PAUSE_IMAGE}
    resources = spec.pop("resources", None)
    if resources:
        container["resources"] = resources
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [container], "terminationGracePeriodSeconds": 0, **spec},
    }


def _phase(core_v1: Any, ns: str, name: str) -> str:
    return str(core_v1.read_namespaced_pod(name, ns).status.phase)


def test_apiserver_ready(cluster: Cluster) -> None:
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    if cluster.local:
        version = json.loads(cluster.kubectl("get", "--raw", "/version").stdout)
        assert version["gitVersion"] == K8S_VERSION
        client = json.loads(cluster.kubectl("version", "--client", "-o", "json").stdout)
        assert client["clientVersion"]["gitVersion"] == K8S_VERSION


def test_fake_gpu_nodes_become_ready(local_cluster: Cluster, core_v1: Any) -> None:
    names = {n.name for n in DEFAULT_NODES}
    local_cluster.wait_nodes_ready(names, timeout=60)
    nodes = {n.metadata.name: n for n in core_v1.list_node().items}
    assert names <= set(nodes)
    for name in names:
        node = nodes[name]
        assert node.metadata.annotations.get(KWOK_ANNOTATION) == "fake"
        # kwok's node-initialize stage filled in the node info and addresses, and a lease keeps it alive
        assert node.status.addresses, f"{name} has no addresses"
        assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


def test_kwok_holds_node_leases_of_the_configured_duration(local_cluster: Cluster) -> None:
    """kwok reads its lease duration from the KwokConfiguration (one renewal a quarter of it): at 5,000 nodes a
    kubelet's 40 s was more lease writes than this machine's API server kept up with (docs/e2e.md)."""
    names = {n.name for n in DEFAULT_NODES}
    local_cluster.wait_nodes_ready(names, timeout=60)

    def durations() -> dict[str, int]:
        leases = json.loads(local_cluster.kubectl("get", "leases", "-n", "kube-node-lease", "-o", "json").stdout)
        return {x["metadata"]["name"]: x["spec"].get("leaseDurationSeconds") for x in leases["items"]}

    wait_for(lambda: names <= set(durations()), 30, "a lease for every kwok node")
    assert {durations()[n] for n in names} == {NODE_LEASE_SECONDS}


def test_gpu_resource_in_node_allocatable(cluster: Cluster, core_v1: Any) -> None:
    if not cluster.local:
        # kind + chart with fakeInventory: the node agent registers gpupool.io/gpu on real kubelets
        def gpu_nodes() -> list[Any]:
            return [n for n in core_v1.list_node().items if int(n.status.allocatable.get(GPU_RESOURCE, "0")) > 0]

        wait_for(gpu_nodes, timeout=120, what=f"a node with {GPU_RESOURCE} in allocatable")
        return
    nodes = {n.metadata.name: n for n in core_v1.list_node().items}
    kinds = set()
    for spec in DEFAULT_NODES:
        node = nodes[spec.name]
        if spec.gpus:
            want = str(spec.gpus * 32 + 16)
            assert node.status.capacity[GPU_RESOURCE] == want
            assert node.status.allocatable[GPU_RESOURCE] == want
            assert node.metadata.labels[GPU_MODEL_LABEL] == spec.gpu_model
            kinds.add(spec.gpu_model)
        else:
            assert GPU_RESOURCE not in node.status.allocatable
            assert GPU_MODEL_LABEL not in node.metadata.labels
    assert kinds == {"A100-80GB", "T4-16GB", "H100-80GB"}
    assert nodes["gpu-a100-0"].status.allocatable[GPU_RESOURCE] == "272"  # 8 x 32 + 16


def test_pod_with_node_name_goes_running(local_cluster: Cluster, core_v1: Any, namespace: str) -> None:
    core_v1.create_namespaced_pod(namespace, _pod("bound", nodeName="gpu-t4-0"))
    wait_for(lambda: _phase(core_v1, namespace, "bound") == "Running", timeout=30, what="pod bound Running")
    pod = core_v1.read_namespaced_pod("bound", namespace)
    assert pod.spec.node_name == "gpu-t4-0"
    assert pod.status.pod_ip, "kwok assigns a pod IP from --cidr"
    assert all(cs.ready for cs in pod.status.container_statuses)


def test_default_scheduler_places_pod_on_kwok_node(cluster: Cluster, core_v1: Any, namespace: str) -> None:
    # The kwok nodes carry no taints, so no tolerations are needed; the selector keeps the pod on kwok nodes.
    spec: dict[str, Any] = {"nodeSelector": {"type": "kwok"}} if cluster.local else {}
    core_v1.create_namespaced_pod(namespace, _pod("plain", **spec))
    wait_for(
        lambda: core_v1.read_namespaced_pod("plain", namespace).spec.node_name,
        timeout=60,
        what="default-scheduler to bind pod plain",
    )
    wait_for(lambda: _phase(core_v1, namespace, "plain") == "Running", timeout=60, what="pod plain Running")
    pod = core_v1.read_namespaced_pod("plain", namespace)
    assert pod.spec.scheduler_name == "default-scheduler"
    if cluster.local:
        assert pod.spec.node_name in {n.name for n in DEFAULT_NODES}


def test_alias_accepted_by_apiserver_but_default_scheduler_fails_it(
    local_cluster: Cluster, core_v1: Any, namespace: str
) -> None:
    """DESIGN.md §1.1: ``pool.kubernetes.io/gpu`` is a prefixed *native* resource name. The API server
    stores a pod that requests it; no node can ever advertise it, so the default scheduler reports it
    insufficient.
    (Without gpupool's webhook in this namespace the alias is not rewritten: this is the "bypassed" case.)"""
    alias = "pool.kubernetes.io/gpu"
    res = {"requests": {alias: "1"}, "limits": {alias: "1"}}
    created = core_v1.create_namespaced_pod(namespace, _pod("alias", resources=res))
    assert created.spec.containers[0].resources.requests == {alias: "1"}  # stored as written
    assert created.spec.scheduler_name == "default-scheduler"

    def unschedulable() -> str | None:
        pod = core_v1.read_namespaced_pod("alias", namespace)
        for c in pod.status.conditions or []:
            if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                return str(c.message)
        return None

    message = wait_for(unschedulable, timeout=60, what="PodScheduled=False/Unschedulable")
    assert f"Insufficient {alias}" in message
    pod = core_v1.read_namespaced_pod("alias", namespace)
    assert pod.spec.node_name is None

    def failed_event() -> str | None:
        events = core_v1.list_namespaced_event(
            namespace, field_selector="involvedObject.name=alias,reason=FailedScheduling"
        ).items
        return next((e.message for e in events if f"Insufficient {alias}" in (e.message or "")), None)

    wait_for(failed_event, timeout=30, what="a FailedScheduling event naming the alias")
