"""`PoolService`: the extender's state and verbs (DESIGN.md §5), with no HTTP in sight.

One `Ledger` and one `Placer` behind one lock, fed from the cluster cache (the `on_*` methods,
called by the watch threads or by tests). `filter` / `prioritize` / `preempt` only read; `bind`
is the only writer of slices and holds the lock for plan + commit only, never for its API writes
(no per-node lock). The ledger is rebuilt from the pods' signed assignments
(`gpupool.objects.holding_from_pod`). A pod whose assignment cannot be trusted (forged, unreadable,
unknown key id) is quarantined (`_quarantine`): its claim stays counted as far as capacity allows
(`Ledger.hold_what_fits`), it is logged, counted and listed in /readyz, and scheduling goes on for
everyone else. A signed assignment that does not fit (a GPU reports less than is held on it) is
quarantined by the ledger (`Ledger.quarantine`): nothing is held past capacity, its GPUs take no new
slice, and it is held again once it fits. Readiness is the sync state.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from extender.kube import ApiError, PodAPI
from extender.metrics import CacheStats, GPUAllocation, Metrics
from gpupool import assignment as assignment_format
from gpupool import identity, objects, resources, timefmt
from gpupool.assignment import Keys, SliceRecord, keyset
from gpupool.errors import AssignmentError, GpupoolError, InvalidRequest, OverAllocation
from gpupool.ledger import Holding, HoldingKind, Ledger
from gpupool.placement import NO_SCORE, FilterResult, NoFit, Placer
from gpupool.preemption import Victim, choose_victims
from gpupool.quota import Resources
from gpupool.request import PodRequest

log = logging.getLogger("gpupool.extender")

#: kube-scheduler's MaxExtenderPriority
MAX_EXTENDER_SCORE = 10


class Existing(enum.Enum):
    """What a pod's assignment says about a bind to a node (`PoolService._existing_assignment`)."""

    DONE = "done"  # a valid assignment for this node that the ledger agrees with: only the Binding is missing
    STALE = "stale"  # an assignment for another node that never bound: replaced by a fresh one


class BindError(GpupoolError):
    """A bind that did not happen; the message goes back to kube-scheduler (and into the pod's events)."""


class BindUnknown(BindError):
    """A Binding whose outcome nobody can tell (its reply lost, and the pod could not be read back): its slices
    stay held and the pod is read again (`PoolService.unconfirmed`), never released on a guess."""


#: pods whose assignment `PoolService.on_keys_changed` verifies again per hold of the lock
KEY_RECHECK_BATCH = 500
#: the most assignment texts `PoolService._verified_texts` keeps verified
VERIFIED_TEXTS = 4096


def extender_score(policy_score: int | None) -> int:
    """A policy's 0..100 as kube-scheduler's 0..10: local fits 1..10, remote-only fits 0."""
    if policy_score is None:
        return 0
    return 1 + max(0, min(100, policy_score)) * (MAX_EXTENDER_SCORE - 1) // 100


#: `extender_score` of None (index 0, `NO_SCORE`) and of the policy scores 0..100 (index 1 + score)
_EXTENDER_SCORES = np.array([extender_score(None), *(extender_score(s) for s in range(101))], dtype=np.int64)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _name(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj).get("name") or "")


def _is_pool_pod(pod: Mapping[str, Any]) -> bool:
    return objects.pod_assignment_text(pod) is not None or resources.mentions_gpupool(pod)


