"""The physical limit of a replay (`gpupool.simulator.bound`): an LP upper bound on allocation at 100 % arrived."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gpupool.simulator.bound import allocation_bound, arrived_at, fekete_schepers, martello_toth
from gpupool.simulator.metrics import discretise
from gpupool.simulator.protocol import replay, shuffled_pods
from gpupool.simulator.trace import TraceNode, TracePod, load_nodes, load_pods, total_gpu_milli
from tests.unit.openb_data import write_synthetic


def pod(i: int, cpu: int, num: int, milli: int, models: frozenset[str] = frozenset(), memory: int = 1024) -> TracePod:
    return TracePod(f"p{i}", cpu, memory, num, milli, models)


def test_two_big_slices_never_share_a_gpu() -> None:
    """A plain capacity LP would pack 2 × 60 % into one GPU; the per-GPU cuts do not."""
    nodes = [TraceNode("n", 64000, 65536, 1, "A")]
    assert allocation_bound(nodes, [pod(0, 1000, 1, 600), pod(1, 1000, 1, 600)]) == pytest.approx(60.0)
    assert allocation_bound(nodes, [pod(0, 1000, 1, 600), pod(1, 1000, 1, 400)]) == pytest.approx(100.0)
    assert allocation_bound(nodes, [pod(i, 1000, 1, 340) for i in range(3)]) == pytest.approx(68.0)


def test_host_cpu_and_models_limit_the_bound() -> None:
    nodes = [TraceNode("n", 16000, 65536, 2, "A")]
    # two whole-GPU pods of 10 cores: only one fits the node's 16 cores
    assert allocation_bound(nodes, [pod(0, 10000, 1, 1000), pod(1, 10000, 1, 1000)]) == pytest.approx(50.0)
    # a model no node has, and more GPUs than a node has, add nothing
    assert allocation_bound(nodes, [pod(0, 1000, 1, 1000, frozenset({"B"})), pod(1, 1000, 4, 1000)]) == 0.0
    assert allocation_bound(nodes, [pod(0, 1000, 1, 1000, frozenset({"A", "B"}))]) == pytest.approx(50.0)
    # host memory: 40 GiB pods on a 64 GiB node
    assert allocation_bound(nodes, [pod(i, 1000, 1, 1000, memory=40960) for i in range(2)]) == pytest.approx(50.0)


def test_dual_feasible_functions() -> None:
    f = fekete_schepers(0.2)
    assert (f(0.1), f(0.5), f(0.81)) == (0.0, 0.5, 1.0)
    g = martello_toth(2)
    assert (g(0.5), g(1 / 3), g(0.4)) == (0.5, pytest.approx(1 / 3), 0.5)


def test_arrived_at_follows_the_discretisation() -> None:
    capacity = 10_000
    order = [pod(i, 1000, 1, 1000) for i in range(14)]  # each 10 % of the capacity
    assert len(arrived_at(order, capacity)) == 10
    assert len(arrived_at(order, capacity, 50)) == 5
    odd = [pod(i, 1000, 1, 700) for i in range(20)]  # 7 % each: 98 %, then 105 % — nothing rounds to 100
    assert len(arrived_at(odd, capacity)) == 14


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_synthetic(tmp_path_factory.mktemp("bound"))


def test_no_policy_beats_the_bound(synthetic: tuple[Path, Path]) -> None:
    nodes = load_nodes(synthetic[0])
    pods = load_pods(synthetic[1])
    capacity = total_gpu_milli(nodes)
    for seed in (42, 43):
        bound = allocation_bound(nodes, arrived_at(shuffled_pods(pods, random.Random(seed), capacity, 1.3), capacity))
        assert 0 < bound <= 100
        for policy in ("fgd", "fgdpp", "bestfit", "binpack"):
            result = replay(nodes, pods, policy, seed)
            assert discretise(result.arrived, result.allocated)[100] <= bound + 1e-9, (policy, seed)
