"""The ledger: who holds which part of which GPU, in integer units (DESIGN.md §3).

Its capacity rules (physical and over-committed bounds, slot limits) are listed in
docs/contracts.md. Holdings are keyed by pod uid and come in three kinds (`HoldingKind`),
all counted as used; every change is all-or-nothing (`OverAllocation` changes nothing).
Each node keeps a cached `NodeView`, indexed by its key, so identical nodes are evaluated once.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from gpupool import slots as slot_ids
from gpupool.assignment import SliceRecord
from gpupool.capacity import CapacityIndex
from gpupool.errors import OverAllocation, UnknownHolder
from gpupool.inventory import GPUInfo, NodeInfo
from gpupool.request import WHOLE_GPU_COMPUTE, QoS

#: interned view keys kept before the table starts over (bounds memory on long-running extenders)
_MAX_KIDS = 500_000
#: node changes kept in the log (`Ledger.changes_since`) before the older half is dropped
_MAX_CHANGES = 100_000


class HoldingKind(enum.StrEnum):
    ASSIGNED = "assigned"
    RESERVED = "reserved"
    NOMINATED = "nominated"


@dataclass(frozen=True, slots=True)
class Holding:
    """The slices one pod holds. `node` is the pod's node; a slice on another node is remote."""

    pod: str
    node: str
    slices: tuple[SliceRecord, ...]
    kind: HoldingKind = HoldingKind.ASSIGNED
    qos: QoS = QoS.GUARANTEED
    cpu_milli: int = 0
    host_memory_mib: int = 0

    @property
    def compute_units(self) -> int:
        return sum(s.compute for s in self.slices)

    @property
    def memory_units(self) -> int:
        return sum(s.memory_mib for s in self.slices)


@dataclass(frozen=True, slots=True)
class PlannedSlice:
    """A slice chosen by placement, before the ledger gives it a slot."""

    container: int
    init: bool
    gpu: str
    compute: int
    memory_mib: int


@dataclass(frozen=True, slots=True)
class NodeView:
    """What policies see of a node: its eligible GPUs' free capacity, in GPU-index order.

    `key` holds every field a policy or a fit check may read except the name and GPU
    indexes, so nodes with equal keys get equal evaluations and equal fit verdicts.
    `inventory` is the static (model, memory) of every GPU, eligible or not. `kid` is the
    ledger's small-integer id of `key` (equal keys, equal kids), cheap to hash in hot
    loops; views made outside a ledger have kid -1 and are never memoised.
    """

    name: str
    model: str
    gpu_index: tuple[int, ...]
    free_compute: tuple[int, ...]
    free_memory: tuple[int, ...]
    total_memory: tuple[int, ...]
    gpu_count: int
    cpu_free: int | None = None
    memory_free: int | None = None
    pods_free: int | None = None
    inventory: tuple[tuple[str, int], ...] = ()
    key: tuple[object, ...] = field(default=(), compare=False)
    kid: int = field(default=-1, compare=False)

    @staticmethod
    def make(
        name: str,
        model: str,
        gpu_index: tuple[int, ...],
        free_compute: tuple[int, ...],
        free_memory: tuple[int, ...],
        total_memory: tuple[int, ...],
        gpu_count: int,
        cpu_free: int | None = None,
        memory_free: int | None = None,
        pods_free: int | None = None,
        inventory: tuple[tuple[str, int], ...] = (),
        kid: int = -1,
    ) -> NodeView:
        key = (model, free_compute, free_memory, total_memory, gpu_count, cpu_free, memory_free, pods_free, inventory)
        return NodeView(
            name, model, gpu_index, free_compute, free_memory, total_memory, gpu_count,
            cpu_free, memory_free, pods_free, inventory, key, kid,
        )  # fmt: skip

    @property
    def idle_compute(self) -> int:
        return sum(self.free_compute)


class GPUState:
    """One GPU's inventory and what its holdings use: all slices, guaranteed slices apart, the slices of pods not
    bound yet (RESERVED and NOMINATED holdings) apart, and slot numbers."""

    __slots__ = (
        "blocked", "disabled", "healthy", "index", "memory_mib", "model", "node", "numa", "pending_compute",
        "pending_memory", "pending_slices", "reserved_slots", "slices", "used_compute", "used_g_compute",
        "used_g_memory", "used_memory", "used_slots", "uuid",
    )  # fmt: skip

    def __init__(self, info: GPUInfo, node: str, disabled: bool) -> None:
        self.uuid = info.uuid
        self.node = node
        self.index = info.index
        self.model = info.model
        self.memory_mib = info.memory_mib
        self.numa = info.numa
        self.healthy = info.healthy
        self.disabled = disabled
        self.used_compute = 0
        self.used_memory = 0
        self.used_g_compute = 0
        self.used_g_memory = 0
        self.slices = 0
        #: of the above, what holdings other than ASSIGNED use (the GPUNode status's `reserved*`: controller/status.py)
        self.pending_compute = 0
        self.pending_memory = 0
        self.pending_slices = 0
        self.used_slots: set[int] = set()
        #: quarantined holdings that use this GPU (it takes no new slice while any remain) and their slots
        self.blocked = 0
        self.reserved_slots: set[int] = set()

    def info(self) -> GPUInfo:
        return GPUInfo(self.uuid, self.index, self.model, self.memory_mib, self.numa, self.healthy)

    def clone(self) -> GPUState:
        other = GPUState.__new__(GPUState)
        for name in GPUState.__slots__:
            setattr(other, name, getattr(self, name))
        other.used_slots = set(self.used_slots)
        other.reserved_slots = set(self.reserved_slots)
        return other