class PoolService:
    """Ledger + Placer + lock, the cluster cache, and the four verbs."""

    def __init__(
        self,
        ledger: Ledger,
        placer: Placer,
        key: Keys,
        api: PodAPI | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if placer.ledger is not ledger:
            raise ValueError("the placer must place over the service's ledger")
        self.ledger = ledger
        self.placer = placer
        self.key = key
        self.api = api
        self.metrics = metrics or Metrics()
        #: guards the ledger, the placer's caches and every dict below
        self.lock = threading.RLock()
        self.nodes: set[str] = set()  # Node objects that exist
        self.gpunodes: dict[str, dict[str, Any]] = {}  # GPUNode objects by name
        self.gpuqueues: set[str] = set()  # GPUQueue names (their reserved nodes are in placer.reservations)
        self.pods: dict[str, dict[str, Any]] = {}  # pool pods by uid
        self.pod_uids: dict[tuple[str, str], str] = {}  # (namespace, name) -> uid
        #: quarantined pods (`_quarantine`): assignment untrusted (forged, unreadable, unknown key id) or
        #: not fitting; uid -> what is wrong and what of its claim could not be held
        self.problems: dict[str, str] = {}
        #: slices of a quarantined pod's claim that capacity did not allow to hold
        self.excess: dict[str, tuple[SliceRecord, ...]] = {}
        #: GPUNodes that could not be read (the node stays out of the pool, or keeps its last good inventory)
        self.gpunode_problems: dict[str, str] = {}
        #: each GPUNode's `objects.gpunode_inventory_key` as last put into the pool (or refused) by `_apply_gpunode`
        self._gpunode_keys: dict[str, tuple[Any, ...]] = {}
        #: pods with a valid assignment naming a node or GPU that is not in the pool (yet, or any more)
        self.unplaced: set[str] = set()
        #: binds between commit and the end of their API writes: the watch leaves these pods alone
        self.inflight: dict[str, Holding] = {}
        #: which initial lists (Nodes, GPUNodes, pods) arrived: not ready before all three did
        self._synced = {"nodes": False, "gpunodes": False, "pods": False}
        #: pods deleted while their bind was in flight
        self._gone_while_binding: set[str] = set()
        #: binds in flight whose pod a relist lacked (deleted meanwhile, or newer than the list): read at the end
        self._relisted_without: set[str] = set()
        #: such pods whose read at the end failed: (namespace, name) by uid, held until read (`recheck_unconfirmed`)
        self.unconfirmed: dict[str, tuple[str, str]] = {}
        #: assignment texts verified with `key` and their records (`objects.pod_assignment`; `_verified_texts`)
        self._verified: dict[str, assignment_format.Assignment] = {}
        #: quarantined pods already counted and logged (`Ledger.quarantined` holds the current ones)
        self._quarantine_seen: set[str] = set()
        # --- identity (gpupool.identity): bound pods whose devices the kubelet has not taken yet ---
        #: how long an unserved pod holds back same-slot-count pods on its node (0 = off); set by `build`
        self.identity_wait_seconds = 60.0
        self.clock: Callable[[], float] = time.time
        self.unserved: dict[str, dict[str, identity.Unserved]] = {}  # node -> uid -> unserved pod
        self._unserved_node: dict[str, str] = {}  # uid -> node
        self._overdue: set[str] = set()  # unserved pods already reported overdue
        #: the unserved pods not overdue, by slot count: the nodes a pod waits on in one set union (`_identity_held`)
        self._holdbacks = identity.Holdbacks()
        #: a bind held back by the rule waits this long for it to clear before refusing: kube-scheduler binds
        #: asynchronously, so it may bind the next pod to a node before the extender saw the previous bind
        #: (below kube-scheduler's extender httpTimeout, 5 s in the chart)
        self.identity_bind_wait_seconds = 2.0
        self._identity_changed = threading.Condition(self.lock)  # notified when an unserved pod is forgotten
        self._bind_ended = threading.Condition(self.lock)  # notified when a bind leaves `inflight`
        #: how long a prioritize answer's chosen node counts as where its pod is about to bind (`_identity_expect`);
        #: 0 = off. kube-scheduler's next cycles run before the extender sees that pod's bind
        self.identity_expect_seconds = 2.0
        self.expected: dict[str, dict[str, identity.Expected]] = {}  # node -> uid -> mark (time.monotonic)
        self._expected_at: dict[str, tuple[str, identity.Expected]] = {}  # uid -> (node, mark)
        #: filter answers a pod that asks kube-scheduler's scoring for nothing of its own
        #: (`objects.pod_scoring_preference`) with the one node prioritize would rank first, so kube-scheduler binds
        #: it there without scoring nodes or calling prioritize (issue 16); False = every passing node
        self.narrow_filter = True

    # --- readiness ---------------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return all(self._synced.values())

    @property
    def ready(self) -> bool:
        """True once Nodes, GPUNodes and pods were listed; quarantined pods never make it false."""
        return self.synced

    def readiness(self) -> dict[str, Any]:
        with self.lock:
            return {
                "ready": self.ready,
                "synced": dict(self._synced),
                "problems": dict(sorted(self.problems.items())),  # the quarantined pods
                "keys": self._key_ids(),
                "gpunode_problems": dict(sorted(self.gpunode_problems.items())),
                "unplaced": sorted(self.unplaced),
                "quarantined": {
                    self._pod_label(u): why
                    for u, why in sorted(self.ledger.quarantined.items())
                    if u not in self.unplaced
                },
            }

    def _key_ids(self) -> dict[str, Any]:
        try:
            current = keyset(self.key)
        except AssignmentError as exc:
            return {"error": str(exc)}
        return {"signing": current.signing, "verification": list(current.kids)}

    def on_keys_changed(self) -> None:
        """The signing keys changed (`gpupool.signing_key.KeyRing`): every cached pod's assignment is verified
        again now, not on its next event (a running pod may have none): a retired key's signatures stop being
        trusted at once (quarantined, charts/gpupool/README.md "Rotating the signing key"), a new verification key
        may trust a quarantined pod. `KEY_RECHECK_BATCH` pods per hold of the lock, so filter and bind go on."""
        with self.lock:
            self._verified.clear()  # verified with the keys of before: a retired key's signature must fail now
            uids = sorted(self.pods)
        for start in range(0, len(uids), KEY_RECHECK_BATCH):
            with self.lock:
                for uid in uids[start : start + KEY_RECHECK_BATCH]:
                    pod = self.pods.get(uid)
                    if pod is not None:
                        self._sync_holding(uid, pod)

    # --- cluster cache: Nodes ----------------------------------------------------------------------

    def on_node_list(self, items: Iterable[Mapping[str, Any]]) -> None:
        items = list(items)
        names = {_name(o) for o in items if _name(o)}
        with self.lock:
            for o in items:
                if _name(o):
                    self.placer.reservations.set_node_labels(_name(o), _meta(o).get("labels") or {})
            for gone in self.nodes - names:
                self._node_gone(gone)
            for name in names - self.nodes:
                self.nodes.add(name)
                self._apply_gpunode(name)
            self._synced["nodes"] = True

    def on_node_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        name = _name(obj)
        if not name:
            return
        with self.lock:
            if kind == "DELETED":
                self._node_gone(name)
                return
            self.placer.reservations.set_node_labels(name, _meta(obj).get("labels") or {})
            if name not in self.nodes:
                self.nodes.add(name)
                self._apply_gpunode(name)

    def _node_gone(self, name: str) -> None:
        self.nodes.discard(name)
        self.placer.reservations.remove_node(name)
        self._drop_from_pool(name)

    # --- cluster cache: GPUQueues (only the nodes they reserve: gpupool.tenancy) --------------------

    def expect_gpuqueues(self) -> None:
        """Not ready before the GPUQueues were listed (the watch feeds them): reserved nodes stay reserved."""
        with self.lock:
            self._synced.setdefault("gpuqueues", False)

    def on_gpuqueue_list(self, items: Iterable[Mapping[str, Any]]) -> None:
        fresh = {_name(o): o for o in items if _name(o)}
        with self.lock:
            for gone in set(self.gpuqueues) - set(fresh):
                self.gpuqueues.discard(gone)
                self.placer.reservations.remove_queue(gone)
            for obj in fresh.values():
                self._apply_gpuqueue(obj)
            self._synced["gpuqueues"] = True

    def on_gpuqueue_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        name = _name(obj)
        if not name:
            return
        with self.lock:
            if kind == "DELETED":
                self.gpuqueues.discard(name)
                self.placer.reservations.remove_queue(name)
            else:
                self._apply_gpuqueue(obj)

    def _apply_gpuqueue(self, obj: Mapping[str, Any]) -> None:
        try:
            spec = objects.queue_spec_from_object(obj)
        except GpupoolError as exc:
            log.error("GPUQueue %s is unreadable, its reserved nodes kept as they were: %s", _name(obj), exc)
            return
        self.gpuqueues.add(spec.name)
        self.placer.reservations.set_queue(spec)

    # --- cluster cache: GPUNodes -------------------------------------------------------------------

    def on_gpunode_list(self, items: Iterable[Mapping[str, Any]]) -> None:
        fresh = {_name(o): dict(o) for o in items if _name(o)}
        with self.lock:
            for gone in set(self.gpunodes) - set(fresh):
                del self.gpunodes[gone]
                self.gpunode_problems.pop(gone, None)
                self._gpunode_keys.pop(gone, None)
                self._drop_from_pool(gone)
            for name, obj in fresh.items():
                self.gpunodes[name] = obj
                self._apply_gpunode(name)
            self._synced["gpunodes"] = True

    def on_gpunode_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        name = _name(obj)
        if not name:
            return
        with self.lock:
            if kind == "DELETED":
                self.gpunodes.pop(name, None)
                self.gpunode_problems.pop(name, None)
                self._gpunode_keys.pop(name, None)
                self._drop_from_pool(name)
            else:
                self.gpunodes[name] = dict(obj)
                if (name in self.nodes and name not in self.gpunode_problems
                        and self._gpunode_keys.get(name) == objects.gpunode_inventory_key(obj)):  # fmt: skip
                    # only the rest of its status changed (the controller's summary, a heartbeat): its inventory is
                    # in the pool as it was, nothing to parse; what waits on the pool is retried as on any event
                    self._retry_unplaced()
                    return
                self._apply_gpunode(name)

    def _apply_gpunode(self, name: str) -> None:
        """Put node `name` into the pool (or refresh it) when both its Node and its GPUNode exist."""
        obj = self.gpunodes.get(name)
        if obj is None or name not in self.nodes:
            return
        self._gpunode_keys[name] = objects.gpunode_inventory_key(obj)
        try:
            info = objects.node_info_from_gpunode(obj)
            dropped = self.ledger.upsert_node(info)
        except (GpupoolError, ValueError) as exc:
            if self.gpunode_problems.get(name) != str(exc):
                self.metrics.gpunode_problems.inc()
                log.error(
                    "GPUNode %s is unreadable, node kept %s: %s",
                    name,
                    "at its last good inventory" if self.ledger.has_node(name) else "out of the pool",
                    exc,
                )
            self.gpunode_problems[name] = str(exc)
            return
        self.gpunode_problems.pop(name, None)
        for uid in dropped:
            if uid in self.ledger.quarantined:
                self._quarantined(uid, self.ledger.quarantined[uid])
            else:
                log.warning("pod %s lost its slices: a GPU it used left GPUNode %s", self._pod_label(uid), name)
            self.unplaced.add(uid)
        self._retry_unplaced()

    def _drop_from_pool(self, name: str) -> None:
        if not self.ledger.has_node(name):
            return
        for uid in self.ledger.remove_node(name):
            if uid in self.inflight:
                self.unplaced.add(uid)  # its commit stays counted (`_hold_inflight`); the bind settles the rest
                continue
            if uid in self.pods and objects.pod_assignment_text(self.pods[uid]) is not None:
                self.unplaced.add(uid)
        log.info("node %s left the pool; its slices were released", name)
        self._retry_unplaced()  # what those pods hold on GPUs still in the pool stays counted (conservatively)

    def _retry_unplaced(self) -> None:
        """Hold again what pods left unplaced or quarantined hold, where it is back or fits now."""
        for uid in sorted(self.unplaced | set(self.ledger.quarantined)):
            if uid in self.inflight:
                self._hold_inflight(uid)
                continue
            pod = self.pods.get(uid)
            if pod is None:
                self.unplaced.discard(uid)
                self.ledger.unquarantine(uid)
            else:
                self._sync_holding(uid, pod)

    # --- cluster cache: pods -----------------------------------------------------------------------

    def on_pod_list(self, items: Iterable[Mapping[str, Any]]) -> None:
        fresh = {objects.pod_uid(p): dict(p) for p in items if _is_pool_pod(p) and objects.pod_uid(p)}
        with self.lock:
            self._relisted_without |= self.inflight.keys() - fresh.keys()
            for gone in set(self.pods) - set(fresh):
                self._pod_gone(gone)
            for uid in sorted(fresh, key=lambda u: objects.pod_key(fresh[u])):
                self._pod_seen(uid, fresh[uid])
            self._synced["pods"] = True

    def on_pod_event(self, kind: str, pod: Mapping[str, Any]) -> None:
        uid = objects.pod_uid(pod)
        if not uid:
            return
        with self.lock:
            if kind == "DELETED":
                self._pod_gone(uid)
            elif _is_pool_pod(pod):
                self._pod_seen(uid, dict(pod))
            elif uid in self.pods:
                self._pod_gone(uid)

    def _pod_seen(self, uid: str, pod: dict[str, Any]) -> None:
        self.unconfirmed.pop(uid, None)  # the watch or a relist has it: it exists
        known = self.pods.get(uid)
        if known is not None and objects.pod_node_name(known) and not objects.pod_node_name(pod):
            return  # older than a bind we already saw or made (watch lag): a bound pod never unbinds
        self.pods[uid] = pod
        meta = _meta(pod)
        self.pod_uids[(str(meta.get("namespace") or ""), str(meta.get("name") or ""))] = uid
        self._sync_holding(uid, pod)
        self._identity_seen(uid, pod)

    def _pod_gone(self, uid: str) -> None:
        self.unconfirmed.pop(uid, None)
        pod = self.pods.pop(uid, None)
        if pod is not None:
            meta = _meta(pod)
            key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
            if self.pod_uids.get(key) == uid:
                del self.pod_uids[key]
        self.problems.pop(uid, None)
        self.excess.pop(uid, None)
        self.unplaced.discard(uid)
        self._quarantine_seen.discard(uid)
        self._identity_forget(uid)
        self._identity_unexpect(uid)
        if uid in self.inflight:
            self._gone_while_binding.add(uid)  # the bind settles it when its Binding answers
        else:
            self.ledger.discard(uid)
            if self.ledger.quarantined:  # capacity came back: a quarantined pod may fit now
                self._retry_unplaced()

    def _sync_holding(self, uid: str, pod: Mapping[str, Any]) -> None:
        """Make the ledger hold exactly what the pod's signed assignment says (caller holds the lock)."""
        if uid in self.inflight:
            self._hold_inflight(uid)  # our own bind is writing this pod; its outcome decides
            return
        try:
            wanted = objects.holding_from_pod(pod, self.key, self._verified_texts())
        except AssignmentError as exc:
            # whatever the ledger holds for it stays held; else its unverified claim, as far as it fits
            self._quarantine(uid, pod, f"assignment refused: {exc}", self._claim(pod))
            return
        except Exception as exc:  # one pod's object never stops the pods watcher (it would relist forever)
            log.exception("pod %s: reading its assignment failed", objects.pod_key(pod))
            self._quarantine(uid, pod, f"assignment unreadable: {type(exc).__name__}: {exc}", None)
            return
        current = self.ledger.holding(uid)
        if wanted is None:
            self._trusted(uid)
            self.ledger.unquarantine(uid)
            if current is not None:
                self.ledger.release(uid)
            return
        if current is not None and current == wanted:
            self._trusted(uid)
            return
        if current is not None:
            self.ledger.release(uid)
        if not self.ledger.has_node(wanted.node) or not all(self.ledger.has_gpu(s.gpu) for s in wanted.slices):
            if uid not in self.unplaced:
                log.warning(
                    "pod %s holds slices on a node or GPU not in the pool; not counted until it is back",
                    objects.pod_key(pod),
                )
            self.unplaced.add(uid)
            self.problems.pop(uid, None)
            # the pod still runs on the GPUs of its assignment that are in the pool: they take no new slice
            self.ledger.quarantine(wanted, "a node or GPU of its assignment is not in the pool")
            self.excess.pop(uid, None)
            return
        try:
            self.ledger.hold(wanted)
        except OverAllocation as exc:
            if current is not None:
                self.ledger.hold(current)  # what it held (e.g. as best-effort, before a QoS edit) stays held
                self._quarantine(uid, pod, f"assignment does not fit the pool: {exc}", wanted)
                return
            # a signed assignment that does not fit (a GPU reports less than is held on it): never held past
            # capacity but counted conservatively (its GPUs take no new slice), named in /readyz and in a
            # metric, and held again when it fits
            self.ledger.quarantine(wanted, f"assignment does not fit the pool: {exc}")
            self._quarantined(uid, self.ledger.quarantined[uid])
            self._trusted(uid)
            return
        self._trusted(uid)
        self._quarantine_seen.discard(uid)

    def _verified_texts(self) -> dict[str, assignment_format.Assignment]:
        """The verified texts (caller holds the lock), emptied when `VERIFIED_TEXTS` are held: a pod's events
        repeat its text within seconds of its bind, and a table of every pod's would double the memory the
        ledger needs for them (30 MiB at 40,000 pods, `bench/extender_latency.py`)."""
        if len(self._verified) >= VERIFIED_TEXTS:
            self._verified.clear()
        return self._verified

    def _hold_inflight(self, uid: str) -> None:
        """Keep an in-flight bind's commit counted through inventory flaps (issue 12 #1; caller holds the lock).

        While the Binding is on its way the pod's assignment is in no cached object, so nothing else counts it:
        a Node, GPUNode or GPU that leaves and comes back must not free it for another bind meanwhile. Held
        again once its node and GPUs are back, quarantined (counted conservatively) while they are not.
        """
        holding = self.inflight[uid]
        current = self.ledger.holding(uid)
        if current is not None:
            if current == holding:
                self.unplaced.discard(uid)
                return
            self.ledger.release(uid)
        if self.ledger.has_node(holding.node) and all(self.ledger.has_gpu(s.gpu) for s in holding.slices):
            try:
                self.ledger.hold(holding)
            except OverAllocation as exc:
                self.ledger.quarantine(holding, f"its bind's commit does not fit the pool: {exc}")
                return
            self.ledger.unquarantine(uid)
            self.unplaced.discard(uid)
            return
        self.unplaced.add(uid)
        self.ledger.quarantine(holding, "a node or GPU of its bind's commit is not in the pool")

    def _trusted(self, uid: str) -> None:
        self.unplaced.discard(uid)
        if self.problems.pop(uid, None) is not None:
            log.info("pod %s is no longer quarantined", self._pod_label(uid))
        self.excess.pop(uid, None)

    def _claim(self, pod: Mapping[str, Any]) -> Holding | None:
        """The slices an untrusted pod claims, read unverified; only a pod bound to the node its claim
        names can be running on them (an unbound pod runs nothing, so it holds nothing)."""
        try:
            claim = objects.holding_from_pod(pod, None)
        except AssignmentError:
            return None  # unreadable, or another pod's record: nothing of its own to count
        if claim is None or objects.pod_node_name(pod) != claim.node:
            return None
        return claim

    def _quarantine(self, uid: str, pod: Mapping[str, Any], message: str, claim: Holding | None) -> None:
        """One pod that cannot be trusted or accounted is set apart; everyone else keeps being scheduled.

        What the ledger holds for it stays held (never silently free); holding nothing yet, its
        `claim` is held as far as capacity allows (`Ledger.hold_what_fits`) so that nothing else is
        placed on top of it, and what could not be held is reported. Logged at ERROR and counted once
        per distinct message, listed in /readyz and in `gpupool_extender_quarantined_pods`.
        """
        self.unplaced.discard(uid)
        if claim is not None and self.ledger.holding(uid) is None and self.ledger.has_node(claim.node):
            _, excess = self.ledger.hold_what_fits(claim)
            self.excess[uid] = excess
        excess = self.excess.get(uid, ())
        text = f"pod {objects.pod_key(pod)}: quarantined: {message}"  # /readyz names the pod, not only its uid
        if excess:
            text += "; not held (no capacity left): " + ", ".join(f"{s.gpu} {s.slot}" for s in excess)
        if self.problems.get(uid) != text:
            self.metrics.assignment_problems.inc()
            log.error("pod %s (uid %s) quarantined, scheduling goes on: %s", objects.pod_key(pod), uid, text)
        self.problems[uid] = text

    def _quarantined(self, uid: str, why: str) -> None:
        if uid not in self._quarantine_seen:
            self._quarantine_seen.add(uid)
            self.metrics.quarantined.inc()
            log.error(
                "pod %s (uid %s) is quarantined (its GPUs take no new slice until it fits): %s",
                self._pod_label(uid), uid, why,
            )  # fmt: skip

    def _pod_label(self, uid: str) -> str:
        pod = self.pods.get(uid)
        return objects.pod_key(pod) if pod is not None else uid

    # --- filter and prioritize ---------------------------------------------------------------------

    def _request(self, pod: Mapping[str, Any]) -> PodRequest:
        return resources.parse_pod(pod)

    def filter(self, pod: Mapping[str, Any], nodes: list[str]) -> FilterResult:
        try:
            request = self._request(pod)
        except InvalidRequest as exc:
            return FilterResult(error=f"pod {objects.pod_key(pod)} is invalid for gpupool: {exc}")
        if not self.ready:
            return FilterResult(error=self._not_ready_message())
        if not request.containers:
            return FilterResult(passing=list(nodes))
        if request.policy is not None and request.policy not in self.placer.policies:
            enabled = ", ".join(sorted(self.placer.policies))
            return FilterResult(
                error=f"pod {request.key}: policy {request.policy!r} is not enabled; enabled are {enabled}"
            )
        with self.lock:
            taken = self._bound_by_us(objects.pod_uid(pod))
            if taken is not None:
                return self._only(taken, nodes, f"pod {request.key} is already bound to {taken}")
            result = self.placer.filter(request, nodes, detail=False)  # the answer groups nodes by reason
            held = self._identity_held(request, result.passing)
            if self.narrow_filter and len(result.passing) - len(held) >= 2:
                if objects.pod_scoring_preference(pod) is None:
                    free = [n for n in result.passing if n not in held] if held else result.passing
                    ranked = self._ranked(objects.pod_uid(pod), request, free)
                    if ranked is not None:  # the failure maps go only with an answer of fewer than two nodes
                        self.metrics.filter_answers.labels("one").inc()
                        return FilterResult(passing=[free[int(np.argmax(ranked))]])
                else:
                    self.metrics.filter_answers.labels("all").inc()
            self._identity_filter(request, result, held)
            return result

    def _bound_by_us(self, uid: str) -> str | None:
        """The node a bind of ours gave pod `uid`, landed or still writing (caller holds the lock); None when none.

        kube-scheduler gives up on a bind after its extender timeout (5 s in the chart) and schedules the pod again,
        while that bind goes on and lands (an API server slow to take Bindings: issue 16). The pod's next filter
        then passes only that node, and its bind there answers what landed, instead of a new placement that the
        bind would refuse ("already bound") cycle after cycle until kube-scheduler's informer caught up.
        """
        holding = self.inflight.get(uid)
        if holding is not None:
            return holding.node
        cached = self.pods.get(uid)
        held = self.ledger.holding(uid)
        if cached is not None and held is not None and objects.pod_node_name(cached) == held.node:
            return held.node
        return None

    @staticmethod
    def _only(node: str, nodes: list[str], reason: str) -> FilterResult:
        return FilterResult(
            passing=[n for n in nodes if n == node], unresolvable={n: reason for n in nodes if n != node}
        )

    def prioritize(self, pod: Mapping[str, Any], nodes: list[str]) -> list[tuple[str, int]]:
        """(node, 0..10) for every node asked about; invalid pods score 0 everywhere (filter said why)."""
        try:
            request = self._request(pod)
        except InvalidRequest:
            return [(n, 0) for n in nodes]
        if not request.containers or not self.ready:
            return [(n, 0) for n in nodes]
        with self.lock:
            ext = self._ranked(objects.pod_uid(pod), request, nodes)
        if ext is None:
            return [(n, 0) for n in nodes]
        return list(zip(nodes, ext.tolist(), strict=True))

    def _ranked(self, uid: str, request: PodRequest, nodes: list[str]) -> npt.NDArray[np.int64] | None:
        """The extender scores (0..10) of `nodes` for `request` as prioritize answers them, steered
        (`_identity_expect`: the first node of the top score is the pod's); None where it fits none (caller holds
        the lock). The narrowed filter answers that first node of the top score (`narrow_filter`)."""
        try:
            scores = self.placer.score_array(request, nodes)
        except NoFit:
            return None
        ext = _EXTENDER_SCORES[np.where(scores == NO_SCORE, 0, np.clip(scores, 0, 100) + 1)]  # a table lookup each
        return self._identity_expect(uid, request, nodes, ext)

    def _not_ready_message(self) -> str:
        waiting = ", ".join(k for k, v in self._synced.items() if not v)
        return f"gpupool extender is not ready: still listing {waiting}"

    # --- bind --------------------------------------------------------------------------------------

    def bind(self, name: str, namespace: str, uid: str, node: str) -> str:
        """Bind the pod to `node`, committing its slices; '' on success, else the error for kube-scheduler."""
        try:
            self._bind(name, namespace, uid, node)
        except BindError as exc:
            with self.lock:
                self._identity_unexpect(uid)
            self.metrics.binds.labels("error").inc()
            log.warning("bind %s/%s -> %s failed: %s", namespace, name, node, exc)
            return str(exc)
        self.metrics.binds.labels("ok").inc()
        return ""

    def _api(self) -> PodAPI:
        if self.api is None:
            raise BindError("the extender has no API-server connection")
        return self.api

    def _get_pod(self, namespace: str, name: str, uid: str) -> dict[str, Any]:
        with self.lock:
            cached_uid = self.pod_uids.get((namespace, name))
            pod = self.pods.get(cached_uid) if cached_uid == uid else None
        if pod is None:
            try:
                pod = self._api().get_pod(namespace, name)
            except ApiError as exc:
                raise BindError(f"cannot read pod {namespace}/{name}: {exc}") from None
        if objects.pod_uid(pod) != uid:
            raise BindError(f"pod {namespace}/{name} has uid {objects.pod_uid(pod)}, not {uid} (recreated?)")
        return pod

    def _bind(self, name: str, namespace: str, uid: str, node: str) -> None:
        if not self.ready:
            raise BindError(self._not_ready_message())
        self._await_own_bind(uid)
        pod = self._get_pod(namespace, name, uid)
        bound_to = objects.pod_node_name(pod)
        if bound_to and bound_to != node:
            raise BindError(f"pod {namespace}/{name} is already bound to {bound_to}")
        if objects.pod_is_terminal(pod):
            raise BindError(f"pod {namespace}/{name} has finished")
        try:
            request = self._request(pod)
        except InvalidRequest as exc:
            raise BindError(f"pod {namespace}/{name} is invalid for gpupool: {exc}") from None

        existing = self._existing_assignment(pod, node)
        if existing is Existing.DONE:
            if not bound_to:
                self._post_binding(namespace, name, uid, node, None)
            return
        if not request.containers:
            self._post_binding(namespace, name, uid, node, None)
            return

        with self.lock:
            self._identity_check(request, node, f"{namespace}/{name}")  # may wait (releasing the lock)
            if uid in self.inflight:
                raise BindError(f"a bind of pod {namespace}/{name} is already in progress")
            old = self.ledger.holding(uid)
            if old is not None:
                if existing is Existing.STALE:  # an assignment for another node that never bound: replace it
                    self.ledger.release(uid)
                else:
                    raise BindError(f"pod {namespace}/{name} already holds slices on {old.node}")
            try:
                plan = self.placer.plan(request, node)
                holding = self.ledger.commit(uid, node, plan.slices, kind=HoldingKind.ASSIGNED, qos=request.qos)
            except NoFit as exc:
                raise BindError(f"node {node} no longer fits pod {namespace}/{name}: {exc.reason}") from None
            except (OverAllocation, KeyError) as exc:
                raise BindError(f"node {node} no longer fits pod {namespace}/{name}: {exc}") from None
            self.inflight[uid] = holding
            self._identity_bound(uid, f"{namespace}/{name}", holding)

        record = assignment_format.Assignment(uid, node, holding.slices, timefmt.format_time(self.clock()))
        text = record.signed(self.key).to_annotation()
        try:
            self._post_binding(namespace, name, uid, node, text)
        except BindUnknown:
            with self.lock:  # held as committed (and unserved there) until the pod is read (`recheck_unconfirmed`)
                self.inflight.pop(uid, None)
                self._bind_ended.notify_all()
                self._relisted_without.discard(uid)
                self.unconfirmed[uid] = (namespace, name)
            raise
        except BaseException as exc:
            self._rollback(uid, holding, namespace, name)
            if isinstance(exc, BindError):
                raise
            raise BindError(f"bind of pod {namespace}/{name} failed: {exc}") from exc
        with self.lock:
            relisted = uid in self._relisted_without
        # a relist lacked the pod: its DELETED event may be lost with the expired watch, so ask (issue 12, seed 5102)
        gone = self._gone_now(namespace, name, uid) if relisted else False
        with self.lock:
            self._relisted_without.discard(uid)
            if gone:
                self._gone_while_binding.add(uid)
            elif gone is None and uid not in self._gone_while_binding:  # no answer: held, asked again later
                self.unconfirmed[uid] = (namespace, name)
                log.warning("pod %s/%s: a relist lacked it while its bind landed and reading it back failed; its "
                            "slices stay held until it is read again", namespace, name)
            self.inflight.pop(uid, None)
            self._bind_ended.notify_all()
            if uid in self._gone_while_binding:  # deleted while the Binding was in flight: nothing to keep
                self._gone_while_binding.discard(uid)
                self.ledger.discard(uid)
                self._identity_forget(uid)
                return
            # what the API server now holds, so that a lagging watch event cannot undo it
            base = self.pods.get(uid) or pod
            annotations = {**(_meta(base).get("annotations") or {}), resources.ASSIGNMENT: text}
            self.pods[uid] = {
                **base,
                "metadata": {**_meta(base), "annotations": annotations},
                "spec": {**(base.get("spec") or {}), "nodeName": node},
            }
            self.pod_uids[(namespace, name)] = uid
            # The watch left this pod alone while the Binding was in flight. Whatever it delivered meanwhile
            # is settled now against the signed assignment: an inventory flap (Node or GPUNode deleted and
            # back, a GPU gone from status.gpus, a relist) released the slices, so they are held again, or
            # the pod is marked unplaced / quarantined; a pod that finished meanwhile releases them.
            if self.ledger.holding(uid) != holding:
                log.warning("pod %s/%s lost its slices while binding; holding its assignment again", namespace, name)
            self._sync_holding(uid, self.pods[uid])

    def _await_own_bind(self, uid: str) -> None:
        """kube-scheduler's retry of a bind it timed out on, while ours still writes: wait (lock released) up to
        `identity_bind_wait_seconds` for it to end, so the retry is answered by what landed (`_bound_by_us`)."""
        deadline = time.monotonic() + self.identity_bind_wait_seconds
        with self.lock:
            while uid in self.inflight and (remaining := deadline - time.monotonic()) > 0:
                self._bind_ended.wait(remaining)

    def _gone_now(self, namespace: str, name: str, uid: str) -> bool | None:
        """Whether pod `uid` is gone or finished, as the API server says now; None when it did not answer."""
        current = self._read_back(namespace, name)
        if current is None:
            return None
        return not current or objects.pod_uid(current) != uid or objects.pod_is_terminal(current)

    def recheck_unconfirmed(self) -> int:
        """Read again the pods in `unconfirmed`; those gone or finished leave the cache and free their slices
        (no watch event would: they went while a relist replaced the watch). Returns how many are still
        unconfirmed. Called every `RECHECK_SECONDS` by the extender's recheck thread (`extender.main`)."""
        with self.lock:
            pending = dict(self.unconfirmed)
        for uid, (namespace, name) in pending.items():
            current = self._read_back(namespace, name)
            if current is None:
                continue
            with self.lock:
                if self.unconfirmed.pop(uid, None) is None:
                    continue  # seen or gone by the watch meanwhile
                if current and objects.pod_uid(current) == uid and _is_pool_pod(current):
                    self._pod_seen(uid, dict(current))  # what it says is held: its assignment, or nothing
                else:
                    log.info("pod %s/%s is gone: its slices are free", namespace, name)
                    self._pod_gone(uid)
        with self.lock:
            return len(self.unconfirmed)

    def _existing_assignment(self, pod: Mapping[str, Any], node: str) -> Existing | None:
        """DONE or STALE (see `Existing`) for a pod that carries a trusted assignment; None when it carries none."""
        try:
            record = objects.pod_assignment(pod, self.key)
        except AssignmentError as exc:
            raise BindError(f"pod {objects.pod_key(pod)} carries an assignment gpupool cannot trust: {exc}") from None
        if record is None:
            return None
        if record.node != node:
            return Existing.STALE
        uid = objects.pod_uid(pod)
        with self.lock:
            if uid in self.inflight:
                raise BindError(f"a bind of pod {objects.pod_key(pod)} is already in progress")
            held = self.ledger.holding(uid)
            if held is None:
                self._sync_holding(uid, pod)
                held = self.ledger.holding(uid)
                if held is None:
                    raise BindError(
                        f"pod {objects.pod_key(pod)}: its assignment for {node} does not fit the pool "
                        f"({self.problems.get(uid, 'node or GPU not in the pool')})"
                    )
            if held.node != node or held.slices != record.slices:
                raise BindError(f"pod {objects.pod_key(pod)}: the ledger and its assignment disagree")
        return Existing.DONE

    def _post_binding(self, namespace: str, name: str, uid: str, node: str, text: str | None) -> None:
        """Create the Binding; with `text`, the API server writes the assignment in the same update. A 429 (the API
        server's in-flight limit: nothing was written) is tried again twice, 0.2 s and 0.4 s later (issue 16: 31 of
        1,031 binds of a 1,000-node burst were refused so, each costing the pod a scheduling cycle and a backoff)."""
        for attempt in range(3):
            try:
                self._api().bind_pod(namespace, name, uid, node, {resources.ASSIGNMENT: text} if text else None)
                return
            except ApiError as exc:
                if exc.status != 429 or attempt == 2:
                    self._binding_failed(exc, namespace, name, uid, node, text)
                    return
            time.sleep(0.2 * (attempt + 1))

    def _binding_failed(self, exc: ApiError, namespace: str, name: str, uid: str, node: str, text: str | None) -> None:
        """What a refused Binding means: it landed after all (a repeated call, a lost reply), or a BindError."""
        read = self._read_back(namespace, name)
        if read is None and (exc.status == 0 or exc.status >= 500) and text is not None:
            # the reply may be lost with the Binding applied (interleaving seed 9866): releasing the slices on a
            # guess let another pod's assignment take them while this one's landed
            raise BindUnknown(f"the Binding of pod {namespace}/{name} to {node} may have landed ({exc}) and the pod "
                              "cannot be read back; its slices stay held until it is")  # fmt: skip
        current = read or {}
        landed = objects.pod_node_name(current) == node and objects.pod_uid(current) == uid
        if landed and (text is None or objects.pod_assignment_text(current) == text):
            return  # it did land (a repeated call, or the reply was lost)
        if exc.status == 409:
            self.metrics.bind_conflicts.inc()
        raise BindError(f"cannot create the Binding of pod {namespace}/{name} to {node}: {exc}") from None

    def _read_back(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod as the API server has it now: {} when it is gone, None when it could not be read."""
        try:
            return self._api().get_pod(namespace, name)
        except ApiError as exc:
            return {} if exc.status == 404 else None

    def _rollback(self, uid: str, holding: Holding, namespace: str, name: str) -> None:
        """Undo a commit whose Binding did not land: nothing was written, release the slices."""
        self.metrics.bind_rollbacks.inc()
        with self.lock:
            if self.ledger.holding(uid) is holding:
                self.ledger.release(uid)
            self.inflight.pop(uid, None)
            self._bind_ended.notify_all()
            self._gone_while_binding.discard(uid)
            self._relisted_without.discard(uid)
            if self.ledger.holding(uid) is None:  # an inventory flap meanwhile may have marked what never landed
                self.unplaced.discard(uid)
                self.ledger.unquarantine(uid)
            self._identity_forget(uid)
            cached = self.pods.get(uid)
            if cached is not None:  # the watch may have shown it bound meanwhile (the reply lost, then unread)
                self._sync_holding(uid, cached)
                self._identity_seen(uid, cached)  # and so unserved there (interleaving seed 5695)

    # --- identity: one unserved pod per slot count and node (gpupool.identity) ---------------------------
    # The caller holds the lock in every method of this section.

    def _identity_seen(self, uid: str, pod: Mapping[str, Any]) -> None:
        """Track `pod` (from the watch) as unserved on its node, or stop tracking it once served or gone."""
        node = objects.pod_node_name(pod)
        held = self.ledger.holding(uid)
        if uid in self.inflight and (held is None or held.node != node):
            return  # older than our own bind, which tracks the pod (`_identity_bound`)
        # (the bound pod itself may arrive, even served, before our bind finishes: it counts like any other)
        if node and (held is None or held.node != node):
            # not held (its node or a GPU left the pool, or it is quarantined): its signed assignment still says
            # it waits for the kubelet there (issue 12, interleaving seed 1100)
            with contextlib.suppress(GpupoolError):
                held = objects.holding_from_pod(pod, self.key, self._verified_texts())
        if not node or held is None or held.node != node or identity.served(pod, held.slices):
            self._identity_forget(uid)
            return
        on_node = self.unserved.setdefault(node, {})
        if uid in on_node:
            return  # keeps the time its bind recorded
        text = objects.pod_assignment_text(pod) or ""
        try:
            at = assignment_format.parse(text).at
        except AssignmentError:
            at = ""
        unserved = identity.Unserved(objects.pod_key(pod), identity.slot_counts(held.slices), identity.bound_at(at))
        on_node[uid] = unserved
        self._unserved_node[uid] = node
        self._holdbacks.add(uid, node, unserved)

    def _identity_bound(self, uid: str, key: str, holding: Holding) -> None:
        """A bind just committed `holding`: the pod is unserved on its node from now on."""
        self._identity_forget(uid)
        self._identity_unexpect(uid)  # the rule itself holds its node back now
        unserved = identity.Unserved(key, identity.slot_counts(holding.slices), self.clock())
        self.unserved.setdefault(holding.node, {})[uid] = unserved
        self._unserved_node[uid] = holding.node
        self._holdbacks.add(uid, holding.node, unserved)

    def _identity_forget(self, uid: str) -> None:
        node = self._unserved_node.pop(uid, None)
        self._overdue.discard(uid)
        self._holdbacks.remove(uid)
        if node is not None:
            _drop(self.unserved, node, uid)
            self._identity_changed.notify_all()

    def _identity_wait(self, request: PodRequest, node: str) -> str | None:
        """Why `request` may not bind to `node` now (an unserved pod there shares a slot count), or None."""
        on_node = self.unserved.get(node)
        wait_s = self.identity_wait_seconds
        if not on_node or wait_s <= 0:
            return None
        now = self.clock()
        self._identity_expire(now)
        hit = identity.blocker(on_node.values(), identity.request_slot_counts(request), now, wait_s)
        return identity.wait_reason(*hit) if hit is not None else None

    def _identity_expire(self, now: float) -> None:
        """Report the unserved pods that turned overdue (once each); they stop holding others back."""
        for uid, node, pod in self._holdbacks.expire(now, self.identity_wait_seconds):
            if uid in self._overdue:
                continue
            self._overdue.add(uid)
            self.metrics.unserved_overdue.inc()
            log.warning(
                "pod %s was bound to node %s %.0f s ago and the kubelet has not taken its devices yet; it no "
                "longer holds back pods with slot counts %s there (if the kubelet admits them first, they may "
                "swap slices with it)",
                pod.pod,
                node,
                now - pod.bound_at,
                sorted(pod.slot_counts),
            )

    def _identity_held(self, request: PodRequest, nodes: list[str] | None) -> set[str]:
        """Which of `nodes` (None: of all) `request` must wait on (`_identity_wait` is not None there), by
        `identity.Holdbacks`: a union of a few sets, not a check per node."""
        if not self.unserved or self.identity_wait_seconds <= 0:
            return set()
        self._identity_expire(self.clock())
        blocked = self._holdbacks.nodes(identity.request_slot_counts(request))
        return blocked.intersection(nodes) if blocked and nodes is not None else blocked

    def _identity_filter(self, request: PodRequest, answer: FilterResult, held: set[str]) -> None:
        """Move the passing nodes `held` (`_identity_held`) to the unresolvable ones, with the rule's reason
        (preemption cannot help: the wait ends by itself)."""
        if not held:
            return
        passing = []
        for node in answer.passing:
            reason = self._identity_wait(request, node) if node in held else None
            if reason is None:
                passing.append(node)
            else:
                answer.unresolvable[node] = reason
        answer.passing = passing

    def _identity_expect(
        self, uid: str, request: PodRequest, nodes: list[str], scores: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """Steer a burst of same-size pods to distinct nodes (`identity.steer`, over arrays): `scores` (0..10, of
        `nodes`) as steered, and this answer's chosen node marked as where `uid` is about to bind, for
        `identity_expect_seconds` or until its bind commits or fails."""
        counts = identity.request_slot_counts(request)
        self._identity_unexpect(uid)
        if self.identity_expect_seconds <= 0 or self.identity_wait_seconds <= 0 or not counts or not uid:
            return scores
        now = time.monotonic()
        for other in [u for u, (_, e) in self._expected_at.items() if e.until <= now]:
            self._identity_unexpect(other)
        # nodes where a bind committed since this pod's filter ran (the filter would refuse them now)
        blocked = self._identity_held(request, None)
        marked = identity.steer_marked(self.expected, counts, now, blocked)
        out, chosen = identity.steer_scores(scores, self._among(nodes, marked), extender_score(0), counts)
        if chosen is not None:
            mark = identity.Expected(counts, now + self.identity_expect_seconds)
            self.expected.setdefault(nodes[chosen], {})[uid] = mark
            self._expected_at[uid] = (nodes[chosen], mark)
        return out

    def _among(self, nodes: list[str], few: set[str]) -> npt.NDArray[np.bool_]:
        """Which of `nodes` are in `few`, by the capacity index's rows (the list's are remembered: no lookup per
        name); a node not in the pool is in none."""
        if not few:
            return np.zeros(len(nodes), dtype=bool)
        index = self.ledger.capacity_index()
        wanted = [row for row in index.rows(list(few)) if row >= 0]
        return np.isin(index.lookup(nodes), wanted)

    def _identity_unexpect(self, uid: str) -> None:
        node, _ = self._expected_at.pop(uid, (None, None))
        if node is not None:
            _drop(self.expected, node, uid)

    def _identity_check(self, request: PodRequest, node: str, key: str) -> None:
        """Bind's re-check of the filter's rule (the node may have changed since): waits up to
        `identity_bind_wait_seconds` for it to clear (the lock is released while waiting), then refuses."""
        deadline = time.monotonic() + self.identity_bind_wait_seconds
        while (reason := self._identity_wait(request, node)) is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BindError(f"node {node} cannot take pod {key} yet: {reason}")
            self._identity_changed.wait(remaining)

    # --- preempt -----------------------------------------------------------------------------------

    def preempt(
        self, pod: Mapping[str, Any], candidates: Mapping[str, tuple[list[str], int]]
    ) -> dict[str, tuple[list[str], int]]:
        """Prune kube-scheduler's preemption candidates to what the pool model says helps.

        For each candidate node, the victims offered by kube-scheduler are simulated away on a
        planning overlay of the ledger (`gpupool.preemption.choose_victims`). A node where the pod still
        does not fit is dropped. Otherwise the answer keeps every offered victim that holds
        no slices (kube-scheduler chose it for its own resources) and the fewest slice holders
        whose release the pod needs, chosen in the model's victim order (best-effort, lower
        priority, most recently bound first). Returns node -> (victims, NumPDBViolations); an
        empty map declines preemption.
        """
        try:
            request = self._request(pod)
        except InvalidRequest:
            return {}
        out: dict[str, tuple[list[str], int]] = {}
        if not request.containers:
            return dict(candidates)
        with self.lock:
            if not self.ready:
                return {}
            # the what-if runs here, never on the live ledger: an overlay clones only the nodes it changes (a full
            # copy held this lock 2.8 s per call at 5,000 nodes); valid while the lock keeps the ledger still
            copy = self.ledger.overlay()
            placer = self.placer.over(copy)
            for node, (victims, pdb) in candidates.items():
                kept = self._victims_on(copy, placer, request, node, victims)
                self.metrics.preemptions.labels("kept" if kept is not None else "dropped").inc()
                if kept is not None:
                    out[node] = (kept, min(pdb, len(kept)))
        return out

    def _victims_on(
        self, copy: Ledger, placer: Placer, request: PodRequest, node: str, victims: list[str]
    ) -> list[str] | None:
        """Translate kube-scheduler's victims to the model's (`gpupool.preemption.choose_victims`) and back."""
        offered = [v for u in dict.fromkeys(victims) if (v := self._victim(u)) is not None]
        chosen = choose_victims(copy, placer, request, node, offered)
        if chosen is None:
            return None
        needed = {v.uid for v in chosen}
        return [u for u in victims if self.ledger.holding(u) is None or u in needed]

    def _victim(self, uid: str) -> Victim | None:
        holding = self.ledger.holding(uid)
        if holding is None:
            return None
        pod = self.pods.get(uid) or {}
        record = objects.pod_assignment_text(pod)
        admitted = 0.0
        if record is not None:
            with contextlib.suppress(AssignmentError, ValueError):
                admitted = assignment_format.parse(record).bound_at()
        priority = int((pod.get("spec") or {}).get("priority") or 0)
        return Victim(uid, objects.pod_key(pod) if pod else uid, "", priority, holding.qos, admitted, holding,
                      Resources(holding.compute_units, holding.memory_units))  # fmt: skip

    # --- debug -------------------------------------------------------------------------------------

    def cache_stats(self) -> CacheStats:
        """What the metrics scrape reads of the cache, taken at once under the lock."""
        with self.lock:
            ledger = self.ledger
            gpus = tuple(
                GPUAllocation(g.node, g.uuid, g.index, g.used_compute, g.used_memory, g.healthy and not g.disabled)
                for n in ledger.node_names() for g in ledger.gpus_of(n)
            )  # fmt: skip
            return CacheStats(
                self.ready, len(ledger.node_names()), sum(1 for _ in ledger.holdings()), len(self.problems),
                len(self.unplaced), gpus,
            )  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            snap = self.ledger.snapshot()
            snap["generation"] = self.ledger.generation
            snap["inflight"] = sorted(self.inflight)
            return snap

    def ledger_snapshot(self) -> dict[str, object]:
        with self.lock:
            return self.ledger.snapshot()


def _drop(table: dict[str, dict[str, Any]], node: str, uid: str) -> None:
    """Forget `uid` in a node -> uid -> value table (`PoolService.unserved`, `.expected`), and the node once empty."""
    on_node = table.get(node)
    if on_node is not None:
        on_node.pop(uid, None)
        if not on_node:
            del table[node]
