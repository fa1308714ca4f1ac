"""The pooling runtime's regions, Python side: the control region the agent writes, the accounting region it reads.

Byte layouts (little-endian, fixed offsets) are those of `runtime/src/regions.h`; docs/runtime.md explains them.
The agent writes `control` atomically (temporary file + rename) so that the runtime never reads half a file; the
runtime checks magic, size and an FNV-1a checksum and keeps the limits in effect when any of them is wrong.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: inside the container (pool backend): the container's regions, and one directory per local GPU (by CUDA ordinal)
CONTAINER_RUNTIME_DIR = "/run/gpupool"
CONTAINER_GPU_DIR = "/run/gpupool-gpus"
LIBRARY_NAME = "libgpupool.so"
PRELOAD_FILE = "ld.so.preload"

CONTROL_FILE = "control"
OWNER_FILE = "owner.json"
ACCOUNTING_FILE = "accounting"
SHARES_FILE = "shares"

CONTROL_MAGIC = 0x4C435047  # "GPCL"
CONTROL_VERSION = 1
ACCOUNTING_MAGIC = 0x43415047  # "GPAC"
ACCOUNTING_VERSION = 1
MAX_DEVICES = 16
MAX_PROCESSES = 128
MODES = {"ceiling": 0, "share": 1}

_CONTROL_HEAD = struct.Struct("<IHHQII")  # magic, version, ndev, generation, mode, reserved
_CONTROL_DEV = struct.Struct("<QII")  # memory_mib, compute, reserved
_ACC_HEAD = struct.Struct("<IIIIQI")  # magic, version, ndev, mode, generation, nprocs
_ACC_DEV = struct.Struct("<QIIQQqQQQ")  # see struct gp_acc_dev
_ACC_DEV_OFFSET = 128
_ACC_PROC = struct.Struct("<iIQ")  # pid, reserved, start_time (then used[16])
_ACC_PROC_SIZE = 16 + 8 * MAX_DEVICES
_ACC_PROC_OFFSET = _ACC_DEV_OFFSET + _ACC_DEV.size * MAX_DEVICES
ACCOUNTING_SIZE = _ACC_PROC_OFFSET + _ACC_PROC_SIZE * MAX_PROCESSES


def container_dir(state_dir: str, pod_uid: str, container: str) -> str:
    """Host directory of one container's regions: `<state>/containers/<pod uid>/<container key, ':' as '-'>`."""
    return f"{state_dir.rstrip('/')}/containers/{pod_uid}/{container.replace(':', '-')}"


def gpu_dir(state_dir: str, uuid: str) -> str:
    """Host directory of one GPU's sharing region: `<state>/gpus/<uuid>`."""
    return f"{state_dir.rstrip('/')}/gpus/{uuid}"


@dataclass(frozen=True, slots=True)
class DeviceLimit:
    """One device's slice as the runtime enforces it (CUDA ordinal = position in the list)."""

    memory_mib: int
    compute: int


def fnv1a64(data: bytes) -> int:
    h = 14695981039346656037
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def pack_control(limits: Sequence[DeviceLimit], mode: str, generation: int) -> bytes:
    """The control region's bytes; raises ValueError naming the bad field."""
    if not 1 <= len(limits) <= MAX_DEVICES:
        raise ValueError(f"control region: {len(limits)} devices, expected 1..{MAX_DEVICES}")
    if mode not in MODES:
        raise ValueError(f"control region: compute mode {mode!r}, expected one of {sorted(MODES)}")
    body = bytearray(_CONTROL_HEAD.pack(CONTROL_MAGIC, CONTROL_VERSION, len(limits), generation, MODES[mode], 0))
    for i, lim in enumerate(limits):
        if not 1 <= lim.compute <= 100 or lim.memory_mib < 0:
            raise ValueError(f"control region: device {i}: compute {lim.compute} (1..100), memory {lim.memory_mib}")
        body += _CONTROL_DEV.pack(lim.memory_mib, lim.compute, 0)
    return bytes(body) + struct.pack("<Q", fnv1a64(bytes(body)))


