"""The device plugin against a fake kubelet over real gRPC on unix sockets, with kmock as the API server."""

from __future__ import annotations

import json
import threading
import urllib.request
from concurrent import futures
from typing import Any

import grpc
import pytest

from deviceplugin.api import pb2
from deviceplugin.kube import Kube
from e2e.polling import wait_for
from gpupool import resources
from tests.deviceplugin.conftest import Running
from tests.deviceplugin.helpers import assignment_for, get_pod, make_pod, put_pod

GPU0 = "GPU-00000000-aaaa-bbbb-cccc-dddddddddddd"
GPU1 = "GPU-00000001-aaaa-bbbb-cccc-dddddddddddd"


def allocate(r: Running, *slot_lists: list[str]) -> Any:
    with r.kubelet.dial(r.settings.socket_name) as stub:
        return stub.Allocate(
            pb2.AllocateRequest(container_requests=[pb2.ContainerAllocateRequest(devices_ids=s) for s in slot_lists]),
            timeout=10,
        )


def preferred(r: Running, size: int, available: list[str] | None = None, must: list[str] | None = None) -> list[str]:
    if available is None:
        available = [d.ID for d in first_list(r).devices if d.health == "Healthy"]
    with r.kubelet.dial(r.settings.socket_name) as stub:
        response = stub.GetPreferredAllocation(
            pb2.PreferredAllocationRequest(
                container_requests=[
                    pb2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=available, must_include_deviceIDs=must or [], allocation_size=size
                    )
                ]
            ),
            timeout=10,
        )
    return list(response.container_responses[0].deviceIDs)


def first_list(r: Running) -> Any:
    with r.kubelet.dial(r.settings.socket_name) as stub:
        stream = stub.ListAndWatch(pb2.Empty(), timeout=10)
        first = next(stream)
        stream.cancel()
        return first


def cached(r: Running, *names: str) -> None:
    wait_for(lambda: {e.name for e in r.agent.cache.entries()} >= set(names))


def allocated_keys(kube: Kube, name: str) -> list[str]:
    pod = get_pod(kube, "default", name)
    return json.loads(pod["metadata"]["annotations"].get(resources.ALLOCATED, "[]"))


# --- registration and ListAndWatch ------------------------------------------------------------------------


def test_registers_with_the_kubelet(start_agent: Any) -> None:
    r = start_agent()
    reg = r.kubelet.wait_registration()
    assert reg.version == "v1beta1"
    assert reg.resource_name == "gpupool.io/gpu"
    assert "/" in reg.resource_name and "kubernetes.io/" not in reg.resource_name
    assert not reg.resource_name.startswith("requests.")
    assert reg.endpoint == "gpupool.sock"
    assert reg.options.pre_start_required and reg.options.get_preferred_allocation_available
    with r.kubelet.dial(reg.endpoint) as stub:
        options = stub.GetDevicePluginOptions(pb2.Empty(), timeout=5)
    assert options.get_preferred_allocation_available and options.pre_start_required
    wait_for(r.agent.ready)


