"""The narrowed filter answer (docs/contracts.md "filter answer", issue 16).

A pod that asks kube-scheduler's scoring for nothing of its own passes only the node prioritize would rank
first, so kube-scheduler binds it there without scoring or a prioritize call; a pod with a preferred affinity or
a ScheduleAnyway spread constraint gets every passing node. These tests run the real `PoolService` over
`StubAPI` and compare each narrowed answer with a twin extender that answers every node (`narrow_filter` off):
the same state, the same pods, the node kube-scheduler would have taken from prioritize.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from extender.main import build
from extender.service import PoolService
from extender.settings import ExtenderSettings
from gpupool import objects
from tests.extender.conftest import KEY, gpunode, node, pod
from tests.extender.stubs import StubAPI

MEMORY = 81920


def service(n: int, *, narrow: bool = True, gpus: int = 8) -> tuple[PoolService, StubAPI, list[str]]:
    api = StubAPI()
    cfg = ExtenderSettings(_cli_parse_args=False, narrow_filter=narrow)
    s = build(cfg, api=api, key=KEY).service
    names = [f"n-{i}" for i in range(n)]
    s.on_node_list([node(x) for x in names])
    s.on_gpunode_list([gpunode(x, gpus=gpus, memory=MEMORY) for x in names])
    s.on_pod_list([])
    assert s.ready and s.narrow_filter is narrow
    return s, api, names


def add(s: PoolService, api: StubAPI, p: dict[str, Any]) -> dict[str, Any]:
    api.add(p)
    s.on_pod_event("ADDED", p)
    return p


def bind(s: PoolService, p: dict[str, Any], node_name: str) -> None:
    m = p["metadata"]
    assert s.bind(m["name"], m["namespace"], m["uid"], node_name) == ""


def served(api: StubAPI, p: dict[str, Any]) -> dict[str, Any]:
    """The pod as the API server holds it once the kubelet has taken its devices (Running)."""
    m = p["metadata"]
    with api.lock:
        stored = api.pods[(m["namespace"], m["name"])]
        stored.setdefault("status", {})["phase"] = "Running"
        return copy.deepcopy(stored)


def prioritize_choice(s: PoolService, p: dict[str, Any], names: list[str]) -> str:
    """What kube-scheduler takes from the wide answer: the highest prioritize score (unique: steered)."""
    passing = s.filter(p, names).passing
    scores = s.prioritize(p, passing)
    best = max(score for _, score in scores)
    top = [n for n, score in scores if score == best]
    assert len(top) == 1, f"prioritize left a tie {top}: kube-scheduler would pick at random"
    return top[0]


def test_narrowed_answer_is_the_node_prioritize_ranks_first_pod_after_pod() -> None:
    """A mixed burst over a pool in use: every narrowed answer is one node, the one the wide extender's
    prioritize ranks first in the same state, and the binds there keep the two ledgers equal."""
    narrow, napi, names = service(6)
    wide, wapi, _ = service(6, narrow=False)
    narrowed = 0
    shapes = [(1, 50, 4096), (1, 30, 1024), (2, 50, 20000), (1, 100, 81920), (1, 25, 8192), (4, 10, 1024)]
    for i in range(24):
        count, compute, memory = shapes[i % len(shapes)]
        p = pod(f"p{i}", count=count, compute=compute, memory=memory)
        add(narrow, napi, copy.deepcopy(p))
        add(wide, wapi, copy.deepcopy(p))
        order = names[i % 6 :] + names[: i % 6]  # kube-scheduler starts each cycle at another node
        answer = narrow.filter(p, order)
        passing = wide.filter(p, order).passing
        if not passing:  # full, or held by the identity rule: the same empty answer
            assert answer.passing == []
            continue
        if len(passing) >= 2:
            narrowed += 1
            assert not answer.error and answer.failed == {} and answer.unresolvable == {}
        assert len(answer.passing) == 1, answer.passing
        expected = prioritize_choice(wide, p, order)
        assert answer.passing == [expected], f"pod {i}: narrowed {answer.passing}, prioritize's first {expected}"
        bind(narrow, p, expected)
        bind(wide, p, expected)
        if i % 3:  # the kubelet takes most pods' devices at once: the identity rule frees their nodes
            for s, api in ((narrow, napi), (wide, wapi)):
                s.on_pod_event("MODIFIED", served(api, p))
    assert narrowed >= 12  # most answers had two or more nodes to narrow
    assert narrow.ledger_snapshot() == wide.ledger_snapshot()


def test_a_burst_is_pointed_to_distinct_nodes_by_filter_alone() -> None:
    """kube-scheduler never calls prioritize for a narrowed pod: the filter's answer marks its node as expected,
    so the next same-size pods, filtered before any bind reached the extender, are pointed elsewhere."""
    s, api, names = service(3)
    pods = [add(s, api, pod(f"b{i}", compute=50, memory=4096)) for i in range(4)]
    chosen = [s.filter(p, names).passing for p in pods[:3]]
    assert all(len(c) == 1 for c in chosen)
    assert len({c[0] for c in chosen}) == 3
    assert len(s.filter(pods[3], names).passing) == 1  # every node marked: still one, never none (unmarked)
    assert {u for marks in s.expected.values() for u in marks} == {"uid-default-b0", "uid-default-b1", "uid-default-b2"}
    for p, (n,) in zip(pods[:3], chosen, strict=True):
        bind(s, p, n)
    assert not any(s.expected.values())  # each bind ended its own mark


PREFERRED_NODE = {
    "nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}
        ]
    }
}
PREFERRED_ANTI = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
    {"weight": 10, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                       "labelSelector": {"matchLabels": {"app": "x"}}}}]}}  # fmt: skip
REQUIRED_NODE = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
        }
    }
}
SPREAD_ANYWAY = [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
                  "labelSelector": {"matchLabels": {"app": "x"}}}]  # fmt: skip
SPREAD_HARD = [{**SPREAD_ANYWAY[0], "whenUnsatisfiable": "DoNotSchedule"}]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"affinity": PREFERRED_NODE}, "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution"),
        ({"affinity": PREFERRED_ANTI},
         "spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution"),
        ({"topologySpreadConstraints": SPREAD_HARD + SPREAD_ANYWAY}, "spec.topologySpreadConstraints[1]"),
        ({"affinity": REQUIRED_NODE}, None),  # kube-scheduler's filters enforce it before the extender is asked
        ({"topologySpreadConstraints": SPREAD_HARD}, None),
        ({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}}, None),
    ],
)  # fmt: skip
def test_a_pod_with_a_scoring_preference_gets_every_passing_node(spec: dict[str, Any], field: str | None) -> None:
    s, api, names = service(4)
    p = pod("pref")
    p["spec"].update(copy.deepcopy(spec))
    add(s, api, p)
    assert objects.pod_scoring_preference(p) == field
    before = {form: s.metrics.filter_answers.labels(form)._value.get() for form in ("one", "all")}
    passing = s.filter(p, names).passing
    after = {form: s.metrics.filter_answers.labels(form)._value.get() for form in ("one", "all")}
    if field is None:
        assert len(passing) == 1 and after["one"] == before["one"] + 1 and after["all"] == before["all"]
    else:
        assert passing == names and after["all"] == before["all"] + 1 and after["one"] == before["one"]


@pytest.mark.parametrize(
    "spec",
    [
        {"affinity": "x"},
        {"affinity": {"nodeAffinity": ["preferredDuringSchedulingIgnoredDuringExecution"]}},
        {"affinity": {"podAffinity": None}},
        {"topologySpreadConstraints": "ScheduleAnyway"},
        {"topologySpreadConstraints": [None, 3, "ScheduleAnyway", {"whenUnsatisfiable": 7}]},
    ],
)
def test_odd_preference_fields_never_raise(spec: dict[str, Any]) -> None:
    """Hostile or malformed spec fields (kube-scheduler only sends pods the API server accepted, but the
    extender's own decode is the boundary): no preference read, no exception."""
    assert objects.pod_scoring_preference({"spec": spec}) is None
    assert objects.pod_scoring_preference({"spec": "x"}) is None
    assert objects.pod_scoring_preference({}) is None


def test_off_every_passing_node_and_the_failures() -> None:
    s, api, names = service(3, narrow=False)
    p = add(s, api, pod("p", compute=50, memory=4096))
    assert s.filter(p, names).passing == names


def test_narrowed_answer_keeps_failures_when_one_or_none_passes() -> None:
    """Failure maps go only with a narrowed answer: one passing node keeps the others' reasons (kube-scheduler's
    event), none passing keeps every node's (preemption reads which are resolvable)."""
    s, api, names = service(3, gpus=1)
    big = add(s, api, pod("big", compute=100, memory=MEMORY))
    bind(s, big, "n-0")
    bind(s, add(s, api, pod("big2", compute=100, memory=MEMORY)), "n-1")
    p = add(s, api, pod("p", compute=60, memory=4096))
    answer = s.filter(p, names)
    assert answer.passing == ["n-2"] and set(answer.failed) == {"n-0", "n-1"}
    bind(s, add(s, api, pod("big3", compute=100, memory=MEMORY)), "n-2")
    answer = s.filter(p, names)
    assert answer.passing == [] and set(answer.failed) == set(names)
