"""The one home of the `gpupool.io/assignment` annotation: its format and its signature.

The format is DESIGN.md §4.2; init-container slices and the canonical JSON that is signed
are in docs/contracts.md. The extender signs; the other components verify
(`gpupool.objects.pod_assignment`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, replace
from typing import Any

from gpupool import timefmt
from gpupool.errors import AssignmentError

VERSION = 1


@dataclass(frozen=True, slots=True)
class SliceRecord:
    """One slice as recorded on the pod: which GPU serves which container, and the kubelet slot id."""

    container: int
    gpu: str
    node: str
    compute: int
    memory_mib: int
    slot: str
    init: bool = False

    def remote_for(self, pod_node: str) -> bool:
        return self.node != pod_node

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "c": self.container,
            "gpu": self.gpu,
            "node": self.node,
            "compute": self.compute,
            "memory": self.memory_mib,
            "slot": self.slot,
        }
        if self.init:
            out["init"] = True
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> SliceRecord:
        if not isinstance(data, dict):
            raise AssignmentError(f"{where}: a slice must be an object")
        try:
            record = cls(
                container=_int(data["c"], f"{where}.c"),
                gpu=_str(data["gpu"], f"{where}.gpu"),
                node=_str(data["node"], f"{where}.node"),
                compute=_int(data["compute"], f"{where}.compute"),
                memory_mib=_int(data["memory"], f"{where}.memory"),
                slot=_str(data["slot"], f"{where}.slot"),
                init=bool(data.get("init", False)),
            )
        except KeyError as exc:
            raise AssignmentError(f"{where}: missing field {exc.args[0]!r}") from None
        if not 1 <= record.compute <= 100 or record.memory_mib < 1 or record.container < 0:
            raise AssignmentError(f"{where}: compute must be 1..100, memory >= 1 and c >= 0")
        return record


@dataclass(frozen=True, slots=True)
class Assignment:
    """Who holds what: the signed record of a pod's slices, written on the pod at bind."""

    pod: str
    node: str
    slices: tuple[SliceRecord, ...]
    at: str
    sig: str = ""
    version: int = VERSION

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(s.slot for s in self.slices)

    def slices_of(self, container: int, init: bool = False) -> tuple[SliceRecord, ...]:
        return tuple(s for s in self.slices if s.container == container and s.init == init)

    def payload(self) -> dict[str, Any]:
        """Every field but the signature, in the documented order (version first)."""
        return {
            "v": self.version,
            "pod": self.pod,
            "node": self.node,
            "slices": [s.to_json() for s in self.slices],
            "at": self.at,
        }

    def bound_at(self) -> float:
        """`at` as seconds since the epoch (raises ValueError when it is no RFC 3339 time, `gpupool/timefmt.py`)."""
        stamp = timefmt.parse_time(self.at)
        if stamp is None:
            raise ValueError(f"assignment time {self.at!r} is not an RFC 3339 time")
        return stamp

    def canonical(self) -> bytes:
        return json.dumps(self.payload(), sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key: bytes) -> Assignment:
        return replace(self, sig=signature(self, key))

    def to_annotation(self) -> str:
        if not self.sig:
            raise AssignmentError("refusing to serialise an unsigned assignment")
        return json.dumps({**self.payload(), "sig": self.sig}, separators=(",", ":"))


def signature(assignment: Assignment, key: bytes) -> str:
    if not key:
        raise AssignmentError("the signing key is empty; mount the gpupool signing Secret")
    return hmac.new(key, assignment.canonical(), hashlib.sha256).hexdigest()


def parse(text: str) -> Assignment:
    """Decode an annotation value without checking its signature (use `verify` for trust)."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise AssignmentError(f"assignment is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AssignmentError("assignment must be a JSON object")
    version = data.get("v")
    if version != VERSION:
        raise AssignmentError(f"unsupported assignment version {version!r}; this gpupool reads v{VERSION}")
    slices = data.get("slices")
    if not isinstance(slices, list) or not slices:
        raise AssignmentError("assignment.slices must be a non-empty list")
    try:
        return Assignment(
            pod=_str(data["pod"], "assignment.pod"),
            node=_str(data["node"], "assignment.node"),
            slices=tuple(SliceRecord.from_json(s, f"assignment.slices[{i}]") for i, s in enumerate(slices)),
            at=_str(data["at"], "assignment.at"),
            sig=str(data.get("sig") or ""),
            version=VERSION,
        )
    except KeyError as exc:
        raise AssignmentError(f"assignment: missing field {exc.args[0]!r}") from None


def verify(text: str, key: bytes) -> Assignment:
    """Decode and authenticate an annotation value; raise `AssignmentError` saying what is wrong."""
    assignment = parse(text)
    if not assignment.sig:
        raise AssignmentError(f"assignment of pod {assignment.pod} is unsigned; only gpupool may write it")
    if not hmac.compare_digest(assignment.sig, signature(assignment, key)):
        raise AssignmentError(
            f"assignment of pod {assignment.pod} has a wrong signature (forged, edited, or signed with "
            "another key); it is refused"
        )
    return assignment


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AssignmentError(f"{where} must be an integer")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise AssignmentError(f"{where} must be a non-empty string")
    return value
