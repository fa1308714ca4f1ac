"""Pod groups (gangs): what a group is, where it comes from, and its all-or-nothing admission.

Pure logic (no I/O, no Kubernetes objects), docs/workloads.md. A group is named by the
`gpupool.io/pod-group` + `gpupool.io/min-members` annotations (read by `gpupool.resources.pod_group`), or
inferred from the pod's owner, which the controller reads and hands over as an `Owner` (kind, name,
size). `QueueManager.schedule` calls `decide` at the first waiting member of a group it meets: the group
is admitted only when quota and a placement exist for all of the members it still needs together (each
planned on the ledger and the whole plan rolled back when one member has no place: `schedule` runs
without yielding, so nothing sees the partial plan), its capacity reserved as one and, when it is not
bound within `QueueManager.group_bind_ttl`, released as one (`expire`). Once a group holds
`min_members` admitted members, further members are admitted pod by pod.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpupool import quota, resources
from gpupool.errors import OverAllocation
from gpupool.ledger import HoldingKind
from gpupool.placement import Plan
from gpupool.quota import ZERO, Resources

if TYPE_CHECKING:
    from gpupool.queues import CycleResult, PodEntry, QueueManager, QueueSpec, _Blocked

#: owner kinds whose pods form one group (the size is read from the owner by the controller)
GROUP_KINDS = ("Job", "JobSet", "PyTorchJob", "TrainJob", "LeaderWorkerSet", "StatefulSet")
#: owner kinds whose pods stay individual (replicas of a service, each useful alone)
INDIVIDUAL_KINDS = ("Deployment", "ReplicaSet", "DaemonSet")


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """One pod group: admitted when `min_members` of its pods can run together.

    `key` is unique in the pool (`<namespace>/<kind>/<name>`); `capacity` the most members it can ever
    have (None: unknown); `origin` says where it comes from, for messages (the field that set its size);
    `error` a problem that keeps the whole group waiting (its owner could not be read).
    """

    key: str
    min_members: int
    capacity: int | None = None
    origin: str = ""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Owner:
    """What the controller read of a pod's (top) owner: its kind and name, and how many pods it runs
    together (`size`, from the field named by `field`; None when the kind has no size)."""

    kind: str
    name: str
    size: int | None = None
    field: str = ""


def from_annotations(namespace: str, annotations: Mapping[str, Any], owner: Owner | None = None) -> GroupSpec | None:
    """The group the annotations name (`InvalidRequest` naming the field when malformed); `owner` sets its
    capacity when it is known (a Job's parallelism, a StatefulSet's replicas)."""
    named = resources.pod_group(annotations)
    if named is None:
        return None
    name, count = named
    capacity = owner.size if owner is not None else None
    return GroupSpec(f"{namespace}/pod-group/{name}", count, capacity,
                     f"annotation {resources.MIN_MEMBERS}")  # fmt: skip


def from_owner(namespace: str, owner: Owner | None) -> GroupSpec | None:
    """The group inferred from the owner: a Job, JobSet, PyTorchJob, TrainJob, LeaderWorkerSet group or
    StatefulSet of two or more pods; a Deployment's (ReplicaSet's) pods and single pods stay individual."""
    if owner is None or owner.kind not in GROUP_KINDS or owner.size is None or owner.size < 2:
        return None
    return GroupSpec(f"{namespace}/{owner.kind.lower()}/{owner.name}", owner.size, owner.size,
                     f"{owner.kind} {namespace}/{owner.name} {owner.field}".rstrip())  # fmt: skip


def group_of(namespace: str, annotations: Mapping[str, Any], owner: Owner | None) -> GroupSpec | None:
    """The pod's group: named by its annotations, else inferred from its owner, else None (individual)."""
    return from_annotations(namespace, annotations, owner) or from_owner(namespace, owner)


def unreadable(namespace: str, kind: str, name: str, why: str) -> GroupSpec:
    """The group of a pod whose owner could not be read: it waits, saying why (never admitted pod by pod)."""
    return GroupSpec(f"{namespace}/{kind.lower()}/{name}", 1, None, f"{kind} {namespace}/{name}",
                     f"cannot read its owner {kind} {namespace}/{name} to size its pod group: {why}")  # fmt: skip


def unresolved(namespace: str, kind: str, name: str) -> GroupSpec:
    """The group of a pod whose owner is not read yet: it waits for the read (the next cycle's)."""
    return GroupSpec(f"{namespace}/{kind.lower()}/{name}", 1, None, f"{kind} {namespace}/{name}",
                     f"reading its owner {kind} {namespace}/{name} to size its pod group")  # fmt: skip


