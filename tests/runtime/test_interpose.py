"""How the runtime hooks into processes: the dlsym hook must not disturb other interposers (docs/runtime.md)."""

from __future__ import annotations

import subprocess

import pytest

from tests.runtime.conftest import BUILD, asan_preload


@pytest.mark.parametrize("sanitized", [False, True])
def test_rtld_next_lookups_of_other_interposers_keep_their_caller(built: object, sanitized: bool) -> None:
    lib = asan_preload() if sanitized else str(BUILD / "libgpupool.so")
    out = subprocess.run(
        [str(BUILD / "rtldnext")],
        env={"LD_PRELOAD": f"{lib} {BUILD / 'libnext.so'}", "ASAN_OPTIONS": "detect_leaks=0"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (out.returncode, out.stdout) == (0, "ok\n"), out.stderr


def test_a_program_without_cuda_is_untouched(built: object) -> None:
    out = subprocess.run(
        ["/bin/sh", "-c", "echo hello"],
        env={"LD_PRELOAD": str(BUILD / "libgpupool.so"), "GPUPOOL_MEMORY_LIMITS": "1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "hello\n", "")
