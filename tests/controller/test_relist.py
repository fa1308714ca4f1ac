"""A relist of a watched kind replaces what the controller holds of it (`Controller.on_list`): objects the list
lacks were deleted while no watch looked, and no DELETED event will come for them.

Found by tests/e2e/gpupool/test_restarts.py: the controller watched GPUQueues, GPUNodes, Nodes and namespaces
through kopf, whose re-list after a broken watch only adds and updates, so a GPUQueue deleted during an API server
restart went on admitting its namespace's pods under its quota.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.runtime import WATCHED
from gpupool.queues import IMPLICIT_QUEUE
from tests.controller.test_runtime import failing_on, gpunode, make, pod, queue, run


def test_a_queue_the_relist_lacks_admits_nothing_more() -> None:
    c, kube = make()
    c.on_list("gpunodes", [gpunode("n1", gpus=4)])
    c.on_list("gpuqueues", [queue("team-a", 400), queue("team-b", 400)])
    c.on_pod("ADDED", pod("a1"))
    run(c.cycle(now=2e9))
    assert kube.ungated_with == {"team-a/a1": "team-a"}

    forgotten = c.on_list("gpuqueues", [queue("team-b", 400)])  # team-a was deleted while the watch was down

    assert forgotten == ["team-a"] and "team-a" not in c.manager.queues and "team-b" in c.manager.queues
    c.on_pod("ADDED", pod("a2"))
    run(c.cycle(now=2e9 + 1))
    assert kube.ungated_with.get("team-a/a2") in (None, IMPLICIT_QUEUE), kube.ungated_with


def test_a_gpunode_the_relist_lacks_leaves_the_pool_and_its_capacity_with_it() -> None:
    c, kube = make()
    c.on_list("gpuqueues", [queue("team-a", 800)])
    c.on_list("gpunodes", [gpunode("n1", gpus=1), gpunode("n2", gpus=1)])
    assert set(c.ledger.node_names()) == {"n1", "n2"}

    assert c.on_list("gpunodes", [gpunode("n1", gpus=1)]) == ["n2"]

    assert set(c.ledger.node_names()) == {"n1"} and "n2" not in c.gpunodes
    for name in ("p1", "p2"):  # one GPU left: one whole-GPU pod is admitted, the other waits
        c.on_pod("ADDED", pod(name))
    run(c.cycle(now=2e9))
    assert len(kube.of("ungate")) == 1


def test_labels_of_namespaces_and_nodes_the_relist_lacks_are_forgotten() -> None:
    c, _ = make()
    c.on_list("namespaces", [{"metadata": {"name": "a", "labels": {"t": "1"}}}, {"metadata": {"name": "b"}}])
    c.on_list("nodes", [{"metadata": {"name": "n1", "labels": {"zone": "x"}}}, {"metadata": {"name": "n2"}}])

    assert c.on_list("namespaces", [{"metadata": {"name": "b"}}]) == ["a"]
    assert c.on_list("nodes", [{"metadata": {"name": "n2", "labels": {"zone": "y"}}}]) == ["n1"]

    assert set(c.manager.namespace_labels) == {"b"}
    assert c.manager.node_labels == {"n2": {"zone": "y"}}


def test_a_broken_object_the_relist_lacks_takes_its_problem_with_it() -> None:
    """A GPUQueue or GPUNode the controller could not read is reported (`problems`) while it exists; deleted, by
    an event or by a relist that lacks it, it is no problem any more."""
    c, _ = make()
    broken_queue = {"metadata": {"name": "bad-q"}, "spec": {"nominalQuota": {"compute": "lots"}}}
    broken_node = {"metadata": {"name": "bad-n"}, "status": {"gpus": [{"uuid": "GPU-x", "memoryMiB": -1}]}}
    c.on_list("gpuqueues", [broken_queue])
    c.on_list("gpunodes", [broken_node])
    assert {"gpuqueue/bad-q", "gpunode/bad-n"} <= c.problems.keys()

    assert c.on_list("gpuqueues", []) == ["bad-q"] and c.on_list("gpunodes", []) == ["bad-n"]

    assert not {"gpuqueue/bad-q", "gpunode/bad-n"} & c.problems.keys()
    c.on_watch_event("gpuqueues", "ADDED", broken_queue)
    c.on_watch_event("gpuqueues", "DELETED", broken_queue)
    assert "gpuqueue/bad-q" not in c.problems


def test_one_object_its_handler_fails_on_does_not_stop_the_list_or_the_watch(monkeypatch: Any) -> None:
    c, _ = make()
    monkeypatch.setattr(c, "on_gpunode", failing_on("boom", c.on_gpunode))
    c.on_list("gpunodes", [gpunode("boom"), gpunode("n1")])
    c.on_watch_event("gpunodes", "MODIFIED", gpunode("boom"))
    c.on_watch_event("gpunodes", "ADDED", gpunode("n2"))
    assert set(c.ledger.node_names()) == {"n1", "n2"}


def test_only_the_watched_kinds_are_listed() -> None:
    c, _ = make()
    for kind in WATCHED:
        assert c.on_list(kind, []) == []
    with pytest.raises(ValueError, match="not a watched kind"):
        c.on_list("pods", [])