def test_list_and_watch_slots_topology_and_health_flip(start_agent: Any, kube: Kube) -> None:
    r = start_agent()
    r.kubelet.wait_registration()
    with r.kubelet.dial(r.settings.socket_name) as stub:
        stream = stub.ListAndWatch(pb2.Empty(), timeout=30)
        first = next(stream)
        ids = [d.ID for d in first.devices]
        assert len(ids) == 2 * 32 + 16
        assert ids[:2] == ["gpu0-0", "gpu0-1"] and ids[32] == "gpu1-0" and ids[-1] == "remote-15"
        by_id = {d.ID: d for d in first.devices}
        assert [n.ID for n in by_id["gpu0-5"].topology.nodes] == [0]
        assert [n.ID for n in by_id["gpu1-5"].topology.nodes] == [1]
        assert not by_id["remote-3"].HasField("topology")
        assert all(d.health == "Healthy" for d in first.devices)

        r.nvml.failing[1] = "NVML: GPU is lost"  # NVML errors on GPU 1
        update = next(stream)
        health = {d.ID: d.health for d in update.devices}
        assert {health[f"gpu1-{k}"] for k in range(32)} == {"Unhealthy"}
        assert {health[f"gpu0-{k}"] for k in range(32)} == {"Healthy"}
        assert health["remote-0"] == "Healthy"
        stream.cancel()

    def gpunode_says_unhealthy() -> bool:
        obj = kube.get_gpunode(r.node)
        gpus = ((obj or {}).get("status") or {}).get("gpus") or []
        return [g["health"] for g in gpus] == ["Healthy", "Unhealthy"]

    wait_for(gpunode_says_unhealthy)
    status = kube.get_gpunode(r.node)["status"]
    assert status["agentEndpoint"] == f"{r.node}.agents:9403"
    assert status["slotsPerGPU"] == 32 and status["remoteSlots"] == 16 and status["heartbeatTime"]
    assert status["gpus"][0] == {
        "uuid": GPU0,
        "index": 0,
        "model": "NVIDIA A100-SXM4-80GB",
        "memoryMiB": 81920,
        "health": "Healthy",
        "numa": 0,
    }


def test_critical_xid_marks_gpu_unhealthy_but_application_xid_does_not(start_agent: Any) -> None:
    r = start_agent()
    r.nvml.xids.put((GPU0, 13))  # application error: GPU stays healthy
    wait_for(lambda: r.nvml.xids.empty())
    r.agent.check_health()
    assert all(g.healthy for g in r.agent.state.gpus)
    r.nvml.xids.put((GPU0, 79))  # fallen off the bus
    wait_for(lambda: [g.healthy for g in r.agent.state.gpus] == [False, True])


def test_list_and_watch_ends_cleanly_on_shutdown(start_agent: Any) -> None:
    r = start_agent()
    r.kubelet.wait_registration()
    received: list[Any] = []
    errors: list[Any] = []
    with r.kubelet.dial(r.settings.socket_name) as stub:
        stream = stub.ListAndWatch(pb2.Empty(), timeout=30)

        def consume() -> None:
            try:
                for item in stream:
                    received.append(item)
            except grpc.RpcError as exc:
                errors.append(exc)

        thread = threading.Thread(target=consume)
        thread.start()
        wait_for(lambda: received)
        r.agent.stop()
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert errors == [] or errors[0].code() in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED)


# --- Allocate ------------------------------------------------------------------------------------------------


def test_allocate_one_slice_mps(start_agent: Any, kube: Kube) -> None:
    r = start_agent(backend="mps")
    pod = make_pod("one", r.node, [1])
    put_pod(kube, pod, assignment_for(pod, r.node, [(0, GPU1, "gpu1-7", 30, 4096)]))
    cached(r, "one")
    assert preferred(r, 1) == ["gpu1-7"]
    response = allocate(r, ["gpu1-7"])
    c = response.container_responses[0]
    assert c.envs["NVIDIA_VISIBLE_DEVICES"] == GPU1
    assert c.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "30"
    assert c.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=4096M"
    assert c.envs["CUDA_MPS_PIPE_DIRECTORY"] == "/run/nvidia/mps"
    assert [(m.container_path, m.host_path) for m in c.mounts] == [("/run/nvidia/mps", "/run/nvidia/mps")]
    assert json.loads(c.envs["GPUPOOL_SLICES"]) == [
        {"gpu": GPU1, "node": r.node, "compute": 30, "memory": 4096, "slot": "gpu1-7", "remote": False, "device": 0}
    ]
    assert "GPUPOOL_REMOTE_SLICES" not in c.envs
    assert c.annotations["gpupool.io/pod-uid"] == pod["metadata"]["uid"]
    assert c.annotations["gpupool.io/slots"] == "gpu1-7"
    assert c.annotations["gpupool.io/match"] == "exact"
    wait_for(lambda: allocated_keys(kube, "one") == ["0"])
    # served: no longer offered by GetPreferredAllocation
    assert preferred(r, 1, available=["gpu0-0", "gpu1-7"]) == ["gpu0-0"]


