"""Fixtures of the real-node tier: a kubelet + containerd node in a local control plane, gpupool on it.

- ``rn``: session-scoped :class:`RealNodeEnv`: its own :class:`e2e.cluster.Cluster` (run dir
  ``/tmp/gpupool-realnode-<pid>``, one kwok GPU node beside the real one), the gpupool :class:`e2e.stack.Stack`,
  the :class:`e2e.realnode.RealNode` ``real-0`` (2 fake A100s) and gpupool's node agent registered with its kubelet.
  Skipped, with the exact reason, where the binaries, root, or the runtime packages are missing.
- ``ns``: a fresh namespace per test, its pods deleted (and confirmed by the kubelet) afterwards.

On a failing test the tails of every process log (kubelet, containerd, node agent, ...) join the report.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `e2e` is a top-level helper package of the repo, not installed
    sys.path.insert(0, str(ROOT))

from e2e.cluster import Cluster, missing_binaries  # noqa: E402
from e2e.nodes import FakeNode  # noqa: E402
from e2e.realnode import RealNode, missing  # noqa: E402
from e2e.stack import Stack  # noqa: E402

REAL = FakeNode("real-0", gpus=2, gpu_model="A100-80GB", gpu_memory_mib=81920)
KWOK = FakeNode("kwok-0", gpus=2, gpu_model="A100-80GB", gpu_memory_mib=81920)

_env: RealNodeEnv | None = None
_failed = False
_summary: list[str] = []


@dataclass
class RealNodeEnv:
    """Everything the real-node tests stand on."""

    cluster: Cluster
    stack: Stack
    node: RealNode
    agent: str  # the node agent's process name
    v1: Any  # kubernetes CoreV1Api (admin)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    rep = yield
    global _failed
    if rep.failed and _env is not None and "rn" in getattr(item, "fixturenames", ()):
        _failed = True
        rep.sections.append(("gpupool realnode: process log tails", _env.cluster.log_tails(40)))
    return rep


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _summary:
        terminalreporter.write_line(f"[realnode] {line}")


@pytest.fixture(scope="session")
def rn() -> Iterator[RealNodeEnv]:
    global _env
    if os.environ.get("GPUPOOL_E2E_KUBECONFIG"):
        pytest.skip("the real node joins a local control plane (GPUPOOL_E2E_KUBECONFIG is set)")
    if missing_binaries():
        pytest.skip("k8s binaries not found in $GPUPOOL_E2E_BIN (run e2e/build.sh)")
    cluster = Cluster(run_dir=f"/tmp/gpupool-realnode-{os.getpid()}", nodes=[KWOK])
    reasons = missing(cluster.bin_dir)
    if reasons:
        pytest.skip("no real node on this host: " + "; ".join(reasons))
    from kubernetes import client

    t0 = time.monotonic()
    cluster.up()
    node = RealNode(cluster, REAL)
    stack = Stack(cluster, nodes=[KWOK, REAL], plugin_nodes=[REAL.name])
    api = cluster.api_client()
    failed = True
    try:
        node.up()
        t_node = time.monotonic() - t0
        stack.up()
        agent = stack.start_node_agent(REAL.name, node.plugin_dir, gpus=REAL.inventory())
        stack.wait_gpunodes([REAL.name])
        env = RealNodeEnv(cluster, stack, node, agent, client.CoreV1Api(api))
        wait_capacity(env, REAL.gpu_slots)
        _env = env
        _summary.append(
            f"control plane + real node {REAL.name} up in {t_node:.1f} s, gpupool + node agent registered "
            f"in {time.monotonic() - t0:.1f} s (run dir {cluster.run_dir}, node dir {node.dir})"
        )
        yield env
        failed = False
    finally:
        _env = None
        stack.down()
        node.down()
        api.close()
        keep = failed or _failed or os.environ.get("GPUPOOL_E2E_KEEP", "") not in ("", "0")
        cluster.down(remove_run_dir=not keep)
        if keep:
            _summary.append(f"logs kept in {cluster.log_dir}")


def wait_capacity(env: RealNodeEnv, slots: int, timeout: float = 60.0) -> None:
    """Until the kubelet itself holds *slots* healthy ``gpupool.io/gpu`` devices (the node agent registered with
    this kubelet and listed them; PodResources, not the Node status, which lags a kubelet restart)."""
    from e2e.polling import wait_for

    wait_for(
        lambda: env.node.healthy_devices("gpupool.io/gpu") == slots,
        timeout=timeout,
        what=f"the kubelet of {env.node.name} to hold {slots} healthy gpupool.io/gpu",
        interval=0.3,
    )


@pytest.fixture
def ns(rn: RealNodeEnv) -> Iterator[str]:
    name = f"rn-{uuid.uuid4().hex[:8]}"
    rn.cluster.create_namespace(name)
    yield name
    from e2e.polling import wait_for

    for p in rn.v1.list_namespaced_pod(name).items:
        try:
            rn.v1.delete_namespaced_pod(p.metadata.name, name, grace_period_seconds=0)
        except Exception as e:
            sys.stderr.write(f"[realnode] could not delete {name}/{p.metadata.name}: {e}\n")
    try:
        wait_for(lambda: not rn.v1.list_namespaced_pod(name).items, timeout=60, what=f"the pods of {name} gone")
    finally:
        rn.v1.delete_namespace(name, grace_period_seconds=0)

