"""The node's GPUs and their health: NVML on real nodes, a YAML file for kind / kwok / laptops.

All NVML calls live in `NvmlBackend` (the one boundary tests replace with a fake). `NvmlInventory` turns
what NVML says into `GPUInfo` values and health; `FakeInventory` reads the fake-inventory file.

Health (NVML): every `refresh()` probes each GPU (`nvmlDeviceGetHandleByIndex`, UUID, memory info) and
drains the XID event set. A probe error marks the GPU Unhealthy until a probe succeeds again; a critical XID
(not one of the application-level XIDs 13, 31, 43, 45, 68, 109 that NVIDIA's own plugin ignores) marks it
Unhealthy until the agent restarts, as NVIDIA's device plugin does.

Fake inventory file (`--fake-inventory FILE`), YAML, one of two forms::

    # (a) a list: the GPUs of the agent's own node
    - {uuid: GPU-aaaa..., model: A100-SXM4-80GB, memoryMiB: 81920, numa: 0}
    - {model: A100-SXM4-80GB, memoryMiB: 81920, count: 3, numa: 1}     # 3 GPUs, generated uuids

    # (b) a map node name -> list as in (a): for --multi-node (kwok) or one file shared by several agents
    gpu-node-0:
      - {model: A100-SXM4-80GB, memoryMiB: 81920, count: 4}
    gpu-node-1:
      - {model: T4, memoryMiB: 15360, count: 2, health: Unhealthy}

Per GPU entry: `model` and `memoryMiB` (required), `uuid` (default: `GPU-` + a UUIDv5 of node and index, so
it is stable across restarts), `index` (default: position on the node), `numa` (default: none), `health`
(`Healthy` default | `Unhealthy`), `count` (expand the entry into that many GPUs; `uuid`/`index` then must
be absent). The file is re-read when it changes, so editing `health` flips a GPU live.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid as uuidlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import yaml

from gpupool.inventory import GPUInfo

log = logging.getLogger(__name__)

#: XIDs caused by applications, not by the GPU (NVIDIA k8s-device-plugin skips them too)
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
_FAKE_UUID_NS = uuidlib.UUID("5b0c3e1e-8a39-4d5c-9a55-6770cf0f3a11")


class InventoryError(Exception):
    """The inventory cannot be read (NVML missing, malformed fake-inventory file)."""


class Inventory(Protocol):
    """What the agent needs from an inventory source."""

    def gpus(self) -> list[GPUInfo]:
        """The GPUs of this node with their current health, in index order."""
        ...

    def refresh(self) -> bool:
        """Poll health (and the source); True when anything changed since the last call."""
        ...

    def close(self) -> None: ...


# --- NVML ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NvmlDevice:
    """What NVML tells about one GPU."""

    index: int
    uuid: str
    name: str
    memory_total_mib: int
    pci_bus_id: str
    #: MIG mode is on: the GPU is split into instances gpupool does not schedule
    mig_enabled: bool = False


class NvmlBackend:
    """Every NVML call gpupool makes. Tests substitute this class (and only this class)."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
            raise InventoryError(f"nvidia-ml-py is not installed: {exc}") from None
        self.nvml = pynvml
        self._event_set: Any = None

    def init(self) -> None:
        try:
            self.nvml.nvmlInit()
        except self.nvml.NVMLError as exc:
            raise InventoryError(
                f"NVML init failed ({exc}): no NVIDIA driver on this node? use --fake-inventory for test clusters"
            ) from None

    def shutdown(self) -> None:
        try:
            if self._event_set is not None:
                self.nvml.nvmlEventSetFree(self._event_set)
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass

    def device_count(self) -> int:
        return int(self.nvml.nvmlDeviceGetCount())

    def device(self, index: int) -> NvmlDevice:
        handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
        name = self.nvml.nvmlDeviceGetName(handle)
        uuid = self.nvml.nvmlDeviceGetUUID(handle)
        memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
        pci = self.nvml.nvmlDeviceGetPciInfo(handle)
        bus_id = pci.busId
        try:
            current, _pending = self.nvml.nvmlDeviceGetMigMode(handle)
            mig = current == self.nvml.NVML_DEVICE_MIG_ENABLE
        except self.nvml.NVMLError:  # not MIG-capable (NOT_SUPPORTED) or an old driver
            mig = False
        return NvmlDevice(
            index=index,
            uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
            name=name.decode() if isinstance(name, bytes) else str(name),
            memory_total_mib=int(memory.total) // 2**20,
            pci_bus_id=bus_id.decode() if isinstance(bus_id, bytes) else str(bus_id),
            mig_enabled=mig,
        )

    def probe(self, index: int) -> str | None:
        """None when the GPU answers; else the NVML error text."""
        try:
            handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
            self.nvml.nvmlDeviceGetUUID(handle)
            self.nvml.nvmlDeviceGetMemoryInfo(handle)
        except self.nvml.NVMLError as exc:
            return f"NVML: {exc}"
        return None

    def watch_xids(self, indexes: Sequence[int]) -> None:
        """Register critical-XID events of these GPUs (best effort: some GPUs do not support events)."""
        try:
            self._event_set = self.nvml.nvmlEventSetCreate()
        except self.nvml.NVMLError as exc:
            log.warning("NVML event set unavailable (%s): health by probing only", exc)
            return
        for index in indexes:
            try:
                handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
                self.nvml.nvmlDeviceRegisterEvents(handle, self.nvml.nvmlEventTypeXidCriticalError, self._event_set)
            except self.nvml.NVMLError as exc:
                log.warning("GPU %d: XID events not supported (%s)", index, exc)

    def next_xid(self, timeout_ms: int = 0) -> tuple[str, int] | None:
        """(GPU uuid, xid) of the next critical-XID event, or None when none arrived within the timeout."""
        if self._event_set is None:
            return None
        try:
            event = self.nvml.nvmlEventSetWait_v2(self._event_set, timeout_ms)
        except self.nvml.NVMLError_Timeout:
            return None
        except self.nvml.NVMLError as exc:
            log.warning("NVML event wait failed: %s", exc)
            return None
        uuid = self.nvml.nvmlDeviceGetUUID(event.device)
        return (uuid.decode() if isinstance(uuid, bytes) else str(uuid)), int(event.eventData)


