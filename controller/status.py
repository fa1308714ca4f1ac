"""GPUQueue and GPUNode `status` as the API shapes (camelCase, crds/): pure functions of the pool model.

The controller writes them (and sets its metrics from them); `gpupool status` prints them. The
GPUNode summary fields are docs/contracts.md "GPUNode status summary".
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from gpupool.ledger import Ledger
from gpupool.queues import QueueManager, State
from gpupool.quota import Resources


def _resources(r: Resources) -> dict[str, int]:
    return {"compute": r.compute, "memoryMiB": r.memory_mib}


def percent(value: Fraction) -> int:
    """A share as whole percent, rounded down (the printer columns and `gpupool status`)."""
    return int(value * 100)


def member_counts(manager: QueueManager) -> dict[str, tuple[int, int]]:
    """queue -> (its pods, of them admitted), in one pass over the pods (not one per queue: 100 queues of a
    40,000-pod cluster were 4 million visits per admission cycle)."""
    counts: dict[str, list[int]] = {}
    for e in manager.pods.values():
        if e.queue is None:  # not resolved to a queue: no queue's member (as `e.queue == name` never holds)
            continue
        c = counts.get(e.queue)
        if c is None:
            c = counts[e.queue] = [0, 0]
        c[0] += 1
        if e.state is State.ADMITTED:
            c[1] += 1
    return {q: (n, a) for q, (n, a) in counts.items()}


def queue_status(
    manager: QueueManager,
    name: str,
    shares: dict[str, tuple[Fraction, Fraction]] | None = None,
    counts: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """`status` of GPUQueue `name` (or of the implicit queue ""): pods, usage, borrowing, summaries, and its
    share and fair share in percent of its cohort (docs/fairshare.md; `shares` = `manager.shares()`, `counts` =
    `member_counts(manager)`)."""
    spec = manager.queue(name)
    total, admitted = (member_counts(manager) if counts is None else counts).get(name, (0, 0))
    usage = manager.usage(name)
    nominal_c = "" if spec is None or spec.nominal.compute is None else str(spec.nominal.compute)
    nominal_m = "-" if spec is None or spec.nominal.memory_mib is None else str(spec.nominal.memory_mib)
    share, fair = (shares if shares is not None else manager.shares()).get(name, (Fraction(0), Fraction(0)))
    return {
        "pending": total - admitted,
        "admitted": admitted,
        "usage": _resources(usage),
        "borrowed": _resources(manager.borrowed(name)),
        "computeSummary": f"{usage.compute}/{nominal_c}",
        "memorySummary": f"{usage.memory_mib}/{nominal_m}",
        "sharePercent": percent(share),
        "fairSharePercent": percent(fair),
    }


def queue_statuses(
    manager: QueueManager, counts: Mapping[str, tuple[int, int]] | None = None
) -> dict[str, dict[str, Any]]:
    """`status` of every GPUQueue, by name (`counts`: `member_counts(manager)`, when the caller has it)."""
    shares = manager.shares()
    counts = member_counts(manager) if counts is None else counts
    return {name: queue_status(manager, name, shares, counts) for name in manager.queues}


#: the `status` fields of a GPUNode that `node_status` computes (the controller writes them; the rest is the agent's)
NODE_STATUS_FIELDS = ("allocated", "gpuCount", "model", "computePercent", "memoryPercent", "healthy")


def stored_node_status(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The `NODE_STATUS_FIELDS` a GPUNode object carries (what the API server stores of the last summary written,
    by this replica or another), to compare with `node_status`."""
    found = obj.get("status")
    if not isinstance(found, dict):
        return {}
    return {k: found[k] for k in NODE_STATUS_FIELDS if k in found}


def node_status(ledger: Ledger, name: str) -> dict[str, Any]:
    """`status` of GPUNode `name` but its inventory (`gpus`, the node agent's): allocation and summary. Reads the
    node's GPUs' counters only (`GPUState`: bound pods' slices, and apart those of RESERVED / NOMINATED holdings),
    so the controller rebuilds the rows of the nodes the ledger logged as changed, not of the pool."""
    gpus = ledger.gpus_of(name)
    allocated = []
    cap_c = cap_m = used_c = used_m = healthy = 0
    for g in gpus:
        compute, memory = g.used_compute - g.pending_compute, g.used_memory - g.pending_memory
        allocated.append({"uuid": g.uuid, "compute": compute, "memoryMiB": memory,
                          "slices": g.slices - g.pending_slices, "reservedCompute": g.pending_compute,
                          "reservedMemoryMiB": g.pending_memory})  # fmt: skip
        if g.healthy:
            healthy += 1
        if g.healthy and not g.disabled:
            cap_c += 100
            cap_m += g.memory_mib
            used_c += compute
            used_m += memory
    return {
        "allocated": allocated,
        "gpuCount": len(gpus),
        "model": ",".join(sorted({g.model for g in gpus})),
        "computePercent": 100 * used_c // cap_c if cap_c else 0,
        "memoryPercent": 100 * used_m // cap_m if cap_m else 0,
        "healthy": f"{healthy}/{len(gpus)}",
    }


def node_statuses(ledger: Ledger) -> dict[str, dict[str, Any]]:
    """`status` of every GPUNode (`node_status`), by name."""
    return {name: node_status(ledger, name) for name in ledger.node_names()}
