"""Ledger invariants: never over capacity, all-or-nothing commits, exact release, rebuild equality."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool.assignment import SliceRecord
from gpupool.errors import OverAllocation, UnknownHolder
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.ledger import Holding, Ledger, PlannedSlice
from gpupool.request import QoS


def pool(nodes: int = 2, gpus: int = 2, memory: int = 1000, **kwargs: int) -> Ledger:
    ledger = Ledger(**kwargs)
    for n in range(nodes):
        ledger.upsert_node(NodeInfo(f"n{n}", tuple(GPUInfo(f"G{n}{i}", i, "T4", memory) for i in range(gpus))))
    return ledger


def assert_within_capacity(ledger: Ledger) -> None:
    for name in ledger.node_names():
        for g in ledger.gpus_of(name):
            assert 0 <= g.used_g_compute <= 100
            assert 0 <= g.used_g_memory <= g.memory_mib
            assert 0 <= g.used_compute <= 100 * ledger.overcommit_compute_percent // 100
            assert 0 <= g.used_memory <= g.memory_mib * ledger.overcommit_memory_percent // 100
            assert len(g.used_slots) <= g.slices <= ledger.slots_per_gpu  # remote slices hold no local slot


def test_commit_assigns_distinct_slots_and_release_restores() -> None:
    ledger = pool()
    before = copy.deepcopy(ledger.snapshot())
    h = ledger.commit("p", "n0", [PlannedSlice(0, False, "G00", 30, 100), PlannedSlice(0, False, "G00", 30, 100),
                                  PlannedSlice(0, False, "G10", 10, 10)])
    assert [s.slot for s in h.slices] == ["gpu0-0", "gpu0-1", "remote-0"]
    assert ledger.gpu_free("G00") == (40, 800)
    assert ledger.remote_slots_free("n0") == 15
    ledger.release("p")
    assert ledger.snapshot() == before


def test_over_capacity_changes_nothing() -> None:
    ledger = pool()
    ledger.commit("a", "n0", [PlannedSlice(0, False, "G00", 80, 100)])
    before = copy.deepcopy(ledger.snapshot())
    with pytest.raises(OverAllocation, match="exceed its capacity"):
        ledger.commit("b", "n0", [PlannedSlice(0, False, "G01", 10, 10), PlannedSlice(0, False, "G00", 30, 10)])
    assert ledger.snapshot() == before


def test_slots_and_remote_slots_are_bounded() -> None:
    ledger = pool(slots_per_gpu=2, remote_slots=1)
    ledger.commit("a", "n0", [PlannedSlice(0, False, "G00", 1, 1)] * 2)
    with pytest.raises(OverAllocation, match="no free slot"):
        ledger.commit("b", "n0", [PlannedSlice(0, False, "G00", 1, 1)])
    ledger.commit("c", "n0", [PlannedSlice(0, False, "G10", 1, 1)])
    with pytest.raises(OverAllocation, match="no free remote slot"):
        ledger.commit("d", "n0", [PlannedSlice(0, False, "G11", 1, 1)])


def test_hold_refuses_taken_slot_and_double_holding() -> None:
    ledger = pool()
    ledger.hold(Holding("a", "n0", (SliceRecord(0, "G00", "n0", 10, 10, "gpu0-3"),)))
    with pytest.raises(OverAllocation, match="already held"):
        ledger.hold(Holding("b", "n0", (SliceRecord(0, "G00", "n0", 10, 10, "gpu0-3"),)))
    with pytest.raises(OverAllocation, match="already holds"):
        ledger.hold(Holding("a", "n0", (SliceRecord(0, "G01", "n0", 10, 10, "gpu1-0"),)))
    with pytest.raises(OverAllocation, match="does not belong"):
        ledger.hold(Holding("c", "n0", (SliceRecord(0, "G00", "n0", 10, 10, "gpu1-0"),)))
    with pytest.raises(UnknownHolder):
        ledger.release("nobody")


def test_best_effort_may_overcommit_up_to_ratio_only() -> None:
    ledger = pool(overcommit_compute_percent=150, overcommit_memory_percent=200)
    ledger.commit("g", "n0", [PlannedSlice(0, False, "G00", 100, 1000)])
    with pytest.raises(OverAllocation):
        ledger.commit("g2", "n0", [PlannedSlice(0, False, "G00", 1, 1)])
    ledger.commit("be", "n0", [PlannedSlice(0, False, "G00", 50, 1000)], qos=QoS.BEST_EFFORT)
    assert ledger.view("n0").free_compute == (0, 100)  # no room offered to guaranteed slices
    assert ledger.view_for("n0", QoS.BEST_EFFORT).free_compute == (0, 150)
    with pytest.raises(OverAllocation):
        ledger.commit("be2", "n0", [PlannedSlice(0, False, "G00", 1, 1)], qos=QoS.BEST_EFFORT)
    assert ledger.gpu_free("G00") == (0, 0)
    assert_within_capacity(ledger)


def test_unhealthy_and_disabled_gpus_leave_the_view() -> None:
    ledger = pool()
    ledger.set_gpu_health("G00", False)
    ledger.set_gpu_disabled("G01", True)
    assert ledger.view("n0").gpu_index == ()
    ledger.set_gpu_health("G00", True)
    assert ledger.view("n0").gpu_index == (0,)


def test_remove_node_releases_local_and_remote_holders() -> None:
    ledger = pool()
    ledger.commit("local", "n1", [PlannedSlice(0, False, "G10", 10, 10)])
    ledger.commit("remote", "n0", [PlannedSlice(0, False, "G11", 10, 10)])
    ledger.commit("other", "n0", [PlannedSlice(0, False, "G00", 10, 10)])
    assert ledger.remove_node("n1") == ["local", "remote"]
    assert ledger.holding("other") is not None
    assert ledger.remote_slots_free("n0") == 16


def test_upsert_keeps_holdings_and_drops_those_on_vanished_gpus() -> None:
    ledger = pool()
    ledger.commit("keep", "n0", [PlannedSlice(0, False, "G00", 10, 10)])
    ledger.commit("lose", "n0", [PlannedSlice(0, False, "G01", 10, 10)])
    dropped = ledger.upsert_node(NodeInfo("n0", (GPUInfo("G00", 0, "T4", 1000),)))
    assert dropped == ["lose"]
    assert ledger.gpu_free("G00") == (90, 990)


def test_key_index_follows_changes() -> None:
    ledger = pool(nodes=3)
    groups = ledger.nodes_by_key()
    assert sorted(len(v) for v in groups.values()) == [3]
    ledger.commit("a", "n1", [PlannedSlice(0, False, "G10", 10, 10)])
    assert sorted(len(v) for v in ledger.nodes_by_key().values()) == [1, 2]
    ledger.release("a")
    assert sorted(len(v) for v in ledger.nodes_by_key().values()) == [3]


slice_st = st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(1, 100), st.integers(1, 600), st.booleans())


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.lists(slice_st, min_size=1, max_size=3), st.booleans(), st.integers(0, 2)), max_size=40))
def test_property_never_over_capacity_and_release_restores(ops: list) -> None:  # type: ignore[type-arg]
    ledger = pool(nodes=3, gpus=3, overcommit_compute_percent=150, overcommit_memory_percent=120)
    empty = copy.deepcopy(ledger.snapshot())
    held: list[str] = []
    for i, (slices, best_effort, pod_node) in enumerate(ops):
        planned = [PlannedSlice(0, False, f"G{n}{g}", c, m) for n, g, c, m, _ in slices]
        before = copy.deepcopy(ledger.snapshot())
        try:
            ledger.commit(f"p{i}", f"n{pod_node}", planned, qos=QoS.BEST_EFFORT if best_effort else QoS.GUARANTEED)
            held.append(f"p{i}")
        except OverAllocation:
            assert ledger.snapshot() == before
        assert_within_capacity(ledger)
        if i % 3 == 2 and held:
            ledger.release(held.pop(0))
            assert_within_capacity(ledger)
    # rebuilding from the holdings alone gives the same ledger
    rebuilt = pool(nodes=3, gpus=3, overcommit_compute_percent=150, overcommit_memory_percent=120)
    for h in sorted(ledger.holdings(), key=lambda h: h.pod):
        rebuilt.hold(h)
    assert rebuilt.snapshot() == ledger.snapshot()
    for pod in held:
        ledger.release(pod)
    assert ledger.snapshot() == empty


def test_upsert_node_never_holds_past_capacity_and_quarantines_the_excess() -> None:
    """Issue 12 #3: a GPU reporting less memory kept 12,000 MiB held on 8,192 MiB."""
    from gpupool.assignment import SliceRecord
    from gpupool.inventory import GPUInfo, NodeInfo
    from gpupool.ledger import Holding, Ledger

    ledger = Ledger()
    ledger.upsert_node(NodeInfo("n0", (GPUInfo("GPU-0", 0, "A100", 16384),)))
    for i, pod in enumerate(("a", "b")):
        ledger.hold(Holding(pod, "n0", (SliceRecord(0, "GPU-0", "n0", 30, 6000, f"gpu0-{i}"),)))
    dropped = ledger.upsert_node(NodeInfo("n0", (GPUInfo("GPU-0", 0, "A100", 8192),)))
    gpu = ledger.gpu("GPU-0")
    assert gpu.used_memory <= gpu.memory_mib == 8192
    assert dropped == ["b"] and ledger.holding("b") is None and ledger.holding("a") is not None
    assert "no longer fit node n0" in ledger.quarantined["b"]
    # counted conservatively: b still runs there, so its GPU takes no new slice and its slot stays taken
    assert not ledger.eligible(gpu) and ledger.view("n0").gpu_index == ()
    # the pod holds again once it fits, and leaves the quarantine
    ledger.upsert_node(NodeInfo("n0", (GPUInfo("GPU-0", 0, "A100", 16384),)))
    ledger.hold(Holding("b", "n0", (SliceRecord(0, "GPU-0", "n0", 30, 6000, "gpu0-1"),)))
    assert ledger.quarantined == {} and ledger.gpu("GPU-0").used_memory == 12000


