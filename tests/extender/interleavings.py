"""Random interleavings of everything that reaches the extender's cache, driven by one seeded scheduler (issue 12).

`World` is the API server: Nodes, GPUNodes and pods, each write queued on its resource's watch stream, and
the extender's `PodAPI`. `Schedule(seed)` draws every step from `random.Random(seed)`: a pod is created
(names come back with new uids), finishes or is deleted; a Node or a GPUNode is deleted or comes back; a GPU
leaves or returns to `status.gpus`, turns unhealthy or disabled; a filter; a preempt; a bind starts or
resumes; the next event of one watch is delivered; a watch expires (410 Gone) and its resource is relisted;
the kubelet takes a bound pod's devices (`gpupool.io/allocated` written, or the pod runs); time passes.

The identity rule (gpupool.identity) is on in half of the schedules (wait 30 or 120 s, drawn from the seed), on
the world's fake clock, which only the "time passes" step moves: assignment times come from it too, so a
schedule replays exactly.

Binds run in greenlets on the scheduler's thread. Each API call of a bind (reading the pod, the Binding, the
Binding's reply) hands control back to the scheduler, so several binds are in flight at once and any event can
land between a bind's commit, its Binding and its success path. The Binding may fail (500), land with its reply
lost, or be refused (404 gone, 409 bound or recreated); a GET may fail (500).

After every step `Schedule.check` asserts:

* no API call is made while the service's lock is held;
* no GPU of the ledger is over capacity, and no slot is counted twice;
* the ledger is a recount of what the service has seen: its nodes are the cached Nodes with GPUNodes, and it
  holds exactly the cached pods' signed assignments and the in-flight binds' commits (none lost); one with a
  node or GPU outside the pool is reported unplaced and, where it still uses GPUs in the pool, quarantined
  (counted conservatively), as is one that does not fit (a lagging event may show a pod, deleted since,
  holding what was given away meanwhile: quarantined, never held past capacity);
* the API objects never double-book: the signed assignments of all live pods fit together on every GPU ever
  published (`World.catalog`), slots included;
* whenever nothing is in flight and every watch is drained, the cache is the API objects, no problem is
  reported, and the ledger holds exactly what a fresh recount from them holds;
* with the identity rule on, no two bound pods of one node that the kubelet has not served, both bound less than
  the wait ago, share a slot count (on the API objects).

The checks are exact after every step; what makes them cheap is only caching by content (a pod's assignment
text, a GPUNode's spec and status objects) and skipping the API-object checks when no pod was written and the
clock did not move since the last one.

A failure names the seed and prints the step log; `run_seed(seed)` replays it exactly.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from greenlet import greenlet

from extender.kube import ApiError
from extender.metrics import Metrics
from extender.service import PoolService
from gpupool import assignment as assignment_format
from gpupool import identity, objects, resources
from gpupool.errors import OverAllocation
from gpupool.inventory import NodeInfo
from gpupool.ledger import Holding, Ledger
from gpupool.pool import PoolConfig, build_pool
from gpupool.request import WHOLE_GPU_COMPUTE
from gpupool.slots import parse_slot
from tests.extender.conftest import KEY, gpunode, node, pod

NODES = ("n0", "n1", "n2")
NAMES = ("a", "b", "c", "d", "e", "f")
STREAMS = ("nodes", "gpunodes", "pods")
NAMESPACE = "default"
#: the fake clock's start (2026-01-01T00:00:00Z): whole seconds, so assignment times read back exactly
EPOCH = 1_767_225_600
#: identity waits (fake seconds) a schedule draws from; 0 turns the rule off (capacity only)
IDENTITY_WAITS = (0.0, 0.0, 30.0, 120.0)


@dataclass(frozen=True)
class Paused:
    """What a bind's greenlet hands the scheduler at each API call: where it stopped."""

    what: str


