"""The controller adapter (controller.runtime) with a recording fake API: gates, events, status,
preemption through evictions (a PDB refusal moves to the next victim set), health GC, and the Lease."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from unittest import mock

from controller import status
from controller.leader import LeaseElector, lease_spec, may_hold
from controller.runtime import Controller
from controller.settings import ControllerSettings
from gpupool import assignment, objects, resources, timefmt
from gpupool.ledger import HoldingKind

KEY = b"test-key"


class FakeKube:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.refuse: set[str] = set()
        self.ungated_with: dict[str, str | None] = {}
        self.fail_ungate = 0  # the next gate removals that fail
        self.listed: list[dict[str, Any]] = []  # what list_pods answers

    async def remove_gate(
        self, namespace: str, name: str, uid: str, gates: list[dict[str, Any]], queue: str | None = None
    ) -> None:
        self.calls.append(("ungate", f"{namespace}/{name}"))
        if self.fail_ungate:
            self.fail_ungate -= 1
            raise RuntimeError("injected: the controller's own webhook is not serving yet")
        self.ungated_with[f"{namespace}/{name}"] = queue

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, Any]) -> None:
        self.calls.append(("annotate", f"{namespace}/{name}", annotations))

    async def set_pod_condition(self, namespace: str, name: str, condition: dict[str, Any]) -> None:
        self.calls.append(("condition", f"{namespace}/{name}", condition))

    async def evict(self, namespace: str, name: str) -> bool:
        self.calls.append(("evict", f"{namespace}/{name}"))
        return name not in self.refuse

    async def event(self, pod: dict[str, Any], reason: str, message: str, type_: str = "Normal") -> None:
        self.calls.append(("event", f"{pod['metadata']['namespace']}/{pod['metadata']['name']}", reason, message))

    async def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        self.calls.append(("status", plural, name, status))

    async def list_pods(self) -> list[dict[str, Any]]:
        return list(self.listed)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        out = [c for c in self.calls if c[0] == kind]
        return out


def gpunode(name: str, gpus: int = 2, memory: int = 40960, unhealthy: int | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {},
        "status": {"gpus": [
            {"uuid": f"GPU-{name}-{i}", "index": i, "model": "A100", "memoryMiB": memory,
             "health": "Unhealthy" if i == unhealthy else "Healthy"}
            for i in range(gpus)
        ]},
    }  # fmt: skip


_n = iter(range(10**6))


def pod(name: str, *, ns: str = "team-a", count: int = 1, priority: int = 0, gated: bool = True,
        annotations: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    stamp = timefmt.format_time(1_735_689_600 + next(_n))  # 2025-01-01T00:00:00Z onwards
    return {
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "annotations": annotations or {},
                     "creationTimestamp": stamp},
        "spec": {"priority": priority,
                 "containers": [{"name": "c", "resources": {"limits": {resources.GPU: str(count)}}}],
                 "schedulingGates": [{"name": resources.ADMISSION_GATE}] if gated else []},
        "status": {"phase": "Pending"},
    }  # fmt: skip


def bound(name: str, node: str, gpu: int, *, priority: int = 0, ns: str = "team-a") -> dict[str, Any]:
    p = pod(name, ns=ns, priority=priority, gated=False)
    record = assignment.Assignment(
        pod=f"uid-{name}", node=node,
        slices=(assignment.SliceRecord(0, f"GPU-{node}-{gpu}", node, 100, 40960, f"gpu{gpu}-0"),),
        at="2025-01-01T00:00:00Z",
    ).signed(KEY)  # fmt: skip
    p["metadata"]["annotations"][resources.ASSIGNMENT] = record.to_annotation()
    p["spec"]["nodeName"] = node
    p["status"]["phase"] = "Running"
    return p


def queue(name: str, compute: int, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"namespaces": [name], "nominalQuota": {"compute": compute}, **spec}}


def make(kube: FakeKube | None = None, **settings: Any) -> tuple[Controller, FakeKube]:
    kube = kube if kube is not None else FakeKube()
    c = Controller(ControllerSettings(leader_election=False, **settings), kube, KEY)  # type: ignore[arg-type]
    c.ready = True
    return c, kube


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def failing_on(name: str, handler: Callable[[str, Any], None]) -> Callable[[str, Any], None]:
    """`handler`, raising for the object named `name` (one bad object among good ones)."""

    def wrapped(event: str, obj: Any) -> None:
        if obj["metadata"]["name"] == name:
            raise RuntimeError(f"injected: {name}")
        handler(event, obj)

    return wrapped


def test_cycle_ungates_waits_with_deduplicated_events_and_writes_status() -> None:
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 100))
    for name in ("a", "b", "d"):
        c.on_pod("ADDED", pod(name))
    counts = run(c.cycle(now=2e9))
    assert counts["admitted"] == 1 and kube.of("ungate") == [("ungate", "team-a/a")]
    events = {e[1]: e[3] for e in kube.of("event")}
    assert events["team-a/b"] == "queue team-a: 1st in line; quota 100/100 compute in use, needs 100 more"
    assert events["team-a/d"].startswith("queue team-a: 2nd in line")
    status = {(s[1], s[2]): s[3] for s in kube.of("status")}
    assert status[("gpuqueues", "team-a")]["computeSummary"] == "100/100"
    assert status[("gpuqueues", "team-a")]["pending"] == 2
    node = status[("gpunodes", "n1")]
    assert node["gpuCount"] == 2 and node["healthy"] == "2/2" and node["computePercent"] == 0
    assert node["allocated"][0]["reservedCompute"] + node["allocated"][1]["reservedCompute"] == 100
    kube.calls.clear()
    run(c.cycle(now=2e9 + 1))
    assert kube.of("event") == [] and kube.of("status") == []  # nothing changed: nothing posted


def test_bound_pods_count_in_gpunode_status() -> None:
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_pod("ADDED", bound("run", "n1", 0))
    run(c.cycle(now=2e9))
    status = {(s[1], s[2]): s[3] for s in kube.of("status")}
    node = status[("gpunodes", "n1")]
    assert node["allocated"][0] == {"uuid": "GPU-n1-0", "compute": 100, "memoryMiB": 40960, "slices": 1,
                                    "reservedCompute": 0, "reservedMemoryMiB": 0}  # fmt: skip
    assert node["computePercent"] == 50


def test_a_burst_of_binds_on_one_node_writes_its_status_once_per_interval_and_ends_right() -> None:
    """Issue 16: every cycle after a bind patched the node's GPUNode status, one more API write and a watch event
    to every GPUNode watcher per bound pod. Now at most one write per node per `gpunode_status_interval_seconds`:
    the first change at once, the rest of a burst together, and the last status is the node's."""
    c, kube = make()  # gpunode_status_interval_seconds: 5
    c.on_gpunode("ADDED", gpunode("n1", gpus=8))
    c.on_gpunode("ADDED", gpunode("n2", gpus=1))
    t0 = 2e9
    run(c.cycle(now=t0))

    def written(node: str) -> list[dict[str, Any]]:
        return [s[3] for s in kube.of("status") if s[1] == "gpunodes" and s[2] == node]

    assert written("n1")[-1]["computePercent"] == 0 and len(written("n2")) == 1
    kube.calls.clear()
    for i in range(8):  # one bind a second: 8 cycles that each changed n1
        c.on_pod("ADDED", bound(f"p{i}", "n1", i))
        run(c.cycle(now=t0 + 10 + i))
    assert [w["computePercent"] for w in written("n1")] == [12, 75], written("n1")  # at +10 s and +15 s
    assert written("n1")[0]["allocated"][0]["slices"] == 1  # the first change after a quiet spell: at once
    assert written("n2") == []  # nothing changed there
    run(c.cycle(now=t0 + 20))  # the burst is over: the rest is written within the interval
    last = written("n1")[-1]
    assert [g["slices"] for g in last["allocated"]] == [1] * 8 and last["computePercent"] == 100
    assert last == status.node_statuses(c.ledger)["n1"]
    n = len(written("n1"))
    run(c.cycle(now=t0 + 30))
    assert len(written("n1")) == n  # nothing changed since: nothing written
    c.on_pod("DELETED", bound("p0", "n1", 0))
    run(c.cycle(now=t0 + 31))
    assert written("n1")[-1]["allocated"][0]["slices"] == 0  # quiet for longer than the interval: at once


