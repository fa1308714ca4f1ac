"""What Allocate answers for one container: devices, enforcement env, mounts, annotations (DESIGN.md §6).

Device order. Local slices are ordered by GPU index (NVML index = PCI bus order) and the container gets
``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so CUDA device ``i`` inside the container is the ``i``-th uuid of
``NVIDIA_VISIBLE_DEVICES`` (or of the CDI device list). Per-device limits use that ordinal ``i``.

Backends:

- ``mps``: ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=4096M,1=2048M`` (per device, from each slice's memory) and
  ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=<compute>``, plus the MPS pipe directory mounted and named by
  ``CUDA_MPS_PIPE_DIRECTORY``: managed (``--mps-managed``, the chart's default), the pipe directory of the
  daemon the agent runs for the container's GPU (`deviceplugin.mps`) at ``/run/gpupool-mps``, one local GPU
  per container; unmanaged, the one daemon's directory at its host path. MPS takes one thread percentage per
  client process for all its devices, so a container whose slices differ gets the **minimum** of their
  compute: every GPU stays within its slice (the larger slices are under-used) instead of a smaller slice
  overrunning its share. The percentage is a
  ceiling on the SMs a client may use, not a guarantee (NVIDIA MPS docs; anchors.md §6).
- ``hami-core``: ``CUDA_DEVICE_MEMORY_LIMIT_<i>=<memory>m`` per device and ``CUDA_DEVICE_SM_LIMIT=<compute>``
  (one value, the minimum, for the same reason), plus the library directory and ``/etc/ld.so.preload``
  mounted read-only.
- ``pool``: gpupool's runtime (docs/runtime.md). The library directory and ``/etc/ld.so.preload`` mounted
  read-only (unsetting an env variable does not escape it), the container's region directory (host
  ``<runtime-state-dir>/containers/<pod uid>/<container>``) at ``/run/gpupool`` and each local GPU's sharing
  directory at ``/run/gpupool-gpus/<i>``; ``GPUPOOL_MEMORY_LIMITS`` (MiB) and ``GPUPOOL_COMPUTE_LIMITS``
  (percent) per device ordinal — per device, no minimum needed — and ``GPUPOOL_COMPUTE_MODE``. These env limits
  are what the runtime holds when the control region (written by the agent, `deviceplugin.runtime_host`) is
  missing or corrupt.
- ``none``: no enforcement env; the slices are accounted by gpupool only.

Always: ``GPUPOOL_SLICES`` (JSON list of every slice of the container: gpu, node, compute, memory, slot,
remote, and ``device`` = the CUDA ordinal for local ones) and, when the container has remote slices,
``GPUPOOL_REMOTE_SLICES`` (JSON list: endpoint of the owning node agent from that node's GPUNode
``status.agentEndpoint``, node, gpu, compute, memory, slot). A container without local slices gets
``NVIDIA_VISIBLE_DEVICES=void`` (no local GPU even in CUDA base images that default to ``all``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deviceplugin import mps
from deviceplugin import runtime_regions as regions
from deviceplugin.api import pb2
from deviceplugin.settings import Backend, DevicePluginSettings
from gpupool.assignment import SliceRecord

ANNOTATION_PREFIX = "gpupool.io/"


@dataclass(frozen=True, slots=True)
class ContainerPlan:
    """The facts one container response is built from."""

    pod_uid: str
    pod: str  # namespace/name
    container: str  # container key, "0" or "init:0"
    slots: tuple[str, ...]  # the slot ids the kubelet allocated
    slices: tuple[SliceRecord, ...]
    node: str
    how: str
    note: str = ""
    compute_mode: str | None = None  # the pod's `gpupool.io/compute-mode`; None = the node's default


def compute_mode(plan: ContainerPlan, settings: DevicePluginSettings) -> str:
    """The compute mode the pool runtime holds `plan`'s container to: the pod's choice, else the node's."""
    return plan.compute_mode or settings.runtime_compute_mode


def _local_and_remote(
    slices: Sequence[SliceRecord], node: str, gpu_index: Mapping[str, int]
) -> tuple[list[SliceRecord], list[SliceRecord]]:
    local = [s for s in slices if s.node == node]
    remote = [s for s in slices if s.node != node]
    local.sort(key=lambda s: (gpu_index.get(s.gpu, 1 << 30), s.gpu))
    return local, remote