class World:
    """The API server's objects, the watch events not yet delivered (one FIFO per resource), and the
    extender's `PodAPI`, whose every call hands control back to the scheduler first."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.service: PoolService | None = None
        self.nodes: dict[str, dict[str, Any]] = {n: node(n) for n in NODES}
        self.gpunodes: dict[str, dict[str, Any]] = {}
        for n in NODES:
            obj = gpunode(n, gpus=2, memory=rng.choice((8192, 16384)), endpoint=rng.choice((None, None, "")))
            self.gpunodes[n] = obj
        #: every GPU ever published, as its status.gpus entry: a GPU that leaves comes back the same
        self.catalog: dict[str, list[dict[str, Any]]] = {
            n: clone(o["status"]["gpus"]) for n, o in self.gpunodes.items()
        }
        self.pods: dict[str, dict[str, Any]] = {}  # by name (one namespace)
        self.streams: dict[str, deque[tuple[str, dict[str, Any]]]] = {s: deque() for s in STREAMS}
        self.rv = 1
        #: the fake clock of the service (the identity rule, assignment times): moves only when a step says so
        self.now = float(EPOCH)
        self.serial = 0
        #: bumped on every pod write: the double-booking check reruns only then
        self.pod_writes = 0
        self.checked_writes = -1
        self.identity_checked: tuple[int, float] | None = None  # (pod_writes, now) of the last identity check
        #: `catalog` as node infos, for the double-booking check (built once per catalog)
        self.catalog_infos: tuple[Any, dict[str, NodeInfo]] | None = None
        #: the next GETs that fail (scripted tests); random ones fail too
        self.fail_gets = 0

    def emit(self, stream: str, kind: str, obj: dict[str, Any]) -> None:
        self.rv += 1
        self.pod_writes += stream == "pods"
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        self.streams[stream].append((kind, clone(obj)))

    def objects_of(self, stream: str) -> list[dict[str, Any]]:
        found = {"nodes": self.nodes, "gpunodes": self.gpunodes, "pods": self.pods}[stream]
        return clone(list(found.values()))

    # --- the extender's PodAPI ----------------------------------------------------------------------

    def _pause(self, what: str) -> None:
        service = self.service
        assert service is not None
        assert not service.lock._is_owned(), f"API call ({what}) made while holding the service's lock"
        here = greenlet.getcurrent()
        assert here.parent is not None, "the PodAPI is called from a bind greenlet only"
        here.parent.switch(Paused(what))

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        self._pause(f"get {name}")
        if self.fail_gets or self.rng.random() < 0.03:
            self.fail_gets = max(0, self.fail_gets - 1)
            raise ApiError(500, "injected: GET failed")
        found = self.pods.get(name)
        if found is None:
            raise ApiError(404, f"pod {namespace}/{name} not found")
        return clone(found)

    def patch_pod(self, namespace: str, name: str, patch: Any, content_type: str = "") -> dict[str, Any]:
        raise AssertionError("the extender writes assignments with the Binding, never with a patch")

    def bind_pod(self, namespace: str, name: str, uid: str, node_name: str,
                 annotations: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self._pause(f"Binding {name} -> {node_name}")
        fate = self.rng.random()
        if fate < 0.08:
            raise ApiError(500, "injected: Binding failed")
        found = self.pods.get(name)
        if found is None:
            raise ApiError(404, f"pod {namespace}/{name} not found")
        if found["metadata"]["uid"] != uid:
            raise ApiError(409, f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                                f"{found['metadata']['uid']}")  # fmt: skip
        if found["spec"].get("nodeName"):
            raise ApiError(409, f"pod {name} is already assigned to node {found['spec']['nodeName']}")
        found["spec"]["nodeName"] = node_name
        if annotations:
            found["metadata"].setdefault("annotations", {}).update(annotations)
        self.emit("pods", "MODIFIED", found)
        self._pause(f"Binding {name} -> {node_name} landed, reply on its way")
        if fate < 0.16:
            raise ApiError(500, "injected: Binding applied, reply lost")


@dataclass
class Bind:
    """A bind in flight: its greenlet and where it stands."""

    label: str
    task: Any  # greenlet
    at: str = "start"


class Schedule:
    """One seeded schedule over a fresh service and world; `run` draws the steps and checks after each."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.world = World(self.rng)
        #: the identity rule (gpupool.identity) is on in a share of schedules, with a wait in fake seconds
        self.identity_wait = self.rng.choice(IDENTITY_WAITS)
        self.service = new_service(self.world, self.identity_wait)
        self.world.service = self.service
        self.binds: list[Bind] = []
        self.log: list[str] = []
        s, w = self.service, self.world
        s.on_node_list(w.objects_of("nodes"))
        s.on_gpunode_list(w.objects_of("gpunodes"))
        s.on_pod_list(w.objects_of("pods"))

    # --- pods ---------------------------------------------------------------------------------------

    def create_pod(self) -> None:
        w = self.world
        free = [n for n in NAMES if n not in w.pods]
        if not free:
            return
        name = self.rng.choice(free)
        w.serial += 1
        whole = self.rng.random() < 0.3
        annotations: dict[str, str] = {}
        if self.rng.random() < 0.2:
            annotations[resources.LOCALITY] = "pool"
        if self.rng.random() < 0.15:
            annotations[resources.QOS] = "best-effort"
        p = pod(name, uid=f"uid-{name}-{w.serial}", count=self.rng.choice((1, 1, 1, 2)),
                compute=WHOLE_GPU_COMPUTE if whole else self.rng.choice((10, 30, 50, 70)),
                memory=None if whole else self.rng.choice((1024, 3000, 6000)),
                annotations=annotations or None)  # fmt: skip
        w.pods[name] = p
        self.note(f"create pod {name} ({p['metadata']['uid']}, {_request_text(p)})")
        w.emit("pods", "ADDED", p)

    def end_pod(self) -> None:
        w = self.world
        if not w.pods:
            return
        name = self.rng.choice(sorted(w.pods))
        if self.rng.random() < 0.5:
            p = w.pods.pop(name)
            self.note(f"delete pod {name} ({p['metadata']['uid']})")
            w.emit("pods", "DELETED", p)
        elif not objects.pod_is_terminal(w.pods[name]):
            w.pods[name]["status"]["phase"] = "Succeeded"
            self.note(f"pod {name} finished")
            w.emit("pods", "MODIFIED", w.pods[name])

    # --- inventory ----------------------------------------------------------------------------------

    def flap(self) -> None:
        w = self.world
        name = self.rng.choice(NODES)
        what = self.rng.choice(("node", "gpunode", "gpu", "gpu", "health", "disabled"))
        if what == "node":
            if name in w.nodes:
                self.note(f"delete Node {name}")
                w.emit("nodes", "DELETED", w.nodes.pop(name))
            else:
                self.note(f"create Node {name}")
                w.nodes[name] = node(name)
                w.emit("nodes", "ADDED", w.nodes[name])
            return
        if what == "gpunode":
            if name in w.gpunodes:
                self.note(f"delete GPUNode {name}")
                w.emit("gpunodes", "DELETED", w.gpunodes.pop(name))
            else:
                self.note(f"create GPUNode {name}")
                obj = gpunode(name, gpus=0)
                obj["status"]["gpus"] = clone(w.catalog[name])
                obj["status"]["agentEndpoint"] = self.rng.choice((f"{name}.agents:9403", ""))
                w.gpunodes[name] = obj
                w.emit("gpunodes", "ADDED", obj)
            return
        obj = w.gpunodes.get(name)
        if obj is None:
            return
        gpus: list[dict[str, Any]] = obj["status"]["gpus"]
        index = self.rng.randrange(len(w.catalog[name]))
        uuid = w.catalog[name][index]["uuid"]
        present = [g for g in gpus if g["uuid"] == uuid]
        if what == "gpu":
            if present:
                self.note(f"GPU {uuid} leaves GPUNode {name}")
                gpus.remove(present[0])
            else:
                self.note(f"GPU {uuid} returns to GPUNode {name}")
                gpus.append(clone(w.catalog[name][index]))
                gpus.sort(key=lambda g: g["index"])
        elif what == "health":
            if not present:
                return
            present[0]["health"] = "Unhealthy" if present[0]["health"] == "Healthy" else "Healthy"
            self.note(f"GPU {uuid} turns {present[0]['health']}")
        else:
            disabled: list[str] = obj["spec"]["disabledGPUs"]
            if uuid in disabled:
                disabled.remove(uuid)
                self.note(f"GPU {uuid} enabled")
            else:
                disabled.append(uuid)
                self.note(f"GPU {uuid} disabled")
        w.emit("gpunodes", "MODIFIED", obj)

    # --- the kubelet and the clock --------------------------------------------------------------------

    def serve(self) -> None:
        """The kubelet takes a bound pod's devices: the node agent records them in `gpupool.io/allocated`, or the
        pod reports Running (either ends its identity hold)."""
        w = self.world
        bound = [p for p in w.pods.values() if p["spec"].get("nodeName") and not objects.pod_is_terminal(p)
                 and not identity.kubelet_admitted(p) and objects.pod_assignment_text(p) is not None]  # fmt: skip
        if not bound:
            return
        p = self.rng.choice(sorted(bound, key=objects.pod_key))
        name = p["metadata"]["name"]
        if self.rng.random() < 0.5:
            h = holding_of(p)
            keys = identity.container_slices(h.slices) if h is not None else {}
            p["metadata"].setdefault("annotations", {})[resources.ALLOCATED] = identity.format_allocated(keys)
            self.note(f"the node agent records pod {name}'s devices taken: {sorted(keys)}")
        else:
            p["status"]["phase"] = "Running"
            self.note(f"pod {name} runs")
        w.emit("pods", "MODIFIED", p)

    def tick(self) -> None:
        seconds = self.rng.choice((1, 3, 10, 40))
        self.world.now += seconds
        self.note(f"{seconds} s pass (clock {self.world.now - EPOCH:.0f})")

    # --- the verbs ----------------------------------------------------------------------------------

    def _pending(self) -> list[dict[str, Any]]:
        w = self.world
        return [p for p in w.pods.values() if not p["spec"].get("nodeName") and not objects.pod_is_terminal(p)]

    def filter(self) -> None:
        pending = self._pending()
        if not pending:
            return
        p = self.rng.choice(pending)
        asked = [*NODES, "ghost"]
        result = self.service.filter(clone(p), asked)
        self.note(f"filter {p['metadata']['name']}: passing {result.passing}, error {result.error!r}")
        assert set(result.passing or ()) <= set(asked), "filter passed a node it was not asked about"

    def preempt(self) -> None:
        pending = self._pending()
        if not pending:
            return
        p = self.rng.choice(pending)
        on: dict[str, list[str]] = {n: [] for n in NODES}
        for q in self.world.pods.values():
            bound = q["spec"].get("nodeName")
            if bound in on:
                on[bound].append(q["metadata"]["uid"])
        candidates = {n: (uids, 0) for n, uids in on.items() if uids}
        before = self.service.ledger_snapshot()
        answer = self.service.preempt(clone(p), candidates)
        self.note(f"preempt for {p['metadata']['name']}: {answer}")
        assert self.service.ledger_snapshot() == before, "preempt changed the live ledger"
        for n, (victims, _) in answer.items():
            assert n in candidates and set(victims) <= set(candidates[n][0]), f"preempt invented victims on {n}"

    def start_bind(self) -> None:
        w = self.world
        pending = self._pending()
        choices = pending if pending and self.rng.random() < 0.9 else list(w.pods.values())
        if not choices:
            return
        p = self.rng.choice(choices)
        target = self.rng.choice(NODES)
        if self.rng.random() < 0.8:  # kube-scheduler binds where the filter passed
            passing = self.service.filter(clone(p), list(NODES)).passing
            if passing:
                target = self.rng.choice(passing)
        meta = p["metadata"]
        # now and then a stale uid: the pod was recreated since kube-scheduler read it
        uid = meta["uid"] if self.rng.random() < 0.95 else f"uid-{meta['name']}-0"
        service = self.service
        task = greenlet(lambda: service.bind(meta["name"], NAMESPACE, uid, target))
        b = Bind(f"bind {meta['name']} ({uid}) -> {target}", task)
        self.note(f"start {b.label}")
        self.binds.append(b)
        self._advance(b)

    def resume_bind(self) -> None:
        if self.binds:
            self._advance(self.rng.choice(self.binds))

    def _advance(self, b: Bind) -> None:
        out = b.task.switch()
        if isinstance(out, Paused):
            b.at = out.what
            self.note(f"  {b.label}: paused at {out.what}")
            return
        self.binds.remove(b)
        self.note(f"  {b.label}: answered {out!r}")

    # --- the watches --------------------------------------------------------------------------------

    def deliver(self) -> None:
        live = [s for s in STREAMS if self.world.streams[s]]
        if not live:
            return
        stream = self.rng.choice(live)
        kind, obj = self.world.streams[stream].popleft()
        self.note(f"deliver {stream} {kind} {_label(obj)}")
        handler: Callable[[str, dict[str, Any]], None] = {
            "nodes": self.service.on_node_event,
            "gpunodes": self.service.on_gpunode_event,
            "pods": self.service.on_pod_event,
        }[stream]
        handler(kind, obj)

    def relist(self) -> None:
        """A watch expired (410 Gone): its undelivered events are lost and the resource is listed afresh."""
        stream = self.rng.choice(STREAMS)
        w, s = self.world, self.service
        lost = len(w.streams[stream])
        w.streams[stream].clear()
        self.note(f"410 Gone: relist {stream} ({lost} undelivered events dropped)")
        {"nodes": s.on_node_list, "gpunodes": s.on_gpunode_list, "pods": s.on_pod_list}[stream](w.objects_of(stream))

    # --- driving ------------------------------------------------------------------------------------

    def note(self, text: str) -> None:
        self.log.append(text)

    def step(self) -> None:
        steps: list[tuple[float, Callable[[], None]]] = [
            (0.12, self.create_pod),
            (0.07, self.end_pod),
            (0.13, self.flap),
            (0.05, self.filter),
            (0.03, self.preempt),
            (0.14, self.start_bind),
            (0.16, self.resume_bind),
            (0.25, self.deliver),
            (0.05, self.relist),
            (0.04, self.serve),
            (0.04, self.tick),
        ]
        roll = self.rng.random() * sum(weight for weight, _ in steps)
        for weight, action in steps:
            roll -= weight
            if roll < 0:
                action()
                return
        steps[-1][1]()

    def settle(self) -> None:
        """Let every bind answer, then deliver every event (in a seeded order), checking after each; then the
        extender's recheck thread reads the pods a bind could not confirm (`PoolService.recheck_unconfirmed`),
        round after round, as it does every few seconds (its reads fail now and then like every GET here)."""
        while self.binds:
            self.resume_bind()
            self.check()
        while any(self.world.streams.values()):
            self.deliver()
            self.check()
        service = self.service
        for _ in range(200):
            if not service.unconfirmed:
                break
            b = Bind(f"recheck {sorted(service.unconfirmed)}", greenlet(service.recheck_unconfirmed))
            self.note(f"start {b.label}")
            self.binds.append(b)
            while self.binds:
                self.resume_bind()
            self.check()

    def run(self, steps: int) -> None:
        try:
            for i in range(steps):
                self.note(f"#{i}")
                self.step()
                self.check()
            self.note("settle")
            self.settle()
        except Exception as exc:
            trail = "\n  ".join(self.log)
            raise AssertionError(
                f"interleaving seed {self.seed} failed: {type(exc).__name__}: {exc}\n"
                f"replay: GPUPOOL_INTERLEAVING_SEED={self.seed} pytest tests/extender/test_interleavings.py\n"
                f"steps:\n  {trail}"
            ) from exc

    # --- the invariants -----------------------------------------------------------------------------

    def check(self) -> None:
        s = self.service
        ledger = s.ledger
        assert not s.lock._is_owned(), "the service's lock is still held between steps"
        for name in ledger.node_names():
            for g in ledger.gpus_of(name):
                assert g.used_g_compute <= WHOLE_GPU_COMPUTE and g.used_g_memory <= g.memory_mib, (
                    f"ledger: GPU {g.uuid} over capacity ({g.used_g_compute}% / {g.used_g_memory} MiB "
                    f"of {g.memory_mib} MiB)"
                )
                assert g.used_compute <= WHOLE_GPU_COMPUTE * ledger.overcommit_compute_percent // 100
                assert g.used_memory <= g.memory_mib * ledger.overcommit_memory_percent // 100
                assert g.slices <= ledger.slots_per_gpu, f"ledger: GPU {g.uuid} holds {g.slices} slices"
        self._check_slots()
        self._check_inventory()
        self._check_holdings()
        if self.identity_wait > 0:
            check_identity_rule(self.world, self.identity_wait)
        check_no_double_booking(self.world)
        if not self.binds and not any(self.world.streams.values()) and not self.service.unconfirmed:
            self._check_drained()

    def _check_slots(self) -> None:
        """Every GPU's slice count and slots, every node's remote slots, are those of the holdings."""
        ledger = self.service.ledger
        slices: dict[str, int] = {}
        local: dict[str, set[int]] = {}
        remote: dict[str, set[int]] = {}
        for h in ledger.holdings():
            for sl in h.slices:
                if not ledger.has_gpu(sl.gpu):
                    continue
                slices[sl.gpu] = slices.get(sl.gpu, 0) + 1
                k = parse_slot(sl.slot)[1]
                if sl.node == h.node:
                    local.setdefault(sl.gpu, set()).add(k)
                else:
                    remote.setdefault(h.node, set()).add(k)
        for name in ledger.node_names():
            state = ledger._nodes[name]
            assert state.remote_used == remote.get(name, set()), f"ledger: remote slots of {name} are off"
            for g in state.gpus:
                assert g.slices == slices.get(g.uuid, 0), f"ledger: slice count of {g.uuid} is off"
                assert g.used_slots == local.get(g.uuid, set()), f"ledger: slots of {g.uuid} are off"

    def _check_inventory(self) -> None:
        s = self.service
        ledger = s.ledger
        in_pool = sorted(s.nodes & s.gpunodes.keys())
        assert sorted(ledger.node_names()) == in_pool, (
            f"ledger nodes {sorted(ledger.node_names())} != cached Nodes with GPUNodes {in_pool}"
        )
        for name in in_pool:
            gpus, disabled = inventory_of(s.gpunodes[name])
            have = ledger.gpus_of(name)
            # the fields of `GPUInfo`, compared as tuples: `Ledger.node_info` would build the same objects slower
            assert {(g.uuid, g.index, g.model, g.memory_mib, g.numa, g.healthy) for g in have} == gpus, (
                f"ledger GPUs of {name} are not its cached GPUNode's"
            )
            assert {g.uuid for g in have if g.disabled} == disabled, f"disabled GPUs of {name}"

    def _check_holdings(self) -> None:
        """The ledger's holdings are a recount of the cache: assignments seen, plus the binds in flight."""
        s = self.service
        ledger = s.ledger
        wanted: dict[str, Holding] = {}
        unplaced: set[str] = set()
        outside: dict[str, Holding] = {}  # signed holdings with a node or GPU outside the pool
        for uid, p in s.pods.items():
            if uid in s.inflight:
                continue
            h = holding_of(p)
            if h is None:
                continue
            if placeable(ledger, h):
                wanted[uid] = h
            else:
                unplaced.add(uid)
                outside[uid] = h
        for uid, h in s.inflight.items():
            # a bind's commit counts from the moment it is made: while the Binding is in flight another bind
            # must not take its capacity, whatever the inventory did meanwhile
            if placeable(ledger, h):
                wanted[uid] = h
            else:
                outside[uid] = h
        quarantined = ledger.quarantined
        for uid, h in outside.items():
            # what such a pod holds on GPUs still in the pool is counted conservatively (quarantine)
            if remains(ledger, h) is not None:
                assert uid in quarantined, f"pod {uid}: {_holding_text(h)} is partly outside the pool and not counted"
        held = {h.pod: h for h in ledger.holdings()}
        for uid in sorted(set(wanted) | set(held)):
            w, h = wanted.get(uid), held.get(uid)
            if uid in s.unconfirmed and w is None:
                continue  # a Binding of unknown outcome: its commit stays held until the pod is read again
            if h is None and uid in quarantined:
                continue  # counted conservatively: does not fit (yet), its GPUs take no new slice
            if w is None:
                raise AssertionError(f"ledger holds {_holding_text(h)} for pod {uid}, which no assignment or "
                                     f"bind in flight accounts for")  # fmt: skip
            if h is None and uid in s.problems:
                continue  # reported: a lagging event shows it holding what the service has since given away
            if h is None:
                state = "in flight" if uid in s.inflight else "seen"
                raise AssertionError(f"assignment of pod {uid} ({state}) is lost: {_holding_text(w)} "
                                     f"is in the pool but not held")  # fmt: skip
            assert (h.node, h.slices) == (w.node, w.slices), (
                f"pod {uid}: ledger holds {_holding_text(h)}, its assignment says {_holding_text(w)}"
            )
        missing = unplaced - s.unplaced
        assert not missing, f"pods with assignments outside the pool but not reported unplaced: {sorted(missing)}"

    def _check_drained(self) -> None:
        """Nothing in flight, every event delivered: the cache is the API objects, the ledger their recount."""
        s, w = self.service, self.world
        assert s.nodes == set(w.nodes), "cached Nodes differ from the API server's"
        assert set(s.gpunodes) == set(w.gpunodes), "cached GPUNodes differ from the API server's"
        live = {p["metadata"]["uid"] for p in w.pods.values()}
        assert set(s.pods) == live, f"cached pods {sorted(s.pods)} != the API server's {sorted(live)}"
        assert not s.inflight, f"binds left in flight: {sorted(s.inflight)}"
        assert not s.problems, f"problems reported once every event arrived: {s.problems}"
        fresh = recount(w.nodes, w.gpunodes, w.pods.values(), s.ledger)
        ours = {h.pod: (h.node, h.slices) for h in s.ledger.holdings()}
        theirs = {h.pod: (h.node, h.slices) for h in fresh.holdings()}
        assert ours == theirs, f"ledger {sorted(ours)} != recount from the API objects {sorted(theirs)}"


