"""A cluster snapshot (`gpupool snapshot > cluster.json`): written by `capture`, read by `parse`, nowhere else.

The file keeps the Kubernetes objects gpupool reads (namespaces, Nodes, GPUNodes, GPUQueues and the pods
that ask for gpupool resources), trimmed to the fields gpupool reads, so that `parse` translates them with
the same functions the controller uses (`gpupool.objects`, `gpupool.resources`), plus each pod's group as the
controller resolved it (`podGroups`, version 2: an owner's size needs an API read the file cannot redo). Format
and versioning: docs/timeline.md. Pure: the CLI lists the objects and reads owners (controller/cli.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpupool import groups, objects, resources, timefmt
from gpupool.errors import GpupoolError, InvalidRequest
from gpupool.groups import GroupSpec
from gpupool.inventory import NodeInfo
from gpupool.queues import PodEntry, QueueSpec

KIND = "GPUPoolSnapshot"
#: the format version this code writes; it reads `READS` (version 1 has no `podGroups`: only annotated groups)
VERSION = 2
READS = (1, 2)

_POD_META = ("name", "namespace", "uid", "labels", "annotations", "creationTimestamp")
_POD_SPEC = ("priority", "nodeSelector", "nodeName", "schedulingGates")
_CONTAINER = ("name", "resources")


class SnapshotError(ValueError):
    """The snapshot file cannot be read; the message names the field and what to change."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a snapshot holds, translated: the pool's nodes, labels, queues and gpupool pods at `taken`."""

    taken: float
    nodes: tuple[NodeInfo, ...]
    node_labels: Mapping[str, Mapping[str, str]]
    namespaces: Mapping[str, Mapping[str, str]]
    queues: tuple[QueueSpec, ...]
    #: one entry per live gpupool pod, as the controller would hold it (copy before use: entries are mutable)
    pods: tuple[PodEntry, ...]
    #: objects left out, "kind name" -> why (a bad object never hurts the rest)
    problems: Mapping[str, str] = field(default_factory=dict)