def build_response(
    plan: ContainerPlan,
    settings: DevicePluginSettings,
    gpu_index: Mapping[str, int],
    endpoints: Mapping[str, str],
) -> Any:
    """The `ContainerAllocateResponse` for `plan`. `endpoints`: node -> agent endpoint of remote slices."""
    local, remote = _local_and_remote(plan.slices, plan.node, gpu_index)
    envs: dict[str, str] = {}
    mounts: list[Any] = []
    cdi: list[Any] = []
    uuids = [s.gpu for s in local]

    if settings.cdi:
        cdi = [pb2.CDIDevice(name=f"nvidia.com/gpu={u}") for u in uuids]
        envs["NVIDIA_VISIBLE_DEVICES"] = "void"
    else:
        envs["NVIDIA_VISIBLE_DEVICES"] = ",".join(uuids) if uuids else "void"
    if local:
        envs["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        compute = min(s.compute for s in local)
        if settings.backend is Backend.MPS:
            envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(compute)
            envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = ",".join(f"{i}={s.memory_mib}M" for i, s in enumerate(local))
            if settings.mps_managed:  # the daemon of the container's one GPU (`mps_problem`)
                envs["CUDA_MPS_PIPE_DIRECTORY"] = mps.CONTAINER_PIPE_DIR
                host = mps.pipe_dir(settings.mps_pipe_dir, local[0].gpu)
                mounts.append(pb2.Mount(container_path=mps.CONTAINER_PIPE_DIR, host_path=host))
            else:
                envs["CUDA_MPS_PIPE_DIRECTORY"] = settings.mps_pipe_dir
                mounts.append(pb2.Mount(container_path=settings.mps_pipe_dir, host_path=settings.mps_pipe_dir))
            if settings.mps_shm_dir:
                mounts.append(pb2.Mount(container_path="/dev/shm", host_path=settings.mps_shm_dir))
        elif settings.backend is Backend.HAMI_CORE:
            for i, s in enumerate(local):
                envs[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] = f"{s.memory_mib}m"
            envs["CUDA_DEVICE_SM_LIMIT"] = str(compute)
            mounts.append(
                pb2.Mount(container_path=settings.hami_lib_dir, host_path=settings.hami_lib_dir, read_only=True)
            )
            mounts.append(
                pb2.Mount(container_path="/etc/ld.so.preload", host_path=settings.hami_preload_file, read_only=True)
            )
        elif settings.backend is Backend.POOL:
            envs.update(pool_env(local, compute_mode(plan, settings)))
            mounts.extend(pool_mounts(plan, local, settings))

    listed: list[dict[str, Any]] = []
    for i, s in enumerate(local):
        listed.append(_slice_json(s, remote=False) | {"device": i})
    listed.extend(_slice_json(s, remote=True) for s in remote)
    envs["GPUPOOL_SLICES"] = json.dumps(listed, separators=(",", ":"))
    if remote:
        envs["GPUPOOL_REMOTE_SLICES"] = json.dumps(
            [
                {
                    "endpoint": endpoints.get(s.node, ""),
                    "node": s.node,
                    "gpu": s.gpu,
                    "compute": s.compute,
                    "memory": s.memory_mib,
                    "slot": s.slot,
                }
                for s in remote
            ],
            separators=(",", ":"),
        )
    envs["GPUPOOL_BACKEND"] = settings.backend.value

    annotations = {
        f"{ANNOTATION_PREFIX}pod-uid": plan.pod_uid,
        f"{ANNOTATION_PREFIX}pod": plan.pod,
        f"{ANNOTATION_PREFIX}container": plan.container,
        f"{ANNOTATION_PREFIX}slots": ",".join(plan.slots),
        f"{ANNOTATION_PREFIX}match": plan.how,
    }
    if plan.note:
        annotations[f"{ANNOTATION_PREFIX}match-note"] = plan.note
    return pb2.ContainerAllocateResponse(envs=envs, mounts=mounts, annotations=annotations, cdi_devices=cdi)


def mps_problem(plan: ContainerPlan, settings: DevicePluginSettings, gpu_index: Mapping[str, int]) -> str | None:
    """Why the managed `mps` backend cannot serve `plan`'s container, or None.

    A client connects to one control daemon, and the agent runs one per GPU, so a container may have local
    slices on one GPU only (with several, MPS would hide all but one: refused rather than served wrong).
    """
    if settings.backend is not Backend.MPS or not settings.mps_managed:
        return None
    gpus = sorted({s.gpu for s in local_slices(plan, gpu_index)})
    if len(gpus) > 1:
        return (
            f"the managed mps backend serves one local GPU per container (one MPS daemon per GPU), but container "
            f"{plan.container} has slices on {len(gpus)} GPUs ({', '.join(gpus)}); use the pool backend, or run "
            "one MPS daemon yourself with --mps-managed=false"
        )
    return None


def pool_env(local: Sequence[SliceRecord], mode: str) -> dict[str, str]:
    """The pool backend's env: limits per CUDA ordinal (`local` in ordinal order) and where the regions are."""
    return {
        "GPUPOOL_RUNTIME_DIR": regions.CONTAINER_RUNTIME_DIR,
        "GPUPOOL_GPU_DIR": regions.CONTAINER_GPU_DIR,
        "GPUPOOL_MEMORY_LIMITS": ",".join(str(s.memory_mib) for s in local),
        "GPUPOOL_COMPUTE_LIMITS": ",".join(str(s.compute) for s in local),
        "GPUPOOL_COMPUTE_MODE": mode,
    }


def pool_mounts(plan: ContainerPlan, local: Sequence[SliceRecord], settings: DevicePluginSettings) -> list[Any]:
    lib_dir = settings.runtime_lib_dir.rstrip("/")
    mounts = [
        pb2.Mount(container_path=lib_dir, host_path=lib_dir, read_only=True),
        pb2.Mount(container_path="/etc/ld.so.preload", host_path=f"{lib_dir}/{regions.PRELOAD_FILE}", read_only=True),
        pb2.Mount(
            container_path=regions.CONTAINER_RUNTIME_DIR,
            host_path=regions.container_dir(settings.runtime_state_dir, plan.pod_uid, plan.container),
        ),
    ]
    for i, s in enumerate(local):
        gpu = regions.gpu_dir(settings.runtime_state_dir, s.gpu)
        mounts.append(pb2.Mount(container_path=f"{regions.CONTAINER_GPU_DIR}/{i}", host_path=gpu))
    return mounts


def local_slices(plan: ContainerPlan, gpu_index: Mapping[str, int]) -> list[SliceRecord]:
    """The container's slices on this node in CUDA ordinal order (the order of `NVIDIA_VISIBLE_DEVICES`)."""
    return _local_and_remote(plan.slices, plan.node, gpu_index)[0]


def _slice_json(s: SliceRecord, remote: bool) -> dict[str, Any]:
    return {
        "gpu": s.gpu,
        "node": s.node,
        "compute": s.compute,
        "memory": s.memory_mib,
        "slot": s.slot,
        "remote": remote,
    }
