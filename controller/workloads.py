"""Pods' owners translated into pod groups (`gpupool.groups.Owner`): which object owns a pod, where its API
lives, and the field that says how many pods it runs together. Translation only; the rules are
`gpupool.groups` (docs/workloads.md).

The top owner is found from the labels the workload controllers put on their pods (a JobSet's, a
LeaderWorkerSet's), else from the pod's controller ownerReference. A LeaderWorkerSet group is sized by
the pod's own `leaderworkerset.sigs.k8s.io/size` annotation (no read); the others are read once and
cached (`OwnerCache`, refreshed after `ttl` seconds, so a scaled Job or StatefulSet is seen).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpupool import groups, resources
from gpupool.errors import InvalidRequest
from gpupool.groups import GroupSpec, Owner

JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
LWS_NAME = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP = "leaderworkerset.sigs.k8s.io/group-index"
LWS_SIZE = "leaderworkerset.sigs.k8s.io/size"

#: kind -> (API path prefix, plural) of the owners gpupool reads
APIS: Mapping[str, tuple[str, str]] = {
    "Job": ("/apis/batch/v1", "jobs"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "ReplicaSet": ("/apis/apps/v1", "replicasets"),
    "JobSet": ("/apis/jobset.x-k8s.io/v1alpha2", "jobsets"),
    "PyTorchJob": ("/apis/kubeflow.org/v1", "pytorchjobs"),
    "TrainJob": ("/apis/trainer.kubeflow.org/v1alpha1", "trainjobs"),
}


@dataclass(frozen=True, slots=True)
class Ref:
    """The owner to read for a pod: namespace, kind, name."""

    namespace: str
    kind: str
    name: str

    def path(self) -> str:
        prefix, plural = APIS[self.kind]
        return f"{prefix}/namespaces/{self.namespace}/{plural}/{self.name}"


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _job_pods(spec: Mapping[str, Any]) -> int:
    """Pods a Job runs at once: spec.parallelism (default 1), capped by spec.completions when set."""
    parallelism = _int(spec.get("parallelism"), 1)
    completions = spec.get("completions")
    return min(parallelism, _int(completions, parallelism)) if completions is not None else parallelism


def size_of(kind: str, obj: Mapping[str, Any]) -> tuple[int | None, str]:
    """(pods it runs together, the field that says so) of an owner object."""
    spec = obj.get("spec") or {}
    if kind == "Job":
        return _job_pods(spec), "spec.parallelism"
    if kind == "StatefulSet" and spec.get("podManagementPolicy") != "Parallel":
        return None, "spec.podManagementPolicy"  # OrderedReady creates pod n+1 once n runs: no gang possible
    if kind in ("StatefulSet", "ReplicaSet"):
        return _int(spec.get("replicas"), 1), "spec.replicas"
    if kind == "JobSet":
        total = 0
        for rj in spec.get("replicatedJobs") or []:
            job = ((rj.get("template") or {}).get("spec")) or {}
            total += _int(rj.get("replicas"), 1) * _job_pods(job)
        return total, "spec.replicatedJobs[*].replicas"
    if kind == "PyTorchJob":
        replicas = spec.get("pytorchReplicaSpecs") or {}
        total = sum(_int((r or {}).get("replicas"), 1) for r in replicas.values())
        return total, "spec.pytorchReplicaSpecs[*].replicas"
    if kind == "TrainJob":
        return _int((spec.get("trainer") or {}).get("numNodes"), 1), "spec.trainer.numNodes"
    return None, ""


def owner_of(pod: Mapping[str, Any]) -> Owner | Ref | None:
    """What sizes the pod's group: an `Owner` read off the pod itself (a LeaderWorkerSet group), a `Ref`
    to read, or None (no owner, or one whose pods stay individual and that need not be read)."""
    meta = pod.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if labels.get(LWS_NAME) and labels.get(LWS_GROUP) is not None:
        size = str(annotations.get(LWS_SIZE) or "")
        name = f"{labels[LWS_NAME]}-{labels[LWS_GROUP]}"
        return Owner("LeaderWorkerSet", name, int(size) if size.isdigit() else None, LWS_SIZE)
    if labels.get(JOBSET_NAME):
        return Ref(namespace, "JobSet", str(labels[JOBSET_NAME]))
    for ref in meta.get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") and ref.get("kind") in APIS and ref.get("name"):
            kind = str(ref["kind"])
            if kind == "ReplicaSet" and resources.POD_GROUP not in annotations:
                return None  # a Deployment's pods stay individual; read only to size an annotated group
            return Ref(namespace, kind, str(ref["name"]))
    return None


def group_of(pod: Mapping[str, Any], owner: Owner | None) -> GroupSpec | None:
    """The pod's group from its annotations and its (read) owner; `InvalidRequest` for bad annotations."""
    meta = pod.get("metadata") or {}
    return groups.group_of(str(meta.get("namespace") or ""), meta.get("annotations") or {}, owner)


def resolved_group(
    pod: Mapping[str, Any], found: Owner | Ref | None, read: tuple[Owner | None, str | None] | None
) -> GroupSpec | None:
    """The pod's group given `found` (`owner_of(pod)`) and, when that is a `Ref`, the owner as read (`OwnerCache`:
    (owner, error); None: not read yet, the group waits for it). An owner that could not be read gives the group
    that error (it waits, saying why); None for bad annotations (`parse_pod` refuses the pod first)."""
    owner = found if isinstance(found, Owner) else None
    if isinstance(found, Ref):
        if read is None:
            return groups.unresolved(found.namespace, found.kind, found.name)
        owner, error = read
        if error is not None:
            return groups.unreadable(found.namespace, found.kind, found.name, error)
    try:
        return group_of(pod, owner)
    except InvalidRequest:
        return None


class OwnerCache:
    """Owners read from the API server: `Ref` -> (`Owner` or why it could not be read, when read)."""

    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._known: dict[Ref, tuple[Owner | None, str | None, float]] = {}

    def get(self, ref: Ref, now: float) -> tuple[Owner | None, str | None] | None:
        """(owner or None when it is gone, error) while fresh; None when it must be read (again)."""
        hit = self._known.get(ref)
        if hit is None or now - hit[2] > (self.ttl if hit[1] is None else min(self.ttl, 5.0)):
            return None  # a failed read is tried again sooner
        return hit[0], hit[1]

    def known(self, ref: Ref) -> tuple[Owner | None, str | None] | None:
        """The last answer, however old (None: never read)."""
        hit = self._known.get(ref)
        return None if hit is None else (hit[0], hit[1])

    def put(self, ref: Ref, obj: Mapping[str, Any] | None, error: str | None, now: float) -> None:
        if obj is None:
            self._known[ref] = (None, error, now)
            return
        size, field = size_of(ref.kind, obj)
        self._known[ref] = (Owner(ref.kind, ref.name, size, field), None, now)
