"""The one polling helper of every test tier (unit-adjacent component tests, e2e, helm) and of the harness.

Tests wait on conditions, never on fixed sleeps (docs/e2e.md); this is the single way they do it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

FIRST_PAUSE = 0.01  # seconds; pauses grow by half each poll up to `interval`


def wait_for(fn: Callable[[], T | None], timeout: float = 30.0, what: str = "condition", interval: float = 0.2) -> T:
    """Poll *fn* until it returns something truthy, and return that.

    The first poll is immediate; the pause between polls starts at 10 ms and grows to at most *interval*
    seconds, so quick conditions are seen quickly and slow ones cost few polls. Raises ``TimeoutError`` naming
    *what* (and the last falsy value) after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    pause = min(FIRST_PAUSE, interval)
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(pause)
        pause = min(pause * 1.5, interval)
