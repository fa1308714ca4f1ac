"""The real device plugin (gRPC, its own process) for the CPU-only kwok node cpu-1, with a fake kubelet, against the
same API server: a ``locality: pool`` pod bound there holds remote slices, and ``Allocate`` hands it
``GPUPOOL_REMOTE_SLICES`` (endpoint of the owning node agent, GPU uuid, compute, memory)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deviceplugin.api import pb2
from e2e.polling import wait_for
from e2e.stack import AGENT_ENDPOINT_PORT, Stack
from gpupool import resources
from tests.e2e.gpupool.conftest import PLUGIN_NODE
from tests.e2e.gpupool.gp_helpers import GP, assignment_of, gpu_pod

pytestmark = pytest.mark.local_harness(
    "a fake kubelet (tests/deviceplugin/helpers.py FakeKubelet) that the local node agent of kwok node cpu-1 "
    "registers with, so that the test calls ListAndWatch and Allocate itself (on a real node the kubelet calls them)"
)


def _devices(stack: Stack) -> list[Any]:
    kubelet = stack.fake_kubelet  # type: ignore[attr-defined]
    with kubelet.dial("gpupool.sock") as stub:
        stream = stub.ListAndWatch(pb2.Empty(), timeout=10)
        first = next(iter(stream))
        stream.cancel()
        return list(first.devices)


def test_pool_pod_on_cpu_node_gets_remote_slices_through_allocate(gp: GP, stack: Stack) -> None:
    devices = _devices(stack)
    ids = [d.ID for d in devices if d.health == "Healthy"]
    assert ids and all(i.startswith("remote-") for i in ids), ids  # no GPUs here: remote slots only

    ns = gp.namespace()
    body = gpu_pod(
        "pooled",
        gpus=2,
        compute=40,
        memory=2048,
        annotations={resources.LOCALITY: "pool"},
        node_selector={"kubernetes.io/hostname": PLUGIN_NODE},
    )
    gp.create(ns, body)
    pod = gp.wait_bound(ns, "pooled")
    assert pod.spec.node_name == PLUGIN_NODE
    a = assignment_of(pod)
    assert a is not None and a["node"] == PLUGIN_NODE
    assert len(a["slices"]) == 2 and all(s["node"] != PLUGIN_NODE for s in a["slices"]), a
    assert len({s["gpu"] for s in a["slices"]}) == 2  # distinct physical GPUs, elsewhere in the pool
    slots = sorted(s["slot"] for s in a["slices"])
    assert all(s.startswith("remote-") for s in slots)

    kubelet = stack.fake_kubelet  # type: ignore[attr-defined]
    with kubelet.dial("gpupool.sock") as stub:
        preferred = stub.GetPreferredAllocation(
            pb2.PreferredAllocationRequest(
                container_requests=[
                    pb2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=ids, must_include_deviceIDs=[], allocation_size=2
                    )
                ]
            ),
            timeout=20,
        )
        chosen = list(preferred.container_responses[0].deviceIDs)
        assert sorted(chosen) == slots
        response = stub.Allocate(
            pb2.AllocateRequest(container_requests=[pb2.ContainerAllocateRequest(devices_ids=chosen)]), timeout=20
        )
    envs = dict(response.container_responses[0].envs)
    remote = json.loads(envs["GPUPOOL_REMOTE_SLICES"])
    assert sorted(r["gpu"] for r in remote) == sorted(s["gpu"] for s in a["slices"])
    assert all(r["endpoint"] == f"127.0.0.1:{AGENT_ENDPOINT_PORT}" for r in remote), remote
    assert all(r["compute"] == 40 for r in remote), remote
    assert "GPUPOOL_SLICES" in envs
    # the agent records what it served on the pod
    wait_for(
        lambda: resources.ALLOCATED in (gp.pod(ns, "pooled").metadata.annotations or {}),
        timeout=20,
        what="gpupool.io/allocated on the pod",
    )
