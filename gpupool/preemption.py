"""Slice-aware preemption and reclaim: which pods to evict so that one waiting pod can be placed.

Pure logic (no I/O), the one home of victim choice (docs/contracts.md: victim order). The controller asks
`QueueManager`-aware `find_preemption` for a plan, evicts the victims through the Eviction API (PDBs
respected), and on success calls `QueueManager.nominate` so the freed capacity is held (a NOMINATED
ledger holding) for the preemptor. If an eviction is refused, it calls `find_preemption` again with the
refused pod excluded (the next victim set). The extender's preempt verb prunes kube-scheduler's victims
of one node with `choose_victims`, the same search in the same order.

Every search plans on a copy of the ledger (`Ledger.overlay`, which clones only the nodes a what-if changes;
`Placer.over`): the live ledger is never released and re-held, so no reader and no failure mid-search sees or
keeps a what-if state. The caller holds the model's lock for the search (the overlay shares unchanged nodes).

Rules (DESIGN.md §7):

* Rank (`may_preempt`): a guaranteed pod outranks every best-effort pod, whatever the priorities;
  otherwise a pod outranks only pods of its own QoS with lower priority. A best-effort pod never evicts a
  guaranteed one, so two pods can never evict each other in turn.
* Candidates: best-effort pods of any queue, for a guaranteed preemptor (`yields`: they hold capacity
  nothing promised them, whatever their queue's `withinQueue`, cohort or quota); admitted pods of the
  preemptor's own queue that it outranks (when its queue has `preemption.withinQueue: LowerPriority`), and —
  when the queue has `reclaimBorrowed: true` and the preemptor's charge fits within its queue's nominal
  quota (or, when it does not, while `gpupool.fairshare.may_reclaim` allows: docs/fairshare.md) — pods of
  other queues of its cohort that use more than their nominal quota, for as long as the victim's queue
  stays above its nominal quota after the eviction. Pods of the implicit queue (no GPUQueue)
  may be preempted by any pod that outranks them; they hold no quota.
* Units (`units`, docs/workloads.md): the admitted members of a pod group are evicted together or not at
  all; units in `unit_order` (best-effort, lower priority, fewest pods, youngest). A waiting pod group
  preempts for all the members it still needs together.
* Victim order: best-effort slices first, then lower priority, then the most recently admitted. A
  preemptor whose queue stays within its nominal quota (it only lacks quota lent to borrowers) takes
  borrowers' pods before its own queue's: such sets are searched first and win over sets of as many
  victims with more of its own pods.
* A victim set is valid when, with its holdings released, the preemptor fits the pool (one placement on
  one node, checked with the same policies over a copy of the `Ledger`) and its queue's quota.
* Among valid sets, the fewest victims win; then the fewest guaranteed victims, then the lowest highest
  victim priority, then the node's stable rank. Per node the search is exact for one victim, else a
  greedy pass in victim order followed by a reprieve pass that gives back every victim not needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gpupool import groups
from gpupool.errors import OverAllocation
from gpupool.ledger import Holding, HoldingKind, Ledger
from gpupool.placement import NoFit, Placer, Plan
from gpupool.queues import IMPLICIT_QUEUE, PodEntry, QueueManager, State, WithinQueue
from gpupool.quota import Resources
from gpupool.request import Locality, PodRequest, QoS


@dataclass(frozen=True, slots=True)
class Victim:
    """A pod whose eviction may make room; `order` is THE victim order (the first is evicted first)."""

    uid: str
    key: str
    queue: str
    priority: int
    qos: QoS
    admitted_at: float
    holding: Holding
    charge: Resources
    #: the key of its pod group (`gpupool.groups`): the group's admitted members are evicted together
    group: str | None = None

    @property
    def order(self) -> tuple[int, int, float, str]:
        """Best-effort first, then lower priority, then the most recently admitted, then the key."""
        return (0 if self.qos is QoS.BEST_EFFORT else 1, self.priority, -self.admitted_at, self.key)


#: victims evicted together: one pod, or every admitted member of a pod group (a gang goes whole or not at all)
Unit = tuple[Victim, ...]


def unit_order(unit: Unit) -> tuple[int, int, int, float, str]:
    """THE order of victim units: best-effort first, then lower priority, then the fewest pods, then the
    youngest (most recently admitted), then the key."""
    return (max(0 if v.qos is QoS.BEST_EFFORT else 1 for v in unit), max(v.priority for v in unit), len(unit),
            -max(v.admitted_at for v in unit), unit[0].key)  # fmt: skip


def units(victims: Sequence[Victim], members: Callable[[str], int]) -> list[Unit]:
    """Group `victims` into units, in unit order: a pod group is a unit only when all of its `members(key)`
    admitted pods are among the victims (else none of them may be evicted)."""
    single: list[Unit] = []
    gangs: dict[str, list[Victim]] = {}
    for v in victims:
        if v.group is None:
            single.append((v,))
        else:
            gangs.setdefault(v.group, []).append(v)
    whole = [tuple(sorted(vs, key=lambda v: v.order)) for key, vs in gangs.items() if len(vs) == members(key)]
    return sorted(single + whole, key=unit_order)


def yields(preemptor: PodRequest, victim: Victim) -> bool:
    """A best-effort victim gives way to a guaranteed preemptor, whatever the priorities and queues."""
    return preemptor.qos is QoS.GUARANTEED and victim.qos is QoS.BEST_EFFORT


def may_preempt(preemptor: PodRequest, victim: Victim) -> bool:
    """THE rank (docs/contracts.md "preemption rank"): guaranteed over best-effort, then higher priority."""
    return yields(preemptor, victim) or (victim.qos is preemptor.qos and victim.priority < preemptor.priority)


@dataclass(frozen=True, slots=True)
class PreemptionPlan:
    preemptor: str
    node: str
    victims: tuple[Victim, ...]
    plan: Plan
    reclaim: bool  # True when a victim belongs to another queue
    #: the other members of the preemptor's pod group planned with it: (uid, plan), nominated together
    members: tuple[tuple[str, Plan], ...] = ()

    def describe(self) -> str:
        names = ", ".join(v.key for v in self.victims)
        kind = "reclaim" if self.reclaim else "preemption"
        return f"{kind} on node {self.node}: evict {names}"


def candidates(manager: QueueManager, preemptor: PodEntry, exclude: frozenset[str] = frozenset()) -> list[Victim]:
    """Pods the preemptor may evict (module doc), in victim order (best-effort, lower priority, newest first)."""
    q = preemptor.queue
    if q is None:
        return []
    spec = manager.queue(q)
    if spec is None:
        return []
    within = spec.within_queue is WithinQueue.LOWER_PRIORITY
    cohort = spec.cohort if spec.reclaim_borrowed and q != IMPLICIT_QUEUE else None
    out: list[Victim] = []
    for entry in manager.pods.values():
        if entry.uid in exclude or entry.uid == preemptor.uid or entry.state is not State.ADMITTED:
            continue
        if entry.uid in manager.evicting:
            continue
        holding = manager.ledger.holding(entry.uid)
        if holding is None:
            continue
        other = entry.queue
        victim = Victim(entry.uid, entry.key, other or "", entry.request.priority, entry.request.qos,
                        entry.admitted_at or 0.0, holding, entry.charge,
                        entry.group.key if entry.group is not None else None)  # fmt: skip
        if yields(preemptor.request, victim):
            ok = True
        elif other == q:
            ok = within and may_preempt(preemptor.request, victim)
        elif other == IMPLICIT_QUEUE:
            ok = may_preempt(preemptor.request, victim)
        else:
            other_spec = manager.queue(other) if other is not None else None
            ok = cohort is not None and other_spec is not None and other_spec.cohort == cohort
        if ok:
            out.append(victim)
    out.sort(key=lambda v: v.order)
    return out


def find_preemption(
    manager: QueueManager,
    uid: str,
    *,
    exclude: frozenset[str] = frozenset(),
    max_victims: int = 16,
) -> PreemptionPlan | None:
    """The best victim set (fewest victims) that lets pod `uid` be placed, or None.

    A pod of a pod group that lacks its min-members plans for every member the group still needs
    (`groups.pending_gang`), the largest first, each on the copy left by the previous ones; the quota is
    checked for all of them together. Victims are units (`units`): a gang is evicted whole or not at all.
    """
    preemptor = manager.pods.get(uid)
    if preemptor is None or preemptor.queue is None or preemptor.state is not State.PENDING:
        return None
    pool = candidates(manager, preemptor, exclude)
    if not pool:
        return None
    q = preemptor.queue
    gang = groups.pending_gang(manager, preemptor)
    ledger = manager.ledger.overlay()  # plan on a copy (of the nodes it changes): the live ledger is never touched
    placer = manager.placer.over(ledger)
    largest = manager._largest_gpu_memory()
    need = sum((Resources(m.request.compute_units, m.request.memory_units(largest)) for m in gang), Resources())
    request = preemptor.request
    borrowing = q != IMPLICIT_QUEUE and not _within_nominal(manager, q, need, pool)
    if borrowing:
        # a queue reclaims its own nominal quota; to borrow it evicts other queues' pods only by fair share
        pool = [v for v in pool if v.queue in (q, IMPLICIT_QUEUE) or yields(request, v)
                or manager.may_reclaim(q, need, v.queue, v.charge)]  # fmt: skip
    # within its nominal quota even before evicting its own pods: what it lacks is lent to borrowers, so
    # reclaim from them first (Kueue does the same) rather than evict its own lower-priority pods
    reclaiming = q != IMPLICIT_QUEUE and _within_nominal(manager, q, need, ())

    def own(u: Unit) -> bool:
        return all(v.queue in (q, IMPLICIT_QUEUE) for v in u)

    def order(u: Unit) -> tuple[object, ...]:
        return (reclaiming and own(u), *unit_order(u))

    members = _member_counts(manager)
    pool_units = sorted(units(pool, lambda key: members.get(key, 0)), key=order)

    checked: dict[frozenset[str], bool] = {}  # a function of the set of victims: asked again for every node

    def quota_ok(victims: Sequence[Victim]) -> bool:
        if q == IMPLICIT_QUEUE:
            return True
        if len(victims) > 4:  # small sets repeat across nodes (none, one unit); large ones rarely do
            return _quota_ok(victims)
        key = frozenset(v.uid for v in victims)
        known = checked.get(key)
        if known is None:
            known = checked[key] = _quota_ok(victims)
        return known

    def _quota_ok(victims: Sequence[Victim]) -> bool:
        freed: dict[str, Resources] = {}
        for v in victims:
            freed[v.queue] = freed.get(v.queue, Resources()) + v.charge
        if manager.quota_problem(q, need, freed) is not None:
            return False
        by_queue: dict[str, list[Victim]] = {}
        for v in victims:
            if v.queue not in (q, IMPLICIT_QUEUE) and not yields(request, v):  # reclaim: quota rules
                by_queue.setdefault(v.queue, []).append(v)
        for other, taken in by_queue.items():  # each victim's queue must still be borrowing when it is taken
            spec = manager.queue(other)
            if spec is None:
                return False
            running = manager.usage(other)
            if borrowing and not manager.may_reclaim(q, need - freed.get(q, Resources()), other, freed[other]):
                return False  # gpupool.fairshare.may_reclaim
            for v in sorted(taken, key=lambda v: v.order):
                nc, nm = spec.nominal.compute or 0, spec.nominal.memory_mib
                if not (running.compute > nc or (nm is not None and running.memory_mib > nm)):
                    return False
                running = running - v.charge
        return True

    chosen_all: list[Victim] = []
    plans: dict[str, Plan] = {}
    first_node = ""
    ordered = sorted(gang, key=lambda m: (-m.request.compute_units, -m.request.memory_units(largest), m.sort_key))
    for i, member in enumerate(ordered):
        last = i == len(ordered) - 1
        before = list(chosen_all)
        left = [u for u in pool_units if not any(v in before for v in u)]

        def member_quota(victims: Sequence[Victim], last: bool = last, before: list[Victim] = before) -> bool:
            return quota_ok([*before, *victims]) if last else True

        found = _best_node(manager, ledger, placer, member, left, member_quota, max_victims, order,
                           reclaiming, own, single=len(gang) == 1)  # fmt: skip
        if found is None:
            return None
        node, chosen = found
        flat = [v for u in chosen for v in u]
        for v in flat:
            ledger.discard(v.uid)
        try:
            plan = placer.plan(member.request, node)
            ledger.commit(member.uid, plan.node, plan.slices, kind=HoldingKind.NOMINATED, qos=member.request.qos)
        except (NoFit, OverAllocation):
            return None
        chosen_all.extend(flat)
        plans[member.uid] = plan
        if member.uid == uid:
            first_node = node
    if not chosen_all or not quota_ok(chosen_all) or uid not in plans:
        return None
    victims = tuple(sorted(chosen_all, key=lambda v: v.order))
    others = tuple((m.uid, plans[m.uid]) for m in sorted(gang, key=lambda m: m.sort_key) if m.uid != uid)
    reclaim = any(v.queue != q for v in victims)
    return PreemptionPlan(uid, first_node, victims, plans[uid], reclaim, others)


def _member_counts(manager: QueueManager) -> dict[str, int]:
    """Admitted members holding capacity, per pod group (a gang victim is a unit only with all of them)."""
    counts: dict[str, int] = {}
    for e in manager.pods.values():
        if (
            e.group is not None and e.state is State.ADMITTED and e.uid not in manager.evicting
            and manager.ledger.holding(e.uid) is not None
        ):  # fmt: skip
            counts[e.group.key] = counts.get(e.group.key, 0) + 1
    return counts


def _best_node(
    manager: QueueManager,
    ledger: Ledger,
    placer: Placer,
    member: PodEntry,
    pool: list[Unit],
    quota_ok: Callable[[Sequence[Victim]], bool],
    max_victims: int,
    order: Callable[[Unit], tuple[object, ...]],
    reclaiming: bool,
    own: Callable[[Unit], bool],
    *,
    single: bool,
) -> tuple[str, tuple[Unit, ...]] | None:
    """The node where `member` fits with the fewest victim units evicted (none for a gang member that fits
    already; a single pod that fits already needs no preemption: None).

    Same result as trying every node with every unit, found faster: units are indexed by the nodes they
    touch, and a `local` pod's fit on a node depends only on the victims that touch that node (its verdict
    reads that node's state alone), so fits are remembered per (node, victims there) and units elsewhere are
    never tried for the fit.
    """
    request = member.request
    nodes = manager.eligible_nodes(member)
    names = ledger.node_names() if nodes is None else nodes
    independent = request.locality is not Locality.POOL  # remote slices read other nodes
    touching: dict[str, list[int]] = {}  # node -> positions in `pool` of the units that touch it
    where: dict[str, frozenset[str]] = {}  # victim uid -> the nodes its holding touches
    for i, u in enumerate(pool):
        here: set[str] = set()
        for v in u:
            where[v.uid] = frozenset({v.holding.node, *(s.node for s in v.holding.slices)})
            here |= where[v.uid]
        for n in sorted(here):
            touching.setdefault(n, []).append(i)
    seen: dict[tuple[str, frozenset[str]], bool] = {}

    def fits(node: str, victims: Sequence[Victim]) -> bool:
        if independent:
            victims = [v for v in victims if node in where[v.uid]]
        key = (node, frozenset(v.uid for v in victims))
        known = seen.get(key)
        if known is None:
            known = seen[key] = _fits(ledger, placer, request, node, victims)
        return known

    best: tuple[tuple[int, int, int, int, int], str, tuple[Unit, ...]] | None = None
    for node in names:
        if not ledger.has_node(node):
            continue
        mine = touching.get(node, [])
        local = [pool[i] for i in mine]
        if not fits(node, [v for u in local for v in u]):
            continue  # even evicting everything allowed here does not make room
        taken = set(mine)

        def elsewhere(taken: set[int] = taken) -> list[Unit]:
            return [u for i, u in enumerate(pool) if i not in taken]

        bare = fits(node, []) if independent else None
        chosen = _search(node, local, elsewhere, fits, quota_ok, max_victims, order, bare)
        if chosen is None or (single and not chosen):
            continue  # none helps, or none is needed (the admission cycle will take the pod)
        flat = [v for u in chosen for v in u]
        score = (
            len(flat),
            sum(1 for u in chosen if own(u)) if reclaiming else 0,
            sum(1 for v in flat if v.qos is not QoS.BEST_EFFORT),
            max((v.priority for v in flat), default=-(2**31)),
            placer.rank(node),
        )
        if best is None or score < best[0]:
            best = (score, node, chosen)
    return None if best is None else (best[1], best[2])


def no_preemption_reason(manager: QueueManager, uid: str, refused: frozenset[str] = frozenset()) -> str | None:
    """Why `find_preemption` (with `refused` excluded) finds nothing for pod `uid`, for its wait message: the
    refused evictions, or the pods it may evict that would not make room. None when no pod it may evict
    holds slices and none was refused (its wait message already says what it lacks)."""
    preemptor = manager.pods.get(uid)
    if preemptor is None:
        return None
    names = sorted(manager.pods[r].key for r in refused if r in manager.pods)
    blocked = f"the eviction of {', '.join(names)} was refused (a PodDisruptionBudget)" if names else ""
    pool = candidates(manager, preemptor, refused)
    if pool:
        keys = ", ".join(v.key for v in pool[:5]) + (", ..." if len(pool) > 5 else "")
        rest = f"evicting {keys} would not make room for it"
        return f"no preemption: {blocked}; {rest}" if blocked else f"no preemption: {rest}"
    return f"no preemption: {blocked}" if blocked else None


def _within_nominal(manager: QueueManager, q: str, need: Resources, pool: Sequence[Victim]) -> bool:
    """Would `need` fit the queue's nominal quota once its own lower-priority victims are gone?"""
    spec = manager.queue(q)
    if spec is None:
        return False
    own = sum((v.charge for v in pool if v.queue == q), Resources())
    after = manager.usage(q) - own + need
    nc, nm = spec.nominal.compute, spec.nominal.memory_mib
    return (nc is None or after.compute <= nc) and (nm is None or after.memory_mib <= nm)


