"""The placement engine: verdicts with reasons, scores, plans (local, remote, combined), determinism."""

from __future__ import annotations

import pytest

from gpupool.errors import OverAllocation
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.ledger import Ledger, PlannedSlice
from gpupool.placement import NoFit, Placer
from gpupool.policies import make_policy
from gpupool.request import ContainerRequest, Locality, PodRequest, QoS


def cluster() -> Ledger:
    ledger = Ledger()
    for n in range(2):
        ledger.upsert_node(NodeInfo(f"a100-{n}", tuple(GPUInfo(f"GPU-A{n}{i}", i, "A100-80GB", 81920)
                                                       for i in range(4)), agent_endpoint=f"10.0.0.{n}:9403"))
    ledger.upsert_node(NodeInfo("t4-0", tuple(GPUInfo(f"GPU-T{i}", i, "T4-16GB", 16384) for i in range(2)),
                                agent_endpoint="10.0.1.0:9403"))
    ledger.upsert_node(NodeInfo("cpu-0", ()))
    return ledger


def placer(ledger: Ledger, default: str = "binpack") -> Placer:
    return Placer(ledger, {"binpack": make_policy("binpack"), "spread": make_policy("spread")}, default)


def req(count: int = 1, compute: int = 100, memory: int | None = None, uid: str = "p", **kw: object) -> PodRequest:
    return PodRequest(uid=uid, containers=(ContainerRequest("c", 0, count, compute, memory),), **kw)  # type: ignore[arg-type]


NODES = ["a100-0", "a100-1", "t4-0", "cpu-0"]


def test_filter_reasons_and_unresolvable() -> None:
    p = placer(cluster())
    result = p.filter(req(count=1, compute=30, memory=20000), [*NODES, "ghost"])
    assert result.passing == ["a100-0", "a100-1"]
    assert "at least 20000 MiB" in result.unresolvable["t4-0"]
    assert "no GPUs" in result.unresolvable["cpu-0"]
    assert "no gpupool node agent" in result.unresolvable["ghost"]


def test_filter_reason_when_full_is_resolvable_and_names_largest_free() -> None:
    ledger = cluster()
    ledger.commit("x", "t4-0", [PlannedSlice(0, False, "GPU-T0", 90, 16000),
                                PlannedSlice(0, False, "GPU-T1", 50, 8000)])
    v = placer(ledger).verdict(req(compute=60, memory=4096), "t4-0")
    assert not v.fits and v.resolvable
    assert "largest free is 50% / 8384 MiB (GPU-T1)" in v.reason


def test_model_and_uuid_allow_lists() -> None:
    p = placer(cluster())
    result = p.filter(req(models=frozenset({"T4-16GB"})), NODES)
    assert result.passing == ["t4-0"]
    assert "not in gpupool.io/gpu-model" in result.unresolvable["a100-0"]
    plan = p.plan(req(uuids=frozenset({"GPU-A12"})), "a100-1")
    assert [s.gpu for s in plan.slices] == ["GPU-A12"]
    assert "gpupool.io/gpu-uuid" in p.filter(req(uuids=frozenset({"GPU-A12"})), ["a100-0"]).unresolvable["a100-0"]


def test_multi_slice_uses_distinct_gpus() -> None:
    plan = placer(cluster()).plan(req(count=3, compute=10, memory=10), "a100-0")
    assert len({s.gpu for s in plan.slices}) == 3
    with pytest.raises(NoFit, match="needs 3 distinct GPU"):
        placer(cluster()).plan(req(count=3, compute=10, memory=10), "t4-0")


def test_whole_memory_default_needs_an_untouched_gpu() -> None:
    ledger = cluster()
    ledger.commit("x", "t4-0", [PlannedSlice(0, False, "GPU-T0", 10, 1)])
    plan = placer(ledger).plan(req(compute=10), "t4-0")
    assert [(s.gpu, s.memory_mib) for s in plan.slices] == [("GPU-T1", 16384)]


def test_pool_pod_on_cpu_node_gets_remote_slices_combined_from_fragments() -> None:
    ledger = cluster()
    # leave 40 % free on one GPU of each A100 node, nothing else anywhere
    for n in range(2):
        ledger.commit(f"fill{n}", f"a100-{n}", [PlannedSlice(0, False, f"GPU-A{n}{i}", 60 if i == 0 else 100, 100)
                                                 for i in range(4)])
    ledger.commit("fillt4", "t4-0", [PlannedSlice(0, False, f"GPU-T{i}", 100, 100) for i in range(2)])
    p = placer(ledger)
    pod = req(count=2, compute=40, memory=1000, locality=Locality.POOL)
    assert p.filter(pod, ["cpu-0"]).passing == ["cpu-0"]
    plan = p.plan(pod, "cpu-0")
    assert plan.remote == 2
    assert sorted(s.gpu for s in plan.slices) == ["GPU-A00", "GPU-A10"]
    holding = ledger.commit("pod", "cpu-0", plan.slices)
    assert {s.slot for s in holding.slices} == {"remote-0", "remote-1"}
    assert p.filter(pod, ["cpu-0"]).passing == []  # the pool is now full


