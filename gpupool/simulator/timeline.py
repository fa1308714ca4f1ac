"""`gpupool simulate --timeline`: arrivals and departures on a virtual clock, through the controller's QueueManager.

Each pod (a `Job`) joins at its arrival time as a gated pod; at every instant something happens (an arrival,
a departure), the same admission pass the controller runs (`QueueManager.schedule`: queues, quota,
cohort borrowing, priority, BestEffortFIFO) decides, blocked heads preempt through
`gpupool.preemption.find_preemption` (victims leave at once and, by default, join again as new pods, as a
Job's controller recreates them), and an admitted pod is bound at once (its RESERVED holding becomes its
assignment) and leaves `duration` seconds later. No sleeping: time jumps from event to event.

Inputs: a trace (`scenario_from_trace`, pods mapped to queues by a `QueuePlan`) or a cluster snapshot
(`scenario_from_snapshot`). Output (`TimelineResult`): GPU allocation and FGD fragmentation sampled every
`step` seconds, queueing delay per queue, preemptions. Pod groups plug in where the QueueManager admits
(a gang is admitted or waits whole in `schedule`); nothing here counts pods one by one beyond binding what
`schedule` admitted. Format of the queue plan and the recipe: docs/timeline.md.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gpupool import objects
from gpupool.errors import GpupoolError
from gpupool.fragmentation import Workload
from gpupool.ledger import HoldingKind
from gpupool.pool import Pool, PoolConfig, build_pool
from gpupool.preemption import find_preemption
from gpupool.queues import PodEntry, QueueManager, QueueSpec
from gpupool.request import QoS
from gpupool.simulator.snapshot import Snapshot
from gpupool.simulator.trace import TraceNode, TracePod, TraceTimes, infeasible_pods

#: how trace pods pick their queue (docs/timeline.md)
ASSIGN_RULES = ("hash", "round-robin")
#: admission passes at one instant (a pass that preempted is followed by one that admits the preemptor)
MAX_PASSES = 8
#: samples of the series when no step is given
DEFAULT_SAMPLES = 200

_DEPART, _ARRIVE = 0, 1  # departures first at one instant: they free capacity for that instant's arrivals


class TimelineError(ValueError):
    """A queue plan, quota override or scenario that cannot work; the message names the field."""


# --- the queue plan: which trace pod goes to which queue ------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedQueue:
    spec: QueueSpec
    #: weight of the queue when pods are spread over the queues
    share: int = 1
    #: priority of the queue's pods
    priority: int = 0


@dataclass(frozen=True, slots=True)
class QueuePlan:
    """The queues of a trace what-if and the rule that maps its pods to them (docs/timeline.md)."""

    queues: tuple[PlannedQueue, ...]
    assign: str = "hash"
    #: the trace's `qos` column BE makes a pod best-effort (default: every pod is guaranteed; best-effort pods
    #: are preempted by any guaranteed one, and their placement is not memoised, so a run takes far longer)
    best_effort_from_trace: bool = False

    def pick(self, name: str, index: int, seed: int) -> PlannedQueue | None:
        """The queue of the `index`-th trace pod (arrival order) named `name`; None without queues."""
        if not self.queues:
            return None
        total = sum(q.share for q in self.queues)
        if self.assign == "round-robin":
            k = index % total
        else:
            digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
            k = int.from_bytes(digest[:8], "big") % total
        for q in self.queues:
            if k < q.share:
                return q
            k -= q.share
        raise AssertionError("unreachable: k < total")


def parse_queue_plan(doc: Any) -> QueuePlan:
    """A queue plan from its YAML/JSON document; raises `TimelineError` naming the field."""
    if not isinstance(doc, dict):
        raise TimelineError("the queue file must hold a mapping with a 'queues' list")
    unknown = sorted(set(doc) - {"assign", "queues", "bestEffortFromTrace"})
    if unknown:
        raise TimelineError(f"field {unknown[0]!r}: unknown; the file has 'assign', 'queues', 'bestEffortFromTrace'")
    assign = doc.get("assign", "hash")
    if assign not in ASSIGN_RULES:
        raise TimelineError(f"field 'assign': {assign!r}; choose from {', '.join(ASSIGN_RULES)}")
    best_effort = doc.get("bestEffortFromTrace", False)
    if not isinstance(best_effort, bool):
        raise TimelineError(f"field 'bestEffortFromTrace': {best_effort!r}; write true or false")
    items = doc.get("queues")
    if not isinstance(items, list) or not items:
        raise TimelineError("field 'queues': must be a non-empty list of {name, share, priority, spec}")
    planned: list[PlannedQueue] = []
    for i, item in enumerate(items):
        where = f"queues[{i}]"
        if not isinstance(item, dict):
            raise TimelineError(f"{where}: must be a mapping with name, share, priority, spec")
        extra = sorted(set(item) - {"name", "share", "priority", "spec"})
        if extra:
            raise TimelineError(f"{where}.{extra[0]}: unknown; a queue has name, share, priority, spec")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise TimelineError(f"{where}.name: must be a non-empty string")
        share, priority = item.get("share", 1), item.get("priority", 0)
        if not isinstance(share, int) or isinstance(share, bool) or share < 1:
            raise TimelineError(f"{where}.share: {share!r}; write a whole number >= 1")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TimelineError(f"{where}.priority: {priority!r}; write a whole number")
        spec = item.get("spec") or {}
        if not isinstance(spec, dict):
            raise TimelineError(f"{where}.spec: must be a GPUQueue spec (crds/gpuqueue.yaml)")
        if "namespaces" not in spec and "namespaceSelector" not in spec:
            spec = {**spec, "namespaces": [name]}  # the trace's pods of this queue live in namespace `name`
        try:
            queue = objects.queue_spec_from_object({"metadata": {"name": name}, "spec": spec})
        except GpupoolError as exc:
            raise TimelineError(f"{where}.spec: {exc}") from None
        planned.append(PlannedQueue(queue, share, priority))
    names = [q.spec.name for q in planned]
    if len(set(names)) != len(names):
        raise TimelineError("field 'queues': a queue name appears twice")
    return QueuePlan(tuple(planned), assign, best_effort)


def parse_quota_overrides(items: Iterable[str]) -> dict[str, int]:
    """`--set-quota QUEUE=COMPUTE` flags (compute units: 100 = one GPU) as {queue: compute}."""
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise TimelineError(f"--set-quota {item!r}: write QUEUE=COMPUTE, e.g. team-a=400 (100 = one GPU)")
        try:
            compute = int(value)
        except ValueError:
            raise TimelineError(f"--set-quota {item!r}: {value!r} is not a whole number of compute units") from None
        if compute < 0:
            raise TimelineError(f"--set-quota {item!r}: compute must be >= 0")
        out[name] = compute
    return out


def with_quotas(queues: Sequence[QueueSpec], overrides: Mapping[str, int]) -> list[QueueSpec]:
    """The queues with `nominalQuota.compute` replaced as `overrides` says; an unknown queue is an error."""
    known = {q.name for q in queues}
    for name in overrides:
        if name not in known:
            names = ", ".join(sorted(known)) or "none"
            raise TimelineError(f"--set-quota {name}: no such queue; the queues are {names}")
    return [replace(q, nominal=replace(q.nominal, compute=overrides[q.name])) if q.name in overrides else q
            for q in queues]  # fmt: skip


# --- the scenario --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One pod of the what-if: its queue-manager record, when it joins, how long it runs once admitted."""

    entry: PodEntry  # a template: copied at arrival (gated, unless it is already running)
    arrival: float
    #: seconds it runs once admitted (None: until the end)
    duration: float | None
    #: already running when the scenario starts (a snapshot's admitted pod): not counted as a wait
    running: bool = False


