"""Publishing the node's inventory: the GPUNode object (status subresource) and the Node's labels.

GPUNode (`gpupool.io/v1alpha1`, cluster-scoped, name = node) status written here::

    status:
      gpus: [{uuid, index, model, memoryMiB, health, numa}]   # gpupool.objects.gpunode_status_gpus
      heartbeatTime: "2025-01-01T00:00:00Z"
      agentEndpoint: "10.0.0.5:9403"                            # remote slices are served through it
      slotsPerGPU: 32
      remoteSlots: 16
      usage:                                                    # pool backend; see `UsageReporter`
        time: "2025-01-01T00:00:00Z"
        windowSeconds: 60
        pods: [{namespace, name, memoryUsedMiB, memoryLimitMiB, computePercent}]

Node labels: `gpupool.io/gpu-model` (the first GPU's model, made a valid label value) and
`gpupool.io/gpu-count`. A missing Node object (kwok not yet up, unit tests) is logged once, not fatal.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from deviceplugin.kube import Kube, KubeError
from gpupool import objects
from gpupool.inventory import GPUInfo
from gpupool.timefmt import now_rfc3339

log = logging.getLogger(__name__)

MODEL_LABEL = "gpupool.io/gpu-model"
COUNT_LABEL = "gpupool.io/gpu-count"


def label_value(text: str) -> str:
    """A valid label value: [A-Za-z0-9._-], at most 63 chars, alphanumeric at both ends."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63]
    return value.strip("-._")


#: one container-device figure from the pool runtime: namespace, pod, memory used bytes, memory limit bytes,
#: busy ns (cumulative device time of its kernels)
UsageSample = tuple[str, str, int, int, int]

#: at most this many pods in status.usage (the CRD's maxItems; a node holds at most slots-per-GPU x GPUs)
MAX_USAGE_PODS = 512
MIB = 1 << 20


@dataclass
class UsageReporter:
    """Per-pod usage for GPUNode `status.usage`, rate-limited: at most every `interval_s`, and only when it changed.

    Usage never adds a write of its own: it rides on the heartbeat's status patch (one per node per
    `--heartbeat-interval-seconds`), so 5,000 nodes write no more often than their heartbeats; a merge patch
    without `usage` leaves the last published one in place. `computePercent` is the device time the pod's
    kernels ran over the window since the previous report, in % of one GPU (summed over its GPUs); the first
    report of a pod has none. Memory is rounded up to whole MiB. Cumulative device time is left to /metrics
    (`gpupool_container_gpu_busy_seconds_total`): it changes at every report and would defeat "only when changed".
    """

    source: Callable[[], Iterable[UsageSample]]
    interval_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _at: float | None = None
    _busy: dict[tuple[str, str], int] = field(default_factory=dict)
    _published: list[dict[str, object]] | None = None

    def unsent(self) -> None:
        """The last report did not reach the API server: the next due one is sent even if unchanged."""
        self._published = None

    def due(self) -> bool:
        return self._at is None or self.clock() - self._at >= self.interval_s

    def report(self) -> dict[str, object] | None:
        """The `usage` object to publish now, or None (not due, or nothing changed since the last one)."""
        if not self.due():
            return None
        now = self.clock()
        window = None if self._at is None else now - self._at
        pods: dict[tuple[str, str], list[int]] = {}
        for namespace, pod, used, limit, busy in self.source():
            figures = pods.setdefault((namespace, pod), [0, 0, 0])
            figures[0] += used
            figures[1] += limit
            figures[2] += busy
        listed: list[dict[str, object]] = []
        for key in sorted(pods)[:MAX_USAGE_PODS]:
            used, limit, busy = pods[key]
            item: dict[str, object] = {
                "namespace": key[0],
                "name": key[1],
                "memoryUsedMiB": -(-used // MIB),
                "memoryLimitMiB": limit // MIB,
            }
            before = self._busy.get(key)
            if window and before is not None and busy >= before:
                item["computePercent"] = round((busy - before) / 1e9 / window * 100)
            listed.append(item)
        self._busy = {k: v[2] for k, v in pods.items()}
        self._at = now
        if listed == self._published:
            return None
        self._published = listed
        usage: dict[str, object] = {"time": now_rfc3339(), "pods": listed}
        if window is not None:
            usage["windowSeconds"] = round(window)
        if len(pods) > MAX_USAGE_PODS:
            usage["truncated"] = True
        return usage


@dataclass
class Publisher:
    """Creates/updates the GPUNode of one node and labels its Node."""

    kube: Kube
    node: str
    slots_per_gpu: int
    remote_slots: int
    agent_endpoint: str = ""
    usage: UsageReporter | None = None
    #: whether the GPUNode exists: None unknown (patch, create on 404), False known missing (create first)
    exists: bool | None = None
    _labelled: tuple[str, str] | None = None
    _node_missing_logged: bool = False

    def status(self, gpus: Sequence[GPUInfo]) -> dict[str, Any]:
        status: dict[str, Any] = {
            "gpus": objects.gpunode_status_gpus(gpus),
            "heartbeatTime": now_rfc3339(),
            "agentEndpoint": self.agent_endpoint,
            "slotsPerGPU": self.slots_per_gpu,
            "remoteSlots": self.remote_slots,
        }
        if self.usage is not None:
            try:
                usage = self.usage.report()
            except Exception:  # usage is an extra: a failure never stops the heartbeat
                log.exception("reading the runtime's usage failed")
                usage = None
            if usage is not None:
                status["usage"] = usage
        return status

    def publish(self, gpus: Sequence[GPUInfo]) -> dict[str, Any]:
        """Write the GPUNode status (creating the GPUNode the first time it is missing) and the Node labels.

        A heartbeat of a known GPUNode is one status patch; labels are written only when they change. A
        GPUNode known to be missing (`exists` False, from the multi-node agent's first list) is created
        without trying the patch first.
        """
        status = self.status(gpus)  # once: the usage report it may carry is consumed
        try:
            result = self._write(status)
        except Exception:
            if "usage" in status and self.usage is not None:
                self.usage.unsent()
            raise
        self.exists = True
        self._label(gpus)
        return result

    def _write(self, status: dict[str, Any]) -> dict[str, Any]:
        if self.exists is False:
            self._create()
            return self.kube.patch_gpunode_status(self.node, status)
        try:
            return self.kube.patch_gpunode_status(self.node, status)
        except KubeError as exc:
            if exc.status != 404:
                raise
        self._create()
        return self.kube.patch_gpunode_status(self.node, status)

    def _create(self) -> None:
        try:
            self.kube.create_gpunode(self.node)
            log.info("created GPUNode %s", self.node)
        except KubeError as exc:
            if exc.status != 409:
                raise

    def _label(self, gpus: Sequence[GPUInfo]) -> None:
        wanted = (label_value(gpus[0].model) if gpus else "", str(len(gpus)))
        if wanted == self._labelled:
            return
        try:
            self.kube.patch_node_labels(self.node, {MODEL_LABEL: wanted[0] or None, COUNT_LABEL: wanted[1]})
            self._labelled = wanted
        except KubeError as exc:
            if exc.status == 404:
                if not self._node_missing_logged:
                    log.warning("Node %s does not exist (yet); labels not written", self.node)
                    self._node_missing_logged = True
                return
            raise
