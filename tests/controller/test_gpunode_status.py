"""GPUNode status writes (issue 16, "what gpupool adds per pod"): a cluster-wide write budget on top of the per-node
interval, rows computed again only for the nodes the ledger logged as changed, a new leader writing only what the
API server does not hold yet, and status-only GPUNode events not parsed again."""

from __future__ import annotations

import random
from typing import Any
from unittest import mock

import pytest

from controller import status
from controller.runtime import Controller
from gpupool import objects
from gpupool.ledger import HoldingKind, Ledger
from tests.controller.test_runtime import FakeKube, bound, gpunode, make, pod, queue, run

T0 = 2e9


def expected_rows(ledger: Ledger) -> dict[str, dict[str, Any]]:
    """The GPUNode summaries recomputed from the ledger's holdings (the oracle: independent of the per-GPU
    counters `status.node_status` reads)."""
    empty = {"compute": 0, "memoryMiB": 0, "slices": 0, "reservedCompute": 0, "reservedMemoryMiB": 0}
    per_gpu: dict[str, dict[str, int]] = {}
    for h in ledger.holdings():
        for s in h.slices:
            row = per_gpu.setdefault(s.gpu, dict(empty))
            if h.kind is HoldingKind.ASSIGNED:
                row["compute"] += s.compute
                row["memoryMiB"] += s.memory_mib
                row["slices"] += 1
            else:
                row["reservedCompute"] += s.compute
                row["reservedMemoryMiB"] += s.memory_mib
    out = {}
    for name in ledger.node_names():
        gpus = ledger.gpus_of(name)
        live = [g for g in gpus if g.healthy and not g.disabled]
        cap_c, cap_m = 100 * len(live), sum(g.memory_mib for g in live)
        used_c = sum(per_gpu.get(g.uuid, empty)["compute"] for g in live)
        used_m = sum(per_gpu.get(g.uuid, empty)["memoryMiB"] for g in live)
        out[name] = {
            "allocated": [{"uuid": g.uuid, **per_gpu.get(g.uuid, empty)} for g in gpus],
            "gpuCount": len(gpus),
            "model": ",".join(sorted({g.model for g in gpus})),
            "computePercent": 100 * used_c // cap_c if cap_c else 0,
            "memoryPercent": 100 * used_m // cap_m if cap_m else 0,
            "healthy": f"{sum(g.healthy for g in gpus)}/{len(gpus)}",
        }
    return out


def empty_summary(obj: dict[str, Any]) -> dict[str, Any]:
    """The summary of a GPUNode without pods, as a leader wrote it."""
    ledger = Ledger()
    ledger.upsert_node(objects.node_info_from_gpunode(obj))
    return status.node_status(ledger, obj["metadata"]["name"])


def last_written(kube: FakeKube) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for call in kube.of("status"):
        if call[1] == objects.GPUNODE_PLURAL:
            out[call[2]] = call[3]
    return out


def node_writes(kube: FakeKube) -> int:
    return sum(1 for call in kube.of("status") if call[1] == objects.GPUNODE_PLURAL)


def test_a_burst_over_1000_nodes_writes_at_most_the_budget_and_every_status_ends_right() -> None:
    """Issue 16: a burst spreads its pods over distinct nodes, so the 5 s per-node interval merged almost nothing:
    0.55-0.9 GPUNode status writes per bound pod at 1,000 nodes, each a watch event to every GPUNode watcher.
    Now at most `gpunode_status_writes_per_second` go out (one second's worth at once), the nodes that changed
    first first, and every status ends equal to the ledger."""
    rate = 10.0
    c, kube = make(gpunode_status_writes_per_second=rate)
    n = 1000
    for i in range(n):
        node = gpunode(f"n{i:04d}", gpus=1)
        node["status"].update(empty_summary(node))  # as a previous leader left it: nothing to write
        c.on_gpunode("ADDED", node)
    run(c.cycle(now=T0))
    assert node_writes(kube) == 0  # a new leader writes only what the API server does not hold already
    for i in range(n):  # the burst: one pod bound on every node
        c.on_pod("ADDED", bound(f"p{i:04d}", f"n{i:04d}", 0))
    t, step = T0 + 1, 0.25
    order: list[str] = []
    while t < T0 + 1 + n / rate + 5:
        before = len(kube.calls)
        run(c.cycle(now=t))
        order += [call[2] for call in kube.calls[before:] if call[0] == "status" and call[1] == "gpunodes"]
        assert node_writes(kube) <= rate * (t - (T0 + 1)) + rate, t  # one second's worth, then `rate` a second
        t += step
    assert node_writes(kube) == n  # each node written once: its burst's changes together
    assert last_written(kube) == expected_rows(c.ledger)
    assert all(row["computePercent"] == 100 for row in last_written(kube).values())


