"""The controller's state and its reconcile cycle: Kubernetes objects in, `Kube` writes out.

Thin by design: objects are translated with `gpupool.objects` / `gpupool.resources` /
`gpupool.objects.queue_spec_from_object`, every decision is `QueueManager.schedule()` or
`gpupool.preemption.find_preemption`, and the results are written through `controller.kube.Kube`.

Garbage and safety decisions (DESIGN.md §7):
* admitted pods that never bind: their RESERVED holding is released after `reservation_ttl_seconds`
  (the pod stays admitted: a gate cannot be re-added);
* pods whose assignment names a GPU that turned Unhealthy, or a GPUNode gone for `gpunode_gone_grace_seconds`
  (300: its agent republishes a deleted GPUNode within a heartbeat, and a `kubectl delete gpunodes --all` or a
  CRD re-install must not evict every GPU pod), are evicted (Event `GPUUnhealthy` / `GPUNodeGone`) when
  `unhealthy_gpu_action=evict` (default), so their owners recreate them on healthy GPUs; `keep` only drops
  them from the ledger. GPUs in `spec.disabledGPUs`
  are cordoned: nothing new lands there, running pods keep their slices (drain them by hand).
* nominations expire after `nomination_ttl_seconds`; the `gpupool.io/nominated` annotation is removed.
* the leader's cycle runs on events (`run_cycles`): a new waiting pod, a pod that finished or was deleted, a
  GPUQueue, namespace or Node label change, a GPUNode whose inventory changed wake it, a burst coalesced into
  one cycle (`admission_coalesce_seconds`); `admission_interval_seconds` is only the backstop (expiries,
  retries of failed writes).
* a pod whose assignment cannot be trusted (forged, unreadable, unknown key id) is quarantined: the
  slices it claims (read unverified, only when bound to the node they name) count as held as far as
  capacity allows, the leader posts one Warning Event `GPUPoolQuarantined` per reason, and
  `gpupool_controller_quarantined_pods` and `gpupool status` show it; nothing else stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from controller import metrics, status, workloads
from controller.admission import AdmissionConfig, PoolLimits
from controller.kube import Kube
from controller.settings import ControllerSettings
from controller.writeslots import WriteSlots
from gpupool import groups, objects, quota, resources, timefmt
from gpupool import resize as rz
from gpupool.assignment import Keys, keyset
from gpupool.errors import GpupoolError, InvalidRequest
from gpupool.inventory import NodeInfo
from gpupool.ledger import Holding
from gpupool.pool import build_pool
from gpupool.preemption import PreemptionPlan, find_preemption, no_preemption_reason
from gpupool.queues import IMPLICIT_QUEUE, Admission, QueueManager
from gpupool.quota import Resources
from gpupool.request import PodRequest

log = logging.getLogger("gpupool.controller")

T = TypeVar("T")


ALIAS_EVENT_REASON = "AliasResourceNotRewritten"
QUARANTINE_EVENT_REASON = "GPUPoolQuarantined"
#: the cluster-scoped kinds the controller lists and watches besides pods (`Controller.on_list`, `on_watch_event`)
WATCHED = ("namespaces", "nodes", objects.GPUQUEUE_PLURAL, objects.GPUNODE_PLURAL)

#: pods read per hold of the lock when many are read at once (`Controller.on_keys_changed`, `on_pod_list`): the
#: event loop's cycles and webhooks wait no longer than that for the lock
PODS_PER_HOLD = 500
#: the initial lists `rebuild` makes; the controller is ready once all of them completed
SYNCED_LISTS = ("namespaces", "nodes", "gpuqueues", "gpunodes", "pods")


def alias_message(pod: Mapping[str, Any]) -> str:
    """Which fields carry an alias resource, why that happened and what to write instead."""
    fields = resources.alias_names_in(pod)
    names = sorted({f.rsplit("[", 1)[-1].rstrip("]") for f in fields})
    fixes = ", ".join(f"{n} -> {resources.canonical_name(n)}" for n in names)
    return (
        f"{', '.join(fields)} still carries the alias resource name (the gpupool admission webhook was "
        "bypassed: namespace labelled gpupool.io/webhook=ignore, or the webhook is not installed), so no "
        f"node offers it and the pod never gets a GPU; write the canonical names instead ({fixes}) and "
        "recreate the pod"
    )


class Controller:
    """The controller's cache of pods, GPUNodes and queues, fed by the `on_*` handlers on every replica,
    and the leader's `cycle()`, which writes the model's decisions through `Kube`."""

    def __init__(self, settings: ControllerSettings, kube: Kube | None, key: Keys) -> None:
        self.settings = settings
        self.kube = kube
        self.key = key
        pool = build_pool(settings.pool_config())  # the extender's pool, from the same settings
        self.ledger = pool.ledger
        self.placer = pool.placer
        self.manager = QueueManager(
            self.ledger,
            self.placer,
            require_queue=settings.require_queue,
            reservation_ttl=settings.reservation_ttl_seconds,
            nomination_ttl=settings.nomination_ttl_seconds,
            group_bind_ttl=settings.group_bind_timeout_seconds,
        )
        self.admission = AdmissionConfig(frozenset(settings.system_usernames), settings.allow_privileged)
        self.pods: dict[str, dict[str, Any]] = {}  # uid -> last seen pod (gpupool pods only)
        self.gpunodes: dict[str, dict[str, Any]] = {}
        self._limits: PoolLimits | None = None  # `pool_limits`, until a GPUNode's inventory changes
        self.ready = False
        self.synced = dict.fromkeys(SYNCED_LISTS, False)
        #: quarantined pods (untrusted assignment): uid -> why; `_quarantine_posted` what the Event said
        self.quarantined: dict[str, str] = {}
        self._quarantine_posted: dict[str, str] = {}
        self.is_leader = not settings.leader_election
        self.problems: dict[str, str] = {}
        self._events: dict[str, str] = {}  # uid -> last message posted
        #: the watch handlers (`on_*`, coroutines on kopf's loop), `cycle` and any other thread take this lock around
        #: what reads or changes the model (tests/controller/test_handler_threads.py)
        self.lock = threading.RLock()
        self._queue_status: dict[str, dict[str, Any]] = {}
        #: GPUNode summaries as the API server holds them: as this replica last wrote them, or as a watch event showed
        self._node_status: dict[str, dict[str, Any]] = {}
        #: GPUNode statuses as last computed, at which ledger `change_mark` (rows of the nodes logged since are
        #: computed again); those that differ from what was written, with when each first did; when each node's
        #: status was last written; the write budget's tokens and when they were counted (`write_status`)
        self._node_rows: dict[str, dict[str, Any]] = {}
        #: the series this replica exports: node -> its GPUs' uuids (`gpupool_gpu_allocated`), and the queues
        #: (`gpupool_queue_*`); dropped when the object goes and when the replica stops leading, so a deleted
        #: GPUNode or GPUQueue, or a former leader's last figures, never linger on a dashboard
        self._gpu_series: dict[str, set[str]] = {}
        self._queue_series: set[str] = set()
        self._node_rows_mark: int | None = None
        self._node_dirty: dict[str, float] = {}
        self._node_recheck: set[str] = set()  # nodes whose stored status a watch event changed
        #: each GPUNode's `objects.gpunode_inventory_key` as last read (status-only events are not parsed again)
        self._gpunode_keys: dict[str, tuple[Any, ...]] = {}
        self._node_written_at: dict[str, float] = {}
        self._status_tokens = 0.0
        self._status_tokens_at: float | None = None
        self._refused: dict[str, set[str]] = {}  # preemptor -> victims whose eviction was refused
        #: preemptor -> ((ledger generation, manager version, refused), plan, why none): the search is not run
        #: again for a head whose inputs did not change (docs/e2e.md "Controller at scale")
        self._searched: dict[str, tuple[tuple[int, int, frozenset[str]], PreemptionPlan | None, str | None]] = {}
        self._evicted_for_health: set[str] = set()
        #: GPUNode name -> when `_health_gc` first found a verified assignment naming it while it was gone
        self._gpunode_gone_since: dict[str, float] = {}
        #: pods still carrying an alias resource (the webhook was bypassed): uid -> pod; warned once each
        self._alias_pods: dict[str, dict[str, Any]] = {}
        self._alias_warned: set[str] = set()
        #: owners read to size pod groups (controller.workloads), and the owner each gpupool pod waits on
        self.owners = workloads.OwnerCache()
        self._owner_refs: dict[str, workloads.Ref] = {}
        #: the reverse index, and its gated pods: `read_owners` visits owners, not every pod, each cycle
        self._ref_users: dict[workloads.Ref, set[str]] = {}
        self._ref_gated: dict[workloads.Ref, set[str]] = {}
        #: pods carrying a resize request or outcome (`_resize_quota` and `_resize_events` visit these, not every pod)
        self._resizing: set[str] = set()
        #: resize outcomes already posted as Events: uid -> (seq, state)
        self._resize_posted: dict[str, tuple[int, str]] = {}
        #: called (from any thread; the watch handlers call it on the loop) when an admission or a
        #: resize may have become possible; `run_cycles` sets it (None before: the first cycle decides anyway)
        self.wake: Callable[[], object] | None = None
        #: how long the last `QueueManager.schedule` took (CPU-bound; the API writes after it are not counted)
        self.decision_seconds = 0.0
        #: the Admitted conditions `run_cycles` writes behind its cycles (`cycle(trail=True)`): uid -> the task
        #: writing it, so a later write about the same pod waits for it
        self._trailing: dict[str, asyncio.Task[None]] = {}
        #: every API write of the cycles and behind them: `api_write_concurrency` at once, the cycle's first
        self._slots = WriteSlots(settings.api_write_concurrency)
        self._node_infos: dict[str, NodeInfo] = {}
        #: node -> pods whose assignment (or claim) names it: held again when the node (or a GPU) comes back
        self._on_node: dict[str, set[str]] = {}
        self._nodes_of: dict[str, frozenset[str]] = {}  # uid -> the nodes its assignment names
        #: uid -> the pod's verified assignment as `on_pod` last read it (`_health_gc` checks these every cycle
        #: instead of verifying every pod's signature again)
        self._verified: dict[str, Holding] = {}
        #: uid -> (`resources.pod_request_key`, its request, its verified assignment) as `on_pod` last read them: an
        #: event that changed neither (status, labels, node) is not parsed and verified again. One entry per cached
        #: pod, dropped with it; emptied when the signing keys change
        self._parsed: dict[str, tuple[tuple[Any, ...], PodRequest, Holding | None]] = {}

    def nudge(self) -> None:
        """Something changed that may let a pod be admitted: run the cycle soon (coalesced; `run_cycles`)."""
        if self.wake is not None:
            self.wake()

    async def run_cycles(self, stop: asyncio.Event) -> None:
        """The cycle loop: on `nudge` (after `admission_coalesce_seconds`, or as long as the last decision pass
        took if that is longer, so a burst is one cycle and a stream of events leaves the leader's CPU at
        least half the time for its watches), else every `admission_interval_seconds` (the backstop), until
        `stop`."""
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        self.wake = lambda: loop.call_soon_threadsafe(woken.set)
        try:
            await self._cycle_loop(stop, woken)
        finally:
            await self.drain_trailing()

    async def _cycle_loop(self, stop: asyncio.Event, woken: asyncio.Event) -> None:
        while not stop.is_set():
            woken.clear()
            try:
                await self.cycle(trail=True)
            except Exception:
                log.exception("admission cycle failed")
            waiter = asyncio.ensure_future(woken.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({waiter, stopper}, timeout=self.settings.admission_interval_seconds,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            finally:
                for task in (waiter, stopper):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            gap = max(self.settings.admission_coalesce_seconds, self.decision_seconds)
            if woken.is_set() and not stop.is_set() and gap > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=gap)

    # --- pool limits for admission -------------------------------------------------------------------

    def pool_limits(self) -> PoolLimits:
        """The validating webhook's bounds, computed again only when a GPUNode's inventory changed: every GPU of
        the pool is visited (40,000 at 5,000 nodes), and a burst calls the webhook once per pod (issue 16)."""
        limits = self._limits
        if limits is None:
            limits = self._limits = PoolLimits.of(self.ledger)
        return limits

    def queue_problem(self, namespace: str, named: str) -> str | None:
        """Why a pod of `namespace` may not name GPUQueue `named` (the validating webhook refuses it)."""
        return self.manager.membership_problem(namespace, named)

    def group_problem(self, pod: Mapping[str, Any]) -> tuple[str, str] | None:
        """(field, why) when the pod joins a pod group (`gpupool.io/pod-group`) whose members ask for
        another min-members, queue or priority (the validating webhook refuses it)."""
        meta = pod.get("metadata") or {}
        namespace, annotations = str(meta.get("namespace") or ""), meta.get("annotations") or {}
        try:
            spec = groups.from_annotations(namespace, annotations)
        except GpupoolError:
            return None  # refused by `validate` already, naming the field
        if spec is None:
            return None
        queue, _ = self.manager.resolve_queue(namespace, annotations.get(resources.QUEUE))
        priority = (pod.get("spec") or {}).get("priority")
        return groups.joining_problem(spec, queue, priority if isinstance(priority, int) else 0,
                                      self.manager.pods.values())  # fmt: skip

    def queue_node_selector(self, pod: Mapping[str, Any]) -> dict[str, str]:
        meta = pod.get("metadata") or {}
        named = (meta.get("annotations") or {}).get(resources.QUEUE)
        name, _ = self.manager.resolve_queue(str(meta.get("namespace") or ""), named)
        spec = self.manager.queue(name) if name else None
        return spec.node_selector_dict if spec is not None else {}

    def holding_of(self, pod: Mapping[str, Any]) -> Holding | None:
        """The pod's assignment; verified with the key (an empty key: read-only tools, unverified)."""
        return objects.holding_from_pod(pod, self.key or None)

    # --- cache updates (every replica) ---------------------------------------------------------------

    async def rebuild(self) -> None:
        """List everything once and load it; ready (webhook bounds, cycles) only after this."""
        assert self.kube is not None
        for ns in await self.kube.list_namespaces():
            self.on_namespace("ADDED", ns)
        self.synced["namespaces"] = True
        for node in await self.kube.list_nodes():
            self.on_node("ADDED", node)
        self.synced["nodes"] = True
        for obj in await self.kube.list_custom(objects.GPUQUEUE_PLURAL):
            self.on_queue("ADDED", obj)
        self.synced["gpuqueues"] = True
        for obj in await self.kube.list_custom(objects.GPUNODE_PLURAL):
            self.on_gpunode("ADDED", obj)
        self.synced["gpunodes"] = True
        self.on_pod_list(await self.kube.list_pods())
        metrics.READY.set(1)
        log.info("rebuilt: %d GPU nodes, %d gpupool pods, %d queues; problems: %s",
                 len(self.gpunodes), len(self.pods), len(self.manager.queues), self.problems or "none")  # fmt: skip

    def on_pod_list(self, items: Iterable[Mapping[str, Any]]) -> list[str]:
        """A fresh list of every pod (the pod watch's relist after 410 Gone or a broken stream, `controller.handlers`):
        it replaces the cache. Cached pods the list lacks were deleted while no watch looked (no DELETED event will
        come: found by bench/soak.py), so they go first, and the pods that were held only in part beside them
        (their GPUs looked taken) are then held whole by their listed version. Returns the uids forgotten."""
        listed = {objects.pod_uid(p): p for p in items}
        with self.lock:
            gone = [uid for uid in self.pods if uid not in listed]
            for uid in gone:
                log.warning("forgot pod %s (%s): deleted while the watch was not looking",
                            objects.pod_key(self.pods[uid]), uid)  # fmt: skip
                self.on_pod("DELETED", self.pods[uid])
        pods = list(listed.values())
        for start in range(0, len(pods), PODS_PER_HOLD):
            with self.lock:
                for pod in pods[start : start + PODS_PER_HOLD]:
                    self.on_pod_event("MODIFIED", pod)
        with self.lock:
            self.synced["pods"] = True
            self.ready = all(self.synced.values())
        return gone

    def _watched(self, resource: str) -> tuple[Callable[[str, Mapping[str, Any]], None], Callable[[], set[str]]]:
        """The handler of one cluster-scoped kind the controller watches (`WATCHED`), and the names it holds."""
        if resource == "namespaces":
            return self.on_namespace, lambda: set(self.manager.namespace_labels)
        if resource == "nodes":
            return self.on_node, lambda: set(self.manager.node_labels)
        if resource == objects.GPUQUEUE_PLURAL:
            return self.on_queue, lambda: set(self.manager.queues) | _problem_names(self.problems, "gpuqueue")
        if resource == objects.GPUNODE_PLURAL:
            return self.on_gpunode, lambda: set(self.gpunodes) | set(self.ledger.node_names())
        raise ValueError(f"not a watched kind: {resource!r} (one of {', '.join(WATCHED)})")

    def on_list(self, resource: str, items: Iterable[Mapping[str, Any]]) -> list[str]:
        """A fresh list of one watched kind (`WATCHED`: the relist after its watch broke or expired,
        `controller.handlers`): it replaces what the controller holds of it. Objects the list lacks were deleted
        while no watch looked and no DELETED event will come (kopf, which watched these kinds before, never told:
        a GPUQueue deleted during an API server restart kept admitting, tests/e2e/gpupool/test_restarts.py), so
        they are forgotten first. Returns the names forgotten."""
        handler, held = self._watched(resource)
        listed = {str((o.get("metadata") or {}).get("name") or ""): o for o in items}
        with self.lock:
            gone = sorted(held() - listed.keys())
            for name in gone:
                log.warning("forgot %s %s: deleted while the watch was not looking", resource, name)
                self._on_watched(handler, resource, "DELETED", {"metadata": {"name": name}})
            for obj in listed.values():
                self._on_watched(handler, resource, "MODIFIED", obj)
        return gone

    def on_watch_event(self, resource: str, event: str, obj: Mapping[str, Any]) -> None:
        """One watch event of a watched kind (`WATCHED`), on its watch's thread, under the lock."""
        handler, _ = self._watched(resource)
        with self.lock:
            self._on_watched(handler, resource, event, obj)

    @staticmethod
    def _on_watched(
        handler: Callable[[str, Mapping[str, Any]], None], resource: str, event: str, obj: Mapping[str, Any]
    ) -> None:
        """An object a handler fails on is logged and left (that object's problem): its watch goes on instead of
        listing the kind again and failing on it again."""
        try:
            handler(event, obj)
        except Exception:
            log.exception("%s %s: its %s event failed", resource, (obj.get("metadata") or {}).get("name"), event)

    def on_pod_event(self, event: str, pod: Mapping[str, Any]) -> None:
        """A pod watch event, on the pod watch's thread: `on_pod` under the lock. A pod it fails on is logged and
        left (one bad pod is that pod's problem): the watch goes on instead of relisting the cluster."""
        with self.lock:
            try:
                self.on_pod(event, pod)
            except Exception:
                log.exception("pod %s: its %s event failed", objects.pod_key(pod), event)

    def readiness(self) -> dict[str, Any]:
        """What /readyz answers: ready once every initial list completed; quarantined pods never unready it."""
        return {
            "ready": self.ready,
            "synced": dict(self.synced),
            "leader": self.is_leader,
            "keys": self._key_ids(),
            "quarantined": {self._key(u): why for u, why in sorted(self.quarantined.items())},
        }

    def _key_ids(self) -> dict[str, Any]:
        if not self.key:
            return {}
        try:
            current = keyset(self.key)
        except GpupoolError as exc:
            return {"error": str(exc)}
        return {"signing": current.signing, "verification": list(current.kids)}

    def on_keys_changed(self) -> None:
        """The signing keys changed: every cached pod's assignment is read again now, not on its next event (a
        running pod may have none): a retired key's signatures stop being trusted at once (charts/gpupool/README.md
        "Rotating the signing key": quarantined), a new verification key may trust a quarantined pod.
        `PODS_PER_HOLD` pods per hold of the lock; a pod an event read meanwhile (with the new keys) is skipped.
        Called off the event loop (`handlers._keys_loop`): 40,000 pods take seconds."""
        with self.lock:
            self._parsed.clear()
            uids = sorted(self.pods.keys() | self.quarantined.keys())
        for start in range(0, len(uids), PODS_PER_HOLD):
            with self.lock:
                for uid in uids[start : start + PODS_PER_HOLD]:
                    pod = self.pods.get(uid)
                    if pod is not None and uid not in self._parsed:
                        self.on_pod("MODIFIED", pod)

    def on_namespace(self, event: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name"))
        if event == "DELETED":
            self.manager.remove_namespace(name)
        elif self.manager.namespace_labels.get(name) != (meta.get("labels") or {}):
            self.manager.set_namespace(name, meta.get("labels") or {})
            self.nudge()

    def on_node(self, event: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name"))
        if event == "DELETED":
            self.manager.remove_node_labels(name)
        elif self.manager.node_labels.get(name) != (meta.get("labels") or {}):
            self.manager.set_node_labels(name, meta.get("labels") or {})
            self.nudge()

    def on_queue(self, event: str, obj: Mapping[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name"))
        if event == "DELETED":
            self.manager.remove_queue(name)
            self._queue_status.pop(name, None)
            self.problems.pop(f"gpuqueue/{name}", None)
            self.nudge()
            return
        try:
            spec = objects.queue_spec_from_object(obj)
            if self.manager.queues.get(name) != spec:
                self.manager.set_queue(spec)
                self.nudge()
            self.problems.pop(f"gpuqueue/{name}", None)
        except GpupoolError as exc:
            self.problems[f"gpuqueue/{name}"] = str(exc)
            log.warning("%s", exc)

    def on_gpunode(self, event: str, obj: Mapping[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name"))
        if event == "DELETED":
            self.gpunodes.pop(name, None)
            self.problems.pop(f"gpunode/{name}", None)
            self._drop_series(name)
            self.ledger.remove_node(name)
            self._limits = None
            self._node_status.pop(name, None)
            self._node_written_at.pop(name, None)
            self._node_infos.pop(name, None)
            self._gpunode_keys.pop(name, None)
            return
        self.gpunodes[name] = dict(obj)
        stored = status.stored_node_status(obj)
        if self._node_status.get(name) != stored:  # what the API server holds (a new leader writes only what differs)
            self._node_status[name] = stored
            self._node_recheck.add(name)
        key = objects.gpunode_inventory_key(obj)
        if self._gpunode_keys.get(name) == key:
            return  # only the rest of its status changed (a summary written, a heartbeat): the pool is as it was
        self._gpunode_keys[name] = key
        try:
            info = objects.node_info_from_gpunode(obj)
        except GpupoolError as exc:
            self.problems[f"gpunode/{name}"] = str(exc)
            return
        self.problems.pop(f"gpunode/{name}", None)
        changed = self._node_infos.get(name) != info  # the inventory as last parsed (status-only writes: equal)
        self._node_infos[name] = info
        again = self.ledger.upsert_node(info)
        if changed:  # new, back, or its GPUs changed: the pods bound there are held again (issue 12), and capacity
            again += sorted(self._on_node.get(name, ()))  # may have come: run the admission cycle soon
            self._limits = None
            self.nudge()
        for uid in dict.fromkeys(again):
            pod = self.pods.get(uid)
            if pod is not None:
                self.on_pod("MODIFIED", pod)

    def _index_nodes(self, uid: str, holding: Holding | None) -> None:
        """Remember which nodes `uid`'s assignment names (none: forget it)."""
        nodes = frozenset({holding.node, *(s.node for s in holding.slices)}) if holding is not None else frozenset()
        old = self._nodes_of.pop(uid, frozenset())
        if nodes == old:
            if nodes:
                self._nodes_of[uid] = nodes
            return
        for n in old - nodes:
            on = self._on_node.get(n)
            if on is not None:
                on.discard(uid)
                if not on:
                    del self._on_node[n]
        for n in nodes:
            self._on_node.setdefault(n, set()).add(uid)
        if nodes:
            self._nodes_of[uid] = nodes

    def on_pod(self, event: str, pod: Mapping[str, Any]) -> None:
        uid = objects.pod_uid(pod)
        if event == "DELETED" or objects.pod_is_terminal(pod):
            self._alias_pods.pop(uid, None)
            self._alias_warned.discard(uid)
            self._unquarantine(uid)
            self._resize_posted.pop(uid, None)
            self._index_nodes(uid, None)
            self._owner_ref(uid, None)
            self._verified.pop(uid, None)
            self._parsed.pop(uid, None)
            self._resizing.discard(uid)
            if uid in self.pods or uid in self.manager.pods:
                self.pods.pop(uid, None)
                self.manager.remove_pod(uid)
                self._events.pop(uid, None)
                self.nudge()  # its slices and quota are free (or the line it waited in is shorter)
            return
        known = self._parsed.get(uid)
        key = resources.pod_request_key(pod) if known is not None else None
        if known is not None and known[0] == key:  # what it asks and its assignment as last read (status events)
            request, assigned = known[1], known[2]
        else:
            self._parsed.pop(uid, None)
            if not resources.mentions_gpupool(pod):
                return
            if resources.alias_names_in(pod):
                if uid not in self._alias_warned:
                    self._alias_pods[uid] = dict(pod)  # warned by the next cycle (the leader posts Events)
            else:
                self._alias_pods.pop(uid, None)
            try:
                request = resources.parse_pod(pod)
            except InvalidRequest as exc:
                self.problems[f"pod/{objects.pod_key(pod)}"] = str(exc)
                return
            if not request.containers:
                return
            assigned = None
            try:
                assigned = self.holding_of(pod)
                if assigned is not None:
                    self._verified[uid] = assigned
                else:
                    self._verified.pop(uid, None)
                self._unquarantine(uid)
                self.problems.pop(f"pod/{objects.pod_key(pod)}", None)
                self._parsed[uid] = (resources.pod_request_key(pod) if key is None else key, request, assigned)
            except GpupoolError as exc:
                self.problems[f"pod/{objects.pod_key(pod)}"] = str(exc)
                self._verified.pop(uid, None)
                assigned = self._claim(pod)
                if self.quarantined.get(uid) != str(exc):
                    log.error("pod %s quarantined (its claimed slices count as held): %s", objects.pod_key(pod), exc)
                self.quarantined[uid] = str(exc)
                metrics.QUARANTINED.set(len(self.quarantined))
        self._index_nodes(uid, assigned)
        if assigned is not None and not self.ledger.has_node(assigned.node):
            assigned = None
        self.pods[uid] = dict(pod)
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        if rz.REQUEST in annotations or rz.STATUS in annotations:
            self._resizing.add(uid)
        else:
            self._resizing.discard(uid)
        entry = objects.pod_entry(pod, request, assigned)
        entry.group = self._group(uid, pod)
        entry.resize_growth = rz.reserved_growth(pod, assigned.slices if assigned is not None else None)
        new = uid not in self.manager.pods
        self.manager.upsert_pod(entry)
        if (new and entry.gated) or (assigned is not None and rz.awaits_quota(pod, assigned.slices)):
            self.nudge()  # a new pod waits for admission, or a growth for its quota

    def _group(self, uid: str, pod: Mapping[str, Any], now: float | None = None) -> groups.GroupSpec | None:
        """The pod's group (controller.workloads): from its annotations and its owner, as last read; a pod
        whose owner is not read yet waits for the next cycle's read."""
        found = workloads.owner_of(pod)
        if isinstance(found, workloads.Ref):
            self._owner_ref(uid, found, objects.pod_gated(pod))
            return workloads.resolved_group(pod, found, self.owners.known(found))
        self._owner_ref(uid, None)
        return workloads.resolved_group(pod, found, None)

    def _owner_ref(self, uid: str, ref: workloads.Ref | None, gated: bool = False) -> None:
        """Index pod `uid` under the owner it waits on (None: under none)."""
        old = self._owner_refs.pop(uid, None)
        if old is not None:
            for index in (self._ref_users, self._ref_gated):
                members = index.get(old)
                if members is not None:
                    members.discard(uid)
                    if not members:
                        del index[old]
        if ref is not None:
            self._owner_refs[uid] = ref
            self._ref_users.setdefault(ref, set()).add(uid)
            if gated:
                self._ref_gated.setdefault(ref, set()).add(uid)

    async def read_owners(self, now: float) -> int:
        """Read the owners that are unknown, or stale while a pod of theirs waits (one read per owner), then
        give each of their pods its group again. Returns the reads made. Visits owners, not pods."""
        assert self.kube is not None
        users: dict[workloads.Ref, list[str]] = {}
        stale: set[workloads.Ref] = set()
        with self.lock:
            for ref in self._ref_users:
                if self.owners.known(ref) is None or (ref in self._ref_gated and self.owners.get(ref, now) is None):
                    stale.add(ref)
            for ref in stale:
                users[ref] = sorted(u for u in self._ref_users[ref] if u in self.pods and u in self.manager.pods)
        for ref in sorted(stale, key=lambda r: (r.namespace, r.kind, r.name)):
            try:
                obj = await self.kube.get_object(ref.path())
                self.owners.put(ref, obj, None, now)
            except Exception as exc:  # an owner it may not read (RBAC) or cannot reach: the group says so
                log.warning("reading %s %s/%s: %s", ref.kind, ref.namespace, ref.name, exc)
                self.owners.put(ref, None, str(exc)[:200], now)
            with self.lock:
                for uid in users[ref]:  # every pod of it, admitted ones too (victims are evicted per group)
                    if uid in self.pods and uid in self.manager.pods:  # not deleted while the owner was read
                        self.manager.set_group(uid, self._group(uid, self.pods[uid]))
        return len(stale)

    def _claim(self, pod: Mapping[str, Any]) -> Holding | None:
        """An untrusted pod's claimed slices, read unverified; only a pod bound to the claim's node runs on them."""
        try:
            claim = objects.holding_from_pod(pod, None)
        except GpupoolError:
            return None
        return claim if claim is not None and objects.pod_node_name(pod) == claim.node else None

    def _unquarantine(self, uid: str) -> None:
        if self.quarantined.pop(uid, None) is not None:
            metrics.QUARANTINED.set(len(self.quarantined))
        self._quarantine_posted.pop(uid, None)

    async def _warn_quarantined(self) -> int:
        """One Warning Event per quarantined pod and reason (the leader's; retried after a failed post)."""
        assert self.kube is not None
        posted = 0
        for uid, why in sorted(self.quarantined.items()):
            pod = self.pods.get(uid)
            if pod is None or self._quarantine_posted.get(uid) == why:
                continue
            message = (f"gpupool cannot trust this pod's assignment ({why}); it is quarantined: its slices stay "
                       "counted as held, nothing else changes for it or for other pods")  # fmt: skip
            try:
                await self.kube.event(pod, QUARANTINE_EVENT_REASON, message, "Warning")
            except Exception as exc:
                log.warning("API write failed: %s", exc)
                continue
            self._quarantine_posted[uid] = why
            posted += 1
        return posted

    # --- the cycle (leader only) --------------------------------------------------------------------

    async def cycle(self, now: float | None = None, *, trail: bool = False) -> dict[str, int]:
        """One admission cycle plus its writes. Returns counts for logs and tests.

        With `trail` (the cycle loop) the admitted pods' conditions are written behind the cycle
        (`_trail`): the next cycle's gate removals need not wait for them (docs/contracts.md "admission
        writes"). Without it every write is done when this returns."""
        if not (self.ready and self.is_leader) or self.kube is None:
            if not self.is_leader and (self._gpu_series or self._queue_series):
                with self.lock:
                    self._drop_series()
            return {}
        now = time.time() if now is None else now
        await self.read_owners(now)
        await self._resize_quota(now)  # before admitting: an approved growth holds its quota
        started = time.perf_counter()
        with self.lock:
            result = self.manager.schedule(now)
        self.decision_seconds = time.perf_counter() - started
        metrics.DECISION_LATENCY.observe(self.decision_seconds)
        counts = {"admitted": 0, "preempted": 0, "events": 0}
        admissions = [(a, self.pods[a.uid]) for a in result.admitted if a.uid in self.pods]
        # gate removals first and in parallel (bounded): a burst's last pod does not wait for every other's writes
        ungated = await self._concurrently(functools.partial(self._ungate, a, p) for a, p in admissions)
        done = [(a, p) for (a, p), ok in zip(admissions, ungated, strict=True) if ok]
        for admission, admitted in done:
            counts["admitted"] += 1
            metrics.ADMISSIONS.labels(admission.queue or "(none)").inc()
            created = timefmt.parse_time(admitted["metadata"].get("creationTimestamp")) or 0.0
            metrics.GATE_LATENCY.observe(max(0.0, now - created))
            self._events.pop(admission.uid, None)
        if trail:
            self._trail([(a.uid, functools.partial(self._after_admission, a, p, now)) for a, p in done])
        else:
            await self._concurrently(functools.partial(self._after_admission, a, p, now) for a, p in done)
        for uid in result.expired_nominations:
            pod = self.pods.get(uid)
            if pod is not None:
                meta = pod["metadata"]
                await self._quiet(self.kube.annotate_pod(meta["namespace"], meta["name"], {resources.NOMINATED: None}))
        for uid, why in result.released_groups.items():
            pod = self.pods.get(uid)
            if pod is not None:
                await self._quiet(self.kube.event(pod, "GPUPoolGroupReleased", why, "Warning"))
        if self.settings.preemption_enabled:
            counts["preempted"] = await self._preempt(result.preemptors, now, result.waiting)
        told: list[tuple[dict[str, Any], str, str]] = []  # (pod, reason, message) of the changed wait messages
        for uid, message in result.waiting.items():
            if self._events.get(uid) == message:
                continue
            pod = self.pods.get(uid)
            if pod is None:
                continue
            self._events[uid] = message
            with self.lock:
                entry = self.manager.pods.get(uid)
                nominated = entry is not None and entry.nomination is not None
            told.append((pod, objects.NOMINATED_REASON if nominated else objects.WAITING_REASON, message))
        await self._tell_all_waiting(told, now)
        counts["events"] += len(told)
        counts["events"] += await self._warn_aliases()
        counts["events"] += await self._warn_quarantined()
        counts["events"] += await self._resize_events(now)
        await self._health_gc(now)
        await self.write_status(now)
        return counts

    async def _concurrently(self, calls: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run the API calls in parallel in the write slots (`WriteSlots`: `api_write_concurrency` at once with
        the writes behind the cycles, these first); results in order. Each call handles its own failure
        (`_quiet`, `_ungate`): one bad write never stops the others."""

        async def one(call: Callable[[], Awaitable[T]]) -> T:
            async with self._slots.slot(urgent=True):
                return await call()

        return list(await asyncio.gather(*(one(c) for c in calls)))

    def _trail(self, calls: list[tuple[str, Callable[[], Awaitable[None]]]]) -> None:
        """Start each pod's write in the background, in a write slot no cycle write waits for (`WriteSlots`);
        `_wait_trailing` orders a later write about the same pod after it."""

        async def one(uid: str, call: Callable[[], Awaitable[None]]) -> None:
            try:
                async with self._slots.slot(urgent=False):
                    await call()
            finally:
                if self._trailing.get(uid) is asyncio.current_task():
                    del self._trailing[uid]
                metrics.TRAILING_WRITES.set(len(self._trailing))

        for uid, call in calls:
            self._trailing[uid] = asyncio.create_task(one(uid, call))
        metrics.TRAILING_WRITES.set(len(self._trailing))

    async def _wait_trailing(self, uid: str) -> None:
        task = self._trailing.get(uid)
        if task is not None:
            await asyncio.wait({task})

    async def drain_trailing(self) -> None:
        """Wait for every write started behind a cycle (each handles its own failure; one cancelled before it
        ran leaves its entry, dropped here)."""
        while self._trailing:
            pending = {task for task in self._trailing.values() if not task.done()}
            if not pending:
                self._trailing.clear()
                metrics.TRAILING_WRITES.set(0)
                return
            await asyncio.wait(pending)

    async def _ungate(self, admission: Admission, pod: Mapping[str, Any]) -> bool:
        """Record the queue on the pod and remove its gate, in one write; on failure the model forgets the
        admission (the next cycle decides the pod again)."""
        assert self.kube is not None
        meta = pod["metadata"]
        queue = admission.queue or None  # recorded on the pod: the extender keys reserved nodes on it
        try:
            await self.kube.remove_gate(meta["namespace"], meta["name"], admission.uid,
                                        pod["spec"].get("schedulingGates") or [], queue)  # fmt: skip
        except Exception as exc:
            log.warning("could not remove the gate of %s (it waits for the next cycle): %s", admission.key, exc)
            with self.lock:
                self.manager.unadmit(admission.uid)
            return False
        return True

    async def _after_admission(self, admission: Admission, pod: Mapping[str, Any], now: float) -> None:
        """The admitted pod's condition, and its nomination annotation gone."""
        assert self.kube is not None
        meta = pod["metadata"]
        where = f"capacity reserved on node {admission.node}" if admission.node else "no node reserved"
        await self._publish(pod, objects.ADMITTED_REASON, f"admitted by queue {admission.queue or '(none)'}; "
                            f"{where}; the gpupool scheduler binds it", now)  # fmt: skip
        if (meta.get("annotations") or {}).get(resources.NOMINATED):
            await self._quiet(self.kube.annotate_pod(meta["namespace"], meta["name"], {resources.NOMINATED: None}))

    async def _tell_all_waiting(self, told: list[tuple[dict[str, Any], str, str]], now: float) -> None:
        """Each changed wait: its Event and condition, after any Admitted condition of the pod still written
        behind a cycle (waited for outside the write slots: it may need one), so the pod keeps the last word."""
        for pod, _, _ in told:
            await self._wait_trailing(str(pod["metadata"].get("uid") or ""))
        await self._concurrently(functools.partial(self._tell_waiting, p, r, m, now) for p, r, m in told)

    async def _tell_waiting(self, pod: Mapping[str, Any], reason: str, message: str, now: float) -> None:
        assert self.kube is not None
        await self._quiet(self.kube.event(pod, "GPUPoolWaiting", message))
        await self._publish(pod, reason, message, now)

    # --- resize: the controller checks the quota of a growth (gpupool.resize, docs/runtime.md "Resize") ---------

    async def _resize_quota(self, now: float) -> int:
        """Approve (reserving the quota) or refuse each pending resize that grows a pod; returns how many."""
        assert self.kube is not None
        decided = 0
        with self.lock:
            pods = sorted((u, self.pods[u]) for u in self._resizing if u in self.pods)
        for uid, pod in pods:
            with self.lock:
                entry = self.manager.pods.get(uid)
                if entry is None or entry.assigned is None or uid in self.quarantined:
                    continue
                p = rz.pending(pod, entry.assigned.slices)
                if p is None or p.problem is not None or p.approved or p.growth == Resources(0, 0):
                    continue
                grow = p.growth
                problem = self.manager.quota_problem(entry.queue, grow) if entry.queue is not None else None
            if problem is not None:
                state, text = rz.State.REFUSED, f"quota: {quota.message(problem)}"
            else:
                state, text = rz.State.APPROVED, (f"quota of queue {entry.queue or '(none)'} reserved for "
                                                  f"+{grow.compute}% / +{grow.memory_mib} MiB")  # fmt: skip
            value = rz.status_annotation(pod, rz.outcome(p.request, state, text, now))
            meta = pod["metadata"]
            try:
                await self.kube.annotate_pod(meta["namespace"], meta["name"], {rz.STATUS: value})
            except Exception as exc:
                log.warning("resize of %s: could not write its status: %s", objects.pod_key(pod), exc)
                continue
            decided += 1
            annotations = {**(meta.get("annotations") or {}), rz.STATUS: value}
            with self.lock:
                self.on_pod("MODIFIED", {**pod, "metadata": {**meta, "annotations": annotations}})  # charged now
        return decided

    async def _resize_events(self, now: float, recent_s: float = 300.0) -> int:
        """One Event per final resize outcome (recent ones: a new leader does not repeat old news)."""
        assert self.kube is not None
        posted = 0
        with self.lock:
            pods = sorted((u, self.pods[u]) for u in self._resizing if u in self.pods)
        for uid, pod in pods:
            history = rz.history_of(pod)
            last = history[-1] if history else None
            if last is None or last.state not in rz.FINAL or self._resize_posted.get(uid) == (last.seq, last.state):
                continue
            self._resize_posted[uid] = (last.seq, last.state)
            at = timefmt.parse_time(last.at)
            if at is None or now - at > recent_s:
                continue
            applied = last.state is rz.State.APPLIED
            reason = "GPUPoolResized" if applied else "GPUPoolResizeRefused"
            await self._quiet(self.kube.event(pod, reason, f"resize #{last.seq}: {last.message}",
                                              "Normal" if applied else "Warning"))  # fmt: skip
            posted += 1
        return posted

    async def _warn_aliases(self) -> int:
        """One Warning Event per pod that reached the API server with an alias resource name.

        The mutating webhook rewrites `pool.kubernetes.io/gpu*` to `gpupool.io/gpu*` and gates the pod;
        a pod that bypassed it (namespace labelled gpupool.io/webhook=ignore, webhook not installed or
        not called) keeps the alias and goes to the default scheduler, which can never place it
        (DESIGN.md §1.1: it must fail loudly). Only the controller's pod watch sees such a pod.
        """
        assert self.kube is not None
        posted = 0
        for uid, pod in list(self._alias_pods.items()):
            try:
                await self.kube.event(pod, ALIAS_EVENT_REASON, alias_message(pod), "Warning")
            except Exception as exc:
                log.warning("API write failed: %s", exc)
                continue  # retried next cycle
            self._alias_pods.pop(uid, None)
            self._alias_warned.add(uid)
            posted += 1
        return posted

    async def _publish(self, pod: Mapping[str, Any], reason: str, message: str, now: float) -> None:
        """Publish the decision on the pod (its `gpupool.io/Admission` condition), for `gpupool explain`;
        the transition time moves only when admitted / waiting changes."""
        assert self.kube is not None
        admitted = reason == objects.ADMITTED_REASON
        last = objects.pod_admission_decision(pod)
        since = last.since if last is not None and last.admitted == admitted and last.since is not None else now
        meta = pod["metadata"]
        condition = objects.admission_condition(admitted, reason, message, since)
        await self._quiet(self.kube.set_pod_condition(meta["namespace"], meta["name"], condition))

    async def _quiet(self, awaitable: Any) -> None:
        try:
            await awaitable
        except Exception as exc:
            log.warning("API write failed: %s", exc)

    async def _preempt(self, preemptors: Mapping[str, str], now: float, waiting: dict[str, str]) -> int:
        """Evict for each blocked head the model's victim set; its wait message in `waiting` gets what was
        done: the pods being preempted, or why none can be (`no_preemption_reason`)."""
        assert self.kube is not None
        evicted = 0
        self._searched = {uid: memo for uid, memo in self._searched.items() if uid in preemptors}
        for uid, queue in preemptors.items():
            refused = self._refused.setdefault(uid, set())
            note = None
            for _attempt in range(5):
                with self.lock:
                    plan = self._search(uid, frozenset(refused))
                if plan is None:
                    break
                ok = True
                done: list[str] = []
                if any(v.group is not None for v in plan.victims):  # a gang goes whole: ask every eviction first
                    for victim in plan.victims:
                        pod = self.pods.get(victim.uid)
                        if pod is not None and not await self.kube.evict(
                            pod["metadata"]["namespace"], pod["metadata"]["name"], dry_run=True
                        ):
                            metrics.EVICTIONS_REFUSED.inc()
                            refused.add(victim.uid)
                            ok = False
                            break
                    if not ok:
                        continue
                for victim in plan.victims:
                    pod = self.pods.get(victim.uid)
                    if pod is None:
                        continue
                    meta = pod["metadata"]
                    if not await self.kube.evict(meta["namespace"], meta["name"]):
                        metrics.EVICTIONS_REFUSED.inc()
                        refused.add(victim.uid)
                        ok = False
                        break
                    done.append(victim.uid)
                    kind = "reclaim" if victim.queue != queue else "preemption"
                    metrics.PREEMPTIONS.labels(queue or "(none)", kind).inc()
                    await self._quiet(self.kube.event(
                        pod, "GPUPoolPreempted",
                        f"evicted by gpupool ({kind}) for {self._key(uid)} on node {plan.node}",
                        "Warning",
                    ))  # fmt: skip
                with self.lock:
                    for v in done:
                        self.manager.mark_evicting(v)
                evicted += len(done)
                if not ok:
                    continue  # the next victim set, without the refused pod
                with self.lock:
                    if uid not in self.manager.pods:  # deleted while the victims were evicted
                        break
                    self.manager.nominate(uid, plan.plan, [v.uid for v in plan.victims], now)
                    for member, member_plan in plan.members:  # the rest of its pod group, nominated with it
                        if member in self.manager.pods:
                            self.manager.nominate(member, member_plan, [v.uid for v in plan.victims], now)
                    nomination = self.manager.pods[uid].nomination
                pod = self.pods.get(uid)
                if pod is not None and nomination is not None:
                    meta = pod["metadata"]
                    value = objects.nomination_annotation(plan.node, nomination.expires)
                    patch = {resources.NOMINATED: value}
                    await self._quiet(self.kube.annotate_pod(meta["namespace"], meta["name"], patch))
                    await self._quiet(self.kube.event(pod, "GPUPoolNominated", plan.describe()))
                note = plan.describe()
                break
            if note is None:  # no victim set could be evicted: say why, when some pod might have been
                with self.lock:
                    if uid in self.manager.pods:
                        note = self._why_not(uid, frozenset(refused))
            if note is not None and uid in waiting:
                waiting[uid] = f"{waiting[uid]}; {note}"
        return evicted

    def _search(self, uid: str, refused: frozenset[str]) -> PreemptionPlan | None:
        """`find_preemption`, remembered per head while its inputs (the ledger, the queue manager, the refused
        victims) are unchanged: a blocked head is not searched again every cycle. Under `self.lock`."""
        key = (self.manager.ledger.generation, self.manager.version, refused)
        memo = self._searched.get(uid)
        if memo is not None and memo[0] == key:
            return memo[1]
        plan = find_preemption(self.manager, uid, exclude=refused)
        self._searched[uid] = (key, plan, None)
        return plan

    def _why_not(self, uid: str, refused: frozenset[str]) -> str | None:
        """`no_preemption_reason`, remembered with the search it explains. Under `self.lock`."""
        key = (self.manager.ledger.generation, self.manager.version, refused)
        memo = self._searched.get(uid)
        if memo is not None and memo[0] == key and memo[1] is None and memo[2] is not None:
            return memo[2]
        note = no_preemption_reason(self.manager, uid, refused)
        if memo is not None and memo[0] == key and memo[1] is None:
            self._searched[uid] = (key, None, note)
        return note

    def _key(self, uid: str) -> str:
        pod = self.pods.get(uid)
        return objects.pod_key(pod) if pod else uid

    async def _health_gc(self, now: float) -> None:
        """Pods holding slices of unhealthy GPUs (or of GPUNodes gone for `gpunode_gone_grace_seconds`) are evicted
        (see module doc). Reads the assignments `on_pod` verified (a quarantined pod has none), not every pod's
        signature again each cycle."""
        assert self.kube is not None
        if self.settings.unhealthy_gpu_action != "evict":
            return
        doomed: list[tuple[dict[str, Any], str, str]] = []
        grace = self.settings.gpunode_gone_grace_seconds
        with self.lock:
            gone_since, named = self._gpunode_gone_since, set()
            for uid, holding in self._verified.items():
                pod = self.pods.get(uid)
                if pod is None or uid in self._evicted_for_health:
                    continue
                for s in holding.slices:
                    if s.node not in self.gpunodes:
                        named.add(s.node)
                        since = gone_since.setdefault(s.node, now)
                        if now - since < grace:
                            continue
                        why = f"GPUNode {s.node} holding its slice on {s.gpu} is gone for {now - since:.0f} s"
                        doomed.append((pod, "GPUNodeGone", why))
                        break
                    if self.ledger.has_gpu(s.gpu) and not self.ledger.gpu(s.gpu).healthy:
                        doomed.append((pod, "GPUUnhealthy", f"GPU {s.gpu} on {s.node} is Unhealthy"))
                        break
            for name in gone_since.keys() - named:  # back (republished by its agent), or no pod left on it
                del gone_since[name]
            for pod, _, _ in doomed:
                self._evicted_for_health.add(objects.pod_uid(pod))
        for pod, reason, why in doomed:
            meta = pod["metadata"]
            await self._quiet(self.kube.event(pod, reason, f"{why}; evicting the pod", "Warning"))
            await self._quiet(self.kube.evict(meta["namespace"], meta["name"]))

    # --- status --------------------------------------------------------------------------------------

    def queue_statuses(self) -> dict[str, dict[str, Any]]:
        """GPUQueue statuses (`controller.status`), with the queue metrics set from them."""
        with self.lock:
            return self._queue_statuses()

    def _queue_statuses(self) -> dict[str, dict[str, Any]]:
        counts = status.member_counts(self.manager)
        out = status.queue_statuses(self.manager, counts)
        for gone in self._queue_series - out.keys():
            _drop_queue_series(gone)
        self._queue_series = set(out)
        for name, row in out.items():
            spec = self.manager.queues[name]
            metrics.QUEUE_PENDING.labels(name).set(row["pending"])
            metrics.QUEUE_ADMITTED.labels(name).set(row["admitted"])
            metrics.QUEUE_USAGE.labels(name, "compute").set(row["usage"]["compute"])
            metrics.QUEUE_USAGE.labels(name, "memory").set(row["usage"]["memoryMiB"])
            metrics.QUEUE_QUOTA.labels(name, "compute").set(spec.nominal.compute or 0)
            if spec.nominal.memory_mib is not None:
                metrics.QUEUE_QUOTA.labels(name, "memory").set(spec.nominal.memory_mib)
            else:
                metrics.QUEUE_QUOTA.remove(name, "memory")
        implicit = status.queue_status(self.manager, IMPLICIT_QUEUE, {}, counts)
        metrics.QUEUE_PENDING.labels("(none)").set(implicit["pending"])
        metrics.QUEUE_ADMITTED.labels("(none)").set(implicit["admitted"])
        return out

    def node_statuses(self) -> dict[str, dict[str, Any]]:
        """GPUNode statuses (`controller.status`), with the per-GPU allocation metrics set from them."""
        with self.lock:
            out = status.node_statuses(self.ledger)
            for name, row in out.items():
                self._gpu_metrics(name, row)
        return out

    def _gpu_metrics(self, name: str, row: Mapping[str, Any]) -> None:
        """Export GPUNode `name`'s per-GPU allocation from its status row; a GPU it no longer lists is dropped.
        Under `self.lock`."""
        uuids = {gpu["uuid"] for gpu in row["allocated"]}
        _drop_gpu_series(name, self._gpu_series.get(name, set()) - uuids)
        self._gpu_series[name] = uuids
        for gpu in row["allocated"]:
            metrics.GPU_ALLOCATED.labels(name, gpu["uuid"], "compute").set(gpu["compute"])
            metrics.GPU_ALLOCATED.labels(name, gpu["uuid"], "memory").set(gpu["memoryMiB"])

    def _drop_series(self, node: str | None = None) -> None:
        """Stop exporting GPUNode `node`'s per-GPU series, or (None) every per-GPU and per-queue series this
        replica exports (it no longer leads: the leader exports them). Under `self.lock`."""
        for name in [node] if node is not None else list(self._gpu_series):
            _drop_gpu_series(name, self._gpu_series.pop(name, ()))
        if node is None:
            for name in (*self._queue_series, "(none)"):
                _drop_queue_series(name)
            self._queue_series = set()

    def _refresh_node_rows(self, now: float) -> None:
        """Compute again the GPUNode status rows of the nodes the ledger logged as changed since the last call (all
        of them the first time, or when the log no longer reaches back), and note which differ from what the API
        server holds (as last written, or as a watch event showed it). Under `self.lock`."""
        ledger = self.ledger
        mark = ledger.change_mark()
        recheck, self._node_recheck = self._node_recheck, set()
        if mark == self._node_rows_mark and not recheck:
            return
        changed = None if self._node_rows_mark is None else ledger.changes_since(self._node_rows_mark)
        names = set(ledger.node_names()).union(self._node_rows) if changed is None else set(changed)
        for name in names | recheck:
            if not ledger.has_node(name):
                self._node_rows.pop(name, None)
                self._node_dirty.pop(name, None)
                continue
            row = None if name in names else self._node_rows.get(name)
            if row is None:
                row = self._node_rows[name] = status.node_status(ledger, name)
            if self._node_status.get(name) != row:
                self._node_dirty.setdefault(name, now)
            else:
                self._node_dirty.pop(name, None)
        self._node_rows_mark = mark

    def _status_budget(self, now: float) -> int:
        """How many GPUNode status writes this cycle may send: a token bucket of
        `gpunode_status_writes_per_second`, holding at most one second's worth (and at least one write)."""
        rate = self.settings.gpunode_status_writes_per_second
        cap = max(1.0, rate)
        at = self._status_tokens_at
        self._status_tokens = cap if at is None else min(cap, self._status_tokens + max(0.0, now - at) * rate)
        self._status_tokens_at = now
        return int(self._status_tokens)

    async def write_status(self, now: float) -> None:
        """Patch the GPUQueue and GPUNode statuses that changed since last written (in parallel, bounded); the
        per-GPU metrics are set only for those nodes (setting 16,000 series per cycle cost seconds at scale).

        A GPUNode's status is written at most once per `gpunode_status_interval_seconds`: the first change
        after a quiet spell at once, the changes of a burst of binds on that node together, at most that long
        (plus a cycle) later. Each write is one more API write and a watch event to every GPUNode watcher (the
        extender, every controller replica) per bound pod otherwise (docs/e2e.md, "what gpupool adds per pod").
        Across the cluster at most `gpunode_status_writes_per_second` are sent (a burst spreads over distinct nodes,
        so the per-node interval alone rarely merges anything): the nodes whose status has differed longest first. Rows
        are computed again only for the nodes the ledger logged as changed (`_refresh_node_rows`)."""
        assert self.kube is not None
        queues = [(n, row) for n, row in self.queue_statuses().items() if self._queue_status.get(n) != row]
        with self.lock:
            self._refresh_node_rows(now)
            interval = self.settings.gpunode_status_interval_seconds
            written = self._node_written_at
            due = [(since, n) for n, since in self._node_dirty.items()
                   if now - written.get(n, -math.inf) >= interval]  # fmt: skip
            budget = self._status_budget(now) if due else 0
            chosen = heapq.nsmallest(budget, due) if budget < len(due) else sorted(due)
            self._status_tokens -= len(chosen)
            nodes = [(n, self._node_rows[n]) for _, n in chosen]
            for name, row in nodes:
                self._gpu_metrics(name, row)
        metrics.GPUNODE_STATUS_BACKLOG.set(len(self._node_dirty) - len(nodes))

        async def patch(plural: str, name: str, row: dict[str, Any], last: dict[str, dict[str, Any]]) -> None:
            assert self.kube is not None
            try:
                await self.kube.patch_status(plural, name, row)
                last[name] = row
                if plural == objects.GPUNODE_PLURAL:
                    self._node_written_at[name] = now
                    if self._node_rows.get(name) is row:
                        self._node_dirty.pop(name, None)
            except Exception as exc:
                log.warning("%s %s status: %s", "GPUQueue" if plural == objects.GPUQUEUE_PLURAL else "GPUNode",
                            name, exc)  # fmt: skip

        await self._concurrently(
            [functools.partial(patch, objects.GPUQUEUE_PLURAL, n, row, self._queue_status) for n, row in queues]
            + [functools.partial(patch, objects.GPUNODE_PLURAL, n, row, self._node_status) for n, row in nodes]
        )


def _problem_names(problems: Mapping[str, str], kind: str) -> set[str]:
    """The names of the objects of `kind` with a problem (`Controller.problems` keys `kind/name`)."""
    return {key.partition("/")[2] for key in problems if key.partition("/")[0] == kind}


def _drop_queue_series(name: str) -> None:
    for gauge in (metrics.QUEUE_PENDING, metrics.QUEUE_ADMITTED):
        gauge.remove(name)
    for gauge in (metrics.QUEUE_USAGE, metrics.QUEUE_QUOTA):
        gauge.remove(name, "compute")
        gauge.remove(name, "memory")


def _drop_gpu_series(node: str, uuids: Iterable[str]) -> None:
    for uuid in uuids:
        metrics.GPU_ALLOCATED.remove(node, uuid, "compute")
        metrics.GPU_ALLOCATED.remove(node, uuid, "memory")
