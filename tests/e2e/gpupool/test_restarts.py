"""Restarts of the extender, the controller, the node agents and kube-apiserver in the middle of a workload:
nothing is lost (every pod ends bound with one valid assignment, held exactly once in the extender's ledger) and
nothing is over-allocated (no GPU above its capacity; each GPU's usage is the sum of the assignments on it)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from e2e.polling import wait_for
from e2e.stack import CONTROLLER, EXTENDER, PUBLISHER, Stack
from gpupool import resources
from tests.e2e.gpupool.conftest import PLUGIN_NODE, POOL_NODE
from tests.e2e.gpupool.gp_helpers import GP, assignment_of, check_pool, gpu_pod

pytestmark = pytest.mark.local_harness(
    "process control: it kills and restarts the extender, the controller, the node agents and kube-apiserver "
    "(Stack.kill, Stack.restart), edits etcd while the API server is down, and compares the extender's /debug/pool "
    "before and after"
)


def _ledger(stack: Stack) -> dict[str, Any]:
    snap = stack.debug_pool()
    return {"nodes": snap["nodes"], "holdings": snap["holdings"]}


def _create_async(gp: GP, ns: str, names: list[str]) -> threading.Thread:
    def run() -> None:
        for n in names:
            gp.create_retrying(ns, gpu_pod(n, compute=35, memory=3000))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _check_consistent(gp: GP, stack: Stack, ns: str, names: list[str]) -> None:
    snap = stack.debug_pool()
    check_pool(snap)
    for n in names:
        pod = gp.pod(ns, n)
        a = assignment_of(pod)
        assert a is not None and pod.spec.node_name == a["node"], gp.describe(ns, n)
        held = snap["holdings"].get(pod.metadata.uid)
        assert held is not None, f"{n} bound but not in the extender's ledger"
        assert held["node"] == a["node"]
        assert sorted(s["gpu"] for s in held["slices"]) == sorted(s["gpu"] for s in a["slices"])


def test_restarts_in_the_middle_of_a_workload(gp: GP, stack: Stack) -> None:
    ns = gp.namespace()
    names = [f"w-{i:02d}" for i in range(15)]
    first, second, third = names[:5], names[5:10], names[10:]

    for n in first:
        gp.create(ns, gpu_pod(n, compute=35, memory=3000))
    for n in first:
        gp.wait_bound(ns, n)
    wait_for(lambda: all(gp.pod(ns, n).status.phase == "Running" for n in first), timeout=30, what="Running")
    before = _ledger(stack)

    # 1. the extender restarts with nothing moving: it rebuilds exactly the same ledger
    stack.restart(EXTENDER)
    assert _ledger(stack) == before

    # 2. pods arrive while the extender crashes (SIGKILL) and comes back, then the controller restarts
    t = _create_async(gp, ns, second)
    stack.kill(EXTENDER)
    stack.restart(EXTENDER)
    stack.restart(CONTROLLER)
    t.join(30)
    for n in second:
        gp.wait_bound(ns, n, timeout=90)

    # 3. pods arrive while the controller is killed and both node agents restart
    t = _create_async(gp, ns, third)
    stack.kill(CONTROLLER)
    stack.restart(PUBLISHER)
    stack.restart(f"node-agent-{PLUGIN_NODE}")
    stack.restart(CONTROLLER)
    t.join(30)
    for n in third:
        gp.wait_bound(ns, n, timeout=90)

    _check_consistent(gp, stack, ns, names)
    after = _ledger(stack)
    assert set(before["holdings"]) <= set(after["holdings"])
    for uid, h in before["holdings"].items():
        assert after["holdings"][uid] == h, "a pod's slices changed across restarts"
    # and a last extender restart rebuilds the same ledger again
    stack.restart(EXTENDER)
    assert _ledger(stack) == after


def _bound_gpupool_uids(gp: GP) -> dict[str, str]:
    """uid → namespace/name of every pod of the cluster that holds an assignment and is not being deleted."""
    out: dict[str, str] = {}
    for pod in gp.v1.list_pod_for_all_namespaces().items:
        if pod.metadata.deletion_timestamp is None and assignment_of(pod) is not None:
            out[pod.metadata.uid] = f"{pod.metadata.namespace}/{pod.metadata.name}"
    return out


def _etcd_delete(stack: Stack, key: str) -> None:
    """Delete one key from etcd through its v3 JSON gateway (the API server is down)."""
    import base64
    import urllib.request

    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    url = f"http://127.0.0.1:{stack.cluster.ports['etcd']}/v3/kv/deleterange"
    with urllib.request.urlopen(urllib.request.Request(url, body, method="POST"), timeout=10) as r:
        assert json.loads(r.read()).get("deleted") == "1", key


def test_the_api_server_restarts_in_the_middle_of_a_workload(gp: GP, stack: Stack) -> None:
    """kube-apiserver crashes (SIGKILL: an OOM kill, a node failure) and comes back without three pods. Every
    watcher's stream breaks: the extender, the controller, the node agents, kube-scheduler and kwok list again, and
    the pods gone meanwhile are only visible as pods the new list lacks; so is the GPUNode of a live pod's node
    until its agent publishes it again. After it, the extender's and the
    controller's ledgers hold exactly the live pods (nothing kept for a deleted pod, nothing lost or moved for a
    live one), and pods created afterwards are admitted, placed and bound as before. Each half fails when its
    relist keeps the pods the list lacks (checked by hand)."""
    ns = gp.namespace()
    q = gp.queue("api-restart", {"namespaces": [ns], "nominalQuota": {"compute": 1000}})
    doomed_ns = gp.namespace()
    doomed = gp.queue("doomed", {"namespaces": [doomed_ns], "nominalQuota": {"compute": 1000}})
    names = [f"k-{i}" for i in range(6)]
    for n in names:
        gp.create(ns, gpu_pod(n, compute=35, memory=3000))
    for n in names:
        gp.wait_bound(ns, n)
    wait_for(lambda: all(gp.pod(ns, n).status.phase == "Running" for n in names), timeout=30, what="Running")
    gone, kept = names[:3], names[3:]
    kept_holdings = {gp.pod(ns, n).metadata.uid: stack.debug_pool()["holdings"][gp.pod(ns, n).metadata.uid]
                     for n in kept}  # fmt: skip

    # the API server crashes (SIGKILL); while it is down, three of the pods leave etcd: no watcher ever gets
    # their DELETED events (as after a compaction), only a list that lacks them
    node = gp.pod(ns, kept[0]).spec.node_name
    stack.kill("kube-apiserver")
    for n in gone:
        _etcd_delete(stack, f"/registry/pods/{ns}/{n}")
    _etcd_delete(stack, f"/registry/gpupool.io/gpuqueues/{doomed}")  # and a GPUQueue
    # and the GPUNode of a node a live pod is bound to: its agent creates it again at its next publish
    _etcd_delete(stack, f"/registry/gpupool.io/gpunodes/{node}")
    stack.cluster.restart_process("kube-apiserver", ready_timeout=90)
    stack.restart(f"node-agent-{node}" if node in (PLUGIN_NODE, POOL_NODE) else PUBLISHER)

    after = [f"k-after-{i}" for i in range(3)]
    for n in after:  # the controller's webhook answers again once the API server can reach it
        gp.create_retrying(ns, gpu_pod(n, compute=35, memory=3000), timeout=90)
    for n in after:
        gp.wait_bound(ns, n, timeout=120)
    assert not any(gp.exists(ns, n) for n in gone)

    live = _bound_gpupool_uids(gp)

    def settled() -> bool:  # the extender's ledger converges on exactly the live, bound pods
        return set(stack.debug_pool()["holdings"]) == set(live)

    try:
        wait_for(settled, timeout=60, what="the extender's ledger to hold exactly the live pods")
    except TimeoutError as e:
        held = set(stack.debug_pool()["holdings"])
        raise AssertionError(f"{e}: held but not live {held - set(live)}; live but not held "
                             f"{[live[u] for u in set(live) - held]}") from None  # fmt: skip
    _check_consistent(gp, stack, ns, kept + after)
    snap = stack.debug_pool()
    for uid, h in kept_holdings.items():
        assert snap["holdings"][uid] == h, "a live pod's slices changed across the API server's restart"

    # the controller's ledger lets go of them too: the queue's status counts the live pods alone
    def queue_status() -> dict[str, Any]:
        obj = gp.cluster.kubectl("get", "gpuqueue", q, "-o", "json")
        return dict(json.loads(obj.stdout).get("status") or {})

    want = {"admitted": len(kept) + len(after), "pending": 0, "usage": {"compute": 35 * 6, "memoryMiB": 3000 * 6}}
    wait_for(lambda: {k: queue_status().get(k) for k in want} == want, timeout=60,
             what=f"GPUQueue {q} to count only the live pods ({want})")  # fmt: skip
    # every watch of both listed again, and says so
    ctl, ext = stack.controller_metrics(), stack.extender_metrics()
    for kind in ("pods", "nodes", "namespaces", "gpunodes", "gpuqueues"):
        assert f'gpupool_controller_relists_total{{resource="{kind}"}}' in ctl, kind
    for kind in ("pods", "nodes", "gpunodes", "gpuqueues"):
        assert f'gpupool_extender_relists_total{{resource="{kind}"}}' in ext, kind
    # the GPUQueue gone meanwhile is gone for the controller too: its namespace's pods are no longer its
    gp.create_retrying(doomed_ns, gpu_pod("orphan", compute=10, memory=1000))
    orphan = gp.wait_bound(doomed_ns, "orphan", timeout=90)
    assert (orphan.metadata.annotations or {}).get(resources.QUEUE) != doomed, "admitted by a deleted GPUQueue"
    # the GPUQueue watch came back too: a queue made after the restart admits its namespace's pod
    qns = gp.namespace()
    q2 = gp.queue("after-restart", {"namespaces": [qns], "nominalQuota": {"compute": 100}})
    gp.create_retrying(qns, gpu_pod("queued", compute=10, memory=1000))
    pod = gp.wait_bound(qns, "queued", timeout=90)
    assert (pod.metadata.annotations or {}).get(resources.QUEUE) == q2
