"""The pool settings both processes share: one pydantic-settings base, turned into one `PoolConfig`.

`ExtenderSettings` and `ControllerSettings` inherit `PoolSettings`, so the environment (`GPUPOOL_*`) and
flags that decide placement are read the same way by both and the chart sets them once
(`gpupool.poolEnv` in charts/gpupool/templates/_helpers.tpl). docs/contracts.md: pool construction.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gpupool import slots
from gpupool.fragmentation import DEFAULT_COVERAGE, Workload
from gpupool.policies import DEFAULT_POLICY
from gpupool.pool import PoolConfig, PoolConfigError


class PoolSettings(BaseSettings):
    """The settings that decide placement. Env `GPUPOOL_<NAME>`, flag `--<name-with-dashes>`; flags win."""

    model_config = SettingsConfigDict(env_prefix="GPUPOOL_", cli_kebab_case=True)

    default_policy: str = Field(DEFAULT_POLICY, description="placement policy when a pod names none")
    policies: list[str] = Field(default_factory=list, description="enabled policies (empty = all available)")
    slots_per_gpu: int = Field(slots.DEFAULT_SLOTS_PER_GPU, ge=1, description="must match the node agents")
    remote_slots: int = Field(slots.DEFAULT_REMOTE_SLOTS, ge=0, description="must match the node agents")
    overcommit_compute_percent: int = Field(100, ge=100, description="best-effort compute over-commit")
    overcommit_memory_percent: int = Field(100, ge=100, description="best-effort memory over-commit")
    fragmentation_workload: str | None = Field(
        None, description="openb-style pod CSV (cpu_milli,num_gpu,gpu_milli) defining the target workload M"
    )

    def pool_config(self) -> PoolConfig:
        """The `PoolConfig` of these settings; reads the workload CSV. Raises `PoolConfigError` naming the setting."""
        config = PoolConfig(
            slots_per_gpu=self.slots_per_gpu,
            remote_slots=self.remote_slots,
            overcommit_compute_percent=self.overcommit_compute_percent,
            overcommit_memory_percent=self.overcommit_memory_percent,
            policies=tuple(self.policies),
            default_policy=self.default_policy,
            workload=self._workload(),
            reservation_workload=self._workload(1.0),  # every row: fgdpp reserves GPU models for them all
        )
        config.policy_names()  # refuse an unknown or simulator-only policy at start, not at the first pod
        return config

    def _workload(self, coverage: float = DEFAULT_COVERAGE) -> Workload | None:
        if not self.fragmentation_workload:
            return None
        from gpupool.simulator.trace import TraceError, load_workload

        try:
            return load_workload(self.fragmentation_workload, coverage)
        except TraceError as exc:
            raise PoolConfigError(f"fragmentation_workload: {exc}") from None