def test_gpunode_status_interval_zero_writes_every_change() -> None:
    c, kube = make(gpunode_status_interval_seconds=0)
    c.on_gpunode("ADDED", gpunode("n1", gpus=4))
    run(c.cycle(now=2e9))
    for i in range(4):
        c.on_pod("ADDED", bound(f"p{i}", "n1", i))
        run(c.cycle(now=2e9 + 1 + i / 10))
    assert len([s for s in kube.of("status") if s[1] == "gpunodes"]) == 5


def test_preemption_evicts_fewest_victims_then_nominates_and_admits_after_they_leave() -> None:
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 1000))
    c.on_pod("ADDED", bound("low0", "n1", 0, priority=1))
    c.on_pod("ADDED", bound("low1", "n1", 1, priority=2))
    c.on_pod("ADDED", pod("urgent", priority=100))
    kube.refuse = {"low0"}  # a PDB protects low0: the next victim set is low1
    from controller import metrics

    def count(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    preempted, refused = (count("gpupool_preemptions_total", queue="team-a", kind="preemption"),
                          count("gpupool_evictions_refused_total"))  # fmt: skip
    run(c.cycle(now=2e9))
    assert [e[1] for e in kube.of("evict")] == ["team-a/low0", "team-a/low1"]
    assert count("gpupool_preemptions_total", queue="team-a", kind="preemption") == preempted + 1  # low1
    assert count("gpupool_evictions_refused_total") == refused + 1  # low0
    annotations = [a for a in kube.of("annotate") if a[1] == "team-a/urgent"]
    assert annotations and objects.parse_nomination(annotations[0][2][resources.NOMINATED]) == ("n1", 2e9 + 300)
    assert kube.of("ungate") == []
    c.on_pod("DELETED", bound("low1", "n1", 1))
    kube.calls.clear()
    run(c.cycle(now=2e9 + 1))
    assert kube.of("ungate") == [("ungate", "team-a/urgent")]


def test_a_gpunode_republished_within_the_grace_evicts_nobody() -> None:
    """Found by tests/e2e/gpupool/test_restarts.py: a GPUNode deleted (by hand, a CRD re-install, while the API
    server was down) had every pod on it evicted at the leader's next cycle, although its agent publishes it
    again within a heartbeat and its GPUs never went. It now waits `gpunode_gone_grace_seconds`."""
    c, kube = make()
    assert c.settings.gpunode_gone_grace_seconds == 300
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_pod("ADDED", bound("run", "n1", 1))
    c.on_gpunode("DELETED", gpunode("n1", gpus=2))
    for t in (0, 60, 299):
        run(c.cycle(now=2e9 + t))
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))  # its agent's next heartbeat
    run(c.cycle(now=2e9 + 400))
    assert kube.of("evict") == []
    c.on_gpunode("DELETED", gpunode("n1", gpus=2))  # gone again: the grace starts over
    run(c.cycle(now=2e9 + 500))
    run(c.cycle(now=2e9 + 799))
    assert kube.of("evict") == []
    run(c.cycle(now=2e9 + 800))
    assert kube.of("evict") == [("evict", "team-a/run")]
    assert [e[3] for e in kube.of("event") if e[2] == "GPUNodeGone"] == [
        "GPUNode n1 holding its slice on GPU-n1-1 is gone for 300 s; evicting the pod"]
    run(c.cycle(now=2e9 + 900))
    assert len(kube.of("evict")) == 1  # once


