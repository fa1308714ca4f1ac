"""Pods bound to this node that carry a `gpupool.io/assignment`, and the matching of kubelet requests to them.

No node lock (DESIGN.md §6, anchors.md §1.5): the kubelet's AllocateRequest carries only device ids, and the
extender chose per-pod slot ids at bind, so the slot ids identify the pod and container.

Container keys (``"<c>"``, ``"init:<c>"``) and the ``gpupool.io/allocated`` record (a JSON list of the keys the
node agent served, written on the pod after each Allocate) have their home in `gpupool.identity`. The record
tells the extender that the kubelet took the pod's devices; for the node agent the kubelet's own allocation
is what keeps a slot from being offered twice, and a served container can be served again (kubelet restart).

Which pod the kubelet is admitting: GetPreferredAllocation carries only a slot count, and the extender never
leaves two unserved pods with a container of the same slot count on one node (`gpupool.identity`), so the
unserved container of that size is unique; the order of "oldest bound" (the assignment's ``at``, then the
pod's ``creationTimestamp``, then namespace/name) is only a tie-break (past the extender's identity wait).
Containers of one pod are taken init containers first, then app containers, each by index: the order in
which the kubelet allocates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpupool import assignment as assignment_format
from gpupool import identity, objects, resources
from gpupool.assignment import Assignment, Keys, SliceRecord
from gpupool.errors import AssignmentError
from gpupool.identity import format_allocated as format_allocated  # re-exported for the Allocate record
from gpupool.identity import key_order

log = logging.getLogger(__name__)


def parse_allocated(text: str | None) -> frozenset[str]:
    """Served container keys from a `gpupool.io/allocated` value (unreadable = none, logged)."""
    try:
        return identity.parse_allocated(text)
    except ValueError:
        log.warning("ignoring unreadable %s annotation %r", resources.ALLOCATED, text)
        return frozenset()


class MatchError(Exception):
    """Allocate cannot be served; `reason` is a short metric label, the message says what is wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class PodEntry:
    """One pod bound to this node with an assignment annotation."""

    uid: str
    namespace: str
    name: str
    created: str
    text: str
    assignment: Assignment | None  # parsed (unverified when `problem` is set)
    problem: str | None  # why this assignment is refused (unsigned, forged, foreign node, ...)
    allocated: frozenset[str]  # from the annotation
    served_here: set[str] = field(default_factory=set)  # served by this process (before the watch echoes it)
    containers: dict[str, tuple[SliceRecord, ...]] = field(default_factory=dict)
    #: the pod reports what only follows the kubelet's admission (`identity.kubelet_admitted`): all served,
    #: as the extender counts it, even when the record was never written (a failed write, an agent restart)
    admitted: bool = False
    #: `gpupool.io/compute-mode` (None: the node's `--runtime-compute-mode`); not signed, docs/runtime.md
    compute_mode: str | None = None
    #: the pod object itself (the resize follower reads its request, `deviceplugin/resize.py`)
    pod: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def served(self) -> frozenset[str]:
        if self.admitted:
            return frozenset(self.containers)
        return self.allocated | self.served_here

    def order(self) -> tuple[str, str, str]:
        return (self.assignment.at if self.assignment else "", self.created, self.key)

    def unserved(self) -> list[str]:
        done = self.served()
        return [k for k in sorted(self.containers, key=key_order) if k not in done]


@dataclass(frozen=True, slots=True)
class Match:
    """The container an Allocate serves, and how it was found."""

    entry: PodEntry
    container: str
    slices: tuple[SliceRecord, ...]
    how: str  # exact | init-reuse | same-pod | fallback | again
    note: str = ""