def _search(
    node: str,
    local: list[Unit],
    elsewhere: Callable[[], list[Unit]],
    fits: Callable[[str, Sequence[Victim]], bool],
    quota_ok: Callable[[Sequence[Victim]], bool],
    max_victims: int | None,
    order: Callable[[Unit], tuple[object, ...]] = unit_order,
    bare: bool | None = None,
) -> tuple[Unit, ...] | None:
    """Exact for one unit, else greedy in unit order then a reprieve pass; () when none is needed.

    `elsewhere()`: the units that do not touch `node`, in unit order (built only when needed). `bare`, when
    known: whether the pod fits `node` with none of `local` evicted, which is then its fit with any units of
    `elsewhere` evicted (they do not touch the node), so those are checked for quota only.
    """

    def flat(us: Sequence[Unit]) -> list[Victim]:
        return [v for u in us for v in u]

    def valid(us: Sequence[Unit]) -> bool:
        vs = flat(us)
        return quota_ok(vs) and fits(node, vs)

    if valid([]):
        return ()  # nothing to preempt: the pod fits already
    for u in local:  # exact for a single unit, in unit order
        if valid([u]):
            return (u,)
    if bare is not False:
        for u in elsewhere():
            if quota_ok(flat([u])) and (bare or fits(node, flat([u]))):
                return (u,)
    chosen: list[Unit] = []
    for u in local:  # capacity first: victims on this node
        if fits(node, flat(chosen)):
            break
        chosen.append(u)
    if not quota_ok(flat(chosen)):
        for u in elsewhere() + [u for u in local if u not in chosen]:  # then quota
            if quota_ok(flat(chosen)) or (max_victims is not None and len(chosen) > max_victims * 4):
                break  # (too many already: refused below whatever comes next)
            chosen.append(u)
    if not valid(chosen) or (max_victims is not None and len(chosen) > max_victims * 4):
        return None
    for u in sorted(chosen, key=order, reverse=True):  # reprieve the most valuable first
        trial = [c for c in chosen if c is not u]
        if valid(trial):
            chosen = trial
    if max_victims is not None and len(chosen) > max_victims:
        return None
    return tuple(sorted(chosen, key=order))