def test_no_remote_slice_on_a_node_whose_agent_publishes_no_endpoint() -> None:
    """The container of a remote slice is handed the owning agent's endpoint: a node without one serves none."""
    ledger = cluster()
    # 50 % free on GPU-A00, 40 % on GPU-A10 (the tighter fit binpack prefers); a100-1's agent publishes no endpoint
    for n in range(2):
        ledger.commit(f"fill{n}", f"a100-{n}", [PlannedSlice(0, False, f"GPU-A{n}{i}", (50 + 10 * n) if i == 0 else 100,
                                                              100) for i in range(4)])  # fmt: skip
    ledger.commit("fillt4", "t4-0", [PlannedSlice(0, False, f"GPU-T{i}", 100, 100) for i in range(2)])
    info = ledger.node_info("a100-1")
    ledger.upsert_node(NodeInfo(info.name, info.gpus))
    assert ledger.agent_endpoint("a100-1") == "" and ledger.agent_endpoint("a100-0") == "10.0.0.0:9403"
    p = placer(ledger)
    one = req(count=1, compute=40, memory=1000, locality=Locality.POOL)
    plan = p.plan(one, "cpu-0")
    assert [(s.gpu, plan.remote) for s in plan.slices] == [("GPU-A00", 1)]
    two = req(count=2, compute=40, memory=1000, locality=Locality.POOL)
    result = p.filter(two, ["cpu-0"])
    assert result.passing == []
    assert "1 node(s) serve no remote slices" in result.unresolvable["cpu-0"]
    assert "a100-1" in result.unresolvable["cpu-0"] and "agentEndpoint" in result.unresolvable["cpu-0"]
    with pytest.raises(NoFit, match="serve no remote slices"):
        p.plan(two, "cpu-0")
    ledger.commit("one", "cpu-0", plan.slices)
    # a100-0 has 10 % left; a100-1 still has room but no endpoint: nothing more goes remote
    assert p.filter(one, ["cpu-0"]).passing == []
    ledger.upsert_node(NodeInfo(info.name, info.gpus, agent_endpoint="10.0.0.1:9403"))
    plan = p.plan(one, "cpu-0")
    assert [s.gpu for s in plan.slices] == ["GPU-A10"]


def test_endpointless_node_still_serves_its_own_pool_pods() -> None:
    """A node without an agent endpoint serves slices to pods on it; with locality pool they may combine
    its own GPUs with remote ones from nodes that have an endpoint."""
    ledger = cluster()
    info = ledger.node_info("t4-0")
    ledger.upsert_node(NodeInfo(info.name, info.gpus))
    # one A100 GPU in the whole pool keeps room: with t4-0's own two GPUs that makes the three a pod needs
    for n in range(2):
        ledger.commit(f"fill{n}", f"a100-{n}", [PlannedSlice(0, False, f"GPU-A{n}{i}", 100, 100)
                                                 for i in range(4) if (n, i) != (1, 2)])
    p = placer(ledger)
    pod = req(count=3, compute=50, memory=1000, locality=Locality.POOL)
    assert p.filter(pod, ["t4-0"]).passing == ["t4-0"]
    plan = p.plan(pod, "t4-0")
    assert plan.remote == 1
    assert sorted(s.gpu for s in plan.slices) == ["GPU-A12", "GPU-T0", "GPU-T1"]


def test_local_pod_never_goes_remote() -> None:
    p = placer(cluster())
    assert "no GPUs" in p.filter(req(), ["cpu-0"]).unresolvable["cpu-0"]


def test_pool_pod_prefers_local() -> None:
    p = placer(cluster())
    plan = p.plan(req(compute=50, memory=100, locality=Locality.POOL), "t4-0")
    assert plan.remote == 0 and plan.slices[0].gpu.startswith("GPU-T")
    assert p.scores(req(locality=Locality.POOL), ["t4-0", "cpu-0"])["cpu-0"] is None


def test_best_effort_uses_overcommit_but_guaranteed_does_not() -> None:
    ledger = Ledger(overcommit_compute_percent=200)
    ledger.upsert_node(NodeInfo("n", (GPUInfo("G", 0, "T4", 100),)))
    ledger.commit("g", "n", [PlannedSlice(0, False, "G", 100, 50)])
    p = placer(ledger)
    assert not p.verdict(req(compute=50, memory=10), "n").fits
    plan = p.plan(req(compute=50, memory=10, qos=QoS.BEST_EFFORT), "n")
    ledger.commit("be", "n", plan.slices, qos=QoS.BEST_EFFORT)
    with pytest.raises(OverAllocation):
        ledger.commit("g2", "n", [PlannedSlice(0, False, "G", 1, 1)])


