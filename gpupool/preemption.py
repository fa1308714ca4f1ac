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

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain

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
    if len(unit) == 1:  # the common case, without the generators
        v = unit[0]
        return (0 if v.qos is QoS.BEST_EFFORT else 1, v.priority, 1, -v.admitted_at, v.key)
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
    # in `order`: `units` sorts by unit order (unique keys), so a stable sort on the first field is enough
    pool_units = units(pool, lambda key: members.get(key, 0))
    if reclaiming:
        pool_units.sort(key=own)

    quota = _Quota(manager, q, need, request, borrowing)

    chosen_all: list[Victim] = []
    plans: dict[str, Plan] = {}
    first_node = ""
    ordered = sorted(gang, key=lambda m: (-m.request.compute_units, -m.request.memory_units(largest), m.sort_key))
    for i, member in enumerate(ordered):
        last = i == len(ordered) - 1
        before = list(chosen_all)
        left = [u for u in pool_units if not any(v in before for v in u)]

        member_quota = quota.given(before) if last else _Quota.ANY

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
    if not chosen_all or not quota.ok(chosen_all) or uid not in plans:
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


class _Quota:
    """The preemptor's quota check on a victim set (module doc: "and its queue's quota"), fast.

    The verdict depends on the set only through what it frees per queue and, per queue it reclaims from, what
    the victims before its last one (in victim order) free: the victim queue must still borrow when each is
    taken, and since charges only lower its usage, checking before the last victim checks them all. So a
    `_Tally` adds and removes victims one at a time and verdicts are remembered per such summary.
    `plain` recomputes each verdict from the whole set (the reference, kept for the oracle test).
    """

    ANY: _Quota  # no quota to check (the implicit queue, the extender's prune, a gang's earlier members)

    def __init__(self, manager: QueueManager | None, q: str, need: Resources, request: PodRequest | None,
                 borrowing: bool, base: Sequence[Victim] = (), plain: bool = False) -> None:  # fmt: skip
        self.manager, self.q, self.need, self.request, self.borrowing = manager, q, need, request, borrowing
        self.base = tuple(base)  # victims already chosen (a gang's earlier members): always in the set
        self.plain = plain
        self.free = manager is None or q == IMPLICIT_QUEUE
        self.known: dict[object, bool] = {}  # summary -> verdict, shared with `given` copies
        self.units: dict[str, bool] = {}  # a unit's first uid -> its verdict alone (with `base`)

    def given(self, base: Sequence[Victim]) -> _Quota:
        """The same check with `base` always among the victims."""
        other = _Quota(self.manager, self.q, self.need, self.request, self.borrowing, base, self.plain)
        other.known = self.known
        return other

    def as_plain(self) -> _Quota:
        other = _Quota(self.manager, self.q, self.need, self.request, self.borrowing, self.base, plain=True)
        return other

    def reclaims(self, v: Victim) -> bool:
        """Is `v` taken by the quota rules of reclaim (another queue's pod that does not simply yield)?"""
        assert self.request is not None
        return v.queue not in (self.q, IMPLICIT_QUEUE) and not yields(self.request, v)

    def ok(self, victims: Sequence[Victim]) -> bool:
        if self.free:
            return True
        return self.tally(victims).ok()

    def ok_unit(self, unit: Unit) -> bool:
        """`ok(unit)`, remembered per unit: single units are asked again for every node."""
        if self.free:
            return True
        known = self.units.get(unit[0].uid)
        if known is None:
            known = self.units[unit[0].uid] = self.ok(unit)
        return known

    def tally(self, victims: Sequence[Victim] = ()) -> _Tally:
        t = _Tally(self)
        t.add(self.base)
        t.add(victims)
        return t

    def verdict(self, summary: tuple[tuple[tuple[str, int, int], ...], tuple[tuple[str, int, int], ...]]) -> bool:
        known = self.known.get(summary)
        if known is None:
            known = self.known[summary] = self._verdict(summary)
        return known

    def _verdict(self, summary: tuple[tuple[tuple[str, int, int], ...], tuple[tuple[str, int, int], ...]]) -> bool:
        manager = self.manager
        assert manager is not None
        freed_t, before_last = summary
        freed = {name: Resources(c, m) for name, c, m in freed_t}
        if manager.quota_problem(self.q, self.need, freed) is not None:
            return False
        for other, c, m in before_last:  # each victim's queue must still be borrowing when it is taken
            spec = manager.queue(other)
            if spec is None:
                return False
            if self.borrowing and not manager.may_reclaim(
                self.q, self.need - freed.get(self.q, Resources()), other, freed.get(other, Resources())
            ):
                return False  # gpupool.fairshare.may_reclaim
            running = manager.usage(other) - Resources(c, m)
            nc, nm = spec.nominal.compute or 0, spec.nominal.memory_mib
            if not (running.compute > nc or (nm is not None and running.memory_mib > nm)):
                return False
        return True

    def plain_ok(self, victims: Sequence[Victim]) -> bool:
        """The verdict recomputed from the whole set, victim by victim (the reference)."""
        manager = self.manager
        if self.free or manager is None:
            return True
        victims = [*self.base, *victims]
        q, need = self.q, self.need
        freed: dict[str, Resources] = {}
        for v in victims:
            freed[v.queue] = freed.get(v.queue, Resources()) + v.charge
        if manager.quota_problem(q, need, freed) is not None:
            return False
        by_queue: dict[str, list[Victim]] = {}
        for v in victims:
            if self.reclaims(v):
                by_queue.setdefault(v.queue, []).append(v)
        for other, taken in by_queue.items():
            spec = manager.queue(other)
            if spec is None:
                return False
            running = manager.usage(other)
            if self.borrowing and not manager.may_reclaim(q, need - freed.get(q, Resources()), other, freed[other]):
                return False
            for v in sorted(taken, key=lambda v: v.order):
                nc, nm = spec.nominal.compute or 0, spec.nominal.memory_mib
                if not (running.compute > nc or (nm is not None and running.memory_mib > nm)):
                    return False
                running = running - v.charge
        return True


