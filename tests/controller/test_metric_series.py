"""The controller's per-GPU and per-queue series follow the objects: a GPUNode, one of its GPUs or a GPUQueue
that goes takes its series with it, and a replica that stops leading stops exporting them (the dashboard takes the
max over replicas: a former leader's last figures would stand above the leader's)."""

from __future__ import annotations

from controller import metrics
from tests.controller.test_runtime import gpunode, make, queue, run

T0 = 2e9


def gpu(node: str, index: int, resource: str = "compute") -> float | None:
    return metrics.REGISTRY.get_sample_value(
        "gpupool_gpu_allocated", {"node": node, "gpu": f"GPU-{node}-{index}", "resource": resource}
    )


def queue_pending(name: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("gpupool_queue_pending_pods", {"queue": name})


def queue_quota(name: str, resource: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("gpupool_queue_quota", {"queue": name, "resource": resource})


def test_a_gpunode_and_a_gpu_that_go_take_their_series_with_them() -> None:
    c, _ = make(gpunode_status_interval_seconds=0)
    c.on_gpunode("ADDED", gpunode("ms-a", gpus=2))
    c.on_gpunode("ADDED", gpunode("ms-b", gpus=1))
    run(c.cycle(now=T0))
    assert gpu("ms-a", 0) == 0 and gpu("ms-a", 1, "memory") == 0 and gpu("ms-b", 0) == 0

    c.on_gpunode("MODIFIED", gpunode("ms-a", gpus=1))  # GPU 1 left the node
    run(c.cycle(now=T0 + 10))
    assert gpu("ms-a", 0) == 0 and gpu("ms-a", 1) is None and gpu("ms-a", 1, "memory") is None

    c.on_list("gpunodes", [gpunode("ms-a", gpus=1)])  # ms-b deleted while the watch was down
    assert gpu("ms-b", 0) is None and gpu("ms-a", 0) == 0
    c.on_gpunode("DELETED", gpunode("ms-a", gpus=1))
    assert gpu("ms-a", 0) is None


def test_a_gpuqueue_that_goes_takes_its_series_with_it() -> None:
    c, _ = make()
    c.on_gpunode("ADDED", gpunode("ms-q", gpus=1))
    c.on_queue("ADDED", queue("ms-q1", 100, nominalQuota={"compute": 100, "memoryMiB": 4096}))
    c.on_queue("ADDED", queue("ms-q2", 100))
    run(c.cycle(now=T0))
    assert queue_pending("ms-q1") == 0 and queue_quota("ms-q1", "memory") == 4096 and queue_pending("ms-q2") == 0

    c.on_queue("MODIFIED", queue("ms-q1", 100))  # its memory quota was removed from the spec
    c.on_queue("DELETED", queue("ms-q2", 100))
    run(c.cycle(now=T0 + 1))
    assert queue_quota("ms-q1", "compute") == 100 and queue_quota("ms-q1", "memory") is None
    assert queue_pending("ms-q2") is None and queue_quota("ms-q2", "compute") is None


def test_a_replica_that_stops_leading_stops_exporting_them() -> None:
    c, _ = make(gpunode_status_interval_seconds=0)
    c.on_gpunode("ADDED", gpunode("ms-l", gpus=1))
    c.on_queue("ADDED", queue("ms-lq", 100))
    run(c.cycle(now=T0))
    assert gpu("ms-l", 0) == 0 and queue_pending("ms-lq") == 0

    c.is_leader = False
    run(c.cycle(now=T0 + 1))
    assert gpu("ms-l", 0) is None and queue_pending("ms-lq") is None and queue_pending("(none)") is None

    c.is_leader = True  # leading again: exported again
    c.on_gpunode("MODIFIED", gpunode("ms-l", gpus=1, unhealthy=0))
    run(c.cycle(now=T0 + 2))
    assert gpu("ms-l", 0) == 0 and queue_pending("ms-lq") == 0
