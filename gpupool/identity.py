"""Which pod a kubelet device request is for: container keys, the `gpupool.io/allocated` record, and the rule
that keeps that question unambiguous (docs/contracts.md, "identity").

The kubelet's device-plugin calls (GetPreferredAllocation, Allocate) carry a number of devices, never a pod.
The node agent can only tell pods apart by their slot count: so gpupool never leaves two bound pods whose
devices the kubelet has not taken yet ("unserved") with a container of the same slot count on one node.
A pod is unserved on its node until the node agent recorded every container with slices in
`gpupool.io/allocated`, or the pod reports a phase or a container state that only follows the kubelet's
admission (the kubelet allocates devices before it starts any container), or it was bound more than the
identity wait ago (then it is reported and stops holding others back). Different slot counts never wait
on each other. Everything here is pure: the extender tracks the unserved pods and asks `blocker`.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gpupool import resources, timefmt
from gpupool.assignment import SliceRecord
from gpupool.request import PodRequest

#: pod phases that follow the kubelet's admission (and so its device allocation)
ADMITTED_PHASES = frozenset({"Running", "Succeeded", "Failed"})


# --- container keys and the `gpupool.io/allocated` record ----------------------------------------------------


def container_key(container: int, init: bool) -> str:
    """`"<c>"` for `spec.containers[c]`, `"init:<c>"` for `spec.initContainers[c]`."""
    return f"init:{container}" if init else str(container)


def key_order(key: str) -> tuple[int, int]:
    """Init containers first, then app containers, each by index: the kubelet's allocation order."""
    if key.startswith("init:"):
        return 0, int(key[5:])
    return 1, int(key)


def format_allocated(keys: Iterable[str]) -> str:
    """The `gpupool.io/allocated` value for these served container keys (JSON list, sorted by `key_order`)."""
    return json.dumps(sorted(set(keys), key=key_order), separators=(",", ":"))


def parse_allocated(text: str | None) -> frozenset[str]:
    """Served container keys from a `gpupool.io/allocated` value (absent = none); ValueError when unreadable."""
    if not text:
        return frozenset()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, list) and all(isinstance(k, str) for k in data):
        return frozenset(data)
    raise ValueError(f"{resources.ALLOCATED} must be a JSON list of container keys, got {text!r}")


def container_slices(slices: Iterable[SliceRecord]) -> dict[str, tuple[SliceRecord, ...]]:
    """An assignment's slices grouped by container key, in `key_order`."""
    grouped: dict[str, list[SliceRecord]] = {}
    for s in slices:
        grouped.setdefault(container_key(s.container, s.init), []).append(s)
    return {k: tuple(grouped[k]) for k in sorted(grouped, key=key_order)}


def slot_counts(slices: Iterable[SliceRecord]) -> frozenset[int]:
    """The slot counts (devices the kubelet asks for) of the containers holding these slices."""
    return frozenset(len(v) for v in container_slices(slices).values())


def request_slot_counts(request: PodRequest) -> frozenset[int]:
    """The slot counts of a pod's containers (init containers too) that ask for slices."""
    return frozenset(c.count for c in request.containers if c.count > 0)


# --- served or not -----------------------------------------------------------------------------------------


def kubelet_admitted(pod: Mapping[str, Any]) -> bool:
    """The pod reports what only follows the kubelet's admission: phase Running/Succeeded/Failed, or a
    container (init or app) started, running or terminated."""
    status = pod.get("status") or {}
    if status.get("phase") in ADMITTED_PHASES:
        return True
    for field in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(field) or []:
            state = cs.get("state") or {}
            if cs.get("started") or "running" in state or "terminated" in state:
                return True
    return False


def served(pod: Mapping[str, Any], slices: Iterable[SliceRecord]) -> bool:
    """Whether the kubelet has taken the devices of every container of `pod` that holds `slices`."""
    if kubelet_admitted(pod):
        return True
    text = ((pod.get("metadata") or {}).get("annotations") or {}).get(resources.ALLOCATED)
    try:
        done = parse_allocated(text)
    except ValueError:
        return False
    return set(container_slices(slices)) <= done


# --- the rule ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unserved:
    """A pod bound to a node whose devices the kubelet has not taken yet."""

    pod: str  # namespace/name, for messages
    slot_counts: frozenset[int]
    bound_at: float  # seconds since the epoch


def bound_at(at: str) -> float:
    """When an assignment was written (its `at`), in seconds since the epoch; unreadable = long ago."""
    seconds = timefmt.parse_time(at)
    return seconds if seconds is not None else 0.0


def overdue(pod: Unserved, now: float, wait_s: float) -> bool:
    """Bound more than `wait_s` ago and still unserved: reported, and no longer holding others back."""
    return now - pod.bound_at > wait_s


def blocker(
    unserved: Iterable[Unserved], counts: Collection[int], now: float, wait_s: float
) -> tuple[Unserved, int] | None:
    """The unserved pod of a node that a pod with containers of slot `counts` would be ambiguous with, and
    the shared slot count; None when it may bind there. `wait_s` <= 0 turns the rule off."""
    if wait_s <= 0 or not counts:
        return None
    wanted = set(counts)
    for pod in sorted(unserved, key=lambda u: (u.bound_at, u.pod)):
        shared = wanted & pod.slot_counts
        if shared and not overdue(pod, now, wait_s):
            return pod, min(shared)
    return None


