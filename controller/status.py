"""GPUQueue and GPUNode `status` as the API shapes (camelCase, crds/): pure functions of the pool model.

The controller writes them (and sets its metrics from them); `gpupool status` prints them. The
GPUNode summary fields are docs/contracts.md "GPUNode status summary".
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from gpupool.ledger import HoldingKind, Ledger
from gpupool.queues import QueueManager, State
from gpupool.quota import Resources


def _resources(r: Resources) -> dict[str, int]:
    return {"compute": r.compute, "memoryMiB": r.memory_mib}


def percent(value: Fraction) -> int:
    """A share as whole percent, rounded down (the printer columns and `gpupool status`)."""
    return int(value * 100)


def queue_status(
    manager: QueueManager, name: str, shares: dict[str, tuple[Fraction, Fraction]] | None = None
) -> dict[str, Any]:
    """`status` of GPUQueue `name` (or of the implicit queue ""): pods, usage, borrowing, summaries, and its
    share and fair share in percent of its cohort (docs/fairshare.md; `shares` = `manager.shares()`)."""
    spec = manager.queue(name)
    members = [e for e in manager.pods.values() if e.queue == name]
    admitted = sum(1 for e in members if e.state is State.ADMITTED)
    usage = manager.usage(name)
    nominal_c = "" if spec is None or spec.nominal.compute is None else str(spec.nominal.compute)
    nominal_m = "-" if spec is None or spec.nominal.memory_mib is None else str(spec.nominal.memory_mib)
    share, fair = (shares if shares is not None else manager.shares()).get(name, (Fraction(0), Fraction(0)))
    return {
        "pending": len(members) - admitted,
        "admitted": admitted,
        "usage": _resources(usage),
        "borrowed": _resources(manager.borrowed(name)),
        "computeSummary": f"{usage.compute}/{nominal_c}",
        "memorySummary": f"{usage.memory_mib}/{nominal_m}",
        "sharePercent": percent(share),
        "fairSharePercent": percent(fair),
    }


def queue_statuses(manager: QueueManager) -> dict[str, dict[str, Any]]:
    """`status` of every GPUQueue, by name."""
    shares = manager.shares()
    return {name: queue_status(manager, name, shares) for name in manager.queues}


_EMPTY = {"compute": 0, "memoryMiB": 0, "slices": 0, "reservedCompute": 0, "reservedMemoryMiB": 0}


def node_statuses(ledger: Ledger) -> dict[str, dict[str, Any]]:
    """`status` of every GPUNode but its inventory (`gpus`, the node agent's): allocation and summary."""
    per_gpu: dict[str, dict[str, int]] = {}
    for h in ledger.holdings():
        for s in h.slices:
            row = per_gpu.setdefault(s.gpu, dict(_EMPTY))
            if h.kind is HoldingKind.ASSIGNED:
                row["compute"] += s.compute
                row["memoryMiB"] += s.memory_mib
                row["slices"] += 1
            else:
                row["reservedCompute"] += s.compute
                row["reservedMemoryMiB"] += s.memory_mib
    out: dict[str, dict[str, Any]] = {}
    for name in ledger.node_names():
        gpus = ledger.gpus_of(name)
        allocated = []
        cap_c = cap_m = used_c = used_m = healthy = 0
        for g in gpus:
            row = per_gpu.get(g.uuid, _EMPTY)
            allocated.append({"uuid": g.uuid, **row})
            if g.healthy:
                healthy += 1
            if g.healthy and not g.disabled:
                cap_c += 100
                cap_m += g.memory_mib
                used_c += row["compute"]
                used_m += row["memoryMiB"]
        out[name] = {
            "allocated": allocated,
            "gpuCount": len(gpus),
            "model": ",".join(sorted({g.model for g in gpus})),
            "computePercent": 100 * used_c // cap_c if cap_c else 0,
            "memoryPercent": 100 * used_m // cap_m if cap_m else 0,
            "healthy": f"{healthy}/{len(gpus)}",
        }
    return out
