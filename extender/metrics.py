"""Prometheus metrics of the extender (prefix `gpupool_`), on a registry of its own.

Counters and histograms are updated by the service; everything derived from the
ledger (cache sizes, per-GPU allocation, fragmentation) is read at scrape time through
callables the owner of the ledger passes to `attach`, so it is always consistent with the
ledger and costs nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True, slots=True)
class GPUAllocation:
    """One GPU's allocation as the scrape shows it."""

    node: str
    uuid: str
    index: int
    compute: int
    memory_mib: int
    eligible: bool  # healthy and not disabled


@dataclass(frozen=True, slots=True)
class CacheStats:
    """The extender's cache at one instant (taken under its lock by `PoolService.cache_stats`)."""

    ready: bool
    nodes: int
    holdings: int
    problems: int
    unplaced: int
    gpus: tuple[GPUAllocation, ...]


class Metrics:
    """The extender's counters and histograms; `attach` adds the gauges read at scrape time."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.verb_latency = Histogram(
            "gpupool_extender_request_duration_seconds", "Extender verb latency (body read to answer).",
            ["verb"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "gpupool_extender_requests", "Extender verb calls by outcome (ok, error, rejected).",
            ["verb", "outcome"], registry=r,
        )  # fmt: skip
        self.binds = Counter("gpupool_extender_binds", "Binds by result.", ["result"], registry=r)
        self.filter_answers = Counter(
            "gpupool_extender_filter_answers",
            "Filter answers of more than one passing node, by form: one (the node prioritize would rank first; "
            "kube-scheduler binds there without scoring) or all (the pod asks kube-scheduler's scoring for a "
            "preference of its own).",
            ["form"], registry=r,
        )  # fmt: skip
        self.bind_conflicts = Counter(
            "gpupool_extender_bind_conflicts", "Assignment writes refused with 409 Conflict.", registry=r
        )
        self.bind_rollbacks = Counter(
            "gpupool_extender_bind_rollbacks", "Binds whose committed slices were released again.", registry=r
        )
        self.assignment_problems = Counter(
            "gpupool_extender_assignment_problems",
            "Quarantines: a pod's assignment was forged, unreadable, of an unknown key id or did not fit.",
            registry=r,
        )
        self.quarantined = Counter(
            "gpupool_extender_quarantined",
            "Pods whose signed assignment did not fit (a GPU reported less than was held); not counted.",
            registry=r,
        )
        self.gpunode_problems = Counter(
            "gpupool_extender_gpunode_problems", "GPUNode objects that could not be read.", registry=r
        )
        self.preemptions = Counter(
            "gpupool_extender_preempt_nodes", "Nodes answered to preempt calls, kept or dropped.", ["result"],
            registry=r,
        )  # fmt: skip
        self.unserved_overdue = Counter(
            "gpupool_extender_unserved_overdue",
            "Bound pods whose devices the kubelet had not taken after identity_wait_seconds (they stopped holding "
            "back same-slot-count pods on their node).",
            registry=r,
        )
        self.relists = Counter("gpupool_extender_relists", "Re-lists of a watched resource.", ["resource"], registry=r)

    def attach(
        self, stats: Callable[[], CacheStats], fragmentation: Callable[[], float | None] | None = None
    ) -> None:
        self.registry.register(_CacheCollector(stats, fragmentation))


class _CacheCollector(Collector):
    def __init__(self, stats: Callable[[], CacheStats], fragmentation: Callable[[], float | None] | None) -> None:
        self.stats = stats
        self.fragmentation = fragmentation

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        s = self.stats()
        frag = self.fragmentation() if self.fragmentation is not None else None
        yield GaugeMetricFamily("gpupool_extender_ready", "1 when the cache is complete and clean.", value=int(s.ready))
        yield GaugeMetricFamily("gpupool_extender_cache_nodes", "Nodes in the pool model.", value=s.nodes)
        yield GaugeMetricFamily("gpupool_extender_cache_gpus", "GPUs in the pool model.", value=len(s.gpus))
        yield GaugeMetricFamily("gpupool_extender_cache_holdings", "Pods holding slices.", value=s.holdings)
        yield GaugeMetricFamily(
            "gpupool_extender_quarantined_pods",
            "Pods quarantined now: assignment untrusted or not fitting; their claim is held as far as it fits.",
            value=s.problems,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "gpupool_extender_unplaced_holdings", "Valid assignments naming a node or GPU not in the pool.",
            value=s.unplaced,
        )  # fmt: skip
        compute = GaugeMetricFamily(
            "gpupool_gpu_allocated_compute_percent", "Compute allocated on a GPU (percent of one GPU).",
            labels=["node", "gpu", "index", "eligible"],
        )  # fmt: skip
        memory = GaugeMetricFamily(
            "gpupool_gpu_allocated_memory_mib", "Memory allocated on a GPU (MiB).",
            labels=["node", "gpu", "index", "eligible"],
        )  # fmt: skip
        for g in s.gpus:
            labels = [g.node, g.uuid, str(g.index), "true" if g.eligible else "false"]
            compute.add_metric(labels, g.compute)
            memory.add_metric(labels, g.memory_mib)
        yield compute
        yield memory
        if frag is not None:
            yield GaugeMetricFamily(
                "gpupool_pool_fragmentation_compute",
                "Fragmentation F_N(M) of the pool over the target workload (compute units, 100 = 1 GPU).",
                value=frag,
            )  # fmt: skip
