"""The ledger's free-capacity index gives the verdicts of a per-node fit check, through any sequence of changes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpupool import capacity
from gpupool import ledger as ledger_module
from gpupool.errors import OverAllocation
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.ledger import Ledger, PlannedSlice
from gpupool.placement import NO_SCORE, FilterResult, Placer, _fits_now
from gpupool.policies import make_policy
from gpupool.policies.base import Demand, SliceGroup
from gpupool.request import ContainerRequest, Locality, PodRequest

NAMES = [f"n{i}" for i in range(6)]
MEMORIES = (8, 16, 32)

node_st = st.builds(
    lambda name, gpus, cpu, mem, pods: (name, gpus, cpu, mem, pods),
    st.sampled_from(NAMES),
    st.lists(st.tuples(st.sampled_from(MEMORIES), st.booleans()), max_size=4),
    st.none() | st.integers(0, 8),
    st.none() | st.integers(0, 64),
    st.none() | st.integers(0, 3),
)
op_st = st.one_of(
    st.tuples(st.just("upsert"), node_st),
    st.tuples(st.just("remove"), st.sampled_from(NAMES)),
    st.tuples(st.just("commit"), st.sampled_from(NAMES), st.integers(0, 3), st.integers(1, 100),
              st.integers(1, 32), st.integers(0, 4), st.integers(0, 16)),
    st.tuples(st.just("release"), st.integers(0, 40)),
    st.tuples(st.just("health"), st.sampled_from(NAMES), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("disable"), st.sampled_from(NAMES), st.integers(0, 3), st.booleans()),
    st.just(("check",)),
)  # fmt: skip
demand_st = st.builds(
    lambda count, compute, memory, cpu, mem: Demand((SliceGroup(count, compute, memory),), cpu, mem),
    st.integers(0, 3),
    st.sampled_from((1, 10, 50, 99, 100)),
    st.none() | st.sampled_from((1, 4, 8, 16, 32)),
    st.integers(0, 8),
    st.integers(0, 64),
)


def apply(ledger: Ledger, op: tuple[Any, ...], pods: list[str]) -> None:
    kind = op[0]
    if kind == "upsert":
        name, gpus, cpu, mem, pods_max = op[1]
        info = tuple(GPUInfo(f"{name}-g{i}", i, "M", m * 1024, healthy=h) for i, (m, h) in enumerate(gpus))
        ledger.upsert_node(NodeInfo(name, info, cpu_milli=cpu, memory_mib=mem, max_pods=pods_max))
    elif kind == "remove":
        ledger.remove_node(op[1])
    elif kind == "commit":
        _, name, gpu, compute, memory, cpu, host_memory = op
        if not ledger.has_node(name):
            return
        gpus = ledger.gpus_of(name)
        if not gpus:
            return
        g = gpus[gpu % len(gpus)]
        pod = f"p{len(pods)}"
        try:
            ledger.commit(pod, name, [PlannedSlice(0, False, g.uuid, compute, memory * 512)],
                          cpu_milli=cpu, host_memory_mib=host_memory)  # fmt: skip
        except OverAllocation:
            return
        pods.append(pod)
    elif kind == "release":
        if pods:
            pod = pods.pop(op[1] % len(pods))
            if ledger.holding(pod) is not None:  # not released with its node
                ledger.release(pod)
    elif kind in ("health", "disable"):
        _, name, gpu, flag = op
        if ledger.has_node(name) and ledger.gpus_of(name):
            gpus = ledger.gpus_of(name)
            uuid = gpus[gpu % len(gpus)].uuid
            if kind == "health":
                ledger.set_gpu_health(uuid, bool(flag))
            else:
                ledger.set_gpu_disabled(uuid, bool(flag))


def reference(placer: Placer, request: PodRequest, demand: Demand, names: list[str], detail: bool) -> FilterResult:
    """The filter answer node by node, as before the index: `_fits_now` on each view, reasons per state."""
    ledger = placer.ledger
    result = FilterResult()
    if detail or request.locality is not Locality.LOCAL:
        verdicts = [placer.verdict(request, node) for node in names]
        result.passing.extend([node for node, v in zip(names, verdicts, strict=True) if v.fits and not v.remote])
        for node, v in zip(names, verdicts, strict=True):  # then the nodes that pass with remote slices, or fail
            if not v.fits or v.remote:
                result.add(node, v)
        return result
    texts: dict[int, tuple[bool, str]] = {}
    failed: list[tuple[str, bool, str]] = []
    for node in names:
        if not ledger.has_node(node):
            result.add(node, placer.verdict(request, node))
            continue
        view = ledger.view(node)
        if _fits_now(view, demand):
            result.passing.append(node)
            continue
        if view.kid not in texts:
            v = placer._local_failure(request, demand, view)
            texts[view.kid] = (v.resolvable, v.reason.split("; ", 1)[0])
        failed.append((node, *texts[view.kid]))
    result.failed.update({node: text for node, ok, text in failed if ok})
    result.unresolvable.update({node: text for node, ok, text in failed if not ok})
    return result


def request_of(demand: Demand, locality: Locality) -> PodRequest:
    (g,) = demand.groups
    return PodRequest(
        uid="q", containers=(ContainerRequest("c", 0, g.count, g.compute, g.memory_mib),), cpu_milli=demand.cpu_milli,
        host_memory_mib=demand.memory_mib, locality=locality,
    )  # fmt: skip


def fresh(ledger: Ledger) -> Placer:
    return Placer(ledger, {"binpack": make_policy("binpack")}, "binpack")


def check(ledger: Ledger, demands: list[Demand]) -> None:
    index = ledger.capacity_index()
    names = [*NAMES, "ghost"]
    assert len(index) == len(ledger.node_names())
    for demand in demands:
        (g,) = demand.groups
        codes = index.codes(g.count, g.compute, g.memory_mib, demand.cpu_milli, demand.memory_mib).tolist()
        for node, row in zip(names, index.rows(names), strict=True):
            if not ledger.has_node(node):
                assert row == -1
                continue
            assert (codes[row] == capacity.FITS) == _fits_now(ledger.view(node), demand), (node, demand)
        for locality in (Locality.LOCAL, Locality.POOL):
            request = request_of(demand, locality)
            for detail in (False, True):
                got = fresh(ledger).filter(request, names, detail=detail)
                want = reference(fresh(ledger), request, demand, names, detail)
                assert got.passing == want.passing
                assert list(got.failed.items()) == list(want.failed.items())
                assert list(got.unresolvable.items()) == list(want.unresolvable.items())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op_st, min_size=1, max_size=40), st.lists(demand_st, min_size=1, max_size=4))
def test_index_verdicts_match_the_per_node_fit_check(ops: list[tuple[Any, ...]], demands: list[Demand]) -> None:
    ledger = Ledger(slots_per_gpu=3)
    pods: list[str] = []
    check(ledger, demands)  # the index exists from the start: every change after it is incremental
    for op in ops:
        apply(ledger, op, pods)
        if op[0] == "check":
            check(ledger, demands)
    check(ledger, demands)
    check(ledger.copy(), demands)


def test_index_follows_a_planning_copy_without_touching_the_original() -> None:
    ledger = Ledger()
    ledger.upsert_node(NodeInfo("a", (GPUInfo("g0", 0, "M", 1024),)))
    ledger.commit("p", "a", [PlannedSlice(0, False, "g0", 100, 1024)])
    whole = Demand((SliceGroup(1, 100, None),))
    assert ledger.capacity_index().codes(1, 100, None, 0, 0)[0] == capacity.SHORTAGE
    copy = ledger.copy()
    with copy.without(["p"]):
        row = copy.capacity_index().rows(["a"])[0]
        assert copy.capacity_index().codes(1, 100, None, 0, 0)[row] == capacity.FITS
        assert _fits_now(copy.view("a"), whole)
    assert ledger.capacity_index().codes(1, 100, None, 0, 0)[0] == capacity.SHORTAGE


def test_remembered_lists_of_names_follow_nodes_that_come_and_go() -> None:
    """`CapacityIndex.lookup` answers a list it has seen from memory: a node removed, or a row given to another
    node, must not leave the old rows in that memory."""
    ledger = Ledger()
    for name in ("a", "b"):
        ledger.upsert_node(NodeInfo(name, (GPUInfo(f"{name}0", 0, "M", 1024),)))
    names = ["a", "b", "c"]
    index = ledger.capacity_index()
    assert index.lookup(list(names)).tolist() == index.rows(names) == [0, 1, -1]
    ledger.remove_node("a")
    index = ledger.capacity_index()
    assert index.lookup(list(names)).tolist() == [-1, 1, -1]
    ledger.upsert_node(NodeInfo("c", (GPUInfo("c0", 0, "M", 1024),)))  # takes a's row
    index = ledger.capacity_index()
    assert index.lookup(list(names)).tolist() == index.rows(names) == [-1, 1, 0]
    ledger.upsert_node(NodeInfo("a", (GPUInfo("a0", 0, "M", 1024),)))
    index = ledger.capacity_index()
    assert index.lookup(list(names)).tolist() == index.rows(names) == [2, 1, 0]


def test_the_filters_passing_nodes_follow_nodes_that_come_and_go() -> None:
    """The filter hands its passing nodes' rows to the index (`CapacityIndex.remember`) for the prioritize that
    follows: a node removed in between, or its row given to another node, must not leave its old row there."""
    ledger = Ledger()
    for name in ("a", "b", "c"):
        ledger.upsert_node(NodeInfo(name, (GPUInfo(f"{name}0", 0, "M", 1024),)))
    ledger.commit("p", "c", [PlannedSlice(0, False, "c0", 100, 1024)])  # c: no room
    placer = Placer(ledger, {"fgdpp": make_policy("fgdpp")}, "fgdpp")
    request = request_of(Demand((SliceGroup(1, 50, 512),)), Locality.LOCAL)
    passing = placer.filter(request, ["a", "b", "c"]).passing
    assert passing == ["a", "b"]
    assert ledger.capacity_index().lookup(list(passing)).tolist() == [0, 1]
    ledger.remove_node("a")
    assert placer.score_array(request, list(passing)).tolist()[0] == NO_SCORE
    ledger.upsert_node(NodeInfo("d", (GPUInfo("d0", 0, "M", 1024),)))  # takes a's row
    assert ledger.capacity_index().lookup(list(passing)).tolist() == [-1, 1]
    assert placer.score_array(request, list(passing)).tolist() == scores_reference(placer, request, passing)
    assert placer.score_array(request, list(passing)).tolist()[0] == NO_SCORE
    with pytest.raises(ValueError, match="2 names, 1 rows"):
        ledger.capacity_index().remember(["a", "b"], np.array([0]))


def scores_reference(placer: Placer, request: PodRequest, names: list[str]) -> list[int]:
    """Each node's score from its view, evaluated afresh (no memo of the placer)."""
    policy = placer.policy_for(request)
    demand = Demand.of(request)
    out = []
    for node in names:
        choice = policy.evaluate(placer.ledger.view(node), demand) if placer.ledger.has_node(node) else None
        out.append(NO_SCORE if choice is None else choice.score)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op_st, min_size=1, max_size=40), st.lists(demand_st, min_size=1, max_size=3), st.booleans())
