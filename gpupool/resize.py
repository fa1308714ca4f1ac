"""Resizing a running pod's slices: the request, its status and usage annotations, and the decision.

The one home of the three resize annotations (docs/contracts.md, docs/runtime.md "Resize"):

- `gpupool.io/resize` (the user's, validated at admission): `{"seq":N,"container":"<name>","compute":P,"memory":M}`
  asks that every slice of that app container hold P % and M MiB (either may be left out: unchanged);
- `gpupool.io/resize-status` (gpupool's): `{"history":[{"seq","state","message","at","container","compute",
  "memory"}, ...]}`, the newest last, at most `HISTORY` entries; `Approved` (the controller reserved the quota
  of a growth) is replaced by the final `Applied` or `Refused` of the same `seq`;
- `gpupool.io/usage` (the node agent's): `{"seq":N,"at":"…","memoryUsedMiB":{"<container key>":{"<gpu>":MiB}}}`,
  or `"unknown":"<why>"` instead of the figures, answering request N.

Who decides what (all pure functions here, called by the adapters): the controller checks the quota of a growth
(`growth`), the node agent reports memory in use, the extender plans the new slices under its lock
(`hold_envelope`) and re-issues the signed assignment (`resized`). No I/O here.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gpupool import identity, resources, timefmt
from gpupool.assignment import Assignment, SliceRecord
from gpupool.errors import FieldError, InvalidRequest, OverAllocation
from gpupool.ledger import Holding, Ledger
from gpupool.quota import Resources
from gpupool.request import WHOLE_GPU_COMPUTE, QoS

REQUEST = resources.RESIZE
STATUS = resources.RESIZE_STATUS
USAGE = resources.USAGE

#: outcomes kept in the status annotation (`gpupool explain` prints them)
HISTORY = 10
#: the largest memory a request may name (1 TiB per slice); admission also bounds it by the largest GPU
MAX_MEMORY_MIB = 1 << 20
MAX_SEQ = (1 << 53) - 1
MAX_TEXT = 4096


class State(enum.StrEnum):
    APPROVED = "Approved"  # the controller reserved the quota of a growth; the extender decides the rest
    APPLIED = "Applied"  # the signed assignment carries the new slices
    REFUSED = "Refused"


FINAL = (State.APPLIED, State.REFUSED)


@dataclass(frozen=True, slots=True)
class ResizeRequest:
    seq: int
    container: str
    compute: int | None  # percent per slice; None: unchanged
    memory_mib: int | None  # MiB per slice; None: unchanged

    def to_annotation(self) -> str:
        out: dict[str, Any] = {"seq": self.seq, "container": self.container}
        if self.compute is not None:
            out["compute"] = self.compute
        if self.memory_mib is not None:
            out["memory"] = self.memory_mib
        return json.dumps(out, separators=(",", ":"))


def _field(name: str = "") -> str:
    return f"metadata.annotations[{REQUEST}]" + (f".{name}" if name else "")


def parse_request(text: Any) -> ResizeRequest:
    """The `gpupool.io/resize` value; raises `InvalidRequest` naming the field and what to write."""
    example = '{"seq":1,"container":"train","compute":60,"memory":8192}'
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise InvalidRequest([FieldError(_field(), f"must be a short JSON object such as {example}")])
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidRequest([FieldError(_field(), f"is not JSON; write e.g. {example}")]) from None
    if not isinstance(data, dict):
        raise InvalidRequest([FieldError(_field(), f"must be a JSON object such as {example}")])
    errors: list[FieldError] = []
    unknown = sorted(set(data) - {"seq", "container", "compute", "memory"})
    if unknown:
        errors.append(FieldError(_field(unknown[0]), "unknown field; allowed are seq, container, compute, memory"))

    def whole(name: str, low: int, high: int, hint: str) -> int | None:
        value = data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            errors.append(FieldError(_field(name), f"{value!r} is out of range; write a whole number {hint}"))
            return None
        return value

    seq = whole("seq", 0, MAX_SEQ, f"from 0 to {MAX_SEQ}")
    if "seq" not in data:
        errors.append(FieldError(_field("seq"), "is missing; write a number larger than the last request's"))
    compute = whole("compute", 1, WHOLE_GPU_COMPUTE, f"from 1 to {WHOLE_GPU_COMPUTE} (percent of one GPU per slice)")
    memory = whole("memory", 1, MAX_MEMORY_MIB, f"from 1 to {MAX_MEMORY_MIB} (MiB per slice)")
    container = data.get("container")
    if not isinstance(container, str) or not container or len(container) > 253:
        errors.append(FieldError(_field("container"), "must name an app container of the pod"))
    if "compute" not in data and "memory" not in data:
        errors.append(FieldError(_field(), "asks for nothing; set compute, memory or both"))
    if errors:
        raise InvalidRequest(errors)
    assert seq is not None and isinstance(container, str)
    return ResizeRequest(seq, container, compute, memory)


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def request_of(pod: Mapping[str, Any]) -> ResizeRequest | None:
    """The pod's resize request (None: none); raises `InvalidRequest` when unreadable."""
    text = _annotations(pod).get(REQUEST)
    return None if text is None else parse_request(text)


