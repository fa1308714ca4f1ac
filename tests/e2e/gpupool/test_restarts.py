"""Restarts of the extender, the controller and the node agents in the middle of a workload: nothing is lost (every
pod ends bound with one valid assignment, held exactly once in the extender's ledger) and nothing is over-allocated
(no GPU above its capacity; each GPU's usage is the sum of the assignments on it)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from e2e.polling import wait_for
from e2e.stack import CONTROLLER, EXTENDER, PUBLISHER, Stack
from tests.e2e.gpupool.conftest import PLUGIN_NODE
from tests.e2e.gpupool.gp_helpers import GP, assignment_of, check_pool, gpu_pod

pytestmark = pytest.mark.local_harness(
    "process control: it kills and restarts the extender, the controller and the node agents (Stack.kill, "
    "Stack.restart) and compares the extender's /debug/pool before and after"
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
