"""Settings of `gpupool-extender`: environment (`GPUPOOL_*`) and matching `--flags`."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from gpupool import signing_key
from gpupool.config import PoolSettings


class ExtenderSettings(PoolSettings):
    """Every knob of the extender (the pool's in `PoolSettings`). Env `GPUPOOL_<NAME>`, flag `--<name-with-dashes>`."""

    model_config = SettingsConfigDict(env_prefix="GPUPOOL_", cli_kebab_case=True, cli_prog_name="gpupool-extender")

    host: str = Field("127.0.0.1", description="listen address (a sidecar of kube-scheduler: loopback)")
    port: int = Field(8888, ge=0, le=65535, description="listen port (0 = any free port)")
    metrics_host: str = Field("0.0.0.0", description="address of the probe listener (/metrics, /healthz, /readyz)")
    metrics_port: int = Field(0, ge=0, le=65535, description="port of the probe listener; 0 = no separate listener")
    url_prefix: str = Field("", description="path prefix of the verbs, as in the scheduler's urlPrefix path")
    kubeconfig: str | None = Field(None, description="kubeconfig file; unset = in-cluster, else ~/.kube/config")
    in_cluster: bool | None = Field(None, description="force (true) or forbid (false) in-cluster config")
    signing_key_file: str = Field(signing_key.DEFAULT_PATH, description="HMAC key shared with node agents")
    identity_wait_seconds: float = Field(
        60.0,
        ge=0,
        description="a bound pod holds back same-slot-count pods on its node until the kubelet took its devices, "
        "at most this long (docs/contracts.md, identity); 0 = off (same-size pods may then swap slices)",
    )
    narrow_filter: bool = Field(
        True,
        description="filter answers a pod without scoring preferences of its own (preferred affinities, "
        "ScheduleAnyway spread) with the one node prioritize would rank first: kube-scheduler binds there without "
        "scoring nodes or calling prioritize (docs/contracts.md, filter answer); false = every passing node",
    )
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="larger request bodies get 413")
    api_timeout_seconds: float = Field(10.0, gt=0, description="timeout of each API-server write")
    watch_timeout_seconds: int = Field(300, ge=1, description="server-side timeout of one watch request")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> ExtenderSettings:
        """Environment first, then flags (`argv` None = sys.argv[1:])."""
        return cls(_cli_parse_args=list(argv) if argv is not None else True)