def next_request(pod: Mapping[str, Any], container: str | None, compute: int | None,
                 memory_mib: int | None) -> ResizeRequest:  # fmt: skip
    """The request `gpupool resize` writes: `container` defaults to the pod's only app container with slices, and
    `seq` follows every request and outcome on the pod. Raises `InvalidRequest` naming the option to fix."""
    spec = pod.get("spec") or {}
    names = [str(c.get("name")) for c in spec.get("containers") or [] if isinstance(c, Mapping)]
    if container is None:
        try:
            parsed = resources.parse_pod(pod)
            with_slices = [names[c.index] for c in parsed.containers if not c.init]
        except InvalidRequest:
            with_slices = []
        if len(with_slices) != 1:
            raise InvalidRequest([FieldError("--container", "the pod has " + (
                f"{len(with_slices)} app containers with slices ({', '.join(with_slices)}); name one"
                if with_slices else "no app container with gpupool slices"))])  # fmt: skip
        container = with_slices[0]
    seqs = [o.seq for o in history_of(pod)]
    try:
        previous = request_of(pod)
    except InvalidRequest:
        previous = None
    if previous is not None:
        seqs.append(previous.seq)
    text = ResizeRequest(max(seqs, default=0) + 1, container, compute, memory_mib).to_annotation()
    try:
        return parse_request(text)
    except InvalidRequest as exc:  # name the command-line option, not the annotation field
        options = {_field("compute"): "--compute", _field("memory"): "--memory", _field("container"): "--container"}
        raise InvalidRequest(
            [FieldError(options.get(e.field, "--compute/--memory"), e.message) for e in exc.errors]
        ) from None


def describe(pod: Mapping[str, Any]) -> list[str]:
    """What `gpupool explain` prints of the pod's resizes: the pending request and the recorded outcomes."""
    lines: list[str] = []
    try:
        request = request_of(pod)
    except InvalidRequest as exc:
        return [f"resize request unreadable: {exc}"]
    history = history_of(pod)
    if request is not None and not any(o.seq == request.seq and o.state in FINAL for o in history):
        last = outcome_of(pod, request.seq)
        step = ("the extender applies it" if last is not None and last.state is State.APPROVED else
                "waiting for the controller (quota of a growth), the node agent (memory in use) or the extender")
        lines.append(f"resize #{request.seq} pending ({_asked(request)} for container {request.container!r}): {step}")
    if history:
        lines.append("resize history (newest last):")
        lines.extend(f"  #{o.seq} {o.state.value} at {o.at}: {o.message}" for o in history)
    return lines


def _asked(request: ResizeRequest) -> str:
    parts = ([f"{request.compute}%"] if request.compute is not None else []) + (
        [f"{request.memory_mib} MiB"] if request.memory_mib is not None else [])  # fmt: skip
    return " / ".join(parts)


