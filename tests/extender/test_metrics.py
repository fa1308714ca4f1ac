"""The extender's scrape-time gauges read what the callable given to `Metrics.attach` returns."""

from __future__ import annotations

from prometheus_client import generate_latest

from extender.metrics import CacheStats, GPUAllocation, Metrics
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.ledger import Ledger
from gpupool.placement import Placer
from gpupool.policies import make_policy


def test_gauges_come_from_the_stats_callable() -> None:
    calls: list[int] = []

    def stats() -> CacheStats:
        calls.append(1)
        gpus = (GPUAllocation("n1", "GPU-a", 0, 40, 1000, True), GPUAllocation("n1", "GPU-b", 1, 0, 0, False))
        return CacheStats(ready=True, nodes=1, holdings=2, problems=0, unplaced=1, gpus=gpus)

    metrics = Metrics()
    metrics.attach(stats, lambda: 12.5)
    text = generate_latest(metrics.registry).decode()
    assert calls == [1]  # one consistent reading per scrape
    assert "gpupool_extender_ready 1.0" in text
    assert "gpupool_extender_cache_gpus 2.0" in text
    assert "gpupool_extender_cache_holdings 2.0" in text
    assert "gpupool_extender_unplaced_holdings 1.0" in text
    assert 'gpupool_gpu_allocated_compute_percent{eligible="true",gpu="GPU-a",index="0",node="n1"} 40.0' in text
    assert 'gpupool_gpu_allocated_memory_mib{eligible="false",gpu="GPU-b",index="1",node="n1"} 0.0' in text
    assert "gpupool_pool_fragmentation_compute 12.5" in text


def test_the_service_offers_its_cache_as_stats() -> None:
    from extender.service import PoolService

    ledger = Ledger()
    ledger.upsert_node(NodeInfo("n1", (GPUInfo("GPU-a", 0, "A100", 1000),)))
    service = PoolService(ledger, Placer(ledger, {"binpack": make_policy("binpack")}, "binpack"), b"key")
    stats = service.cache_stats()
    assert (stats.ready, stats.nodes, stats.holdings, stats.problems, stats.unplaced) == (False, 1, 0, 0, 0)
    assert stats.gpus == (GPUAllocation("n1", "GPU-a", 0, 0, 0, True),)