_HOLDINGS: dict[tuple[str, str, str, bool, str], Holding | None] = {}
_NODE_INFOS: dict[tuple[str, str, str], NodeInfo] = {}


def holding_of(p: Mapping[str, Any]) -> Holding | None:
    """`objects.holding_from_pod` with the signing key, remembered (the checks read every pod at every step)."""
    text = objects.pod_assignment_text(p)
    if text is None:
        return None
    key = (objects.pod_uid(p), text, objects.pod_key(p), objects.pod_is_terminal(p), str(objects.pod_qos(p)))
    if key not in _HOLDINGS:
        if len(_HOLDINGS) > 50_000:
            _HOLDINGS.clear()
        _HOLDINGS[key] = objects.holding_from_pod(p, KEY)
    return _HOLDINGS[key]


def node_info_of(obj: Mapping[str, Any]) -> NodeInfo:
    """`objects.node_info_from_gpunode`, remembered by the object's content."""
    key = (obj["metadata"]["name"], repr(obj.get("spec")), repr(obj.get("status")))
    if key not in _NODE_INFOS:
        if len(_NODE_INFOS) > 50_000:
            _NODE_INFOS.clear()
        _NODE_INFOS[key] = objects.node_info_from_gpunode(obj)
    return _NODE_INFOS[key]