# --- status -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    seq: int
    state: State
    message: str
    at: str
    container: str = ""
    compute: int | None = None
    memory_mib: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "state": self.state.value, "message": self.message, "at": self.at,
                "container": self.container, "compute": self.compute, "memory": self.memory_mib}  # fmt: skip


def history_of(pod: Mapping[str, Any]) -> tuple[Outcome, ...]:
    """The outcomes recorded on the pod, oldest first; an unreadable status reads as none."""
    text = _annotations(pod).get(STATUS)
    if not isinstance(text, str) or len(text) > 64 * 1024:
        return ()
    try:
        items = json.loads(text).get("history") or []
        return tuple(
            Outcome(int(i["seq"]), State(i["state"]), str(i.get("message") or ""), str(i.get("at") or ""),
                    str(i.get("container") or ""), _opt_int(i.get("compute")), _opt_int(i.get("memory")))
            for i in items
        )
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return ()


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def outcome_of(pod: Mapping[str, Any], seq: int) -> Outcome | None:
    """The latest outcome recorded for request `seq`."""
    return next((o for o in reversed(history_of(pod)) if o.seq == seq), None)


def status_annotation(pod: Mapping[str, Any], outcome: Outcome) -> str:
    """The status value with `outcome` recorded (replacing an `Approved` of the same seq), trimmed to `HISTORY`."""
    kept = [o for o in history_of(pod) if not (o.seq == outcome.seq and o.state is State.APPROVED)]
    kept = [*kept, outcome][-HISTORY:]
    return json.dumps({"history": [o.to_json() for o in kept]}, separators=(",", ":"))


def outcome(request: ResizeRequest, state: State, message: str, now: float) -> Outcome:
    return Outcome(request.seq, state, message, timefmt.format_time(now), request.container, request.compute,
                   request.memory_mib)  # fmt: skip


# --- usage (the node agent's report) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    seq: int
    at: str
    #: container key -> gpu uuid -> MiB in use (rounded up); None when the agent could not tell (`unknown`)
    memory_mib: Mapping[str, Mapping[str, int]] | None
    unknown: str = ""


def usage_annotation(seq: int, used: Mapping[str, Mapping[str, int]] | None, unknown: str, now: float) -> str:
    out: dict[str, Any] = {"seq": seq, "at": timefmt.format_time(now)}
    if used is None:
        out["unknown"] = unknown or "no usage report"
    else:
        out["memoryUsedMiB"] = {c: dict(sorted(g.items())) for c, g in sorted(used.items())}
    return json.dumps(out, separators=(",", ":"))


def usage_of(pod: Mapping[str, Any]) -> Usage | None:
    text = _annotations(pod).get(USAGE)
    if not isinstance(text, str) or len(text) > 64 * 1024:
        return None
    try:
        data = json.loads(text)
        seq, at = int(data["seq"]), str(data.get("at") or "")
        if "memoryUsedMiB" not in data:
            return Usage(seq, at, None, str(data.get("unknown") or "no usage report"))
        used = {str(c): {str(g): int(v) for g, v in gpus.items()} for c, gpus in data["memoryUsedMiB"].items()}
        return Usage(seq, at, used)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None