def test_remembered_scores_follow_every_change(ops: list[tuple[Any, ...]], demands: list[Demand], few: bool) -> None:
    """`Placer.score_array` keeps a score per node state and the rows of lists of names across calls: through
    commits, releases, upserts, removals, health and disable changes (and kid epochs, `few`) a long-lived placer
    scores as a fresh evaluation of every view does."""
    ledger = Ledger(slots_per_gpu=3)
    placers = {name: Placer(ledger, {name: make_policy(name)}, name) for name in ("fgdpp", "binpack")}
    names = [*NAMES, "ghost"]
    pods: list[str] = []
    stale: dict[tuple[str, Demand], list[str]] = {}  # the last filter's passing nodes, per policy and demand
    with pytest.MonkeyPatch.context() as patch:
        if few:  # kids renumbered every few new states
            patch.setattr(ledger_module, "_MAX_KIDS", 12)
        for op in [*ops, ("check",)]:
            apply(ledger, op, pods)
            if op[0] != "check":
                continue
            for demand in demands:
                request = request_of(demand, Locality.LOCAL)
                for placer in placers.values():
                    got = placer.score_array(request, list(names)).tolist()
                    assert got == scores_reference(placer, request, names), (demand, placer.default_policy)
                    assert got == [NO_SCORE if s is None else s for s in placer.scores(request, names).values()]
                    # as the extender calls it: prioritize with the filter's passing nodes (rows remembered by the
                    # filter), now and after the next changes
                    key = (placer.default_policy, demand)
                    for passing in (stale.get(key), placer.filter(request, list(names)).passing):
                        if passing is not None:
                            got = placer.score_array(request, list(passing)).tolist()
                            assert got == scores_reference(placer, request, passing), (demand, passing)
                    stale[key] = placer.filter(request, list(names)).passing