def test_allocate_several_slices_hami_core_and_init_container(start_agent: Any, kube: Kube) -> None:
    r = start_agent(backend="hami-core")
    pod = make_pod("multi", r.node, [2])
    text = assignment_for(pod, r.node, [(0, GPU1, "gpu1-3", 40, 2048), (0, GPU0, "gpu0-9", 25, 1024)])
    put_pod(kube, pod, text)
    cached(r, "multi")
    pick = preferred(r, 2)
    assert sorted(pick) == ["gpu0-9", "gpu1-3"]
    c = allocate(r, pick).container_responses[0]
    # ordered by GPU index: device 0 = GPU0, device 1 = GPU1
    assert c.envs["NVIDIA_VISIBLE_DEVICES"] == f"{GPU0},{GPU1}"
    assert c.envs["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert c.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "1024m"
    assert c.envs["CUDA_DEVICE_MEMORY_LIMIT_1"] == "2048m"
    assert c.envs["CUDA_DEVICE_SM_LIMIT"] == "25"  # the minimum of the container's slices
    assert {(m.container_path, m.host_path, m.read_only) for m in c.mounts} == {
        ("/usr/local/vgpu", "/usr/local/vgpu", True),
        ("/etc/ld.so.preload", "/usr/local/vgpu/ld.so.preload", True),
    }
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in c.envs
    assert [s["device"] for s in json.loads(c.envs["GPUPOOL_SLICES"])] == [0, 1]


def test_backend_none_and_cdi(start_agent: Any, kube: Kube) -> None:
    r = start_agent(backend="none", cdi=True)
    pod = make_pod("cdi", r.node, [1])
    put_pod(kube, pod, assignment_for(pod, r.node, [(0, GPU0, "gpu0-1", 50, 1000)]))
    c = allocate(r, ["gpu0-1"]).container_responses[0]
    assert [d.name for d in c.cdi_devices] == [f"nvidia.com/gpu={GPU0}"]
    assert c.envs["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert not [k for k in c.envs if k.startswith(("CUDA_MPS", "CUDA_DEVICE_MEMORY", "CUDA_DEVICE_SM"))]
    assert list(c.mounts) == []
    assert "GPUPOOL_SLICES" in c.envs


@pytest.mark.parametrize("order", [("small", "pair"), ("pair", "small")])
def test_pods_of_different_slot_counts_served_in_any_admission_order(
    start_agent: Any, kube: Kube, order: tuple[str, str]
) -> None:
    """Both unserved at once (the extender allows that for different slot counts): whichever the kubelet
    admits first, each container gets its own slices."""
    r = start_agent(backend="mps", node=f"sizes-{order[0]}")
    small = make_pod(f"small-{order[0]}", r.node, [1], created="2025-01-01T00:00:00Z")
    pair = make_pod(f"pair-{order[0]}", r.node, [2], created="2025-01-01T00:00:00Z")
    put_pod(kube, small, assignment_for(small, r.node, [(0, GPU0, "gpu0-2", 60, 3000)], at="2025-01-01T00:00:05Z"))
    put_pod(
        kube,
        pair,
        assignment_for(pair, r.node, [(0, GPU0, "gpu0-4", 20, 1000), (0, GPU1, "gpu1-4", 20, 1000)],
                       at="2025-01-01T00:00:05Z"),
    )  # fmt: skip
    names = {"small": small["metadata"]["name"], "pair": pair["metadata"]["name"]}
    cached(r, *names.values())
    expected = {"small": (1, ["gpu0-2"], "0=3000M"), "pair": (2, ["gpu0-4", "gpu1-4"], "0=1000M,1=1000M")}
    available = [d.ID for d in first_list(r).devices]
    for kind in order:
        size, slots, memory = expected[kind]
        pick = preferred(r, size, available)
        assert sorted(pick) == slots
        c = allocate(r, pick).container_responses[0]
        assert c.annotations["gpupool.io/pod"] == f"default/{names[kind]}"
        assert c.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == memory
        available = [s for s in available if s not in pick]
    wait_for(lambda: all(allocated_keys(kube, n) == ["0"] for n in names.values()))


@pytest.mark.parametrize("order", [("early", "late"), ("late", "early")])
def test_same_size_pods_served_in_turn_in_any_order(start_agent: Any, kube: Kube, order: tuple[str, str]) -> None:
    """Pods of one slot count: the extender binds the next only once the kubelet took the previous one's devices,
    so whichever is bound first (the one created earlier or later), the unserved candidate is unique."""
    r = start_agent(backend="mps", node=f"turns-{order[0]}")
    pods = {
        "early": make_pod(f"early-{order[0]}", r.node, [1], created="2025-01-01T00:00:00Z"),
        "late": make_pod(f"late-{order[0]}", r.node, [1], created="2025-01-01T00:00:01Z"),
    }
    slices = {"early": (0, GPU0, "gpu0-2", 60, 3000), "late": (0, GPU0, "gpu0-4", 20, 1000)}
    available = [d.ID for d in first_list(r).devices]
    for step, kind in enumerate(order):
        p = pods[kind]
        name = p["metadata"]["name"]
        put_pod(kube, p, assignment_for(p, r.node, [slices[kind]], at=f"2025-01-01T00:00:0{5 - step}Z"))
        cached(r, name)
        pick = preferred(r, 1, available)
        assert pick == [slices[kind][2]]
        c = allocate(r, pick).container_responses[0]
        assert c.annotations["gpupool.io/pod"] == f"default/{name}"
        assert c.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == str(slices[kind][3])
        available = [s for s in available if s not in pick]
        wait_for(lambda name=name: allocated_keys(kube, name) == ["0"])


def test_a_running_pod_without_a_record_is_served(start_agent: Any, kube: Kube) -> None:
    """A pod the kubelet admitted (Running) counts as served even when its record was never written (a failed
    write, a restarted agent), as the extender counts it: it is never proposed for the next pod of its size."""
    r = start_agent(backend="mps")
    ran = make_pod("ran", r.node, [1])
    ran["status"] = {"phase": "Running"}
    put_pod(kube, ran, assignment_for(ran, r.node, [(0, GPU0, "gpu0-3", 50, 5000)], at="2025-01-01T00:00:01Z"))
    nxt = make_pod("next", r.node, [1])
    put_pod(kube, nxt, assignment_for(nxt, r.node, [(0, GPU1, "gpu1-5", 10, 1000)], at="2025-01-01T00:00:09Z"))
    cached(r, "ran", "next")
    # the kubelet picked slots nobody was assigned: the fallback serves the one unserved pod of that size
    c = allocate(r, ["gpu0-20"]).container_responses[0]
    assert c.annotations["gpupool.io/pod"] == "default/next" and c.annotations["gpupool.io/match"] == "fallback"
    assert c.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "10"


def test_preferred_allocation_relists_when_the_watch_lags(start_agent: Any, kube: Kube) -> None:
    """The kubelet may ask before the pod watch delivered the bound pod: the plugin re-lists once, so the kubelet
    is offered the assignment's slots rather than its own order."""
    r = start_agent(backend="mps")
    wait_for(lambda: r.agent.cache.synced.is_set())
    pod = make_pod("lagging", r.node, [1])
    put_pod(kube, pod, assignment_for(pod, r.node, [(0, GPU1, "gpu1-9", 30, 2000)]))
    cached(r, "lagging")
    r.agent.cache.delete(pod)  # as if the watch had not delivered it yet
    assert "lagging" not in {e.name for e in r.agent.cache.entries()}
    assert preferred(r, 1) == ["gpu1-9"]
    c = allocate(r, ["gpu1-9"]).container_responses[0]
    assert c.annotations["gpupool.io/pod"] == "default/lagging" and c.annotations["gpupool.io/match"] == "exact"


def test_concurrent_allocates_for_different_pods(start_agent: Any, kube: Kube) -> None:
    r = start_agent()
    n = 12
    for i in range(n):
        pod = make_pod(f"p{i:02d}", r.node, [1], created=f"2025-01-01T00:00:{i:02d}Z")
        put_pod(kube, pod, assignment_for(pod, r.node, [(0, GPU0 if i % 2 else GPU1, f"gpu{1 - i % 2}-{i}", 5, 100)]))
    cached(r, *[f"p{i:02d}" for i in range(n)])
    slots_of = {f"p{i:02d}": f"gpu{1 - i % 2}-{i}" for i in range(n)}
    with futures.ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda s: allocate(r, [s]).container_responses[0], slots_of.values()))
    assert [c.annotations["gpupool.io/pod"] for c in results] == [f"default/{p}" for p in slots_of]
    assert [c.annotations["gpupool.io/slots"] for c in results] == list(slots_of.values())
    for name in slots_of:
        wait_for(lambda name=name: allocated_keys(kube, name) == ["0"])


