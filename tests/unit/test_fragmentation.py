"""The fragmentation measure of docs/openb-benchmark.md §6 (units: 1 compute unit = 10 milli-GPU)."""

from __future__ import annotations

import pytest

from gpupool.fragmentation import (
    MILLI_PER_UNIT,
    TaskShape,
    Workload,
    cluster_fragmentation,
    default_workload,
    shape_key,
)
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.ledger import Ledger, PlannedSlice
from tests.unit.openb_data import NODES, needs_openb, pods_file

ANY: frozenset[str] = frozenset()


def hand_example() -> Workload:
    """§6.3: M = {(4 cores, 500×1): .5, (8 cores, 1000×1): .3, (2 cores, CPU-only): .2}."""
    return Workload(
        [TaskShape(4000, 50, 1, ANY, 0.5), TaskShape(8000, 100, 1, ANY, 0.3), TaskShape(2000, 0, 0, ANY, 0.2)]
    )


@pytest.mark.parametrize(
    ("free", "cpu", "milli"),
    [([100, 100], 16000, 400), ([60, 100], 16000, 500), ([30, 100], 16000, 500), ([30, 100], 2000, 1300)],
)
def test_hand_vectors(free: list[int], cpu: int, milli: int) -> None:
    assert hand_example().node_fragment(cpu, free, "X") * MILLI_PER_UNIT == pytest.approx(milli)


def test_fragment_ignores_gpu_order_and_memoises() -> None:
    m = hand_example()
    a = m.node_fragment(16000, [100, 60], "X")
    b = m.node_fragment(16000, [60, 100], "X")
    assert a == b == pytest.approx(50.0)  # (4, 500): strands 0; (8, 1000): strands 60; CPU-only: all 160
    assert (m.memo_misses, m.memo_hits) == (1, 1)


def test_model_allow_list_and_untracked_cpu() -> None:
    only_v100 = Workload([TaskShape(1000, 50, 1, frozenset({"V100"}), 1.0)])
    assert only_v100.node_fragment(None, [100, 40], "T4") == 140  # NoAccess: all idle is fragment
    assert only_v100.node_fragment(None, [100, 40], "V100") == 40
    assert only_v100.node_fragment(0, [100, 40], "V100") == 140  # no CPU left
    shape = only_v100.shapes[0]
    assert only_v100.task_fragment(shape, None, [100, 40], "V100") == 40


def test_target_workload_ordering_and_coverage() -> None:
    counts = {
        (1000, 50, 1, ANY): 50,
        (2000, 100, 1, ANY): 30,
        (3000, 100, 1, ANY): 15,  # ties with the next: the larger key first
        (500, 0, 0, ANY): 15,
        (100, 10, 1, ANY): 5,
    }
    m = Workload.from_counts(counts, 0.95)  # 110 of 115 = 95.6 % after four shapes
    assert [(s.cpu_milli, s.compute) for s in m.shapes] == [(1000, 50), (2000, 100), (3000, 100), (500, 0)]
    assert sum(s.popularity for s in m.shapes) == pytest.approx(1.0)
    assert m.shapes[0].popularity == pytest.approx(50 / 110)
    assert shape_key(3152, 810, 1) == (3152, 81, 1, ANY)
    assert shape_key(12500, 0, 0) == (12500, 0, 0, ANY)


def test_bad_workloads() -> None:
    with pytest.raises(ValueError):
        Workload([])
    with pytest.raises(ValueError):
        Workload.from_counts({})
    with pytest.raises(ValueError):
        Workload([TaskShape(0, 0, 0, ANY, -1.0)])


def test_cluster_gauge_over_a_ledger() -> None:
    ledger = Ledger()
    gpus = tuple(GPUInfo(f"n1-g{i}", i, "X", 1000) for i in range(2))
    ledger.upsert_node(NodeInfo("n1", gpus, cpu_milli=16000, memory_mib=64000))
    m = hand_example()
    idle = cluster_fragmentation(ledger, m)
    assert idle.amount_milli == pytest.approx(400)
    assert idle.capacity == 200 and idle.idle == 200
    assert idle.rate_percent == pytest.approx(20.0)
    ledger.commit("p", "n1", [PlannedSlice(0, False, "n1-g0", 40, 100)], cpu_milli=0)
    after = cluster_fragmentation(ledger, m)
    assert after.amount_milli == pytest.approx(500)  # the [600, 1000] row of §6.3
    assert after.amount_percent == pytest.approx(100 * 50 / 200)


