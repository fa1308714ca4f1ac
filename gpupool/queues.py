"""GPUQueues: membership, order, charges and the admission cycle (`QueueManager.schedule`).

Pure logic (no I/O) after Kueue's ClusterQueue (DESIGN.md §4.1, docs/anchors.md §7): the controller
feeds it GPUQueues, namespaces, node labels and pods, calls `schedule()` and acts on the result. Quota
arithmetic is `gpupool.quota`; GPUQueue objects are read by `gpupool.objects.queue_spec_from_object`.
The rules it keeps (queue membership, quota memory, order, BestEffortFIFO, reservations and
nominations that expire) are written once, in docs/contracts.md.
"""

from __future__ import annotations

import contextlib
import enum
import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction

from gpupool import fairshare, groups, quota, tenancy
from gpupool.errors import OverAllocation
from gpupool.ledger import Holding, HoldingKind, Ledger
from gpupool.placement import NoFit, Placer, Plan
from gpupool.quota import ZERO, Limit, QuotaProblem, Resources, Shortage
from gpupool.request import Locality, PodRequest

IMPLICIT_QUEUE = ""


class Strategy(enum.StrEnum):
    STRICT_FIFO = "StrictFIFO"
    BEST_EFFORT_FIFO = "BestEffortFIFO"