def test_a_gpunode_gone_evicts_at_once_with_no_grace() -> None:
    c, kube = make(gpunode_gone_grace_seconds=0)
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_pod("ADDED", bound("run", "n1", 0))
    c.on_gpunode("DELETED", gpunode("n1", gpus=2))
    run(c.cycle(now=2e9))
    assert kube.of("evict") == [("evict", "team-a/run")]


def test_unhealthy_gpu_evicts_its_pods() -> None:
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_pod("ADDED", bound("run", "n1", 1))
    c.on_gpunode("MODIFIED", gpunode("n1", gpus=2, unhealthy=1))
    run(c.cycle(now=2e9))
    assert kube.of("evict") == [("evict", "team-a/run")]
    assert any(e[2] == "GPUUnhealthy" for e in kube.of("event"))


class FakeCoordination:
    """Enough of CoordinationV1Api for LeaseElector, with resourceVersion conflicts."""

    def __init__(self) -> None:
        from kubernetes import client

        self.api_client = client.ApiClient()
        self.lease: Any = None
        self.version = 0

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> Any:
        from kubernetes.client.rest import ApiException

        if self.lease is None:
            raise ApiException(status=404)
        import copy

        return copy.deepcopy(self.lease)

    def create_namespaced_lease(self, namespace: str, body: Any, **_: Any) -> None:
        from kubernetes.client.rest import ApiException

        if self.lease is not None:
            raise ApiException(status=409)
        self._store(body)

    def replace_namespaced_lease(self, name: str, namespace: str, body: Any, **_: Any) -> None:
        from kubernetes.client.rest import ApiException

        if str(body.metadata.resource_version) != str(self.version):
            raise ApiException(status=409)
        self._store(body)

    def _store(self, body: Any) -> None:
        from kubernetes import client

        self.version += 1
        spec = body.spec if isinstance(body.spec, dict) else self.api_client.sanitize_for_serialization(body.spec)
        self.lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name="l", namespace="ns", resource_version=str(self.version)),
            spec=client.V1LeaseSpec(
                holder_identity=spec.get("holderIdentity"),
                lease_duration_seconds=spec.get("leaseDurationSeconds"),
                renew_time=spec.get("renewTime"),
                acquire_time=spec.get("acquireTime"),
                lease_transitions=spec.get("leaseTransitions"),
            ),
        )


def test_standby_takes_over_when_the_leader_stops_renewing() -> None:
    api = FakeCoordination()
    a = LeaseElector(api, "l", "ns", "replica-a", duration=15, renew=5)  # type: ignore[arg-type]
    b = LeaseElector(api, "l", "ns", "replica-b", duration=15, renew=5)  # type: ignore[arg-type]
    t = 1_700_000_000.0
    assert a.tick(t) and not b.tick(t + 1)
    assert a.tick(t + 5) and not b.tick(t + 10)  # a renews; b stays standby
    assert not b.tick(t + 19)  # 14 s since a's renewal: not yet
    assert b.tick(t + 21) and b.is_leader  # a stopped renewing 16 s ago: b takes over
    assert not a.tick(t + 22)  # the old leader steps down
    b.release()
    assert a.tick(t + 23)  # a released lease is taken at once


def test_a_leader_whose_renewal_hangs_stops_leading_before_a_standby_may_take_over() -> None:
    """A renewal that hangs (the API server unreachable) ends leadership at the renew deadline, before the Lease's
    duration lets a standby take it; a renewal that succeeds only after the deadline does not restore it."""
    import threading
    import time

    from e2e.polling import wait_for

    api = FakeCoordination()
    a = LeaseElector(api, "l", "ns", "replica-a", duration=0.6, renew=0.2)  # type: ignore[arg-type]
    assert a.deadline < a.duration and a.tick(time.time()) and a.is_leader
    release = threading.Event()
    read = api.read_namespaced_lease

    def hanging(name: str, namespace: str, **kw: Any) -> Any:
        release.wait(10)
        return read(name, namespace, **kw)

    api.read_namespaced_lease = hanging  # type: ignore[method-assign]
    renewal = threading.Thread(target=a.tick, args=(time.time(),))
    renewal.start()
    wait_for(lambda: not a.is_leader, timeout=5, what="leadership to end at the renew deadline", interval=0.02)
    assert renewal.is_alive()  # the renewal still hangs: leadership ended without it
    release.set()
    renewal.join(10)
    assert api.lease.spec.holder_identity == "replica-a" and not a.is_leader  # a late success counts from its start
    api.read_namespaced_lease = read  # type: ignore[method-assign]
    assert a.tick(time.time()) and a.is_leader


def test_may_hold_pure() -> None:
    spec = lease_spec(None, "x", 100.0, 15)
    assert may_hold(spec, "x", 101, 15) and not may_hold(spec, "y", 110, 15) and may_hold(spec, "y", 116, 15)
    assert may_hold(None, "y", 0, 15) and may_hold({"holderIdentity": None}, "y", 0, 15)


def alias_pod(name: str, *, ns: str = "bypass") -> dict[str, Any]:
    """A pod as stored when the webhook was bypassed: alias names, no gate, the default scheduler."""
    p = pod(name, ns=ns, gated=False)
    p["spec"]["containers"][0]["resources"] = {"limits": {"pool.kubernetes.io/gpu": "1"}}
    p["spec"]["initContainers"] = [
        {"name": "init", "resources": {"requests": {"pool.kubernetes.io/gpu-memory": "1024"}}}
    ]
    p["spec"]["schedulerName"] = "default-scheduler"
    return p


