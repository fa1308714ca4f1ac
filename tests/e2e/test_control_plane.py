"""The local control plane itself: apiserver, kwok fake GPU nodes, default scheduler, resource names.

These pin down the ground the gpupool e2e tests stand on, and document DESIGN.md §1.1: the whitepaper alias
``pool.kubernetes.io/gpu`` is accepted by the API server but is a *native* resource name, so the default
scheduler can never place a pod that still carries it.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from e2e.cluster import AUDIT_NODES, K8S_VERSION, Cluster, missing_binaries
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


def _kwok_node_watches(c: Cluster) -> list[str]:
    """The resourceVersion each of kwok's Node watches started from, in order (the audit log)."""
    out = []
    for line in c.audit_log.read_text().splitlines():
        e = json.loads(line)
        started = (e.get("verb"), e.get("stage")) == ("watch", "ResponseStarted")
        if started and e["userAgent"].startswith("kwok/") and (e.get("objectRef") or {}).get("resource") == "nodes":
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(e["requestURI"]).query)
            out.append(q.get("resourceVersion", [""])[0])
    return out


def _terminated_node_watchers(c: Cluster) -> float:
    for line in c.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if line.startswith('apiserver_terminated_watchers_total{group="",resource="nodes"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_kwok_resumes_its_node_watch_where_it_left_off(tmp_path: Path) -> None:
    """When the API server drops a Node watch whose reader fell behind, kwok must watch again from the last
    resourceVersion it saw. kwok v0.8.0's informers asked every watch for resourceVersion=0, so its next watch began
    with every Node as an ADDED event: 5,000 watch events at 5,000 nodes, several times a bench phase on a loaded
    box, and more work for kwok, which fell behind again (docs/e2e.md "kwok's Node watch"). e2e/build.sh builds
    kwok so that a watch keeps the reflector's resourceVersion. Here kwok is paused while its Nodes change until the
    API server drops its watch, then resumed."""
    if missing_binaries():
        pytest.skip("k8s binaries not found (run e2e/build.sh)")
    c = Cluster(run_dir=tmp_path / "cluster", audit_policy=AUDIT_NODES)
    c.up()
    try:
        names = [n.name for n in DEFAULT_NODES]
        c.wait_nodes_ready(names, timeout=60)
        wait_for(lambda: _kwok_node_watches(c), 30, "kwok's first Node watch")
        v1 = kubernetes.client.CoreV1Api(c.api_client())
        dropped = _terminated_node_watchers(c)
        pid = c.processes["kwok"].pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:  # every Node event now piles up in kwok's stream until the API server gives up on it
            with ThreadPoolExecutor(8) as pool:
                for rnd in range(60):  # 140 Node changes a round: every patch sets another label value

                    def churn(item: tuple[int, str]) -> None:
                        label = {"e2e.gpupool.io/churn": f"{rnd}-{item[0]}"}  # noqa: B023
                        v1.patch_node(item[1], {"metadata": {"labels": label}})

                    list(pool.map(churn, enumerate(names * 20)))
                    if _terminated_node_watchers(c) > dropped:
                        break
                else:
                    pytest.fail("the API server never dropped a Node watch while kwok was paused")
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: len(_kwok_node_watches(c)) >= 2, 60, "kwok watching Nodes again")
        first, *again = _kwok_node_watches(c)
        assert again and all(rv not in ("", "0") for rv in again), (
            f"kwok watched Nodes again from resourceVersion {again}: every Node sent again (first watch: {first!r})"
        )
    finally:
        c.down()


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