_INVENTORIES: dict[tuple[int, int], tuple[Any, Any, frozenset[tuple[Any, ...]], frozenset[str]]] = {}


def inventory_of(obj: Mapping[str, Any]) -> tuple[frozenset[tuple[Any, ...]], frozenset[str]]:
    """A cached GPUNode's GPUs as `GPUInfo` field tuples, and its disabled GPUs that it lists.

    Remembered by the identity of its `spec` and `status` (kept alive with the entry, so an id is never reused):
    cached objects are copies the world handed out and nobody writes to."""
    spec, status = obj.get("spec"), obj.get("status")
    key = (id(spec), id(status))
    hit = _INVENTORIES.get(key)
    if hit is None or hit[0] is not spec or hit[1] is not status:
        info = node_info_of(obj)
        gpus = frozenset((g.uuid, g.index, g.model, g.memory_mib, g.numa, g.healthy) for g in info.gpus)
        if len(_INVENTORIES) > 50_000:
            _INVENTORIES.clear()
        hit = _INVENTORIES[key] = (spec, status, gpus, info.disabled & {g.uuid for g in info.gpus})
    return hit[2], hit[3]


def clone(obj: Any) -> Any:
    """A deep copy of JSON-shaped data (dicts, lists, scalars), as the API server hands out: about twice as fast
    as `copy.deepcopy`, which every emitted event and every read goes through."""
    if isinstance(obj, dict):
        return {k: clone(v) if isinstance(v, (dict, list)) else v for k, v in obj.items()}
    if isinstance(obj, list):
        return [clone(v) if isinstance(v, (dict, list)) else v for v in obj]
    return obj


