"""`PoolService`: the extender's state and verbs (DESIGN.md §5), with no HTTP in sight.

One `Ledger` and one `Placer` behind one lock, fed from the cluster cache (the `on_*` methods,
called by the watch threads or by tests). `filter` / `prioritize` / `preempt` only read; `bind`
is the only writer of slices and holds the lock for plan + commit only, never for its API writes
(no per-node lock). The ledger is rebuilt from the pods' signed assignments
(`gpupool.objects.holding_from_pod`); the service is not ready while any is forged, unreadable
or does not fit: such capacity is never silently treated as free.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from extender.kube import ApiError, PodAPI
from extender.metrics import CacheStats, GPUAllocation, Metrics
from gpupool import assignment as assignment_format
from gpupool import objects, resources, timefmt
from gpupool.errors import AssignmentError, GpupoolError, InvalidRequest, OverAllocation
from gpupool.ledger import Holding, HoldingKind, Ledger
from gpupool.placement import FilterResult, NoFit, Placer
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


def extender_score(policy_score: int | None) -> int:
    """A policy's 0..100 as kube-scheduler's 0..10: local fits 1..10, remote-only fits 0."""
    if policy_score is None:
        return 0
    return 1 + max(0, min(100, policy_score)) * (MAX_EXTENDER_SCORE - 1) // 100


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


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
        key: bytes,
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
        #: pods whose assignment cannot be trusted or accounted: forged, unreadable, over capacity
        self.problems: dict[str, str] = {}
        #: GPUNodes that could not be read (the node stays out of the pool, or keeps its last good inventory)
        self.gpunode_problems: dict[str, str] = {}
        #: pods with a valid assignment naming a node or GPU that is not in the pool (yet, or any more)
        self.unplaced: set[str] = set()
        #: binds between commit and the end of their API writes: the watch leaves these pods alone
        self.inflight: dict[str, Holding] = {}
        #: which initial lists (Nodes, GPUNodes, pods) arrived: not ready before all three did
        self._synced = {"nodes": False, "gpunodes": False, "pods": False}

    # --- readiness ---------------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return all(self._synced.values())

    @property
    def ready(self) -> bool:
        """True once Nodes, GPUNodes and pods were listed and no assignment is untrusted."""
        return self.synced and not self.problems

    def readiness(self) -> dict[str, Any]:
        with self.lock:
            return {
                "ready": self.ready,
                "synced": dict(self._synced),
                "problems": dict(sorted(self.problems.items())),
                "gpunode_problems": dict(sorted(self.gpunode_problems.items())),
                "unplaced": sorted(self.unplaced),
            }

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
                self._drop_from_pool(name)
            else:
                self.gpunodes[name] = dict(obj)
                self._apply_gpunode(name)

    def _apply_gpunode(self, name: str) -> None:
        """Put node `name` into the pool (or refresh it) when both its Node and its GPUNode exist."""
        obj = self.gpunodes.get(name)
        if obj is None or name not in self.nodes:
            return
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
            log.warning("pod %s lost its slices: a GPU it used left GPUNode %s", self._pod_label(uid), name)
            self.unplaced.add(uid)
        self._retry_unplaced()

    def _drop_from_pool(self, name: str) -> None:
        if not self.ledger.has_node(name):
            return
        for uid in self.ledger.remove_node(name):
            if uid in self.inflight:
                continue  # the bind's rollback or success path sorts it out
            if uid in self.pods and objects.pod_assignment_text(self.pods[uid]) is not None:
                self.unplaced.add(uid)
        log.info("node %s left the pool; its slices were released", name)

    def _retry_unplaced(self) -> None:
        for uid in list(self.unplaced):
            pod = self.pods.get(uid)
            if pod is None:
                self.unplaced.discard(uid)
            else:
                self._sync_holding(uid, pod)

    # --- cluster cache: pods -----------------------------------------------------------------------

    def on_pod_list(self, items: Iterable[Mapping[str, Any]]) -> None:
        fresh = {objects.pod_uid(p): dict(p) for p in items if _is_pool_pod(p) and objects.pod_uid(p)}
        with self.lock:
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
        known = self.pods.get(uid)
        if known is not None and objects.pod_node_name(known) and not objects.pod_node_name(pod):
            return  # older than a bind we already saw or made (watch lag): a bound pod never unbinds
        self.pods[uid] = pod
        meta = _meta(pod)
        self.pod_uids[(str(meta.get("namespace") or ""), str(meta.get("name") or ""))] = uid
        self._sync_holding(uid, pod)

    def _pod_gone(self, uid: str) -> None:
        pod = self.pods.pop(uid, None)
        if pod is not None:
            meta = _meta(pod)
            key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
            if self.pod_uids.get(key) == uid:
                del self.pod_uids[key]
        self.problems.pop(uid, None)
        self.unplaced.discard(uid)
        if uid not in self.inflight:
            self.ledger.discard(uid)

    def _sync_holding(self, uid: str, pod: Mapping[str, Any]) -> None:
        """Make the ledger hold exactly what the pod's signed assignment says (caller holds the lock)."""
        if uid in self.inflight:
            return  # our own bind is writing this pod; its outcome decides
        try:
            wanted = objects.holding_from_pod(pod, self.key)
        except AssignmentError as exc:
            self._problem(uid, pod, f"assignment refused: {exc}")
            return  # whatever the ledger holds for it stays held: never silently free
        current = self.ledger.holding(uid)
        if wanted is None:
            self.problems.pop(uid, None)
            self.unplaced.discard(uid)
            if current is not None:
                self.ledger.release(uid)
            return
        if current is not None and current == wanted:
            self.problems.pop(uid, None)
            self.unplaced.discard(uid)
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
            return
        try:
            self.ledger.hold(wanted)
        except OverAllocation as exc:
            if current is not None:
                self.ledger.hold(current)
            self._problem(uid, pod, f"assignment does not fit the pool: {exc}")
            return
        self.unplaced.discard(uid)
        self.problems.pop(uid, None)

    def _problem(self, uid: str, pod: Mapping[str, Any], message: str) -> None:
        text = f"pod {objects.pod_key(pod)}: {message}"  # /readyz names the pod, not only its uid
        if self.problems.get(uid) != text:
            self.metrics.assignment_problems.inc()
            log.error("NOT READY: pod %s (uid %s): %s", objects.pod_key(pod), uid, message)
        self.problems[uid] = text

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
            return self.placer.filter(request, nodes)

    def prioritize(self, pod: Mapping[str, Any], nodes: list[str]) -> list[tuple[str, int]]:
        """(node, 0..10) for every node asked about; invalid pods score 0 everywhere (filter said why)."""
        try:
            request = self._request(pod)
        except InvalidRequest:
            return [(n, 0) for n in nodes]
        if not request.containers or not self.ready:
            return [(n, 0) for n in nodes]
        try:
            with self.lock:
                scores = self.placer.scores(request, nodes)
        except NoFit:
            return [(n, 0) for n in nodes]
        return [(n, extender_score(scores.get(n))) for n in nodes]

    def _not_ready_message(self) -> str:
        if not self.synced:
            waiting = ", ".join(k for k, v in self._synced.items() if not v)
            return f"gpupool extender is not ready: still listing {waiting}"
        first = next(iter(sorted(self.problems.items())))
        return (
            f"gpupool extender is not ready: {len(self.problems)} pod(s) carry an assignment it cannot trust "
            f"(first: {first[1]}); see /readyz"
        )

    # --- bind --------------------------------------------------------------------------------------

    def bind(self, name: str, namespace: str, uid: str, node: str) -> str:
        """Bind the pod to `node`, committing its slices; '' on success, else the error for kube-scheduler."""
        try:
            self._bind(name, namespace, uid, node)
        except BindError as exc:
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

        record = assignment_format.Assignment(uid, node, holding.slices, timefmt.now_rfc3339())
        text = record.signed(self.key).to_annotation()
        try:
            self._post_binding(namespace, name, uid, node, text)
        except BaseException as exc:
            self._rollback(uid, holding, namespace, name)
            if isinstance(exc, BindError):
                raise
            raise BindError(f"bind of pod {namespace}/{name} failed: {exc}") from exc
        with self.lock:
            self.inflight.pop(uid, None)
            # what the API server now holds, so that a lagging watch event cannot undo it
            base = self.pods.get(uid) or pod
            annotations = {**(_meta(base).get("annotations") or {}), resources.ASSIGNMENT: text}
            self.pods[uid] = {
                **base,
                "metadata": {**_meta(base), "annotations": annotations},
                "spec": {**(base.get("spec") or {}), "nodeName": node},
            }
            self.pod_uids[(namespace, name)] = uid

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
        """Create the Binding; with `text`, the API server writes the assignment in the same update."""
        try:
            self._api().bind_pod(namespace, name, uid, node, {resources.ASSIGNMENT: text} if text else None)
        except ApiError as exc:
            current = self._read_back(namespace, name) or {}
            landed = objects.pod_node_name(current) == node and objects.pod_uid(current) == uid
            if landed and (text is None or objects.pod_assignment_text(current) == text):
                return  # it did land (a repeated call, or the reply was lost)
            if exc.status == 409:
                self.metrics.bind_conflicts.inc()
            raise BindError(f"cannot create the Binding of pod {namespace}/{name} to {node}: {exc}") from None

    def _read_back(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._api().get_pod(namespace, name)
        except ApiError:
            return None

    def _rollback(self, uid: str, holding: Holding, namespace: str, name: str) -> None:
        """Undo a commit whose Binding did not land: nothing was written, release the slices."""
        self.metrics.bind_rollbacks.inc()
        with self.lock:
            if self.ledger.holding(uid) is holding:
                self.ledger.release(uid)
            self.inflight.pop(uid, None)

    # --- preempt -----------------------------------------------------------------------------------

    def preempt(
        self, pod: Mapping[str, Any], candidates: Mapping[str, tuple[list[str], int]]
    ) -> dict[str, tuple[list[str], int]]:
        """Prune kube-scheduler's preemption candidates to what the pool model says helps.

        For each candidate node, the victims offered by kube-scheduler are simulated away on a
        copy of the ledger (`gpupool.preemption.choose_victims`). A node where the pod still
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
            copy = self.ledger.copy()  # the what-if runs here, never on the live ledger
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
