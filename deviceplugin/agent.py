"""The node agent: wires inventory, GPUNode publishing, the pod cache, the gRPC plugin and /metrics.

`Agent` serves one node (kubelet gRPC + GPUNode). `MultiNodeAgent` publishes GPUNodes and heartbeats for every
node of a fake-inventory map (kwok clusters: no kubelet, so no gRPC).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from deviceplugin.gpunode import Publisher, UsageReporter, UsageSample
from deviceplugin.inventory import FakeInventory, Inventory, MultiNodeFakeInventory, NvmlInventory
from deviceplugin.kube import GPUNODES, Kube
from deviceplugin.metrics import Metrics
from deviceplugin.mps import MpsSupervisor
from deviceplugin.plugin import DevicePluginService, DeviceState, PluginServer
from deviceplugin.podcache import PodCache
from deviceplugin.resize import ResizeFollower
from deviceplugin.runtime_host import RuntimeHost
from deviceplugin.settings import Backend, DevicePluginSettings
from gpupool.assignment import Keys
from gpupool.errors import AssignmentError
from gpupool.inventory import GPUInfo
from gpupool.signing_key import KeyRing
from kubeio.probes import ProbeServer, text_probe

log = logging.getLogger(__name__)


def read_key(path: str) -> KeyRing:
    """The signing keys (a directory in the Secret layout, or one key file), re-read on change."""
    try:
        return KeyRing(path)
    except AssignmentError as exc:
        raise SystemExit(str(exc)) from None


def make_inventory(settings: DevicePluginSettings) -> Inventory:
    if settings.fake_inventory:
        return FakeInventory(settings.fake_inventory, settings.node_name)
    return NvmlInventory()


class Agent:
    """One node: ListAndWatch/Allocate for the kubelet, GPUNode status and heartbeats, pod cache."""

    def __init__(
        self,
        settings: DevicePluginSettings,
        kube: Kube | None,
        inventory: Inventory,
        key: Keys,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.inventory = inventory
        self.metrics = metrics or Metrics()
        self.cache = PodCache(settings.node_name, key, kube)
        self.keyring = key if isinstance(key, KeyRing) else None
        self.state = DeviceState(settings.slots_per_gpu, settings.remote_slots)
        self.state.update(inventory.gpus())
        self.runtime = RuntimeHost(settings) if settings.backend is Backend.POOL else None
        self.mps = (
            MpsSupervisor(
                settings.mps_control,
                settings.mps_pipe_dir,
                settings.mps_log_dir,
                on_restart=lambda gpu: self.metrics.mps_restarts.labels(gpu).inc(),
                on_health=lambda gpu, up: self.metrics.mps_daemon_up.labels(gpu).set(1 if up else 0),
            )
            if settings.backend is Backend.MPS and settings.mps_managed
            else None
        )
        self.service = DevicePluginService(settings, self.state, self.cache, kube, self.metrics, self.runtime, self.mps)
        if self.runtime is not None:
            self.metrics.watch_runtime(self.runtime_samples)
        self.server = PluginServer(settings, self.service, self.metrics)
        #: resize: rewrites control regions of resized containers, reports memory in use (deviceplugin/resize.py)
        self.resizer = ResizeFollower(settings.node_name, self.cache, self.runtime, self.state.gpu_index, kube,
                                      settings.backend.value)  # fmt: skip
        self.cache.on_change = self.resizer.notify
        self.publisher = (
            Publisher(
                kube,
                settings.node_name,
                settings.slots_per_gpu,
                settings.remote_slots,
                settings.endpoint_of(settings.node_name),
                usage=UsageReporter(self.usage_samples, settings.usage_interval_seconds)
                if self.runtime is not None and settings.usage_interval_seconds > 0
                else None,
            )
            if kube is not None
            else None
        )
        self.http: ProbeServer | None = None
        self.stop_event = threading.Event()
        self._publish_now = threading.Event()
        self._threads: list[threading.Thread] = []
        self.published = 0
        self._update_gauges()

    def _update_gauges(self) -> None:
        healthy, unhealthy = self.state.counts()
        self.metrics.slots_total.labels("Healthy").set(healthy)
        self.metrics.slots_total.labels("Unhealthy").set(unhealthy)
        self.metrics.gpus_unhealthy.set(sum(1 for g in self.state.gpus if not g.healthy))

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def runtime_samples(self) -> list[tuple[str, str, str, int, int, int, int, float]]:
        """One sample per device of every container the pool runtime serves on this node (for /metrics)."""
        if self.runtime is None:
            return []
        return [
            (c.namespace, c.pod, c.container, i, d.memory_used_bytes, d.memory_limit_bytes, d.compute, d.busy_ns / 1e9)
            for c in self.runtime.usage()
            for i, d in enumerate(c.usage.devices)
        ]

    def usage_samples(self) -> list[UsageSample]:
        """Memory and device time of every container device the pool runtime serves (GPUNode status.usage)."""
        if self.runtime is None:
            return []
        return [
            (c.namespace, c.pod, d.memory_used_bytes, d.memory_limit_bytes, d.busy_ns)
            for c in self.runtime.usage()
            for d in c.usage.devices
        ]

    def start(self) -> None:
        if self.runtime is not None:
            self.runtime.install()
        if self.mps is not None:
            self.mps.update(self.inventory.gpus())
            mps = self.mps
            self._spawn(lambda: mps.run(self.stop_event, self.settings.mps_health_interval_seconds), "dp-mps")
        if self.kube is not None:
            self._spawn(lambda: self.cache.run(self.stop_event, self.settings.watch_timeout_seconds), "dp-pods")
            self._spawn(self._publish_loop, "dp-publish")
            self._spawn(lambda: self.resizer.run(self.stop_event), "dp-resize")
            if self.keyring is not None:  # new keys: pods refused for an unknown key id are read again
                self._threads.append(self.keyring.watch(self.stop_event, self.cache.resync))
        else:
            self.cache.replace_all([])
        self._spawn(self._health_loop, "dp-health")
        self.server.start()
        if self.settings.metrics_enabled:
            self.http = ProbeServer(
                self.settings.metrics_host,
                self.settings.metrics_port,
                self.metrics.registry,
                healthz=text_probe(lambda: not self.stop_event.is_set(), failed=b"unhealthy\n"),
                readyz=text_probe(self.ready, ok=b"ready\n", failed=b"not ready\n"),
                name="dp-http",
            ).start()

    def ready(self) -> bool:
        return self.server.registered and self.cache.synced.is_set()

    def check_health(self) -> bool:
        """Poll the inventory once; on a change update ListAndWatch and publish the GPUNode at once."""
        try:
            changed = self.inventory.refresh()
        except Exception:
            log.exception("inventory refresh failed")
            return False
        if changed:
            self.state.update(self.inventory.gpus())
            if self.mps is not None:
                self.mps.update(self.inventory.gpus())
            self._update_gauges()
            self._publish_now.set()
        return changed

    def _health_loop(self) -> None:
        while not self.stop_event.wait(self.settings.health_interval_seconds):
            self.check_health()
            if self.runtime is not None and self.cache.synced.is_set():
                try:
                    for uid in self.runtime.forget(e.uid for e in self.cache.entries()):
                        log.info("pool runtime: removed the regions of pod %s (gone from this node)", uid)
                except OSError as exc:
                    log.warning("pool runtime: cleaning %s failed: %s", self.settings.runtime_state_dir, exc)

    def _publish_loop(self) -> None:
        assert self.publisher is not None
        delay = 0.0
        while not self.stop_event.is_set():
            self._publish_now.wait(delay)
            if self.stop_event.is_set():
                return
            self._publish_now.clear()
            try:
                self.publisher.publish(self.inventory.gpus())
                self.published += 1
                delay = self.settings.heartbeat_interval_seconds
            except Exception as exc:
                log.warning("publishing GPUNode %s failed (%s); retrying", self.settings.node_name, exc)
                delay = min(max(delay, 1.0) * 2, self.settings.heartbeat_interval_seconds)

    def stop(self) -> None:
        self.stop_event.set()
        self._publish_now.set()
        self.resizer.notify()
        if self.kube is not None:
            self.kube.close_streams()
        self.server.stop()
        if self.http is not None:
            self.http.stop()
        for thread in self._threads:
            thread.join(timeout=2)
        if self.mps is not None:
            self.mps.stop()  # the MPS daemons end with the agent (a new agent starts its own)
        self.inventory.close()


class RateLimit:
    """At most `qps` starts per second, shared by threads (0 = no limit): each caller gets the next free
    slot, spaced 1/qps apart, and sleeps until it."""

    def __init__(self, qps: float, clock: Any = time.monotonic, sleep: Any = time.sleep) -> None:
        self.interval = 1.0 / qps if qps > 0 else 0.0
        self.clock = clock
        self.sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self.clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self.sleep(slot - now)


class MultiNodeAgent:
    """GPUNodes and heartbeats for every node of a fake-inventory map; no gRPC."""

    def __init__(self, settings: DevicePluginSettings, kube: Kube) -> None:
        assert settings.fake_inventory
        self.settings = settings
        self.kube = kube
        self.inventory = MultiNodeFakeInventory(settings.fake_inventory)
        self.stop_event = threading.Event()
        self.rounds = 0
        #: one per node, kept across heartbeats (each remembers the labels it wrote)
        self.publishers: dict[str, Publisher] = {}
        self.limit = RateLimit(settings.publish_qps)
        self._listed = False
        #: nodes whose last publish failed: tried again on the next health tick, not a heartbeat later (issue 16:
        #: at 5,000 nodes a status write that timed out left its node out of the pool for the whole heartbeat)
        self.failed: set[str] = set()

    def publish_all(self) -> int:
        """Publish every node's GPUNode, `publish_workers` at a time within `publish_qps`; returns how many
        succeeded. The first round lists the GPUNodes once, so each missing one is created straight away."""
        ok = self._publish(sorted(self.inventory.nodes.items()))
        self.rounds += 1
        return ok

    def publish_failed(self) -> int:
        """Publish again the nodes whose last publish failed (and are still in the inventory); how many succeeded."""
        return self._publish(sorted((n, g) for n, g in self.inventory.nodes.items() if n in self.failed))

    def _publish(self, nodes: Sequence[tuple[str, Sequence[GPUInfo]]]) -> int:
        if not self._listed:
            self._learn_existing()
        with ThreadPoolExecutor(max_workers=self.settings.publish_workers, thread_name_prefix="publish") as pool:
            results = list(pool.map(lambda item: self._publish_one(*item), nodes))
        for (node, _), ok in zip(nodes, results, strict=True):
            if ok:
                self.failed.discard(node)
            else:
                self.failed.add(node)
        self.failed &= set(self.inventory.nodes)
        return sum(results)

    def _learn_existing(self) -> None:
        try:
            items, _ = self.kube.list(GPUNODES)
        except Exception as exc:  # the publishes find out node by node (patch, create on 404)
            log.warning("listing GPUNodes failed (%s); publishing without it", exc)
            return
        self._listed = True
        existing = {str((o.get("metadata") or {}).get("name") or "") for o in items}
        for node in self.inventory.nodes:
            self._publisher(node).exists = node in existing

    def _publisher(self, node: str) -> Publisher:
        publisher = self.publishers.get(node)
        if publisher is None:
            settings = self.settings
            publisher = self.publishers[node] = Publisher(
                self.kube, node, settings.slots_per_gpu, settings.remote_slots, settings.endpoint_of(node)
            )
        return publisher

    def _publish_one(self, node: str, gpus: Sequence[GPUInfo]) -> bool:
        publisher = self._publisher(node)
        self.limit.wait()
        try:
            publisher.publish(gpus)
            return True
        except Exception as exc:
            log.warning("publishing GPUNode %s failed: %s", node, exc)
            return False

    def run(self) -> None:
        elapsed = self.settings.heartbeat_interval_seconds
        while not self.stop_event.is_set():
            changed = self.inventory.refresh()
            if changed or elapsed >= self.settings.heartbeat_interval_seconds:
                self.publish_all()
                elapsed = 0.0
            elif self.failed:
                self.publish_failed()
            self.stop_event.wait(self.settings.health_interval_seconds)
            elapsed += self.settings.health_interval_seconds