def test_alias_pod_that_bypassed_the_webhook_gets_one_warning_event() -> None:
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_pod("ADDED", alias_pod("bypassed"))
    c.on_pod("ADDED", pod("fine"))
    run(c.cycle(now=2e9))
    warnings = [e for e in kube.calls if e[0] == "event" and e[2] == "AliasResourceNotRewritten"]
    assert [e[1] for e in warnings] == ["bypass/bypassed"]
    message = warnings[0][3]
    assert "spec.containers[0].resources.limits[pool.kubernetes.io/gpu]" in message
    assert "spec.initContainers[0].resources.requests[pool.kubernetes.io/gpu-memory]" in message
    assert "webhook was bypassed" in message
    assert f"pool.kubernetes.io/gpu -> {resources.GPU}" in message
    assert f"pool.kubernetes.io/gpu-memory -> {resources.GPU_MEMORY}" in message
    # once per pod: later cycles and updates of the same pod post nothing more
    kube.calls.clear()
    updated = alias_pod("bypassed")
    updated["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]
    c.on_pod("MODIFIED", updated)
    run(c.cycle(now=2e9 + 1))
    run(c.cycle(now=2e9 + 2))
    assert not [e for e in kube.calls if e[0] == "event" and e[2] == "AliasResourceNotRewritten"]
    assert "uid-bypassed" not in c.manager.pods  # never queued: it is not gpupool's to place


def test_alias_warning_waits_for_the_leader_and_is_retried_after_a_failed_post() -> None:
    c, kube = make()
    c.is_leader = False
    c.on_pod("ADDED", alias_pod("bypassed"))
    run(c.cycle(now=2e9))
    assert kube.calls == []  # a standby posts nothing
    c.is_leader = True
    failing = kube.event

    async def refuse(*_: Any, **__: Any) -> None:
        raise RuntimeError("apiserver down")

    kube.event = refuse  # type: ignore[method-assign]
    run(c.cycle(now=2e9 + 1))
    kube.event = failing  # type: ignore[method-assign]
    run(c.cycle(now=2e9 + 2))
    run(c.cycle(now=2e9 + 3))
    assert [e[2] for e in kube.calls if e[0] == "event"] == ["AliasResourceNotRewritten"]
    c.on_pod("DELETED", alias_pod("bypassed"))
    assert c._alias_pods == {} and c._alias_warned == set()


def test_lender_waits_for_reclaim_then_is_admitted() -> None:
    """A queue within its nominal quota whose quota team-b borrowed: gpupool reclaims it (evicts one of
    team-b's pods) instead of admitting past the cohort's quota, then admits the lender's pod."""
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=4))
    c.on_queue("ADDED", queue("team-a", 100, cohort="c"))
    c.on_queue("ADDED", queue("team-b", 100, cohort="c"))
    c.on_pod("ADDED", bound("b0", "n1", 0, ns="team-b"))
    c.on_pod("ADDED", bound("b1", "n1", 1, ns="team-b"))
    c.on_pod("ADDED", pod("a0"))
    run(c.cycle(now=2e9))
    assert kube.of("ungate") == []
    evicted = [e[1] for e in kube.of("evict")]
    assert len(evicted) == 1 and evicted[0].startswith("team-b/")
    preempted = [e for e in kube.of("event") if e[2] == "GPUPoolPreempted"]
    assert preempted and "(reclaim)" in preempted[0][3]
    c.on_pod("DELETED", bound(evicted[0].split("/")[1], "n1", 0, ns="team-b"))
    kube.calls.clear()
    run(c.cycle(now=2e9 + 1))
    assert kube.of("ungate") == [("ungate", "team-a/a0")]


def test_read_only_controller_refuses_another_pods_assignment_too() -> None:
    """Without the key (read-only CLI) assignments are read unverified, but never credited to another pod."""
    c = Controller(ControllerSettings(leader_election=False), FakeKube(), b"")  # type: ignore[arg-type]
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    own = bound("own", "n1", 0)
    copied = bound("copied", "n1", 1)
    copied["metadata"]["annotations"][resources.ASSIGNMENT] = own["metadata"]["annotations"][resources.ASSIGNMENT]
    c.on_pod("ADDED", own)
    c.on_pod("ADDED", copied)
    assert c.ledger.holding("uid-own") is not None
    copied_holding = c.ledger.holding("uid-copied")
    assert copied_holding is None or copied_holding.kind is not HoldingKind.ASSIGNED
    assert "carries the assignment of pod uid-own" in c.problems["pod/team-a/copied"]


