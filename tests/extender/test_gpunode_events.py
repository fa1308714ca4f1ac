"""The extender's GPUNode watch: an event that changed only the rest of the status (the controller's allocation
summary, an agent's heartbeat) is not parsed or applied again; one that changed what the pool reads is."""

from __future__ import annotations

import copy
from unittest import mock

from gpupool import objects
from tests.extender.conftest import gpunode, node
from tests.extender.hostile import service


def test_a_status_only_gpunode_event_is_not_parsed_again() -> None:
    """Issue 16: every GPUNode status write of the controller (0.55-0.9 per bound pod at 1,000 nodes) reached the
    extender as a watch event, which parsed the GPUNode and compared its inventory with the ledger's."""
    s = service()
    s.on_node_list([node("n0")])
    s.on_gpunode_list([gpunode("n0", gpus=2)])
    generation = s.ledger.generation
    echo = gpunode("n0", gpus=2)
    echo["status"].update(computePercent=50, allocated=[{"uuid": "GPU-n0-0", "compute": 100}], heartbeat="t")
    with mock.patch.object(objects, "node_info_from_gpunode", wraps=objects.node_info_from_gpunode) as parsed:
        s.on_gpunode_event("MODIFIED", echo)
        assert parsed.call_count == 0
        assert s.gpunodes["n0"]["status"]["computePercent"] == 50  # the cache holds the latest object
        s.on_gpunode_event("MODIFIED", gpunode("n0", gpus=2, unhealthy=(1,)))  # the inventory changed
        assert parsed.call_count == 1
        s.on_gpunode_event("MODIFIED", gpunode("n0", gpus=2, unhealthy=(1,), disabled=(0,)))  # so did the spec
        assert parsed.call_count == 2
        s.on_gpunode_event("MODIFIED", gpunode("n0", gpus=2, unhealthy=(1,), disabled=(0,), endpoint="10.0.0.9:9403"))
        assert parsed.call_count == 3
    assert s.ledger.generation > generation
    assert not s.ledger.gpu("GPU-n0-1").healthy and s.ledger.gpu("GPU-n0-0").disabled
    assert s.ledger.agent_endpoint("n0") == "10.0.0.9:9403"


def test_a_gpunode_refused_before_is_read_again_on_its_next_event() -> None:
    """A GPUNode refused for a reason outside itself (a GPU uuid another node had) enters the pool on its next
    event once that is gone, even when the event changed only its status summary."""
    s = service()
    s.on_node_list([node("a"), node("b")])
    clash = gpunode("b", gpus=1)
    clash["status"]["gpus"][0]["uuid"] = "GPU-a-0"
    s.on_gpunode_list([gpunode("a", gpus=1), clash])
    assert "b" in s.gpunode_problems and not s.ledger.has_node("b")
    s.on_gpunode_event("MODIFIED", gpunode("a", gpus=0))  # a's GPU left it
    echo = copy.deepcopy(clash)
    echo["status"]["computePercent"] = 0
    s.on_gpunode_event("MODIFIED", echo)
    assert s.ledger.has_node("b") and "b" not in s.gpunode_problems


def test_a_node_back_in_the_pool_reads_its_gpunode() -> None:
    s = service()
    s.on_node_list([node("n0")])
    s.on_gpunode_list([gpunode("n0", gpus=2)])
    s.on_node_event("DELETED", node("n0"))
    assert not s.ledger.has_node("n0")
    s.on_gpunode_event("MODIFIED", gpunode("n0", gpus=2))  # while its Node is away: not in the pool
    assert not s.ledger.has_node("n0")
    s.on_node_event("ADDED", node("n0"))
    assert s.ledger.has_node("n0") and len(s.ledger.gpus_of("n0")) == 2
