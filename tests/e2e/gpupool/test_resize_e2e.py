"""Issue 17 item 3 end to end: `gpupool resize` on the e2e cluster reaches the runtime's limits in a running process.

A pod bound to ``POOL_NODE`` (its real node agent runs the pool backend, regions in a temporary directory) is
allocated through the fake kubelet; gpuprog, the runtime's test program, runs with that Allocate environment under
the real runtime against the fake driver. `gpupool resize NS/POD --compute 60 --memory 8192` then goes through the
webhook, the controller (quota), the extender (room, re-signed assignment), the agent (control region) and the
runtime. The latency is measured and reported (the terminal summary), never asserted: polls have deadlines only.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from controller import cli
from deviceplugin import runtime_regions as regions
from deviceplugin.api import pb2
from e2e.polling import wait_for
from e2e.stack import Stack
from gpupool import resize as rz
from tests.deviceplugin.helpers import runtime_process_env
from tests.e2e.gpupool.conftest import POOL_NODE
from tests.e2e.gpupool.gp_helpers import GP, assignment_of, gpu_pod

ROOT = Path(__file__).resolve().parents[3]
MIB = 1 << 20

pytestmark = [
    pytest.mark.local_harness("a real node agent with the pool backend for kwok node gpu-t4-1 and a fake kubelet"),
    pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler for the runtime and the fake driver"),
]


def _allocate(stack: Stack, slot: str) -> Any:
    kubelet = stack.pool_kubelet  # type: ignore[attr-defined]
    with kubelet.dial("gpupool.sock") as stub:
        request = pb2.AllocateRequest(container_requests=[pb2.ContainerAllocateRequest(devices_ids=[slot])])
        reply = stub.Allocate(request, timeout=20)
    return reply.container_responses[0]


def test_resize_reaches_the_runtime_of_a_running_process(
    gp: GP, stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subprocess.run(["make", "-s", "-C", str(ROOT / "runtime"), "test-bin"], check=True, timeout=300)
    build = ROOT / "runtime" / "build"
    ns = gp.namespace()
    gp.create(ns, gpu_pod("live", compute=30, memory=4096, node_selector={"kubernetes.io/hostname": POOL_NODE}))
    pod = gp.wait_bound(ns, "live")
    (s,) = assignment_of(pod)["slices"]  # type: ignore[index]
    c = _allocate(stack, s["slot"])
    mounts = {m.container_path: m.host_path for m in c.mounts}
    env = runtime_process_env(c, tmp_path / "gpus", tmp_path / "fakecuda.state")
    proc = subprocess.Popen([str(build / "gpuprog")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip

    def cmd(line: str) -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        assert cmd("alloc v2 1073741824") == "ok 0"
        assert cmd("info") == f"info {3072 * MIB} {4096 * MIB}"
        started = time.monotonic()
        code = cli.main(["resize", f"{ns}/live", "--compute", "60", "--memory", "8192", "--wait", "0",
                         "--kubeconfig", str(stack.cluster.kubeconfig)])  # fmt: skip
        assert code == 0
        wait_for(lambda: cmd("info") == f"info {7168 * MIB} {8192 * MIB}", 30, "the runtime to apply the resize",
                 interval=0.01)  # fmt: skip
        latency = time.monotonic() - started
        acc = regions.read_accounting(Path(mounts["/run/gpupool"]) / regions.ACCOUNTING_FILE)
        assert acc is not None and acc.devices[0].compute == 60
        with capsys.disabled():
            print(f"\n[e2e] resize 30->60 % and 4->8 GiB: `gpupool resize` to the runtime's limits in {latency:.3f} s")
        stored = gp.pod(ns, "live")
        (after,) = assignment_of(stored)["slices"]  # type: ignore[index]
        assert (after["compute"], after["memory"], after["slot"]) == (60, 8192, s["slot"])
        outcome = rz.outcome_of({"metadata": {"annotations": stored.metadata.annotations}}, 1)
        assert outcome is not None and outcome.state is rz.State.APPLIED
        wait_for(lambda: any(e.startswith("GPUPoolResized: resize #1") for e in gp.events(ns, "live")), 30,
                 "the GPUPoolResized event")  # fmt: skip
        # a shrink below what the process uses is refused with the figures the node agent read
        code = cli.main(["resize", f"{ns}/live", "--memory", "512", "--wait", "30",
                         "--kubeconfig", str(stack.cluster.kubeconfig)])  # fmt: skip
        assert code == 1
        refused = rz.outcome_of({"metadata": {"annotations": gp.pod(ns, "live").metadata.annotations}}, 2)
        assert refused is not None and refused.state is rz.State.REFUSED
        assert "uses 1024 MiB" in refused.message, refused
    finally:
        cmd("quit")
        proc.wait(10)
