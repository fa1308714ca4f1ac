"""Reserved nodes in the extender: GPUQueues with `spec.reserveNodes` (watched) keep other pods off their nodes."""

from __future__ import annotations

from typing import Any

from gpupool import resources
from tests.extender.conftest import GPUNODES, create_pod, filter_body, gpunode, pod, wait_for

GPUQUEUES = "/apis/gpupool.io/v1alpha1/gpuqueues"


def labelled_node(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


def reserving_queue(name: str, **selector: str) -> dict[str, Any]:
    return {
        "apiVersion": "gpupool.io/v1alpha1",
        "kind": "GPUQueue",
        "metadata": {"name": name},
        "spec": {"namespaces": [name], "nominalQuota": {"compute": 800}, "nodeSelector": selector,
                 "reserveNodes": True},
    }  # fmt: skip


def test_filter_keeps_other_queues_pods_and_remote_slices_off_reserved_nodes(kube, ext):
    """Issue 11 finding 3: nodes selected by a queue were not reserved (other pods and remote slices landed)."""
    kube.create("/api/v1/nodes", labelled_node("a-0", tenant="a"))
    kube.create("/api/v1/nodes", labelled_node("open-0"))
    kube.create("/api/v1/nodes", labelled_node("cpu-0"))
    kube.create(GPUNODES, gpunode("a-0", gpus=2))
    kube.create(GPUNODES, gpunode("open-0", gpus=1))
    kube.create(GPUNODES, gpunode("cpu-0", gpus=0))
    kube.create(GPUQUEUES, reserving_queue("team-a", tenant="a"))
    service = ext.service
    service.narrow_filter = False  # which nodes pass: the wide answer (test_narrow_filter.py: the narrowed)
    wait_for(lambda: service.ledger.has_node("cpu-0") and service.gpuqueues == {"team-a"}, 10, "nodes and queue")
    wait_for(lambda: service.placer.reservations.owners("a-0") == {"team-a"}, 10, "node a-0 reserved")
    assert service.readiness()["synced"]["gpuqueues"] is True
    names = ["a-0", "open-0"]

    other = create_pod(kube, pod("other", namespace="team-b", annotations={resources.QUEUE: "team-b"}))
    body = ext.post("filter", filter_body(other, names)).json()
    assert body["NodeNames"] == ["open-0"]
    assert "reserved for the pods of GPUQueue team-a" in body["FailedAndUnresolvableNodes"]["a-0"]

    mine = create_pod(kube, pod("mine", namespace="team-a", annotations={resources.QUEUE: "team-a"}))
    assert ext.post("filter", filter_body(mine, names)).json()["NodeNames"] == names

    # a pool pod on a node without GPUs: two slices need two GPUs, and only open-0's one is open to team-b
    remote = {resources.QUEUE: "team-b", resources.LOCALITY: "pool"}
    two = create_pod(kube, pod("two", namespace="team-b", count=2, annotations=remote))
    assert ext.post("filter", filter_body(two, ["cpu-0"])).json()["NodeNames"] == []
    mine_remote = {**remote, resources.QUEUE: "team-a"}
    mine2 = create_pod(kube, pod("mine2", namespace="team-a", count=2, annotations=mine_remote))
    assert ext.post("filter", filter_body(mine2, ["cpu-0"])).json()["NodeNames"] == ["cpu-0"]

    # the queue stops reserving: the node is open again
    kube.patch(f"{GPUQUEUES}/team-a", {"spec": {"reserveNodes": False}})
    wait_for(lambda: not service.placer.reservations, 10, "the reservation lifted")
    assert ext.post("filter", filter_body(other, names)).json()["NodeNames"] == names
