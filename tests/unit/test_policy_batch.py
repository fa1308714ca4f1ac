"""`evaluate_many` (fgd, fgdpp: vectorised) gives exactly the choices of `evaluate`, state by state."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool.capacity import CapacityIndex
from gpupool.ledger import NodeView
from gpupool.policies.base import Demand, SliceGroup
from gpupool.policies.fgd import FGD
from gpupool.policies.fgdpp import FGDPlusPlus, sharing_bands


def random_view(rng: random.Random, k: int) -> NodeView:
    gpus = rng.choice((1, 2, 4, 8))
    model = rng.choice(("A", "B"))
    total = [rng.choice((0, 16384, 32768)) if rng.random() < 0.05 else rng.choice((16384, 32768)) for _ in range(gpus)]
    fc, fm = [], []
    for t in total:
        used = rng.choice((0, 0, 10, 25, 47, 50, 55, 59, 65, 68, 81, 84, 100, rng.randint(0, 100)))
        fc.append(100 - used)
        fm.append(t if used == 0 and rng.random() < 0.7 else max(0, t - rng.randint(0, t) if t else 0))
    host = rng.random() < 0.5
    return NodeView.make(
        f"n{k}", model, tuple(range(gpus)), tuple(fc), tuple(fm), tuple(total), gpus,
        cpu_free=rng.randint(0, 96_000) if host else None, memory_free=rng.randint(0, 400_000) if host else None,
        pods_free=rng.randint(0, 3) if host else None, inventory=tuple((model, t) for t in total),
    )  # fmt: skip


DEMANDS = (
    [
        Demand((SliceGroup(1, c, m),), cpu, mem)
        for c, m in ((10, 1600), (22, 3000), (32, 5000), (47, 15400), (50, None), (81, 26000), (100, None), (100, 8000))
        for cpu, mem in ((0, 0), (8000, 60000))
    ]
    + [Demand((SliceGroup(k, 100, None),), 4000, 0) for k in (2, 4, 8)]
    + [
        Demand((SliceGroup(2, 50, 8000),)),  # several sharing slices: one by one
        Demand((SliceGroup(1, 50, 8000), SliceGroup(1, 100, None))),  # several groups: one by one
    ]
)


def policies() -> list[FGD]:
    return [
        FGD(),
        FGDPlusPlus(),
        FGDPlusPlus(reserved={"A": 0.3, "B": 0.05}, cpu_per_unit=120.0, memory_per_unit=400.0),
    ]


@pytest.mark.parametrize("which", range(3))
def test_batch_choices_equal_one_by_one(which: int) -> None:
    rng = random.Random(7 + which)
    views = [random_view(rng, k) for k in range(150)]
    for demand in DEMANDS:
        for models in (frozenset(), frozenset({"A"})):
            d = Demand(demand.groups, demand.cpu_milli, demand.memory_mib, models)
            policy = policies()[which]
            want = [policy.evaluate(v, d) for v in views]
            assert policies()[which].evaluate_many(views, d) == want, d


def test_a_subclass_with_its_own_measure_is_evaluated_one_by_one() -> None:
    class Flat(FGDPlusPlus):
        def fragment(self, cpu_free: int | None, free_compute: list[int], model: str, memory_free: int | None = None,
                     gpu_memory: tuple[list[int], tuple[int, ...]] | None = None) -> float:  # fmt: skip
            return float(sum(free_compute) % 7)

    rng = random.Random(3)
    views = [random_view(rng, k) for k in range(40)]
    demand = DEMANDS[0]
    policy = Flat()
    assert policy.evaluate_rows(CapacityIndex(), list(range(40)), demand) is None
    assert policy.evaluate_many(views, demand) == [Flat().evaluate(v, demand) for v in views]


@pytest.mark.parametrize("which", range(3))
def test_batch_scores_equal_the_scores_of_the_choices(which: int) -> None:
    """`score_rows` (prioritize's path, no choices built) gives the scores of `evaluate`, None where it does not fit."""
    rng = random.Random(11 + which)
    views = [random_view(rng, k) for k in range(150)]
    index = CapacityIndex()
    for view in views:
        index.put(view)
    rows = index.rows([v.name for v in views])
    for demand in DEMANDS:
        for models in (frozenset(), frozenset({"A"})):
            d = Demand(demand.groups, demand.cpu_milli, demand.memory_mib, models)
            policy = policies()[which]
            want = [None if (c := policy.evaluate(v, d)) is None else c.score for v in views]
            scored = policies()[which].score_rows(index, rows, d)
            if scored is None:
                assert policies()[which].evaluate_rows(index, rows, d) is None, d
                continue
            scores, fits = scored
            assert [s if f else None for s, f in zip(scores.tolist(), fits.tolist(), strict=True)] == want, d


@pytest.mark.parametrize("big", [False, True])
def test_first_of_equal_gpus_packed_or_not(big: bool) -> None:
    """The batch's "no lower GPU of the state is equal" (one packed integer per GPU, or pair by pair where the
    figures do not fit in it: memories of 2^24 MiB and more) is the rule spelled out over the three figures."""
    import numpy as np

    from gpupool.policies.fgd import _first_of_equals

    rng = np.random.default_rng(5)
    memory = (1 << 24) if big else 32768
    fc = rng.choice([0, 50, 100], size=(300, 6)).astype(np.int64)
    tm = rng.choice([memory, memory // 2], size=(300, 6)).astype(np.int64)
    fm = np.where(rng.random((300, 6)) < 0.5, tm, tm // 2)
    want = np.ones(fc.shape, dtype=bool)
    for i in range(len(fc)):
        for j in range(fc.shape[1]):
            want[i, j] = not any((fc[i, k], fm[i, k], tm[i, k]) == (fc[i, j], fm[i, j], tm[i, j]) for k in range(j))
    assert (_first_of_equals(fc, fm, tm) == want).all()
    assert _first_of_equals(fc[:, :1], fm[:, :1], tm[:, :1]).all()


def test_the_batch_cases_hold_near_fits_and_dead_remainders() -> None:
    """The views above give fgdpp's pairing bands (near fits, dead remainders) work to do in the array form."""
    near, smallest = sharing_bands(FGDPlusPlus().workload)  # type: ignore[misc]
    rng = random.Random(7)
    views = [random_view(rng, k) for k in range(150)]
    seen = set()
    for demand in DEMANDS:
        (group, *more) = demand.groups
        if more or group.count != 1 or group.compute >= 100:
            continue
        for view, choice in zip(views, FGDPlusPlus().evaluate_many(views, demand), strict=True):
            if choice is not None and (free := view.free_compute[choice.picks[0][0]]) < 100:
                left = free - group.compute
                seen.add("near" if left <= near else "dead" if left < smallest else "usable")
    assert seen == {"near", "dead", "usable"}


FREE = st.sampled_from((100, 100, 100, 84, 68, 65, 59, 55, 53, 50, 45, 41, 35, 32, 20, 13, 0))
VIEW = st.tuples(st.lists(FREE, min_size=1, max_size=8), st.integers(0, 64_000))


@settings(max_examples=40, deadline=None)
@given(st.lists(VIEW, min_size=16, max_size=48), st.sampled_from((16, 22, 23, 32, 37, 46, 47, 55, 59, 65, 81)))
def test_pairing_array_form_equals_the_scalar_form(states: list[tuple[list[int], int]], compute: int) -> None:
    """fgdpp's near-fit / dead-remainder key, array form (`evaluate_many`, `score_rows`) against `evaluate`."""
    views = [
        NodeView.make(
            f"n{k}",
            "A",
            tuple(range(len(free))),
            tuple(free),
            tuple(free),
            (100,) * len(free),
            len(free),
            cpu_free=cpu,
            memory_free=10**6,
            pods_free=4,
        )
        for k, (free, cpu) in enumerate(states)
    ]
    demand = Demand((SliceGroup(1, compute, compute),), 4000, 0)
    want = [FGDPlusPlus().evaluate(v, demand) for v in views]
    assert FGDPlusPlus().evaluate_many(views, demand) == want
    index = CapacityIndex()
    for view in views:
        index.put(view)
    scored = FGDPlusPlus().score_rows(index, index.rows([v.name for v in views]), demand)
    assert scored is not None
    scores, fits = scored
    assert [s if f else None for s, f in zip(scores.tolist(), fits.tolist(), strict=True)] == [
        None if c is None else c.score for c in want
    ]
