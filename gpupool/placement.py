"""The placement engine: which nodes can serve a pod, how well, and with which GPUs.

Every adapter places through this one engine: the extender (filter, prioritize,
bind), the controller (capacity checks, preemption) and the simulator. It reads the
ledger, asks the pod's policy to score nodes, and returns plans; committing a plan
is the ledger's job.

Identical node states are evaluated once: views carry a key, and unconstrained
guaranteed pods are evaluated per distinct key. Ties go to the node of lowest
`rank` (a stable hash of the name by default; the simulator passes its seeded order).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import compress
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from gpupool import capacity
from gpupool.errors import GpupoolError
from gpupool.ledger import Ledger, NodeView, PlannedSlice
from gpupool.policies.base import Choice, Demand, Policy, SliceGroup, best_fit, host_fits, slice_fits, slice_memory
from gpupool.request import Locality, PodRequest, QoS
from gpupool.scoreboard import ScoreBoard
from gpupool.tenancy import Reservations


class NoFit(GpupoolError):
    """The pod cannot be placed on the node; `reason` says why in words a person can act on."""

    def __init__(self, reason: str, resolvable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.resolvable = resolvable


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a pod fits a node. `resolvable` False: freeing capacity (preemption) cannot help."""

    fits: bool
    reason: str = ""
    resolvable: bool = True
    remote: bool = False
    #: the GPU a reason names, by its position among the node view's eligible GPUs: the verdict is shared by equal
    #: node states (the same kid), whose GPUs at a position may have other indexes; named per node by `_finish`
    gpu_at: int | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a pod's slices go. `remote` counts the slices served by GPUs of other nodes."""

    node: str
    slices: tuple[PlannedSlice, ...]
    score: int
    remote: int = 0


@dataclass(slots=True)
class FilterResult:
    """The nodes a pod passes, the reasons it fails the others (`unresolvable`: preemption cannot help),
    or an `error` about the pod itself, in which case no node was judged."""

    passing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)
    error: str = ""

    def add(self, node: str, verdict: Verdict) -> None:
        if verdict.fits:
            self.passing.append(node)
        elif verdict.resolvable:
            self.failed[node] = verdict.reason
        else:
            self.unresolvable[node] = verdict.reason


_GPU = "{gpu}"
#: entries kept in each placement memo before it starts over, and pod shapes remembered
_MEMO_LIMIT = 200_000
_MEMO_SHAPES = 256
_K = TypeVar("_K")
_S = TypeVar("_S")
_V = TypeVar("_V")


_FITS = Verdict(True)
#: `Placer.score_array`'s score of a node where the pod fits only remotely, or not at all (`scores`' None)
NO_SCORE = int(np.iinfo(np.int16).min)
_UNKNOWN = NO_SCORE + 1
_MOST = int(np.iinfo(np.int16).max)
#: pod shapes whose score arrays (`Placer.score_array`, 2 bytes per kid) are kept: at most 64 MiB at `_MAX_KIDS`
_SCORE_SHAPES = 64


def _fits_now(view: NodeView, demand: Demand) -> bool:
    """Whether `demand` fits `view` as it is: host resources and a GPU for every slice."""
    return host_fits(view, demand) and best_fit(view, demand) is not None


#: `_filter_indexed`'s code of a node not in the pool (after the index's codes)
_NOT_IN_POOL = capacity.INVENTORY + 1
_POD_LIMIT = "node is at its pod limit"


def _cpu_need(demand: Demand) -> str:
    return f"needs {demand.cpu_milli}m CPU"


def _memory_need(demand: Demand) -> str:
    return f"needs {demand.memory_mib} MiB host memory"


def _gpu_need(group: SliceGroup) -> str:
    """What a group needs of a node's GPUs, the first clause of a shortage reason."""
    memory = "the whole memory" if group.memory_mib is None else f"{group.memory_mib} MiB"
    return f"needs {group.count} GPU(s) with {group.compute}% compute and {memory} free"


def _no_agent(node: str) -> Verdict:
    return Verdict(False, f"node {node} has no gpupool node agent (no GPUNode {node})", resolvable=False)


def stable_rank(name: str) -> int:
    """A tie-break that is the same in every process and every run (DESIGN.md §3 determinism)."""
    return zlib.crc32(name.encode())


def short_uuid(uuid: str) -> str:
    return uuid if len(uuid) <= 12 else uuid[:12] + "…"