def mib_rounded_up(used_bytes: int) -> int:
    return -(-used_bytes // (1 << 20))


# --- the decision -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pending:
    """A request without a final outcome, read against the slices of the pod's current (verified) assignment."""

    request: ResizeRequest
    old: tuple[SliceRecord, ...]
    new: tuple[SliceRecord, ...]  # `old` with the request applied; empty when `problem` is set
    problem: str | None  # refused before any capacity is looked at (unknown container, not bound, ...)
    approved: bool  # the controller reserved the quota of its growth

    @property
    def growth(self) -> Resources:
        """What more the pod would be charged (each of compute and memory: what it grows, else 0)."""
        return growth(self.old, self.new) if self.new else Resources(0, 0)

    @property
    def shrinks_memory(self) -> bool:
        return bool(self.new) and any(n.memory_mib < o.memory_mib for o, n in zip(self.old, self.new, strict=True))

    @property
    def changed(self) -> list[tuple[SliceRecord, SliceRecord]]:
        return [(o, n) for o, n in zip(self.old, self.new, strict=True) if o != n] if self.new else []


def growth(old: tuple[SliceRecord, ...], new: tuple[SliceRecord, ...]) -> Resources:
    dc = sum(s.compute for s in new) - sum(s.compute for s in old)
    dm = sum(s.memory_mib for s in new) - sum(s.memory_mib for s in old)
    return Resources(max(0, dc), max(0, dm))


def container_index(pod: Mapping[str, Any], name: str) -> int | None:
    for i, c in enumerate((pod.get("spec") or {}).get("containers") or []):
        if isinstance(c, Mapping) and c.get("name") == name:
            return i
    return None


def resized(old: tuple[SliceRecord, ...], index: int, request: ResizeRequest) -> tuple[SliceRecord, ...]:
    """`old` with every slice of app container `index` at the requested compute and memory."""
    return tuple(
        replace(s, compute=request.compute if request.compute is not None else s.compute,
                memory_mib=request.memory_mib if request.memory_mib is not None else s.memory_mib)
        if s.container == index and not s.init else s
        for s in old
    )  # fmt: skip


def reissued(old: Assignment, p: Pending) -> Assignment:
    """The assignment to sign: `old` with the new slices (same node, slots and bind time)."""
    return replace(old, slices=p.new, sig="")


def pending(pod: Mapping[str, Any], slices: tuple[SliceRecord, ...] | None) -> Pending | None:
    """The pod's request still waiting for a final outcome (None: nothing to do).

    `slices` are those of the pod's verified assignment (None: it has none); a request that cannot be read is
    refused at admission, so here it is simply not pending.
    """
    try:
        request = request_of(pod)
    except InvalidRequest:
        return None
    if request is None:
        return None
    last = outcome_of(pod, request.seq)
    if last is not None and last.state in FINAL:
        return None
    finished = [o.seq for o in history_of(pod) if o.state in FINAL]
    if finished and max(finished) > request.seq:
        return None  # an older request written again: its turn has passed
    approved = last is not None and last.state is State.APPROVED

    def refused(why: str) -> Pending:
        return Pending(request, slices or (), (), why, approved)

    if slices is None:
        return refused("the pod holds no slices yet (not bound); resize a running pod, or change its resources")
    index = container_index(pod, request.container)
    if index is None:
        names = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or [] if isinstance(c, Mapping)]
        return refused(f"the pod has no app container {request.container!r} (it has {', '.join(names)})")
    if not any(s.container == index and not s.init for s in slices):
        return refused(f"container {request.container!r} holds no gpupool slices")
    return Pending(request, slices, resized(slices, index, request), None, approved)


def usage_problem(p: Pending, usage: Usage | None) -> tuple[str | None, str]:
    """(why the memory shrink is refused, a note for the outcome) given the agent's report for `p`."""
    if not p.shrinks_memory:
        return None, ""
    if usage is None or usage.seq != p.request.seq or usage.memory_mib is None:
        why = usage.unknown if usage is not None and usage.seq == p.request.seq else "no usage report"
        return None, (f"; memory in use unknown ({why}): the runtime refuses new allocations until the "
                      "container's use is below the new limit")  # fmt: skip
    unreported: list[str] = []
    for o, n in p.changed:
        if n.memory_mib >= o.memory_mib:
            continue
        key = identity.container_key(o.container, o.init)
        used = usage.memory_mib.get(key, {}).get(o.gpu)
        if used is None:  # e.g. a remote slice: the pod's node agent has no region for it
            unreported.append(o.gpu)
        elif used > n.memory_mib:
            why = (f"container {p.request.container!r} uses {used} MiB of GPU {o.gpu} (reported {usage.at}); "
                   f"{n.memory_mib} MiB is below that: free memory first or ask for at least {used} MiB")
            return why, ""
    if unreported:
        return None, (f"; memory in use on {', '.join(unreported)} unknown (not reported by the node agent): the "
                      "runtime refuses new allocations until the container's use is below the new limit")  # fmt: skip
    return None, ""