def members_problem(spec: GroupSpec, members: Sequence[PodEntry]) -> str | None:
    """Why the group can never be admitted as it stands (mixed queues or priorities, more members needed
    than it can ever have), naming the field to change; None when it can."""
    if spec.error:
        return spec.error
    if spec.capacity is not None and spec.min_members > spec.capacity:
        return (f"group {spec.key} needs {spec.min_members} members ({spec.origin}) but can never have more "
                f"than {spec.capacity}; lower {resources.MIN_MEMBERS}")  # fmt: skip
    sizes = sorted({m.group.min_members for m in members if m.group is not None})
    if len(sizes) > 1:
        return (f"group {spec.key} has members asking for {', '.join(map(str, sizes))} members; give every "
                f"member the same {resources.MIN_MEMBERS}")  # fmt: skip
    queues = sorted({m.queue or "(none)" for m in members})
    if len(queues) > 1:
        return (f"group {spec.key} mixes queues {', '.join(queues)}; give every member the same "
                f"{resources.QUEUE} (or namespace)")  # fmt: skip
    priorities = sorted({m.request.priority for m in members})
    if len(priorities) > 1:
        return (f"group {spec.key} mixes priorities {', '.join(map(str, priorities))}; give every member the "
                "same spec.priorityClassName")  # fmt: skip
    return None


