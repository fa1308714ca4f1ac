"""Issue 17, end to end on the real node: the pooling runtime injected by the node agent through the real kubelet.

The node agent of the real node is restarted with the pool backend for this module (library and regions in a
temporary directory; restored afterwards, so the other real-node tests see the default backend). The image
``gpupool/gpuprog:1`` (e2e/oci.py ``gpuprog_image``) holds gpuprog, dynamically linked against the fake driver, and
the host's glibc: ``/etc/ld.so.preload``, mounted by Allocate, loads the runtime into it. gpuprog reads its commands
from a FIFO in a hostPath directory; its answers are read from the kubelet's log of the container. Latencies are
measured and reported (terminal summary), never asserted: polls have deadlines only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import cli
from deviceplugin import runtime_regions as regions
from e2e import oci
from e2e.polling import wait_for
from tests.realnode.conftest import REAL, RealNodeEnv, _summary, wait_capacity
from tests.realnode.helpers import gpu_pod, wait_running

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "runtime" / "build"
MIB = 1 << 20
KERNEL_US = 5000  # as tests/runtime: 20 ms queued, so a process the loaded CPU leaves waiting does not idle the GPU

pytestmark = [
    pytest.mark.realnode,
    pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler for the runtime and the fake driver"),
]


@pytest.fixture(scope="module")
def pool(rn: RealNodeEnv) -> Iterator[Path]:
    """The real node's agent on the pool backend for this module: returns its runtime state directory."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "runtime"), "test-bin"], check=True, timeout=300)
    rn.node.import_images([oci.gpuprog_image(BUILD)], tarball="gpuprog.tar")
    work = Path(tempfile.mkdtemp(prefix="gprt"))
    proc = rn.cluster.processes[rn.agent]
    saved = dict(proc.env or {})
    proc.env = saved | {
        "GPUPOOL_BACKEND": "pool",
        "GPUPOOL_RUNTIME_STATE_DIR": str(work / "state"),
        "GPUPOOL_RUNTIME_LIB_DIR": str(work / "lib"),
        "GPUPOOL_RUNTIME_LIBRARY": str(BUILD / "libgpupool.so"),
    }
    try:
        rn.cluster.restart_process(rn.agent)
        wait_capacity(rn, REAL.gpu_slots)
        yield work
    finally:
        proc.env = saved
        rn.cluster.restart_process(rn.agent)
        wait_capacity(rn, REAL.gpu_slots)
        shutil.rmtree(work, ignore_errors=True)


class Gpuprog:
    """gpuprog in a container of the real node: commands into its FIFO, one answer line each from its log."""

    def __init__(self, rn: RealNodeEnv, pod: Any, fifo: Path) -> None:
        self.rn, self.pod = rn, pod
        self.seen = 0
        self.fd = wait_for(lambda: self._open(fifo), timeout=30, what="gpuprog to open its FIFO", interval=0.1)
        os.set_blocking(self.fd, True)

    @staticmethod
    def _open(fifo: Path) -> int | None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:  # ENXIO: no reader yet
            if e.errno != errno.ENXIO:
                raise
            return None

    def log(self, stream: str) -> list[str]:
        m = self.pod.metadata
        return self.rn.node.container_log(m.namespace, m.name, m.uid, "c0", stream=stream).splitlines()

    def cmd(self, line: str, timeout: float = 60.0) -> str:
        os.write(self.fd, (line + "\n").encode())
        want = self.seen + 1

        def answered() -> str | None:
            lines = self.log("stdout")
            return lines[want - 1] if len(lines) >= want else None

        try:
            out = wait_for(answered, timeout=timeout, what=f"gpuprog to answer {line!r}", interval=0.02)
        except TimeoutError as e:
            raise AssertionError(f"{e}; stdout {self.log('stdout')}; stderr {self.log('stderr')}") from None
        self.seen = want
        return str(out)

    def share(self) -> float:
        """Percent of the fake device's time gpuprog's kernels got over 3 s (the first second left out)."""
        word, busy, window = self.cmd(f"spin {KERNEL_US} 3 1").split()
        assert word == "spin", (word, busy, window)
        return 100 * int(busy) / int(window)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.fd, b"quit\n")
        os.close(self.fd)


