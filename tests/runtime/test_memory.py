"""Memory cap per GPU per container, summed over its processes (docs/runtime.md)."""

from __future__ import annotations

import os

import pytest

from tests.runtime.conftest import Node, wait_for

MIB = 1 << 20


def test_cap_exact_to_the_byte_across_two_processes(node: Node) -> None:
    c = node.container(memory_mib=[1])
    a, b = c.start(), c.start()
    first = a.alloc(600_000)
    assert first is not None
    assert b.alloc(MIB - 600_000 - 1) is not None
    assert b.alloc(2) is None  # one byte past the cap
    assert a.alloc(1) is not None  # exactly the cap
    assert a.alloc(1) is None
    assert a.cmd(f"free {first}") == "ok"
    assert b.alloc(600_000) is not None
    assert b.alloc(1) is None
    assert c.accounting().devices[0].memory_used_bytes == MIB


def test_mem_get_info_reports_the_slice(node: Node) -> None:
    c = node.container(memory_mib=[4])
    a, b = c.start(), c.start()
    assert a.info() == (4 * MIB, 4 * MIB)
    assert a.alloc(MIB) is not None
    assert b.alloc(123) is not None
    assert a.info() == (3 * MIB - 123, 4 * MIB)
    assert b.info() == (3 * MIB - 123, 4 * MIB)


def test_killed_process_memory_is_returned(node: Node) -> None:
    c = node.container(memory_mib=[2])
    victim, survivor = c.start(), c.start()
    assert victim.alloc(2 * MIB) is not None
    assert survivor.alloc(1) is None
    victim.p.kill()  # SIGKILL: no destructor runs
    os.waitid(os.P_PID, victim.p.pid, os.WEXITED | os.WNOWAIT)  # dead, but a zombie: not reaped yet
    assert survivor.alloc(2 * MIB) is not None
    assert survivor.info() == (0, 2 * MIB)
    victim.p.wait()
    assert c.accounting().pids == (survivor.p.pid,)


def test_exited_process_memory_is_returned(node: Node) -> None:
    c = node.container(memory_mib=[1])
    a = c.start()
    assert a.alloc(MIB) is not None
    assert a.close() == 0
    assert c.accounting().devices[0].memory_used_bytes == 0


@pytest.mark.parametrize(
    "kind", ["v2", "v1", "managed", "async", "pool", "create", "procaddr", "procaddr2", "ptsz", "dlsym"]
)
def test_every_allocation_path_is_capped(node: Node, kind: str) -> None:
    c = node.container(memory_mib=[1])
    a = c.start()
    assert a.alloc(MIB + 1, kind) is None
    ident = a.alloc(MIB, kind)
    assert ident is not None
    assert a.alloc(1, "v2") is None
    assert a.cmd(f"free {ident}") == "ok"
    assert a.alloc(MIB, "v2") is not None


def test_pitch_allocation_is_charged_its_pitch(node: Node) -> None:
    c = node.container(memory_mib=[1])
    a = c.start()
    assert a.alloc(1000, "pitch") is not None  # the fake driver pitches 1000 bytes to 1024
    assert c.accounting().devices[0].memory_used_bytes == 1024
    assert a.alloc(MIB - 1024 + 1) is None


def test_each_device_has_its_own_cap(built: object, tmp_path: object) -> None:
    node = Node(tmp_path, gpus=2)  # type: ignore[arg-type]
    c = node.container(memory_mib=[1, 2], compute=[50, 50])
    a = c.start()
    try:
        assert a.alloc(MIB) is not None
        assert a.alloc(1) is None
        assert a.cmd("dev 1") == "ok"
        assert a.info() == (2 * MIB, 2 * MIB)
        assert a.alloc(2 * MIB) is not None
        assert a.alloc(1, "create") is None
    finally:
        a.close()


def test_cuda_visible_devices_maps_to_the_containers_ordinals(built: object, tmp_path: object) -> None:
    node = Node(tmp_path, gpus=2)  # type: ignore[arg-type]
    c = node.container(memory_mib=[1, 2], compute=[50, 50])
    a = c.start(CUDA_VISIBLE_DEVICES="1")  # the app's device 0 is the container's device 1
    try:
        wait_for(lambda: a.info()[1] == 2 * MIB, what="device 1's cap")
    finally:
        a.close()


def test_forked_child_is_its_own_process_of_the_container(node: Node) -> None:
    c = node.container(memory_mib=[1])
    a = c.start()
    assert a.alloc(600_000) is not None
    assert a.cmd(f"fork {MIB - 600_000 + 1}") == "child err 2"  # the parent's bytes count for the child
    assert a.read() == "ok"
    assert a.cmd(f"fork {MIB - 600_000}") == "child ok"
    assert a.read() == "ok"
    # the child has exited: its bytes are back, the parent's are still charged
    assert c.accounting().devices[0].memory_used_bytes == 600_000
    assert a.alloc(MIB - 600_000) is not None
    assert a.alloc(1) is None