_Quota.ANY = _Quota(None, IMPLICIT_QUEUE, Resources(), None, False)


class _Tally:
    """A victim set's quota summary (`_Quota`), kept up to date one victim at a time."""

    def __init__(self, quota: _Quota) -> None:
        self.quota = quota
        self.victims: list[Victim] = []
        self.freed: dict[str, list[int]] = {}  # queue -> [compute, memory] freed
        self.taken: dict[str, list[Victim]] = {}  # reclaimed queue -> its victims
        self.taken_sum: dict[str, list[int]] = {}
        self.last: dict[str, Victim] = {}  # reclaimed queue -> its last victim in victim order

    def add(self, victims: Sequence[Victim]) -> None:
        if self.quota.free:
            return
        if self.quota.plain:
            self.victims.extend(victims)
            return
        for v in victims:
            f = self.freed.setdefault(v.queue, [0, 0])
            f[0] += v.charge.compute
            f[1] += v.charge.memory_mib
            if self.quota.reclaims(v):
                self.taken.setdefault(v.queue, []).append(v)
                t = self.taken_sum.setdefault(v.queue, [0, 0])
                t[0] += v.charge.compute
                t[1] += v.charge.memory_mib
                last = self.last.get(v.queue)
                if last is None or v.order > last.order:
                    self.last[v.queue] = v

    def remove(self, victims: Sequence[Victim]) -> None:
        if self.quota.free:
            return
        if self.quota.plain:
            for v in victims:
                self.victims.remove(v)
            return
        for v in victims:
            f = self.freed[v.queue]
            f[0] -= v.charge.compute
            f[1] -= v.charge.memory_mib
            if self.quota.reclaims(v):
                taken = self.taken[v.queue]
                taken.remove(v)
                t = self.taken_sum[v.queue]
                t[0] -= v.charge.compute
                t[1] -= v.charge.memory_mib
                if not taken:
                    del self.taken[v.queue], self.taken_sum[v.queue], self.last[v.queue]
                elif self.last[v.queue] is v:
                    self.last[v.queue] = max(taken, key=lambda x: x.order)

    def ok(self) -> bool:
        if self.quota.free:
            return True
        if self.quota.plain:
            return self.quota.plain_ok(self.victims)
        freed = tuple(sorted((name, c, m) for name, (c, m) in self.freed.items() if c or m))
        before_last = tuple(sorted(
            (name, c - self.last[name].charge.compute, m - self.last[name].charge.memory_mib)
            for name, (c, m) in self.taken_sum.items()
        ))  # fmt: skip
        return self.quota.verdict((freed, before_last))

    def ok_without(self, victims: Sequence[Victim]) -> bool:
        self.remove(victims)
        try:
            return self.ok()
        finally:
            self.add(victims)


