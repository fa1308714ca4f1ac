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
