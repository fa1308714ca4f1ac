"""Real processes through the real runtime (runtime/build/libgpupool.so) against the fake CUDA driver.

`make -C runtime check` builds the library, its sanitizer variant, the fake driver and `gpuprog` once per session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deviceplugin.runtime_regions import ACCOUNTING_FILE, Accounting, DeviceLimit, read_accounting, write_control

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "runtime"
BUILD = RUNTIME / "build"



@pytest.fixture(scope="session")
def built() -> Path:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    subprocess.run(["make", "-s", "-C", str(RUNTIME), "check"], check=True, capture_output=True, timeout=300)
    return BUILD


def asan_preload() -> str:
    rt = subprocess.run(["cc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True).stdout
    return f"{rt.strip()} {BUILD / 'asan' / 'libgpupool.so'}"


class Proc:
    """One gpuprog process; `cmd` sends a line and returns its reply."""

    def __init__(self, env: dict[str, str], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self._err = open(stderr_path, "w")  # noqa: SIM115 - lives as long as the process, closed in close()
        self.p = subprocess.Popen(
            [str(BUILD / "gpuprog")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            env=env,
        )

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def read(self) -> str:
        assert self.p.stdout is not None
        out = self.p.stdout.readline().strip()
        assert out, f"gpuprog exited ({self.p.poll()}): {self.stderr()}"
        return out

    def cmd(self, line: str) -> str:
        self.send(line)
        return self.read()

    def alloc(self, nbytes: int, kind: str = "v2") -> int | None:
        """Allocation id, or None on CUDA_ERROR_OUT_OF_MEMORY (other errors fail the test)."""
        out = self.cmd(f"alloc {kind} {nbytes}")
        if out == "err 2":
            return None
        assert out.startswith("ok "), out
        return int(out.split()[1])

    def info(self) -> tuple[int, int]:
        out = self.cmd("info").split()
        assert out[0] == "info", out
        return int(out[1]), int(out[2])

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def close(self) -> int:
        if self.p.poll() is None:
            try:
                self.send("quit")
                self.p.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()
        self._err.close()
        return self.p.returncode


@dataclass
class Container:
    """A container's runtime directory and environment (what Allocate gives it)."""

    directory: Path
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    def start(self, **extra: str) -> Proc:
        proc = Proc(self.env | extra, self.directory.parent / f"{self.directory.name}-{len(self.procs)}.err")
        self.procs.append(proc)
        return proc

    def control(self, limits: Sequence[tuple[int, int]], mode: str = "ceiling", generation: int = 1) -> None:
        write_control(self.directory, [DeviceLimit(m, c) for m, c in limits], mode, generation)

    def accounting(self) -> Accounting:
        acc = read_accounting(self.directory / ACCOUNTING_FILE)
        assert acc is not None
        return acc


@pytest.fixture
def node(built: Path, tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    yield n
    for c in n.containers:
        for p in c.procs:
            p.close()


class Node:
    """Containers sharing fake GPUs (one FAKECUDA_STATE file, one sharing directory per GPU)."""

    def __init__(self, root: Path, gpus: int = 1) -> None:
        self.root = root
        self.gpu_dir = root / "gpus"
        for i in range(gpus):
            (self.gpu_dir / str(i)).mkdir(parents=True)
        self.gpus = gpus
        self.containers: list[Container] = []

    def container(
        self,
        memory_mib: Sequence[int] = (1,),
        compute: Sequence[int] = (100,),
        mode: str = "ceiling",
        preload: str | None = None,
        env_limits: bool = True,
    ) -> Container:
        d = self.root / f"c{len(self.containers)}"
        d.mkdir()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LD_LIBRARY_PATH": str(BUILD / "fake"),
            "LD_PRELOAD": preload or str(BUILD / "libgpupool.so"),
            "GPUPOOL_RUNTIME_DIR": str(d),
            "GPUPOOL_GPU_DIR": str(self.gpu_dir),
            "FAKECUDA_STATE": str(self.root / "fakecuda.state"),
            "FAKECUDA_DEVICES": str(self.gpus),
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=66",
        }
        if env_limits:
            env |= {
                "GPUPOOL_MEMORY_LIMITS": ",".join(map(str, memory_mib)),
                "GPUPOOL_COMPUTE_LIMITS": ",".join(map(str, compute)),
                "GPUPOOL_COMPUTE_MODE": mode,
            }
        c = Container(d, env)
        self.containers.append(c)
        return c


def wait_for(predicate: object, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `predicate()` until true (state, not speed, is asserted: the timeout is generous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