class Placer:
    """Placement over one ledger with a set of named policies."""

    def __init__(
        self,
        ledger: Ledger,
        policies: Mapping[str, Policy],
        default_policy: str,
        rank: Callable[[str], int] = stable_rank,
    ) -> None:
        if default_policy not in policies:
            raise ValueError(f"default policy {default_policy!r} is not among {sorted(policies)}")
        self.ledger = ledger
        self.policies = dict(policies)
        self.default_policy = default_policy
        self.rank = rank
        #: nodes reserved for some GPUQueues' pods (`request.queue`); fed by the adapters
        self.reservations = Reservations()
        # per demand: kid -> fits; kid -> failure verdict; node -> (kid, final verdict with its GPU named)
        self._verdicts: dict[Demand, dict[int, bool]] = {}
        self._failures: dict[Demand, dict[int, Verdict]] = {}
        self._reasons: dict[Demand, dict[str, tuple[int, Verdict]]] = {}
        self._choices: dict[tuple[str, Demand], dict[int, Choice | None]] = {}
        self._boards: dict[tuple[str, Demand], ScoreBoard] = {}
        # the pool's GPUs per model as policies were last told (`_sync_models`), per node and in all
        self._models_mark: int | None = None
        self._node_models: dict[str, tuple[str, ...]] = {}
        self._model_gpus: Counter[str] = Counter()
        #: per demand: kid -> reason text of a failing state, (resolvable, unresolvable); `filter(detail=False)`
        self._texts: dict[Demand, tuple[dict[int, str], dict[int, str]]] = {}
        #: per (policy, demand): kid -> policy score, `_UNKNOWN` or `NO_SCORE` (`score_array`; last slot: kid -1)
        self._score_tables: dict[tuple[str, Demand], npt.NDArray[np.int16]] = {}
        self._epoch = ledger.kid_epoch
        self._pool_cache: tuple[int, tuple[object, ...], bool] | None = None
        self._silent_cache: tuple[int, tuple[str, ...], frozenset[str]] | None = None

    def over(self, ledger: Ledger) -> Placer:
        """The same policies, default and rank over another ledger (a planning copy), with its own memos."""
        return Placer(ledger, self.policies, self.default_policy, self.rank)

    # --- policy and views ------------------------------------------------------------------------

    def policy_for(self, request: PodRequest) -> Policy:
        name = request.policy or self.default_policy
        policy = self.policies.get(name)
        if policy is None:
            raise NoFit(f"policy {name!r} is not enabled; enabled are {', '.join(sorted(self.policies))}", False)
        return policy

    def _constrained(self, request: PodRequest) -> bool:
        return bool(request.models or request.uuids) or request.qos is not QoS.GUARANTEED

    def _view(self, request: PodRequest, node: str) -> NodeView:
        return self.ledger.view_for(node, request.qos, request.models, request.uuids)

    # --- verdicts (filter) -----------------------------------------------------------------------

    def verdict(self, request: PodRequest, node: str) -> Verdict:
        """Can `request` be served on `node`? Local GPUs first; remote slices for `pool` pods."""
        if not self.ledger.has_node(node):
            return _no_agent(node)
        if not self.reservations.allows(node, request.queue):
            return Verdict(False, self.reservations.refusal(node), resolvable=False)
        demand = Demand.of(request)
        view = self._view(request, node)
        return self._finish(request, demand, node, self._local_verdict(request, demand, view))

    def filter(self, request: PodRequest, nodes: Iterable[str], *, detail: bool = True) -> FilterResult:
        """Verdicts for many nodes.

        Unconstrained requests take the hot path: per demand, the fit of each node state (kid) and the
        reason of each failing node are remembered across calls, so a call costs a few dict lookups per
        node (kube-scheduler sends every feasible node, thousands, on every call). `detail=False` (the
        extender, whose answer groups nodes by reason: extender/wire.py) gives a `local` pod's failing
        nodes the first clause of their state's reason (what the pod needs; the detail after "; ", such
        as the largest free GPU, is node-specific), one lookup per node.
        """
        demand = Demand.of(request)
        names = list(nodes)
        result = FilterResult()
        if self.reservations:
            names = self._reserved_out(request, names, result)
        if self._constrained(request):
            return self._filter_each(request, demand, names, result)
        self._check_epoch()
        local_only = request.locality is Locality.LOCAL
        if len(demand.groups) == 1:  # one vectorised comparison over every node (`Ledger.capacity_index`)
            return self._filter_indexed(request, demand, names, result, detail)
        fits = self._memo(self._verdicts, demand)
        reasons = self._memo(self._reasons, demand)
        kids = self.ledger.kids(names)  # each distinct node state judged once, nodes mapped by comprehension
        unknown = set(kids).difference(fits)
        unknown.discard(-1)
        if unknown:
            for node, kid in zip(names, kids, strict=True):
                if kid in unknown:
                    fits[kid] = _fits_now(self.ledger.view(node), demand)
                    unknown.discard(kid)
                    if not unknown:
                        break
        fits_get = fits.get
        passing = [node for node, kid in zip(names, kids, strict=True) if fits_get(kid)]
        result.passing.extend(passing)
        if len(passing) == len(names):
            return result
        if local_only and not detail:
            return self._failures_by_state(request, demand, names, kids, fits, result)
        for node, kid in zip(names, kids, strict=True):
            if kid == -1:
                result.add(node, _no_agent(node))
                continue
            if fits_get(kid):
                continue
            known = reasons.get(node) if local_only else None
            if known is not None and known[0] == kid:
                v = known[1]
            else:
                v = self._finish(request, demand, node, self._local_verdict(request, demand, self.ledger.view(node)))
                if local_only:
                    reasons[node] = (kid, v)
            result.add(node, v)
        return result

    def _filter_indexed(
        self, request: PodRequest, demand: Demand, names: list[str], result: FilterResult, detail: bool
    ) -> FilterResult:
        """`filter` of an unconstrained one-group pod by the ledger's capacity index: the verdict of every node at
        once (`CapacityIndex.codes`, the checks of `_fits_now` and the order of `_local_failure`), the failing
        nodes' reasons as `filter` gives them. The rows of a list of names seen lately are remembered
        (`CapacityIndex.lookup`), so a call costs array operations and the answer's lists, no lookup per name."""
        (group,) = demand.groups
        index = self.ledger.capacity_index()
        rows = index.lookup(names)
        by_row = index.codes(group.count, group.compute, group.memory_mib, demand.cpu_milli, demand.memory_mib)
        node_codes = np.append(by_row, _NOT_IN_POOL)[rows]  # row -1: the appended code
        fits = node_codes == capacity.FITS
        passing = list(compress(names, fits.tolist()))
        result.passing.extend(passing)
        if len(passing) == len(names):
            return result
        if passing:
            index.remember(passing, rows[fits])  # the list prioritize asks about next
        if request.locality is Locality.LOCAL and not detail:
            return self._failures_by_code(request, demand, names, node_codes, result)
        failing = list(compress(names, (~fits).tolist()))
        reasons = self._memo(self._reasons, demand)
        kids = self.ledger.kids(failing)
        for node, kid in zip(failing, kids, strict=True):
            if kid == -1:
                result.add(node, _no_agent(node))
                continue
            known = reasons.get(node) if request.locality is Locality.LOCAL else None
            if known is not None and known[0] == kid:
                v = known[1]
            else:
                v = self._finish(request, demand, node, self._local_verdict(request, demand, self.ledger.view(node)))
                if request.locality is Locality.LOCAL:
                    reasons[node] = (kid, v)
            result.add(node, v)
        return result

    def _failures_by_code(
        self, request: PodRequest, demand: Demand, names: list[str], codes: capacity.Array, result: FilterResult
    ) -> FilterResult:
        """The failing nodes of `_filter_indexed(detail=False)`: the first clause of each node's reason, as
        `_failures_by_state` gives it, from its verdict code (one array per code); only nodes ruled out by their
        inventory (whose reason names the node) get their state's `_local_failure`."""
        (group,) = demand.groups
        texts: list[str | None] = [None] * (_NOT_IN_POOL + 1)
        texts[capacity.NO_CPU] = _cpu_need(demand)
        texts[capacity.NO_MEMORY] = _memory_need(demand)
        texts[capacity.NO_POD_SLOT] = _POD_LIMIT
        texts[capacity.SHORTAGE] = _gpu_need(group)
        present = set(np.unique(codes).tolist())
        by_kid: tuple[dict[int, str], dict[int, str]] | None = None
        if capacity.INVENTORY in present or _NOT_IN_POOL in present:
            for node in compress(names, (codes == _NOT_IN_POOL).tolist()):
                result.add(node, _no_agent(node))
            inventory = list(compress(names, (codes == capacity.INVENTORY).tolist()))
            if inventory:
                failures = self._memo(self._failures, demand)
                by_kid = ({}, {})
                for node, kid in zip(inventory, self.ledger.kids(inventory), strict=True):
                    if kid in by_kid[0] or kid in by_kid[1]:
                        continue
                    v = failures.get(kid)
                    if v is None:
                        v = failures[kid] = self._local_failure(request, demand, self.ledger.view(node))
                    (by_kid[0] if v.resolvable else by_kid[1])[kid] = v.reason.split("; ", 1)[0]
        texted = [code for code in sorted(present) if texts[code] is not None]
        if len(texted) == 1:  # the usual case: every failing node for the same reason
            text = texts[texted[0]]
            result.failed.update(dict.fromkeys(compress(names, (codes == texted[0]).tolist()), text))
        elif texted:  # in the order of `names`
            has_text = np.isin(codes, texted)
            of_code = np.array(texts, dtype=object)[codes[has_text]].tolist()
            result.failed.update(zip(compress(names, has_text.tolist()), of_code, strict=True))
        if by_kid is not None:
            kids = self.ledger.kids(names)
            for of_kid, into in ((by_kid[0], result.failed), (by_kid[1], result.unresolvable)):
                if of_kid:
                    get = of_kid.get
                    into.update({node: t for node, kid in zip(names, kids, strict=True) if (t := get(kid)) is not None})
        return result

    def _failures_by_state(
        self,
        request: PodRequest,
        demand: Demand,
        names: list[str],
        kids: list[int],
        fits: dict[int, bool],
        result: FilterResult,
    ) -> FilterResult:
        """The failing nodes of `filter(detail=False)`: the text of each failing state, remembered across
        calls like the fits, then mapped to the nodes by two comprehensions."""
        memo = self._texts.get(demand)
        if memo is None or len(memo[0]) + len(memo[1]) > _MEMO_LIMIT:
            memo = self._texts[demand] = ({}, {})
            if len(self._texts) > _MEMO_SHAPES:
                del self._texts[next(iter(self._texts))]
        resolvable, unresolvable = memo
        fits_get = fits.get
        unknown = {kid for kid in set(kids) if not fits_get(kid)}.difference(resolvable, unresolvable)
        if -1 in unknown:
            unknown.discard(-1)
            for node, kid in zip(names, kids, strict=True):
                if kid == -1:
                    result.add(node, _no_agent(node))
        if unknown:
            failures = self._memo(self._failures, demand)
            for node, kid in zip(names, kids, strict=True):
                if kid in unknown:
                    v = failures.get(kid)
                    if v is None:
                        v = failures[kid] = self._local_failure(request, demand, self.ledger.view(node))
                    # its first clause, what the pod needs that the state lacks: the same text for many nodes
                    (resolvable if v.resolvable else unresolvable)[kid] = v.reason.split("; ", 1)[0]
                    unknown.discard(kid)
                    if not unknown:
                        break
        for of_kid, into in ((resolvable, result.failed), (unresolvable, result.unresolvable)):
            if of_kid:
                get = of_kid.get
                into.update({node: t for node, kid in zip(names, kids, strict=True) if (t := get(kid)) is not None})
        return result

    def _reserved_out(self, request: PodRequest, names: list[str], result: FilterResult) -> list[str]:
        """The nodes of `names` the pod's queue may use; the others fail in `result` (gpupool.tenancy)."""
        allowed = []
        for node in names:
            if self.reservations.allows(node, request.queue):
                allowed.append(node)
            else:
                result.add(node, Verdict(False, self.reservations.refusal(node), resolvable=False))
        return allowed

    def _filter_each(
        self, request: PodRequest, demand: Demand, names: list[str], result: FilterResult
    ) -> FilterResult:
        """Requests with allow-lists or best-effort QoS see their own views: judged node by node."""
        for node in names:
            view = self._view_if_known(request, node)
            result.add(node, _no_agent(node) if view is None else self._finish(
                request, demand, node, self._local_verdict(request, demand, view)
            ))  # fmt: skip
        return result

    @staticmethod
    def _memo(table: dict[_S, dict[_K, _V]], demand: _S) -> dict[_K, _V]:
        memo = table.get(demand)
        if memo is None or len(memo) > _MEMO_LIMIT:
            memo = table[demand] = {}
            if len(table) > _MEMO_SHAPES:
                del table[next(iter(table))]
        return memo

    def _view_if_known(self, request: PodRequest, node: str) -> NodeView | None:
        return self._view(request, node) if self.ledger.has_node(node) else None

    def _finish(self, request: PodRequest, demand: Demand, node: str, local: Verdict) -> Verdict:
        """Add what depends on the node itself, not its state: remote slots, the GPU named in a reason."""
        if local.fits:
            return local
        if request.locality is Locality.POOL:
            if self._remote_possible(request, demand, node):
                return Verdict(True, remote=True)
            local = self._without_endpoints(local, node)
        if local.gpu_at is None:
            return local
        indexes = self._view(request, node).gpu_index  # this node's, in the order of the state's positions
        name = short_uuid(self.ledger.gpu_uuid(node, indexes[local.gpu_at])) if local.gpu_at < len(indexes) else "?"
        return Verdict(False, local.reason.replace(_GPU, name), local.resolvable)

    def _without_endpoints(self, verdict: Verdict, node: str) -> Verdict:
        """`verdict` of a `pool` pod that gets no remote slices, naming the nodes that could serve none."""
        note = self._no_endpoint(node)
        if not note:
            return verdict
        return Verdict(False, f"{verdict.reason}; {note}", verdict.resolvable, gpu_at=verdict.gpu_at)

    def _no_endpoint(self, node: str) -> str:
        """Which nodes besides `node` have GPUs but no agent endpoint, so serve no remote slices ('' = none)."""
        if self._silent_cache is None or self._silent_cache[0] != self.ledger.generation:
            silent = tuple(sorted(
                n for n in self.ledger.node_names() if not self.ledger.agent_endpoint(n) and self.ledger.gpus_of(n)
            ))  # fmt: skip
            self._silent_cache = (self.ledger.generation, silent, frozenset(silent))
        _, silent, members = self._silent_cache
        count = len(silent) - (node in members)
        if count <= 0:
            return ""
        named = ", ".join([n for n in silent[:4] if n != node][:3]) + (f" and {count - 3} more" if count > 3 else "")
        return (
            f"{count} node(s) serve no remote slices, their node agent publishes no endpoint "
            f"(GPUNode status.agentEndpoint, set by --agent-endpoint): {named}"
        )

    def _local_verdict(self, request: PodRequest, demand: Demand, view: NodeView) -> Verdict:
        """The verdict on `view`'s state alone: the same for every node with the same kid."""
        if self._fits_locally(view, demand):
            return _FITS
        if view.kid < 0 or self._constrained(request):
            return self._local_failure(request, demand, view)
        failures = self._memo(self._failures, demand)  # _fits_locally checked the epoch
        known = failures.get(view.kid)
        if known is None:
            known = failures[view.kid] = self._local_failure(request, demand, view)
        return known

    def _fits_locally(self, view: NodeView, demand: Demand) -> bool:
        if view.kid < 0:
            return _fits_now(view, demand)
        self._check_epoch()
        fits = self._memo(self._verdicts, demand)
        known = fits.get(view.kid)
        if known is None:
            known = fits[view.kid] = _fits_now(view, demand)
        return known

    def _check_epoch(self) -> None:
        if self._epoch != self.ledger.kid_epoch:
            self._epoch = self.ledger.kid_epoch
            self._verdicts.clear()
            self._failures.clear()
            self._reasons.clear()
            self._choices.clear()
            self._texts.clear()
            self._score_tables.clear()

    def _local_failure(self, request: PodRequest, demand: Demand, view: NodeView) -> Verdict:
        inventory = view.inventory
        if not inventory:
            return Verdict(False, f"node {view.name} has no GPUs", resolvable=False)
        if request.models and not any(model in request.models for model, _ in inventory):
            models = ", ".join(sorted({model for model, _ in inventory}))
            wanted = ", ".join(sorted(request.models))
            return Verdict(False, f"GPU model {models} is not in gpupool.io/gpu-model ({wanted})", resolvable=False)
        if request.uuids:
            if not any(g.uuid in request.uuids for g in self.ledger.gpus_of(view.name)):
                return Verdict(False, "none of its GPUs is in gpupool.io/gpu-uuid", resolvable=False)
            allowed = [
                (g.model, g.memory_mib) for g in self.ledger.gpus_of(view.name)
                if g.uuid in request.uuids and (not request.models or g.model in request.models)
            ]  # fmt: skip
        else:
            allowed = [(m, mem) for m, mem in inventory if not request.models or m in request.models]
        for group in demand.groups:
            big_enough = sum(1 for _, mem in allowed if group.memory_mib is None or mem >= group.memory_mib)
            if big_enough < group.count:
                need = "" if group.memory_mib is None else f" of at least {group.memory_mib} MiB"
                return Verdict(
                    False, f"needs {group.count} distinct GPU(s){need}; node has {big_enough}", resolvable=False
                )
        if view.cpu_free is not None and view.cpu_free < demand.cpu_milli:
            return Verdict(False, f"{_cpu_need(demand)}; {view.cpu_free}m free")
        if view.memory_free is not None and view.memory_free < demand.memory_mib:
            return Verdict(False, f"{_memory_need(demand)}; {view.memory_free} MiB free")
        if view.pods_free is not None and view.pods_free < 1:
            return Verdict(False, _POD_LIMIT)
        for group in demand.groups:
            fitting = sum(
                1 for j in range(len(view.free_compute))
                if slice_fits(view.free_compute[j], view.free_memory[j], view.total_memory[j], group)
            )  # fmt: skip
            if fitting < group.count:
                return self._shortage(view, group, fitting)
        return Verdict(False, "the slices of its containers do not fit together on this node's GPUs")

    @staticmethod
    def _shortage(view: NodeView, group: SliceGroup, fitting: int) -> Verdict:
        need = _gpu_need(group)
        if not view.free_compute:
            return Verdict(False, f"{need}; no GPU is eligible (unhealthy, disabled or out of slots)")
        best = max(range(len(view.free_compute)), key=lambda j: (view.free_compute[j], view.free_memory[j]))
        reason = (
            f"{need}; {fitting} such GPU(s) here; largest free is {view.free_compute[best]}% / "
            f"{view.free_memory[best]} MiB ({_GPU})"
        )
        return Verdict(False, reason, gpu_at=best)

    def _remote_possible(self, request: PodRequest, demand: Demand, node: str) -> bool:
        """Could the pool serve the pod from other nodes, given `node`'s free remote slots?

        Counts the GPUs of `node` itself and of the nodes whose agent publishes an endpoint: only
        those can serve a remote slice (the container is handed that endpoint, DESIGN.md §6).
        """
        if self.ledger.remote_slots_free(node) < demand_slices(demand):
            return False
        own = node if not self.ledger.agent_endpoint(node) else None  # counted although it serves no one else
        cache_key = (demand, request.models, request.uuids, request.qos, own, request.queue, self.reservations.version)
        if self._pool_cache and self._pool_cache[0] == self.ledger.generation and self._pool_cache[1] == cache_key:
            return self._pool_cache[2]
        ok = all(self._pool_count(request, group, own) >= group.count for group in demand.groups)
        self._pool_cache = (self.ledger.generation, cache_key, ok)
        return ok

    def _pool_count(self, request: PodRequest, group: SliceGroup, own: str | None) -> int:
        count = 0
        for name in self.ledger.node_names():
            if name != own and not self.ledger.agent_endpoint(name):
                continue
            if not self.reservations.allows(name, request.queue):
                continue
            view = self._view(request, name)
            for j in range(len(view.free_compute)):
                if slice_fits(view.free_compute[j], view.free_memory[j], view.total_memory[j], group):
                    count += 1
                    if count >= group.count:
                        return count
        return count

    # --- scores (prioritize) ---------------------------------------------------------------------

    def _sync_models(self) -> None:
        """Tell the policies the pool's GPUs per model when nodes came, went or changed GPUs (fgdpp's reservation
        term depends on it), from the ledger's change log; forget remembered scores when a policy's change."""
        ledger = self.ledger
        mark = ledger.change_mark()
        if mark == self._models_mark:
            return
        changed = None if self._models_mark is None else ledger.changes_since(self._models_mark)
        self._models_mark = mark
        if changed is None:
            self._node_models.clear()
            self._model_gpus.clear()
        moved = changed is None
        for name in ledger.node_names() if changed is None else set(changed):
            models = tuple(g.model for g in ledger.gpus_of(name)) if ledger.has_node(name) else ()
            old = self._node_models.get(name, ())
            if models == old:
                continue
            moved = True
            self._model_gpus.subtract(old)
            self._model_gpus.update(models)
            self._node_models[name] = models
        if not moved:
            return
        gpus = {model: n for model, n in self._model_gpus.items() if n > 0}
        if any([policy.pool_models(gpus) for policy in self.policies.values()]):
            self.forget_scores()

    def scores(self, request: PodRequest, nodes: Iterable[str]) -> dict[str, int | None]:
        """Policy score 0..100 of each node where the pod fits locally; None where it fits only remotely."""
        self._sync_models()
        demand = Demand.of(request)
        policy = self.policy_for(request)
        names = list(nodes)
        choices = self._evaluate(policy, request, demand, names)
        return {node: choice.score if (choice := choices.get(node)) is not None else None for node in names}

    def score_array(self, request: PodRequest, nodes: list[str]) -> npt.NDArray[np.int16]:
        """`scores` as an array in the order of `nodes`, `NO_SCORE` for None.

        For a deterministic policy whose scores are the nodes' own (no `rescore`) and an unconstrained pod, the
        score of each node state (kid) is kept in an array per (policy, demand), forgotten with the choices
        (`_check_epoch`, `forget_scores`); the nodes' kids come from the capacity index's rows of the list
        (`CapacityIndex.lookup`), so a call is array operations; states not scored yet are scored together
        (`Policy.score_rows`). Else from `scores`."""
        self._sync_models()
        demand = Demand.of(request)
        policy = self.policy_for(request)
        if not policy.deterministic or self._constrained(request) or type(policy).rescore is not Policy.rescore:
            scores = self.scores(request, nodes)
            clipped = [NO_SCORE if (s := scores[n]) is None else max(_UNKNOWN + 1, min(s, _MOST)) for n in nodes]
            return np.array(clipped, dtype=np.int16)
        index = self.ledger.capacity_index()  # before the epoch check: refreshing it may start a new kid epoch
        self._check_epoch()
        rows = index.lookup(nodes)
        kids = index.kids_at(rows)
        key = (policy.name, demand)
        table = self._score_tables.get(key)
        top = int(kids.max(initial=-1)) + 1
        if table is None or len(table) <= top:
            grown = np.full(max(top, 2 * (0 if table is None else len(table) - 1), 64) + 1, _UNKNOWN, dtype=np.int16)
            if table is not None:
                grown[: len(table) - 1] = table[:-1]
            grown[-1] = NO_SCORE  # kid -1: a node not in the pool
            self._score_tables.pop(key, None)
            if len(self._score_tables) >= _SCORE_SHAPES:
                del self._score_tables[next(iter(self._score_tables))]
            table = self._score_tables[key] = grown
        got = table[kids]
        unknown = np.flatnonzero(got == _UNKNOWN)
        if len(unknown):
            states, first = np.unique(kids[unknown], return_index=True)
            at = unknown[first]  # a node of each state
            table[states] = self._score_states(policy, demand, index, rows[at].tolist(), at.tolist(), nodes)
            got = table[kids]
        return got

    def _score_states(
        self, policy: Policy, demand: Demand, index: capacity.CapacityIndex, rows: list[int], at: list[int],
        nodes: list[str],
    ) -> npt.NDArray[np.int16]:  # fmt: skip
        """The scores of the node states of `rows` of `index` (`nodes[i]` for i in `at`: a node of each),
        `NO_SCORE` where the pod does not fit: `Policy.score_rows`, else `Policy.evaluate_rows` or `evaluate`."""
        scored = policy.score_rows(index, rows, demand)
        if scored is not None:
            scores, fits = scored
        else:
            choices = self._evaluate_states(policy, demand, index, rows, [nodes[i] for i in at])
            memo = self._memo(self._choices, (policy.name, demand))
            memo.update(zip(index.kid[rows].tolist(), choices, strict=True))
            scores = np.array([0 if c is None else c.score for c in choices], dtype=np.int64)
            fits = np.array([c is not None for c in choices], dtype=bool)
        return np.where(fits, np.clip(scores, _UNKNOWN + 1, _MOST), NO_SCORE).astype(np.int16)

    def _evaluate_states(
        self, policy: Policy, demand: Demand, index: capacity.CapacityIndex, rows: list[int], names: list[str]
    ) -> list[Choice | None]:
        """`evaluate` of the node states of `rows` of `index` (`names[i]`: a node of state i): together through
        `Policy.evaluate_rows` where the policy has it, else one by one."""
        choices = policy.evaluate_rows(index, rows, demand)
        return choices if choices is not None else [policy.evaluate(self.ledger.view(name), demand) for name in names]

    def _evaluate(
        self, policy: Policy, request: PodRequest, demand: Demand, nodes: list[str]
    ) -> dict[str, Choice]:
        """Evaluate `nodes` (each distinct state once, remembered across calls), then let the policy rescore."""
        memoise = policy.deterministic and not self._constrained(request)
        per_node: dict[str, Choice] = {}
        if memoise:
            self._check_epoch()
            memo = self._choices.setdefault((policy.name, demand), {})
            if len(memo) > _MEMO_LIMIT:
                memo.clear()
            kids = self.ledger.kids(nodes)  # each distinct node state evaluated once (`Ledger.kids`)
            unknown = set(kids).difference(memo)
            unknown.discard(-1)
            if unknown:  # the unknown states together (`Policy.evaluate_rows`), else one by one
                of_kid = dict(zip(kids, nodes, strict=True))  # a node of each state
                states = list(unknown)
                names = [of_kid[kid] for kid in states]
                index = self.ledger.capacity_index()
                memo.update(zip(states, self._evaluate_states(policy, demand, index, index.rows(names), names),
                                strict=True))  # fmt: skip
            memo_get = memo.get
            per_node = {node: c for node, kid in zip(nodes, kids, strict=True) if (c := memo_get(kid)) is not None}
        else:
            for node in nodes:
                if self.ledger.has_node(node):
                    evaluated = policy.evaluate(self._view(request, node), demand)
                    if evaluated is not None:
                        per_node[node] = evaluated
        if not per_node or type(policy).rescore is Policy.rescore:  # scores are the nodes' own
            return per_node
        distinct = list({id(c): c for c in per_node.values()}.values())
        rescored = dict(zip((id(c) for c in distinct), policy.rescore(distinct), strict=True))
        return {n: rescored[id(c)] for n, c in per_node.items()}

    # --- plans (bind, simulator) -----------------------------------------------------------------

    def plan(self, request: PodRequest, node: str) -> Plan:
        """The slices `request` gets on `node` (remote ones too for `pool` pods); raises `NoFit`."""
        verdict = self.verdict(request, node)
        if not verdict.fits:
            raise NoFit(verdict.reason, verdict.resolvable)
        self._sync_models()
        demand = Demand.of(request)
        policy = self.policy_for(request)
        view = self._view(request, node)
        if not verdict.remote:
            choice = policy.evaluate(view, demand)
            if choice is not None:
                return Plan(node, self._slices(request, view, demand, choice.picks), choice.score)
        return self._plan_with_remote(request, demand, policy, view)

    def best(self, request: PodRequest, nodes: Iterable[str] | None = None) -> Plan | None:
        """The best node for `request` by its policy (local slices only), ties to the lowest rank."""
        self._sync_models()
        demand = Demand.of(request)
        policy = self.policy_for(request)
        if self.reservations:
            names = self.ledger.node_names() if nodes is None else nodes
            nodes = [n for n in names if self.reservations.allows(n, request.queue)]
        if policy.random_node:
            return self._random_node(request, demand, policy, nodes)
        if nodes is None and policy.deterministic and not request.uuids and request.qos is QoS.GUARANTEED:
            if type(policy).rescore is Policy.rescore:  # a node's score is its own: keep a board
                return self._best_on_board(request, demand, policy)
            candidates = self._best_by_key(request, demand, policy)
        else:
            names = list(nodes) if nodes is not None else self.ledger.node_names()
            evaluated = self._evaluate(policy, request, demand, names)
            if not evaluated:
                return None
            top = max(c.score for c in evaluated.values())
            candidates = [(n, c) for n, c in evaluated.items() if c.score == top]
        if not candidates:
            return None
        node, choice = min(candidates, key=lambda nc: self.rank(nc[0]))
        view = self._view(request, node)
        return Plan(node, self._slices(request, view, demand, choice.picks), choice.score)

    def forget_scores(self) -> None:
        """Drop every remembered choice and score: a policy now scores differently (its inputs changed)."""
        self._choices.clear()
        self._score_tables.clear()
        self._boards.clear()

    def _best_on_board(self, request: PodRequest, demand: Demand, policy: Policy) -> Plan | None:
        """`best` over the whole pool from the shape's `ScoreBoard`: only nodes changed since the shape's last
        pod are scored again (the same choices as `_best_by_key`, node by node)."""
        ledger = self.ledger
        key = (policy.name, demand)
        board = self._boards.get(key)
        changed = None if board is None else ledger.changes_since(board.mark)
        names: Iterable[str]
        if board is None or changed is None:
            board = ScoreBoard(self.rank, ledger.change_mark())
            self._boards.pop(key, None)
            if len(self._boards) >= _MEMO_SHAPES:
                del self._boards[next(iter(self._boards))]
            self._boards[key] = board
            names = ledger.node_names()
        else:
            names = set(changed) if len(changed) > 1 else changed
        for name in names:
            choice = self._node_choice(request, demand, policy, name) if ledger.has_node(name) else None
            board.update(name, None if choice is None else choice.score)
        board.mark = ledger.change_mark()
        node = board.best()
        if node is None:
            return None
        choice = self._node_choice(request, demand, policy, node)
        assert choice is not None
        view = self._view(request, node)
        return Plan(node, self._slices(request, view, demand, choice.picks), choice.score)

    def _node_choice(self, request: PodRequest, demand: Demand, policy: Policy, node: str) -> Choice | None:
        """`policy`'s choice on `node` for a guaranteed pod, remembered per node state (kid) as in `_best_by_key`."""
        view = self.ledger.view(node)
        if request.models:
            allowed = sum(1 for model, _ in view.inventory if model in request.models)
            if allowed == 0 and demand.groups:
                return None
            if allowed < len(view.inventory):
                return policy.evaluate(self._view(request, node), demand)
        self._check_epoch()  # after the view: building it may start a new kid epoch
        memo = self._memo(self._choices, (policy.name, demand))
        kid = view.kid
        if kid in memo:
            return memo[kid]
        choice = memo[kid] = policy.evaluate(view, demand)
        return choice

    def _best_by_key(self, request: PodRequest, demand: Demand, policy: Policy) -> list[tuple[str, Choice]]:
        """Each distinct node state evaluated once. A model allow-list leaves a node's view as it is when every
        GPU of the node is of an allowed model, and empty when none is; only mixed nodes need their own view."""
        ledger = self.ledger
        groups = [(ledger.view(next(iter(members))), members) for members in ledger.nodes_by_key().values()]
        self._check_epoch()  # after the views: building one may start a new kid epoch
        memo = self._memo(self._choices, (policy.name, demand))  # kid -> choice, as in `_evaluate`
        evaluated: list[tuple[Iterable[str], Choice]] = []
        for view, members in groups:
            if request.models:
                allowed = sum(1 for model, _ in view.inventory if model in request.models)
                if allowed == 0 and demand.groups:
                    continue
                if allowed < len(view.inventory):
                    for name in members:
                        own = policy.evaluate(self._view(request, name), demand)
                        if own is not None:
                            evaluated.append(((name,), own))
                    continue
            kid = view.kid
            if kid in memo:
                choice = memo[kid]
            else:
                choice = memo[kid] = policy.evaluate(view, demand)
            if choice is not None:
                evaluated.append((members, choice))
        if not evaluated:
            return []
        rescored = policy.rescore([c for _, c in evaluated])
        top = max(c.score for c in rescored)
        out: list[tuple[str, Choice]] = []
        for (names, _), choice in zip(evaluated, rescored, strict=True):
            if choice.score == top:
                out.append((min(names, key=self.rank), choice))
        return out

    def _random_node(
        self, request: PodRequest, demand: Demand, policy: Policy, nodes: Iterable[str] | None
    ) -> Plan | None:
        names = sorted(nodes if nodes is not None else self.ledger.node_names(), key=self.rank)
        feasible = [n for n in names if self._fits_locally(self._view(request, n), demand)]
        if not feasible:
            return None
        node = policy.pick_node(feasible)  # type: ignore[attr-defined]
        view = self._view(request, node)
        choice = policy.evaluate(view, demand)
        assert choice is not None
        return Plan(node, self._slices(request, view, demand, choice.picks), choice.score)

    def _slices(
        self, request: PodRequest, view: NodeView, demand: Demand, picks: tuple[tuple[int, ...], ...]
    ) -> tuple[PlannedSlice, ...]:
        by_index = {g.index: g for g in self.ledger.gpus_of(view.name)}
        out: list[PlannedSlice] = []
        for container, group, chosen in zip(request.containers, demand.groups, picks, strict=True):
            for j in chosen:
                gpu = by_index[view.gpu_index[j]]
                out.append(
                    PlannedSlice(container.index, container.init, gpu.uuid, group.compute,
                                 slice_memory(gpu.memory_mib, group))
                )  # fmt: skip
        return tuple(out)

    def _plan_with_remote(self, request: PodRequest, demand: Demand, policy: Policy, view: NodeView) -> Plan:
        """Local GPUs first, then the best GPUs anywhere in the pool for the remaining slices."""
        node = view.name
        used: dict[str, tuple[int, int]] = {}  # hypothetical usage by this plan: uuid -> (compute, memory)
        planned: list[PlannedSlice] = []
        remote = 0
        for container, group in zip(request.containers, demand.groups, strict=True):
            taken: set[str] = set()
            for _ in range(group.count):
                local = self._pick_on(request, policy, view.name, group, used, taken)
                if local is not None:
                    uuid = local
                else:
                    uuid = self._pick_remote(request, policy, node, group, used, taken)
                    remote += 1
                gpu = self.ledger.gpu(uuid)
                memory = slice_memory(gpu.memory_mib, group)
                c, m = used.get(uuid, (0, 0))
                used[uuid] = (c + group.compute, m + memory)
                taken.add(uuid)
                planned.append(PlannedSlice(container.index, container.init, uuid, group.compute, memory))
        if remote > self.ledger.remote_slots_free(node):
            raise NoFit(f"needs {remote} remote slot(s); node {node} has {self.ledger.remote_slots_free(node)} free")
        return Plan(node, tuple(planned), 0, remote)

    def _adjusted(
        self, request: PodRequest, node: str, used: dict[str, tuple[int, int]], taken: set[str]
    ) -> tuple[NodeView, list[str]]:
        """`node`'s view minus this plan's hypothetical usage, without GPUs the group already has."""
        view = self._view(request, node)
        by_index = {g.index: g.uuid for g in self.ledger.gpus_of(node)}
        uuids = [by_index[i] for i in view.gpu_index]
        if not any(u in used or u in taken for u in uuids):
            return view, uuids
        keep = [j for j, u in enumerate(uuids) if u not in taken]
        fc = tuple(view.free_compute[j] - used.get(uuids[j], (0, 0))[0] for j in keep)
        fm = tuple(view.free_memory[j] - used.get(uuids[j], (0, 0))[1] for j in keep)
        adjusted = NodeView.make(
            node, view.model, tuple(view.gpu_index[j] for j in keep), fc, fm,
            tuple(view.total_memory[j] for j in keep), view.gpu_count,
        )  # fmt: skip
        return adjusted, [uuids[j] for j in keep]

    def _pick_on(
        self, request: PodRequest, policy: Policy, node: str, group: SliceGroup,
        used: dict[str, tuple[int, int]], taken: set[str],
    ) -> str | None:  # fmt: skip
        view, uuids = self._adjusted(request, node, used, taken)
        choice = policy.evaluate(view, Demand((SliceGroup(1, group.compute, group.memory_mib),)))
        return None if choice is None else uuids[choice.picks[0][0]]

    def _pick_remote(
        self, request: PodRequest, policy: Policy, node: str, group: SliceGroup,
        used: dict[str, tuple[int, int]], taken: set[str],
    ) -> str:  # fmt: skip
        single = Demand((SliceGroup(1, group.compute, group.memory_mib),))
        best: tuple[int, int, str] | None = None
        for other in self.ledger.node_names():
            if other == node or not self.ledger.agent_endpoint(other):
                continue
            if not self.reservations.allows(other, request.queue):
                continue
            view, uuids = self._adjusted(request, other, used, taken)
            choice = policy.evaluate(view, single)
            if choice is None:
                continue
            candidate = (-choice.score, self.rank(other), uuids[choice.picks[0][0]])
            if best is None or candidate < best:
                best = candidate
        if best is None:
            memory = "the whole memory" if group.memory_mib is None else f"{group.memory_mib} MiB"
            reason = f"no GPU in the pool has {group.compute}% compute and {memory} free for a remote slice"
            note = self._no_endpoint(node)
            raise NoFit(f"{reason}; {note}" if note else reason)
        return best[2]


def demand_slices(demand: Demand) -> int:
    return sum(g.count for g in demand.groups)