def test_metrics_after_a_cycle() -> None:
    """Values, not names: the queue and GPU gauges after a known cycle, and what the counters grew by.

    The registry is the process's (controller.metrics), shared with other tests: names are unique here and
    counters are compared before and after."""
    from controller import metrics

    def value(name: str, **labels: str) -> float | None:  # None: no such series
        return metrics.REGISTRY.get_sample_value(name, labels)

    def count(name: str, **labels: str) -> float:  # a counter not incremented yet reads 0
        return value(name, **labels) or 0.0

    c, kube = make()
    c.on_gpunode("ADDED", gpunode("metrics-n1", gpus=2))
    c.on_queue("ADDED", queue("metrics-q", 200))
    c.on_pod("ADDED", bound("metrics-run", "metrics-n1", 0, ns="metrics-q"))
    for name in ("metrics-a", "metrics-b"):
        c.on_pod("ADDED", pod(name, ns="metrics-q"))
    admitted, cycles, gates = (count("gpupool_admissions_total", queue="metrics-q"),
                               count("gpupool_admission_cycle_seconds_count"),
                               count("gpupool_gate_removal_seconds_count"))  # fmt: skip
    run(c.cycle(now=2e9))
    assert kube.of("ungate") == [("ungate", "metrics-q/metrics-a")]
    assert value("gpupool_admissions_total", queue="metrics-q") == admitted + 1
    assert value("gpupool_admission_cycle_seconds_count") == cycles + 1
    assert value("gpupool_gate_removal_seconds_count") == gates + 1
    assert value("gpupool_queue_pending_pods", queue="metrics-q") == 1  # metrics-b
    assert value("gpupool_queue_admitted_pods", queue="metrics-q") == 2  # the bound pod and metrics-a
    assert value("gpupool_queue_usage", queue="metrics-q", resource="compute") == 200
    assert value("gpupool_queue_usage", queue="metrics-q", resource="memory") == 2 * 40960
    assert value("gpupool_queue_quota", queue="metrics-q", resource="compute") == 200
    # the bound pod's slice is allocated; metrics-a's is only reserved until it binds
    gpu0 = {"node": "metrics-n1", "gpu": "GPU-metrics-n1-0"}
    assert value("gpupool_gpu_allocated", **gpu0, resource="compute") == 100
    assert value("gpupool_gpu_allocated", **gpu0, resource="memory") == 40960
    assert value("gpupool_gpu_allocated", node="metrics-n1", gpu="GPU-metrics-n1-1", resource="compute") == 0
def test_admission_records_the_queue_on_the_pod_in_the_gate_removal() -> None:
    """The extender learns a pod's queue from `gpupool.io/queue`: written at admission, in the write that removes the
    gate (issue 16: one write, one webhook call and one watch event a pod, not two)."""
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 400))
    c.on_pod("ADDED", pod("defaulted"))
    c.on_pod("ADDED", pod("named", annotations={resources.QUEUE: "team-a"}))
    run(c.cycle(now=2e9))
    assert kube.of("annotate") == []
    assert kube.ungated_with == {"team-a/defaulted": "team-a", "team-a/named": "team-a"}


def test_a_pod_naming_another_namespaces_queue_waits_with_the_reason() -> None:
    """Defence in depth if the webhook was bypassed: the pod is never admitted against team-a's quota."""
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 400))
    c.on_pod("ADDED", pod("thief", ns="team-b", annotations={resources.QUEUE: "team-a"}))
    run(c.cycle(now=2e9))
    assert kube.of("ungate") == []
    events = {e[1]: e[3] for e in kube.of("event")}
    assert "GPUQueue team-a serves namespaces team-a, not namespace team-b" in events["team-b/thief"]


def test_guaranteed_pod_of_equal_priority_preempts_a_best_effort_holder_and_says_so() -> None:
    """Issue 11 finding 4: a best-effort pod holding a whole over-committed GPU starved a guaranteed pod
    of the same priority asking 50 %; its wait message now names the pod being preempted."""
    c, kube = make(overcommit_compute_percent=200, overcommit_memory_percent=200)
    c.on_gpunode("ADDED", gpunode("n1", gpus=1))
    c.on_queue("ADDED", queue("team-a", 1000))
    be = bound("be", "n1", 0)
    be["metadata"]["annotations"][resources.QOS] = "best-effort"
    c.on_pod("ADDED", be)
    waiting = pod("g")
    waiting["spec"]["containers"][0]["resources"]["limits"].update({resources.GPU_COMPUTE: "50",
                                                                    resources.GPU_MEMORY: "1000"})  # fmt: skip
    c.on_pod("ADDED", waiting)
    run(c.cycle(now=2e9))
    assert [e[1] for e in kube.of("evict")] == ["team-a/be"]
    events = {(e[1], e[2]): e[3] for e in kube.of("event")}
    assert events[("team-a/g", "GPUPoolWaiting")].endswith("; preemption on node n1: evict team-a/be")
    kube.calls.clear()
    run(c.cycle(now=2e9 + 1))
    events = {(e[1], e[2]): e[3] for e in kube.of("event")}
    assert events[("team-a/g", "GPUPoolWaiting")].endswith("to leave node n1: team-a/be")
    c.on_pod("DELETED", be)
    kube.calls.clear()
    run(c.cycle(now=2e9 + 2))
    assert kube.of("ungate") == [("ungate", "team-a/g")]


def test_refused_eviction_of_a_best_effort_holder_is_named_in_the_wait_message() -> None:
    c, kube = make(overcommit_compute_percent=200, overcommit_memory_percent=200)
    c.on_gpunode("ADDED", gpunode("n1", gpus=1))
    c.on_queue("ADDED", queue("team-a", 1000))
    be = bound("be", "n1", 0, priority=100)
    be["metadata"]["annotations"][resources.QOS] = "best-effort"
    c.on_pod("ADDED", be)
    c.on_pod("ADDED", pod("g"))
    kube.refuse = {"be"}
    run(c.cycle(now=2e9))
    events = {(e[1], e[2]): e[3] for e in kube.of("event")}
    assert events[("team-a/g", "GPUPoolWaiting")].endswith(
        "; no preemption: the eviction of team-a/be was refused (a PodDisruptionBudget)"
    )


