"""The gpupool stack on the e2e control plane, shared by every test of this directory (one per session).

- ``stack``: session-scoped :class:`e2e.stack.Stack` on the ``cluster`` of ``tests/e2e/conftest.py``: controller
  (+ admission webhooks), extender, gpupool-scheduler, the ``--multi-node`` node agent for the kwok nodes, and one
  real single-node device plugin (gRPC) for ``PLUGIN_NODE`` registered with a fake kubelet (tests/deviceplugin).
  The webhooks only serve namespaces labelled ``gpupool.io/e2e=stack`` (``STACK_LABEL``) so that the plain
  control-plane tests (``test_control_plane.py``, e.g. the "webhook bypassed" alias case) are unaffected.
- ``gp``: per test, a :class:`GP` helper that creates labelled namespaces, GPUQueues and pods, waits (always a poll
  with a timeout), and at teardown deletes what it made and waits until the extender's ledger let go of it, so
  the capacity of the next test is predictable.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import Cluster
from e2e.stack import Stack
from tests.e2e.gpupool.gp_helpers import GP, HIGH, LOCAL_HARNESS, LOW, STACK_LABEL

PLUGIN_NODE = "cpu-1"  # served by the real single-node device plugin (gRPC) instead of the multi-node publisher
#: served by a real single-node device plugin with the pool backend (runtime regions in a temporary directory)
POOL_NODE = "gpu-t4-1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{LOCAL_HARNESS}(reason): the local-harness feature the test needs (skipped on an external cluster)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """On an external cluster, skip each test with the harness feature it needs, before any fixture starts."""
    if not os.environ.get("GPUPOOL_E2E_KUBECONFIG"):
        return
    marker = item.get_closest_marker(LOCAL_HARNESS)
    reason = marker.args[0] if marker is not None and marker.args else "the gpupool stack as local processes"
    pytest.skip(f"needs the local harness (GPUPOOL_E2E_KUBECONFIG is set): {reason}")


@pytest.fixture(scope="session")
def stack(cluster: Cluster) -> Iterator[Stack]:
    if not cluster.local:
        pytest.skip("the gpupool stack runs as local processes (GPUPOOL_E2E_KUBECONFIG is set)")
    from tests.deviceplugin.helpers import FakeKubelet

    s = Stack(
        cluster,
        plugin_nodes=[PLUGIN_NODE, POOL_NODE],
        webhook_match_expressions=[{"key": STACK_LABEL[0], "operator": "In", "values": [STACK_LABEL[1]]}],
    )
    plugin_dir = Path(tempfile.mkdtemp(prefix="dp"))  # short: unix socket paths are limited to 108 bytes
    kubelet = FakeKubelet(plugin_dir)
    kubelet.start()
    pool_dir = Path(tempfile.mkdtemp(prefix="dpp"))
    pool_kubelet = FakeKubelet(pool_dir)
    pool_kubelet.start()
    t0 = time.monotonic()
    try:
        s.up()
        s.start_node_agent(PLUGIN_NODE, plugin_dir)
        pool_gpus = next(n for n in cluster.nodes if n.name == POOL_NODE).inventory()
        s.start_node_agent(POOL_NODE, pool_dir, gpus=pool_gpus, env={
            "GPUPOOL_BACKEND": "pool", "GPUPOOL_RUNTIME_STATE_DIR": str(pool_dir / "state"),
            "GPUPOOL_RUNTIME_LIB_DIR": str(pool_dir / "lib"), "GPUPOOL_RUNTIME_LIBRARY": str(pool_dir / "none.so"),
        })  # fmt: skip
        s.wait_gpunodes([PLUGIN_NODE, POOL_NODE])
        cluster.kubectl(
            "apply", "-f", "-",
            input=yaml.safe_dump_all(
                [
                    {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": n}, "value": v}
                    for n, v in ((LOW, 100), (HIGH, 1000))
                ]
            ),
        )  # fmt: skip
        s.fake_kubelet = kubelet  # type: ignore[attr-defined]
        s.plugin_dir = plugin_dir  # type: ignore[attr-defined]
        s.pool_kubelet = pool_kubelet  # type: ignore[attr-defined]
        s.pool_dir = pool_dir  # type: ignore[attr-defined]
        sys.stderr.write(
            f"\n[e2e] gpupool stack up in {time.monotonic() - t0:.1f} s {s.timings} "
            f"(scheduler config: {s.scheduler_config_source})\n"
        )
        yield s
    finally:
        s.down()
        kubelet.stop()
        pool_kubelet.stop()
        shutil.rmtree(plugin_dir, ignore_errors=True)
        shutil.rmtree(pool_dir, ignore_errors=True)


@pytest.fixture
def gp(stack: Stack, core_v1: Any) -> Iterator[GP]:
    helper = GP(stack, core_v1)
    try:
        yield helper
    finally:
        helper.cleanup()
