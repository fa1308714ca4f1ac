"""The node agent against a real kube-apiserver (e2e/cluster.py): CRD schema, status subresource, pod watch.

Skipped when the control-plane binaries are missing (run e2e/build.sh).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deviceplugin.agent import Agent
from deviceplugin.api import pb2
from deviceplugin.inventory import NvmlInventory
from deviceplugin.kube import Kube, KubeError, load_api_client
from deviceplugin.settings import DevicePluginSettings
from e2e.polling import wait_for
from gpupool import resources
from tests.deviceplugin.helpers import KEY, FakeKubelet, FakeNvmlBackend, assignment_for, make_pod, nvml_devices

ROOT = Path(__file__).resolve().parents[2]

e2e_cluster = pytest.importorskip("e2e.cluster")


@pytest.fixture(scope="module")
def real_kube() -> Iterator[tuple[Kube, Any]]:
    if e2e_cluster.missing_binaries():
        pytest.skip("k8s binaries not found in $GPUPOOL_E2E_BIN (run e2e/build.sh)")
    run_dir = tempfile.mkdtemp(prefix="gpupool-dp-e2e-")
    cluster = e2e_cluster.Cluster(run_dir=run_dir, nodes=[])
    cluster.up(kwok=False, nodes=False)
    try:
        cluster.kubectl("apply", "-f", str(ROOT / "crds" / "gpunode.yaml"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/gpunodes.gpupool.io", "--timeout=30s")
        yield Kube(load_api_client(str(cluster.kubeconfig))), cluster
    finally:
        cluster.down(remove_run_dir=True)
        shutil.rmtree(run_dir, ignore_errors=True)


def test_agent_against_a_real_api_server(real_kube: tuple[Kube, Any]) -> None:
    kube, cluster = real_kube
    cluster.create_namespace("dp-real")  # waits for its default ServiceAccount
    node = "real-node-0"
    kube.request("POST", "/api/v1/nodes", body={"metadata": {"name": node}}, content_type="application/json")
    directory = Path(tempfile.mkdtemp(prefix="dp"))
    (directory / "key").write_bytes(KEY)
    settings = DevicePluginSettings(
        node_name=node,
        plugin_dir=str(directory),
        signing_key_file=str(directory / "key"),
        backend="mps",
        kubelet_poll_seconds=0.05,
        health_interval_seconds=0.05,
        heartbeat_interval_seconds=0.5,
        metrics_enabled=False,
        agent_endpoint="10.0.0.1:9403",
    )
    nvml = FakeNvmlBackend(nvml_devices(2))
    kubelet = FakeKubelet(directory)
    kubelet.start()
    agent = Agent(settings, kube, NvmlInventory(nvml, numa_of=lambda _: 0), KEY)
    agent.start()
    try:
        kubelet.wait_registration()
        status = wait_for(lambda: (kube.get_gpunode(node) or {}).get("status"))
        assert [g["health"] for g in status["gpus"]] == ["Healthy", "Healthy"]
        assert status["agentEndpoint"] == "10.0.0.1:9403" and status["slotsPerGPU"] == 32
        labels = wait_for(lambda: kube.request("GET", f"/api/v1/nodes/{node}")["metadata"].get("labels"))
        assert labels["gpupool.io/gpu-count"] == "2"

        # the API server assigns the uid; the assignment is written after creation, as the extender does
        pod = make_pod("real-pod", node, [1], namespace="dp-real")
        del pod["metadata"]["uid"]
        created = kube.request("POST", "/api/v1/namespaces/dp-real/pods", body=pod, content_type="application/json")
        pod["metadata"]["uid"] = created["metadata"]["uid"]
        uuid = nvml.devices[1].uuid
        text = assignment_for(pod, node, [(0, uuid, "gpu1-4", 30, 2048)])
        kube.patch_pod_annotations("dp-real", "real-pod", {resources.ASSIGNMENT: text})
        wait_for(lambda: [e.name for e in agent.cache.entries()] == ["real-pod"])
        with kubelet.dial(settings.socket_name) as stub:
            response = stub.Allocate(
                pb2.AllocateRequest(container_requests=[pb2.ContainerAllocateRequest(devices_ids=["gpu1-4"])]),
                timeout=10,
            )
        c = response.container_responses[0]
        assert c.envs["NVIDIA_VISIBLE_DEVICES"] == uuid
        assert c.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=2048M"
        annotations = kube.request("GET", "/api/v1/namespaces/dp-real/pods/real-pod")["metadata"]["annotations"]
        assert json.loads(annotations[resources.ALLOCATED]) == ["0"]

        nvml.failing[0] = "NVML: GPU is lost"
        wait_for(lambda: [g["health"] for g in kube.get_gpunode(node)["status"]["gpus"]] == ["Unhealthy", "Healthy"])
        # the status subresource is the only way in: a status in a main-resource patch is ignored
        kube.request(
            "PATCH",
            f"/apis/gpupool.io/v1alpha1/gpunodes/{node}",
            body={"status": {"agentEndpoint": "forged"}},
            content_type="application/merge-patch+json",
        )
        assert kube.get_gpunode(node)["status"]["agentEndpoint"] == "10.0.0.1:9403"
        with pytest.raises(KubeError) as invalid:  # the CRD schema holds
            kube.patch_gpunode_status(node, {"slotsPerGPU": 0})
        assert invalid.value.status == 422
    finally:
        agent.stop()
        kubelet.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_usage_reaches_the_gpunode_status_through_the_crd_schema(real_kube: tuple[Kube, Any]) -> None:
    from deviceplugin.gpunode import Publisher, UsageReporter
    from gpupool.inventory import GPUInfo

    kube, _ = real_kube
    node = "real-usage-0"
    mib, s = 1 << 20, 1_000_000_000
    samples = [("ns", "a", 3 * mib, 4 * mib, 2 * s), ("ns", "b", mib, 2 * mib, 0)]
    now = [0.0]
    publisher = Publisher(kube, node, 32, 16, usage=UsageReporter(lambda: samples, 60, clock=lambda: now[0]))
    gpus = [GPUInfo(uuid="GPU-u0", index=0, model="A100", memory_mib=81920)]
    publisher.publish(gpus)
    usage = kube.get_gpunode(node)["status"]["usage"]
    assert usage["pods"] == [
        {"namespace": "ns", "name": "a", "memoryUsedMiB": 3, "memoryLimitMiB": 4},
        {"namespace": "ns", "name": "b", "memoryUsedMiB": 1, "memoryLimitMiB": 2},
    ]
    now[0] = 30.0  # a heartbeat before the usage interval: the patch leaves status.usage as it was
    samples[0] = ("ns", "a", 4 * mib, 4 * mib, 2 * s)
    publisher.publish(gpus)
    status = kube.get_gpunode(node)["status"]
    assert status["usage"] == usage and status["gpus"][0]["uuid"] == "GPU-u0"
    now[0] = 60.0
    samples[:] = [("ns", "a", 4 * mib, 4 * mib, 32 * s)]  # pod b left; a ran 30 s of the last 60 s
    publisher.publish(gpus)
    usage = kube.get_gpunode(node)["status"]["usage"]
    assert usage["windowSeconds"] == 60
    assert usage["pods"] == [
        {"namespace": "ns", "name": "a", "memoryUsedMiB": 4, "memoryLimitMiB": 4, "computePercent": 50}
    ]
    with pytest.raises(KubeError) as invalid:  # the CRD schema holds
        kube.patch_gpunode_status(node, {"usage": {"pods": [{"namespace": "ns", "name": "a", "memoryUsedMiB": -1}]}})
    assert invalid.value.status == 422


def test_gpunode_status_lists_keep_their_schema_contract(real_kube: tuple[Kube, Any]) -> None:
    """`status.gpus` (the node agent's) stays keyed by uuid, so the API server refuses a GPU listed twice;
    `status.allocated` (the controller's, written whole up to 10 times a second in a burst) is atomic, so its
    managedFields hold one entry instead of one per GPU: a keyed list costs the API server ~25 % more CPU per
    status write (bench/gpunode_status_write.py, docs/e2e.md issue 16)."""
    kube, _ = real_kube
    node = "real-lists-0"
    kube.create_gpunode(node)
    gpu = {"uuid": "GPU-l0", "index": 0, "model": "A100", "memoryMiB": 81920}
    with pytest.raises(KubeError) as twice:
        kube.patch_gpunode_status(node, {"gpus": [gpu, {**gpu, "index": 1}]})
    assert twice.value.status == 422 and "Duplicate value" in str(twice.value)
    kube.patch_gpunode_status(node, {"gpus": [gpu, {**gpu, "uuid": "GPU-l1", "index": 1}]})
    row = {"compute": 50, "memoryMiB": 4096, "slices": 1}
    kube.patch_gpunode_status(node, {"allocated": [{"uuid": "GPU-l0", **row}, {"uuid": "GPU-l1", **row}]})
    kube.patch_gpunode_status(node, {"allocated": [{"uuid": "GPU-l1", **row, "compute": 20}]})  # written whole
    obj = kube.get_gpunode(node)
    assert obj["status"]["allocated"] == [{"uuid": "GPU-l1", **row, "compute": 20}]
    assert [g["uuid"] for g in obj["status"]["gpus"]] == ["GPU-l0", "GPU-l1"]
    fields = [m["fieldsV1"]["f:status"] for m in obj["metadata"]["managedFields"] if m.get("subresource") == "status"]
    allocated = [f["f:allocated"] for f in fields if "f:allocated" in f]
    gpus = [f["f:gpus"] for f in fields if "f:gpus" in f]
    assert allocated == [{}], f"status.allocated is tracked per key: {allocated}"
    assert gpus and all(any(k.startswith("k:") for k in g) for g in gpus), gpus
