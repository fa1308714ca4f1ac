"""The identity rule (gpupool.identity): never two unserved pods with a shared slot count on one node."""

from __future__ import annotations

from typing import Any

import pytest

from gpupool import identity, resources
from gpupool.assignment import SliceRecord
from gpupool.request import ContainerRequest, PodRequest


def sl(container: int, slot: str, init: bool = False) -> SliceRecord:
    return SliceRecord(container=container, gpu="GPU-0", node="n", compute=10, memory_mib=100, slot=slot, init=init)


def unserved(name: str, *counts: int, at: float = 1000.0) -> identity.Unserved:
    return identity.Unserved(f"default/{name}", frozenset(counts), at)


def pod(phase: str = "Pending", allocated: str | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    annotations = {resources.ALLOCATED: allocated} if allocated is not None else {}
    return {"metadata": {"annotations": annotations}, "status": {"phase": phase, **(status or {})}}


# --- the rule ------------------------------------------------------------------------------------------------


def test_a_shared_slot_count_is_ambiguous() -> None:
    a = unserved("a", 1)
    assert identity.blocker([a], {1}, now=1001.0, wait_s=60) == (a, 1)
    # any container of either pod: a 2-slot init container of the unserved pod meets a 2-slot app container
    b = unserved("b", 1, 2)
    assert identity.blocker([b], {3, 2}, now=1001.0, wait_s=60) == (b, 2)


def test_different_slot_counts_never_wait_on_each_other() -> None:
    assert identity.blocker([unserved("a", 1), unserved("b", 2, 4)], {3}, now=1001.0, wait_s=60) is None
    assert identity.blocker([], {1}, now=1001.0, wait_s=60) is None
    assert identity.blocker([unserved("a", 1)], set(), now=1001.0, wait_s=60) is None  # asks for no slices


def test_the_oldest_blocker_is_named() -> None:
    late, early = unserved("late", 1, at=1005.0), unserved("early", 1, at=1001.0)
    assert identity.blocker([late, early], {1}, now=1010.0, wait_s=60) == (early, 1)


def test_an_overdue_pod_no_longer_blocks() -> None:
    a = unserved("a", 1, at=1000.0)
    assert not identity.overdue(a, now=1060.0, wait_s=60)
    assert identity.blocker([a], {1}, now=1060.0, wait_s=60) == (a, 1)
    assert identity.overdue(a, now=1060.5, wait_s=60)
    assert identity.blocker([a], {1}, now=1060.5, wait_s=60) is None
    # an overdue pod is skipped, a younger one of the same count still blocks
    b = unserved("b", 1, at=1050.0)
    assert identity.blocker([a, b], {1}, now=1061.0, wait_s=60) == (b, 1)


def test_wait_zero_turns_the_rule_off() -> None:
    assert identity.blocker([unserved("a", 1)], {1}, now=1000.0, wait_s=0) is None


def test_wait_reason_names_the_pod_and_the_count() -> None:
    text = identity.wait_reason(unserved("q", 2), 2)
    assert text == (
        "waiting for the kubelet to take pod default/q's devices: same slot count 2; gpupool serves one such "
        "pod per node at a time so each container gets its own slices"
    )


# --- slot counts -----------------------------------------------------------------------------------------------


def test_slot_counts_per_container_init_containers_included() -> None:
    slices = [sl(0, "gpu0-0"), sl(0, "gpu1-0"), sl(1, "gpu0-1"), sl(0, "gpu0-2", init=True)]
    assert identity.slot_counts(slices) == {2, 1}
    assert list(identity.container_slices(slices)) == ["init:0", "0", "1"]
    request = PodRequest(
        uid="u",
        containers=(
            ContainerRequest("init", 0, 3, 10, None, init=True),
            ContainerRequest("main", 0, 1, 10, None),
            ContainerRequest("side", 1, 1, 10, None),
        ),
    )
    assert identity.request_slot_counts(request) == {3, 1}


# --- served ----------------------------------------------------------------------------------------------------


def test_served_when_every_container_with_slices_is_recorded() -> None:
    slices = [sl(0, "gpu0-0", init=True), sl(0, "gpu0-1"), sl(2, "gpu0-2")]
    assert not identity.served(pod(), slices)
    assert not identity.served(pod(allocated='["init:0","0"]'), slices)  # container 2 still waits
    assert identity.served(pod(allocated='["init:0","0","2"]'), slices)
    assert not identity.served(pod(allocated="{garbage"), slices)  # unreadable: not served (phase or time decide)


@pytest.mark.parametrize("phase", ["Running", "Succeeded", "Failed"])
def test_served_by_phase(phase: str) -> None:
    assert identity.served(pod(phase), [sl(0, "gpu0-0")])


@pytest.mark.parametrize(
    "field,entry",
    [
        ("containerStatuses", {"name": "main", "state": {"running": {}}}),
        ("containerStatuses", {"name": "main", "started": True, "state": {"waiting": {}}}),
        ("initContainerStatuses", {"name": "init", "state": {"terminated": {"exitCode": 0}}}),
    ],
)
def test_served_by_a_started_container(field: str, entry: dict[str, Any]) -> None:
    assert identity.served(pod(status={field: [entry]}), [sl(0, "gpu0-0")])


def test_a_waiting_container_of_a_pending_pod_is_not_proof() -> None:
    waiting = {"name": "main", "started": False, "state": {"waiting": {"reason": "ContainerCreating"}}}
    assert not identity.served(pod(status={"containerStatuses": [waiting]}), [sl(0, "gpu0-0")])


# --- formats ---------------------------------------------------------------------------------------------------


def test_allocated_format_round_trip_and_errors() -> None:
    assert identity.format_allocated({"1", "init:0", "0", "init:2", "10"}) == '["init:0","init:2","0","1","10"]'
    assert identity.parse_allocated('["init:0","0"]') == {"init:0", "0"}
    assert identity.parse_allocated(None) == frozenset() and identity.parse_allocated("") == frozenset()
    for bad in ("garbage", '{"0": 1}', "[0, 1]"):
        with pytest.raises(ValueError, match=r"gpupool\.io/allocated must be a JSON list"):
            identity.parse_allocated(bad)


def test_bound_at_reads_the_assignment_time() -> None:
    assert identity.bound_at("2026-01-01T00:00:00Z") == 1767225600.0
    assert identity.bound_at("not a time") == 0.0  # unreadable: long ago, so it never blocks


# --- steering a burst apart ----------------------------------------------------------------------------------


def mark(*counts: int, until: float = 10.0) -> identity.Expected:
    return identity.Expected(frozenset(counts), until)


def test_steer_points_the_pod_to_the_first_top_node_and_demotes_the_other_ties() -> None:
    out, chosen = identity.steer([("a", 3), ("b", 5), ("c", 5), ("d", 0)], {}, {1}, now=0.0, lowest=1)
    assert chosen == "b"
    assert out == [("a", 3), ("b", 5), ("c", 4), ("d", 0)]


def test_steer_scores_a_node_expected_to_take_a_pod_of_a_shared_count_lowest() -> None:
    expected = {"b": {"uid-x": mark(1)}}
    out, chosen = identity.steer([("a", 3), ("b", 5), ("c", 3)], expected, {1, 2}, now=0.0, lowest=1)
    assert chosen == "a"
    assert out == [("a", 3), ("b", 1), ("c", 2)]  # b kept (a hint, never a refusal)


def test_steer_ignores_other_counts_expired_marks_and_remote_only_nodes() -> None:
    expected = {"b": {"uid-x": mark(2), "uid-y": mark(1, until=0.0)}}
    assert identity.steer([("b", 5), ("c", 5)], expected, {1}, now=0.0, lowest=1) == ([("b", 5), ("c", 4)], "b")
    assert identity.steer([("a", 0), ("b", 1)], {}, {1}, now=0.0, lowest=1) == ([("a", 0), ("b", 1)], None)
    assert identity.steer([], {}, {1}, now=0.0, lowest=1) == ([], None)


def test_steer_scores_a_node_the_rule_blocks_now_lowest() -> None:
    out, chosen = identity.steer([("a", 5), ("b", 3)], {}, {1}, now=0.0, lowest=1, blocked={"a"})
    assert (out, chosen) == ([("a", 1), ("b", 3)], "b")


def _steer_reference(
    answer: list[tuple[str, int]], expected: dict[str, dict[str, identity.Expected]], counts: set[int], now: float,
    lowest: int, blocked: set[str],
) -> tuple[list[tuple[str, int]], str | None]:  # fmt: skip
    """`steer` node by node, as it was written before its array form."""
    out = []
    for node, score in answer:
        if score > lowest:
            marks = expected.get(node)
            if node in blocked or (marks and any(e.until > now and counts & e.slot_counts for e in marks.values())):
                score = lowest
        out.append((node, score))
    top = max((score for _, score in out), default=lowest)
    if top <= lowest or not counts:
        return out, None
    chosen = next(node for node, score in out if score == top)
    return [(n, s - 1 if s == top and n != chosen else s) for n, s in out], chosen


@pytest.mark.parametrize("seed", range(20))
def test_steer_over_arrays_is_steer_node_by_node(seed: int) -> None:
    """`steer` (and the extender's `steer_marked` + `steer_scores`) gives the answers of the node-by-node rule."""
    import random

    import numpy as np

    rng = random.Random(seed)
    names = [f"n{i}" for i in range(rng.randint(0, 40))]
    answer = [(n, rng.randint(0, 10)) for n in names]
    expected = {
        rng.choice(names): {f"u{k}": mark(*rng.sample((1, 2, 4), rng.randint(1, 2)), until=rng.choice((0.0, 5.0)))}
        for k in range(rng.randint(0, 6))
        if names
    }
    counts = set(rng.sample((1, 2, 4), rng.randint(0, 2)))
    blocked = set(rng.sample(names, min(len(names), rng.randint(0, 2))))
    want = _steer_reference(answer, expected, counts, 1.0, 1, blocked)
    assert identity.steer(answer, expected, counts, now=1.0, lowest=1, blocked=blocked) == want
    marked = identity.steer_marked(expected, counts, 1.0, blocked)
    scores = np.array([s for _, s in answer], dtype=np.int64)
    out, chosen = identity.steer_scores(scores, np.array([n in marked for n in names], dtype=bool), 1, counts)
    assert (list(zip(names, out.tolist(), strict=True)), None if chosen is None else names[chosen]) == want
    assert scores.tolist() == [s for _, s in answer]  # a new array: the caller's is left alone


@pytest.mark.parametrize("seed", range(30))
def test_holdbacks_answer_what_blocker_answers_node_by_node(seed: int) -> None:
    """`Holdbacks` (the extender's index of the nodes each slot count waits on) against `blocker` per node, over
    random adds (re-adds with another bind time), removals and a clock that moves past the wait: the same nodes
    at every step, and each pod that turns overdue is expired exactly once."""
    import random

    rng = random.Random(seed)
    wait_s = 10.0
    index = identity.Holdbacks()
    table: dict[str, dict[str, identity.Unserved]] = {}  # node -> uid -> pod, the reference
    node_of: dict[str, str] = {}
    expired: list[str] = []
    now = 1000.0
    for step in range(300):
        op = rng.random()
        if op < 0.5:
            uid, node = f"u{rng.randint(0, 40)}", f"n{rng.randint(0, 8)}"
            if uid in node_of:
                table[node_of.pop(uid)].pop(uid)
            p = unserved(uid, *rng.sample((1, 2, 4, 8), rng.randint(1, 2)), at=now - rng.choice((0.0, 3.0, 12.0)))
            table.setdefault(node, {})[uid] = p
            node_of[uid] = node
            index.add(uid, node, p)
        elif op < 0.7 and node_of:
            uid = rng.choice(sorted(node_of))
            table[node_of.pop(uid)].pop(uid)
            index.remove(uid)
        else:
            now += rng.choice((0.5, 2.0, 7.0))
        gone = index.expire(now, wait_s)
        for uid, node, p in gone:
            assert identity.overdue(p, now, wait_s) and table[node][uid] == p
        expired.extend(uid for uid, _, _ in gone)
        for counts in ({1}, {2}, {4, 8}, {1, 2, 4, 8}):
            want = {n for n, pods in table.items() if identity.blocker(pods.values(), counts, now, wait_s)}
            assert index.nodes(counts) == want, f"step {step}, counts {counts}"
    assert len(index) == sum(not identity.overdue(p, now, wait_s) for pods in table.values() for p in pods.values())
    assert expired, "the clock never made a pod overdue: the test did not exercise expire"
