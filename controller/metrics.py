"""Prometheus metrics of the controller (prefix `gpupool_`, DESIGN.md §8)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

QUEUE_PENDING = Gauge("gpupool_queue_pending_pods", "pods waiting in a GPUQueue", ["queue"], registry=REGISTRY)
QUEUE_ADMITTED = Gauge("gpupool_queue_admitted_pods", "admitted pods of a GPUQueue", ["queue"], registry=REGISTRY)
QUEUE_USAGE = Gauge(
    "gpupool_queue_usage", "quota in use (compute: 100 = one GPU; memory: MiB)", ["queue", "resource"],
    registry=REGISTRY,
)  # fmt: skip
QUEUE_QUOTA = Gauge("gpupool_queue_quota", "nominal quota", ["queue", "resource"], registry=REGISTRY)
ADMISSIONS = Counter("gpupool_admissions_total", "pods admitted (gate removed)", ["queue"], registry=REGISTRY)
PREEMPTIONS = Counter(
    "gpupool_preemptions_total", "pods evicted by preemption or reclaim", ["queue", "kind"], registry=REGISTRY
)
EVICTIONS_REFUSED = Counter("gpupool_evictions_refused_total", "evictions refused (PDB)", registry=REGISTRY)
DECISION_LATENCY = Histogram(
    "gpupool_admission_cycle_seconds", "time of one admission cycle (pure decisions)", registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
)  # fmt: skip
GATE_LATENCY = Histogram(
    "gpupool_gate_removal_seconds", "pod creation to admission-gate removal", registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)  # fmt: skip
GPU_ALLOCATED = Gauge(
    "gpupool_gpu_allocated", "allocated compute (%) and memory (MiB) per GPU", ["node", "gpu", "resource"],
    registry=REGISTRY,
)  # fmt: skip
RELISTS = Counter(
    "gpupool_controller_relists_total", "lists of a watched kind after its watch broke or expired (pods, nodes, ...)",
    ["resource"], registry=REGISTRY,
)  # fmt: skip
LEADER = Gauge("gpupool_controller_leader", "1 while this replica holds the Lease", registry=REGISTRY)
READY = Gauge("gpupool_controller_ready", "1 once the rebuild from the API server is complete", registry=REGISTRY)
QUARANTINED = Gauge(
    "gpupool_controller_quarantined_pods", "pods whose assignment cannot be trusted (their claim counts as held)",
    registry=REGISTRY,
)  # fmt: skip
TRAILING_WRITES = Gauge(
    "gpupool_controller_trailing_writes",
    "admitted pods whose Admission condition is still being written behind the admission cycles",
    registry=REGISTRY,
)  # fmt: skip
GPUNODE_STATUS_BACKLOG = Gauge(
    "gpupool_controller_gpunode_status_backlog",
    "GPUNode statuses that differ from the ledger and wait for their write (per-node interval, cluster budget)",
    registry=REGISTRY,
)  # fmt: skip