class NodeState:
    """One node: its GPUs, host capacity and use, the remote slots its pods hold, its agent's endpoint
    (remote slices), and its cached `NodeView`."""

    __slots__ = (
        "agent_endpoint", "cpu_milli", "gpus", "max_pods", "memory_mib", "name", "pods", "remote_reserved",
        "remote_used", "used_cpu", "used_memory", "view",
    )  # fmt: skip

    def __init__(self, info: NodeInfo) -> None:
        self.name = info.name
        self.gpus: list[GPUState] = [
            GPUState(g, info.name, g.uuid in info.disabled) for g in sorted(info.gpus, key=lambda g: g.index)
        ]
        self.cpu_milli = info.cpu_milli
        self.memory_mib = info.memory_mib
        self.max_pods = info.max_pods
        self.agent_endpoint = info.agent_endpoint
        self.used_cpu = 0
        self.used_memory = 0
        self.pods = 0
        self.remote_used: set[int] = set()
        self.remote_reserved: set[int] = set()  # remote slots of quarantined holdings of this node's pods
        self.view: NodeView | None = None

    def clone(self) -> NodeState:
        other = NodeState.__new__(NodeState)
        for name in NodeState.__slots__:
            setattr(other, name, getattr(self, name))
        other.gpus = [g.clone() for g in self.gpus]
        other.remote_used = set(self.remote_used)
        other.remote_reserved = set(self.remote_reserved)
        return other


