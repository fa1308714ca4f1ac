"""The signed assignment annotation: round trip, tampering, forgery, malformed input."""

from __future__ import annotations

import json

import pytest

from gpupool import assignment
from gpupool.assignment import Assignment, SliceRecord
from gpupool.errors import AssignmentError

KEY = b"0123456789abcdef"


def sample() -> Assignment:
    return Assignment(
        pod="uid-1",
        node="n1",
        slices=(SliceRecord(0, "GPU-a", "n1", 30, 4096, "gpu0-0"), SliceRecord(1, "GPU-b", "n2", 50, 10, "remote-0"),
                SliceRecord(0, "GPU-a", "n1", 5, 5, "gpu0-1", init=True)),
        at="2026-11-21T10:00:00Z",
    )


def test_round_trip_and_version_first() -> None:
    text = sample().signed(KEY).to_annotation()
    assert text.startswith('{"v":1,')
    back = assignment.verify(text, KEY)
    assert back == sample().signed(KEY)
    assert back.slots == ("gpu0-0", "remote-0", "gpu0-1")
    assert back.slices_of(0) == (sample().slices[0],)
    assert back.slices_of(0, init=True) == (sample().slices[2],)
    assert back.slices[1].remote_for("n1")


def test_unsigned_is_refused_and_cannot_be_serialised() -> None:
    with pytest.raises(AssignmentError):
        sample().to_annotation()
    unsigned = json.dumps(sample().payload())
    with pytest.raises(AssignmentError, match="unsigned"):
        assignment.verify(unsigned, KEY)


@pytest.mark.parametrize("field", ["compute", "gpu", "node", "slot"])
def test_any_edit_breaks_the_signature(field: str) -> None:
    data = json.loads(sample().signed(KEY).to_annotation())
    data["slices"][0][field] = 99 if field == "compute" else "GPU-forged"
    with pytest.raises(AssignmentError, match="wrong signature"):
        assignment.verify(json.dumps(data), KEY)


def test_another_key_is_refused() -> None:
    text = sample().signed(b"another key").to_annotation()
    with pytest.raises(AssignmentError, match="wrong signature"):
        assignment.verify(text, KEY)


def test_signature_ignores_key_order() -> None:
    data = json.loads(sample().signed(KEY).to_annotation())
    shuffled = json.dumps(dict(reversed(list(data.items()))))
    assert assignment.verify(shuffled, KEY).pod == "uid-1"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("not json", "not JSON"),
        ("[]", "JSON object"),
        ('{"v":2}', "unsupported assignment version"),
        ('{"v":1,"slices":[]}', "non-empty list"),
        ('{"v":1,"slices":[{"c":0}],"pod":"p","node":"n","at":"t"}', "missing field"),
        ('{"v":1,"slices":[{"c":0,"gpu":"g","node":"n","compute":0,"memory":1,"slot":"s"}],"pod":"p","node":"n",'
         '"at":"t"}', "compute must be 1..100"),
        ('{"v":1,"slices":[{"c":"0","gpu":"g","node":"n","compute":1,"memory":1,"slot":"s"}],"pod":"p","node":"n",'
         '"at":"t"}', "must be an integer"),
    ],
)
def test_malformed(text: str, needle: str) -> None:
    with pytest.raises(AssignmentError, match=needle):
        assignment.parse(text)


def test_empty_key_is_an_error() -> None:
    with pytest.raises(AssignmentError, match="signing key is empty"):
        sample().signed(b"")


def test_signing_key_is_read_stripped_and_missing_or_empty_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gpupool.signing_key import read_signing_key

    (tmp_path / "key").write_bytes(b"  secret\n")
    assert read_signing_key(tmp_path / "key") == b"secret"
    (tmp_path / "empty").write_bytes(b"\n")
    with pytest.raises(AssignmentError, match="is empty; mount the gpupool signing Secret"):
        read_signing_key(tmp_path / "empty")
    with pytest.raises(AssignmentError, match="cannot read the signing key"):
        read_signing_key(tmp_path / "absent")


