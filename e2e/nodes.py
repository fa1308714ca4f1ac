"""Fake GPU nodes: the kwok Node objects, their GPUs in the node agent's fake-inventory format, kwok's stages.

A node's GPUs are written once, in exactly the format `deviceplugin/inventory.py` reads (``--fake-inventory``),
so the GPUNode the agent publishes and the Node kwok runs describe the same GPUs. Node sizes: docs/e2e.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.processes import ClusterError

KWOK_VERSION = "v0.8.0"
GPU_RESOURCE = "gpupool.io/gpu"
GPU_MODEL_LABEL = "gpupool.io/gpu-model"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
SLOTS_PER_GPU = 32
REMOTE_SLOTS = 16

KWOK_STAGE_FILES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)


@dataclass(frozen=True)
class FakeNode:
    """One kwok-managed fake node. ``gpus == 0`` means a CPU-only node."""

    name: str
    gpus: int = 0
    gpu_model: str = ""
    gpu_memory_mib: int = 0
    cpu: str = "32"
    memory: str = "256Gi"
    pods: str = "110"
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Mapping[str, str]] = ()

    @property
    def gpu_slots(self) -> int:
        """The ``gpupool.io/gpu`` value the device plugin would advertise: GPUs x 32 + 16 (0 without GPUs)."""
        return self.gpus * SLOTS_PER_GPU + REMOTE_SLOTS if self.gpus else 0

    def inventory(self) -> list[dict[str, Any]]:
        """This node's GPUs as entries of the node agent's fake-inventory file (deterministic uuids; the first
        half of the GPUs on NUMA node 0, the rest on 1)."""
        return [
            {
                "uuid": f"GPU-{self.name}-{i:02d}",
                "index": i,
                "model": self.gpu_model,
                "memoryMiB": self.gpu_memory_mib,
                "numa": 0 if i < max(1, self.gpus // 2) else 1,
                "health": "Healthy",
            }
            for i in range(self.gpus)
        ]

    def manifest(self) -> dict[str, Any]:
        """The v1 Node object, status included (the API server accepts status on create)."""
        res: dict[str, str] = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods}
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
        }
        if self.gpus:
            res[GPU_RESOURCE] = str(self.gpu_slots)
            labels[GPU_MODEL_LABEL] = self.gpu_model
        labels.update(self.labels)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": labels,
            },
            "spec": {"taints": [dict(t) for t in self.taints]} if self.taints else {},
            "status": {
                "capacity": dict(res),
                "allocatable": dict(res),
                "nodeInfo": {  # all fields: the kubernetes client (v37, pydantic) requires them in a V1Node
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kubeletVersion": "fake",
                    "kubeProxyVersion": "fake",
                    "containerRuntimeVersion": "fake",
                    "kernelVersion": "",
                    "osImage": "",
                    "bootID": "",
                    "machineID": "",
                    "systemUUID": "",
                },
                "phase": "Running",
            },
        }


def fake_inventory(nodes: Iterable[FakeNode]) -> dict[str, list[dict[str, Any]]]:
    """node -> GPU list: the map form of the fake-inventory file (CPU-only nodes: an empty list)."""
    return {n.name: n.inventory() for n in nodes}


def _gpu_nodes(prefix: str, n: int, gpus: int, model: str, mem: int) -> list[FakeNode]:
    return [FakeNode(f"{prefix}-{i}", gpus=gpus, gpu_model=model, gpu_memory_mib=mem) for i in range(n)]


DEFAULT_NODES: tuple[FakeNode, ...] = (
    *_gpu_nodes("gpu-a100", 2, 8, "A100-80GB", 81920),
    *_gpu_nodes("gpu-t4", 2, 4, "T4-16GB", 15360),
    *_gpu_nodes("gpu-h100", 1, 2, "H100-80GB", 81559),
    FakeNode("cpu-0", cpu="16", memory="64Gi"),
    FakeNode("cpu-1", cpu="16", memory="64Gi"),
)


# --------------------------------------------------------------------------------------------- kwok stages


def _go_mod_cache() -> Path:
    env = os.environ.get("GOMODCACHE")
    if env:
        return Path(env)
    for go in (shutil.which("go"), "/usr/local/go/bin/go"):
        if go and os.access(go, os.X_OK):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True, timeout=20)
                if out.returncode == 0 and out.stdout.strip():
                    return Path(out.stdout.strip())
    gopath = os.environ.get("GOPATH", str(Path.home() / "go")).split(os.pathsep)[0]
    return Path(gopath) / "pkg" / "mod"


#: kwok's workers for node stages, node leases and pod stages (kwok's default, 4 each, makes 1,000 nodes take
#: minutes to turn Ready on a loaded 2-core machine: docs/e2e.md "Scale")
KWOK_PARALLELISM = 32

#: kwok's node lease (it renews each lease every quarter of this). A kubelet's 40 s meant ~500 lease writes/s
#: at 5,000 nodes, more than a 2-core machine's API server keeps up with, so nodes went NotReady and back; with
#: 600 s the renewals still lagged to ~9 min under load (docs/e2e.md "Issue 16 at 5,000 nodes"), so 1,800 s:
#: one renewal per node every ~450 s, ~11 writes/s at 5,000 nodes.
NODE_LEASE_SECONDS = 1800

#: kube-controller-manager's grace before it marks a node whose lease was not renewed unhealthy (its
#: --node-monitor-grace-period and --node-startup-grace-period): two lease durations, for renewals that lag
NODE_GRACE_SECONDS = 2 * NODE_LEASE_SECONDS


def kwok_config(parallelism: int = KWOK_PARALLELISM) -> str:
    """kwok's --config file: a KwokConfiguration (its worker counts, the node lease) followed by the stages."""
    options = (
        "apiVersion: config.kwok.x-k8s.io/v1alpha1\n"
        "kind: KwokConfiguration\n"
        "options:\n"
        f"  nodePlayStageParallelism: {parallelism}\n"
        f"  nodeLeaseParallelism: {parallelism}\n"
        f"  podPlayStageParallelism: {parallelism}\n"
        f"  nodeLeaseDurationSeconds: {NODE_LEASE_SECONDS}\n"
    )
    return options + "---\n" + kwok_stages()


def kwok_stages() -> str:
    """kwok v0.8.0 has no built-in stages: concatenate the stage files shipped in its module (e2e/build.sh
    downloads it)."""
    d = _go_mod_cache() / f"sigs.k8s.io/kwok@{KWOK_VERSION}" / "kustomize" / "stage"
    parts = []
    for f in KWOK_STAGE_FILES:
        p = d / f
        if not p.is_file():
            raise ClusterError(f"kwok stage file {p} not found (run e2e/build.sh, it downloads kwok {KWOK_VERSION})")
        parts.append(p.read_text().strip() + "\n")
    return "---\n".join(parts)
