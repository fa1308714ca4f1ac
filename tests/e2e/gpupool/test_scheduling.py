"""Placement end to end: webhook -> controller (gate) -> gpupool-scheduler -> extender bind -> kwok Running.

Nodes (e2e.cluster.DEFAULT_NODES): gpu-a100-{0,1} 8 x A100-80GB, gpu-t4-{0,1} 4 x T4-16GB, gpu-h100-0 2 x H100-80GB,
cpu-0 and cpu-1 without GPUs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.nodes import FakeNode, fake_inventory
from e2e.polling import wait_for
from e2e.stack import Stack
from gpupool import resources
from tests.e2e.gpupool.gp_helpers import DEBUG_POOL, GP, KWOK_NODES, assignment_of, check_pool, gpu_pod

pytestmark = pytest.mark.local_harness(DEBUG_POOL)
H100_NODE = pytest.mark.local_harness(f"{KWOK_NODES}: gpu-h100-0 with its two H100-80GB GPUs; and {DEBUG_POOL}")

H100 = {resources.GPU_MODEL: "H100-80GB"}


def _gpus(pod: Any) -> list[str]:
    a = assignment_of(pod)
    assert a is not None
    return [s["gpu"] for s in a["slices"]]


@H100_NODE
def test_binpack_packs_fractional_pods_on_one_gpu(gp: GP) -> None:
    ns = gp.namespace()
    for i in range(3):
        gp.create(ns, gpu_pod(f"bp-{i}", compute=30, memory=4096, annotations={**H100, resources.POLICY: "binpack"}))
        gp.wait_bound(ns, f"bp-{i}")
    pods = [gp.pod(ns, f"bp-{i}") for i in range(3)]
    assert {p.spec.node_name for p in pods} == {"gpu-h100-0"}
    assert len({g for p in pods for g in _gpus(p)}) == 1, "binpack put the three 30% slices on one GPU"
    check_pool(gp.stack.debug_pool())


def _extender_counts(gp: GP) -> dict[str, float]:
    """The extender's prioritize calls and filter answers by form (`gpupool_extender_filter_answers_total`)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(gp.stack.extender_metrics()):
        for sample in family.samples:
            if sample.name == "gpupool_extender_requests_total" and sample.labels.get("verb") == "prioritize":
                out["prioritize"] = out.get("prioritize", 0.0) + sample.value
            if sample.name == "gpupool_extender_filter_answers_total":
                out[sample.labels["form"]] = sample.value
    return out