def test_the_nodes_that_changed_first_are_written_first() -> None:
    c, kube = make(gpunode_status_writes_per_second=1, gpunode_status_interval_seconds=0)
    for name in ("a", "b", "c"):
        c.on_gpunode("ADDED", gpunode(name, gpus=1))
    run(c.cycle(now=T0))  # one write (the bucket holds one second's worth: one)
    run(c.cycle(now=T0 + 1))
    run(c.cycle(now=T0 + 2))
    kube.calls.clear()
    c.on_pod("ADDED", bound("pc", "c", 0))
    run(c.cycle(now=T0 + 10))  # c changed first: written now
    c.on_pod("ADDED", bound("pa", "a", 0))
    run(c.cycle(now=T0 + 10.5))  # no token yet
    c.on_pod("ADDED", bound("pb", "b", 0))
    run(c.cycle(now=T0 + 11))  # a changed before b: a
    run(c.cycle(now=T0 + 12))
    assert [call[2] for call in kube.of("status") if call[1] == "gpunodes"] == ["c", "a", "b"]
    assert last_written(kube) == expected_rows(c.ledger)


def test_rows_are_computed_again_only_for_the_nodes_that_changed() -> None:
    """`write_status` rebuilt every node's row from every holding of the ledger on any change (14 % of the
    controller's busy time at 5,000 nodes); now only the rows of the nodes the ledger's change log names."""
    c, kube = make(gpunode_status_writes_per_second=10_000)
    for i in range(200):
        c.on_gpunode("ADDED", gpunode(f"n{i:03d}", gpus=2))
    run(c.cycle(now=T0))
    c.on_pod("ADDED", bound("one", "n007", 1))
    with mock.patch.object(status, "node_status", wraps=status.node_status) as computed:
        run(c.cycle(now=T0 + 100))
    assert [call.args[1] for call in computed.call_args_list] == ["n007"]
    assert last_written(kube)["n007"] == expected_rows(c.ledger)["n007"]


def churn(c: Controller, kube: FakeKube, seed: int, steps: int = 150) -> None:
    """Random binds, deletions, admissions (reserved holdings), GPU health flips and GPUNodes leaving and
    coming back; after each cycle every status written last equals the ledger's (no budget or interval in the
    way), and nodes no longer in the pool are not written."""
    rnd = random.Random(seed)
    names = [f"n{i}" for i in range(6)]
    for name in names:
        c.on_gpunode("ADDED", gpunode(name, gpus=2))
    c.on_queue("ADDED", queue("team-a", 10_000))
    live: dict[str, dict[str, Any]] = {}
    gone: set[str] = set()
    t = T0
    for step in range(steps):
        action = rnd.random()
        node = rnd.choice(names)
        if action < 0.35:
            free = [g for g in range(2) if all(p["spec"]["nodeName"] != node or f"-{g}" not in p["metadata"]["name"]
                                               for p in live.values() if p["spec"].get("nodeName"))]  # fmt: skip
            if free and node not in gone:
                p = bound(f"b{step}-{free[0]}", node, free[0])
                live[p["metadata"]["uid"]] = p
                c.on_pod("ADDED", p)
        elif action < 0.55 and live:
            uid = rnd.choice(sorted(live))
            c.on_pod("DELETED", live.pop(uid))
        elif action < 0.7:
            c.on_pod("ADDED", pod(f"g{step}"))  # admitted by the next cycle: a reserved holding
        elif action < 0.8:
            obj = gpunode(node, gpus=2, unhealthy=rnd.choice([None, 0, 1]))
            c.on_gpunode("MODIFIED", obj)
        elif action < 0.9:
            if node in gone:
                gone.discard(node)
                c.on_gpunode("ADDED", gpunode(node, gpus=2))
            else:
                gone.add(node)
                c.on_gpunode("DELETED", gpunode(node))
        t += 1
        kube.calls.clear()
        run(c.cycle(now=t))
        expected = expected_rows(c.ledger)
        written = last_written(kube)
        assert set(written) <= set(expected), (step, set(written) - set(expected))
        for name, row in expected.items():
            assert c._node_status.get(name) == row, (step, name)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_statuses_follow_every_change_of_the_ledger(seed: int) -> None:
    c, kube = make(gpunode_status_interval_seconds=0, gpunode_status_writes_per_second=10_000)
    churn(c, kube, seed)