def pci_sysfs_id(nvml_bus_id: str) -> str:
    """NVML's `00000000:3B:00.0` as sysfs's `0000:3b:00.0`."""
    domain, _, rest = nvml_bus_id.partition(":")
    return f"{domain[-4:]}:{rest}".lower()


def numa_node_of(nvml_bus_id: str, sysfs: str = "/sys/bus/pci/devices") -> int | None:
    """NUMA node of a PCI device from sysfs; None when unknown (-1, missing file, non-NUMA machine)."""
    try:
        value = int(Path(sysfs, pci_sysfs_id(nvml_bus_id), "numa_node").read_text().strip())
    except (OSError, ValueError):
        return None
    return value if value >= 0 else None


class NvmlInventory:
    """GPUs from NVML; health by probing plus XID events."""

    def __init__(
        self,
        backend: NvmlBackend | Any = None,
        numa_of: Callable[[str], int | None] = numa_node_of,
    ) -> None:
        self.backend = backend if backend is not None else NvmlBackend()
        self.backend.init()
        self._lock = threading.Lock()
        self._gpus: list[GPUInfo] = []
        self._probe_errors: dict[str, str] = {}
        self._xid_errors: dict[str, str] = {}
        for index in range(self.backend.device_count()):
            try:
                device = self.backend.device(index)
            except Exception as exc:  # NVML errors: the GPU is there but broken
                log.error("GPU %d: NVML cannot describe it (%s); not advertised", index, exc)
                continue
            if device.mig_enabled:
                log.warning("GPU %d (%s) has MIG enabled; gpupool does not schedule MIG instances: not advertised",
                            index, device.uuid)  # fmt: skip
                continue
            self._gpus.append(
                GPUInfo(
                    uuid=device.uuid,
                    index=device.index,
                    model=device.name,
                    memory_mib=device.memory_total_mib,
                    numa=numa_of(device.pci_bus_id),
                )
            )
        self.backend.watch_xids([g.index for g in self._gpus])

    def reasons(self) -> dict[str, str]:
        """uuid -> why the GPU is unhealthy."""
        with self._lock:
            return {**self._probe_errors, **self._xid_errors}

    def gpus(self) -> list[GPUInfo]:
        with self._lock:
            bad = {**self._probe_errors, **self._xid_errors}
            return [replace(g, healthy=g.uuid not in bad) for g in self._gpus]

    def refresh(self) -> bool:
        before = self.gpus()
        probe_errors: dict[str, str] = {}
        for gpu in before:
            error = self.backend.probe(gpu.index)
            if error is not None:
                probe_errors[gpu.uuid] = error
        xids: dict[str, str] = {}
        while (event := self.backend.next_xid(0)) is not None:
            uuid, xid = event
            if xid in APPLICATION_XIDS:
                log.info("GPU %s: application XID %d (GPU stays healthy)", uuid, xid)
                continue
            xids[uuid] = f"critical XID {xid}"
        with self._lock:
            self._probe_errors = probe_errors
            self._xid_errors.update(xids)
        after = self.gpus()
        for old, new in zip(before, after, strict=True):
            if old.healthy != new.healthy:
                log.warning(
                    "GPU %s (index %d) is now %s%s",
                    new.uuid,
                    new.index,
                    "Healthy" if new.healthy else "Unhealthy",
                    "" if new.healthy else f": {self.reasons().get(new.uuid)}",
                )
        return before != after

    def close(self) -> None:
        self.backend.shutdown()


# --- fake inventory --------------------------------------------------------------------------------------


def fake_uuid(node: str, index: int) -> str:
    return f"GPU-{uuidlib.uuid5(_FAKE_UUID_NS, f'{node}/{index}')}"


