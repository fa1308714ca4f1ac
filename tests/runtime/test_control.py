"""Live limits from the control region, and failing closed (docs/runtime.md)."""

from __future__ import annotations

import os

import pytest

from tests.runtime.conftest import Node, wait_for

MIB = 1 << 20


def test_live_memory_limit_change_applies_without_restart(node: Node) -> None:
    c = node.container(memory_mib=[1])
    c.control([(1, 30)], generation=1)
    a = c.start()
    assert a.info() == (MIB, MIB)
    assert a.alloc(MIB) is not None
    assert a.alloc(1) is None
    c.control([(2, 60)], generation=2)
    wait_for(lambda: a.info() == (MIB, 2 * MIB), timeout=5, what="the new cap")
    acc = c.accounting()
    assert acc.generation == 2
    assert (acc.devices[0].compute, acc.devices[0].memory_limit_bytes) == (60, 2 * MIB)
    assert a.alloc(MIB) is not None
    assert a.alloc(1) is None
    c.control([(1, 60)], generation=3)  # shrinking below what is in use: no new allocation fits
    wait_for(lambda: a.info() == (0, MIB), timeout=5, what="the shrunk cap")
    assert a.alloc(1) is None


def test_control_region_seeds_the_limits_over_the_env(node: Node) -> None:
    c = node.container(memory_mib=[8])
    c.control([(1, 30)], generation=7)
    a = c.start()
    assert a.info() == (MIB, MIB)
    assert c.accounting().generation == 7


def test_missing_control_region_keeps_the_allocate_limits(node: Node) -> None:
    c = node.container(memory_mib=[1], compute=[40])
    a = c.start()
    assert a.alloc(MIB) is not None
    assert a.alloc(1) is None
    assert a.cmd("launch 5 10") == "ok"
    log = a.stderr()
    assert log.count("control region") == 1 and "missing" in log
    assert "1 MiB, 40 %" in log


def test_corrupt_control_region_fails_closed_with_one_log_line(node: Node) -> None:
    c = node.container(memory_mib=[1])
    c.control([(1, 30)], generation=1)
    a = c.start()
    assert a.alloc(MIB) is not None
    good = (c.directory / "control").read_bytes()
    bad = bytearray(good)
    bad[24] ^= 0xFF  # memory of device 0: the checksum no longer matches
    tmp = c.directory / "control.tmp"
    tmp.write_bytes(bytes(bad))
    os.replace(tmp, c.directory / "control")
    wait_for(lambda: a.info() and "corrupt" in a.stderr(), timeout=5, what="the log line")  # read on calls
    for _ in range(20):
        assert a.alloc(1) is None  # still the last valid cap
    assert a.info() == (0, MIB)
    assert a.stderr().count("corrupt (checksum mismatch)") == 1 and len(a.stderr().splitlines()) == 1
    tmp.write_bytes(b"garbage")
    os.replace(tmp, c.directory / "control")
    c.control([(2, 30)], generation=2)
    wait_for(lambda: a.info() == (MIB, 2 * MIB), timeout=5, what="recovery")


def test_corrupt_accounting_region_falls_back_to_a_private_one(node: Node) -> None:
    c = node.container(memory_mib=[1])
    (c.directory / "accounting").write_bytes(b"\x00" * 100)  # a runtime bug or a stray write
    a = c.start()
    assert a.alloc(MIB) is not None
    assert a.alloc(1) is None  # the cap still holds, for this process
    assert a.cmd("launch 3 10") == "ok"
    assert "accounting region" in a.stderr()


def test_no_runtime_directory_and_no_limits_passes_through(built: object, tmp_path: object) -> None:
    node = Node(tmp_path)  # type: ignore[arg-type]
    c = node.container(env_limits=False)
    c.env["GPUPOOL_RUNTIME_DIR"] = str(c.directory / "absent")
    a = c.start()
    try:
        _free, total = a.info()
        assert total == 81920 * MIB
        assert a.alloc(2 * MIB) is not None
        assert a.stderr() == ""
    finally:
        a.close()


def test_sanitizer_build_runs_clean(built: object, tmp_path: object) -> None:
    from tests.runtime.conftest import asan_preload

    node = Node(tmp_path)  # type: ignore[arg-type]
    c = node.container(memory_mib=[1], compute=[50], preload=asan_preload())
    c.control([(1, 50)], generation=1)
    a, b = c.start(), c.start()
    try:
        for kind in ("v2", "create", "async", "procaddr", "dlsym"):
            ident = a.alloc(1000, kind)
            assert ident is not None
            assert a.cmd(f"free {ident}") == "ok"
        assert a.alloc(MIB) is not None
        assert b.alloc(1) is None
        assert a.cmd("launch 300 20") == "ok"
        c.control([(2, 50)], generation=2)
        wait_for(lambda: b.info() == (MIB, 2 * MIB), timeout=5, what="the new cap")
        assert a.close() == 0 and b.close() == 0
        assert "Sanitizer" not in a.stderr() + b.stderr()
    finally:
        a.close()
        b.close()


def test_verify_enforcement_pool_backend_against_the_fake_driver(built: object, tmp_path: object) -> None:
    """The GPU check (deviceplugin/tools/verify_enforcement.py) runs its memory scenario here on the fake driver."""
    import json
    import subprocess
    import sys

    from tests.runtime.conftest import BUILD, ROOT

    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "LD_LIBRARY_PATH": str(BUILD / "fake"),
        "FAKECUDA_MEMORY_MIB": "1024",
    }
    args = ["run", "--backends", "none,pool", "--uuid", "GPU-fake", "--memory-mib", "64", "--chunk-mib", "16"]
    out = subprocess.run(
        [sys.executable, "-m", "deviceplugin.tools.verify_enforcement", *args, "--max-mib", "256", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)["backends"]
    assert result["none"]["allocated_mib"] == 256 and result["none"]["verdict"] == "not limited"
    assert result["pool"]["allocated_mib"] == 64 and result["pool"]["stopped_by"] == "CUDA_ERROR_OUT_OF_MEMORY"
    assert result["pool"]["reported_total_mib"] == 64 and result["pool"]["verdict"] == "limited"


@pytest.mark.timeout(60)  # a lock never recovered hangs the next allocation
def test_a_process_dying_with_the_accounting_lock_held_blocks_nobody(node: Node) -> None:
    """A process killed inside the lock (the runtime's worst moment): the next one recovers the robust mutex."""
    import subprocess
    import sys

    c = node.container(memory_mib=[1])
    a = c.start()
    assert a.alloc(1000) is not None  # creates the region
    holder = (
        "import ctypes, mmap, os, sys\n"
        "f = open(sys.argv[1], 'r+b'); m = mmap.mmap(f.fileno(), 0)\n"
        "addr = ctypes.addressof(ctypes.c_char.from_buffer(m, 64))\n"
        "assert ctypes.CDLL(None).pthread_mutex_lock(ctypes.c_void_p(addr)) == 0\n"
        "os._exit(0)  # dies holding it\n"
    )
    subprocess.run([sys.executable, "-c", holder, str(c.directory / "accounting")], check=True, timeout=30)
    b = c.start()
    assert b.alloc(MIB - 1000) is not None
    assert b.alloc(1) is None and a.alloc(1) is None
    assert a.cmd("free 0") == "ok"
    assert b.alloc(1000) is not None
    assert "lock" not in a.stderr() + b.stderr()  # recovered, not given up