class PodCache:
    """In-memory view of the assigned pods bound to `node`, fed by list + watch (see `run`)."""

    def __init__(self, node: str, key: Keys, lister: Any = None) -> None:
        self.node = node
        self.key = key
        self.kube = lister  # deviceplugin.kube.Kube or None (tests feed events directly)
        self._lock = threading.Lock()  # guards the dicts only; never held across an API call
        self._pods: dict[str, PodEntry] = {}
        self._pod_locks: dict[str, threading.Lock] = {}
        self.synced = threading.Event()
        self.on_change: Callable[[], None] | None = None

    # --- feeding ---------------------------------------------------------------------------------------

    def _entry(self, pod: Mapping[str, Any]) -> PodEntry | None:
        meta = pod.get("metadata") or {}
        if objects.pod_node_name(pod) != self.node or objects.pod_is_terminal(pod):
            return None
        if meta.get("deletionTimestamp"):
            return None
        text = objects.pod_assignment_text(pod)
        if text is None:
            return None
        uid = objects.pod_uid(pod)
        annotations = meta.get("annotations") or {}
        record: Assignment | None = None
        problem: str | None = None
        try:
            record = assignment_format.parse(text)  # kept when refused, so that Allocate can say why
            objects.pod_assignment(pod, self.key)  # signature and owner
            if record.node != self.node:
                problem = (
                    f"the assignment of pod {objects.pod_key(pod)} is for node {record.node}, "
                    f"but this is node {self.node} (foreign-node assignment refused)"
                )
        except AssignmentError as exc:
            problem = str(exc)
        entry = PodEntry(
            uid=uid,
            namespace=str(meta.get("namespace") or ""),
            name=str(meta.get("name") or ""),
            created=str(meta.get("creationTimestamp") or ""),
            text=text,
            assignment=record,
            problem=problem,
            allocated=parse_allocated(annotations.get(resources.ALLOCATED)),
            admitted=identity.kubelet_admitted(pod),
            pod=pod,
        )
        entry.compute_mode, mode_problem = objects.pod_compute_mode(pod)
        if mode_problem is not None:  # admission refuses it; a pod created around the webhook gets the default
            log.warning("pod %s: %s: %s; the node's default applies", entry.key, resources.COMPUTE_MODE, mode_problem)
        if record is not None:
            entry.containers = identity.container_slices(record.slices)
        return entry

    def upsert(self, pod: Mapping[str, Any]) -> None:
        uid = objects.pod_uid(pod)
        entry = self._entry(pod)
        with self._lock:
            old = self._pods.pop(uid, None)
            if entry is not None:
                if old is not None and old.text == entry.text:
                    entry.served_here = old.served_here
                self._pods[uid] = entry
        if self.on_change is not None:
            self.on_change()

    def delete(self, pod: Mapping[str, Any]) -> None:
        with self._lock:
            self._pods.pop(objects.pod_uid(pod), None)
            self._pod_locks.pop(objects.pod_uid(pod), None)
        if self.on_change is not None:
            self.on_change()

    def replace_all(self, pods: Iterable[Mapping[str, Any]]) -> None:
        entries = [e for e in (self._entry(p) for p in pods) if e is not None]
        with self._lock:
            old = self._pods
            self._pods = {}
            for e in entries:
                previous = old.get(e.uid)
                if previous is not None and previous.text == e.text:
                    e.served_here = previous.served_here
                self._pods[e.uid] = e
        self.synced.set()
        if self.on_change is not None:
            self.on_change()

    def resync(self) -> None:
        """Re-list the pods of this node now (a cache miss: the watch may lag behind the kubelet)."""
        if self.kube is None:
            return
        pods, _ = self.kube.list_pods(self.node)
        self.replace_all(pods)

    def run(self, stop: threading.Event, watch_timeout_s: int = 300) -> None:
        """List + watch until `stop`; every watch restart re-lists (robust, one LIST per watch period)."""
        backoff = 0.5
        while not stop.is_set():
            try:
                pods, rv = self.kube.list_pods(self.node)
                self.replace_all(pods)
                for kind, obj in self.kube.watch_pods(self.node, rv, timeout_s=watch_timeout_s):
                    if stop.is_set():
                        return
                    if kind in ("ADDED", "MODIFIED"):
                        self.upsert(obj)
                    elif kind == "DELETED":
                        self.delete(obj)
                backoff = 0.5
            except Exception as exc:  # API errors, timeouts, broken streams: re-list after a pause
                if stop.is_set():
                    return
                log.warning("pod watch of node %s interrupted (%s); re-listing in %.1fs", self.node, exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    # --- reading ---------------------------------------------------------------------------------------

    def entries(self) -> list[PodEntry]:
        with self._lock:
            return sorted(self._pods.values(), key=PodEntry.order)

    def pod_lock(self, uid: str) -> threading.Lock:
        with self._lock:
            return self._pod_locks.setdefault(uid, threading.Lock())

    def slots_in_use(self) -> int:
        with self._lock:
            return sum(
                len(slices)
                for e in self._pods.values()
                if e.problem is None
                for k, slices in e.containers.items()
                if k in e.served()
            )

    # --- matching ----------------------------------------------------------------------------------------

    def candidate(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> tuple[list[str], str] | None:
        """The slots of the unserved container of `size` slots on this node (oldest bound first), and a note;
        None when the cache holds none (the watch may lag: the caller re-lists once)."""
        avail = set(available)
        must = list(must_include)
        with self._lock:
            ordered = sorted((e for e in self._pods.values() if e.problem is None), key=PodEntry.order)
            if must:
                owner = self._owner_of(ordered, must)
                if owner is not None:
                    for key in owner.unserved():
                        slots = [s.slot for s in owner.containers[key]]
                        if len(slots) == size:
                            extra = [s for s in slots if s in avail and s not in must]
                            pick = (must + extra)[:size]
                            if len(pick) == size:
                                return pick, f"pod {owner.key} container {key} (reusing its init slots)"
            else:
                for entry in ordered:
                    for key in entry.unserved():
                        slots = [s.slot for s in entry.containers[key]]
                        if len(slots) == size and avail.issuperset(slots):
                            return slots, f"pod {entry.key} container {key}"
        return None

    @staticmethod
    def _owner_of(ordered: list[PodEntry], slots: Sequence[str]) -> PodEntry | None:
        wanted = set(slots)
        for entry in ordered:
            if any(wanted & {s.slot for s in sl} for sl in entry.containers.values()):
                return entry
        return None

    def match(self, device_ids: Sequence[str]) -> Match:
        """The container these slot ids belong to; raises `MatchError` saying why none can be served.

        1. exact: the ids equal the slots of one container of a pod (unserved preferred). If that pod's
           assignment is refused (unsigned, forged, another pod's, another node's) the error says so.
           An exact hit on an already served init container whose pod still has an unserved app container
           of the same size serves that app container (the kubelet reuses init containers' devices).
        2. same-pod: the ids overlap the slots of a pod that has an unserved container of that size.
        3. fallback: the earliest bound pod whose unserved container asks for that many slots.
        The chosen container is marked served in memory before this returns, so concurrent Allocates
        never pick the same container twice.
        """
        wanted = frozenset(device_ids)
        size = len(device_ids)
        with self._lock:
            ordered = sorted(self._pods.values(), key=PodEntry.order)
            exact: list[tuple[PodEntry, str]] = [
                (e, k) for e in ordered for k, sl in e.containers.items() if frozenset(s.slot for s in sl) == wanted
            ]
            if exact:
                exact.sort(
                    key=lambda ek: (
                        ek[0].problem is not None,
                        ek[1] in ek[0].served(),
                        ek[0].order(),
                        key_order(ek[1]),
                    )
                )
                entry, key = exact[0]
                if entry.problem is not None:
                    raise MatchError("refused", f"slots {sorted(wanted)}: {entry.problem}")
                if key in entry.served() and key.startswith("init:"):
                    for other in entry.unserved():
                        if not other.startswith("init:") and len(entry.containers[other]) == size:
                            return self._take(entry, other, "init-reuse", f"kubelet reused the slots of {key}")
                how = "again" if key in entry.served() else "exact"
                return self._take(entry, key, how, "served before; serving again" if how == "again" else "")
            valid = [e for e in ordered if e.problem is None]
            for entry in valid:
                if any(wanted & {s.slot for s in sl} for sl in entry.containers.values()):
                    for key in entry.unserved():
                        if len(entry.containers[key]) == size:
                            return self._take(entry, key, "same-pod", "slot ids overlap this pod's slots")
            for entry in valid:
                for key in entry.unserved():
                    if len(entry.containers[key]) == size:
                        return self._take(
                            entry,
                            key,
                            "fallback",
                            f"slot ids {sorted(wanted)} match no assignment; earliest bound pod with an unserved "
                            f"container of {size} slice(s)",
                        )
            refused = [f"{e.key}: {e.problem}" for e in ordered if e.problem is not None]
        detail = f"; refused assignments on this node: {'; '.join(refused)}" if refused else ""
        raise MatchError(
            "no_match",
            f"no pod bound to node {self.node} has an unserved gpupool assignment for slots {sorted(wanted)} "
            f"or of {size} slice(s){detail}",
        )

    def _take(self, entry: PodEntry, key: str, how: str, note: str) -> Match:
        entry.served_here.add(key)
        return Match(entry=entry, container=key, slices=entry.containers[key], how=how, note=note)

    def unmark(self, match: Match) -> None:
        """Undo `match`'s in-memory served mark (the Allocate failed after matching)."""
        with self._lock:
            if match.how != "again":
                match.entry.served_here.discard(match.container)

    def served_keys(self, uid: str) -> frozenset[str] | None:
        with self._lock:
            entry = self._pods.get(uid)
            return entry.served() if entry is not None else None


def kubelet_order(available: Sequence[str], must_include: Sequence[str], size: int) -> tuple[list[str], str]:
    """No unserved assignment of this size: the kubelet's own order (Allocate then falls back, see `match`)."""
    must = list(must_include)
    pick = must + [s for s in available if s not in must]
    return pick[:size], "no unserved assignment of this size on this node; kubelet order"


def wait_synced(cache: PodCache, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cache.synced.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        cache.synced.wait(min(remaining, 0.5))
    return True