def _signed_dict() -> dict:
    return json.loads(sample().signed(KEY).to_annotation())


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (json.dumps({**_signed_dict(), "sig": "é" * 64}), "wrong signature"),  # compare_digest: TypeError
        (json.dumps({**_signed_dict(), "sig": "ａ" * 64}), "wrong signature"),
        ("[" * 100_000 + "]" * 100_000, "not JSON"),  # RecursionError
        ('{"v":1,"slices":' + "[" * 100_000 + "]" * 100_000 + "}", "not JSON"),
        (json.dumps({**_signed_dict(), "sig": {"x": 1}}), "sig must be a string"),
        (json.dumps({**_signed_dict(), "v": True}), "version"),
        (json.dumps({**_signed_dict(), "v": 1.0}), "version"),
        (json.dumps({**_signed_dict(), "slices": [{**_signed_dict()["slices"][0], "init": "yes"}]}), "init"),
        (json.dumps({**_signed_dict(), "slices": [{**_signed_dict()["slices"][0], "c": "0"}]}), "integer"),
        (json.dumps({**_signed_dict(), "pod": 7}), "non-empty string"),
        (5, "must be a string"),
        (None, "must be a string"),
        (b"{}", "must be a string"),
        ("x" * 300_000, "characters long"),
    ],
)
def test_every_unreadable_annotation_is_an_assignment_error(text: object, said: str) -> None:
    """Issue 12 #4: a non-ASCII sig raised TypeError, deep nesting RecursionError; both crashed the watcher."""
    with pytest.raises(AssignmentError, match=said):
        assignment.verify(text, KEY)  # type: ignore[arg-type]


# --- key ids and rotation (issue 11 "Key rotation") -----------------------------------------------

OLD, NEW = b"old-key-0123456789", b"new-key-0123456789"


def test_keyset_signs_with_its_id_and_verifies_by_id() -> None:
    keys = assignment.KeySet.of({"k1": OLD, "k2": NEW}, signing="k2")
    signed = sample().signed(keys)
    assert signed.kid == "k2" and json.loads(signed.to_annotation())["kid"] == "k2"
    assert assignment.verify(signed.to_annotation(), keys) == signed
    assert assignment.verify(signed.to_annotation(), assignment.KeySet.of({"k2": NEW}, "k2")) == signed
    # the kid is signed: pointing it at another key breaks the signature
    data = json.loads(signed.to_annotation())
    data["kid"] = "k1"
    with pytest.raises(AssignmentError, match="wrong signature"):
        assignment.verify(json.dumps(data), keys)


def test_unknown_key_id_is_refused_naming_it() -> None:
    signed = sample().signed(assignment.KeySet.of({"k3": NEW}, "k3"))
    with pytest.raises(AssignmentError, match=r"key id 'k3', which is not among the verification keys \(k1, k2\)"):
        assignment.verify(signed.to_annotation(), assignment.KeySet.of({"k1": OLD, "k2": NEW}, "k1"))


def test_assignments_without_kid_verify_against_every_verification_key() -> None:
    """Today's format (no kid) stays valid through a rotation: it is checked with each key."""
    old_format = sample().signed(OLD)
    assert "kid" not in json.loads(old_format.to_annotation())
    rotated = assignment.KeySet.of({assignment.LEGACY_KID: OLD, "k2": NEW}, signing="k2")
    assert assignment.verify(old_format.to_annotation(), rotated).slices == old_format.slices
    with pytest.raises(AssignmentError, match="wrong signature"):
        assignment.verify(old_format.to_annotation(), assignment.KeySet.of({"k2": NEW}, "k2"))


def test_legacy_key_signs_exactly_as_before_key_ids() -> None:
    """The single-key layout writes no kid, so components of the previous release verify it byte for byte."""
    assert sample().signed(assignment.KeySet.single(OLD)).to_annotation() == sample().signed(OLD).to_annotation()


def test_rotation_add_switch_retire_keeps_every_assignment_verifiable_until_retired() -> None:
    before = assignment.KeySet.single(OLD)
    a = sample().signed(before).to_annotation()
    added = assignment.KeySet.of({assignment.LEGACY_KID: OLD, "k2": NEW}, signing=assignment.LEGACY_KID)
    switched = assignment.KeySet.of({assignment.LEGACY_KID: OLD, "k2": NEW}, signing="k2")
    b = sample().signed(switched).to_annotation()
    for keys in (added, switched):
        assert assignment.verify(a, keys) and assignment.verify(b, keys)
    assert assignment.verify(b, added)  # a component still on step 1 verifies what step 2 signs
    assert assignment.key_id_of(assignment.parse(a), switched) == assignment.LEGACY_KID
    assert assignment.key_id_of(assignment.parse(b), switched) == "k2"


@pytest.mark.parametrize(
    ("keys", "signing", "needle"),
    [({}, "k1", "no signing key"), ({"k1": OLD}, "k2", "signing key id 'k2' is not among"),
     ({"bad id": OLD}, "bad id", "must match"), ({"k1": b""}, "k1", "is empty")],
)  # fmt: skip
def test_bad_keysets_are_refused(keys: dict[str, bytes], signing: str, needle: str) -> None:
    with pytest.raises(AssignmentError, match=needle):
        assignment.KeySet.of(keys, signing)
