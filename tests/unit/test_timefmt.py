"""RFC 3339 times: one format out, every Kubernetes form in (gpupool/timefmt.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from gpupool import timefmt

NEW_YEAR = 1_735_689_600.0  # 2025-01-01T00:00:00Z


def test_format_whole_seconds_and_microseconds() -> None:
    assert timefmt.format_time(NEW_YEAR) == "2025-01-01T00:00:00Z"
    assert timefmt.format_time(NEW_YEAR + 0.25) == "2025-01-01T00:00:00Z"  # a Time keeps whole seconds
    assert timefmt.format_time(NEW_YEAR + 0.25, micro=True) == "2025-01-01T00:00:00.250000Z"


@pytest.mark.parametrize("ts", [NEW_YEAR, NEW_YEAR + 59.5, 2e9 + 0.123456])
def test_round_trip(ts: float) -> None:
    assert timefmt.parse_time(timefmt.format_time(ts)) == float(int(ts))
    assert timefmt.parse_time(timefmt.format_time(ts, micro=True)) == pytest.approx(ts, abs=1e-6)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-01T00:00:00Z", NEW_YEAR),
        ("2025-01-01t00:00:00z", NEW_YEAR),
        ("2025-01-01T00:00:00.5Z", NEW_YEAR + 0.5),
        ("2025-01-01T00:00:00.123456789Z", NEW_YEAR + 0.123456),  # nanoseconds: microseconds kept
        ("2025-01-01T01:00:00+01:00", NEW_YEAR),
        ("2024-12-31T19:30:00-04:30", NEW_YEAR),
        ("2025-01-01T00:00:00", NEW_YEAR),  # no offset: UTC
    ],
)
def test_parse_offsets_and_fractions(text: str, expected: float) -> None:
    assert timefmt.parse_time(text) == pytest.approx(expected, abs=1e-6)


def test_parse_datetimes_from_the_typed_client() -> None:
    assert timefmt.parse_time(dt.datetime(2025, 1, 1, tzinfo=dt.UTC)) == NEW_YEAR
    assert timefmt.parse_time(dt.datetime(2025, 1, 1)) == NEW_YEAR  # naive: UTC, whatever the local zone


@pytest.mark.parametrize("value", [None, "", "yesterday", "2025-13-01T00:00:00Z", "2025-01-01T25:00:00Z", 17])
def test_missing_or_bad_values_are_none(value: object) -> None:
    assert timefmt.parse_time(value) is None


def test_now_is_parseable() -> None:
    assert timefmt.parse_time(timefmt.now_rfc3339()) is not None
    assert timefmt.parse_time(timefmt.now_rfc3339(micro=True)) is not None