def test_forged_and_unsigned_assignments_are_refused(start_agent: Any, kube: Kube) -> None:
    r = start_agent()
    forged = make_pod("forged", r.node, [1])
    put_pod(kube, forged, assignment_for(forged, r.node, [(0, GPU0, "gpu0-0", 100, 80000)], key=b"attacker-key"))
    unsigned = make_pod("unsigned", r.node, [1])
    put_pod(kube, unsigned, assignment_for(unsigned, r.node, [(0, GPU0, "gpu0-1", 100, 80000)], key=None))
    cached(r, "forged", "unsigned")
    with pytest.raises(grpc.RpcError) as forged_error:
        allocate(r, ["gpu0-0"])
    assert forged_error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "wrong signature" in forged_error.value.details() and "refused" in forged_error.value.details()
    with pytest.raises(grpc.RpcError) as unsigned_error:
        allocate(r, ["gpu0-1"])
    assert unsigned_error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "unsigned" in unsigned_error.value.details()
    # never offered by GetPreferredAllocation either, and never a fallback candidate
    assert preferred(r, 1, ["gpu0-0", "gpu0-1", "gpu0-2"]) == ["gpu0-0"]  # kubelet order, no assignment chosen
    with pytest.raises(grpc.RpcError) as nothing:
        allocate(r, ["gpu0-9"])
    assert nothing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "refused assignments on this node" in nothing.value.details()
    assert "pod default/forged" not in json.dumps(get_pod(kube, "default", "forged")["metadata"]["annotations"])


