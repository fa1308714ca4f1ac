"""fgdpp's reservation term: GPUs of a model that model-constrained tasks need cost other tasks more."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupool.config import PoolSettings
from gpupool.fragmentation import TaskShape, Workload
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.ledger import NodeView
from gpupool.policies import make_policy
from gpupool.policies.base import Demand, SliceGroup
from gpupool.policies.fgdpp import FGDPlusPlus, reserved_shares
from gpupool.pool import build_pool
from gpupool.request import ContainerRequest, PodRequest
from gpupool.simulator.trace import load_workload

ANY: frozenset[str] = frozenset()
T4 = frozenset({"T4"})


def node(model: str, free: list[int], name: str = "n") -> NodeView:
    return NodeView.make(
        name, model, tuple(range(len(free))), tuple(free), tuple(free), (100,) * len(free), len(free),
        64000, 10**6, 100,
    )  # fmt: skip


def whole(models: frozenset[str] = ANY) -> Demand:
    return Demand((SliceGroup(1, 100, 100),), cpu_milli=8000, models=models)


def mix() -> Workload:
    return Workload([TaskShape(8000, 100, 1, ANY, 0.8), TaskShape(8000, 100, 1, T4, 0.1),
                     TaskShape(4000, 50, 1, frozenset({"T4", "V100"}), 0.1)])  # fmt: skip


def test_reserved_shares() -> None:
    # M filling 100 GPUs: T4-only tasks need 10, the T4|V100 tasks 5 GPU, spread 20:30 by capacity
    shares = reserved_shares(mix(), {"G2": 50, "T4": 20, "V100": 30})
    units = 0.8 * 100 + 0.1 * 100 + 0.1 * 50
    t4 = (0.1 * 100 / units * 100 + 0.1 * 50 / units * 100 * 20 / 50) / 20
    assert shares["G2"] == 0.0
    assert shares["T4"] == pytest.approx(t4)
    assert shares["V100"] == pytest.approx(0.1 * 50 / units * 100 * 30 / 50 / 30)
    assert reserved_shares(mix(), {"G2": 98, "T4": 2})["T4"] == 1.0  # at most all of them
    unconstrained = Workload([TaskShape(8000, 100, 1, ANY, 1.0)])
    assert set(reserved_shares(unconstrained, {"G2": 8, "T4": 2}).values()) == {0.0}


def test_unconstrained_pods_leave_reserved_models_alone() -> None:
    reserved = reserved_shares(mix(), {"G2": 50, "T4": 20, "V100": 30})
    plain = FGDPlusPlus(mix())
    aware = FGDPlusPlus(mix(), reserved=reserved)
    g2, t4 = node("G2", [100, 100]), node("T4", [100, 100])
    for policy in (plain, aware):
        assert policy.evaluate(g2, whole()) is not None and policy.evaluate(t4, whole()) is not None
    a_g2, a_t4 = aware.evaluate(g2, whole()), aware.evaluate(t4, whole())
    assert a_g2 is not None and a_t4 is not None and a_g2.score > a_t4.score
    # a T4-only task sees T4 nodes only, and the term leaves its scores exactly as fgdpp's
    for free in ([100, 100], [100, 30], [50, 100]):
        p, a = plain.evaluate(node("T4", free), whole(T4)), aware.evaluate(node("T4", free), whole(T4))
        assert p == a


def test_without_constraints_fgdpp_is_unchanged() -> None:
    w = Workload([TaskShape(8000, 100, 1, ANY, 0.7), TaskShape(4000, 50, 1, ANY, 0.3)])
    reserved = reserved_shares(w, {"G2": 8, "T4": 2})
    plain = make_policy("fgdpp", workload=w)
    same = make_policy("fgdpp", workload=w, reserved=reserved)
    assert isinstance(same, FGDPlusPlus) and same.reserved == {}
    for model in ("G2", "T4"):
        for free in ([100, 100], [60, 100], [0, 40]):
            demand = Demand((SliceGroup(1, 40, 40),), cpu_milli=4000)
            assert plain.evaluate(node(model, free), demand) == same.evaluate(node(model, free), demand)
    with pytest.raises(TypeError, match="reserved"):
        make_policy("fgdpp", workload=w, reserved={"G2": 2.0})


def test_the_simulator_pool_hands_the_shares_to_fgdpp() -> None:
    from gpupool.pool import build_pool
    from gpupool.simulator.protocol import pool_config

    reserved = reserved_shares(mix(), {"G2": 50, "T4": 20, "V100": 30})
    pool = build_pool(pool_config("fgdpp", 42, mix(), reserved))
    policy = pool.policies["fgdpp"]
    assert isinstance(policy, FGDPlusPlus) and policy.reserved == reserved
    plain = build_pool(pool_config("fgdpp", 42, mix())).policies["fgdpp"]
    assert isinstance(plain, FGDPlusPlus) and plain.reserved == {}


def test_the_live_pool_derives_the_reservation_from_the_workload_csv_and_its_gpus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The extender's fgdpp is the policy the simulator measures: ρ from the workload's model allow-lists (the CSV's
    `gpu_spec`, every row) and the pool's GPUs per model, kept current as nodes come and go (issue 15)."""
    csv = tmp_path / "m.csv"
    rows = ["8000,1,1000,"] * 8 + ["8000,1,1000,T4"] * 2  # a fifth of the tasks run only on T4
    csv.write_text("cpu_milli,num_gpu,gpu_milli,gpu_spec\n" + "\n".join(rows) + "\n")
    monkeypatch.setenv("GPUPOOL_FRAGMENTATION_WORKLOAD", str(csv))
    pool = build_pool(PoolSettings().pool_config())
    fgdpp = pool.policies["fgdpp"]
    assert isinstance(fgdpp, FGDPlusPlus)
    for n, (model, gpus) in enumerate([("G2", 8), ("T4", 2)]):
        gpu_list = tuple(GPUInfo(f"{model}-{n}-{i}", i, model, 100) for i in range(gpus))
        pool.ledger.upsert_node(NodeInfo(f"{model}-{n}", gpu_list, cpu_milli=96000, memory_mib=10**6))
    anywhere = PodRequest(uid="a", containers=(ContainerRequest("c", 0, 1, 100, None),), cpu_milli=8000)
    plan = pool.placer.best(anywhere)
    expected = reserved_shares(load_workload(csv, 1.0), {"G2": 8, "T4": 2})
    assert fgdpp.reserved == expected and fgdpp.reserved["T4"] == 1.0
    assert plan is not None and plan.node == "G2-0"  # the T4 GPUs stay for the T4-only tasks
    pool.ledger.upsert_node(NodeInfo("T4-2", tuple(GPUInfo(f"T4-2-{i}", i, "T4", 100) for i in range(8))))
    pool.placer.best(anywhere)
    assert fgdpp.reserved["T4"] == pytest.approx(reserved_shares(load_workload(csv, 1.0), {"G2": 8, "T4": 10})["T4"])