class Holdbacks:
    """The nodes each slot count waits on: where an unserved pod with a container of that count is not overdue.

    `blocker` answers one node; a burst's filter asks for hundreds of passing nodes while hundreds of nodes have
    a pod the kubelet has not taken yet (a third of the extender's time at 1,000 nodes, issue 16). This keeps,
    per slot count, the nodes of such pods, so `nodes` is a union of a few sets; `expire` takes out the pods
    that turned overdue (in the order they do: a heap of their bind times), for the caller to report once.
    Same answer as `blocker(...) is not None` per node at the same `now`.
    """

    def __init__(self) -> None:
        self._by_count: dict[int, dict[str, int]] = {}  # slot count -> node -> its indexed pods with that count
        self._indexed: dict[str, tuple[str, Unserved]] = {}  # uid -> (node, pod)
        self._heap: list[tuple[float, str]] = []  # (bound_at, uid), stale entries skipped

    def __len__(self) -> int:
        return len(self._indexed)

    def add(self, uid: str, node: str, pod: Unserved) -> None:
        self.remove(uid)
        self._indexed[uid] = (node, pod)
        for count in pod.slot_counts:
            on = self._by_count.setdefault(count, {})
            on[node] = on.get(node, 0) + 1
        heapq.heappush(self._heap, (pod.bound_at, uid))
        if len(self._heap) > 4 * len(self._indexed) + 64:  # removed pods' entries: rebuild from what is indexed
            self._heap = [(p.bound_at, u) for u, (_, p) in self._indexed.items()]
            heapq.heapify(self._heap)

    def remove(self, uid: str) -> None:
        found = self._indexed.pop(uid, None)
        if found is None:
            return
        node, pod = found
        for count in pod.slot_counts:
            on = self._by_count[count]
            if on[node] > 1:
                on[node] -= 1
            else:
                del on[node]
                if not on:
                    del self._by_count[count]

    def expire(self, now: float, wait_s: float) -> list[tuple[str, str, Unserved]]:
        """Take out the pods `overdue` at `now`; (uid, node, pod) of each, oldest first."""
        out: list[tuple[str, str, Unserved]] = []
        heap = self._heap
        while heap and now - heap[0][0] > wait_s:
            at, uid = heapq.heappop(heap)
            found = self._indexed.get(uid)
            if found is not None and found[1].bound_at == at:
                self.remove(uid)
                out.append((uid, found[0], found[1]))
        return out

    def nodes(self, counts: Collection[int]) -> set[str]:
        """The nodes where a pod with containers of slot `counts` must wait (call `expire` first)."""
        out: set[str] = set()
        for count in counts:
            on = self._by_count.get(count)
            if on:
                out.update(on)
        return out


def wait_reason(pod: Unserved, count: int) -> str:
    """Why a node is refused while `pod` is unserved there (filter and bind say the same)."""
    return (
        f"waiting for the kubelet to take pod {pod.pod}'s devices: same slot count {count}; gpupool serves one "
        "such pod per node at a time so each container gets its own slices"
    )


# --- steering a burst apart (a hint, never a refusal) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expected:
    """A pod that a prioritize answer pointed to a node, whose bind has not reached the extender yet."""

    slot_counts: frozenset[int]
    until: float  # on the caller's clock; the mark is ignored after


def steer(
    answer: Iterable[tuple[str, int]], expected: Mapping[str, Mapping[str, Expected]], counts: Collection[int],
    now: float, lowest: int, blocked: Collection[str] = (),
) -> tuple[list[tuple[str, int]], str | None]:  # fmt: skip
    """Prioritize scores for a pod with containers of slot `counts`, and the node it is pointed to.

    kube-scheduler schedules the next pod while the previous one's bind is on its way, so filter cannot yet
    refuse the node that pod is about to take, and a packing policy ranks that node first again (and higher
    once that bind committed, between this pod's filter and its prioritize): the next pod's bind would wait
    for the kubelet there. So a node `blocked` by the rule now, or `expected` (node -> pod -> mark) to take a
    pod sharing a slot count, scores `lowest` (never refused here: the mark is a guess, and filter refuses
    what the rule refuses), and of the nodes sharing the top score the first one keeps it while the others
    lose one point, so that the pod is pointed to one node (returned, to be marked by the caller) and the next
    pods to others. None when no node scores above `lowest`. (`steer_marked` and `steer_scores`: the same over
    arrays, for answers of thousands of nodes.)
    """
    pairs = list(answer)
    marked = steer_marked(expected, counts, now, blocked)
    scores = np.array([score for _, score in pairs], dtype=np.int64)
    out, chosen = steer_scores(scores, np.array([node in marked for node, _ in pairs], dtype=bool), lowest, counts)
    nodes = [node for node, _ in pairs]
    return list(zip(nodes, out.tolist(), strict=True)), None if chosen is None else nodes[chosen]


def steer_marked(
    expected: Mapping[str, Mapping[str, Expected]], counts: Collection[int], now: float, blocked: Collection[str] = ()
) -> set[str]:
    """The nodes `steer` scores `lowest` for a pod with containers of slot `counts`: `blocked`, or `expected` to
    take a pod sharing a slot count (a mark not expired at `now`)."""
    wanted = set(counts)
    out = set(blocked)
    for node, marks in expected.items():
        if any(e.until > now and wanted & e.slot_counts for e in marks.values()):
            out.add(node)
    return out


def steer_scores(
    scores: npt.NDArray[np.int64], marked: npt.NDArray[np.bool_], lowest: int, counts: Collection[int]
) -> tuple[npt.NDArray[np.int64], int | None]:
    """`steer` over arrays: `scores` of the nodes of an answer, `marked` where a node is in `steer_marked`; the new
    scores (a new array) and the position of the node the pod is pointed to (None: none)."""
    out = np.where(marked & (scores > lowest), lowest, scores)
    top = int(out.max(initial=lowest))
    if top <= lowest or not counts:
        return out, None
    ties = out == top
    chosen = int(np.argmax(ties))  # the first node of the top score keeps it
    ties[chosen] = False
    out[ties] -= 1
    return out, chosen
