"""Settings of `gpupool-controller`: environment (`GPUPOOL_*`) and matching `--flags` (flags win)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from gpupool import signing_key
from gpupool.config import PoolSettings

DEFAULT_SYSTEM_USERS = (
    "system:serviceaccount:gpupool-system:gpupool-controller",
    "system:serviceaccount:gpupool-system:gpupool-extender",
    "system:serviceaccount:gpupool-system:gpupool-deviceplugin",
)


class ControllerSettings(PoolSettings):
    """Every knob of the controller (the pool's in `PoolSettings`, shared with the extender)."""

    model_config = SettingsConfigDict(env_prefix="GPUPOOL_", cli_kebab_case=True, cli_prog_name="gpupool-controller")

    kubeconfig: str | None = Field(None, description="kubeconfig file; unset = in-cluster, else ~/.kube/config")
    signing_key_file: str = Field(signing_key.DEFAULT_PATH, description="HMAC key that verifies assignments")
    # webhooks
    webhook_enabled: bool = Field(True, description="serve the admission webhooks")
    webhook_host: str = Field("0.0.0.0", description="listen address of the webhook server")
    webhook_port: int = Field(9443, ge=1, le=65535)
    webhook_cert_file: str | None = Field(None, description="TLS certificate (PEM); the chart mounts it")
    webhook_key_file: str | None = Field(None, description="TLS private key (PEM)")
    system_usernames: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SYSTEM_USERS),
        description="users allowed to write gpupool.io/assignment|allocated|nominated and remove the gate",
    )
    allow_privileged: bool = Field(False, description="allow privileged containers to hold slices")
    # queues
    require_queue: bool = Field(False, description="pods that resolve to no GPUQueue wait (else: no quota)")
    admission_interval_seconds: float = Field(
        1.0, gt=0, description="the admission cycle's backstop period (events wake it sooner: controller/runtime.py)"
    )
    admission_coalesce_seconds: float = Field(
        0.02, ge=0, description="after an event, wait this long for more before the cycle (a burst is one cycle)"
    )
    api_write_concurrency: int = Field(
        16, ge=1, le=64,
        description="API writes of one cycle in flight at once (gate removals, conditions, Events, statuses)",
    )  # fmt: skip
    gpunode_status_interval_seconds: float = Field(
        5.0, ge=0,
        description="a GPUNode's status is written again at most this often (a burst of binds is one write); "
                    "0 = on every cycle that changed it",
    )  # fmt: skip
    gpunode_status_writes_per_second: float = Field(
        10.0, gt=0, le=10_000,
        description="GPUNode status writes sent per second across the cluster at most, the longest-changed first "
                    "(after a burst over N nodes a status may lag the ledger by up to N / this seconds)",
    )  # fmt: skip
    reservation_ttl_seconds: float = Field(600.0, gt=0, description="admitted pods that do not bind release it")
    nomination_ttl_seconds: float = Field(300.0, gt=0, description="nominations of preemptors expire")
    group_bind_timeout_seconds: float = Field(
        300.0, gt=0, description="an admitted pod group not bound within it has its reservations released as one"
    )
    preemption_enabled: bool = Field(True)
    unhealthy_gpu_action: str = Field(
        "evict", pattern="^(evict|keep)$", description="pods holding slices of an unhealthy GPU: evict or keep"
    )
    gpunode_gone_grace_seconds: float = Field(
        300.0, ge=0, description="a GPUNode gone this long (not republished by its agent) evicts the pods on it",
    )
    # HA
    leader_election: bool = Field(True, description="coordinate replicas through a Lease")
    lease_name: str = Field("gpupool-controller")
    lease_namespace: str = Field("gpupool-system")
    lease_duration_seconds: float = Field(15.0, gt=0)
    lease_renew_seconds: float = Field(5.0, gt=0)
    identity: str | None = Field(None, description="holder identity (default: hostname + pid)")
    # observability
    metrics_port: int = Field(9090, ge=0, le=65535, description="0 = no /metrics server")
    log_level: str = Field("INFO")

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> ControllerSettings:
        return cls(_cli_parse_args=list(argv) if argv is not None else True)
