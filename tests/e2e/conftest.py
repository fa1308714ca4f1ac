"""Fixtures of the e2e tier: one real control plane (etcd, kube-apiserver, KCM, kube-scheduler, kwok) per run.

- ``cluster``: session-scoped :class:`e2e.cluster.Cluster`. Started once per run from the binaries built
  by ``e2e/build.sh``; skipped (whole tier) only when those binaries are missing. With
  ``GPUPOOL_E2E_KUBECONFIG`` set, it is a handle on that existing cluster (kind, see e2e/kind/) and nothing
  is started.
- ``local_cluster``: the same, but skips the test on an external cluster (kwok nodes, process control).
- ``core_v1``: a ``kubernetes.client.CoreV1Api`` for the admin identity.
- ``namespace``: a fresh namespace per test (its ``default`` ServiceAccount exists), deleted afterwards.

Environment: ``GPUPOOL_E2E_BIN`` (binaries), ``GPUPOOL_E2E_RUN_DIR`` (run directory; default
/tmp/gpupool-e2e-<pid>), ``GPUPOOL_E2E_KEEP=1`` (keep the run directory and its logs even when all tests
pass), ``GPUPOOL_E2E_KUBECONFIG`` (use an existing cluster).

On a failing test that uses the cluster, the tails of all process logs are added to the report.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `e2e` is a top-level helper package of the repo, not installed
    sys.path.insert(0, str(ROOT))

from e2e.cluster import Cluster, missing_binaries  # noqa: E402

SKIP_REASON = "k8s binaries not found in $GPUPOOL_E2E_BIN (run e2e/build.sh)"
_current: Cluster | None = None
_failed = False
_summary: list[str] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    rep = yield
    global _failed
    if rep.failed and "cluster" in getattr(item, "fixturenames", ()):
        _failed = True
        if _current is not None and _current.local and _current.processes:
            rep.sections.append(("gpupool e2e: process log tails", _current.log_tails(40)))
            rep.sections.append(("gpupool e2e: run directory", str(_current.run_dir)))
    return rep


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _summary:
        terminalreporter.write_line(f"[e2e] {line}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    global _current
    external = os.environ.get("GPUPOOL_E2E_KUBECONFIG")
    if external:
        c = Cluster.external(external)
        _current = c
        yield c
        return
    if missing_binaries():
        pytest.skip(SKIP_REASON)
    c = Cluster(run_dir=os.environ.get("GPUPOOL_E2E_RUN_DIR") or None)
    c.up()
    _current = c
    _summary.append(f"control plane + {len(c.nodes)} kwok nodes up in {c.startup_seconds:.1f} s ({c.run_dir})")
    _summary.append("ready at (s): " + ", ".join(f"{k} {v}" for k, v in c.timings.items()))
    try:
        yield c
    finally:
        keep = _failed or os.environ.get("GPUPOOL_E2E_KEEP", "") not in ("", "0")
        c.down(remove_run_dir=not keep)
        if keep:
            _summary.append(f"logs kept in {c.log_dir}")
        _current = None


@pytest.fixture
def local_cluster(cluster: Cluster) -> Cluster:
    if not cluster.local:
        pytest.skip("needs the local control plane with kwok nodes (GPUPOOL_E2E_KUBECONFIG is set)")
    return cluster


@pytest.fixture(scope="session")
def core_v1(cluster: Cluster) -> Iterator[Any]:
    from kubernetes import client

    api = cluster.api_client()
    try:
        yield client.CoreV1Api(api)
    finally:
        api.close()


@pytest.fixture
def namespace(cluster: Cluster, core_v1: Any) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    yield name
    try:
        core_v1.delete_namespace(name, grace_period_seconds=0)
    except Exception as e:  # the run goes on; namespace deletion is asynchronous anyway
        sys.stderr.write(f"[e2e] could not delete namespace {name}: {e}\n")
