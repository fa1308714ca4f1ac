"""Policies behind the one interface: FGD (§7) and the paper's baselines (§8), plus the registry."""

from __future__ import annotations

import pytest

from gpupool.fragmentation import TaskShape, Workload
from gpupool.ledger import NodeView
from gpupool.policies import DEFAULT_POLICY, available, make_policy
from gpupool.policies.base import Choice, Demand, SliceGroup
from gpupool.policies.baselines import BestFit, Clustering, DotProd, Packing, RandomPolicy
from gpupool.policies.fgd import FGD, fgd_score

ANY: frozenset[str] = frozenset()


def view(free: list[int], cpu: int | None = 16000, name: str = "n", model: str = "X",
         memory: int | None = 10**6, gpus: int | None = None) -> NodeView:  # fmt: skip
    return NodeView.make(
        name, model, tuple(range(len(free))), tuple(free), tuple(free), (100,) * len(free),
        gpus if gpus is not None else len(free), cpu, memory, 100,
    )  # fmt: skip


def share(compute: int, cpu: int = 4000) -> Demand:
    return Demand((SliceGroup(1, compute, compute),), cpu_milli=cpu)


def whole(count: int = 1, cpu: int = 8000) -> Demand:
    return Demand((SliceGroup(count, 100, 100),), cpu_milli=cpu)


def hand_example() -> Workload:
    return Workload(
        [TaskShape(4000, 50, 1, ANY, 0.5), TaskShape(8000, 100, 1, ANY, 0.3), TaskShape(2000, 0, 0, ANY, 0.2)]
    )


def test_registry() -> None:
    assert {"fgd", "fgdpp", "bestfit", "dotprod", "packing", "clustering", "random", "binpack", "spread"} <= set(
        available()
    )
    assert DEFAULT_POLICY in available()
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("nope")
    for name in available():
        assert make_policy(name, workload=hand_example(), seed=1).name == name


def test_fgd_worked_example() -> None:
    """§7: node R = [600, 1000], 16 cores; a (4 cores, 500) task scores 54 on GPU 0 and 48 on GPU 1."""
    fgd = FGD(hand_example())
    v = view([60, 100])
    assert fgd_score(500 / 10 - 300 / 10) == 54
    assert fgd_score(500 / 10 - 550 / 10) == 48
    choice = fgd.evaluate(v, share(50))
    assert choice == Choice(54, ((0,),))
    assert fgd.evaluate(v, whole(1)) == Choice(54, ((1,),))  # an (8 cores, 1000) task: F1 = 300


def test_fgd_ties_go_to_the_lowest_index_and_filters_hold() -> None:
    fgd = FGD(hand_example())
    # [100, 100], 16 cores: F0 = .2 × 200 (CPU-only) = 40. Either GPU gives [50, 100], 12 cores:
    # F1 = .3 × 50 + .2 × 150 = 45, so ΔF = −5 and ⌊100 σ(−0.05)⌋ = 48; the tie goes to GPU 0
    assert fgd.evaluate(view([100, 100]), share(50)) == Choice(48, ((0,),))
    assert fgd.evaluate(view([100, 100], cpu=1000), share(50)) is None  # CPU is a hard filter
    big = Demand((SliceGroup(1, 50, 50),), cpu_milli=4000, memory_mib=100)
    assert fgd.evaluate(view([100, 100], memory=10), big) is None
    assert fgd.evaluate(view([40, 40]), whole(1)) is None
    # [100, 40, 100, 100]: F0 = .5 × 40 + .3 × 40 + .2 × 340 = 100; two whole GPUs take the first free ones,
    # 0 and 2, leaving [0, 40, 0, 100] and 8 cores: F1 = 20 + 12 + 28 = 60, ΔF = 40, ⌊100 σ(0.4)⌋ = 59
    assert fgd.evaluate(view([100, 40, 100, 100]), whole(2)) == Choice(59, ((0, 2),))


def test_fgd_multi_group_demand() -> None:
    fgd = FGD(hand_example())
    demand = Demand((SliceGroup(1, 50, 50), SliceGroup(1, 100, 100)), cpu_milli=4000)
    # F0 of [60, 100, 100] = .3 × 60 + .2 × 260 = 70. The 50 % slice: on GPU 0 F = 5 + 3 + 42 = 50 (ΔF 20,
    # value 54), on GPU 1 F = 0 + 33 + 42 = 75 (ΔF −5, value 48): GPU 0. The whole GPU: the first free, 1.
    # [10, 0, 100], 12 cores: F1 = 5 + 3 + 22 = 30, ΔF = 40, score 59
    assert fgd.evaluate(view([60, 100, 100]), demand) == Choice(59, ((0,), (1,)))