#: one metrics registry for every schedule: the service only writes to it, and a fresh one per schedule costs
#: more than a short schedule's steps
_METRICS = Metrics()


def check_identity_rule(world: World, wait_s: float) -> None:
    """The rule of gpupool.identity, on the API objects: no two bound pods of one node whose devices the kubelet
    has not taken yet, both bound less than the identity wait ago, share a slot count."""
    if world.identity_checked == (world.pod_writes, world.now):
        return  # the pods and the clock are as at the last check
    world.identity_checked = (world.pod_writes, world.now)
    seen: dict[tuple[str, int], str] = {}
    for p in sorted(world.pods.values(), key=objects.pod_key):
        node = p["spec"].get("nodeName")
        if not node or objects.pod_is_terminal(p):
            continue
        h = holding_of(p)
        if h is None or identity.served(p, h.slices):
            continue
        at = _bound_at(objects.pod_assignment_text(p) or "")
        if world.now - at > wait_s:
            continue  # overdue: reported, and no longer holding others back
        for count in identity.slot_counts(h.slices):
            other = seen.setdefault((node, count), p["metadata"]["name"])
            assert other == p["metadata"]["name"], (
                f"identity rule: pods {other} and {p['metadata']['name']} are both bound to {node} with slot count "
                f"{count}, neither served nor overdue"
            )