class Ledger:
    """Free and used capacity of every GPU of the pool, and the holdings that use it."""

    def __init__(
        self,
        *,
        slots_per_gpu: int = slot_ids.DEFAULT_SLOTS_PER_GPU,
        remote_slots: int = slot_ids.DEFAULT_REMOTE_SLOTS,
        overcommit_compute_percent: int = 100,
        overcommit_memory_percent: int = 100,
    ) -> None:
        if slots_per_gpu < 1 or remote_slots < 0:
            raise ValueError("slots_per_gpu must be >= 1 and remote_slots >= 0")
        if overcommit_compute_percent < 100 or overcommit_memory_percent < 100:
            raise ValueError("over-commit percents must be >= 100 (100 = no over-commit)")
        self.slots_per_gpu = slots_per_gpu
        self.remote_slots = remote_slots
        self.overcommit_compute_percent = overcommit_compute_percent
        self.overcommit_memory_percent = overcommit_memory_percent
        self._nodes: dict[str, NodeState] = {}
        self._gpus: dict[str, GPUState] = {}
        self._holdings: dict[str, Holding] = {}
        self._by_key: dict[tuple[object, ...], set[str]] = {}
        self._node_key: dict[str, tuple[object, ...]] = {}
        self._indexed = False
        #: interned view keys -> small ints (`NodeView.kid`); reset (new epoch) when it grows too large
        self._kids: dict[tuple[object, ...], int] = {}
        self.kid_epoch = 0
        #: node -> kid of its current guaranteed view (absent while the view is stale): `kids`' index
        self._kid_of: dict[str, int] = {}
        #: bumped on every change; adapters use it to tell whether a decision is stale
        self.generation = 0
        #: bumped when a node or a GPU comes, goes or changes (not by holdings): what is derived from the inventory
        #: alone (`QueueManager`'s largest GPU memory) is computed again only then, not after every bind
        self.inventory_generation = 0
        #: names of the nodes changed, in order (`changes_since`), and how many older entries were dropped
        self._changes: list[str] = []
        self._changes_dropped = 0
        #: pods whose signed holding does not fit (a GPU now reports less than they hold), pod -> why:
        #: never counted past capacity, but counted conservatively: every GPU such a holding uses takes no
        #: new slice and its slot ids stay taken, until the pod fits again (`hold`) or leaves (`discard`)
        self.quarantined: dict[str, str] = {}
        self._quarantined: dict[str, Holding] = {}
        #: a planning copy (`copy()`): the only kind of ledger `without` may change
        self.scratch = False
        #: free capacity per node (`capacity_index`), built on first use, and the `change_mark` it is current at
        self._free_index: CapacityIndex | None = None
        self._free_mark = 0
        #: an `overlay()`'s nodes still shared with the ledger it was made from (cloned on first change: `_own`)
        self._shared: set[str] = set()

    # --- planning copies ---------------------------------------------------------------------------

    def copy(self) -> Ledger:
        """An independent copy to plan on (preemption): what-if changes there never reach this ledger.

        View keys keep their ids (`NodeView.kid`), but a copy's new ids are its own: place on it with
        `Placer.over(copy)`, never with a placer of the original.
        """
        other = self._copy_shell()
        other._nodes = {name: state.clone() for name, state in self._nodes.items()}
        other._gpus = {g.uuid: g for state in other._nodes.values() for g in state.gpus}
        return other

    def overlay(self) -> Ledger:
        """A planning copy like `copy()` that clones only the nodes it changes (a what-if on one node costs one
        node, not the pool: preemption on 1,000+ nodes). It shares the other nodes with this ledger, so it is
        valid only while this ledger does not change: make it, plan and drop it under the owner's lock.

        Every view of this ledger is built first (a cache fill, as `view` does), so the overlay never writes
        a cache into a shared node.
        """
        for name, state in self._nodes.items():
            if state.view is None:
                self.view(name)
        other = self._copy_shell()
        other._nodes = dict(self._nodes)
        other._gpus = dict(self._gpus)
        other._shared = set(self._nodes)
        return other

    def _copy_shell(self) -> Ledger:
        """`copy()` without its nodes and GPUs (the caller fills `_nodes` / `_gpus`)."""
        other = Ledger(
            slots_per_gpu=self.slots_per_gpu,
            remote_slots=self.remote_slots,
            overcommit_compute_percent=self.overcommit_compute_percent,
            overcommit_memory_percent=self.overcommit_memory_percent,
        )
        other._holdings = dict(self._holdings)
        other.quarantined = dict(self.quarantined)
        other._quarantined = dict(self._quarantined)
        other._by_key = {key: set(names) for key, names in self._by_key.items()}
        other._node_key = dict(self._node_key)
        other._indexed = self._indexed
        other._kids = dict(self._kids)
        other._kid_of = dict(self._kid_of)
        other.kid_epoch = self.kid_epoch
        other.generation = self.generation
        other.inventory_generation = self.inventory_generation
        other._changes_dropped = self.change_mark()  # a copy's log starts empty: older marks are unknown to it
        other.scratch = True
        return other

    def _own(self, name: str) -> None:
        """An overlay's node `name` becomes its own (cloned with its GPUs) before it changes."""
        if name in self._shared:
            self._shared.discard(name)
            state = self._nodes.get(name)
            if state is not None:
                mine = self._nodes[name] = state.clone()
                for g in mine.gpus:
                    self._gpus[g.uuid] = g

    def _own_for(self, holding: Holding) -> None:
        """`_own` every node a holding uses (its pod's node and each slice's GPU's node)."""
        self._own(holding.node)
        for s in holding.slices:
            gpu = self._gpus.get(s.gpu)
            if gpu is not None:
                self._own(gpu.node)

    @contextlib.contextmanager
    def without(self, pods: Iterable[str]) -> Iterator[None]:
        """On a planning copy: as if `pods` held nothing, restored exactly afterwards (even when a holding
        would no longer pass `hold`'s checks, e.g. after its node's inventory shrank)."""
        if not self.scratch:
            raise RuntimeError("plan on a copy (Ledger.copy()), never by releasing on the live ledger")
        gone: list[Holding] = []
        try:
            for pod in dict.fromkeys(pods):
                holding = self._holdings.pop(pod, None)
                if holding is not None:
                    self._apply(holding, -1)
                    gone.append(holding)
            yield
        finally:
            for holding in reversed(gone):
                self._apply(holding, +1)
                self._holdings[holding.pod] = holding

    # --- inventory ---------------------------------------------------------------------------------

    def upsert_node(self, info: NodeInfo) -> list[str]:
        """Add a node or replace its inventory; keep holdings whose GPUs remain and still fit.

        Holdings are re-held in the order they were first held, each checked against the new
        capacity: one that no longer fits (a GPU reports less memory now) is quarantined, never
        held past capacity. Returns the pods whose holdings were dropped: a GPU they use is gone,
        or they were quarantined. A GPU already on another node raises `ValueError`, changing nothing.
        The same inventory again changes nothing (not even `generation`).
        """
        for new in info.gpus:
            other = self._gpus.get(new.uuid)
            if other is not None and other.node != info.name:
                raise ValueError(f"GPU {new.uuid} of node {info.name} is already on node {other.node}")
        old = self._nodes.get(info.name)
        ordered = replace(info, gpus=tuple(sorted(info.gpus, key=lambda g: g.index)))
        if old is not None and self.node_info(info.name) == ordered:
            return []  # the same inventory (a GPUNode event that changed nothing here): no change, no generation
        dropped: list[str] = []
        held: list[Holding] = []
        remaining = {g.uuid for g in info.gpus}
        gone = {g.uuid for g in old.gpus} - remaining if old is not None else set()
        blocked: list[Holding] = []
        for q in [q for q in self._quarantined.values() if self._touches_node(q, info.name)]:
            self._block(q, -1)  # counted again below, on the new GPU objects
            if any(s.gpu in gone for s in q.slices):
                self._forget_quarantine(q.pod)  # a GPU it names is gone: the caller marks it unplaced
                dropped.append(q.pod)
            else:
                blocked.append(q)
        if old is not None:
            lost = self.pods_on_gpus(gone)
            for pod in lost:
                self.release(pod)
            dropped = lost + dropped
            held = [h for h in self._holdings.values() if self._touches_node(h, info.name)]
            for h in held:
                self._apply(h, -1)
            for g in old.gpus:
                del self._gpus[g.uuid]
        state = NodeState(info)
        self._nodes[info.name] = state
        for g in state.gpus:
            self._gpus[g.uuid] = g
        for q in blocked:
            self._block(q, +1)
        for h in held:
            try:
                self._check(h)
            except OverAllocation as exc:
                del self._holdings[h.pod]
                self.quarantine(h, f"its slices no longer fit node {info.name}: {exc}")
                dropped.append(h.pod)
                continue
            self._apply(h, +1)
        self.inventory_generation += 1
        self._touch(info.name)
        return dropped

    def remove_node(self, name: str) -> list[str]:
        """Remove a node; release every holding on it or using its GPUs. Returns those pods."""
        state = self._nodes.get(name)
        if state is None:
            return []
        pods = sorted(
            {h.pod for h in self._holdings.values() if h.node == name}
            | set(self.pods_on_gpus({g.uuid for g in state.gpus}))
        )
        for pod in pods:
            self.release(pod)
        for q in [q for q in self._quarantined.values() if self._touches_node(q, name)]:
            self._block(q, -1)
            self._forget_quarantine(q.pod)
            pods.append(q.pod)
        for g in state.gpus:
            del self._gpus[g.uuid]
        del self._nodes[name]
        self._kid_of.pop(name, None)
        key = self._node_key.pop(name, None)
        if key is not None:
            self._unindex(name, key)
        self.generation += 1
        self.inventory_generation += 1
        self._log_change(name)
        return pods

    def set_gpu_health(self, uuid: str, healthy: bool) -> None:
        if self._shared:
            self._own(self._gpu(uuid).node)
        gpu = self._gpu(uuid)
        if gpu.healthy != healthy:
            gpu.healthy = healthy
            self._touch(gpu.node)

    def set_gpu_disabled(self, uuid: str, disabled: bool) -> None:
        if self._shared:
            self._own(self._gpu(uuid).node)
        gpu = self._gpu(uuid)
        if gpu.disabled != disabled:
            gpu.disabled = disabled
            self._touch(gpu.node)

    # --- holdings ----------------------------------------------------------------------------------

    def commit(
        self,
        pod: str,
        node: str,
        planned: Iterable[PlannedSlice],
        *,
        kind: HoldingKind = HoldingKind.ASSIGNED,
        qos: QoS = QoS.GUARANTEED,
        cpu_milli: int = 0,
        host_memory_mib: int = 0,
    ) -> Holding:
        """Give `pod` (placed on `node`) the planned slices, choosing free slot ids; all or nothing."""
        planned = list(planned)
        records: list[SliceRecord] = []
        taken_local: dict[str, set[int]] = {}
        taken_remote: set[int] = set()
        pod_node = self._node(node)
        for p in planned:
            gpu = self._gpu(p.gpu)
            if gpu.node == node:
                used = gpu.used_slots | gpu.reserved_slots | taken_local.setdefault(gpu.uuid, set())
                k = _lowest_free(used, self.slots_per_gpu)
                if k is None:
                    raise OverAllocation(f"GPU {gpu.uuid} has no free slot (all {self.slots_per_gpu} in use)")
                taken_local[gpu.uuid].add(k)
                slot = slot_ids.local_slot(gpu.index, k)
            else:
                k = _lowest_free(pod_node.remote_used | pod_node.remote_reserved | taken_remote, self.remote_slots)
                if k is None:
                    raise OverAllocation(f"node {node} has no free remote slot (all {self.remote_slots} in use)")
                taken_remote.add(k)
                slot = slot_ids.remote_slot(k)
            records.append(SliceRecord(p.container, gpu.uuid, gpu.node, p.compute, p.memory_mib, slot, p.init))
        holding = Holding(pod, node, tuple(records), kind, qos, cpu_milli, host_memory_mib)
        self.hold(holding)
        return holding

    def hold(self, holding: Holding) -> None:
        """Record a holding whose slots are already chosen (commit, or rebuild from an assignment).

        Raises `OverAllocation` (and changes nothing) when a slice does not fit, a slot is
        taken, or the pod already holds something.
        """
        if holding.pod in self._holdings:
            raise OverAllocation(f"pod {holding.pod} already holds slices; release them first")
        earlier = self._quarantined.get(holding.pod)
        if earlier is not None:  # it may fit now: its own conservative count is set aside for the check
            self._block(earlier, -1)
        try:
            self._check(holding)
        except OverAllocation:
            if earlier is not None:
                self._block(earlier, +1)
            raise
        if earlier is not None:
            self._forget_quarantine(holding.pod)
        self._apply(holding, +1)
        self._holdings[holding.pod] = holding

    def quarantine(self, holding: Holding, reason: str) -> None:
        """Record a signed holding that does not fit (it holds nothing), counted conservatively: the GPUs
        it names (those in the pool) take no new slice and its slot ids stay taken (see `quarantined`)."""
        if holding.pod in self._quarantined:
            self._block(self._quarantined[holding.pod], -1)
        self._quarantined[holding.pod] = holding
        self.quarantined[holding.pod] = reason
        self._block(holding, +1)

    def unquarantine(self, pod: str) -> None:
        """Forget a quarantined pod (it left, or no longer carries the assignment)."""
        q = self._quarantined.get(pod)
        if q is not None:
            self._block(q, -1)
        self._forget_quarantine(pod)

    def _forget_quarantine(self, pod: str) -> None:
        self._quarantined.pop(pod, None)
        self.quarantined.pop(pod, None)

    def hold_what_fits(self, holding: Holding) -> tuple[Holding | None, tuple[SliceRecord, ...]]:
        """Hold as much of an untrusted or unfitting claim as capacity allows (a quarantined pod).

        The claim is counted conservatively: held whole as it is when it fits, else whole as
        best-effort (its usage counts the same, within the over-commit bound), else slice by slice
        in its own order, each slice held when it fits with those before it. Returns what is now
        held (None: nothing) and the slices that could not be held, for the caller to report.
        Nothing is ever held past capacity; a pod that already holds something is refused.
        """
        if holding.pod in self._holdings:
            raise OverAllocation(f"pod {holding.pod} already holds slices; release them first")
        for qos in dict.fromkeys((holding.qos, QoS.BEST_EFFORT)):
            try:
                whole = replace(holding, qos=qos)
                self.hold(whole)
                return whole, ()
            except OverAllocation:
                pass
        kept: list[SliceRecord] = []
        excess: list[SliceRecord] = []
        for s in holding.slices:
            try:
                self._check(replace(holding, qos=QoS.BEST_EFFORT, slices=(*kept, s)))
            except OverAllocation:
                excess.append(s)
            else:
                kept.append(s)
        if not kept:
            return None, tuple(excess)
        partial = replace(holding, qos=QoS.BEST_EFFORT, slices=tuple(kept))
        self.hold(partial)
        return partial, tuple(excess)

    def release(self, pod: str) -> Holding:
        holding = self._holdings.pop(pod, None)
        if holding is None:
            raise UnknownHolder(f"pod {pod} holds no slices")
        self._apply(holding, -1)
        return holding

    def discard(self, pod: str) -> Holding | None:
        """Release `pod`'s holding if it has one (and forget a quarantine): the pod is gone."""
        self.unquarantine(pod)
        return self.release(pod) if pod in self._holdings else None

    def holding(self, pod: str) -> Holding | None:
        return self._holdings.get(pod)

    def holdings(self) -> Iterator[Holding]:
        return iter(list(self._holdings.values()))

    def pods_on_gpus(self, uuids: set[str]) -> list[str]:
        return sorted(h.pod for h in self._holdings.values() if any(s.gpu in uuids for s in h.slices))

    # --- reads -------------------------------------------------------------------------------------

    def has_node(self, name: str) -> bool:
        return name in self._nodes

    def node_names(self) -> list[str]:
        return list(self._nodes)

    def node_info(self, name: str) -> NodeInfo:
        state = self._node(name)
        return NodeInfo(
            name=state.name,
            gpus=tuple(g.info() for g in state.gpus),
            cpu_milli=state.cpu_milli,
            memory_mib=state.memory_mib,
            max_pods=state.max_pods,
            disabled=frozenset(g.uuid for g in state.gpus if g.disabled),
            agent_endpoint=state.agent_endpoint,
        )

    def gpus_of(self, node: str) -> list[GPUState]:
        return list(self._node(node).gpus)

    def gpu_uuid(self, node: str, index: int) -> str:
        for g in self._node(node).gpus:
            if g.index == index:
                return g.uuid
        raise KeyError(f"node {node!r} has no GPU with index {index}")

    def gpu(self, uuid: str) -> GPUState:
        return self._gpu(uuid)

    def has_gpu(self, uuid: str) -> bool:
        return uuid in self._gpus

    def agent_endpoint(self, node: str) -> str:
        """Where `node`'s agent serves remote slices; '' = its GPUs serve no other node's pods."""
        return self._node(node).agent_endpoint

    def remote_slots_free(self, node: str) -> int:
        return self.remote_slots - len(self._node(node).remote_used)

    def gpu_free(self, uuid: str, qos: QoS = QoS.GUARANTEED) -> tuple[int, int]:
        """Free (compute, memory) of a GPU for a slice of `qos`, ignoring health."""
        gpu = self._gpu(uuid)
        cap_c, cap_m = self._capacity(gpu, qos)
        return max(0, cap_c - gpu.used_compute), max(0, cap_m - gpu.used_memory)

    def eligible(self, gpu: GPUState) -> bool:
        return gpu.healthy and not gpu.disabled and not gpu.blocked and gpu.slices < self.slots_per_gpu

    def view(self, node: str) -> NodeView:
        """The cached view of `node` for guaranteed slices."""
        state = self._node(node)
        if state.view is None:
            if node in self._shared:  # never cache into a node shared with the original (`overlay`)
                self._own(node)
                state = self._nodes[node]
            state.view = self._build_view(state, QoS.GUARANTEED, None)
            self._kid_of[node] = state.view.kid
        return state.view

    def view_for(
        self, node: str, qos: QoS, models: frozenset[str] = frozenset(), uuids: frozenset[str] = frozenset()
    ) -> NodeView:
        """A view restricted to GPUs a pod may use (model and UUID allow-lists, its QoS)."""
        if qos is QoS.GUARANTEED and not models and not uuids:
            return self.view(node)
        state = self._node(node)

        def allowed(g: GPUState) -> bool:
            return (not models or g.model in models) and (not uuids or g.uuid in uuids)

        return self._build_view(state, qos, allowed)

    def nodes_by_key(self) -> dict[tuple[object, ...], set[str]]:
        """Nodes grouped by the key of their guaranteed view (do not mutate)."""
        if not self._indexed:
            self._indexed = True
            for name in self._nodes:
                self.view(name)
                self._reindex(name)
        return self._by_key

    def totals(self) -> dict[str, int]:
        """Capacity and usage summed over healthy, enabled GPUs (pool units)."""
        cap_c = cap_m = used_c = used_m = gpus = 0
        for g in self._gpus.values():
            if not g.healthy or g.disabled:
                continue
            gpus += 1
            cap_c += WHOLE_GPU_COMPUTE
            cap_m += g.memory_mib
            used_c += g.used_compute
            used_m += g.used_memory
        return {"gpus": gpus, "compute": cap_c, "memory_mib": cap_m, "used_compute": used_c, "used_memory_mib": used_m}

    def snapshot(self) -> dict[str, object]:
        """A JSON-ready picture of the ledger, for /debug/pool and equality checks after a rebuild."""
        return {
            "nodes": {
                name: {
                    "gpus": [
                        {
                            "uuid": g.uuid, "index": g.index, "model": g.model, "memory_mib": g.memory_mib,
                            "healthy": g.healthy, "disabled": g.disabled, "used_compute": g.used_compute,
                            "used_memory_mib": g.used_memory, "slices": g.slices, "slots": sorted(g.used_slots),
                        }
                        for g in state.gpus
                    ],
                    "remote_slots": sorted(state.remote_used),
                    "used_cpu_milli": state.used_cpu,
                    "used_host_memory_mib": state.used_memory,
                    "pods": state.pods,
                }
                for name, state in sorted(self._nodes.items())
            },
            "holdings": {
                pod: {
                    "node": h.node, "kind": h.kind.value, "qos": h.qos.value,
                    "slices": [s.to_json() for s in h.slices],
                }
                for pod, h in sorted(self._holdings.items())
            },
        }

    # --- internals ---------------------------------------------------------------------------------

    def _node(self, name: str) -> NodeState:
        state = self._nodes.get(name)
        if state is None:
            raise KeyError(f"node {name!r} is not in the pool")
        return state

    def _gpu(self, uuid: str) -> GPUState:
        gpu = self._gpus.get(uuid)
        if gpu is None:
            raise KeyError(f"GPU {uuid!r} is not in the pool")
        return gpu

    def _capacity(self, gpu: GPUState, qos: QoS) -> tuple[int, int]:
        if qos is QoS.BEST_EFFORT:
            return (
                WHOLE_GPU_COMPUTE * self.overcommit_compute_percent // 100,
                gpu.memory_mib * self.overcommit_memory_percent // 100,
            )
        return WHOLE_GPU_COMPUTE, gpu.memory_mib

    def _touches_node(self, holding: Holding, node: str) -> bool:
        return holding.node == node or any(s.node == node for s in holding.slices)

    def _check(self, holding: Holding) -> None:
        pod_node = self._nodes.get(holding.node)
        if pod_node is None:
            raise OverAllocation(f"node {holding.node} is not in the pool")
        per_gpu: dict[str, tuple[int, int, int]] = {}
        slots_seen: set[tuple[str, str]] = set()
        remote: list[int] = []
        for s in holding.slices:
            gpu = self._gpus.get(s.gpu)
            if gpu is None:
                raise OverAllocation(f"GPU {s.gpu} is not in the pool")
            if gpu.node != s.node:
                raise OverAllocation(f"GPU {s.gpu} is on node {gpu.node}, not {s.node}")
            if s.compute < 1 or s.memory_mib < 1:
                raise OverAllocation(f"slice on {s.gpu} must have compute >= 1 and memory >= 1")
            c, m, n = per_gpu.get(s.gpu, (0, 0, 0))
            per_gpu[s.gpu] = (c + s.compute, m + s.memory_mib, n + 1)
            if (s.node, s.slot) in slots_seen:
                raise OverAllocation(f"slot {s.slot} appears twice in the holding of pod {holding.pod}")
            slots_seen.add((s.node, s.slot))
            local = gpu.node == holding.node
            problem = slot_ids.slot_problem(
                s.slot, gpu.index if local else None, slots_per_gpu=self.slots_per_gpu, remote_slots=self.remote_slots
            )
            if problem is not None:
                raise OverAllocation(f"pod {holding.pod}, slice on GPU {s.gpu} of {gpu.node}: {problem}")
            _, k = slot_ids.parse_slot(s.slot)
            if local:
                if k in gpu.used_slots or k in gpu.reserved_slots:
                    raise OverAllocation(f"slot {s.slot} of node {gpu.node} is already held")
            else:
                if k in pod_node.remote_used or k in pod_node.remote_reserved:
                    raise OverAllocation(f"remote slot {s.slot} of node {holding.node} is already held")
                remote.append(k)
        for uuid, (c, m, n) in per_gpu.items():
            gpu = self._gpus[uuid]
            # Order-independent bounds, so a rebuild may replay holdings in any order: all slices
            # within the over-commit capacity, guaranteed slices within the physical capacity.
            # (Placement is stricter: a new guaranteed slice only goes where the total stays physical.)
            oc_c, oc_m = self._capacity(gpu, QoS.BEST_EFFORT)
            phys_c, phys_m = self._capacity(gpu, QoS.GUARANTEED)
            over = gpu.used_compute + c > oc_c or gpu.used_memory + m > oc_m
            if holding.qos is QoS.GUARANTEED:
                over = over or gpu.used_g_compute + c > phys_c or gpu.used_g_memory + m > phys_m
            if over:
                raise OverAllocation(
                    f"GPU {uuid} on {gpu.node}: {c}% / {m} MiB more would exceed its capacity "
                    f"({gpu.used_compute}% / {gpu.used_memory} MiB used of {phys_c}% / {phys_m} MiB)"
                )
            if gpu.slices + n > self.slots_per_gpu:
                raise OverAllocation(f"GPU {uuid} would hold more than {self.slots_per_gpu} slices")
        if pod_node.cpu_milli is not None and pod_node.used_cpu + holding.cpu_milli > pod_node.cpu_milli:
            raise OverAllocation(f"node {holding.node}: not enough CPU")
        if pod_node.memory_mib is not None and pod_node.used_memory + holding.host_memory_mib > pod_node.memory_mib:
            raise OverAllocation(f"node {holding.node}: not enough host memory")
        if pod_node.max_pods is not None and pod_node.pods + 1 > pod_node.max_pods:
            raise OverAllocation(f"node {holding.node}: pod limit reached")

    def _apply(self, holding: Holding, sign: int) -> None:
        if self._shared:
            self._own_for(holding)
        touched = {holding.node}
        pod_node = self._nodes.get(holding.node)
        pending = holding.kind is not HoldingKind.ASSIGNED
        for s in holding.slices:
            gpu = self._gpus.get(s.gpu)
            if gpu is None:  # GPU already removed together with its node
                continue
            gpu.used_compute += sign * s.compute
            gpu.used_memory += sign * s.memory_mib
            if holding.qos is QoS.GUARANTEED:
                gpu.used_g_compute += sign * s.compute
                gpu.used_g_memory += sign * s.memory_mib
            gpu.slices += sign
            if pending:
                gpu.pending_compute += sign * s.compute
                gpu.pending_memory += sign * s.memory_mib
                gpu.pending_slices += sign
            _, k = slot_ids.parse_slot(s.slot)
            if gpu.node == holding.node:
                (gpu.used_slots.add if sign > 0 else gpu.used_slots.discard)(k)
            elif pod_node is not None:
                (pod_node.remote_used.add if sign > 0 else pod_node.remote_used.discard)(k)
            touched.add(gpu.node)
        if pod_node is not None:
            pod_node.used_cpu += sign * holding.cpu_milli
            pod_node.used_memory += sign * holding.host_memory_mib
            pod_node.pods += sign
        for name in touched:
            if name in self._nodes:
                self._touch(name)

    def _block(self, holding: Holding, sign: int) -> None:
        """Count a quarantined holding conservatively (+1) or stop counting it (-1), see `quarantine`."""
        if self._shared:
            self._own_for(holding)
        touched: set[str] = set()
        pod_node = self._nodes.get(holding.node)
        for s in holding.slices:
            gpu = self._gpus.get(s.gpu)
            if gpu is None or gpu.node != s.node:
                continue
            gpu.blocked += sign
            touched.add(gpu.node)
            try:
                _, k = slot_ids.parse_slot(s.slot)
            except ValueError:
                continue  # a malformed slot id reserves nothing; the GPU itself is blocked
            if gpu.node == holding.node:
                (gpu.reserved_slots.add if sign > 0 else gpu.reserved_slots.discard)(k)
            elif pod_node is not None:
                (pod_node.remote_reserved.add if sign > 0 else pod_node.remote_reserved.discard)(k)
        for name in touched:
            self._touch(name)

    def change_mark(self) -> int:
        """A position in the log of node changes, for `changes_since`."""
        return self._changes_dropped + len(self._changes)

    def changes_since(self, mark: int) -> list[str] | None:
        """The nodes changed (added, changed or removed; repeats kept) since `mark`, or None when the log no
        longer reaches back that far (the caller starts over). Lets the placer keep per-node scores current."""
        start = mark - self._changes_dropped
        return None if start < 0 else self._changes[start:]

    def _log_change(self, name: str) -> None:
        if len(self._changes) >= _MAX_CHANGES:
            half = len(self._changes) // 2
            del self._changes[:half]
            self._changes_dropped += half
        self._changes.append(name)

    def _touch(self, name: str) -> None:
        if self._shared:
            self._own(name)
        self._nodes[name].view = None
        self._kid_of.pop(name, None)
        self.generation += 1
        self._log_change(name)
        if self._indexed:  # the index is kept up to date once someone asked for it
            self.view(name)
            self._reindex(name)

    def _reindex(self, name: str) -> None:
        key = self._nodes[name].view.key  # type: ignore[union-attr]
        old = self._node_key.get(name)
        if old == key:
            return
        if old is not None:
            self._unindex(name, old)
        self._node_key[name] = key
        self._by_key.setdefault(key, set()).add(name)

    def _unindex(self, name: str, key: tuple[object, ...]) -> None:
        members = self._by_key.get(key)
        if members is not None:
            members.discard(name)
            if not members:
                del self._by_key[key]

    def _build_view(self, state: NodeState, qos: QoS, allowed: object) -> NodeView:
        index: list[int] = []
        free_c: list[int] = []
        free_m: list[int] = []
        total_m: list[int] = []
        for g in state.gpus:
            if not self.eligible(g) or (allowed is not None and not allowed(g)):  # type: ignore[operator]
                continue
            cap_c, cap_m = self._capacity(g, qos)
            index.append(g.index)
            free_c.append(max(0, cap_c - g.used_compute))
            free_m.append(max(0, cap_m - g.used_memory))
            total_m.append(g.memory_mib)
        view = NodeView.make(
            name=state.name,
            model=state.gpus[0].model if state.gpus else "",
            gpu_index=tuple(index),
            free_compute=tuple(free_c),
            free_memory=tuple(free_m),
            total_memory=tuple(total_m),
            gpu_count=len(state.gpus),
            cpu_free=None if state.cpu_milli is None else state.cpu_milli - state.used_cpu,
            memory_free=None if state.memory_mib is None else state.memory_mib - state.used_memory,
            pods_free=None if state.max_pods is None else state.max_pods - state.pods,
            inventory=tuple((g.model, g.memory_mib) for g in state.gpus),
        )
        kid = self._kids.get(view.key)
        if kid is None:
            if len(self._kids) >= _MAX_KIDS:
                for name in list(self._shared):  # the views of shared nodes are the original's
                    self._own(name)
                self._kids.clear()
                self._kid_of.clear()
                self.kid_epoch += 1
                for other in self._nodes.values():
                    other.view = None
            kid = self._kids[view.key] = len(self._kids)
        return replace(view, kid=kid)

    def views(self, names: Iterable[str]) -> list[NodeView | None]:
        """Cached guaranteed views of `names` (None for nodes not in the pool), for hot loops."""
        nodes = self._nodes
        out: list[NodeView | None] = []
        for name in names:
            state = nodes.get(name)
            if state is None:
                out.append(None)
            else:
                out.append(state.view or self.view(name))
        return out


    def capacity_index(self) -> CapacityIndex:
        """The free capacity of every node as numpy rows (`gpupool.capacity`), current: built from the views on
        first use, then only the rows of the nodes the change log names since the last call are copied again."""
        index = self._free_index
        changed = None if index is None else self.changes_since(self._free_mark)
        if index is None:
            index = self._free_index = CapacityIndex()
        while changed is None or changed or index.kid_epoch != self.kid_epoch:
            if changed is None or index.kid_epoch != self.kid_epoch:  # new, the log no longer reaches back, or kids
                index.kid_epoch = self.kid_epoch  # renumbered (`_build_view`): every row is stale
                names = set(self._nodes).union(index.names())
            else:
                names = set(changed)
            self._free_mark = self.change_mark()
            nodes = self._nodes
            for name in sorted(names):
                if name in nodes:
                    index.put(self.view(name))
                else:
                    index.drop(name)
            changed = self.changes_since(self._free_mark)  # building views logs nothing: empty
        return index

    def kids(self, names: list[str]) -> list[int]:
        """The kid of each of `names`' guaranteed view, -1 for a node not in the pool.

        The filter and prioritize hot paths (`Placer.filter`, `Placer.scores`) judge each distinct kid
        once and map nodes to verdicts through this index: one dict lookup per node, no view built.
        """
        get = self._kid_of.get
        out = [get(name, -1) for name in names]
        if -1 in out:  # stale views (a node changed since) or nodes not in the pool
            nodes = self._nodes
            for i, name in enumerate(names):
                if out[i] == -1 and name in nodes:
                    out[i] = self.view(name).kid
        return out


def _lowest_free(used: set[int], limit: int) -> int | None:
    for k in range(limit):
        if k not in used:
            return k
    return None
