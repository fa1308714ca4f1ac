"""Settings of `gpupool-deviceplugin`: environment (`GPUPOOL_*`) and matching `--flags` (flags win).

The node name also comes from the downward-API variable `NODE_NAME` when `GPUPOOL_NODE_NAME` is unset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gpupool import signing_key, slots


class Backend(StrEnum):
    """How slice limits are enforced inside the container (DESIGN.md §6)."""

    MPS = "mps"  #: CUDA MPS client limits (needs an MPS control daemon per GPU)
    HAMI_CORE = "hami-core"  #: HAMi-core LD_PRELOAD library (needs libvgpu.so on the host)
    POOL = "pool"  #: gpupool's own runtime, runtime/libgpupool.so (docs/runtime.md), installed by the agent
    NONE = "none"  #: accounted by gpupool, not enforced in the container


class DevicePluginSettings(BaseSettings):
    """Every knob of the device plugin / node agent. Env `GPUPOOL_<NAME>`, flag `--<name-with-dashes>`."""

    model_config = SettingsConfigDict(env_prefix="GPUPOOL_", cli_kebab_case=True, cli_prog_name="gpupool-deviceplugin")

    node_name: str = Field("", description="this node (default: $NODE_NAME from the downward API)")
    kubeconfig: str | None = Field(None, description="kubeconfig file; unset = in-cluster, else ~/.kube/config")
    backend: Backend = Field(Backend.NONE, description="enforcement: mps | hami-core | pool | none")
    cdi: bool = Field(False, description="answer CDI devices nvidia.com/gpu=<uuid> instead of NVIDIA_VISIBLE_DEVICES")
    slots_per_gpu: int = Field(slots.DEFAULT_SLOTS_PER_GPU, ge=1, le=1024, description="slots per physical GPU")
    remote_slots: int = Field(slots.DEFAULT_REMOTE_SLOTS, ge=0, le=4096, description="slots for remote slices")
    fake_inventory: str | None = Field(None, description="YAML file of fake GPUs (kind, kwok, laptops); unset = NVML")
    multi_node: bool = Field(
        False, description="publish GPUNodes for every node of --fake-inventory (kwok; no kubelet, no gRPC)"
    )
    plugin_dir: str = Field("/var/lib/kubelet/device-plugins/", description="kubelet device-plugin directory")
    socket_name: str = Field("gpupool.sock", description="this plugin's socket file in plugin-dir")
    kubelet_socket: str = Field("kubelet.sock", description="the kubelet registration socket in plugin-dir")
    signing_key_file: str = Field(signing_key.DEFAULT_PATH, description="HMAC key shared with the extender")
    agent_endpoint: str = Field(
        "", description="published as GPUNode status.agentEndpoint (remote slices); {node} is the node name"
    )
    metrics_host: str = Field("0.0.0.0", description="listen address of /metrics and /healthz")
    metrics_port: int = Field(9402, ge=0, le=65535, description="port of /metrics and /healthz (0 = any free port)")
    metrics_enabled: bool = Field(True, description="serve /metrics and /healthz")
    health_interval_seconds: float = Field(5.0, gt=0, description="GPU health polling interval")
    heartbeat_interval_seconds: float = Field(30.0, gt=0, description="GPUNode status.heartbeatTime interval")
    usage_interval_seconds: float = Field(
        60.0, ge=0, description="pool backend: GPUNode status.usage at most this often, with a heartbeat (0 = off)"
    )
    kubelet_poll_seconds: float = Field(1.0, gt=0, description="how often kubelet.sock is checked for a restart")
    allocate_wait_seconds: float = Field(10.0, ge=0, description="Allocate waits this long for the pod cache sync")
    publish_workers: int = Field(
        16, ge=1, le=256, description="--multi-node: GPUNodes written at once (bounded concurrency on the API server)"
    )
    publish_qps: float = Field(
        200.0, ge=0, description="--multi-node: at most this many GPUNode publishes started per second (0 = no limit)"
    )
    api_timeout_seconds: float = Field(10.0, gt=0, description="timeout of each API call")
    watch_timeout_seconds: int = Field(300, ge=1, description="server-side timeout of one pod watch")
    mps_pipe_dir: str = Field(
        "/run/nvidia/mps",
        description="host MPS pipe directory: managed, the root of one directory per GPU; else the daemon's own",
    )
    mps_managed: bool = Field(
        False, description="mps backend: the agent runs one MPS control daemon per GPU (false: you run one daemon)"
    )
    mps_control: str = Field("nvidia-cuda-mps-control", description="managed mps: the MPS control daemon binary")
    mps_log_dir: str = Field("/var/log/gpupool-mps", description="managed mps: root of one log directory per GPU")
    mps_health_interval_seconds: float = Field(5.0, gt=0, description="managed mps: daemon health check interval")
    mps_shm_dir: str | None = Field(None, description="host dir mounted at /dev/shm for MPS clients (optional)")
    hami_lib_dir: str = Field("/usr/local/vgpu", description="host dir with libvgpu.so (mounted at the same path)")
    hami_preload_file: str = Field(
        "/usr/local/vgpu/ld.so.preload", description="host file mounted at /etc/ld.so.preload (hami-core)"
    )
    runtime_library: str = Field(
        "/opt/gpupool/libgpupool.so", description="pool backend: the runtime library in this image, copied to the host"
    )
    runtime_lib_dir: str = Field(
        "/usr/local/gpupool", description="pool backend: host dir of libgpupool.so and ld.so.preload (same path inside)"
    )
    runtime_state_dir: str = Field(
        "/var/lib/gpupool/runtime", description="pool backend: host dir of the per-container and per-GPU regions"
    )
    runtime_compute_mode: Literal["ceiling", "share"] = Field(
        "ceiling", description="pool backend: compute mode of pods without gpupool.io/compute-mode (ceiling or share)"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")

    @model_validator(mode="after")
    def _node_name(self) -> DevicePluginSettings:
        if not self.node_name:
            self.node_name = os.environ.get("NODE_NAME", "")
        if not self.node_name and not self.multi_node:
            raise ValueError("node name unknown: set GPUPOOL_NODE_NAME / --node-name or NODE_NAME (downward API)")
        if self.multi_node and not self.fake_inventory:
            raise ValueError("--multi-node publishes fake nodes: it needs --fake-inventory FILE")
        return self

    def endpoint_of(self, node: str) -> str:
        """The endpoint `node`'s agent publishes as GPUNode status.agentEndpoint: `agent_endpoint`, {node} expanded."""
        return self.agent_endpoint.replace("{node}", node)

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> DevicePluginSettings:
        """Environment first, then flags (`argv` None = sys.argv[1:])."""
        return cls(_cli_parse_args=list(argv) if argv is not None else True)