async def _until(check: Any, what: str) -> None:
    """Poll the fake API until `check()` (a guard against hanging, not a timed assertion)."""
    for _ in range(3000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def test_events_run_the_cycle_without_waiting_for_the_timer() -> None:
    """The backstop timer is an hour: a finished pod, a new pod and a quota change still admit at once."""
    c, kube = make(admission_interval_seconds=3600)
    c.on_gpunode("ADDED", gpunode("n1", gpus=1))
    c.on_queue("ADDED", queue("team-a", 100))
    first = pod("a")
    c.on_pod("ADDED", first)

    async def scenario() -> None:
        stop = asyncio.Event()
        loop = asyncio.create_task(c.run_cycles(stop))
        await _until(lambda: ("ungate", "team-a/a") in kube.calls, "a admitted by the first cycle")
        c.on_pod("ADDED", pod("b"))  # waits: quota 100/100
        await _until(lambda: any(e[1] == "team-a/b" for e in kube.of("event")), "b told why it waits")
        c.on_pod("DELETED", first)  # its slice and quota are free: b goes
        await _until(lambda: ("ungate", "team-a/b") in kube.calls, "b admitted after a finished")
        c.on_pod("ADDED", pod("d"))
        await _until(lambda: any(e[1] == "team-a/d" for e in kube.of("event")), "d told why it waits")
        c.on_gpunode("MODIFIED", gpunode("n1", gpus=2))  # more capacity, and more quota
        c.on_queue("MODIFIED", queue("team-a", 200))
        await _until(lambda: ("ungate", "team-a/d") in kube.calls, "d admitted after the quota change")
        stop.set()
        await loop

    run(scenario())


def test_own_writes_echoed_by_the_watches_do_not_wake_the_cycle() -> None:
    """The status the leader writes comes back through the watches; it must not start another cycle."""
    c, _ = make(admission_interval_seconds=3600)
    woken: list[int] = []
    c.wake = lambda: woken.append(1)
    node, q = gpunode("n1", gpus=1), queue("team-a", 100)
    c.on_gpunode("ADDED", node)
    c.on_queue("ADDED", q)
    c.on_pod("ADDED", pod("a"))
    assert len(woken) == 3  # new capacity, a new queue, a new waiting pod
    run(c.cycle(now=2e9))
    c.on_gpunode("MODIFIED", {**node, "status": {**node["status"], "computePercent": 50}})
    c.on_queue("MODIFIED", {**q, "status": {"admitted": 1}})
    c.on_pod("MODIFIED", pod("a", gated=False))
    assert len(woken) == 3


def test_a_burst_of_events_is_one_cycle() -> None:
    c, _ = make(admission_interval_seconds=3600, admission_coalesce_seconds=0.05)
    c.on_gpunode("ADDED", gpunode("n1", gpus=4))
    c.on_queue("ADDED", queue("team-a", 400))
    cycles: list[float] = []
    real_cycle = c.cycle

    async def counted(now: float | None = None, *, trail: bool = False) -> dict[str, int]:
        cycles.append(0.0)
        return await real_cycle(now, trail=trail)

    c.cycle = counted  # type: ignore[method-assign]

    async def scenario() -> None:
        stop = asyncio.Event()
        loop = asyncio.create_task(c.run_cycles(stop))
        await _until(lambda: len(cycles) == 1, "the first cycle")
        for i in range(20):
            c.on_pod("ADDED", pod(f"burst-{i}"))
        await _until(lambda: len(cycles) >= 2, "a cycle after the burst")
        await asyncio.sleep(0.2)
        stop.set()
        await loop

    run(scenario())
    assert len(cycles) == 2  # the first cycle at start, one for the whole burst


class SlowConditions(FakeKube):
    """Admitted conditions wait for `release` (an API server slow to answer them); gate removals do not."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def set_pod_condition(self, namespace: str, name: str, condition: dict[str, Any]) -> None:
        if condition.get("reason") == objects.ADMITTED_REASON:
            await self.release.wait()
        await super().set_pod_condition(namespace, name, condition)


def _slow_conditions(**settings: Any) -> tuple[Controller, SlowConditions]:
    kube = SlowConditions()
    c, _ = make(kube, **settings)
    return c, kube


def test_the_next_cycle_removes_gates_while_the_last_ones_conditions_are_still_written() -> None:
    """A burst's gate removals never queue behind the previous cycle's Admitted conditions (issue 16: those
    writes doubled every cycle of a 1,000-pod burst); the conditions are all written in the end, and the loop
    does not return before they are."""
    c, kube = _slow_conditions(admission_interval_seconds=3600)
    c.on_gpunode("ADDED", gpunode("n1", gpus=4))
    c.on_queue("ADDED", queue("team-a", 400))
    c.on_pod("ADDED", pod("first"))

    async def scenario() -> None:
        stop = asyncio.Event()
        loop = asyncio.create_task(c.run_cycles(stop))
        await _until(lambda: ("ungate", "team-a/first") in kube.calls, "first admitted")
        c.on_pod("ADDED", pod("second"))
        await _until(lambda: ("ungate", "team-a/second") in kube.calls, "second admitted while first's condition waits")
        assert kube.of("condition") == []
        assert sorted(c._trailing) == ["uid-first", "uid-second"]
        stop.set()
        await asyncio.sleep(0.05)
        assert not loop.done()  # the loop waits for the writes behind it
        kube.release.set()
        await loop
        assert c._trailing == {}

    run(scenario())
    assert sorted((w[1], w[2]["reason"], w[2]["status"]) for w in kube.of("condition")) == [
        ("team-a/first", objects.ADMITTED_REASON, "True"),
        ("team-a/second", objects.ADMITTED_REASON, "True"),
    ]


def test_a_cycle_called_alone_writes_everything_before_it_returns() -> None:
    """`cycle()` without `trail` (tests, `gpupool` tools) keeps its contract: all of its writes are done."""
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=1))
    c.on_queue("ADDED", queue("team-a", 100))
    c.on_pod("ADDED", pod("a"))
    run(c.cycle(now=2e9))
    assert [(w[1], w[2]["reason"]) for w in kube.of("condition")] == [("team-a/a", objects.ADMITTED_REASON)]
    assert c._trailing == {}


def test_a_later_decision_about_a_pod_is_written_after_its_trailing_admitted_condition() -> None:
    """The condition a pod keeps is the controller's last word: a Waiting condition for a pod whose Admitted
    condition is still behind a cycle waits for it instead of being overwritten by it."""
    c, kube = _slow_conditions()
    c.on_gpunode("ADDED", gpunode("n1", gpus=1))
    c.on_queue("ADDED", queue("team-a", 100))
    p = pod("a")
    c.on_pod("ADDED", p)

    async def scenario() -> None:
        await c.cycle(now=2e9, trail=True)
        assert ("ungate", "team-a/a") in kube.calls and kube.of("condition") == []
        later = asyncio.create_task(c._tell_all_waiting([(p, objects.WAITING_REASON, "waits again")], 2e9 + 1))
        await asyncio.sleep(0.05)
        assert not later.done() and kube.of("condition") == []
        kube.release.set()
        await later
        await c.drain_trailing()

    run(scenario())
    assert [w[2]["reason"] for w in kube.of("condition")] == [objects.ADMITTED_REASON, objects.WAITING_REASON]


def test_draining_forgets_a_trailing_write_cancelled_before_it_ran() -> None:
    c, _ = _slow_conditions()

    async def scenario() -> None:
        async def never() -> None:
            raise AssertionError("cancelled before it ran")

        c._trail([("uid-x", never)])
        c._trailing["uid-x"].cancel()
        async with asyncio.timeout(30):  # a guard against a busy loop, not a timed assertion
            await c.drain_trailing()

    run(scenario())
    assert c._trailing == {}


def test_a_burst_of_waiting_pods_whose_admitted_conditions_trail_does_not_deadlock_the_write_slots() -> None:
    """More changed waits than write slots, each waiting for its pod's trailing Admitted condition: those are
    waited for before a slot is taken, so the deferred writes still find one."""
    c, kube = _slow_conditions(api_write_concurrency=2)
    c.on_gpunode("ADDED", gpunode("n1", gpus=8))
    c.on_queue("ADDED", queue("team-a", 800))
    pods = [pod(f"p{i}") for i in range(6)]
    for p in pods:
        c.on_pod("ADDED", p)

    async def scenario() -> None:
        async with asyncio.timeout(30):  # a guard against the deadlock, not a timed assertion
            await c.cycle(now=2e9, trail=True)  # its status writes find a slot the blocked conditions left
            assert len(c._trailing) == 6
            later = asyncio.create_task(
                c._tell_all_waiting([(p, objects.WAITING_REASON, "w") for p in pods], 2e9 + 1))
            await asyncio.sleep(0.05)
            kube.release.set()
            await later
            await c.drain_trailing()

    run(scenario())
    for p in pods:
        key = f"team-a/{p['metadata']['name']}"
        assert [w[2]["reason"] for w in kube.of("condition") if w[1] == key] == [
            objects.ADMITTED_REASON, objects.WAITING_REASON]  # fmt: skip


def _assigned(c: Controller) -> dict[str, list[str]]:
    return {h.pod: sorted(s.gpu for s in h.slices) for h in c.ledger.holdings() if h.kind is HoldingKind.ASSIGNED}


def test_a_gpunode_deleted_and_re_added_holds_its_bound_pods_again() -> None:
    """Found by bench/soak.py: after a GPUNode flap the controller's ledger lacked the pods bound there, so its
    allocation (GPUNode status, gpupool_gpu_allocated) and its admission saw those GPUs free."""
    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_pod("ADDED", bound("run", "n1", 0))
    assert _assigned(c) == {"uid-run": ["GPU-n1-0"]}
    c.on_gpunode("DELETED", gpunode("n1", gpus=2))
    assert _assigned(c) == {}
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    assert _assigned(c) == {"uid-run": ["GPU-n1-0"]}


def test_a_pod_seen_before_its_gpunode_is_held_once_the_gpunode_arrives() -> None:
    c, _ = make()
    c.on_pod("ADDED", bound("early", "n1", 1))
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    assert _assigned(c) == {"uid-early": ["GPU-n1-1"]}


def test_a_gpu_that_leaves_and_returns_holds_its_pods_again() -> None:
    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_pod("ADDED", bound("run", "n1", 1))
    c.on_gpunode("MODIFIED", gpunode("n1", gpus=1))  # GPU-n1-1 leaves status.gpus
    assert "GPU-n1-1" not in {g for gpus in _assigned(c).values() for g in gpus}
    c.on_gpunode("MODIFIED", gpunode("n1", gpus=2))
    assert _assigned(c) == {"uid-run": ["GPU-n1-1"]}


def test_a_relist_forgets_the_pods_it_lacks() -> None:
    """Found by bench/soak.py: a pod deleted while the watch was not looking (a relist after 410 Gone) never gets a
    DELETED event; the controller kept its slices (and queue charge) until its next restart. The pod watch's relist
    replaces the cache (`Controller.on_pod_list`)."""
    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    gone, kept = bound("gone", "n1", 0), bound("kept", "n1", 1)
    c.on_pod_event("ADDED", gone)
    c.on_pod_event("ADDED", kept)
    assert c.on_pod_list([kept, {"metadata": {"name": "plain", "namespace": "default", "uid": "uid-plain"}}]) == [
        "uid-gone"
    ]
    assert _assigned(c) == {"uid-kept": ["GPU-n1-1"]}
    assert "uid-gone" not in c.manager.pods and "uid-gone" not in c.pods
    assert c.synced["pods"]


def test_a_pod_squeezed_by_a_deleted_pod_is_held_once_the_relist_forgets_it() -> None:
    """Soak: a pod bound on the GPU of a pod deleted while the watch was not looking could not be held (the GPU
    looked taken); the relist that forgets the deleted pod must hold it, not leave its GPU free in the ledger."""
    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    gone = bound("gone", "n1", 0)
    c.on_pod_event("ADDED", gone)
    late = bound("late", "n1", 0)  # on the GPU gone had, bound after gone was deleted
    c.on_pod_event("ADDED", late)
    assert "uid-late" not in _assigned(c)
    assert c.on_pod_list([late]) == ["uid-gone"]
    assert _assigned(c) == {"uid-late": ["GPU-n1-0"]}


def test_a_pod_event_that_fails_is_that_pods_problem(monkeypatch: Any, caplog: Any) -> None:
    """An exception in one pod's event is logged with the pod named; the watch's next pods are read as ever (the
    watch does not relist the cluster for one pod)."""
    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    monkeypatch.setattr(c, "on_pod", failing_on("bad", c.on_pod))
    c.on_pod_event("ADDED", bound("bad", "n1", 0))
    c.on_pod_event("ADDED", bound("good", "n1", 1))
    assert _assigned(c) == {"uid-good": ["GPU-n1-1"]}
    assert "pod team-a/bad: its ADDED event failed" in caplog.text


def test_a_failed_gate_removal_is_retried_by_the_next_cycle() -> None:
    """Soak: right after a restart the controller's cycle ran before its own webhook served, the gate removal
    failed, and the pod stayed gated forever (the queue manager counted it admitted and charged)."""
    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    c.on_queue("ADDED", queue("team-a", 100))
    c.on_pod("ADDED", pod("a"))
    kube.fail_ungate = 1
    run(c.cycle(now=2e9))
    assert kube.of("ungate") == [("ungate", "team-a/a")] and c.manager.usage("team-a").compute == 0
    run(c.cycle(now=2e9 + 1))
    assert kube.of("ungate") == [("ungate", "team-a/a")] * 2 and kube.ungated_with == {"team-a/a": "team-a"}


def test_a_burst_of_admissions_removes_gates_in_parallel_within_the_bound() -> None:
    """Issue 16: the cycle removed gates write after write, so the last pod of a 1,000-pod burst waited for ~3,000
    API round trips. Gate removals now overlap, at most `api_write_concurrency` at once, before any condition."""
    c, kube = make()  # api_write_concurrency: 16
    for n in range(3):
        c.on_gpunode("ADDED", gpunode(f"n{n}", gpus=8))
    c.on_queue("ADDED", queue("team-a", 2400))
    for i in range(24):
        c.on_pod("ADDED", pod(f"b{i}"))
    in_flight, most = 0, 0
    plain = kube.remove_gate

    async def slow_gate(*args: Any, **kwargs: Any) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        for _ in range(3):  # yield to the loop: other writes may start meanwhile
            await asyncio.sleep(0)
        in_flight -= 1
        await plain(*args, **kwargs)

    kube.remove_gate = slow_gate  # type: ignore[method-assign]
    counts = run(c.cycle(now=2e9))
    assert counts["admitted"] == 24 and most == 16
    kinds = [call[0] for call in kube.calls if call[0] in ("ungate", "condition")]
    assert kinds == ["ungate"] * 24 + ["condition"] * 24  # every gate first, then the conditions


def test_a_blocked_head_is_not_searched_again_while_nothing_changed() -> None:
    """Issue 16: the preemption search runs under the controller's lock; a head whose inputs (ledger generation,
    queue manager version, refused victims) did not change reuses its last answer, and a GPUNode event that
    changes nothing does not bump the ledger's generation."""
    from unittest import mock

    from controller import runtime
    from gpupool import preemption

    c, kube = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=1))
    c.on_queue("ADDED", queue("team-a", 1000))
    c.on_pod("ADDED", bound("high", "n1", 0, priority=100))
    c.on_pod("ADDED", pod("low", priority=1))  # blocked: it may evict nothing
    with mock.patch.object(runtime, "find_preemption", wraps=preemption.find_preemption) as search:
        run(c.cycle(now=2e9))
        assert search.call_count == 1
        c.on_gpunode("MODIFIED", gpunode("n1", gpus=1))  # the same inventory again
        run(c.cycle(now=2e9 + 1))
        assert search.call_count == 1
        c.on_queue("MODIFIED", queue("team-a", 900))  # the quota changed: searched again
        run(c.cycle(now=2e9 + 2))
        assert search.call_count == 2
    assert kube.of("evict") == []


