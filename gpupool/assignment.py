"""The one home of the `gpupool.io/assignment` annotation: its format and its signature.

The format is DESIGN.md §4.2; init-container slices, the canonical JSON that is signed and the
key id (`kid`, `KeySet`) are in docs/contracts.md. The extender signs; the other components verify
(`gpupool.objects.pod_assignment`). Reading the keys from the Secret is `gpupool.signing_key`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from gpupool import timefmt
from gpupool.errors import AssignmentError

VERSION = 1

#: id of the key of the single-key layout (the Secret's `key`); assignments it signs carry no `kid`,
#: exactly as before key ids existed, so components of earlier releases still verify them
LEGACY_KID = "default"
KID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


@dataclass(frozen=True, slots=True)
class KeySet:
    """The verification keys by id, one of which (`signing`) signs new assignments (docs/contracts.md)."""

    keys: tuple[tuple[str, bytes], ...]
    signing: str

    def __post_init__(self) -> None:
        if not self.keys:
            raise AssignmentError("no signing key; mount the gpupool signing Secret")
        for kid, key in self.keys:
            if not KID_PATTERN.fullmatch(kid):
                raise AssignmentError(f"key id {kid!r} must match {KID_PATTERN.pattern}")
            if not key:
                raise AssignmentError(f"key {kid!r} is empty")
        if self.signing not in self.kids:
            raise AssignmentError(
                f"the signing key id {self.signing!r} is not among the keys ({', '.join(self.kids)})"
            )

    @classmethod
    def of(cls, keys: dict[str, bytes], signing: str) -> KeySet:
        return cls(tuple(sorted(keys.items())), signing)

    @classmethod
    def single(cls, key: bytes) -> KeySet:
        """The single-key layout: `key` signs and verifies, under `LEGACY_KID`."""
        return cls(((LEGACY_KID, key),), LEGACY_KID)

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(kid for kid, _ in self.keys)

    def key(self, kid: str) -> bytes | None:
        return next((key for k, key in self.keys if k == kid), None)

    @property
    def signing_key(self) -> bytes:
        key = self.key(self.signing)
        assert key is not None  # checked in __post_init__
        return key

    @property
    def signing_kid(self) -> str:
        """The `kid` new assignments carry ('' for the legacy key: none)."""
        return "" if self.signing == LEGACY_KID else self.signing


@runtime_checkable
class KeySource(Protocol):
    """Keys that may change while a process runs (the mounted Secret, `gpupool.signing_key.KeyRing`)."""

    def current(self) -> KeySet: ...


#: what signs and verifies: one key (the single-key layout), a `KeySet`, or a `KeySource`
Keys = bytes | KeySet | KeySource


def keyset(keys: Keys) -> KeySet:
    if isinstance(keys, KeySet):
        return keys
    if isinstance(keys, bytes):
        if not keys:
            raise AssignmentError("the signing key is empty; mount the gpupool signing Secret")
        return KeySet.single(keys)
    return keys.current()


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
                init=_bool(data.get("init", False), f"{where}.init"),
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
    kid: str = ""  # id of the key that signed it; '' = the legacy key, or any verification key

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(s.slot for s in self.slices)

    def slices_of(self, container: int, init: bool = False) -> tuple[SliceRecord, ...]:
        return tuple(s for s in self.slices if s.container == container and s.init == init)

    def payload(self) -> dict[str, Any]:
        """Every field but the signature, in the documented order (version first); `kid` only when set."""
        out: dict[str, Any] = {
            "v": self.version,
            "pod": self.pod,
            "node": self.node,
            "slices": [s.to_json() for s in self.slices],
            "at": self.at,
        }
        if self.kid:
            out["kid"] = self.kid
        return out

    def bound_at(self) -> float:
        """`at` as seconds since the epoch (raises ValueError when it is no RFC 3339 time, `gpupool/timefmt.py`)."""
        stamp = timefmt.parse_time(self.at)
        if stamp is None:
            raise ValueError(f"assignment time {self.at!r} is not an RFC 3339 time")
        return stamp

    def canonical(self) -> bytes:
        return json.dumps(self.payload(), sort_keys=True, separators=(",", ":")).encode()

    def signed(self, keys: Keys) -> Assignment:
        """Signed with the signing key of `keys`, carrying its id (bytes: one key, no id)."""
        if isinstance(keys, bytes):
            return replace(self, sig=signature(replace(self, kid=""), keys), kid="")
        current = keyset(keys)
        record = replace(self, kid=current.signing_kid)
        return replace(record, sig=signature(record, current.signing_key))

    def to_annotation(self) -> str:
        if not self.sig:
            raise AssignmentError("refusing to serialise an unsigned assignment")
        return json.dumps({**self.payload(), "sig": self.sig}, separators=(",", ":"))


def signature(assignment: Assignment, key: bytes) -> str:
    if not key:
        raise AssignmentError("the signing key is empty; mount the gpupool signing Secret")
    return hmac.new(key, assignment.canonical(), hashlib.sha256).hexdigest()


#: longest annotation value read at all (the API server caps all annotations of an object at 256 KiB)
MAX_TEXT = 256 * 1024
_SIG = re.compile(r"[0-9a-f]{64}")


def parse(text: Any) -> Assignment:
    """Decode an annotation value without checking its signature (use `verify` for trust).

    Every way the value can be unreadable (not a string, not JSON, nested too deep, wrong types)
    raises `AssignmentError`: callers report the pod, they never see another exception.
    """
    try:
        return _parse(text)
    except AssignmentError:
        raise
    except Exception as exc:  # whatever else a hostile value provokes is still one named, per-pod problem
        raise AssignmentError(f"assignment is unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None


def _parse(text: Any) -> Assignment:
    if not isinstance(text, str):
        raise AssignmentError(f"assignment must be a string, got a {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise AssignmentError(f"assignment is {len(text)} characters long; gpupool writes far shorter ones")
    try:
        data = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise AssignmentError(f"assignment is not JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise AssignmentError("assignment must be a JSON object")
    version = data.get("v")
    if type(version) is not int or version != VERSION:
        raise AssignmentError(f"unsupported assignment version {version!r}; this gpupool reads v{VERSION}")
    slices = data.get("slices")
    if not isinstance(slices, list) or not slices:
        raise AssignmentError("assignment.slices must be a non-empty list")
    sig = data.get("sig", "")
    if not isinstance(sig, str):
        raise AssignmentError("assignment.sig must be a string")
    try:
        return Assignment(
            pod=_str(data["pod"], "assignment.pod"),
            node=_str(data["node"], "assignment.node"),
            slices=tuple(SliceRecord.from_json(s, f"assignment.slices[{i}]") for i, s in enumerate(slices)),
            at=_str(data["at"], "assignment.at"),
            sig=sig,
            version=VERSION,
            kid=_kid(data.get("kid")),
        )
    except KeyError as exc:
        raise AssignmentError(f"assignment: missing field {exc.args[0]!r}") from None


def verify(text: Any, keys: Keys) -> Assignment:
    """Decode and authenticate an annotation value; raise `AssignmentError` saying what is wrong.

    An assignment with a `kid` is checked with that verification key only (an unknown id is
    refused, naming it); one without (signed before key ids, or by the legacy key) with each.
    """
    assignment = parse(text)
    current = keyset(keys)
    if not assignment.sig:
        raise AssignmentError(f"assignment of pod {assignment.pod} is unsigned; only gpupool may write it")
    if assignment.kid:
        key = current.key(assignment.kid)
        if key is None:
            raise AssignmentError(
                f"assignment of pod {assignment.pod} is signed with key id {assignment.kid!r}, which is not "
                f"among the verification keys ({', '.join(current.kids)}); add it to the signing Secret"
            )
        candidates: tuple[bytes, ...] = (key,)
    else:
        candidates = tuple(key for _, key in current.keys)
    # the hex digest form is checked first: compare_digest raises TypeError on non-ASCII text
    digest_ok = _SIG.fullmatch(assignment.sig) is not None
    if not digest_ok or not any(hmac.compare_digest(assignment.sig, signature(assignment, key)) for key in candidates):
        raise AssignmentError(
            f"assignment of pod {assignment.pod} has a wrong signature (forged, edited, or signed with "
            "another key); it is refused"
        )
    return assignment


def key_id_of(assignment: Assignment, keys: Keys) -> str | None:
    """Which verification key signed `assignment` (None: none of them), e.g. to tell when a key may retire."""
    current = keyset(keys)
    kids = (assignment.kid,) if assignment.kid else current.kids
    for kid in kids:
        key = current.key(kid)
        if key is not None and hmac.compare_digest(assignment.sig, signature(assignment, key)):
            return kid
    return None


def _kid(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not KID_PATTERN.fullmatch(value):
        raise AssignmentError(f"assignment.kid must be a key id matching {KID_PATTERN.pattern}, got {value!r}")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AssignmentError(f"{where} must be an integer")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise AssignmentError(f"{where} must be true or false")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise AssignmentError(f"{where} must be a non-empty string")
    return value
