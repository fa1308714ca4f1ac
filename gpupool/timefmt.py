"""Kubernetes times (RFC 3339, UTC) as written and read by every gpupool component.

The one home of the time format named in docs/contracts.md: `Time` fields and gpupool's own
annotations carry whole seconds (`2025-01-01T00:00:00Z`), `MicroTime` fields (a Lease's
`renewTime`) microseconds. Timestamps in the model are POSIX seconds (floats).
"""

from __future__ import annotations

import datetime as dt
import time

_SECONDS = "%Y-%m-%dT%H:%M:%SZ"
_MICROSECONDS = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_time(ts: float, *, micro: bool = False) -> str:
    """POSIX seconds as RFC 3339 in UTC: whole seconds (a `Time`), or microseconds (a `MicroTime`)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime(_MICROSECONDS if micro else _SECONDS)


def now_rfc3339(*, micro: bool = False) -> str:
    """The current time in the format of `format_time`."""
    return format_time(time.time(), micro=micro)


def parse_time(value: object) -> float | None:
    """POSIX seconds of an RFC 3339 string (any offset, any fraction) or a `datetime`.

    None for a missing or unreadable value: callers decide what an unknown time means. A time
    without an offset is read as UTC (the API server always writes one).
    """
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        stamp = value
    else:
        text = str(value).strip()
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        try:
            stamp = dt.datetime.fromisoformat(text)
        except ValueError:
            return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()