def test_foreign_node_assignment_is_refused(start_agent: Any, kube: Kube) -> None:
    r = start_agent()
    pod = make_pod("foreign", r.node, [1])
    put_pod(kube, pod, assignment_for(pod, r.node, [(0, GPU0, "gpu0-3", 10, 10)], assigned_node="other-node"))
    cached(r, "foreign")
    with pytest.raises(grpc.RpcError) as error:
        allocate(r, ["gpu0-3"])
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "is for node other-node, but this is node" in error.value.details()
    assert "foreign-node assignment refused" in error.value.details()


def test_fallback_matching_earliest_bound_pod_of_that_size(start_agent: Any, kube: Kube) -> None:
    r = start_agent(backend="mps")
    late = make_pod("late", r.node, [1])
    put_pod(kube, late, assignment_for(late, r.node, [(0, GPU1, "gpu1-1", 10, 100)], at="2025-01-01T00:00:09Z"))
    early = make_pod("early", r.node, [1])
    put_pod(kube, early, assignment_for(early, r.node, [(0, GPU0, "gpu0-1", 70, 700)], at="2025-01-01T00:00:01Z"))
    pair = make_pod("pair", r.node, [2])
    put_pod(
        kube,
        pair,
        assignment_for(
            pair, r.node, [(0, GPU0, "gpu0-2", 10, 100), (0, GPU1, "gpu1-2", 10, 100)], at="2025-01-01T00:00:00Z"
        ),
    )
    cached(r, "late", "early", "pair")
    # the kubelet picked slots nobody was assigned: the earliest bound pod asking for 1 slice is served
    c = allocate(r, ["gpu0-20"]).container_responses[0]
    assert c.annotations["gpupool.io/pod"] == "default/early"
    assert c.annotations["gpupool.io/match"] == "fallback"
    assert "match no assignment" in c.annotations["gpupool.io/match-note"]
    assert c.envs["NVIDIA_VISIBLE_DEVICES"] == GPU0  # that assignment's slices
    assert c.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=700M"
    c2 = allocate(r, ["gpu1-30"]).container_responses[0]
    assert c2.annotations["gpupool.io/pod"] == "default/late"
    with pytest.raises(grpc.RpcError) as error:
        allocate(r, ["gpu1-31"])
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no pod bound to node" in error.value.details()