def _best_node(
    manager: QueueManager,
    ledger: Ledger,
    placer: Placer,
    member: PodEntry,
    pool: list[Unit],
    quota: _Quota,
    max_victims: int,
    order: Callable[[Unit], tuple[object, ...]],
    reclaiming: bool,
    own: Callable[[Unit], bool],
    *,
    single: bool,
) -> tuple[str, tuple[Unit, ...]] | None:
    """The node where `member` fits with the fewest victim units evicted (none for a gang member that fits
    already; a single pod that fits already needs no preemption: None).

    Same result as trying every node with every unit, found faster (docs/e2e.md "Controller at scale"):

    * units are indexed by the nodes they touch, and a `local` pod's fit on a node depends only on the
      victims that touch that node (its verdict reads that node's state alone), so fits are remembered per
      (node, victims there) and units elsewhere are never tried for the fit;
    * a node's score has a lower bound (`_bounds`): a guaranteed local pod needs its compute free on the node,
      so at least as many local units as it takes for the node's free compute plus theirs to reach it.
      Nodes are visited from the lowest bound, and the search stops once the bound cannot beat the best
      score found (ties go to the earlier node in `names`, as in a plain pass); a node whose every local
      unit would not free enough compute is never searched.
    """
    request = member.request
    nodes = manager.eligible_nodes(member)
    names = ledger.node_names() if nodes is None else nodes
    independent = request.locality is not Locality.POOL  # remote slices read other nodes
    touching: dict[str, list[int]] = {}  # node -> positions in `pool` of the units that touch it
    where: dict[str, frozenset[str]] = {}  # victim uid -> the nodes its holding touches
    freed: dict[str, list[int]] = {}  # node -> compute each unit touching it frees there (same positions)
    for i, u in enumerate(pool):
        if len(u) == 1 and all(s.node == u[0].holding.node for s in u[0].holding.slices):  # the common case
            h = u[0].holding
            where[u[0].uid] = frozenset((h.node,))
            touching.setdefault(h.node, []).append(i)
            freed.setdefault(h.node, []).append(sum(s.compute for s in h.slices))
            continue
        here: dict[str, int] = {}
        for v in u:
            where[v.uid] = frozenset({v.holding.node, *(s.node for s in v.holding.slices)})
            for n in where[v.uid]:
                here.setdefault(n, 0)
            for s in v.holding.slices:
                here[s.node] += s.compute
        for n in sorted(here):
            touching.setdefault(n, []).append(i)
            freed.setdefault(n, []).append(here[n])
    seen: dict[tuple[str, frozenset[str]], bool] = {}
    ok_alone: list[list[int]] = []  # positions of the units whose quota passes alone (the same on every node)

    def passing() -> list[int]:
        if not ok_alone:
            ok_alone.append([i for i, u in enumerate(pool) if quota.ok_unit(u)])
        return ok_alone[0]

    def fits(node: str, victims: Sequence[Victim]) -> bool:
        if independent:
            victims = [v for v in victims if node in where[v.uid]]
        key = (node, frozenset(v.uid for v in victims))
        known = seen.get(key)
        if known is None:
            known = seen[key] = _fits(ledger, placer, request, node, victims)
        return known

    Score = tuple[int, int, int, int, int, int]
    best: tuple[Score, str, tuple[Unit, ...]] | None = None
    for bound, node in _bounds(ledger, placer, request, names, pool, touching, freed, reclaiming, own,
                               single=single):
        if best is not None and bound >= best[0]:
            break  # no node left can beat the best (bounds ascend)
        mine = touching.get(node, [])
        local = [pool[i] for i in mine]
        if not fits(node, [v for u in local for v in u]):
            continue  # even evicting everything allowed here does not make room
        taken = set(mine)

        def elsewhere(taken: set[int] = taken) -> Iterable[Unit]:
            return (u for i, u in enumerate(pool) if i not in taken)  # lazily: the passes stop early

        def alone(taken: set[int] = taken) -> Iterable[Unit]:
            return (pool[i] for i in passing() if i not in taken)

        bare = fits(node, []) if independent else None
        chosen = _search(node, local, elsewhere, fits, quota, max_victims, order, bare, alone)
        if chosen is None or (single and not chosen):
            continue  # none helps, or none is needed (the admission cycle will take the pod)
        flat = [v for u in chosen for v in u]
        score = (
            len(flat),
            sum(1 for u in chosen if own(u)) if reclaiming else 0,
            sum(1 for v in flat if v.qos is not QoS.BEST_EFFORT),
            max((v.priority for v in flat), default=-(2**31)),
            placer.rank(node),
            bound[5],  # the node's position in `names`: the first of equal scores wins
        )
        if best is None or score < best[0]:
            best = (score, node, chosen)
    return None if best is None else (best[1], best[2])