def gpuprog_pod(name: str, cmd_dir: Path) -> dict[str, Any]:
    """One container asking 1 GPU, 30 % and 4096 MiB, running gpuprog with its stdin from ``cmd_dir/in``."""
    body = gpu_pod(name, [(1, 30, 4096)])
    spec = body["spec"]
    spec["restartPolicy"] = "Never"
    spec["volumes"] = [{"name": "cmd", "hostPath": {"path": str(cmd_dir), "type": "Directory"}}]
    c = spec["containers"][0]
    c["image"] = oci.GPUPROG_IMAGE.removeprefix("docker.io/")
    c["command"] = ["sh", "-c", "exec gpuprog < /cmd/in"]
    c["env"] = [{"name": "FAKECUDA_STATE", "value": "/tmp/fakecuda.state"}]
    c["volumeMounts"] = [{"name": "cmd", "mountPath": "/cmd"}]
    return body


def test_runtime_holds_the_slice_in_a_real_container_and_a_resize_reaches_it(
    rn: RealNodeEnv, ns: str, pool: Path
) -> None:
    cmd_dir = Path(tempfile.mkdtemp(prefix="cmd", dir=pool))
    os.chmod(cmd_dir, 0o755)
    os.mkfifo(cmd_dir / "in", 0o600)
    rn.v1.create_namespaced_pod(ns, gpuprog_pod("rt", cmd_dir))
    pod = wait_running(rn, ns, "rt")
    assert pod.spec.node_name == REAL.name
    prog = Gpuprog(rn, pod, cmd_dir / "in")
    try:
        # memory: cuMemGetInfo is the slice (the fake driver has 80 GiB), the cap exact to the byte
        assert prog.cmd("info") == f"info {4096 * MIB} {4096 * MIB}"
        assert prog.cmd(f"alloc v2 {4096 * MIB + 1}") == "err 2"  # CUDA_ERROR_OUT_OF_MEMORY
        assert prog.cmd(f"alloc v2 {1024 * MIB}") == "ok 0"
        assert prog.cmd("info") == f"info {3072 * MIB} {4096 * MIB}"
        assert prog.cmd(f"alloc v2 {3072 * MIB + 1}") == "err 2"
        assert prog.cmd(f"alloc v2 {3072 * MIB}") == "ok 1"
        assert prog.cmd("free 1") == "ok"
        # the container's accounting region, on the host, through the mount Allocate made
        region = Path(regions.container_dir(str(pool / "state"), pod.metadata.uid, "0")) / regions.ACCOUNTING_FILE
        acc = regions.read_accounting(region)
        assert acc is not None, f"no accounting region at {region}"
        assert (acc.devices[0].memory_used_bytes, acc.devices[0].compute, acc.mode) == (1024 * MIB, 30, "ceiling")
        # compute: a lone ceiling container stays at its share
        before = prog.share()
        assert abs(before - 30) <= 5, before

        # resize 30 -> 60 % and 4 -> 8 GiB while gpuprog runs
        started = time.monotonic()
        code = cli.main(["resize", f"{ns}/rt", "--compute", "60", "--memory", "8192", "--wait", "0",
                         "--kubeconfig", str(rn.cluster.kubeconfig)])  # fmt: skip
        assert code == 0
        wait_for(lambda: prog.cmd("info") == f"info {7168 * MIB} {8192 * MIB}", 60,
                 "the runtime in the container to apply the resize", interval=0.05)  # fmt: skip
        latency = time.monotonic() - started
        after = prog.share()
        assert abs(after - 60) <= 5, after
        assert prog.cmd(f"alloc v2 {7168 * MIB + 1}") == "err 2"
        assert prog.cmd(f"alloc v2 {7168 * MIB}") == "ok 2"
        acc = regions.read_accounting(region)
        assert acc is not None and acc.devices[0].compute == 60 and acc.generation >= 2, acc
        _summary.append(
            f"runtime in a real container: share {before:.1f} % at 30, {after:.1f} % at 60 after the resize; "
            f"`gpupool resize` 30->60 % and 4->8 GiB reached the container's runtime in {latency:.3f} s"
        )
    finally:
        prog.close()
    done = wait_for(
        lambda: (s := rn.v1.read_namespaced_pod("rt", ns).status).phase in ("Succeeded", "Failed") and s,
        timeout=60, what="gpuprog to exit after quit", interval=0.3,
    )  # fmt: skip
    assert done.phase == "Succeeded", done.container_statuses