def test_init_container_slots_reused_by_the_app_container(start_agent: Any, kube: Kube) -> None:
    r = start_agent()
    pod = make_pod("withinit", r.node, [1])
    pod["spec"]["initContainers"] = [{"name": "init", "image": "x", "resources": {"limits": {resources.GPU: "1"}}}]
    init_text = json.loads(assignment_for(pod, r.node, [(0, GPU0, "gpu0-5", 10, 100)], init=True))
    app_text = json.loads(assignment_for(pod, r.node, [(0, GPU1, "gpu1-5", 20, 200)]))
    from gpupool.assignment import parse

    merged = parse(json.dumps(app_text))
    init_record = parse(json.dumps(init_text))
    from dataclasses import replace

    from tests.deviceplugin.helpers import KEY

    both = replace(merged, slices=init_record.slices + merged.slices, sig="").signed(KEY).to_annotation()
    put_pod(kube, pod, both)
    cached(r, "withinit")
    assert preferred(r, 1) == ["gpu0-5"]  # init container first
    init = allocate(r, ["gpu0-5"]).container_responses[0]
    assert init.annotations["gpupool.io/container"] == "init:0"
    # the kubelet hands the init container's slot to the app container
    app = allocate(r, ["gpu0-5"]).container_responses[0]
    assert app.annotations["gpupool.io/container"] == "0"
    assert app.annotations["gpupool.io/match"] == "init-reuse"
    assert app.envs["NVIDIA_VISIBLE_DEVICES"] == GPU1
    wait_for(lambda: allocated_keys(kube, "withinit") == ["init:0", "0"])


def test_remote_slices_carry_the_owning_agent_endpoint(start_agent: Any, kube: Kube) -> None:
    r = start_agent(backend="mps")
    kube.create_gpunode("far-node")
    kube.patch_gpunode_status("far-node", {"agentEndpoint": "10.9.9.9:9403"})
    pod = make_pod("remote", r.node, [2])
    text = assignment_for(
        pod, r.node, [(0, GPU0, "gpu0-8", 30, 1000), (0, "GPU-far-1", "remote-0", 40, 2000, "far-node")]
    )
    put_pod(kube, pod, text)
    c = allocate(r, ["gpu0-8", "remote-0"]).container_responses[0]
    assert c.envs["NVIDIA_VISIBLE_DEVICES"] == GPU0
    assert c.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=1000M"
    assert c.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "30"
    assert json.loads(c.envs["GPUPOOL_REMOTE_SLICES"]) == [
        {"endpoint": "10.9.9.9:9403", "node": "far-node", "gpu": "GPU-far-1", "compute": 40, "memory": 2000,
         "slot": "remote-0"}
    ]  # fmt: skip
    assert [s["remote"] for s in json.loads(c.envs["GPUPOOL_SLICES"])] == [False, True]