def test_a_row_refresh_that_misses_a_logged_change_is_caught() -> None:
    """The check above fails when the refresh skips one logged change (the mutant drops the newest entry)."""
    c, kube = make(gpunode_status_interval_seconds=0, gpunode_status_writes_per_second=10_000)
    real = Ledger.changes_since

    def misses_one(self: Ledger, mark: int) -> list[str] | None:
        changed = real(self, mark)
        return changed[:-1] if changed else changed

    with mock.patch.object(Ledger, "changes_since", misses_one), pytest.raises(AssertionError):
        churn(c, kube, 1)


def test_a_new_leader_writes_only_the_statuses_that_differ_from_what_is_stored() -> None:
    c, kube = make()
    stale = gpunode("a", gpus=2)
    stale["status"].update(empty_summary(stale), computePercent=50)  # a previous leader's, now wrong
    fresh = gpunode("b", gpus=2)
    fresh["status"].update(empty_summary(fresh))
    c.on_gpunode("ADDED", stale)
    c.on_gpunode("ADDED", fresh)
    c.on_gpunode("ADDED", gpunode("c", gpus=2))  # never written
    run(c.cycle(now=T0))
    assert sorted(last_written(kube)) == ["a", "c"]
    assert last_written(kube) == {n: r for n, r in expected_rows(c.ledger).items() if n != "b"}
    kube.calls.clear()
    edited = gpunode("b", gpus=2)  # someone (another replica, a person) changed b's stored summary
    edited["status"].update(empty_summary(edited), healthy="0/2")
    c.on_gpunode("MODIFIED", edited)
    run(c.cycle(now=T0 + 10))
    assert last_written(kube) == {"b": expected_rows(c.ledger)["b"]}


def test_status_only_gpunode_events_are_not_parsed_again() -> None:
    """The controller's own summary writes and the agents' heartbeats come back as GPUNode events; what the pool
    reads of a GPUNode (`objects.gpunode_inventory_key`) did not change, so it is not parsed again."""
    c, _ = make()
    obj = gpunode("n1", gpus=2)
    c.on_gpunode("ADDED", obj)
    echo = {**obj, "status": {**obj["status"], "computePercent": 50, "heartbeat": "2026-12-02T00:00:00Z"}}
    with mock.patch.object(objects, "node_info_from_gpunode", wraps=objects.node_info_from_gpunode) as parsed:
        c.on_gpunode("MODIFIED", echo)
        assert parsed.call_count == 0
        changed = gpunode("n1", gpus=2, unhealthy=1)
        c.on_gpunode("MODIFIED", changed)
        assert parsed.call_count == 1
    assert not c.ledger.gpu("GPU-n1-1").healthy
    assert c.gpunodes["n1"]["status"] == changed["status"]


class Recording(dict[str, Any]):
    """A dict that remembers the keys read from it."""

    def __init__(self, *args: Any, seen: set[str]) -> None:
        super().__init__(*args)
        self.seen = seen

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.seen.add(key)
        return super().__getitem__(key)


def test_the_inventory_key_holds_every_status_field_the_parser_reads() -> None:
    """`node_info_from_gpunode` and `gpunode_inventory_key` stay in step: the parser reads no status field the
    key leaves out (else a status-only event that changed it would be skipped)."""
    seen: set[str] = set()
    obj = gpunode("n1", gpus=2)
    obj["status"] = Recording({**obj["status"], "agentEndpoint": "10.0.0.1:9403", "computePercent": 3,
                               "allocated": [], "heartbeat": "x", "usage": {}}, seen=seen)  # fmt: skip
    objects.node_info_from_gpunode(obj)
    assert seen and seen <= set(objects.GPUNODE_INVENTORY_STATUS)
    base = objects.gpunode_inventory_key(gpunode("n1", gpus=2))
    assert objects.gpunode_inventory_key({**gpunode("n1", gpus=2), "spec": {"disabledGPUs": ["GPU-n1-0"]}}) != base
    with_endpoint = gpunode("n1", gpus=2)
    with_endpoint["status"]["agentEndpoint"] = "h:1"
    assert objects.gpunode_inventory_key(with_endpoint) != base
    summary = gpunode("n1", gpus=2)
    summary["status"].update(computePercent=10, allocated=[{"uuid": "x"}])
    assert objects.gpunode_inventory_key(summary) == base


def test_node_status_writes_exactly_the_fields_it_names() -> None:
    c, _ = make()
    c.on_gpunode("ADDED", gpunode("n1", gpus=1))
    assert tuple(status.node_status(c.ledger, "n1")) == status.NODE_STATUS_FIELDS