@pytest.mark.local_harness(f"{KWOK_NODES}: five GPU nodes pass; the extender's /metrics; and {DEBUG_POOL}")
def test_narrowed_filter_binds_without_prioritize_and_a_preferred_node_is_still_weighed(gp: GP) -> None:
    """Issue 16: a pod without scoring preferences of its own gets one node from filter, so the real kube-scheduler
    binds it there without calling prioritize; a pod with a preferred node affinity gets every passing node, and
    kube-scheduler's NodeAffinity score (weight 2) outweighs the extender's (weight 1): it lands on the node it
    prefers, a T4 node gpupool's placement would not rank first for it."""
    ns = gp.namespace()
    before = _extender_counts(gp)
    gp.create(ns, gpu_pod("plain-pref", compute=20, memory=2048))
    gp.wait_bound(ns, "plain-pref")
    mid = _extender_counts(gp)
    assert mid.get("one", 0) > before.get("one", 0), "the filter did not narrow the answer"
    assert mid.get("prioritize", 0) == before.get("prioritize", 0), "kube-scheduler called prioritize"
    body = gpu_pod("prefers-t4", compute=20, memory=2048)
    body["spec"]["affinity"] = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "preference": {"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["gpu-t4-1"]}]}}]}}  # fmt: skip
    gp.create(ns, body)
    pod = gp.wait_bound(ns, "prefers-t4")
    after = _extender_counts(gp)
    assert after.get("all", 0) > mid.get("all", 0), "the preferring pod's filter answer was narrowed"
    assert after.get("prioritize", 0) > mid.get("prioritize", 0), "kube-scheduler never asked prioritize"
    assert pod.spec.node_name == "gpu-t4-1", f"the preferred node lost to {pod.spec.node_name}"
    check_pool(gp.stack.debug_pool())


@H100_NODE
def test_spread_puts_fractional_pods_on_distinct_gpus(gp: GP) -> None:
    ns = gp.namespace()
    for i in range(2):
        gp.create(ns, gpu_pod(f"sp-{i}", compute=30, memory=4096, annotations={**H100, resources.POLICY: "spread"}))
        gp.wait_bound(ns, f"sp-{i}")
    pods = [gp.pod(ns, f"sp-{i}") for i in range(2)]
    assert {p.spec.node_name for p in pods} == {"gpu-h100-0"}
    assert len({g for p in pods for g in _gpus(p)}) == 2, "spread used both H100s"


@pytest.mark.local_harness(f"kwok's pod-ready stage (Running without a kubelet or image pull); and {DEBUG_POOL}")
def test_multi_slice_pod_gets_distinct_gpus(gp: GP) -> None:
    ns = gp.namespace()
    gp.create(ns, gpu_pod("multi", gpus=3, compute=50, memory=8192))
    pod = gp.wait_bound(ns, "multi")
    a = assignment_of(pod)
    assert a is not None and a["node"] == pod.spec.node_name
    assert len(a["slices"]) == 3
    assert len({s["gpu"] for s in a["slices"]}) == 3, a
    assert all(s["node"] == pod.spec.node_name and s["compute"] == 50 and s["memory"] == 8192 for s in a["slices"])
    assert pod.spec.scheduler_name == resources.SCHEDULER_NAME
    wait_for(lambda: gp.pod(ns, "multi").status.phase == "Running", timeout=30, what="multi Running (kwok)")


@pytest.mark.local_harness(
    f"{KWOK_NODES}: T4-16GB on gpu-t4-*, UUID GPU-gpu-a100-1-05 (fake inventory of e2e.stack); and {DEBUG_POOL}"
)
def test_model_and_uuid_constraints(gp: GP) -> None:
    ns = gp.namespace()
    gp.create(ns, gpu_pod("t4", compute=20, memory=2048, annotations={resources.GPU_MODEL: "T4-16GB"}))
    uuid = "GPU-gpu-a100-1-05"
    gp.create(ns, gpu_pod("pinned", compute=20, memory=2048, annotations={resources.GPU_UUID: uuid}))
    t4 = gp.wait_bound(ns, "t4")
    assert t4.spec.node_name in {"gpu-t4-0", "gpu-t4-1"}
    assert all(g.startswith(f"GPU-{t4.spec.node_name}-") for g in _gpus(t4))
    pinned = gp.wait_bound(ns, "pinned")
    assert pinned.spec.node_name == "gpu-a100-1"
    assert _gpus(pinned) == [uuid]


def test_whitepaper_alias_rewritten_and_scheduled(gp: GP) -> None:
    ns = gp.namespace()
    alias = tuple(k for k, v in sorted(resources.ALIASES.items(), key=lambda kv: resources.CANONICAL.index(kv[1])))
    assert alias[0] == "pool.kubernetes.io/gpu"
    created = gp.create(ns, gpu_pod("alias", compute=25, memory=1024, names=alias))  # type: ignore[arg-type]
    limits = created.spec.containers[0].resources.limits
    assert set(limits) == set(resources.CANONICAL), limits  # rewritten before it was stored
    assert created.spec.scheduler_name == resources.SCHEDULER_NAME
    assert [g.name for g in created.spec.scheduling_gates] == [resources.ADMISSION_GATE]
    pod = gp.wait_bound(ns, "alias")
    assert [(s["compute"], s["memory"]) for s in assignment_of(pod)["slices"]] == [(25, 1024)]  # type: ignore[index]


def test_alias_that_bypassed_the_webhook_never_gets_a_gpu(gp: GP) -> None:
    ns = gp.namespace(webhook=False, labels={"gpupool.io/webhook": "ignore"})
    body = gpu_pod("bypassed", names=("pool.kubernetes.io/gpu", "pool.kubernetes.io/gpu-compute", "x"))
    created = gp.create(ns, body)
    assert created.spec.scheduler_name == "default-scheduler"
    assert created.spec.containers[0].resources.limits == {"pool.kubernetes.io/gpu": "1"}

    def unschedulable() -> str | None:
        p = gp.pod(ns, "bypassed")
        for c in p.status.conditions or []:
            if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                return str(c.message)
        return None

    message = wait_for(unschedulable, timeout=60, what="default-scheduler to fail the alias pod")
    assert "Insufficient pool.kubernetes.io/gpu" in message
    p = gp.pod(ns, "bypassed")
    assert p.spec.node_name is None and resources.ASSIGNMENT not in (p.metadata.annotations or {})

    def gpupool_event() -> str | None:  # DESIGN.md §1.1: it must fail loudly, and say why
        return next((e for e in gp.events(ns, "bypassed") if e.startswith("AliasResourceNotRewritten: ")), None)

    event = wait_for(gpupool_event, timeout=30, what="gpupool's AliasResourceNotRewritten event")
    assert "spec.containers[0].resources.limits[pool.kubernetes.io/gpu]" in event, event
    assert "webhook was bypassed" in event and f"-> {resources.GPU}" in event, event


@pytest.mark.local_harness(
    "a node added and removed at run time: a kwok Node (Cluster.apply_nodes) and the multi-node agent's fake "
    "inventory file rewritten (Stack.inventory_file); and the extender's /debug/pool to see its slices released"
)
def test_deleted_node_frees_its_slices(gp: GP, stack: Stack) -> None:
    node = FakeNode("gpu-gone-0", gpus=2, gpu_model="L4-24GB", gpu_memory_mib=23034)
    c = stack.cluster
    inventory = json.loads(json.dumps(fake_inventory([n for n in stack.nodes if n.name not in stack.plugin_nodes])))

    def publish(nodes: dict[str, Any]) -> None:
        import yaml

        stack.inventory_file.write_text(yaml.safe_dump(nodes, sort_keys=True))

    c.apply_nodes([node])
    gp.extra.append(lambda: c.kubectl("delete", "node", node.name, "--ignore-not-found", "--wait=false", check=False))
    gp.extra.append(lambda: publish(inventory))
    publish({**inventory, **fake_inventory([node])})
    wait_for(lambda: node.name in stack.debug_pool()["nodes"], timeout=30, what="the new node in the pool")
    ns = gp.namespace()
    for i in range(2):
        gp.create(ns, gpu_pod(f"l4-{i}", compute=40, memory=4096, annotations={resources.GPU_MODEL: "L4-24GB"}))
    uids = {gp.wait_bound(ns, f"l4-{i}").metadata.uid for i in range(2)}
    assert uids <= set(gp.holdings())
    # the node goes away: out of the inventory (no GPUNode is re-published), Node and GPUNode deleted
    publish(inventory)
    c.kubectl("delete", "node", node.name, "--wait=false")
    c.kubectl("delete", "gpunode", node.name, "--ignore-not-found", "--wait=false")

    def freed() -> bool:
        snap = stack.debug_pool()
        return node.name not in snap["nodes"] and not uids & set(snap["holdings"])

    wait_for(freed, timeout=30, what=f"the extender to release the slices of {node.name}")
    check_pool(stack.debug_pool())