_BOUND_AT: dict[str, float] = {}


def _bound_at(text: str) -> float:
    """`identity.bound_at` of an assignment's `at`, remembered by the annotation's text."""
    if text not in _BOUND_AT:
        if len(_BOUND_AT) > 50_000:
            _BOUND_AT.clear()
        _BOUND_AT[text] = identity.bound_at(assignment_format.parse(text).at)
    return _BOUND_AT[text]


def new_service(world: World, identity_wait: float = 0.0) -> PoolService:
    pool = build_pool(PoolConfig(policies=("bestfit",), default_policy="bestfit"))
    service = PoolService(pool.ledger, pool.placer, KEY, world, _METRICS)
    # The identity rule runs on the world's fake clock (replayable), with the schedule's wait (0: off); a bind it
    # holds back is refused at once (never a real-time wait on the scheduler's one thread).
    service.identity_wait_seconds = identity_wait
    service.identity_bind_wait_seconds = 0.0
    service.clock = lambda: world.now
    return service


def placeable(ledger: Ledger, h: Holding) -> bool:
    return ledger.has_node(h.node) and all(ledger.has_gpu(sl.gpu) for sl in h.slices)


def remains(ledger: Ledger, h: Holding) -> Holding | None:
    """The part of a signed holding on GPUs in the pool: a pod whose node or one of whose GPUs left still runs
    on the others, so the ledger must keep counting it."""
    rest = tuple(sl for sl in h.slices if ledger.has_gpu(sl.gpu))
    return replace(h, slices=rest) if rest else None