def test_remembered_scores_follow_renumbered_kids(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the ledger renumbers its kids (`_MAX_KIDS` reached), a node whose row was not changed keeps no kid of
    the old numbering: else it shares a number with another state and gets that state's score."""
    monkeypatch.setattr(ledger_module, "_MAX_KIDS", 3)
    ledger = Ledger()
    for name, memory in (("a", 1024), ("b", 2048), ("c", 4096)):
        ledger.upsert_node(NodeInfo(name, (GPUInfo(f"{name}0", 0, "M", memory), GPUInfo(f"{name}1", 1, "M", memory))))
    placer = fresh(ledger)
    request = request_of(Demand((SliceGroup(1, 100, None),)), Locality.LOCAL)
    names = ["a", "b", "c"]
    assert placer.score_array(request, list(names)).tolist() == scores_reference(placer, request, names)
    epoch = ledger.kid_epoch
    ledger.commit("p1", "a", [PlannedSlice(0, False, "a0", 10, 100)])
    for pod, gpu in (("p2", "c0"), ("p3", "c1")):  # c: no whole GPU left
        ledger.commit(pod, "c", [PlannedSlice(0, False, gpu, 100, 4096)])
    got = placer.score_array(request, list(names)).tolist()
    assert ledger.kid_epoch > epoch  # the kids were renumbered
    assert got == scores_reference(placer, request, names)
    assert got[2] == NO_SCORE


@pytest.mark.parametrize("why", ["log outrun", "kids renumbered"])
def test_a_full_refresh_drops_the_rows_of_removed_nodes(monkeypatch: pytest.MonkeyPatch, why: str) -> None:
    """The index follows the ledger's change log; when that log no longer reaches back to its last refresh, or the
    kids were renumbered, every row is copied again, and a node removed since must lose its row (else a node out of
    the pool keeps the verdict of its last state)."""
    monkeypatch.setattr(ledger_module, "_MAX_CHANGES" if why == "log outrun" else "_MAX_KIDS", 4)
    ledger = Ledger()
    for name in ("a", "b"):
        ledger.upsert_node(NodeInfo(name, (GPUInfo(f"{name}0", 0, "M", 1024),)))
    assert ledger.capacity_index().rows(["a", "b"]) == [0, 1]
    epoch, mark = ledger.kid_epoch, ledger.change_mark()
    ledger.remove_node("a")
    for i in range(6):  # more changes than the log keeps, and new states past `_MAX_KIDS`
        ledger.commit(f"p{i}", "b", [PlannedSlice(0, False, "b0", 10, 100)])
        ledger.view("b")  # each a new state: a kid each
    assert ledger.changes_since(mark) is None if why == "log outrun" else ledger.kid_epoch > epoch
    index = ledger.capacity_index()
    assert index.rows(["a", "b"])[0] == -1
    assert index.codes(1, 100, None, 0, 0)[index.rows(["b"])[0]] == capacity.SHORTAGE