def reserved_growth(pod: Mapping[str, Any], slices: tuple[SliceRecord, ...] | None) -> Resources:
    """What the controller charges the pod beyond its assignment: an approved growth not yet applied."""
    p = pending(pod, slices)
    return p.growth if p is not None and p.approved and p.problem is None else Resources(0, 0)


def awaits_quota(pod: Mapping[str, Any], slices: tuple[SliceRecord, ...] | None) -> bool:
    """A pending growth the controller has not decided yet (it wakes its cycle for it)."""
    p = pending(pod, slices)
    return p is not None and p.problem is None and not p.approved and p.growth != Resources(0, 0)


def applied_message(p: Pending) -> str:
    if not p.changed:
        return f"container {p.request.container!r} already holds what was asked; nothing changed"
    return f"container {p.request.container!r}: " + ", ".join(
        f"{o.compute}% / {o.memory_mib} MiB -> {n.compute}% / {n.memory_mib} MiB on {n.gpu}" for o, n in p.changed
    )


def envelope(old: Holding, new_slices: tuple[SliceRecord, ...]) -> Holding:
    """Per slice the larger of the old and new compute and memory: what the ledger holds while the new
    assignment is being written, so that neither a lagging watch event nor a failed write frees room another
    pod could take."""
    slices = tuple(
        replace(o, compute=max(o.compute, n.compute), memory_mib=max(o.memory_mib, n.memory_mib))
        for o, n in zip(old.slices, new_slices, strict=True)
    )
    return replace(old, slices=slices)


def hold_envelope(ledger: Ledger, old: Holding, new_slices: tuple[SliceRecord, ...]) -> Holding:
    """Replace `old` in the ledger by its envelope with `new_slices` (the caller holds the ledger's lock).

    A shrink always fits (the envelope is `old`). A growth must fit the ledger's bounds and, for a guaranteed pod,
    the rule placement follows: a guaranteed slice only grows where the GPU's total stays physical. Raises
    `OverAllocation` saying which GPU lacks room; the ledger is then unchanged.
    """
    wanted = envelope(old, new_slices)
    if wanted == old:
        return old
    if ledger.holding(old.pod) != old:
        raise OverAllocation(f"pod {old.pod}: the ledger holds other slices than its assignment; try again")
    # per GPU: what the pod would hold there, and whether compute / memory grow there
    per_gpu: dict[str, tuple[int, int, bool, bool]] = {}
    for o, w in zip(old.slices, wanted.slices, strict=True):
        c, m, gc, gm = per_gpu.get(o.gpu, (0, 0, False, False))
        grows = (gc or w.compute > o.compute, gm or w.memory_mib > o.memory_mib)
        per_gpu[o.gpu] = (c + w.compute, m + w.memory_mib, *grows)
    ledger.release(old.pod)
    try:
        if old.qos is QoS.GUARANTEED:
            for uuid, (c, m, grows_c, grows_m) in per_gpu.items():
                gpu = ledger.gpu(uuid)
                if (grows_c and gpu.used_compute + c > WHOLE_GPU_COMPUTE) or (
                    grows_m and gpu.used_memory + m > gpu.memory_mib
                ):
                    raise OverAllocation(
                        f"GPU {uuid} on {gpu.node} has room for {WHOLE_GPU_COMPUTE - gpu.used_compute}% / "
                        f"{gpu.memory_mib - gpu.used_memory} MiB besides this pod; asked {c}% / {m} MiB"
                    )
        ledger.hold(wanted)
    except OverAllocation:
        ledger.hold(old)
        raise
    return wanted