def recount(nodes: Iterable[str], gpunodes: Mapping[str, Mapping[str, Any]], pods: Iterable[Mapping[str, Any]],
            like: Ledger) -> Ledger:  # fmt: skip
    """A fresh ledger from API objects: Nodes with GPUNodes, and the live pods' signed assignments that are in
    the pool; raises AssertionError where two of them do not fit together."""
    infos = {name: node_info_of(gpunodes[name]) for name in set(nodes) & set(gpunodes)}
    return recount_infos(infos, pods, like)


def recount_infos(infos: Mapping[str, NodeInfo], pods: Iterable[Mapping[str, Any]], like: Ledger) -> Ledger:
    ledger = Ledger(slots_per_gpu=like.slots_per_gpu, remote_slots=like.remote_slots,
                    overcommit_compute_percent=like.overcommit_compute_percent,
                    overcommit_memory_percent=like.overcommit_memory_percent)  # fmt: skip
    for name in sorted(infos):
        ledger.upsert_node(infos[name])
    for p in sorted(pods, key=objects.pod_key):
        h = holding_of(p)
        if h is None or not placeable(ledger, h):
            continue
        try:
            ledger.hold(h)
        except OverAllocation as exc:
            raise AssertionError(f"API objects double-book: pod {objects.pod_key(p)}: {exc}") from None
    return ledger