@dataclass
class Scenario:
    """Everything one timeline run needs; built by `scenario_from_trace` or `scenario_from_snapshot`."""

    pool: Pool
    queues: Sequence[QueueSpec]
    jobs: Sequence[Job]
    start: float = 0.0
    namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    node_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: seconds between samples of the series (None: DEFAULT_SAMPLES over the jobs' span)
    step: float | None = None
    #: stop here (None: when nothing more can happen)
    horizon: float | None = None
    preemption: bool = True
    #: evicted pods join again at once as new pods (their run starts over)
    requeue_evicted: bool = True
    #: a blocked head whose preemption search found nothing searches again only this many seconds later
    #: (the controller searches every cycle; one search plans on a copy of the whole ledger, about a second
    #: on the openb cluster, so a run with long-blocked heads would take hours; 0 = every pass, as live)
    preemption_retry: float = 60.0
    #: the fragmentation measure's target workload (None: the pool's)
    workload: Workload | None = None
    #: left out of the run, with why (CPU-only pods, pods no node can serve, bad snapshot objects)
    skipped: Mapping[str, int] = field(default_factory=dict)


def _trace_request(pod: TracePod, uid: str) -> Any:
    from gpupool.simulator.protocol import pod_request

    return replace(pod_request(pod), uid=uid)


def scenario_from_trace(
    nodes: Sequence[TraceNode],
    pods: Sequence[TracePod],
    times: Mapping[str, TraceTimes],
    plan: QueuePlan | None,
    *,
    policy: str,
    seed: int,
    quotas: Mapping[str, int] | None = None,
    step: float | None = None,
    horizon: float | None = None,
    preemption: bool = True,
    preemption_retry: float = 60.0,
    speedup: float = 1.0,
) -> Scenario:
    """The trace's GPU pods arriving at `creation_time` and running for their trace run time (`TraceTimes.duration`),
    each in the queue `plan` picks (no plan: the implicit queue, no quota). `speedup` divides the time between
    arrivals (run times stay): the same pods, `speedup` times the load. CPU-only pods are left out (gpupool
    does not admit them) and so are pods no idle node could serve (they could only wait forever)."""
    if not speedup > 0:
        raise TimelineError(f"--speedup: {speedup} (need a factor > 0)")
    from gpupool.policies.fgdpp import reserved_shares
    from gpupool.simulator.protocol import build_ledger, node_rank, pool_config
    from gpupool.simulator.trace import target_workload

    rng = random.Random(seed)
    workload = target_workload(pods)
    model_gpus: dict[str, int] = {}
    for n in nodes:
        if n.gpus:
            model_gpus[n.model] = model_gpus.get(n.model, 0) + n.gpus
    # as the replay (gpupool.simulator.protocol.replay): the seeded node order, fgdpp's reserved shares
    rank = node_rank(list(nodes), rng)
    config: PoolConfig = pool_config(policy, seed, workload, reserved_shares(target_workload(pods, 1.0), model_gpus))
    pool = build_pool(config, rank=rank.__getitem__)
    build_ledger(list(nodes), pool.ledger)
    infeasible = {bad.pod.name for bad in infeasible_pods(list(pods), list(nodes))}
    skipped = {"cpu-only": 0, "infeasible": 0, "no times": 0}
    timed = []
    for pod in pods:
        t = times.get(pod.name)
        if t is None:
            skipped["no times"] += 1
        elif pod.num_gpu == 0:
            skipped["cpu-only"] += 1
        elif pod.name in infeasible:
            skipped["infeasible"] += 1
        else:
            timed.append((t.created, pod.name, pod, t))
    timed.sort(key=lambda x: (x[0], x[1]))
    jobs: list[Job] = []
    first = timed[0][0] if timed else 0
    for index, (created, name, pod, t) in enumerate(timed):
        arrival = first + (created - first) / speedup
        queue = plan.pick(name, index, seed) if plan is not None else None
        best_effort = plan is not None and plan.best_effort_from_trace
        qos = QoS.BEST_EFFORT if best_effort and t.qos == "BE" else QoS.GUARANTEED
        namespace = queue.spec.name if queue is not None else "default"
        request = replace(_trace_request(pod, name), namespace=namespace, qos=qos,
                          queue=queue.spec.name if queue is not None else None,
                          priority=queue.priority if queue is not None else 0)  # fmt: skip
        entry = PodEntry(request=request, created=arrival, gated=True)
        jobs.append(Job(entry, arrival, float(t.duration)))
    queues = [q.spec for q in plan.queues] if plan is not None else []
    queues = with_quotas(queues, quotas or {})
    start = jobs[0].arrival if jobs else 0.0
    namespaces: dict[str, Mapping[str, str]] = {q.name: {} for q in queues}
    namespaces["default"] = {}
    return Scenario(pool, queues, jobs, start, namespaces, {}, step=step, horizon=horizon, preemption=preemption,
                    preemption_retry=preemption_retry, workload=workload,
                    skipped={k: v for k, v in skipped.items() if v})  # fmt: skip


def scenario_from_snapshot(
    snapshot: Snapshot,
    *,
    config: PoolConfig,
    seed: int,
    duration: float,
    arrivals: int = 0,
    interarrival: float = 60.0,
    quotas: Mapping[str, int] | None = None,
    step: float | None = None,
    horizon: float | None = None,
    preemption: bool = True,
    preemption_retry: float = 60.0,
) -> Scenario:
    """The snapshot's cluster from its `taken` time: running pods leave after a seeded uniform draw in
    (0, `duration`] (their remaining time is unknown; a pod group's members at the first member's draw),
    pending pods join at once (pod groups admitted all or nothing, `gpupool.groups`) and run `duration`
    seconds, and `arrivals` more pods (copies of the snapshot's pods drawn with the seed: shape, queue,
    priority, QoS; each alone) join at exponential intervals of mean `interarrival` seconds and run `duration`
    seconds."""
    if duration <= 0:
        raise TimelineError(f"--duration: {duration} (need seconds > 0)")
    if arrivals < 0 or interarrival <= 0:
        raise TimelineError("--arrivals must be >= 0 and --interarrival > 0 seconds")
    pool = build_pool(config)
    for node in snapshot.nodes:
        pool.ledger.upsert_node(node)
    rng = random.Random(seed)
    start = snapshot.taken
    jobs: list[Job] = []
    group_runs: dict[str, float] = {}  # a running pod group's members leave together
    for entry in sorted(snapshot.pods, key=lambda e: e.sort_key):
        copy = replace(entry)
        if entry.gated:
            jobs.append(Job(copy, start, duration))
            continue
        run_s = rng.uniform(0.0, duration) or duration
        if entry.group is not None:
            run_s = group_runs.setdefault(entry.group.key, run_s)
        jobs.append(Job(copy, start, run_s, running=True))
    templates = list(sorted(snapshot.pods, key=lambda e: e.key))
    if arrivals and not templates:
        raise TimelineError("--arrivals: the snapshot has no gpupool pod to copy")
    at = start
    for i in range(arrivals):
        at += rng.expovariate(1.0 / interarrival)
        model = templates[rng.randrange(len(templates))]
        name = f"{model.request.name or model.uid}-synthetic-{i}"
        request = replace(model.request, uid=f"synthetic-{i}", name=name, queue=model.named_queue)
        entry = PodEntry(request=request, created=at, gated=True, node_selector=dict(model.node_selector))
        jobs.append(Job(entry, at, duration))
    queues = with_quotas(list(snapshot.queues), quotas or {})
    skipped = {"snapshot problems": len(snapshot.problems)} if snapshot.problems else {}
    return Scenario(pool, queues, jobs, start, snapshot.namespaces, snapshot.node_labels, step=step, horizon=horizon,
                    preemption=preemption, preemption_retry=preemption_retry, skipped=skipped)  # fmt: skip


# --- the result ----------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default); nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def queue_label(name: str | None) -> str:
    return name if name else "(none)"


@dataclass
class TimelineResult:
    """The series (every `step` seconds from the start) and the per-queue waits of one timeline run."""

    start: float
    step: float
    times: list[float] = field(default_factory=list)  # seconds since the start
    utilisation: list[float] = field(default_factory=list)  # % of GPU compute held by bound pods
    fragmentation: list[float] = field(default_factory=list)  # FGD's measure, % of GPU compute
    pending: list[int] = field(default_factory=list)  # pods waiting for admission
    #: queue -> waits (seconds from arrival to admission) of admitted pods
    waits: dict[str, list[float]] = field(default_factory=dict)
    #: queue -> waits of pods still waiting at the end (censored: arrival to the end)
    unfinished: dict[str, list[float]] = field(default_factory=dict)
    preemptions: int = 0
    preemptions_by_queue: dict[str, int] = field(default_factory=dict)  # by the victim's queue
    admitted: int = 0
    completed: int = 0
    cycles: int = 0
    end: float = 0.0
    seconds: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)

    def all_waits(self, queue: str) -> list[float]:
        """Admitted pods' waits and the censored waits of pods still waiting (a lower bound for them)."""
        return self.waits.get(queue, []) + self.unfinished.get(queue, [])

    def queues(self) -> list[str]:
        return sorted(set(self.waits) | set(self.unfinished))

    def wait_percentile(self, queue: str, q: float) -> float:
        return percentile(self.all_waits(queue), q)

    def as_json(self) -> dict[str, Any]:
        """`--json`: utilisation, wait_p50_s, wait_p99_s, preemptions (the issue's contract), more: docs/timeline.md."""

        def per_queue(q: float) -> dict[str, float]:
            return {name: round(self.wait_percentile(name, q), 3) for name in self.queues()}

        return {
            "utilisation": [round(u, 3) for u in self.utilisation],
            "wait_p50_s": per_queue(50),
            "wait_p99_s": per_queue(99),
            "preemptions": self.preemptions,
            "wait_p90_s": per_queue(90),
            "wait_max_s": per_queue(100),
            "admitted_per_queue": {q: len(self.waits.get(q, [])) for q in self.queues()},
            "still_waiting_per_queue": {q: len(self.unfinished.get(q, [])) for q in self.queues()},
            "preemptions_per_queue": dict(sorted(self.preemptions_by_queue.items())),
            "t_s": [round(t, 3) for t in self.times],
            "step_s": self.step,
            "fragmentation": [round(f, 3) for f in self.fragmentation],
            "pending": self.pending,
            "admitted": self.admitted,
            "completed": self.completed,
            "cycles": self.cycles,
            "span_s": self.end - self.start,
            "seconds": round(self.seconds, 3),
            "skipped": self.skipped,
        }