def test_remote_only_container_sees_no_local_gpu(start_agent: Any, kube: Kube) -> None:
    r = start_agent(backend="mps")
    pod = make_pod("remote-only", r.node, [1])
    put_pod(kube, pod, assignment_for(pod, r.node, [(0, "GPU-x", "remote-3", 40, 2000, "nowhere")]))
    with pytest.raises(grpc.RpcError) as error:  # no GPUNode for that node: a clear error
        allocate(r, ["remote-3"])
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "has no status.agentEndpoint" in error.value.details()
    kube.create_gpunode("nowhere")
    kube.patch_gpunode_status("nowhere", {"agentEndpoint": "h:1"})
    c = allocate(r, ["remote-3"]).container_responses[0]
    assert c.envs["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in c.envs


def test_bad_requests_end_in_clear_statuses(start_agent: Any) -> None:
    r = start_agent()
    with pytest.raises(grpc.RpcError) as error:
        allocate(r, ["nvidia0"])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a gpupool slot id" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        allocate(r, [])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_pre_start_container_checks_health(start_agent: Any) -> None:
    r = start_agent()
    with r.kubelet.dial(r.settings.socket_name) as stub:
        stub.PreStartContainer(pb2.PreStartContainerRequest(devices_ids=["gpu0-1", "remote-0"]), timeout=5)
        r.nvml.failing[0] = "NVML: lost"
        wait_for(lambda: r.agent.state.healthy_gpu(0) is False)
        with pytest.raises(grpc.RpcError) as error:
            stub.PreStartContainer(pb2.PreStartContainerRequest(devices_ids=["gpu0-1"]), timeout=5)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# --- kubelet restarts ----------------------------------------------------------------------------------------


def test_reregisters_after_kubelet_restart(start_agent: Any, kube: Kube) -> None:
    r = start_agent()
    r.kubelet.wait_registration()
    r.kubelet.stop(remove_socket=True)
    r.kubelet.start()
    reg = r.kubelet.wait_registration()
    assert reg.resource_name == "gpupool.io/gpu"
    # a starting kubelet also deletes the plugin sockets: the plugin serves again and re-registers
    r.kubelet.stop(remove_socket=True)
    (r.kubelet.directory / r.settings.socket_name).unlink()
    r.kubelet.start()
    reg = r.kubelet.wait_registration()
    wait_for(lambda: (r.kubelet.directory / r.settings.socket_name).exists())
    assert len(first_list(r).devices) == 80
    # the kubelet records a Register on receipt; the plugin counts it once the call has returned
    wait_for(lambda: r.agent.server.registrations >= 3)


# --- publishing, metrics ----------------------------------------------------------------------------------------


def test_node_labels_metrics_and_healthz(start_agent: Any, kube: Kube) -> None:
    node = "labelled-node"
    kube.request("POST", "/api/v1/nodes", body={"metadata": {"name": node}}, content_type="application/json")
    r = start_agent(node=node)
    wait_for(lambda: kube.request("GET", f"/api/v1/nodes/{node}")["metadata"].get("labels") or {})
    labels = kube.request("GET", f"/api/v1/nodes/{node}")["metadata"]["labels"]
    assert labels == {"gpupool.io/gpu-model": "NVIDIA-A100-SXM4-80GB", "gpupool.io/gpu-count": "2"}
    pod = make_pod("metered", node, [1])
    put_pod(kube, pod, assignment_for(pod, node, [(0, GPU0, "gpu0-0", 10, 10)]))
    allocate(r, ["gpu0-0"])
    with pytest.raises(grpc.RpcError):
        allocate(r, ["gpu0-31"])
    wait_for(r.agent.ready)
    port = r.agent.http.port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "gpupool_deviceplugin_allocate_seconds_count 1.0" in body
    assert 'gpupool_deviceplugin_allocate_failures_total{reason="no_match"} 1.0' in body
    assert "gpupool_deviceplugin_slots_in_use 1.0" in body
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200