def check_no_double_booking(world: World) -> None:
    """The signed assignments of all live pods fit together on every GPU ever published (slots included)."""
    if world.checked_writes == world.pod_writes:
        return
    world.checked_writes = world.pod_writes
    if world.catalog_infos is None or world.catalog_infos[0] is not world.catalog:
        every_gpu = {}
        for name, gpus in world.catalog.items():
            obj = gpunode(name, gpus=0)
            obj["status"]["gpus"] = gpus
            every_gpu[name] = objects.node_info_from_gpunode(obj)
        world.catalog_infos = (world.catalog, every_gpu)
    recount_infos(world.catalog_infos[1], world.pods.values(), _PLAIN)


_PLAIN = Ledger()


def run_seed(seed: int, steps: int) -> None:
    Schedule(seed).run(steps)


def _label(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    uid = meta.get("uid")
    return f"{meta.get('name')}" + (f" ({uid}, node {(obj.get('spec') or {}).get('nodeName') or '-'})" if uid else "")


def _request_text(p: Mapping[str, Any]) -> str:
    limits = p["spec"]["containers"][0]["resources"]["limits"]
    annotations = (p["metadata"].get("annotations") or {}).values()
    return " ".join(f"{k.split('/')[1]}={v}" for k, v in limits.items()) + "".join(f" {a}" for a in annotations)


def _holding_text(h: Holding | None) -> str:
    if h is None:
        return "nothing"
    return f"{h.node}: " + ", ".join(f"{sl.gpu} {sl.compute}%/{sl.memory_mib}MiB {sl.slot}" for sl in h.slices)
