"""fgdpp's pairing bands: a sharing pod fills a partially used GPU to a near fit first, and avoids dead remainders."""

from __future__ import annotations

import random

import pytest

from gpupool.fragmentation import TaskShape, Workload, default_workload
from gpupool.ledger import NodeView
from gpupool.policies import make_policy
from gpupool.policies.base import MAX_SCORE, Choice, Demand, SliceGroup
from gpupool.policies.fgdpp import FGDPlusPlus, sharing_bands

ANY: frozenset[str] = frozenset()


def view(free: list[int], name: str = "n", cpu: int = 64000) -> NodeView:
    return NodeView.make(
        name, "X", tuple(range(len(free))), tuple(free), tuple(free), (100,) * len(free), len(free), cpu, 10**6, 100,
    )  # fmt: skip


def share(compute: int, cpu: int = 4000) -> Demand:
    return Demand((SliceGroup(1, compute, compute),), cpu_milli=cpu)


def fgdpp() -> FGDPlusPlus:
    policy = make_policy("fgdpp", workload=default_workload())
    assert isinstance(policy, FGDPlusPlus)
    return policy


def test_the_bands_come_from_the_smallest_sharing_share_of_m() -> None:
    # the default mix: 23 % is the smallest share of the sharing computes covering 95 % of its sharing tasks
    assert sharing_bands(default_workload()) == (11, 23)
    mix = Workload([TaskShape(4000, 30, 1, ANY, 0.5), TaskShape(8000, 100, 2, ANY, 0.5)])
    assert sharing_bands(mix) == (15, 30)
    assert sharing_bands(Workload([TaskShape(8000, 100, 1, ANY, 1.0)])) is None  # no sharing task: no bands
    assert FGDPlusPlus(default_workload(), pairing=False).bands is None


def test_a_rare_small_share_does_not_set_the_bands() -> None:
    """M split finely (by CPU, by model) keeps rare shapes; an 11 % task of 1 % of M must not make 47 + 47 (6 left)
    a dead remainder, as c_min = 11 (t = 5) did on gpuspec25."""
    mix = Workload(
        [TaskShape(4000, 47, 1, ANY, 0.49), TaskShape(4000, 32, 1, ANY, 0.25), TaskShape(4000, 16, 1, ANY, 0.25),
         TaskShape(4000, 11, 1, ANY, 0.01)]
    )  # fmt: skip
    assert sharing_bands(mix) == (8, 16)
    assert sharing_bands(mix, coverage=1.0) == (5, 11)
    policy = FGDPlusPlus(mix)
    assert policy.evaluate(view([53, 100]), share(47)) == Choice(MAX_SCORE - 6, ((0,),))


def test_a_32_percent_pod_takes_the_gpu_it_leaves_3_on() -> None:
    """GPUs holding 55, 59 and 65 % (13, 9 and 3 left after a 32 % pod): FGD's ΔF gives the three the same score,
    so the old fgdpp took the lowest index (13 left, dead); now the nearest fit wins, in the node and across
    nodes."""
    policy = fgdpp()
    pod = share(32)
    assert policy.evaluate(view([45, 41, 35]), pod) == Choice(MAX_SCORE - 3, ((2,),))
    on_55, on_59, on_65 = (policy.evaluate(view([free], name=f"n{free}"), pod) for free in (45, 41, 35))
    assert on_55 is not None and on_59 is not None and on_65 is not None
    assert on_65.score == MAX_SCORE - 3 > on_55.score and on_65.score > on_59.score
    plain = FGDPlusPlus(default_workload(), pairing=False)  # the old key: equal scores, the lowest index
    old = plain.evaluate(view([45, 41, 35]), pod)
    assert old is not None and old.picks == ((0,),)
    assert len({plain.evaluate(view([free]), pod) for free in (45, 41, 35)}) == 1


def test_a_dead_remainder_comes_after_a_free_gpu() -> None:
    """A 32 % pod beside a 55 % one leaves 13, which no task of M fits: a fully free GPU is taken instead, and a
    node that offers only the dead remainder scores below every node that offers anything else."""
    policy = fgdpp()
    pod = share(32)
    both = policy.evaluate(view([45, 100]), pod)
    dead = policy.evaluate(view([45], name="dead"), pod)
    free = policy.evaluate(view([100], name="free"), pod)
    assert both is not None and dead is not None and free is not None
    assert both.picks == ((1,),)
    assert dead.score <= 11 < free.score  # t = 11 on the default mix
    old = FGDPlusPlus(default_workload(), pairing=False).evaluate(view([45, 100]), pod)
    assert old is not None and old.picks == ((0,),)  # the old choice: fill the shared GPU, 13 left


