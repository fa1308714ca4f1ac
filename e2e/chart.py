"""Render the Helm chart ``charts/gpupool`` with the helm binary of the e2e tier.

The e2e kube-scheduler runs with exactly the ``KubeSchedulerConfiguration`` the chart renders::

    from e2e import chart
    cfg = chart.scheduler_config("http://127.0.0.1:PORT", cluster.kubeconfig_for("scheduler"))
    cluster.start_gpupool_scheduler(extender_url, config_yaml=cfg)

Only three fields are changed for a local process (and nothing else): ``clientConnection.kubeconfig``, the
extender's ``urlPrefix`` (the chart renders ``http://127.0.0.1:<scheduler.extender.port>``) and, unless
``leader_elect=True``, ``leaderElection`` (the chart elects on the Lease ``gpupool-scheduler`` in the
release namespace, which a local scheduler identity may not be allowed to write).

``helm`` comes from ``$GPUPOOL_E2E_BIN`` or ``~/.cache/gpupool/k8s-v1.36.3/bin`` (``e2e/build.sh``). A helm
built with ``go install`` believes the cluster is Kubernetes v1.20 (no version ldflags), so every call passes
``--kube-version`` explicitly.
"""

from __future__ import annotations

import copy
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import K8S_VERSION, REPO_ROOT, default_bin_dir

CHART_DIR = REPO_ROOT / "charts" / "gpupool"
DEFAULT_RELEASE = "gpupool"
DEFAULT_NAMESPACE = "gpupool-system"
SCHEDULER_CONFIG_KEY = "config.yaml"


class ChartError(RuntimeError):
    """helm failed, or the rendered chart lacks what was asked for."""


def helm_binary(bin_dir: str | os.PathLike[str] | None = None) -> Path:
    """The helm binary of the e2e tier (not necessarily present: check with ``os.access``)."""
    return Path(bin_dir or default_bin_dir()) / "helm"


def helm(
    *args: str, bin_dir: str | os.PathLike[str] | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run helm with *args*; raise :class:`ChartError` with its stderr when it fails."""
    binary = helm_binary(bin_dir)
    if not os.access(binary, os.X_OK):
        raise ChartError(f"helm not found at {binary} (run e2e/build.sh or set GPUPOOL_E2E_BIN)")
    env = {
        **os.environ,
        # keep helm away from the user's repositories/cache/config
        "HELM_CACHE_HOME": os.environ.get("HELM_CACHE_HOME", str(Path(tempfile.gettempdir()) / "gpupool-helm-cache")),
        "HELM_CONFIG_HOME": os.environ.get(
            "HELM_CONFIG_HOME", str(Path(tempfile.gettempdir()) / "gpupool-helm-config")
        ),
        "HELM_DATA_HOME": os.environ.get("HELM_DATA_HOME", str(Path(tempfile.gettempdir()) / "gpupool-helm-data")),
    }
    proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if proc.returncode != 0:
        raise ChartError(f"helm {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return proc


def render_text(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = DEFAULT_RELEASE,
    namespace: str = DEFAULT_NAMESPACE,
    kube_version: str = K8S_VERSION,
    include_crds: bool = False,
    chart_dir: str | os.PathLike[str] = CHART_DIR,
    extra_args: Sequence[str] = (),
    bin_dir: str | os.PathLike[str] | None = None,
    offline_key: bool = True,
) -> str:
    """``helm template`` output (multi-document YAML) for *values*.

    ``offline_key``: set ``signingKey.generateWithoutCluster`` (unless *values* set it), so that a render
    without cluster access may generate the signing key; False renders exactly *values*."""
    values = dict(values or {})
    if offline_key:
        values["signingKey"] = {"generateWithoutCluster": True, **(values.get("signingKey") or {})}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="gpupool-values-") as fh:
        yaml.safe_dump(values, fh)
        fh.flush()
        args = [
            "template",
            release,
            str(chart_dir),
            "--namespace",
            namespace,
            "--kube-version",
            kube_version,
            "--values",
            fh.name,
            *(["--include-crds"] if include_crds else []),
            *extra_args,
        ]
        return helm(*args, bin_dir=bin_dir).stdout


def render(values: Mapping[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """The chart's manifests for *values* (a nested dict, as in a values file), as a list of objects.

    Keyword arguments: ``release``, ``namespace``, ``kube_version``, ``include_crds``, ``chart_dir``,
    ``extra_args`` (more helm flags, e.g. ``["--set", "a=b"]``), ``bin_dir``, ``offline_key``."""
    docs = yaml.safe_load_all(render_text(values, **kwargs))
    return [d for d in docs if isinstance(d, dict) and d]


def find(
    objects: Sequence[Mapping[str, Any]], kind: str, name: str | None = None, *, component: str | None = None
) -> list[dict[str, Any]]:
    """Objects of *kind* (optionally by name, or by the label app.kubernetes.io/component)."""
    out = []
    for o in objects:
        meta = o.get("metadata") or {}
        if o.get("kind") != kind or (name is not None and meta.get("name") != name):
            continue
        if component is not None and (meta.get("labels") or {}).get("app.kubernetes.io/component") != component:
            continue
        out.append(dict(o))
    return out


def scheduler_config_from(objects: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The KubeSchedulerConfiguration (as a dict) in the scheduler ConfigMap of rendered *objects*."""
    for cm in find(objects, "ConfigMap", component="scheduler"):
        text = (cm.get("data") or {}).get(SCHEDULER_CONFIG_KEY)
        if text:
            cfg = yaml.safe_load(text)
            if isinstance(cfg, dict) and cfg.get("kind") == "KubeSchedulerConfiguration":
                return cfg
    raise ChartError("the rendered chart has no scheduler ConfigMap with a KubeSchedulerConfiguration")


def scheduler_config(
    extender_url: str,
    kubeconfig: str | os.PathLike[str],
    *,
    values: Mapping[str, Any] | None = None,
    leader_elect: bool = False,
    **render_kwargs: Any,
) -> str:
    """The chart's KubeSchedulerConfiguration (YAML) for a local kube-scheduler process.

    Changed from what the chart renders: ``clientConnection.kubeconfig`` = *kubeconfig*, the (single)
    extender's ``urlPrefix`` = *extender_url*, and ``leaderElection.leaderElect`` = *leader_elect*."""
    cfg = copy.deepcopy(scheduler_config_from(render(values, **render_kwargs)))
    cfg.setdefault("clientConnection", {})["kubeconfig"] = str(kubeconfig)
    extenders = cfg.get("extenders") or []
    if len(extenders) != 1:
        raise ChartError(f"expected exactly one extender in the chart's scheduler config, found {len(extenders)}")
    extenders[0]["urlPrefix"] = extender_url
    cfg.setdefault("leaderElection", {})["leaderElect"] = leader_elect
    return str(yaml.safe_dump(cfg, sort_keys=False))