class WithinQueue(enum.StrEnum):
    LOWER_PRIORITY = "LowerPriority"
    NEVER = "Never"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes label selector (matchLabels + matchExpressions)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if op == "In" and (not present or labels[key] not in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """One GPUQueue's spec (crds/gpuqueue.yaml): quota in pool units, cohort, members, order, preemption."""

    name: str
    nominal: Limit = field(default_factory=Limit)
    borrowing_limit: Limit = field(default_factory=Limit)
    cohort: str | None = None
    namespaces: frozenset[str] = frozenset()
    namespace_selector: LabelSelector | None = None
    node_selector: tuple[tuple[str, str], ...] = ()
    strategy: Strategy = Strategy.BEST_EFFORT_FIFO
    within_queue: WithinQueue = WithinQueue.LOWER_PRIORITY
    reclaim_borrowed: bool = True
    #: the nodes `node_selector` matches serve only this queue's pods (gpupool.tenancy.Reservations)
    reserve_nodes: bool = False
    #: `spec.fairSharing.weight` (> 0): its part of what the cohort shares (gpupool.fairshare)
    weight: Fraction = fairshare.DEFAULT_WEIGHT

    @property
    def node_selector_dict(self) -> dict[str, str]:
        return dict(self.node_selector)


#: the queue of pods that no GPUQueue claims (no quota; docs/contracts.md "queue membership")
IMPLICIT = QueueSpec(name=IMPLICIT_QUEUE)


class State(enum.StrEnum):
    PENDING = "pending"  # gated, waiting for admission
    NOMINATED = "nominated"  # gated, capacity freed by preemption is held for it
    ADMITTED = "admitted"  # gate removed (reserved or bound); charged to its queue


@dataclass(slots=True)
class PodEntry:
    """What the queue manager knows of one pod that asks for slices."""

    request: PodRequest
    created: float
    gated: bool
    node_selector: Mapping[str, str] = field(default_factory=dict)
    assigned: Holding | None = None  # from the signed assignment
    #: an approved resize not applied yet (`gpupool.resize.reserved_growth`): charged on top of `assigned`
    resize_growth: Resources = ZERO
    # managed by the QueueManager
    #: the queue the pod names (`gpupool.io/queue`); `request.queue` becomes the resolved queue
    named_queue: str | None = None
    queue: str | None = None
    queue_error: str | None = None
    state: State = State.PENDING
    charge: Resources = ZERO
    admitted_at: float | None = None
    nomination: Nomination | None = None
    #: the pod group it is admitted with (`gpupool.groups`); None: admitted pod by pod
    group: groups.GroupSpec | None = None

    def __post_init__(self) -> None:
        if self.named_queue is None:
            self.named_queue = self.request.queue

    @property
    def uid(self) -> str:
        return self.request.uid

    @property
    def key(self) -> str:
        return self.request.key

    @property
    def sort_key(self) -> tuple[int, float, str]:
        return (-self.request.priority, self.created, self.key)


@dataclass(slots=True)
class Nomination:
    """Capacity freed by preemption and held for a pod until its victims leave (then it is admitted)."""

    node: str
    expires: float
    victims: frozenset[str]
    plan: Plan


@dataclass(frozen=True, slots=True)
class Admission:
    """A pod whose admission gate may be removed: its queue, its charge, the node its capacity is held on."""

    uid: str
    key: str
    queue: str
    node: str | None  # the node the capacity plan reserved
    charge: Resources
    group: str | None = None  # the key of the pod group admitted with it as one


@dataclass(slots=True)
class CycleResult:
    admitted: list[Admission] = field(default_factory=list)
    #: uid -> why it waits (one line, for an Event)
    waiting: dict[str, str] = field(default_factory=dict)
    #: uids of blocked queue heads that may preempt (queue name per uid)
    preemptors: dict[str, str] = field(default_factory=dict)
    expired_reservations: list[str] = field(default_factory=list)
    expired_nominations: list[str] = field(default_factory=list)
    #: uid -> why the reservation of its pod group was released as one (`groups.expire`)
    released_groups: dict[str, str] = field(default_factory=dict)
    decisions: int = 0


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(slots=True)
class _Blocked:
    head: PodEntry
    reason: str
    by_quota: bool
    #: the head's quota need (lower bound: whole-memory slices count 0 before placement)
    need: Resources = ZERO


class QueueManager:
    """Queue membership, order, quota charges and the admission cycle over one ledger (shared with preemption)."""

    def __init__(
        self,
        ledger: Ledger,
        placer: Placer,
        *,
        require_queue: bool = False,
        reservation_ttl: float = 600.0,
        nomination_ttl: float = 300.0,
        group_bind_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.placer = placer
        self.require_queue = require_queue
        self.reservation_ttl = reservation_ttl
        self.nomination_ttl = nomination_ttl
        self.group_bind_ttl = group_bind_ttl
        self.clock = clock
        self.queues: dict[str, QueueSpec] = {}
        self.namespace_labels: dict[str, dict[str, str]] = {}
        self.node_labels: dict[str, dict[str, str]] = {}
        self.pods: dict[str, PodEntry] = {}
        #: uids released early because they are being evicted (their pod may still show up)
        self.evicting: set[str] = set()
        self._usage: dict[str, Resources] = {}
        self._largest: tuple[int, int] = (-1, 0)
        #: bumped by every change of queues, labels, pods or usage (with `ledger.generation`: the inputs of
        #: `gpupool.preemption.find_preemption`, which the controller's memo keys on)
        self.version = 0

    # --- configuration -----------------------------------------------------------------------------

    def set_queue(self, spec: QueueSpec) -> None:
        self.version += 1
        self.queues[spec.name] = spec
        self.placer.reservations.set_queue(spec)
        self._requeue_all()

    def remove_queue(self, name: str) -> None:
        self.version += 1
        self.queues.pop(name, None)
        self.placer.reservations.remove_queue(name)
        self._requeue_all()

    def set_namespace(self, name: str, labels: Mapping[str, str]) -> None:
        self.version += 1
        self.namespace_labels[name] = dict(labels)
        self._requeue_all()

    def remove_namespace(self, name: str) -> None:
        self.version += 1
        self.namespace_labels.pop(name, None)

    def set_node_labels(self, node: str, labels: Mapping[str, str]) -> None:
        self.version += 1
        self.node_labels[node] = dict(labels)
        self.placer.reservations.set_node_labels(node, labels)

    def remove_node_labels(self, node: str) -> None:
        self.version += 1
        self.node_labels.pop(node, None)
        self.placer.reservations.remove_node(node)

    def queue(self, name: str) -> QueueSpec | None:
        return IMPLICIT if name == IMPLICIT_QUEUE and not self.require_queue else self.queues.get(name)

    def membership_problem(self, namespace: str, named: str) -> str | None:
        """Why a pod of `namespace` may not name GPUQueue `named` (None: it may, or the queue does not exist)."""
        spec = self.queues.get(named)
        if spec is None:
            return None
        return tenancy.membership_problem(spec, namespace, self.namespace_labels.get(namespace, {}))

    def resolve_queue(self, namespace: str, named: str | None) -> tuple[str | None, str | None]:
        """(queue name, None) or (None, why no queue) for a pod of `namespace` naming `named`.

        A named queue must serve the namespace (`gpupool.tenancy.serves`); else the first queue, by
        `tenancy.selector_rank` then name, that serves it; else the implicit queue (docs/contracts.md).
        """
        if named:
            if named not in self.queues:
                return (
                    None,
                    f"GPUQueue {named} (annotation gpupool.io/queue) does not exist; create it or fix the name",
                )
            problem = self.membership_problem(namespace, named)
            return (named, None) if problem is None else (None, problem)
        labels = self.namespace_labels.get(namespace, {})
        for spec in sorted(self.queues.values(), key=lambda q: (tenancy.selector_rank(q), q.name)):
            if tenancy.serves(spec, namespace, labels):
                return spec.name, None
        if self.require_queue:
            return None, (
                f"no GPUQueue serves namespace {namespace}; add it to a GPUQueue's spec.namespaces "
                "or set the gpupool.io/queue annotation"
            )
        return IMPLICIT_QUEUE, None

    def _resolve(self, entry: PodEntry) -> None:
        """Set the entry's queue; its request names the resolved queue (placement keys reserved nodes on it)."""
        entry.queue, entry.queue_error = self.resolve_queue(entry.request.namespace, entry.named_queue)
        if entry.request.queue != (entry.queue or None):
            entry.request = replace(entry.request, queue=entry.queue or None)

    # --- pods --------------------------------------------------------------------------------------

    def upsert_pod(self, entry: PodEntry) -> None:
        """Add or refresh a live pod (terminal or deleted pods: `remove_pod`)."""
        self.version += 1
        old = self.pods.get(entry.uid)
        if old is not None:
            entry.state, entry.charge = old.state, old.charge
            entry.admitted_at, entry.nomination = old.admitted_at, old.nomination
            if old.state is not State.PENDING:
                self._uncharge(old)
                # admitted: the queue it named then is final (the webhook refuses edits; this holds if bypassed)
                entry.named_queue = old.named_queue or old.queue or None
        self._resolve(entry)
        if not entry.gated and entry.state is not State.ADMITTED:
            # admitted by us before a restart, or never gated (webhook bypassed): it is in the pool's hands
            if entry.nomination is not None:
                self._drop_nomination(entry)
            entry.state = State.ADMITTED
            entry.admitted_at = self.clock()
        self.pods[entry.uid] = entry
        if entry.uid in self.evicting:
            return
        if entry.assigned is not None:
            self._hold_assigned(entry)
        elif entry.state is State.ADMITTED and self.ledger.holding(entry.uid) is None and old is None:
            self._reserve_again(entry)
        if entry.state is not State.PENDING:
            if entry.assigned is not None:
                entry.charge = Resources(entry.assigned.compute_units, entry.assigned.memory_units)
                entry.charge = entry.charge + entry.resize_growth
            elif entry.charge == ZERO:
                entry.charge = self._estimate(entry)
            self._charge(entry)

    def set_group(self, uid: str, group: groups.GroupSpec | None) -> None:
        """The pod's group, once its owner is read (the adapter reads it; `gpupool.groups`)."""
        entry = self.pods.get(uid)
        if entry is not None and entry.group != group:
            entry.group = group
            self.version += 1

    def remove_pod(self, uid: str) -> None:
        self.version += 1
        entry = self.pods.pop(uid, None)
        self.evicting.discard(uid)
        self.ledger.discard(uid)
        if entry is not None and entry.state is not State.PENDING:
            self._uncharge(entry)
        for other in self.pods.values():
            if other.nomination is not None and uid in other.nomination.victims:
                other.nomination.victims = other.nomination.victims - {uid}

    def unadmit(self, uid: str) -> None:
        """Undo the admission of a pod that is still gated (its gate removal failed): its reservation and charge
        are released and it waits again, so a later cycle admits it (else it would stay gated forever)."""
        entry = self.pods.get(uid)
        if entry is None or entry.state is not State.ADMITTED or not entry.gated:
            return
        held = self.ledger.holding(uid)
        if held is not None and held.kind is HoldingKind.RESERVED:
            self.ledger.release(uid)
        self._uncharge(entry)
        entry.state, entry.charge, entry.admitted_at = State.PENDING, ZERO, None
        self.version += 1

    def mark_evicting(self, uid: str) -> None:
        """`uid` is being evicted: free its capacity and quota now (its pod object may linger)."""
        self.version += 1
        entry = self.pods.get(uid)
        self.evicting.add(uid)
        self.ledger.discard(uid)
        if entry is not None and entry.state is not State.PENDING:
            self._uncharge(entry)
            entry.state = State.PENDING
            entry.charge = ZERO

    def _hold_assigned(self, entry: PodEntry) -> None:
        holding = entry.assigned
        assert holding is not None
        current = self.ledger.holding(entry.uid)
        if current == holding:
            return
        if current is not None:
            self.ledger.release(entry.uid)
        try:
            self.ledger.hold(holding)
            return
        except OverAllocation:
            pass
        # the truth (a signed assignment) wins over our approximate reservations on the same GPUs
        gpus = {s.gpu for s in holding.slices}
        displaced = [
            h for h in self.ledger.holdings()
            if h.kind is not HoldingKind.ASSIGNED and any(s.gpu in gpus for s in h.slices)
        ]  # fmt: skip
        for h in displaced:
            self.ledger.release(h.pod)
        # what still does not fit (over-allocated by another binding, an untrusted claim) is the extender's
        # to report; held as far as capacity allows, never past it
        self.ledger.hold_what_fits(holding)
        for h in displaced:
            other = self.pods.get(h.pod)
            if other is not None:
                self._reserve_again(other)

    def _reserve_again(self, entry: PodEntry) -> None:
        plan = self._place(entry)
        if plan is not None:
            with contextlib.suppress(OverAllocation):
                self.ledger.commit(
                    entry.uid, plan.node, plan.slices, kind=HoldingKind.RESERVED, qos=entry.request.qos,
                    cpu_milli=entry.request.cpu_milli, host_memory_mib=entry.request.host_memory_mib,
                )

    def _estimate(self, entry: PodEntry) -> Resources:
        holding = self.ledger.holding(entry.uid)
        if holding is not None:
            return Resources(holding.compute_units, holding.memory_units)
        return Resources(entry.request.compute_units, entry.request.memory_units(self._largest_gpu_memory()))

    def _requeue_all(self) -> None:
        for entry in list(self.pods.values()):
            if entry.state is not State.PENDING:
                self._uncharge(entry)
            self._resolve(entry)
            if entry.state is not State.PENDING:
                self._charge(entry)

    def _charge(self, entry: PodEntry) -> None:
        self.version += 1
        if entry.queue is not None:
            self._usage[entry.queue] = self._usage.get(entry.queue, ZERO) + entry.charge

    def _uncharge(self, entry: PodEntry) -> None:
        self.version += 1
        if entry.queue is not None:
            self._usage[entry.queue] = self._usage.get(entry.queue, ZERO) - entry.charge

    # --- quota (the arithmetic is gpupool.quota) ------------------------------------------------------

    def usage(self, queue: str) -> Resources:
        return self._usage.get(queue, ZERO)

    def cohort_members(self, cohort: str | None) -> list[QueueSpec]:
        if cohort is None:
            return []
        return [q for q in self.queues.values() if q.cohort == cohort]

    def borrowed(self, queue: str) -> Resources:
        spec = self.queue(queue)
        if spec is None or queue == IMPLICIT_QUEUE:
            return ZERO
        return quota.borrowed(spec, self.usage(queue))

    def may_reclaim(self, queue: str, need: Resources, victim_queue: str, freed: Resources) -> bool:
        """May `queue`, borrowing to admit `need`, take `freed` back from `victim_queue` of its cohort?
        (`fairshare.may_reclaim`: its weighted share after stays at or below the victim queue's after.)"""
        spec, other = self.queue(queue), self.queue(victim_queue)
        if spec is None or other is None or spec.cohort is None or other.cohort != spec.cohort:
            return False
        cap = fairshare.capacity(spec, self.cohort_members(spec.cohort))
        return fairshare.may_reclaim(spec, self.usage(queue) + need, other, self.usage(victim_queue) - freed, cap)

    def shares(self) -> dict[str, tuple[Fraction, Fraction]]:
        """(share, fair share) of every GPUQueue within its cohort, or of its own quota (docs/fairshare.md)."""
        largest = self._largest_gpu_memory()
        waiting: dict[str, Resources] = {}
        for e in self.pods.values():
            if e.state is State.PENDING and e.gated and e.queue:
                ask = Resources(e.request.compute_units, e.request.memory_units(largest))
                waiting[e.queue] = waiting.get(e.queue, ZERO) + ask
        out: dict[str, tuple[Fraction, Fraction]] = {}
        for name, spec in self.queues.items():
            if name in out:
                continue
            members = self.cohort_members(spec.cohort) if spec.cohort is not None else [spec]
            cap = fairshare.capacity(spec, members)
            fair = fairshare.fair_shares(members, self._usage, waiting)
            for m in members:
                out[m.name] = (fairshare.share(self.usage(m.name), cap), fair[m.name])
        return out

    def quota_problem(
        self, queue: str, charge: Resources, released: Mapping[str, Resources] | None = None
    ) -> QuotaProblem | None:
        """None when `charge` more fits the queue's quota (after `released` per queue); else why not."""
        spec = self.queue(queue)
        if spec is None:
            return QuotaProblem(queue, Shortage.NO_QUEUE)
        if queue == IMPLICIT_QUEUE:
            return None
        gone = released or {}

        def used(q: str) -> Resources:
            return self.usage(q) - gone.get(q, ZERO)

        return quota.check(spec, charge, used, self.cohort_members(spec.cohort))

    # --- capacity ----------------------------------------------------------------------------------

    def eligible_nodes(self, entry: PodEntry) -> list[str] | None:
        """Nodes the pod may run on by its queue's and its own nodeSelector (None = all)."""
        spec = self.queue(entry.queue) if entry.queue is not None else None
        selector = dict(spec.node_selector) if spec is not None else {}
        selector.update(entry.node_selector)
        if not selector:
            return None
        return [
            n for n in self.ledger.node_names()
            if all(self.node_labels.get(n, {}).get(k) == v for k, v in selector.items())
        ]  # fmt: skip

    def _place(self, entry: PodEntry, nodes: list[str] | None = None) -> Plan | None:
        if nodes is None:
            nodes = self.eligible_nodes(entry)
        try:
            plan = self.placer.best(entry.request, nodes)
        except NoFit:
            return None
        if plan is not None or entry.request.locality is not Locality.POOL:
            return plan
        for node in sorted(nodes if nodes is not None else self.ledger.node_names(), key=self.placer.rank):
            try:
                return self.placer.plan(entry.request, node)
            except NoFit:
                continue
        return None

    def capacity_reason(self, entry: PodEntry) -> str:
        nodes = self.eligible_nodes(entry)
        names = self.ledger.node_names() if nodes is None else nodes
        if not names:
            return (
                "no node matches the queue's nodeSelector"
                if nodes is not None
                else "the pool has no GPU nodes"
            )
        result = self.placer.filter(entry.request, names)
        reasons: dict[str, int] = {}
        for reason in list(result.failed.values()) + list(result.unresolvable.values()):
            reasons[reason] = reasons.get(reason, 0) + 1
        top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
        text = "; ".join(f"{count} node(s): {reason}" for reason, count in top)
        return f"no capacity on {len(names)} node(s) ({text})"

    # --- the admission cycle -----------------------------------------------------------------------

    def pending_order(self) -> list[PodEntry]:
        return sorted(
            (e for e in self.pods.values() if e.state is not State.ADMITTED), key=lambda e: e.sort_key
        )

    def admission_order(self) -> Iterator[PodEntry]:
        """The waiting pods in the order the cycle decides them (docs/contracts.md "admission order").

        Within a queue: `PodEntry.sort_key`. The queues of one cohort form a group, every other queue is a
        group of its own; the group whose next pod comes first by `sort_key` goes next. A cohort's next pod is
        the head of the queue `fairshare.rank` puts first (its nominal quota covers the head, then the lowest
        weighted share, then `sort_key`), read lazily: an admission the caller makes before asking for the
        next pod moves its queue's rank (docs/fairshare.md).
        """
        lines: dict[str | None, deque[PodEntry]] = {}
        for entry in self.pending_order():
            lines.setdefault(entry.queue, deque()).append(entry)
        grouped: dict[tuple[str, str | None], list[str | None]] = {}
        for name in lines:
            spec = self.queue(name) if name is not None else None
            cohort = spec.cohort if spec is not None and name != IMPLICIT_QUEUE else None
            grouped.setdefault(("cohort", cohort) if cohort is not None else ("queue", name), []).append(name)
        bundles = list(grouped.values())
        caps: dict[str | None, Limit] = {}
        weighted: dict[str, tuple[Resources, Fraction]] = {}  # queue -> (usage, weighted share at that usage)
        ranks: dict[str | None, tuple[PodEntry, Resources, tuple[object, ...]]] = {}

        def rank(name: str | None) -> tuple[object, ...]:
            head = lines[name][0]
            spec = self.queue(name) if name is not None else None
            if spec is None:
                return (False, fairshare.ZERO_SHARE, *head.sort_key)
            usage = self.usage(spec.name)
            seen = ranks.get(name)
            if seen is not None and seen[0] is head and seen[1] is usage:
                return seen[2]
            share = weighted.get(spec.name)
            if share is None or share[0] != usage:
                if spec.cohort not in caps:
                    caps[spec.cohort] = fairshare.capacity(spec, self.cohort_members(spec.cohort))
                share = (usage, fairshare.weighted(usage, caps[spec.cohort], spec.weight))
                weighted[spec.name] = share
            charge = Resources(head.request.compute_units, head.request.memory_units(0))
            ranked = (*fairshare.rank(spec, usage, charge, share[1]), *head.sort_key)
            ranks[name] = (head, usage, ranked)
            return ranked

        def pick(group: list[str | None]) -> tuple[str | None] | None:  # (the queue whose head goes next,)
            live = [name for name in group if lines[name]]
            if len(live) <= 1:
                return (live[0],) if live else None
            return (min(live, key=rank),)

        heap: list[tuple[tuple[int, float, str], int, str | None]] = []
        for i, group in enumerate(bundles):
            first = pick(group)
            if first is not None:
                heap.append((lines[first[0]][0].sort_key, i, first[0]))
        heapq.heapify(heap)
        while heap:
            _, i, name = heapq.heappop(heap)
            yield lines[name].popleft()
            following = pick(bundles[i])
            if following is not None:
                heapq.heappush(heap, (lines[following[0]][0].sort_key, i, following[0]))

    def expire(self, now: float, result: CycleResult) -> None:
        groups.expire(self, now, result)  # a pod group's reservations go as one, before the pod-by-pod TTL
        for entry in self.pods.values():
            if entry.nomination is not None and entry.nomination.expires <= now:
                self._drop_nomination(entry)
                result.expired_nominations.append(entry.uid)
            elif (
                entry.state is State.ADMITTED
                and entry.assigned is None
                and entry.admitted_at is not None
                and now - entry.admitted_at > self.reservation_ttl
            ):
                holding = self.ledger.holding(entry.uid)
                if holding is not None and holding.kind is HoldingKind.RESERVED:
                    self.ledger.release(entry.uid)
                    result.expired_reservations.append(entry.uid)

    def _drop_nomination(self, entry: PodEntry) -> None:
        holding = self.ledger.holding(entry.uid)
        if holding is not None and holding.kind is HoldingKind.NOMINATED:
            self.ledger.release(entry.uid)
        if entry.state is State.NOMINATED:
            self._uncharge(entry)
            entry.state, entry.charge = State.PENDING, ZERO
        entry.nomination = None
        self.version += 1

    def schedule(self, now: float | None = None) -> CycleResult:
        """One admission pass over every queue; mutates the ledger (RESERVED holdings) and usage.

        Phases, in order: (1) expire nominations and unbound reservations; (2) walk every waiting pod of
        every queue in `admission_order` (fair sharing within a cohort, else priority, creation, name) and
        for each: (3) skip what cannot be decided (ungated, no queue); (3b) decide a pod group lacking its
        min-members as one (`gpupool.groups.decide`); (4) admit a nominated pod whose victims are gone; (5) keep it
        behind its queue's blocked head unless BestEffortFIFO lets it pass; (6) check quota with the
        smallest charge, (7) plan capacity (a shape that failed at this ledger generation is not
        planned again), (8) check quota with the planned charge and admit, reserving the plan;
        (9) else it waits, and the first waiting pod of a queue becomes its blocked head and may preempt.
        """
        now = self.clock() if now is None else now
        result = CycleResult()
        self.expire(now, result)  # (1)
        blocked: dict[str, _Blocked] = {}
        position: dict[str, int] = {}
        failed_shapes: dict[tuple[object, ...], tuple[int, str]] = {}
        book = groups.Book.of(self.pods.values(), self.evicting)
        for entry in self.admission_order():  # (2)
            # (3) nothing to decide (or admitted already in this pass, with its pod group)
            if not entry.gated or entry.state is State.ADMITTED:
                continue
            if entry.queue is None:
                result.waiting[entry.uid] = entry.queue_error or "no GPUQueue"
                continue
            q = entry.queue
            spec = self.queue(q)
            if spec is None:
                result.waiting[entry.uid] = f"GPUQueue {q} does not exist"
                continue

            def where(q: str = q) -> str:  # the position among the pods of the queue that still wait
                position[q] = position.get(q, 0) + 1
                return f"queue {q or '(none)'}: {ordinal(position[q])} in line"

            # (3b) a member of a pod group that does not hold its min-members yet: the group is decided as one
            if (
                entry.group is not None and entry.state is State.PENDING
                and groups.decide(self, book, entry, q, spec, where, blocked, now, result)
            ):  # fmt: skip
                continue
            # (4) nominated by preemption: admitted once its victims are gone, else it blocks its queue
            if entry.state is State.NOMINATED and entry.nomination is not None:
                nom = entry.nomination
                if nom.victims:
                    names = ", ".join(sorted(self.pods[v].key if v in self.pods else v for v in nom.victims))
                    reason = f"waiting for {len(nom.victims)} preempted pod(s) to leave node {nom.node}: {names}"
                    result.waiting[entry.uid] = f"{where()}; {reason}"
                    blocked.setdefault(q, _Blocked(entry, reason, by_quota=False))
                    continue
                self._admit_nominated(entry, result)
                continue
            # (5) behind a blocked head: StrictFIFO never passes; BestEffortFIFO as docs/contracts.md says
            head = blocked.get(q)
            if head is not None and not self._may_pass(entry, head, spec):
                result.waiting[entry.uid] = f"{where()} behind {head.head.key} ({head.reason})"
                continue
            result.decisions += 1
            # (6) quota with the lower bound of the charge (whole-memory slices count 0 before placement)
            lower = Resources(entry.request.compute_units, entry.request.memory_units(0))
            problem = self.quota_problem(q, lower + (head.need if head else ZERO))
            if problem is None:
                # (7) capacity
                shape = self._shape(entry)
                failed = failed_shapes.get(shape)
                plan = None
                if failed is None or failed[0] != self.ledger.generation:
                    plan = self._place(entry)
                if plan is None:
                    if failed is not None and failed[0] == self.ledger.generation:
                        reason = failed[1]
                    else:
                        reason = self.capacity_reason(entry) if q not in blocked else "no capacity"
                    failed_shapes[shape] = (self.ledger.generation, reason)
                    self._wait(entry, q, where(), reason, blocked, result, by_quota=False)
                    continue
                # (8) quota with the planned charge, then admit
                charge = Resources(
                    sum(s.compute for s in plan.slices), sum(s.memory_mib for s in plan.slices)
                )
                problem = self.quota_problem(q, charge + (head.need if head else ZERO))
                if problem is None:
                    self._admit(entry, q, plan, charge, now, result)
                    continue
            # (9) it waits for quota
            assert problem is not None
            if head is not None:  # it may pass only when the head keeps its quota
                result.waiting[entry.uid] = f"{where()} behind {head.head.key} ({head.reason})"
                continue
            self._wait(entry, q, where(), quota.message(problem), blocked, result, by_quota=True)
        return result

    def _shape(self, entry: PodEntry) -> tuple[object, ...]:
        r = entry.request
        nodes = self.eligible_nodes(entry)
        containers = tuple((c.count, c.compute, c.memory_mib, c.init) for c in r.containers)
        return (
            containers,
            r.models,
            r.uuids,
            r.qos,
            r.locality,
            r.policy,
            None if nodes is None else tuple(nodes),
            r.queue if self.placer.reservations else None,  # reserved nodes differ per queue
        )

    def _wait(
        self,
        entry: PodEntry,
        q: str,
        where: str,
        reason: str,
        blocked: dict[str, _Blocked],
        result: CycleResult,
        *,
        by_quota: bool,
        need: Resources | None = None,
    ) -> None:
        result.waiting[entry.uid] = f"{where}; {reason}"
        if q not in blocked:
            if need is None:
                need = Resources(entry.request.compute_units, entry.request.memory_units(0))
            blocked[q] = _Blocked(entry, reason, by_quota, need)
            result.preemptors[entry.uid] = q

    def _may_pass(self, entry: PodEntry, head: _Blocked, spec: QueueSpec) -> bool:
        """May `entry` pass its queue's blocked head (docs/contracts.md "BestEffortFIFO")?"""
        if spec.strategy is Strategy.STRICT_FIFO or head.by_quota:
            return False
        largest = self._largest_gpu_memory()
        mine, theirs = entry.request, head.head.request
        return mine.compute_units <= theirs.compute_units and mine.memory_units(
            largest
        ) <= theirs.memory_units(largest)

    def _largest_gpu_memory(self) -> int:
        if self._largest[0] != self.ledger.inventory_generation:  # binds do not change it: 40,000 GPUs at 5,000 nodes
            largest = max(
                (g.memory_mib for n in self.ledger.node_names() for g in self.ledger.gpus_of(n)), default=0
            )
            self._largest = (self.ledger.inventory_generation, largest)
        return self._largest[1]

    def _admit(
        self, entry: PodEntry, q: str, plan: Plan, charge: Resources, now: float, result: CycleResult
    ) -> None:
        self.ledger.commit(  # host CPU and memory: set by the simulator only (kube-scheduler's, live)
            entry.uid, plan.node, plan.slices, kind=HoldingKind.RESERVED, qos=entry.request.qos,
            cpu_milli=entry.request.cpu_milli, host_memory_mib=entry.request.host_memory_mib,
        )
        self._admitted(entry, q, plan.node, charge, now, result)

    def _admitted(
        self, entry: PodEntry, q: str, node: str, charge: Resources, now: float, result: CycleResult,
        group: str | None = None,
    ) -> None:
        """Book an admission whose RESERVED holding is committed already."""
        self.version += 1
        entry.state, entry.charge, entry.admitted_at = State.ADMITTED, charge, now
        self._charge(entry)
        result.admitted.append(Admission(entry.uid, entry.key, q, node, charge, group))

    def _admit_nominated(self, entry: PodEntry, result: CycleResult) -> None:
        nom = entry.nomination
        assert nom is not None and entry.queue is not None
        holding = self.ledger.holding(entry.uid)
        if holding is not None and holding.kind is HoldingKind.NOMINATED:
            self.ledger.release(entry.uid)
            self.ledger.hold(replace(holding, kind=HoldingKind.RESERVED))
        self.version += 1
        entry.state, entry.admitted_at, entry.nomination = State.ADMITTED, self.clock(), None
        result.admitted.append(Admission(entry.uid, entry.key, entry.queue, nom.node, entry.charge))

    # --- preemption bookkeeping (the search is in gpupool.preemption) -----------------------------

    def nominate(self, uid: str, plan: Plan, victims: Iterable[str], now: float | None = None) -> Holding:
        """After the victims' evictions succeeded: hold the freed capacity for the preemptor."""
        now = self.clock() if now is None else now
        entry = self.pods[uid]
        for v in victims:
            self.mark_evicting(v)
        holding = self.ledger.commit(
            uid, plan.node, plan.slices, kind=HoldingKind.NOMINATED, qos=entry.request.qos,
            cpu_milli=entry.request.cpu_milli, host_memory_mib=entry.request.host_memory_mib,
        )
        live = frozenset(v for v in victims if v in self.pods)
        self.version += 1
        entry.nomination = Nomination(plan.node, now + self.nomination_ttl, live, plan)
        entry.charge = Resources(holding.compute_units, holding.memory_units)
        entry.state = State.NOMINATED
        self._charge(entry)
        return holding

    # --- reporting (the API status shapes are controller.status) -----------------------------------

    def position(self, uid: str) -> tuple[str | None, int, int]:
        """(queue, 1-based position among the waiting pods of its queue, how many wait); 0 if admitted."""
        entry = self.pods.get(uid)
        if entry is None:
            return None, 0, 0
        same = [e for e in self.pending_order() if e.queue == entry.queue]
        index = next((i + 1 for i, e in enumerate(same) if e.uid == uid), 0)
        return entry.queue, index, len(same)