def test_bestfit_scores_and_normalises() -> None:
    bf = BestFit()
    tight = bf.evaluate(view([20, 100], cpu=8000), share(20, cpu=4000))
    loose = bf.evaluate(view([100] * 8, cpu=96000), share(20, cpu=4000))
    assert tight is not None and loose is not None
    assert tight.score > loose.score
    assert tight.picks == ((0,),)  # best-fit GPU
    rescored = bf.rescore([tight, loose])
    assert [c.score for c in rescored] == [100, 0]
    assert [c.score for c in bf.rescore([tight, tight])] == [0, 0]


def test_dotprod() -> None:
    dp = DotProd()
    a = dp.evaluate(view([100] * 8, cpu=96000), whole(1))
    b = dp.evaluate(view([100, 100], cpu=16000), whole(1))
    assert a is not None and b is not None
    assert b.score > a.score  # smaller dot product preferred
    node = (96000 / 128000, 800 / 800)
    pod = (8000 / 128000, 100 / 800)
    assert a.score == int(100 * (1 - (node[0] * pod[0] + node[1] * pod[1]) / 2))


def test_packing_cases() -> None:
    pk = Packing()
    assert pk.evaluate(view([100, 100]), share(30)) == Choice(31, ((0,),))  # all free: 33 - 2
    assert pk.evaluate(view([40, 100]), whole(1)) == Choice(49, ((1,),))  # needs a fully free GPU: 50 - 1
    assert pk.evaluate(view([40, 100]), share(30)) == Choice(96, ((0,),))  # shared GPU with 40 % free
    assert pk.evaluate(view([100, 100]), Demand((), cpu_milli=1000)) == Choice(0, ())  # CPU-only


def test_clustering_bands() -> None:
    cl = Clustering()
    empty = cl.evaluate(view([100] * 8, name="a"), share(50))
    assert empty is not None and empty.score == 25
    cl.placed("a", share(50))
    # fill = 25 × (800 − idle) // 800, plus 75 (only its class here), 50 (its class among others), 25 (empty)
    same = cl.evaluate(view([50] + [100] * 7, name="a"), share(50))
    assert same is not None and same.score == 1 + 75  # idle 750
    cl.placed("a", whole(1))
    mixed = cl.evaluate(view([50, 0] + [100] * 6, name="a"), share(50))
    assert mixed is not None and mixed.score == 4 + 50  # idle 650
    other = cl.evaluate(view([50, 0] + [100] * 6, name="a"), whole(2))
    assert other is not None and other.score == 4  # a class the node does not host: fill only
    assert cl.evaluate(view([100], name="b"), Demand((), cpu_milli=1)) == Choice(0, ())
    cl.released("a", whole(1))
    assert cl.classes["a"] == {"share": 1}


def test_random_is_seeded() -> None:
    a, b = RandomPolicy(3), RandomPolicy(3)
    names = [f"n{i}" for i in range(50)]
    assert [a.pick_node(names) for _ in range(20)] == [b.pick_node(names) for _ in range(20)]
    picks = {RandomPolicy(s).evaluate(view([100] * 8), share(10)).picks for s in range(30)}  # type: ignore[union-attr]
    assert len(picks) > 1
    assert RandomPolicy(1).evaluate(view([50, 100, 100]), whole(2)) == Choice(100, ((1, 2),))


def test_fgdpp_prefers_keeping_cpu_with_gpus() -> None:
    """A CPU-only pod goes where CPU is plentiful for the GPUs left, not where it strands GPUs."""
    m = Workload([TaskShape(12000, 100, 1, ANY, 0.8), TaskShape(12000, 0, 0, ANY, 0.2)])
    policy = make_policy("fgdpp", workload=m)
    cpu_only = Demand((), cpu_milli=12000)
    poor = policy.evaluate(view([100] * 8, cpu=96000, name="g2"), cpu_only)
    rich = policy.evaluate(view([100] * 2, cpu=104000, name="t4"), cpu_only)
    assert poor is not None and rich is not None
    scores = policy.rescore([poor, rich])
    assert scores[1].score > scores[0].score