def test_an_exact_fit_beats_a_near_fit_and_a_usable_remainder_is_ordinary() -> None:
    policy = fgdpp()
    pod = share(32)
    assert policy.evaluate(view([37, 32, 100]), pod) == Choice(MAX_SCORE, ((1,),))
    usable = policy.evaluate(view([70]), pod)  # 38 left: some task of M fits it, an ordinary choice
    assert usable is not None and 11 < usable.score < MAX_SCORE - 11


@pytest.mark.parametrize("seed", range(4))
def test_whole_and_multi_gpu_pods_are_scored_as_before(seed: int) -> None:
    rng = random.Random(seed)
    policy, plain = fgdpp(), FGDPlusPlus(default_workload(), pairing=False)
    for k in range(200):
        free = [rng.choice((0, 13, 35, 45, 68, 100, 100)) for _ in range(rng.choice((1, 2, 4, 8)))]
        v = view(free, name=f"n{k}", cpu=rng.randint(0, 96000))
        for demand in (Demand((SliceGroup(1, 100, 100),), 8000), Demand((SliceGroup(2, 100, 100),), 8000),
                       Demand((SliceGroup(2, 30, 30),), 4000), Demand((), 4000)):  # fmt: skip
            assert policy.evaluate(v, demand) == plain.evaluate(v, demand), (free, demand)


@pytest.mark.parametrize("seed", range(4))
def test_scores_stay_within_0_to_100_and_keep_the_bands_apart(seed: int) -> None:
    rng = random.Random(seed)
    policy = fgdpp()
    near, smallest = 11, 23  # the default mix's bands
    for k in range(300):
        free = [rng.randint(0, 100) if rng.random() < 0.5 else 100 for _ in range(rng.choice((1, 2, 4, 8)))]
        v = view(free, name=f"n{k}", cpu=rng.randint(0, 96000))
        compute = rng.choice((16, 22, 32, 47, 55, 65, 81))
        choice = policy.evaluate(v, share(compute, cpu=rng.choice((0, 4000, 12000))))
        if choice is None:
            continue
        assert 0 <= choice.score <= MAX_SCORE
        before = free[choice.picks[0][0]]
        left = before - compute
        if before < 100 and left <= near:
            assert choice.score == MAX_SCORE - left
        elif before < 100 and left < smallest:
            assert choice.score <= near
        else:
            assert near < choice.score < MAX_SCORE - near


def test_a_near_fit_in_compute_that_leaves_memory_is_no_near_fit() -> None:
    """With GPU memory, a near fit leaves the GPU nearly full in memory as well: a 32 % slice asking 1 GiB of a
    16 GiB GPU with 35 % and 14 GiB free would leave 13 GiB (81 units' worth) stranded beside 3 units of compute,
    so it is an ordinary choice there (the memory term weighs it); with the memory term off it is a near fit."""
    gpu = NodeView.make("m", "X", (0,), (35,), (14336,), (16384,), 1, 64000, 10**6, 100)
    pod = Demand((SliceGroup(1, 32, 1024),), cpu_milli=4000)
    aware = FGDPlusPlus(default_workload())
    choice = aware.evaluate(gpu, pod)
    assert choice is not None and 11 < choice.score < MAX_SCORE - 11
    blind = FGDPlusPlus(default_workload(), gpu_memory_weight=0.0).evaluate(gpu, pod)
    assert blind == Choice(MAX_SCORE - 3, ((0,),))
    fitting = NodeView.make("f", "X", (0,), (35,), (5734,), (16384,), 1, 64000, 10**6, 100)  # 35 % of 16 GiB free
    assert aware.evaluate(fitting, Demand((SliceGroup(1, 32, 5243),), cpu_milli=4000)) == Choice(97, ((0,),))


def test_a_near_fit_on_a_model_the_pod_pays_a_reservation_for_is_an_ordinary_choice() -> None:
    """The bands must not outrank the reservation term: a 32 % pod that may run anywhere, on a GPU of a model that
    model-constrained pods need (ρ 0.5), is no near fit; on a model nobody reserves, or for a pod that may run
    only on that model (it pays nothing there), it is."""
    policy = FGDPlusPlus(default_workload(), reserved={"X": 0.5, "Y": 0.0})
    pod = share(32)
    on_x = policy.evaluate(view([35]), pod)  # `view` builds model X
    assert on_x is not None and 11 < on_x.score < MAX_SCORE - 11
    on_y = NodeView.make("y", "Y", (0,), (35,), (35,), (100,), 1, 64000, 10**6, 100)
    assert policy.evaluate(on_y, pod) == Choice(MAX_SCORE - 3, ((0,),))
    only_x = Demand(pod.groups, pod.cpu_milli, pod.memory_mib, frozenset({"X"}))
    assert policy.evaluate(view([35]), only_x) == Choice(MAX_SCORE - 3, ((0,),))
