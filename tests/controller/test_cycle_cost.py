"""What one admission cycle visits: not every pod (issue 16, the controller's profile at 5,000 nodes). The health
check reads the holdings `on_pod` verified; the resize passes visit the pods that carry a resize annotation."""

from __future__ import annotations

from unittest import mock

from gpupool import objects
from gpupool import resize as rz
from tests.controller.test_runtime import bound, gpunode, make, run

T0 = 2e9


def test_the_health_check_of_a_cycle_does_not_verify_every_pod_again() -> None:
    """`_health_gc` verified the signed assignment of every pod on every cycle (an HMAC and two JSON passes per
    pod: 5.6 % of the controller's busy time at 5,000 nodes, 90 % of a cycle with 1,000 bound pods); it now reads
    the holdings `on_pod` verified, and still evicts the pods of a GPU that turned Unhealthy."""
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    for g in range(2):
        c.on_pod("ADDED", bound(f"p{g}", "n1", g))
    run(c.cycle(now=T0))
    with mock.patch.object(objects, "holding_from_pod", wraps=objects.holding_from_pod) as verified:
        run(c.cycle(now=T0 + 1))
        assert verified.call_count == 0
        c.on_gpunode("MODIFIED", gpunode("n1", gpus=2, unhealthy=1))
        run(c.cycle(now=T0 + 2))
    assert kube.of("evict") == [("evict", "team-a/p1")]
    run(c.cycle(now=T0 + 3))
    assert kube.of("evict") == [("evict", "team-a/p1")]  # once


def test_the_resize_passes_of_a_cycle_visit_only_pods_with_a_resize_annotation() -> None:
    """`_resize_quota` and `_resize_events` read every pod's annotations on every cycle; now the pods whose
    annotations carry a resize request or outcome (tests/controller/test_resize.py: requests are still decided)."""
    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=4))
    for g in range(4):
        c.on_pod("ADDED", bound(f"p{g}", "n1", g))
    run(c.cycle(now=T0))
    with mock.patch.object(rz, "pending", wraps=rz.pending) as pending, \
            mock.patch.object(rz, "history_of", wraps=rz.history_of) as history:  # fmt: skip
        run(c.cycle(now=T0 + 1))
        assert pending.call_count == 0 and history.call_count == 0
        grow = bound("p0", "n1", 0)
        grow["metadata"]["annotations"][rz.REQUEST] = '{"seq":1,"container":"c","compute":100}'
        c.on_pod("MODIFIED", grow)
        run(c.cycle(now=T0 + 2))
        assert {call.args[0]["metadata"]["name"] for call in pending.call_args_list} == {"p0"}
    c.on_pod("DELETED", grow)
    assert not c._resizing
