"""Prometheus metrics of the node agent and its small HTTP server (`/metrics`, `/healthz`, `/readyz`).

One registry per agent (tests start several agents in one process).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.allocate_seconds = Histogram(
            "gpupool_deviceplugin_allocate_seconds",
            "Latency of Allocate (one container request), matching and annotation write included",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.allocate_failures = Counter(
            "gpupool_deviceplugin_allocate_failures_total", "Allocate failures by reason", ["reason"], registry=r
        )
        self.allocations = Counter(
            "gpupool_deviceplugin_allocations_total",
            "Containers served, by how the pod was matched (exact, init-reuse, same-pod, fallback, again)",
            ["how"],
            registry=r,
        )
        self.slots_in_use = Gauge(
            "gpupool_deviceplugin_slots_in_use", "Slots of served containers of live pods", registry=r
        )
        self.slots_total = Gauge("gpupool_deviceplugin_slots", "Slots advertised, by health", ["health"], registry=r)
        self.registrations = Counter(
            "gpupool_deviceplugin_registrations_total",
            "Registrations with the kubelet by result",
            ["result"],
            registry=r,
        )
        self.gpus_unhealthy = Gauge("gpupool_deviceplugin_gpus_unhealthy", "Unhealthy GPUs", registry=r)
        self.mps_daemon_up = Gauge(
            "gpupool_deviceplugin_mps_daemon_up",
            "Managed mps: 1 while the GPU's MPS control daemon passed its last health check",
            ["gpu"],
            registry=r,
        )
        self.mps_restarts = Counter(
            "gpupool_deviceplugin_mps_restarts_total",
            "Managed mps: restarts of a GPU's MPS daemon",
            ["gpu"],
            registry=r,
        )

    def watch_runtime(self, source: Callable[[], Iterable[ContainerSample]]) -> None:
        """Per-container usage reported by the pool runtime, read from its regions at every scrape."""
        self.registry.register(_RuntimeCollector(source))


#: namespace, pod, container, device ordinal, GPU-level figures:
#: memory used bytes, memory limit bytes, compute limit percent, busy seconds (cumulative)
ContainerSample = tuple[str, str, str, int, int, int, int, float]

_LABELS = ["namespace", "pod", "container", "device"]


class _RuntimeCollector(Collector):
    def __init__(self, source: Callable[[], Iterable[ContainerSample]]) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        used = GaugeMetricFamily(
            "gpupool_container_gpu_memory_used_bytes", "GPU memory the container holds (pool runtime)", labels=_LABELS
        )
        limit = GaugeMetricFamily(
            "gpupool_container_gpu_memory_limit_bytes", "GPU memory cap in effect (pool runtime)", labels=_LABELS
        )
        compute = GaugeMetricFamily(
            "gpupool_container_gpu_compute_limit_percent", "Compute share in effect (pool runtime)", labels=_LABELS
        )
        busy = CounterMetricFamily(
            "gpupool_container_gpu_busy_seconds",
            "Device time the container's kernels ran (pool runtime); its rate is the achieved share",
            labels=_LABELS,
        )
        try:
            samples: Sequence[ContainerSample] = list(self.source())
        except Exception:
            log.exception("reading the runtime regions failed")
            samples = []
        for namespace, pod, container, device, mem_used, mem_limit, compute_limit, busy_s in samples:
            labels = [namespace, pod, container, str(device)]
            used.add_metric(labels, mem_used)
            limit.add_metric(labels, mem_limit)
            compute.add_metric(labels, compute_limit)
            busy.add_metric(labels, busy_s)
        yield from (used, limit, compute, busy)