#: the default openb mix by hand: 35 shapes, 7766 pods; CPU-only 366 + 290 + 185 + 120 + 95 = 1056 pods;
#: GPU shapes of at most 50 units 388 + 360 + 232 + 122 + 120 + 72 + 54 + 45 + 43 = 1436 pods, the rest 5274;
#: shapes asking more than 4 cores 5564 pods (every CPU-only one among them)
OPENB_PODS, CPU_ONLY, UP_TO_50, OVER_50, OVER_4_CORES = 7766, 1056, 1436, 5274, 5564


def test_default_workload_values() -> None:
    m = default_workload()
    assert len(m.shapes) == 35  # coverage 1.0: every shape kept
    assert (m.shapes[0].cpu_milli, m.shapes[0].compute, m.shapes[0].popularity) == (3152, 81, 1047 / OPENB_PODS)
    assert CPU_ONLY + UP_TO_50 + OVER_50 == OPENB_PODS
    # an idle 8-GPU node: every GPU task fits a whole free GPU, only CPU-only tasks leave all 800 units idle
    assert m.node_fragment(None, [100] * 8, "G2") == pytest.approx(800 * CPU_ONLY / OPENB_PODS)  # 108.78
    # [50, 100]: tasks over 50 units strand the 50; CPU-only tasks strand all 150
    assert m.node_fragment(None, [50, 100], "G2") == pytest.approx((150 * CPU_ONLY + 50 * OVER_50) / OPENB_PODS)
    # 4 free cores: every task asking more than 4 cores strands the whole GPU; the others fit
    assert m.node_fragment(4000, [100], "G2") == pytest.approx(100 * OVER_4_CORES / OPENB_PODS)  # 71.65
    assert m.node_fragment(None, [0, 0], "G2") == 0.0  # nothing idle, nothing fragmented


@needs_openb
@pytest.mark.parametrize(
    ("trace", "percent"),
    [("default", 13.94), ("gpushare40", 13.88), ("gpushare60", 13.82), ("gpushare80", 13.71), ("gpushare100", 13.64)],
)
def test_idle_cluster_fragmentation(trace: str, percent: float) -> None:
    from gpupool.simulator.trace import load_nodes, load_pods, target_workload

    nodes = load_nodes(NODES)
    m = target_workload(load_pods(pods_file(trace)))
    amount = sum(m.node_fragment(n.cpu_milli, [100] * n.gpus, n.model) for n in nodes)
    assert 100 * amount / (100 * sum(n.gpus for n in nodes)) == pytest.approx(percent, abs=0.005)


@pytest.mark.parametrize("seed", range(4))
def test_array_measure_is_the_scalar_one_bit_for_bit(seed: int) -> None:
    """`fragment_many` and `fragment_before_after` (the batch paths of fgd and fgdpp) give exactly the floats of
    `node_fragment`, also where free compute exceeds 100 (over-commit: the per-GPU split table grows), with shapes
    of several GPUs, model allow-lists, CPU that some states lack, and a state with no GPU free."""
    import random

    import numpy as np

    from gpupool.capacity import UNLIMITED

    rng = random.Random(seed)
    shapes = [TaskShape(rng.choice((0, 2000, 8000, 32000)), rng.choice((0, 16, 47, 50, 81, 100, 150)),
                        rng.choice((1, 1, 2, 4)), rng.choice((ANY, ANY, frozenset({"A"}), frozenset({"B"}))),
                        rng.random()) for _ in range(12)]  # fmt: skip
    workload = Workload([s if s.compute else TaskShape(s.cpu_milli, 0, 0, s.models, s.popularity) for s in shapes])
    gpus = rng.choice((1, 4, 8))
    most = rng.choice((100, 250))
    rows = [[rng.choice((0, 3, 19, 50, most, rng.randint(0, most))) for _ in range(gpus)] for _ in range(60)]
    rows[0] = [0] * gpus
    cpus = [rng.choice((None, 0, 4000, 16000, 64000)) for _ in rows]
    free = np.array(rows, dtype=np.int64)
    cpu = np.array([UNLIMITED if c is None else c for c in cpus], dtype=np.int64)
    for model in ("A", "B"):
        want = [workload.node_fragment(c, r, model) for c, r in zip(cpus, rows, strict=True)]
        assert workload.fragment_many(cpu, free, model).tolist() == want
        compute = rng.choice((1, 10, 47, 100))
        at, col = np.nonzero(free >= compute)
        after_cpu = np.where(cpu == UNLIMITED, UNLIMITED, cpu - 3000)
        before, after = workload.fragment_before_after(cpu, after_cpu, free, model, compute, at, col)
        assert before.tolist() == want
        moved = []
        for i, j in zip(at.tolist(), col.tolist(), strict=True):
            state = list(rows[i])
            state[j] -= compute
            moved.append(workload.node_fragment(None if cpus[i] is None else cpus[i] - 3000, state, model))
        assert after.tolist() == moved