def _meta(obj: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {k: meta[k] for k in keys if meta.get(k) not in (None, {}, [])}


def _trim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    spec = pod.get("spec") or {}
    out_spec: dict[str, Any] = {k: spec[k] for k in _POD_SPEC if spec.get(k) not in (None, {}, [])}
    for group in ("containers", "initContainers"):
        if spec.get(group):
            out_spec[group] = [{k: c[k] for k in _CONTAINER if k in c} for c in spec[group]]
    status = pod.get("status") or {}
    out: dict[str, Any] = {"metadata": _meta(pod, _POD_META), "spec": out_spec}
    if status.get("phase"):
        out["status"] = {"phase": status["phase"]}
    return out


def capture(
    namespaces: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    gpunodes: Iterable[Mapping[str, Any]],
    gpuqueues: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    taken: float,
    pod_groups: Mapping[str, GroupSpec | None] | None = None,
) -> dict[str, Any]:
    """The snapshot document of the listed objects: live pods that mention gpupool resources only, each object
    trimmed to what gpupool reads, sorted by name (the same cluster gives the same file). `pod_groups`: pod
    key ("namespace/name") -> its group as the controller resolves it (annotations and owner,
    `controller.workloads`); a captured pod missing there keeps only what its annotations say."""
    def by_name(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"].get("name", "")))

    kept = [p for p in pods if resources.mentions_gpupool(p) and not objects.pod_is_terminal(p)]
    members: dict[str, tuple[GroupSpec, list[str]]] = {}
    for pod in kept:
        spec = (pod_groups or {}).get(objects.pod_key(pod))
        if spec is not None:
            members.setdefault(spec.key, (spec, []))[1].append(objects.pod_key(pod))
    return {
        "kind": KIND,
        "version": VERSION,
        "taken": timefmt.format_time(taken),
        "namespaces": by_name({"metadata": _meta(o, ("name", "labels"))} for o in namespaces),
        "nodes": by_name({"metadata": _meta(o, ("name", "labels"))} for o in nodes),
        "gpuNodes": by_name(
            {"metadata": _meta(o, ("name",)), "spec": o.get("spec") or {}, "status": o.get("status") or {}}
            for o in gpunodes
        ),
        "gpuQueues": by_name({"metadata": _meta(o, ("name",)), "spec": o.get("spec") or {}} for o in gpuqueues),
        "pods": by_name(_trim_pod(p) for p in kept),
        "podGroups": [_group_doc(spec, sorted(names)) for _, (spec, names) in sorted(members.items())],
    }


def _group_doc(spec: GroupSpec, members: list[str]) -> dict[str, Any]:
    doc: dict[str, Any] = {"key": spec.key, "minMembers": spec.min_members, "origin": spec.origin,
                           "members": members}  # fmt: skip
    if spec.capacity is not None:
        doc["capacity"] = spec.capacity
    if spec.error is not None:
        doc["error"] = spec.error
    return doc


def _count(value: Any, where: str, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= resources.MAX_MIN_MEMBERS:
        raise SnapshotError(f"{where}: {value!r} is not {what} (a whole number 1..{resources.MAX_MIN_MEMBERS})")
    return value


def _pod_groups(doc: Mapping[str, Any]) -> dict[str, GroupSpec]:
    """Pod key -> its group, from `podGroups` (version 2); a bad entry refuses the file, naming the field."""
    out: dict[str, GroupSpec] = {}
    for i, obj in enumerate(_list(doc, "podGroups")):
        where = f"podGroups[{i}]"
        key, origin, error, names = obj.get("key"), obj.get("origin", ""), obj.get("error"), obj.get("members")
        if not isinstance(key, str) or not key:
            raise SnapshotError(f"{where}.key: must be a non-empty string (namespace/kind/name)")
        if not isinstance(origin, str) or not (error is None or isinstance(error, str)):
            raise SnapshotError(f"{where}: origin and error must be strings")
        if not isinstance(names, list) or not all(isinstance(n, str) and "/" in n for n in names):
            raise SnapshotError(f"{where}.members: must be a list of pod keys (namespace/name)")
        capacity = obj.get("capacity")
        spec = GroupSpec(key, _count(obj.get("minMembers"), f"{where}.minMembers", "a member count"),
                         None if capacity is None else _count(capacity, f"{where}.capacity", "a member count"),
                         origin, error)  # fmt: skip
        for name in names:
            if name in out:
                raise SnapshotError(f"{where}.members: pod {name} is also in group {out[name].key}")
            out[name] = spec
    return out


def _list(doc: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise SnapshotError(f"field {key!r}: must be a list of objects")
    return value


def _name(obj: Mapping[str, Any], where: str) -> str:
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        raise SnapshotError(f"{where}: metadata.name must be a non-empty string")
    return name


def _labels(obj: Mapping[str, Any], where: str) -> dict[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise SnapshotError(f"{where}: metadata.labels must map strings to strings")
    return dict(labels)


def parse(doc: Any) -> Snapshot:
    """Read a snapshot document (`json.load`ed); raises `SnapshotError` naming the field for a bad file. A bad
    GPUNode, GPUQueue or pod is left out and named in `problems`, as the controller would."""
    if not isinstance(doc, dict):
        raise SnapshotError("the file must hold one JSON object (write it with `gpupool snapshot`)")
    if doc.get("kind") != KIND:
        raise SnapshotError(f"field 'kind': {doc.get('kind')!r}, expected {KIND!r} (write it with `gpupool snapshot`)")
    if doc.get("version") not in READS:
        raise SnapshotError(f"field 'version': {doc.get('version')!r} is not supported; this gpupool reads versions "
                            f"{', '.join(map(str, READS))} (take the snapshot again with this gpupool)")  # fmt: skip
    taken = timefmt.parse_time(doc.get("taken")) if isinstance(doc.get("taken"), str) else None
    if taken is None:
        raise SnapshotError(f"field 'taken': {doc.get('taken')!r} is not an RFC 3339 time (e.g. 2025-01-01T00:00:00Z)")
    problems: dict[str, str] = {}
    pod_groups = _pod_groups(doc)
    namespaces = {_name(o, f"namespaces[{i}]"): _labels(o, f"namespaces[{i}]")
                  for i, o in enumerate(_list(doc, "namespaces"))}  # fmt: skip
    node_labels = {_name(o, f"nodes[{i}]"): _labels(o, f"nodes[{i}]") for i, o in enumerate(_list(doc, "nodes"))}
    nodes: list[NodeInfo] = []
    for i, obj in enumerate(_list(doc, "gpuNodes")):
        name = _name(obj, f"gpuNodes[{i}]")
        try:
            nodes.append(objects.node_info_from_gpunode(obj))
        except GpupoolError as exc:
            problems[f"GPUNode {name}"] = str(exc)
    queues: list[QueueSpec] = []
    for i, obj in enumerate(_list(doc, "gpuQueues")):
        name = _name(obj, f"gpuQueues[{i}]")
        try:
            queues.append(objects.queue_spec_from_object(obj))
        except GpupoolError as exc:
            problems[f"GPUQueue {name}"] = str(exc)
    pods: list[PodEntry] = []
    for i, pod in enumerate(_list(doc, "pods")):
        key = f"pod {objects.pod_key(pod)}" if isinstance(pod.get("metadata"), dict) else f"pods[{i}]"
        if objects.pod_is_terminal(pod):
            continue
        try:
            request = resources.parse_pod(pod)
        except InvalidRequest as exc:
            problems[key] = str(exc)
            continue
        if not request.containers:
            continue
        try:
            assigned = objects.holding_from_pod(pod, None)  # read-only: unverified (docs/contracts.md)
        except GpupoolError as exc:
            problems[key] = f"assignment ignored: {exc}"
            assigned = None
        entry = objects.pod_entry(pod, request, assigned)
        entry.group = pod_groups.get(objects.pod_key(pod)) or _annotated_group(pod)
        pods.append(entry)
    return Snapshot(taken, tuple(nodes), node_labels, namespaces, tuple(queues), tuple(pods), problems)


def _annotated_group(pod: Mapping[str, Any]) -> GroupSpec | None:
    """The group the pod's annotations name (a version 1 file, or a pod `podGroups` does not list)."""
    meta = pod.get("metadata") or {}
    try:
        return groups.from_annotations(str(meta.get("namespace") or ""), meta.get("annotations") or {})
    except InvalidRequest:
        return None  # parse_pod refused the pod first (it reads the annotations too)