# --- the run -------------------------------------------------------------------------------------------


class _Run:
    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.now = scenario.start
        pool = scenario.pool
        self.ledger = pool.ledger
        self.manager = QueueManager(pool.ledger, pool.placer, clock=lambda: self.now)
        for name, labels in scenario.namespaces.items():
            self.manager.set_namespace(name, labels)
        for node, labels in scenario.node_labels.items():
            self.manager.set_node_labels(node, labels)
        for spec in scenario.queues:
            self.manager.set_queue(spec)
        self.capacity = sum(100 for n in self.ledger.node_names() for g in self.ledger.gpus_of(n)
                            if g.healthy and not g.disabled)  # fmt: skip
        self.measure = scenario.workload or pool.workload
        self._frag: dict[str, tuple[object, float]] = {}
        self._frag_at: tuple[int, float] = (-1, 0.0)  # (ledger generation, fragmentation then)
        self.events: list[tuple[float, int, int, str]] = []
        self._seq = 0
        self.jobs: dict[str, Job] = {}
        self.arrived_at: dict[str, float] = {}
        self.bound: dict[str, int] = {}  # uid -> compute units held while running
        self.allocated = 0
        self.requeued: dict[str, int] = {}
        self.retry_at: dict[str, float] = {}  # blocked head -> when it may search for victims again
        span_end = max((j.arrival + (j.duration or 0.0) for j in scenario.jobs), default=scenario.start)
        step = scenario.step or max(1.0, (span_end - scenario.start) / DEFAULT_SAMPLES)
        self.result = TimelineResult(scenario.start, step, skipped=dict(scenario.skipped))
        self.next_sample = scenario.start

    def push(self, at: float, kind: int, uid: str) -> None:
        self._seq += 1
        heapq.heappush(self.events, (at, kind, self._seq, uid))

    # --- state changes ---

    def arrive(self, uid: str) -> None:
        job = self.jobs[uid]
        entry = replace(job.entry)
        self.manager.upsert_pod(entry)
        if job.running:
            self.bind(uid)
        else:
            self.arrived_at[uid] = self.now

    def bind(self, uid: str) -> None:
        """The extender's bind: the admitted pod's RESERVED holding becomes its assignment; it runs `duration`."""
        entry = self.manager.pods[uid]
        holding = self.ledger.holding(uid)
        if holding is not None and holding.kind is not HoldingKind.ASSIGNED:
            holding = replace(holding, kind=HoldingKind.ASSIGNED)
            self.manager.upsert_pod(replace(entry, gated=False, assigned=holding))
        units = holding.compute_units if holding is not None else 0
        self.bound[uid] = units
        self.allocated += units
        job = self.jobs[uid]
        if job.duration is not None:
            self.push(self.now + job.duration, _DEPART, uid)

    def depart(self, uid: str) -> None:
        if uid not in self.bound:
            return  # evicted before: a stale departure
        self.allocated -= self.bound.pop(uid)
        self.manager.remove_pod(uid)
        self.result.completed += 1

    def evict(self, uid: str) -> None:
        entry = self.manager.pods.get(uid)
        queue = queue_label(entry.queue if entry is not None else None)
        self.result.preemptions += 1
        self.result.preemptions_by_queue[queue] = self.result.preemptions_by_queue.get(queue, 0) + 1
        if uid in self.bound:
            self.allocated -= self.bound.pop(uid)
        self.manager.remove_pod(uid)
        if not self.s.requeue_evicted:
            return
        job = self.jobs[uid]
        base = uid.split("~", 1)[0]
        n = self.requeued[base] = self.requeued.get(base, 0) + 1
        new_uid = f"{base}~{n}"
        request = job.entry.request
        again = PodEntry(request=replace(request, uid=new_uid, name=f"{request.name}~{n}" if request.name else ""),
                         created=self.now, gated=True, node_selector=dict(job.entry.node_selector),
                         named_queue=job.entry.named_queue, group=job.entry.group)  # fmt: skip
        self.jobs[new_uid] = Job(again, self.now, job.duration)
        self.push(self.now, _ARRIVE, new_uid)

    # --- the controller's cycle at one instant ---

    def cycle(self) -> None:
        for _ in range(MAX_PASSES):
            result = self.manager.schedule(self.now)
            self.result.cycles += 1
            for admission in result.admitted:
                self.result.admitted += 1
                arrived = self.arrived_at.pop(admission.uid, self.now)
                queue = queue_label(admission.queue)
                self.result.waits.setdefault(queue, []).append(self.now - arrived)
                self.bind(admission.uid)
            evicted = self.preempt(result.preemptors) if self.s.preemption else 0
            if not evicted:
                return

    def preempt(self, preemptors: Mapping[str, str]) -> int:
        """As the controller: each blocked head's victim set (the model's search) is evicted, its capacity nominated."""
        evicted = 0
        for uid in preemptors:
            if self.retry_at.get(uid, -math.inf) > self.now:
                continue
            plan = find_preemption(self.manager, uid)
            if plan is None:
                self.retry_at[uid] = self.now + self.s.preemption_retry
                continue
            self.manager.nominate(uid, plan.plan, [v.uid for v in plan.victims], self.now)
            for victim in plan.victims:
                self.evict(victim.uid)
                evicted += 1
        return evicted

    # --- sampling ---

    def fragmentation(self) -> float:
        if self._frag_at[0] == self.ledger.generation:
            return self._frag_at[1]
        total = 0.0
        for name in self.ledger.node_names():
            view = self.ledger.view(name)
            cached = self._frag.get(name)
            if cached is None or cached[0] is not view:
                cached = (view, self.measure.node_fragment(view.cpu_free, view.free_compute, view.model))
                self._frag[name] = cached
            total += cached[1]
        value = 100.0 * total / self.capacity if self.capacity else 0.0
        self._frag_at = (self.ledger.generation, value)
        return value

    def sample(self, at: float) -> None:
        r = self.result
        r.times.append(at - self.s.start)
        r.utilisation.append(100.0 * self.allocated / self.capacity if self.capacity else 0.0)
        r.fragmentation.append(self.fragmentation())
        r.pending.append(len(self.arrived_at))

    def samples_until(self, t: float) -> None:
        """Samples before instant `t` (each shows the state after every event before it)."""
        while self.next_sample < t:
            self.sample(self.next_sample)
            self.next_sample += self.result.step

    # --- main loop ---

    def run(self) -> TimelineResult:
        started = time.perf_counter()
        for job in self.s.jobs:
            uid = job.entry.uid
            if uid in self.jobs:
                raise TimelineError(f"pod uid {uid} appears twice")
            self.jobs[uid] = job
            self.push(job.arrival, _ARRIVE, uid)
        horizon = self.s.horizon
        while self.events:
            t = self.events[0][0]
            if horizon is not None and t > horizon:
                break
            self.samples_until(t)
            self.now = t
            while self.events and self.events[0][0] == t:
                _, kind, _, uid = heapq.heappop(self.events)
                if kind == _DEPART:
                    self.depart(uid)
                else:
                    self.arrive(uid)
            self.cycle()
        end = horizon if horizon is not None else self.now
        self.samples_until(end)
        self.sample(end)
        self.now = end
        r = self.result
        r.end = end
        for uid, arrived in self.arrived_at.items():
            entry = self.manager.pods.get(uid)
            queue = queue_label(entry.queue if entry is not None else None)
            r.unfinished.setdefault(queue, []).append(end - arrived)
        r.seconds = time.perf_counter() - started
        return r


def run(scenario: Scenario) -> TimelineResult:
    """Replay the scenario's arrivals and departures (event-driven, no sleeping) and return the series."""
    return _Run(scenario).run()
