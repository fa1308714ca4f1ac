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
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="larger request bodies get 413")
    api_timeout_seconds: float = Field(10.0, gt=0, description="timeout of each API-server write")
    watch_timeout_seconds: int = Field(300, ge=1, description="server-side timeout of one watch request")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> ExtenderSettings:
        """Environment first, then flags (`argv` None = sys.argv[1:])."""
        return cls(_cli_parse_args=list(argv) if argv is not None else True)