def test_pool_limits_follow_the_inventory_without_a_walk_per_webhook_call() -> None:
    """Issue 16: the validating webhook asked for the pool's bounds once per pod, and each answer walked every GPU
    (a profile of a 1,000-pod burst at 1,000 nodes: ~5 % of the controller's samples)."""
    from controller import admission

    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=2))
    walks = 0
    real = admission.PoolLimits.of

    def counting(ledger: Any) -> admission.PoolLimits:
        nonlocal walks
        walks += 1
        return real(ledger)

    with mock.patch.object(admission.PoolLimits, "of", staticmethod(counting)):
        assert c.pool_limits().total_gpus == 2
        c.on_pod("ADDED", bound("run", "n1", 0))
        c.on_gpunode("MODIFIED", gpunode("n1", gpus=2))  # a status-only write (its own allocation): same inventory
        assert [c.pool_limits().total_gpus for _ in range(5)] == [2] * 5
        assert walks == 1
        c.on_gpunode("ADDED", gpunode("n2", gpus=4, memory=81920))
        assert c.pool_limits() == admission.PoolLimits(81920, 4, 6, frozenset({"A100"}))
        c.on_gpunode("DELETED", gpunode("n2", gpus=4, memory=81920))
        assert c.pool_limits() == admission.PoolLimits(40960, 2, 2, frozenset({"A100"}))
        assert walks == 3
