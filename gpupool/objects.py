"""Kubernetes objects (as API JSON dicts) translated into pool-model values, and back.

The one place that reads GPUNode objects and the assignment annotation of pods, so
the extender, the controller, the node agent and the CLI rebuild the same ledger
from the same objects. No I/O here: callers list and watch, then call these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gpupool import assignment as assignment_format
from gpupool import resources
from gpupool.errors import AssignmentError, GpupoolError
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.ledger import Holding, HoldingKind, Ledger
from gpupool.request import QoS

GROUP = "gpupool.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
GPUNODE_PLURAL = "gpunodes"
GPUQUEUE_PLURAL = "gpuqueues"

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

TERMINAL_PHASES = ("Succeeded", "Failed")


def node_info_from_gpunode(obj: Mapping[str, Any]) -> NodeInfo:
    """A GPUNode (DESIGN.md §4.1) as a `NodeInfo`; raises `GpupoolError` naming the bad field."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    if not name or not isinstance(name, str):
        raise GpupoolError("GPUNode without metadata.name")
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    if not isinstance(status, dict) or not isinstance(spec, dict):
        raise GpupoolError(f"GPUNode {name}: status and spec must be objects")
    items = status.get("gpus") or []
    disabled = spec.get("disabledGPUs") or []
    if not isinstance(items, list):
        raise GpupoolError(f"GPUNode {name} status.gpus: must be a list")
    if not isinstance(disabled, list) or not all(isinstance(u, str) for u in disabled):
        raise GpupoolError(f"GPUNode {name} spec.disabledGPUs: must be a list of GPU UUIDs")
    gpus: list[GPUInfo] = []
    for i, g in enumerate(items):
        where = f"GPUNode {name} status.gpus[{i}]"
        if not isinstance(g, dict):
            raise GpupoolError(f"{where}: must be an object")
        try:
            info = GPUInfo(
                uuid=_text(g["uuid"]),
                index=_whole(g["index"]),
                model=_text(g.get("model") or ""),
                memory_mib=_whole(g["memoryMiB"]),
                numa=_whole(g["numa"]) if g.get("numa") is not None else None,
                healthy=(g.get("health") or HEALTHY) == HEALTHY,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GpupoolError(f"{where}: missing or invalid field ({exc})") from None
        if not info.uuid or info.index < 0 or info.memory_mib < 1:
            raise GpupoolError(f"{where}: needs a uuid, an index >= 0 and memoryMiB >= 1")
        gpus.append(info)
    if len({g.uuid for g in gpus}) < len(gpus) or len({g.index for g in gpus}) < len(gpus):
        raise GpupoolError(f"GPUNode {name} status.gpus: a uuid or an index appears twice")
    return NodeInfo(name=name, gpus=tuple(gpus), disabled=frozenset(disabled))


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not a whole number")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def gpunode_status_gpus(gpus: Iterable[GPUInfo]) -> list[dict[str, Any]]:
    """The `status.gpus` list a node agent publishes for its inventory."""
    out = []
    for g in sorted(gpus, key=lambda g: g.index):
        item: dict[str, Any] = {
            "uuid": g.uuid,
            "index": g.index,
            "model": g.model,
            "memoryMiB": g.memory_mib,
            "health": HEALTHY if g.healthy else UNHEALTHY,
        }
        if g.numa is not None:
            item["numa"] = g.numa
        out.append(item)
    return out


def pod_uid(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("uid") or "")


def pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def pod_node_name(pod: Mapping[str, Any]) -> str:
    """The node the pod is bound to ('' while unbound)."""
    return str((pod.get("spec") or {}).get("nodeName") or "")


def pod_is_terminal(pod: Mapping[str, Any]) -> bool:
    """Finished or being deleted past its grace: its slices are free again."""
    return (pod.get("status") or {}).get("phase") in TERMINAL_PHASES


def pod_assignment_text(pod: Mapping[str, Any]) -> str | None:
    return ((pod.get("metadata") or {}).get("annotations") or {}).get(resources.ASSIGNMENT)


def pod_qos(pod: Mapping[str, Any]) -> QoS:
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(resources.QOS)
    return QoS.BEST_EFFORT if value == QoS.BEST_EFFORT.value else QoS.GUARANTEED


def holding_from_pod(pod: Mapping[str, Any], key: bytes) -> Holding | None:
    """The slices a live pod holds according to its signed assignment; None if it holds none.

    Raises `AssignmentError` when the annotation is present but unreadable, forged, or
    belongs to another pod: the caller must treat that loudly (not ready), never as free.
    """
    text = pod_assignment_text(pod)
    if text is None or pod_is_terminal(pod):
        return None
    record = assignment_format.verify(text, key)
    uid = pod_uid(pod)
    if record.pod != uid:
        raise AssignmentError(f"pod {pod_key(pod)} carries the assignment of pod {record.pod}")
    return Holding(pod=uid, node=record.node, slices=record.slices, kind=HoldingKind.ASSIGNED, qos=pod_qos(pod))


@dataclass(frozen=True, slots=True)
class RebuildReport:
    """What a rebuild found: nodes, holdings, and the pods it could not account for (and why)."""

    nodes: int
    holdings: int
    problems: dict[str, str]

    @property
    def clean(self) -> bool:
        return not self.problems


def rebuild(
    ledger: Ledger, gpunodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]], key: bytes
) -> RebuildReport:
    """Load GPUNodes and assigned pods into an empty ledger.

    Every problem (bad GPUNode, forged or unreadable assignment, an assignment that
    does not fit) is reported per object; the caller stays not-ready while any remain.
    """
    problems: dict[str, str] = {}
    nodes = 0
    for obj in gpunodes:
        try:
            ledger.upsert_node(node_info_from_gpunode(obj))
            nodes += 1
        except (GpupoolError, ValueError) as exc:
            problems[f"gpunode/{(obj.get('metadata') or {}).get('name')}"] = str(exc)
    holdings = 0
    for pod in sorted(pods, key=lambda p: pod_key(p)):
        try:
            holding = holding_from_pod(pod, key)
            if holding is None:
                continue
            ledger.hold(holding)
            holdings += 1
        except GpupoolError as exc:
            problems[f"pod/{pod_key(pod)}"] = str(exc)
    return RebuildReport(nodes, holdings, problems)