def _gpu_entries(node: str, entries: Any, where: str) -> list[GPUInfo]:
    if not isinstance(entries, list):
        raise InventoryError(f"{where}: expected a list of GPUs")
    out: list[GPUInfo] = []
    for i, entry in enumerate(entries):
        at = f"{where}[{i}]"
        if not isinstance(entry, Mapping):
            raise InventoryError(f"{at}: expected a mapping with model and memoryMiB")
        unknown = set(entry) - {"uuid", "index", "model", "memoryMiB", "numa", "health", "count"}
        if unknown:
            raise InventoryError(f"{at}: unknown keys {sorted(unknown)}")
        try:
            model = str(entry["model"])
            memory = int(entry["memoryMiB"])
            count = int(entry.get("count", 1))
            numa = int(entry["numa"]) if entry.get("numa") is not None else None
        except KeyError as exc:
            raise InventoryError(f"{at}: missing {exc.args[0]}") from None
        except (TypeError, ValueError) as exc:
            raise InventoryError(f"{at}: {exc}") from None
        health = str(entry.get("health", "Healthy"))
        if health not in ("Healthy", "Unhealthy"):
            raise InventoryError(f"{at}: health must be Healthy or Unhealthy, not {health!r}")
        if memory < 1 or count < 1:
            raise InventoryError(f"{at}: memoryMiB and count must be >= 1")
        if count > 1 and ("uuid" in entry or "index" in entry):
            raise InventoryError(f"{at}: with count > 1, leave uuid and index out (they are generated)")
        for _ in range(count):
            index = int(entry.get("index", len(out)))
            out.append(
                GPUInfo(
                    uuid=str(entry.get("uuid") or fake_uuid(node, index)),
                    index=index,
                    model=model,
                    memory_mib=memory,
                    numa=numa,
                    healthy=health == "Healthy",
                )
            )
    indexes = [g.index for g in out]
    uuids = [g.uuid for g in out]
    if len(set(indexes)) != len(indexes) or len(set(uuids)) != len(uuids):
        raise InventoryError(f"{where}: GPU indexes and uuids must be unique")
    return sorted(out, key=lambda g: g.index)


def load_fake_inventory(path: str | os.PathLike[str], default_node: str = "") -> dict[str, list[GPUInfo]]:
    """node -> GPUs from a fake-inventory file; a plain list belongs to `default_node`."""
    try:
        # libyaml's loader when present: the pure-Python one took 36 s CPU for 5,000 nodes x 8 GPUs (docs/e2e.md)
        data = yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise InventoryError(f"fake inventory {path}: {exc}") from None
    if isinstance(data, list):
        if not default_node:
            raise InventoryError(f"fake inventory {path}: a plain list needs the node name (use node -> list)")
        return {default_node: _gpu_entries(default_node, data, str(path))}
    if isinstance(data, Mapping):
        return {str(node): _gpu_entries(str(node), gpus, f"{path}[{node}]") for node, gpus in data.items()}
    raise InventoryError(f"fake inventory {path}: expected a list of GPUs or a map node -> list of GPUs")


class FakeInventory:
    """GPUs of one node from the fake-inventory file, re-read when the file changes."""

    def __init__(self, path: str | os.PathLike[str], node: str) -> None:
        self.path = Path(path)
        self.node = node
        self._stamp: tuple[float, int] | None = None
        self._gpus: list[GPUInfo] = []
        self._load()

    def _load(self) -> None:
        stat = self.path.stat()
        nodes = load_fake_inventory(self.path, self.node)
        if self.node not in nodes:
            raise InventoryError(f"fake inventory {self.path} has no entry for node {self.node}")
        self._gpus = nodes[self.node]
        self._stamp = (stat.st_mtime, stat.st_size)

    def gpus(self) -> list[GPUInfo]:
        return list(self._gpus)

    def refresh(self) -> bool:
        try:
            stat = self.path.stat()
            if (stat.st_mtime, stat.st_size) == self._stamp:
                return False
            before = self._gpus
            self._load()
        except (OSError, InventoryError) as exc:
            log.error("fake inventory unreadable, keeping the last good one: %s", exc)
            return False
        known = {g.uuid for g in before}
        if {g.uuid for g in self._gpus} != known:
            log.warning("fake inventory %s: GPUs changed; only health changes apply live", self.path)
        return self._gpus != before

    def close(self) -> None:
        pass


class MultiNodeFakeInventory:
    """Every node of a fake-inventory map (for --multi-node publishing)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.nodes = load_fake_inventory(self.path)
        self._stamp = self._stat()

    def _stat(self) -> tuple[float, int]:
        stat = self.path.stat()
        return stat.st_mtime, stat.st_size

    def refresh(self) -> bool:
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            nodes = load_fake_inventory(self.path)
        except (OSError, InventoryError) as exc:
            log.error("fake inventory unreadable, keeping the last good one: %s", exc)
            return False
        changed = nodes != self.nodes
        self.nodes, self._stamp = nodes, stamp
        return changed
