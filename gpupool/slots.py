"""Slot ids: the device ids the node agent advertises to the kubelet (DESIGN.md §6).

Each physical GPU has `slots_per_gpu` slots `gpu<index>-<k>`, and each node has
`remote_slots` slots `remote-<k>` for slices served by GPUs of other nodes. A slot
is held by at most one slice, so the slot ids of a pod identify it in `Allocate`.
"""

from __future__ import annotations

import re

DEFAULT_SLOTS_PER_GPU = 32
DEFAULT_REMOTE_SLOTS = 16

_LOCAL = re.compile(r"^gpu(\d+)-(\d+)$")
_REMOTE = re.compile(r"^remote-(\d+)$")


def local_slot(gpu_index: int, k: int) -> str:
    return f"gpu{gpu_index}-{k}"


def remote_slot(k: int) -> str:
    return f"remote-{k}"


def parse_slot(slot: str) -> tuple[int | None, int]:
    """(GPU index, k) of a local slot, or (None, k) of a remote one; ValueError otherwise."""
    match = _LOCAL.match(slot)
    if match:
        return int(match.group(1)), int(match.group(2))
    match = _REMOTE.match(slot)
    if match:
        return None, int(match.group(1))
    raise ValueError(f"{slot!r} is not a gpupool slot id (gpu<index>-<k> or remote-<k>)")


def slot_problem(slot: str, gpu_index: int | None, *, slots_per_gpu: int, remote_slots: int) -> str | None:
    """Why `slot` cannot carry a slice of the pod's node's GPU `gpu_index`, or, with `gpu_index` None,
    a slice served by another node's GPU; None when it can. The ledger and the node agent both ask."""
    try:
        index, k = parse_slot(slot)
    except ValueError as exc:
        return str(exc)
    if gpu_index is None:
        if index is not None or k >= remote_slots:
            return f"a slice served by another node needs a slot remote-<k> with k < {remote_slots}, not {slot}"
    elif index != gpu_index or k >= slots_per_gpu:
        return f"slot {slot} does not belong to GPU {gpu_index} (its slots are gpu{gpu_index}-<k>, k < {slots_per_gpu})"
    return None


def all_slots(gpu_indexes: list[int], slots_per_gpu: int, remote_slots: int) -> list[str]:
    """Every slot id a node advertises, local ones first in GPU order."""
    out = [local_slot(i, k) for i in gpu_indexes for k in range(slots_per_gpu)]
    out.extend(remote_slot(k) for k in range(remote_slots))
    return out