def write_control(directory: str | os.PathLike[str], limits: Sequence[DeviceLimit], mode: str, generation: int) -> None:
    """Write `<directory>/control` atomically (readable by the container's processes, whatever their uid)."""
    data = pack_control(limits, mode, generation)
    final = Path(directory) / CONTROL_FILE
    tmp = final.with_name(f".{CONTROL_FILE}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fchmod(f.fileno(), 0o644)
    os.replace(tmp, final)


def read_control_generation(directory: str | os.PathLike[str]) -> int:
    """The generation of `<directory>/control`, 0 when it is missing or not a valid control region."""
    try:
        data = (Path(directory) / CONTROL_FILE).read_bytes()
    except OSError:
        return 0
    if len(data) < _CONTROL_HEAD.size + 8 or struct.unpack("<Q", data[-8:])[0] != fnv1a64(data[:-8]):
        return 0
    magic, version, _, generation, _, _ = _CONTROL_HEAD.unpack_from(data, 0)
    return int(generation) if magic == CONTROL_MAGIC and version == CONTROL_VERSION else 0


def read_control(directory: str | os.PathLike[str]) -> tuple[list[DeviceLimit], str, int] | None:
    """(limits, mode, generation) of `<directory>/control`; None when it is missing or not a valid control region."""
    try:
        data = (Path(directory) / CONTROL_FILE).read_bytes()
    except OSError:
        return None
    if len(data) < _CONTROL_HEAD.size + 8 or struct.unpack("<Q", data[-8:])[0] != fnv1a64(data[:-8]):
        return None
    magic, version, ndev, generation, mode, _ = _CONTROL_HEAD.unpack_from(data, 0)
    size = _CONTROL_HEAD.size + ndev * _CONTROL_DEV.size + 8
    if magic != CONTROL_MAGIC or version != CONTROL_VERSION or len(data) != size:
        return None
    limits = []
    for i in range(ndev):
        memory, compute, _ = _CONTROL_DEV.unpack_from(data, _CONTROL_HEAD.size + i * _CONTROL_DEV.size)
        limits.append(DeviceLimit(int(memory), int(compute)))
    mode_name = next((k for k, v in MODES.items() if v == mode), "ceiling")
    return limits, mode_name, int(generation)


@dataclass(frozen=True, slots=True)
class DeviceUsage:
    memory_limit_bytes: int
    compute: int
    allowance_bp: int  # what the throttle grants now, basis points of the device
    memory_used_bytes: int
    busy_ns: int  # device time the container's kernels consumed, cumulative


@dataclass(frozen=True, slots=True)
class Accounting:
    generation: int  # control generation in effect (0: the Allocate env)
    mode: str
    processes: int
    devices: tuple[DeviceUsage, ...]
    pids: tuple[int, ...]


def read_accounting(path: str | os.PathLike[str]) -> Accounting | None:
    """The accounting region at `path`, or None when it is missing or not a valid region."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if len(data) != ACCOUNTING_SIZE:
        return None
    magic, version, ndev, mode, generation, nprocs = _ACC_HEAD.unpack_from(data, 0)
    if magic != ACCOUNTING_MAGIC or version != ACCOUNTING_VERSION or ndev > MAX_DEVICES:
        return None
    devices = []
    for i in range(ndev):
        limit, compute, allowance, used, busy, *_ = _ACC_DEV.unpack_from(data, _ACC_DEV_OFFSET + i * _ACC_DEV.size)
        devices.append(DeviceUsage(limit, compute, allowance, used, busy))
    pids = []
    for i in range(MAX_PROCESSES):
        pid, _, _ = _ACC_PROC.unpack_from(data, _ACC_PROC_OFFSET + i * _ACC_PROC_SIZE)
        if pid:
            pids.append(pid)
    mode_name = next((k for k, v in MODES.items() if v == mode), str(mode))
    return Accounting(generation, mode_name, nprocs, tuple(devices), tuple(pids))