def _bounds(
    ledger: Ledger, placer: Placer, request: PodRequest, names: Sequence[str], pool: list[Unit],
    touching: dict[str, list[int]], freed: dict[str, list[int]], reclaiming: bool, own: Callable[[Unit], bool],
    *, single: bool,
) -> list[tuple[tuple[int, int, int, int, int, int], str]]:  # fmt: skip
    """Each node that might take `request` with a lower bound of its score in `_best_node`, lowest first.

    The victims are at least the units it takes to free the compute a guaranteed local pod lacks on the node
    (each GPU's compute free for a guaranteed slice, ignoring health, plus the compute its victims' slices
    hold there: freeing a victim frees no more than that); at least one for a single pod. Their highest
    priority and (when reclaiming) own units are bounded from those local units. Nodes where even all local
    units do not free enough are left out (their fit with every local unit evicted fails).
    """
    capacity = request.qos is QoS.GUARANTEED and request.locality is not Locality.POOL
    need = max(
        sum(c.count * c.compute for c in request.containers if not c.init),
        max((c.count * c.compute for c in request.containers if c.init), default=0),
    )
    best_effort = sum(1 for u in pool for v in u if v.qos is QoS.BEST_EFFORT)
    lowest = min((v.priority for u in pool for v in u), default=-(2**31))
    out: list[tuple[tuple[int, int, int, int, int, int], str]] = []
    for index, node in enumerate(names):
        if not ledger.has_node(node):
            continue
        count = 0  # local units it takes at least
        if capacity and need > 0:
            free = sum(ledger.gpu_free(g.uuid)[0] for g in ledger.gpus_of(node))
            if free < need:
                for gain in sorted(freed.get(node, []), reverse=True):
                    free += gain
                    count += 1
                    if free >= need:
                        break
                if free < need:
                    continue  # evicting every local unit does not free enough compute
        mine, top, own_least = 0, lowest if single else -(2**31), 0
        if count:
            # the victims hold at least `count` local units, so their highest priority is at least the
            # count-th lowest of those units'; with none of the preemptor's own (when that counts), of those
            local = [pool[i] for i in touching.get(node, [])]
            others = sorted(max(v.priority for v in u) for u in local if not (reclaiming and own(u)))
            if len(others) >= count:
                top = others[count - 1]
            else:
                own_least = count - len(others)
                top = sorted(max(v.priority for v in u) for u in local)[count - 1]
        count = max(count, 1) if single else count
        mine = max(0, count - best_effort)
        out.append(((count, own_least, mine, top, placer.rank(node), index), node))
    out.sort()
    return out


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
    elsewhere: Callable[[], Iterable[Unit]],
    fits: Callable[[str, Sequence[Victim]], bool],
    quota: _Quota,
    max_victims: int | None,
    order: Callable[[Unit], tuple[object, ...]] = unit_order,
    bare: bool | None = None,
    alone: Callable[[], Iterable[Unit]] | None = None,
) -> tuple[Unit, ...] | None:
    """Exact for one unit, else greedy in unit order then a reprieve pass; () when none is needed.

    `elsewhere()`: the units that do not touch `node`, in unit order (iterated only as far as needed). `bare`, when
    known: whether the pod fits `node` with none of `local` evicted, which is then its fit with any units of
    `elsewhere` evicted (they do not touch the node), so those are checked for quota only; `alone()`, when
    given: the units of `elsewhere()` whose quota check passes alone, for that check. The quota of the
    greedy and reprieve passes is kept by a `_Tally`, one unit at a time.
    """

    def flat(us: Sequence[Unit]) -> list[Victim]:
        return [v for u in us for v in u]

    def valid(us: Sequence[Unit]) -> bool:
        vs = flat(us)
        return quota.ok(vs) and fits(node, vs)

    if valid([]):
        return ()  # nothing to preempt: the pod fits already
    for u in local:  # exact for a single unit, in unit order
        if quota.ok_unit(u) and fits(node, u):
            return (u,)
    if bare is not False:
        for u in elsewhere() if alone is None or not bare else alone():
            if quota.ok_unit(u) and (bare or fits(node, u)):
                return (u,)
    chosen: list[Unit] = []
    for u in local:  # capacity first: victims on this node
        if fits(node, flat(chosen)):
            break
        chosen.append(u)
    tally = quota.tally(flat(chosen))
    if not tally.ok():
        for u in chain(elsewhere(), [u for u in local if u not in chosen]):  # then quota
            if tally.ok() or (max_victims is not None and len(chosen) > max_victims * 4):
                break  # (too many already: refused below whatever comes next)
            chosen.append(u)
            tally.add(u)
    if not (tally.ok() and fits(node, flat(chosen))) or (max_victims is not None and len(chosen) > max_victims * 4):
        return None
    for u in sorted(chosen, key=order, reverse=True):  # reprieve the most valuable first
        trial = [c for c in chosen if c is not u]
        if tally.ok_without(u) and fits(node, flat(trial)):
            chosen = trial
            tally.remove(u)
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
    the victim order of `find_preemption`. `ledger` is a planning copy (`Ledger.overlay()`, one per verb call)
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
    chosen = _search(node, [(v,) for v in pool], list, fits, _Quota.ANY, None)
    return None if chosen is None else tuple(sorted((u[0] for u in chosen), key=lambda v: v.order))
