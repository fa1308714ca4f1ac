"""Fixtures of the Helm chart tier (marker ``helm``).

- ``helm_bin``: the helm binary of the e2e tier (``$GPUPOOL_E2E_BIN`` or ``~/.cache/gpupool/k8s-v1.36.3/bin``);
  tests that need it skip when it is absent.
- ``cluster``: the e2e tier's session control plane (``tests/e2e/conftest.py``), reused as is. Tests that use it
  skip when the k8s binaries are absent.
- ``chart_cluster``: the same with the chart's CRDs applied for real (and a minimal ServiceMonitor CRD, so that
  the ServiceMonitor of ``metrics.serviceMonitor.enabled`` validates).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `e2e` is a top-level helper package of the repo, not installed
    sys.path.insert(0, str(ROOT))

from e2e import chart  # noqa: E402
from e2e.cluster import Cluster  # noqa: E402
from tests.e2e.conftest import cluster  # noqa: E402, F401  (the e2e session fixture, reused)

HERE = Path(__file__).resolve().parent
SERVICEMONITOR_CRD = HERE / "data" / "servicemonitor-crd-min.yaml"


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    path = chart.helm_binary()
    if not os.access(path, os.X_OK):
        pytest.skip(f"helm not found at {path} (run e2e/build.sh or set GPUPOOL_E2E_BIN)")
    return path


@pytest.fixture(scope="session")
def chart_cluster(cluster: Cluster, helm_bin: Path) -> Iterator[Cluster]:  # noqa: F811
    """The control plane with gpupool's CRDs (from charts/gpupool/crds) applied for real."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(chart.CHART_DIR / "crds"))
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(SERVICEMONITOR_CRD))
    for crd in ("gpunodes.gpupool.io", "gpuqueues.gpupool.io", "servicemonitors.monitoring.coreos.com"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    yield cluster
