"""Kubernetes objects (as API JSON dicts) translated into pool-model values, and back.

The one place that reads GPUNode and GPUQueue objects and a pod's gpupool fields (admission
gate, assignment, nomination, the controller's admission condition), so the extender, the controller,
the node agent and the CLI rebuild the same ledger and queues from the same objects. No I/O here:
callers list and watch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from gpupool import assignment as assignment_format
from gpupool import resources, timefmt
from gpupool.assignment import Assignment, Keys
from gpupool.errors import AssignmentError, GpupoolError
from gpupool.fairshare import DEFAULT_WEIGHT
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.ledger import Holding, HoldingKind
from gpupool.queues import LabelSelector, PodEntry, QueueSpec, Strategy, WithinQueue
from gpupool.quota import Limit
from gpupool.request import PodRequest, QoS

GROUP = "gpupool.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
GPUNODE_PLURAL = "gpunodes"
GPUQUEUE_PLURAL = "gpuqueues"

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

TERMINAL_PHASES = ("Succeeded", "Failed")


#: the `status` fields of a GPUNode that `node_info_from_gpunode` reads (its inventory, the node agent's); the rest
#: of the status (the controller's allocation summary, heartbeats, usage) is not an input of the pool
GPUNODE_INVENTORY_STATUS = ("gpus", "agentEndpoint")


def gpunode_inventory_key(obj: Mapping[str, Any]) -> tuple[Any, ...]:
    """Everything `node_info_from_gpunode` reads of a GPUNode (name, spec, the `GPUNODE_INVENTORY_STATUS` fields),
    for equality only: equal keys, equal `NodeInfo` (or the same error). A watch event that changed only the rest
    of the status (the controller's summary, a heartbeat) has the key of the event before it, so the watchers skip
    parsing it again (docs/e2e.md "GPUNode status writes")."""
    if not isinstance(obj, dict):
        return (obj,)
    meta = obj.get("metadata")
    status = obj.get("status") or {}
    inventory = tuple(status.get(k) for k in GPUNODE_INVENTORY_STATUS) if isinstance(status, dict) else status
    return (meta.get("name") if isinstance(meta, dict) else meta, obj.get("spec"), inventory)


def node_info_from_gpunode(obj: Mapping[str, Any]) -> NodeInfo:
    """A GPUNode (DESIGN.md §4.1) as a `NodeInfo`; raises `GpupoolError` naming the bad field. Reads only what
    `gpunode_inventory_key` holds."""
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
    endpoint = status.get("agentEndpoint") or ""
    if not isinstance(endpoint, str):
        raise GpupoolError(f"GPUNode {name} status.agentEndpoint: must be a string")
    return NodeInfo(name=name, gpus=tuple(gpus), disabled=frozenset(disabled), agent_endpoint=endpoint.strip())


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


def _int_field(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GpupoolError(f"{where}: must be a non-negative integer, got {value!r}")
    return value


def _limit(data: Any, where: str) -> Limit:
    if data is None:
        return Limit()
    if not isinstance(data, Mapping):
        raise GpupoolError(f"{where}: must be an object with compute and memoryMiB")
    return Limit(_int_field(data.get("compute"), f"{where}.compute"),
                 _int_field(data.get("memoryMiB"), f"{where}.memoryMiB"))  # fmt: skip


def label_selector_from_dict(data: Mapping[str, Any] | None) -> LabelSelector | None:
    """A Kubernetes label selector; absent (None) selects nothing, `{}` selects everything."""
    if data is None:
        return None
    labels = tuple(sorted((str(k), str(v)) for k, v in (data.get("matchLabels") or {}).items()))
    exprs = tuple(
        (str(e["key"]), str(e["operator"]), tuple(str(v) for v in e.get("values") or ()))
        for e in data.get("matchExpressions") or ()
    )
    return LabelSelector(labels, exprs)


#: the largest `spec.fairSharing.weight` (a sanity bound: weights are ratios)
MAX_WEIGHT = 1_000_000


def _weight(data: Any, where: str) -> Fraction:
    """`spec.fairSharing.weight`: a number > 0 (default 1), read exactly (0.5 is 1/2)."""
    if data is None:
        return DEFAULT_WEIGHT
    if not isinstance(data, Mapping):
        raise GpupoolError(f"{where}: must be an object with weight")
    value = data.get("weight")
    if value is None:
        return DEFAULT_WEIGHT
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_WEIGHT:
        raise GpupoolError(f"{where}.weight: must be a number above 0 and at most {MAX_WEIGHT}, got {value!r}")
    return Fraction(str(value))


def queue_spec_from_object(obj: Mapping[str, Any]) -> QueueSpec:
    """A GPUQueue (crds/gpuqueue.yaml) as a `QueueSpec`; raises `GpupoolError` naming the bad field."""
    name = str((obj.get("metadata") or {}).get("name") or "")
    if not name:
        raise GpupoolError("GPUQueue without metadata.name")
    spec = obj.get("spec") or {}
    where = f"GPUQueue {name} spec"
    preemption = spec.get("preemption") or {}
    try:
        strategy = Strategy(spec.get("queueingStrategy") or Strategy.BEST_EFFORT_FIFO.value)
        within = WithinQueue(preemption.get("withinQueue") or WithinQueue.LOWER_PRIORITY.value)
    except ValueError as exc:
        raise GpupoolError(f"{where}: {exc}") from None
    nominal = _limit(spec.get("nominalQuota"), f"{where}.nominalQuota")
    if nominal.compute is None:
        nominal = replace(nominal, compute=0)
    selector = spec.get("namespaceSelector")
    if selector is not None and not isinstance(selector, Mapping):
        raise GpupoolError(f"{where}.namespaceSelector: must be a label selector object ({{}} = every namespace)")
    reserve = spec.get("reserveNodes", False)
    if not isinstance(reserve, bool):
        raise GpupoolError(f"{where}.reserveNodes: must be true or false, got {reserve!r}")
    if reserve and not spec.get("nodeSelector"):
        raise GpupoolError(f"{where}.reserveNodes: reserves the nodes spec.nodeSelector matches; set a nodeSelector")
    return QueueSpec(
        name=name,
        nominal=nominal,
        borrowing_limit=_limit(spec.get("borrowingLimit"), f"{where}.borrowingLimit"),
        cohort=spec.get("cohort") or None,
        namespaces=frozenset(spec.get("namespaces") or ()),
        namespace_selector=label_selector_from_dict(selector),
        node_selector=tuple(sorted((str(k), str(v)) for k, v in (spec.get("nodeSelector") or {}).items())),
        strategy=strategy,
        within_queue=within,
        reclaim_borrowed=bool(preemption.get("reclaimBorrowed", True)),
        reserve_nodes=reserve,
        weight=_weight(spec.get("fairSharing"), f"{where}.fairSharing"),
    )


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


def pod_compute_mode(pod: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The pod's `gpupool.io/compute-mode` and, when it is set but invalid, why (the node default applies then)."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(resources.COMPUTE_MODE)
    if value is None:
        return None, None
    problem = resources.compute_mode_problem(value)
    return (None, problem) if problem is not None else (str(value), None)


def pod_gated(pod: Mapping[str, Any]) -> bool:
    """Does the pod still carry gpupool's admission scheduling gate?"""
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    return any(isinstance(g, Mapping) and g.get("name") == resources.ADMISSION_GATE for g in gates)


#: the pod fields that ask kube-scheduler's scoring for a preference of the pod's own
_PREFERRED = ("nodeAffinity", "podAffinity", "podAntiAffinity")


def pod_scoring_preference(pod: Mapping[str, Any]) -> str | None:
    """The first field of `pod` that asks kube-scheduler's scoring to weigh nodes (a preferred node or pod
    (anti-)affinity term, a `ScheduleAnyway` topology spread constraint), or None: the extender's filter may then
    answer with its one best node (docs/contracts.md "filter answer")."""
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        return None
    affinity = spec.get("affinity")
    if isinstance(affinity, Mapping):
        for kind in _PREFERRED:
            terms = affinity.get(kind)
            if isinstance(terms, Mapping) and terms.get("preferredDuringSchedulingIgnoredDuringExecution"):
                return f"spec.affinity.{kind}.preferredDuringSchedulingIgnoredDuringExecution"
    constraints = spec.get("topologySpreadConstraints")
    for i, c in enumerate(constraints if isinstance(constraints, list) else ()):
        if isinstance(c, Mapping) and c.get("whenUnsatisfiable") == "ScheduleAnyway":
            return f"spec.topologySpreadConstraints[{i}]"
    return None


def pod_assignment(
    pod: Mapping[str, Any], key: Keys | None, verified: MutableMapping[str, Assignment] | None = None
) -> Assignment | None:
    """The pod's assignment record; None when it carries none.

    With a `key` (or keys, `gpupool.assignment.Keys`) the signature is checked; `key=None` reads
    it unverified (read-only tools without the signing Secret). Either way the record must name this pod. Raises
    `AssignmentError` saying what is wrong: unreadable, unsigned, forged, or another pod's. `verified`: texts
    already verified with `key` and their records (the caller's, emptied when its keys change): a pod's watch
    events repeat one annotation, and each check is an HMAC and a parse.
    """
    text = pod_assignment_text(pod)
    if text is None:
        return None
    record = verified.get(text) if verified is not None else None
    if record is None:
        record = assignment_format.parse(text) if key is None else assignment_format.verify(text, key)
        if verified is not None and key is not None:
            verified[text] = record
    if record.pod != pod_uid(pod):
        raise AssignmentError(f"pod {pod_key(pod)} carries the assignment of pod {record.pod}")
    return record


def holding_from_pod(
    pod: Mapping[str, Any], key: Keys | None, verified: MutableMapping[str, Assignment] | None = None
) -> Holding | None:
    """The slices a live pod holds according to its assignment (`pod_assignment`); None if it holds none.

    Raises `AssignmentError` when the annotation is present but unreadable, forged, or
    belongs to another pod: the caller must treat that loudly (not ready), never as free.
    """
    if pod_is_terminal(pod):
        return None
    record = pod_assignment(pod, key, verified)
    if record is None:
        return None
    return Holding(pod=record.pod, node=record.node, slices=record.slices, kind=HoldingKind.ASSIGNED, qos=pod_qos(pod))


def pod_entry(pod: Mapping[str, Any], request: PodRequest, assigned: Holding | None) -> PodEntry:
    """The queue manager's record of a pod (built here for the controller and for `gpupool simulate --snapshot`)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    return PodEntry(
        request=request,
        created=timefmt.parse_time(meta.get("creationTimestamp")) or 0.0,
        gated=pod_gated(pod),
        node_selector=dict(spec.get("nodeSelector") or {}),
        assigned=assigned,
    )


def nomination_annotation(node: str, expires: float) -> str:
    """The `gpupool.io/nominated` value: capacity on `node` is held for the pod until `expires`."""
    return json.dumps({"node": node, "expires": timefmt.format_time(expires)}, separators=(",", ":"))


def parse_nomination(text: str) -> tuple[str, float]:
    """(node, expires) of a `gpupool.io/nominated` value; `GpupoolError` naming the bad field."""
    field = f"metadata.annotations[{resources.NOMINATED}]"
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise GpupoolError(f"{field}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise GpupoolError(f'{field}: expected {{"node":"<node>","expires":"<RFC3339>"}}')
    node, expires = data.get("node"), timefmt.parse_time(data.get("expires"))
    if not isinstance(node, str) or not node:
        raise GpupoolError(f"{field}.node: expected a node name, got {data.get('node')!r}")
    if expires is None:
        raise GpupoolError(f"{field}.expires: expected an RFC 3339 time, got {data.get('expires')!r}")
    return node, expires


#: the pod condition where the controller publishes its admission decision (docs/contracts.md)
ADMISSION_CONDITION = "gpupool.io/Admission"
ADMITTED_REASON = "Admitted"
WAITING_REASON = "Waiting"
NOMINATED_REASON = "Nominated"


@dataclass(frozen=True, slots=True)
class AdmissionDecision:
    """The controller's last decision on a pod, as published in its `gpupool.io/Admission` condition."""

    admitted: bool
    reason: str
    message: str
    since: float | None


def admission_condition(admitted: bool, reason: str, message: str, now: float) -> dict[str, Any]:
    """The `gpupool.io/Admission` pod condition: True once the gate is removed, else False with why it waits."""
    return {
        "type": ADMISSION_CONDITION,
        "status": "True" if admitted else "False",
        "reason": reason,
        "message": message[:4096],
        "lastTransitionTime": timefmt.format_time(now),
    }


def pod_admission_decision(pod: Mapping[str, Any]) -> AdmissionDecision | None:
    """The decision the controller published on the pod (`admission_condition`); None before the first."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == ADMISSION_CONDITION:
            return AdmissionDecision(
                admitted=cond.get("status") == "True",
                reason=str(cond.get("reason") or ""),
                message=str(cond.get("message") or ""),
                since=timefmt.parse_time(cond.get("lastTransitionTime")),
            )
    return None
