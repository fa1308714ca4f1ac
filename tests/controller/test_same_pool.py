"""The extender and the controller, started with the same settings, place with the same pool (issue 10 item 1).

Before `gpupool.pool.build_pool`, the controller enabled every policy with FGD's default workload
while the extender enabled the configured ones with the configured workload, so the controller's
admission plans and the extender's binds could disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.runtime import Controller
from controller.settings import ControllerSettings
from extender.main import build
from extender.settings import ExtenderSettings
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.request import ContainerRequest, PodRequest
from tests.extender.stubs import StubAPI

KEY = b"test-key"


def both(monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[Any, Controller]:
    for name, value in env.items():
        monkeypatch.setenv(f"GPUPOOL_{name.upper()}", value)
    extender = build(ExtenderSettings(_cli_parse_args=False), api=StubAPI(), key=KEY)  # type: ignore[call-arg]
    controller = Controller(ControllerSettings(leader_election=False), None, KEY)
    return extender.service, controller


def test_same_settings_same_policies_workload_and_placements(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    workload = tmp_path / "workload.csv"
    workload.write_text("cpu_milli,num_gpu,gpu_milli\n4000,1,1000\n4000,1,1000\n2000,1,500\n")
    service, controller = both(monkeypatch, policies='["binpack","fgd"]', default_policy="fgd",
                               fragmentation_workload=str(workload))  # fmt: skip
    assert sorted(service.placer.policies) == sorted(controller.placer.policies) == ["binpack", "fgd"]
    assert service.placer.default_policy == controller.placer.default_policy == "fgd"
    ext_fgd, ctl_fgd = service.placer.policies["fgd"], controller.placer.policies["fgd"]
    assert ext_fgd.workload.shapes == ctl_fgd.workload.shapes  # type: ignore[attr-defined]
    assert len(ctl_fgd.workload.shapes) == 2  # type: ignore[attr-defined]  # the CSV's, not the default mix
    for ledger in (service.ledger, controller.ledger):
        for n in range(3):
            gpus = tuple(GPUInfo(f"GPU-{n}-{i}", i, "A100", 40960) for i in range(2 + n))
            ledger.upsert_node(NodeInfo(f"node-{n}", gpus))
    for compute in (30, 100, 50, 100, 20):
        request = PodRequest(uid=f"p{compute}", containers=(ContainerRequest("main", 0, 1, compute, compute),))
        planned = [p.best(request) for p in (service.placer, controller.placer)]
        assert planned[0] == planned[1] and planned[0] is not None
        for ledger, plan in zip((service.ledger, controller.ledger), planned, strict=True):
            assert plan is not None
            ledger.commit(f"p{compute}-{len(list(ledger.holdings()))}", plan.node, plan.slices)


def test_a_simulator_only_policy_is_refused_by_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUPOOL_DEFAULT_POLICY", "clustering")
    from gpupool.pool import PoolConfigError

    with pytest.raises(PoolConfigError, match="default_policy: 'clustering' is offered only by the simulator"):
        ExtenderSettings(_cli_parse_args=False).pool_config()  # type: ignore[call-arg]
    with pytest.raises(PoolConfigError, match="default_policy"):
        ControllerSettings().pool_config()