def test_binpack_and_spread_disagree_and_are_deterministic() -> None:
    ledger = cluster()
    ledger.commit("x", "a100-1", [PlannedSlice(0, False, "GPU-A10", 50, 100)])
    pod = req(compute=20, memory=100)
    assert placer(ledger).best(pod).node == "a100-1"  # type: ignore[union-attr]
    assert placer(ledger, "spread").best(pod, ["a100-0", "a100-1"]).node == "a100-0"  # type: ignore[union-attr]
    assert [placer(cluster()).best(pod) for _ in range(3)] == [placer(cluster()).best(pod)] * 3


def test_multi_container_pod_places_every_container() -> None:
    pod = PodRequest(uid="m", containers=(ContainerRequest("a", 0, 2, 60, 100), ContainerRequest("b", 1, 1, 60, 100),
                                          ContainerRequest("i", 0, 1, 10, 10, init=True)))
    plan = placer(cluster()).plan(pod, "a100-0")
    assert [(s.container, s.init) for s in plan.slices] == [(0, False), (0, False), (1, False), (0, True)]
    per_gpu: dict[str, int] = {}
    for s in plan.slices:
        per_gpu[s.gpu] = per_gpu.get(s.gpu, 0) + s.compute
    assert max(per_gpu.values()) <= 100


def test_unknown_policy_is_a_clear_unresolvable_error() -> None:
    with pytest.raises(NoFit, match="policy 'fgd' is not enabled") as info:
        placer(cluster()).plan(req(policy="fgd"), "a100-0")
    assert not info.value.resolvable


def test_best_with_a_model_allow_list_matches_node_by_node_evaluation() -> None:
    """`best` evaluates each node state once even for model-constrained pods; it must pick what judging every node
    on its own restricted view picks (nodes all of an allowed model, none, and a mixed node)."""
    import random

    from gpupool.fragmentation import default_workload

    ledger = Ledger()
    for n in range(6):
        model = ("A", "B")[n % 2]
        ledger.upsert_node(NodeInfo(f"n{n}", tuple(GPUInfo(f"G{n}-{i}", i, model, 100) for i in range(4)),
                                    cpu_milli=64000, memory_mib=262144))  # fmt: skip
    mixed = (GPUInfo("M-0", 0, "A", 100), GPUInfo("M-1", 1, "B", 100), GPUInfo("M-2", 2, "B", 100))
    ledger.upsert_node(NodeInfo("mixed", mixed, cpu_milli=64000, memory_mib=262144))
    rank = {name: i for i, name in enumerate(reversed(ledger.node_names()))}
    policies = {name: make_policy(name, workload=default_workload()) for name in ("fgd", "fgdpp", "bestfit")}
    rng = random.Random(3)
    for i in range(60):
        for name in policies:
            p = Placer(ledger, policies, name, rank=rank.__getitem__)
            models = rng.choice([frozenset({"A"}), frozenset({"B"}), frozenset({"A", "B"}), frozenset({"C"})])
            request = PodRequest(uid=f"p{i}", containers=(ContainerRequest("c", 0, 1, rng.choice([20, 50, 100]), 1),),
                                 models=models, cpu_milli=rng.choice([1000, 8000]))  # fmt: skip
            fast = p.best(request)
            slow = p.best(request, ledger.node_names())
            assert (fast is None) == (slow is None), (i, name)
            if fast is not None and slow is not None:
                assert (fast.node, fast.slices, fast.score) == (slow.node, slow.slices, slow.score), (i, name)
        if fast is not None:
            ledger.commit(request.uid, fast.node, fast.slices, cpu_milli=request.cpu_milli)


def test_a_reason_names_each_nodes_own_gpu_when_equal_states_have_other_indexes() -> None:
    """The interleaving harness, seed 697: the failure verdict of a node state is shared by the nodes in that state
    (same kid), and it named the GPU by the index of the node it was first computed on. Two nodes whose one
    eligible GPU has another index (GPU 0 disabled on one, GPU 1 on the other): each reason names its own GPU. A
    node whose GPU 1 had left its GPUNode raised KeyError in filter (a 500 for every pod of that shape)."""
    ledger = Ledger()
    for name, off in (("x", 0), ("y", 1)):
        gpus = tuple(GPUInfo(f"GPU-{name}{i}", i, "A100-80GB", 81920) for i in range(2))
        ledger.upsert_node(NodeInfo(name, gpus, disabled=frozenset({f"GPU-{name}{off}"})))
    ledger.commit("ux", "x", [PlannedSlice(0, False, "GPU-x1", 60, 1024)])
    ledger.commit("uy", "y", [PlannedSlice(0, False, "GPU-y0", 60, 1024)])
    assert ledger.kids(["x"]) == ledger.kids(["y"])  # one state: one shared verdict
    p = placer(ledger)
    for order in (["x", "y"], ["y", "x"]):
        p.forget_scores()
        result = p.filter(req(compute=50, memory=4096), order)
        assert result.passing == []
        reasons = {**result.failed, **result.unresolvable}
        assert "largest free is 40%" in reasons["x"] and "(GPU-x1)" in reasons["x"], reasons["x"]
        assert "largest free is 40%" in reasons["y"] and "(GPU-y0)" in reasons["y"], reasons["y"]
