"""Compute shares held by the throttle under contention, in both modes (docs/runtime.md)."""

from __future__ import annotations

import pytest

from tests.runtime.conftest import Container, Node

KERNEL_US = 5000  # 20 ms queued per process: a test process the CPU leaves waiting a few ms does not idle the GPU
SECONDS = 4.0
WARMUP = 1.5


def run_together(containers: list[Container]) -> list[float]:
    """Start one spinning process per container at once; each one's achieved share of the device, percent."""
    procs = [c.start() for c in containers]
    for p in procs:
        p.send(f"spin {KERNEL_US} {SECONDS} {WARMUP}")
    shares = []
    for p in procs:
        word, busy, window = p.read().split()
        assert word == "spin" and int(window) > 0
        shares.append(100.0 * int(busy) / int(window))
    return shares


@pytest.mark.parametrize("mode", ["ceiling", "share"])
def test_30_70_under_contention(node: Node, mode: str) -> None:
    a = node.container(memory_mib=[1], compute=[30], mode=mode)
    b = node.container(memory_mib=[1], compute=[70], mode=mode)
    got = run_together([a, b])
    assert abs(got[0] - 30) <= 5 and abs(got[1] - 70) <= 5, got


def test_lone_share_container_uses_the_idle_gpu(node: Node) -> None:
    a = node.container(memory_mib=[1], compute=[30], mode="share")
    (got,) = run_together([a])
    assert got >= 85, got


def test_lone_ceiling_container_stays_at_its_share(node: Node) -> None:
    a = node.container(memory_mib=[1], compute=[30], mode="ceiling")
    (got,) = run_together([a])
    assert abs(got - 30) <= 5, got


def test_processes_of_one_container_share_its_slice(node: Node) -> None:
    a = node.container(memory_mib=[1], compute=[30], mode="ceiling")
    b = node.container(memory_mib=[1], compute=[70], mode="ceiling")
    got = run_together([a, a, b])  # two processes in container a
    assert abs(got[0] + got[1] - 30) <= 5 and abs(got[2] - 70) <= 5, got


def test_live_compute_change_applies_to_a_running_process(node: Node) -> None:
    a = node.container(memory_mib=[1], compute=[30], mode="ceiling")
    a.control([(1, 30)], generation=1)
    p = a.start()
    p.send(f"spin {KERNEL_US} 3 1")
    _, busy, window = p.read().split()
    assert abs(100 * int(busy) / int(window) - 30) <= 5
    a.control([(1, 60)], generation=2)
    p.send(f"spin {KERNEL_US} 3 1")  # the same process, never restarted
    _, busy, window = p.read().split()
    assert abs(100 * int(busy) / int(window) - 60) <= 5
    assert a.accounting().devices[0].compute == 60