@dataclass(slots=True)
class Book:
    """The groups of one admission cycle: members by group key, how many are admitted, what was decided."""

    members: dict[str, list[PodEntry]] = field(default_factory=dict)
    admitted: dict[str, int] = field(default_factory=dict)
    #: group key -> why it waits, set at its first member (the others repeat it)
    decided: dict[str, str] = field(default_factory=dict)
    #: pod shape (`QueueManager._shape`) -> (the most pods of it that found a place together, why no more):
    #: a pass only ever fills the ledger (a plan rolled back restores it), so no more fit for the pass
    fits_at_most: dict[tuple[object, ...], tuple[int, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: Iterable[PodEntry], evicting: set[str]) -> Book:
        from gpupool.queues import State

        book = cls()
        for e in sorted((e for e in entries if e.group is not None), key=lambda e: e.sort_key):
            assert e.group is not None
            book.members.setdefault(e.group.key, []).append(e)
            if e.state is not State.PENDING and e.uid not in evicting:
                book.admitted[e.group.key] = book.admitted.get(e.group.key, 0) + 1
        return book

    def satisfied(self, spec: GroupSpec) -> bool:
        return spec.error is None and self.admitted.get(spec.key, 0) >= spec.min_members


def _largest_first(entry: PodEntry) -> tuple[object, ...]:
    """Members planned the largest first (compute, then memory asked for, then slices), then in pod order."""
    r = entry.request
    return (-r.compute_units, -r.memory_units(0), -r.slice_count, entry.sort_key)


def decide(
    manager: QueueManager,
    book: Book,
    entry: PodEntry,
    q: str,
    spec: QueueSpec,
    position: Callable[[], str],
    blocked: dict[str, _Blocked],
    now: float,
    result: CycleResult,
) -> bool:
    """Admit `entry`'s group as one, or say why it waits. False: the group holds its `min_members`
    already and `entry` is admitted pod by pod. Never leaves part of a group admitted."""
    from gpupool.queues import State, Strategy

    g = entry.group
    assert g is not None
    if book.satisfied(g):
        return False
    where = position()
    if g.key in book.decided:
        result.waiting[entry.uid] = f"{where}; {book.decided[g.key]}"
        return True
    members = book.members.get(g.key, [entry])
    waiting = [m for m in members if m.state is State.PENDING and m.gated and m.uid not in manager.evicting]

    def wait(reason: str) -> bool:
        book.decided[g.key] = reason
        result.waiting[entry.uid] = f"{where}; {reason}"
        return True

    problem = members_problem(g, members)
    if problem is not None:
        return wait(problem)
    need = g.min_members - book.admitted.get(g.key, 0)
    if len(waiting) < need:
        return wait(f"group {g.key}: {len(waiting) + book.admitted.get(g.key, 0)} of {g.min_members} members "
                    f"present ({g.origin}); waiting for {need - len(waiting)} more")  # fmt: skip
    gang = waiting[:need]
    lower = sum((Resources(m.request.compute_units, m.request.memory_units(0)) for m in gang), ZERO)
    head = blocked.get(q)
    if head is not None and (
        spec.strategy is Strategy.STRICT_FIFO or head.by_quota
        or not all(manager._may_pass(m, head, spec) for m in gang)
    ):  # fmt: skip
        return wait(f"group {g.key} behind {head.head.key} ({head.reason})")
    result.decisions += len(gang)
    ahead = head.need if head is not None else ZERO
    problem_q = manager.quota_problem(q, lower + ahead)
    if problem_q is not None:
        return _blocked(manager, book, entry, q, where, f"group {g.key} of {need} member(s): "
                        f"{quota.message(problem_q)}", lower, blocked, result, by_quota=True)  # fmt: skip
    # plan every member, the largest first (it is the likeliest not to fit, and packs best first)
    planned: list[tuple[PodEntry, Plan, Resources]] = []
    failure: str | None = None
    ordered = sorted(gang, key=_largest_first)
    shapes = {id(m): manager._shape(m) for m in ordered}
    counts: dict[tuple[object, ...], int] = {}
    for m in ordered:
        counts[shapes[id(m)]] = counts.get(shapes[id(m)], 0) + 1
        known = book.fits_at_most.get(shapes[id(m)])
        if known is not None and counts[shapes[id(m)]] > known[0]:
            failure = (f"group {g.key}: no place for all {need} member(s) together; the largest without one, "
                       f"{m.key}: {known[1]}")  # fmt: skip
            break
    for m in ordered if failure is None else ():
        plan = manager._place(m)
        if plan is not None:
            try:
                manager.ledger.commit(m.uid, plan.node, plan.slices, kind=HoldingKind.RESERVED, qos=m.request.qos)
            except OverAllocation:
                plan = None
        if plan is None:
            # the per-node reasons cost a pass over the pool: only for the first that blocks its queue
            why = manager.capacity_reason(m) if q not in blocked else "no capacity"
            shape = shapes[id(m)]
            if all(shapes[id(p)] == shape for p, _, _ in planned):
                known = book.fits_at_most.get(shape)
                if known is None or len(planned) < known[0]:
                    book.fits_at_most[shape] = (len(planned), why)
            failure = (f"group {g.key}: no place for all {need} member(s) together; the largest without one, "
                       f"{m.key}: {why}")  # fmt: skip
            break
        charge = Resources(sum(s.compute for s in plan.slices), sum(s.memory_mib for s in plan.slices))
        planned.append((m, plan, charge))
    total = sum((c for _, _, c in planned), ZERO)
    if failure is None:
        problem_q = manager.quota_problem(q, total + ahead)
        if problem_q is not None:
            failure = f"group {g.key} of {need} member(s): {quota.message(problem_q)}"
    if failure is not None:
        for m, _, _ in planned:  # roll the plan back whole
            manager.ledger.discard(m.uid)
        by_quota = problem_q is not None
        return _blocked(manager, book, entry, q, where, failure, lower, blocked, result, by_quota=by_quota)
    for m, plan, charge in sorted(planned, key=lambda t: t[0].sort_key):
        manager._admitted(m, q, plan.node, charge, now, result, group=g.key)
    book.admitted[g.key] = book.admitted.get(g.key, 0) + len(planned)
    return entry.state is not State.PENDING  # False: an extra member beyond the gang, admitted pod by pod


def _blocked(
    manager: QueueManager,
    book: Book,
    entry: PodEntry,
    q: str,
    where: str,
    reason: str,
    need: Resources,
    blocked: dict[str, _Blocked],
    result: CycleResult,
    *,
    by_quota: bool,
) -> bool:
    """The group waits; its first member becomes its queue's blocked head (and may preempt for the group)."""
    assert entry.group is not None
    book.decided[entry.group.key] = reason
    manager._wait(entry, q, where, reason, blocked, result, by_quota=by_quota, need=need)
    return True


def expire(manager: QueueManager, now: float, result: CycleResult) -> None:
    """Release, as one, the reservations of an admitted group not bound within `group_bind_ttl`: every
    unbound member's RESERVED holding goes (the pods stay admitted: a gate cannot be re-added)."""
    from gpupool.queues import State

    by_key: dict[str, list[PodEntry]] = {}
    for e in manager.pods.values():
        if e.group is not None and e.state is State.ADMITTED:
            by_key.setdefault(e.group.key, []).append(e)
    for key, members in sorted(by_key.items()):
        unbound = []
        for e in members:
            h = manager.ledger.holding(e.uid)
            if e.assigned is None and h is not None and h.kind is HoldingKind.RESERVED:
                unbound.append(e)
        if not unbound or min((e.admitted_at or now) for e in unbound) + manager.group_bind_ttl > now:
            continue
        bound = len(members) - len(unbound)
        why = (f"group {key}: {bound} of {len(members)} admitted member(s) bound within "
               f"{manager.group_bind_ttl:.0f} s; the capacity reserved for the other {len(unbound)} is released "
               "as one (they stay admitted and bind as capacity allows)")  # fmt: skip
        for e in unbound:
            manager.ledger.release(e.uid)
            result.expired_reservations.append(e.uid)
            result.released_groups[e.uid] = why


def pending_gang(manager: QueueManager, entry: PodEntry) -> list[PodEntry]:
    """The members of `entry`'s group still to be admitted together, `entry` first among them (as `decide`
    takes them); `[entry]` when it is in no group or its group holds its min-members already."""
    from gpupool.queues import State

    g = entry.group
    if g is None:
        return [entry]
    book = Book.of(manager.pods.values(), manager.evicting)
    if book.satisfied(g):
        return [entry]
    need = g.min_members - book.admitted.get(g.key, 0)
    waiting = [m for m in book.members.get(g.key, []) if m.state is State.PENDING and m.gated
               and m.uid not in manager.evicting]  # fmt: skip
    gang = waiting[:need]
    return gang if entry in gang else [entry, *gang[: need - 1]]


def joining_problem(
    spec: GroupSpec, queue: str | None, priority: int, members: Iterable[PodEntry]
) -> tuple[str, str] | None:
    """(field, why) a new pod of group `spec` (its queue, its priority) does not match the members there are
    (the webhook refuses it); None when it matches or is the first."""
    for m in members:
        if m.group is None or m.group.key != spec.key:
            continue
        if m.group.min_members != spec.min_members:
            return (f"metadata.annotations[{resources.MIN_MEMBERS}]",
                    f"member {m.key} of the group asks for {m.group.min_members}; write the same value")
        if m.queue != queue:
            return (f"metadata.annotations[{resources.QUEUE}]", f"member {m.key} of the group is in queue "
                    f"{m.queue or '(none)'}, this pod in {queue or '(none)'}; every member of a group is in the "
                    "same queue")  # fmt: skip
        if m.request.priority != priority:
            return ("spec.priorityClassName", f"member {m.key} of the group has priority {m.request.priority}, "
                    f"this pod {priority}; give every member the same spec.priorityClassName")  # fmt: skip
    return None


def describe(manager: QueueManager, uid: str) -> list[str]:
    """What the group of pod `uid` waits for (`gpupool explain`): members missing, quota for all of them,
    or the largest member that has no place (planned on an overlay of the ledger); [] when in no group."""
    entry = manager.pods.get(uid)
    if entry is None or entry.group is None:
        return []
    g = entry.group
    book = Book.of(manager.pods.values(), manager.evicting)
    members = book.members.get(g.key, [])
    have = book.admitted.get(g.key, 0)
    lines = [f"pod group {g.key} ({g.origin or 'annotation'}): {len(members)} member(s) present, {have} "
             f"admitted, {g.min_members} needed together"]  # fmt: skip
    problem = members_problem(g, members)
    if problem is not None:
        return [*lines, f"group: never admitted as it stands: {problem}"]
    if book.satisfied(g):
        return [*lines, "group: holds its min-members; further members are admitted pod by pod"]
    gang = pending_gang(manager, entry)
    need = g.min_members - have
    if len(gang) < need:
        return [*lines, f"group waits for members: {need - len(gang)} more must be created"]
    q = entry.queue
    lower = sum((Resources(m.request.compute_units, m.request.memory_units(0)) for m in gang), ZERO)
    shortfall = manager.quota_problem(q, lower) if q is not None else None
    if shortfall is not None:
        lines.append(f"group waits for quota: {need} member(s) need {lower.compute} compute together; "
                     f"{quota.message(shortfall)}")  # fmt: skip
    ledger = manager.ledger.overlay()  # the manager's ledger stays still while this runs (`gpupool explain`)
    placer = manager.placer.over(ledger)
    for m in sorted(gang, key=_largest_first):
        nodes = manager.eligible_nodes(m)
        plan = placer.best(m.request, nodes)
        if plan is None:
            names = ledger.node_names() if nodes is None else nodes
            result = placer.filter(m.request, names)
            reasons = sorted(set({**result.failed, **result.unresolvable}.values()))[:2]
            return [*lines, f"group waits for capacity: the largest member with no place (with the others "
                    f"planned first) is {m.key}: {'; '.join(reasons) or 'no node'}"]  # fmt: skip
        ledger.commit(m.uid, plan.node, plan.slices, kind=HoldingKind.RESERVED, qos=m.request.qos)
    if shortfall is None:
        lines.append(f"group: all {need} member(s) fit together now (admitted by the next cycle)")
    return lines
