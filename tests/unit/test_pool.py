"""`gpupool.pool` and `gpupool.config`: the one pool constructor and the settings both processes inherit."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupool.config import PoolSettings
from gpupool.policies import SIMULATOR_ONLY, available
from gpupool.pool import PoolConfig, PoolConfigError, build_pool, live_policies


def test_empty_policies_enable_every_live_policy_and_the_default_joins_a_list() -> None:
    assert sorted(build_pool(PoolConfig()).policies) == sorted(live_policies())
    assert "clustering" in SIMULATOR_ONLY and "clustering" not in live_policies()
    pool = build_pool(PoolConfig(policies=("binpack",), default_policy="spread"))
    assert sorted(pool.policies) == ["binpack", "spread"] and pool.placer.default_policy == "spread"
    assert pool.placer.ledger is pool.ledger


def test_clustering_only_in_the_simulator() -> None:
    with pytest.raises(PoolConfigError, match=r"policies: 'clustering' is offered only by the simulator"):
        build_pool(PoolConfig(policies=("fgd", "clustering")))
    sim = build_pool(PoolConfig(policies=("clustering",), default_policy="clustering", simulator=True))
    assert list(sim.policies) == ["clustering"]
    assert sorted(build_pool(PoolConfig(simulator=True)).policies) == sorted(available())


def test_bad_names_and_numbers_name_the_setting() -> None:
    with pytest.raises(PoolConfigError, match=r"default_policy: 'tetris' is not a policy; choose from"):
        build_pool(PoolConfig(default_policy="tetris"))
    with pytest.raises(PoolConfigError, match="over-commit"):
        build_pool(PoolConfig(overcommit_compute_percent=50))


def test_settings_make_the_config_and_read_the_workload_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("cpu_milli,num_gpu,gpu_milli\n1000,1,500\n1000,1,500\n8000,2,1000\n")
    monkeypatch.setenv("GPUPOOL_FRAGMENTATION_WORKLOAD", str(csv))
    monkeypatch.setenv("GPUPOOL_SLOTS_PER_GPU", "8")
    config = PoolSettings().pool_config()
    assert config.slots_per_gpu == 8 and config.workload is not None
    pool = build_pool(config)
    assert pool.workload is config.workload
    assert pool.policies["fgd"].workload is config.workload  # type: ignore[attr-defined]
    assert pool.ledger.slots_per_gpu == 8


def test_a_bad_workload_file_names_the_setting_file_and_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("cpu_milli,num_gpu\n1000,1\n")
    monkeypatch.setenv("GPUPOOL_FRAGMENTATION_WORKLOAD", str(csv))
    with pytest.raises(PoolConfigError, match=r"fragmentation_workload: .*m.csv:1: field 'gpu_milli': missing column"):
        PoolSettings().pool_config()
    csv.write_text("cpu_milli,num_gpu,gpu_milli\n1000,1,half\n")
    with pytest.raises(PoolConfigError, match=r"m.csv:2: field 'gpu_milli': 'half' is not a whole number"):
        PoolSettings().pool_config()