def test_hold_refuses_a_malformed_slot_as_an_over_allocation() -> None:
    """A slot id that is no slot id is a named refusal, never a ValueError out of the ledger."""
    ledger = pool()
    before = copy.deepcopy(ledger.snapshot())
    with pytest.raises(OverAllocation, match="not a gpupool slot id"):
        ledger.hold(Holding("a", "n0", (SliceRecord(0, "G00", "n0", 10, 10, "slot-7"),)))
    with pytest.raises(OverAllocation, match="remote-<k>"):
        ledger.hold(Holding("b", "n0", (SliceRecord(0, "G10", "n1", 10, 10, "gpu0-0"),)))
    assert ledger.snapshot() == before


def test_hold_what_fits_holds_a_claim_as_far_as_capacity_allows() -> None:
    """A quarantined pod's claim: whole if it fits, else as best-effort, else slice by slice; never past capacity."""
    ledger = pool(nodes=1, gpus=2, overcommit_compute_percent=200)
    ledger.hold(Holding("g", "n0", (SliceRecord(0, "G00", "n0", 80, 100, "gpu0-0"),)))
    # guaranteed 40 % on G00 exceeds the physical bound; as best-effort it fits the over-commit bound
    claim = Holding("q", "n0", (SliceRecord(0, "G00", "n0", 40, 100, "gpu0-1"),))
    held, excess = ledger.hold_what_fits(claim)
    assert excess == () and held is not None and held.qos is QoS.BEST_EFFORT and held.slices == claim.slices
    assert ledger.gpu("G00").used_compute == 120 and ledger.gpu("G00").used_g_compute == 80
    # slice by slice: a taken slot and an over-capacity slice are reported, the rest is held
    greedy = Holding("r", "n0", (
        SliceRecord(0, "G00", "n0", 10, 10, "gpu0-0"),  # slot of pod g
        SliceRecord(0, "G01", "n0", 90, 10, "gpu1-0"),
        SliceRecord(0, "G00", "n0", 90, 10, "gpu0-2"),  # 120 + 90 > 200
        SliceRecord(0, "G09", "n0", 10, 10, "gpu9-0"),  # no such GPU
    ))  # fmt: skip
    held, excess = ledger.hold_what_fits(greedy)
    assert held is not None and held.slices == (greedy.slices[1],)
    assert excess == (greedy.slices[0], greedy.slices[2], greedy.slices[3])
    assert_within_capacity(ledger)
    assert ledger.hold_what_fits(Holding("s", "n0", (greedy.slices[3],))) == (None, (greedy.slices[3],))
    with pytest.raises(OverAllocation):
        ledger.hold_what_fits(claim)  # "q" already holds


def test_kids_index_follows_every_change() -> None:
    """`Ledger.kids` (the filter's node -> state index) always names the state `view` would build."""
    ledger = pool(nodes=3, gpus=2)
    names = ["n0", "n1", "n2", "gone"]

    def agrees() -> None:
        assert ledger.kids(names) == [ledger.view(n).kid for n in names[:3]] + [-1]

    agrees()
    assert len(set(ledger.kids(names[:3]))) == 1  # equal nodes, one state
    ledger.commit("a", "n0", [PlannedSlice(0, False, "G00", 50, 100)])
    agrees()
    assert ledger.kids(["n0"]) != ledger.kids(["n1"])
    ledger.set_gpu_health("G10", False)
    agrees()
    ledger.release("a")
    agrees()
    copy_ = ledger.copy()
    copy_.commit("b", "n2", [PlannedSlice(0, False, "G20", 10, 10)])
    assert copy_.kids(["n2"]) == [copy_.view("n2").kid] and ledger.kids(["n2"]) == [ledger.view("n2").kid]
    ledger.remove_node("n2")
    assert ledger.kids(names)[2:] == [-1, -1]