def _fits(ledger: Ledger, placer: Placer, request: PodRequest, node: str, victims: Sequence[Victim]) -> bool:
    with ledger.without(v.uid for v in victims):
        return placer.verdict(request, node).fits


def choose_victims(
    ledger: Ledger, placer: Placer, request: PodRequest, node: str, offered: Sequence[Victim]
) -> tuple[Victim, ...] | None:
    """The fewest of `offered` (pods holding slices on or for `node`) whose eviction lets `request` fit there.

    The extender's preempt verb: kube-scheduler offers the victims, this prunes them with the search and
    the victim order of `find_preemption`. `ledger` is a planning copy (`Ledger.copy()`, one per verb call)
    and `placer` places over it (`Placer.over`). The rank of `may_preempt` applies: kube-scheduler offers
    only pods of lower priority, and of those a best-effort pod may not evict a guaranteed one. (It never
    offers pods of equal or higher priority, so the best-effort pods a guaranteed pod outranks whatever
    their priority are reclaimed by the controller's `find_preemption`.) () when none is needed; None when
    even evicting every usable offered pod does not make room.
    """
    if not ledger.has_node(node):
        return None
    pool = sorted((v for v in offered if yields(request, v) or v.qos is request.qos), key=lambda v: v.order)

    def fits(node: str, victims: Sequence[Victim]) -> bool:
        return _fits(ledger, placer, request, node, victims)

    if not fits(node, pool):
        return None
    chosen = _search(node, [(v,) for v in pool], list, fits, lambda _: True, None)
    return None if chosen is None else tuple(sorted((u[0] for u in chosen), key=lambda v: v.order))
