"""The controller's API write slots: at most N writes in flight, the cycle's own before the deferred ones.

An admission cycle's gate removals are what a waiting pod needs; the Admitted conditions written behind the
cycle (`Controller._trail`) only tell people. Both share the API server, so they share one bound
(`api_write_concurrency`): a freed slot goes to an urgent write first, and deferred writes never hold more
than half the slots (at least one), so a slow write behind the cycles cannot stall the next cycle's gate
removals (docs/contracts.md "admission writes").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class WriteSlots:
    """A counting limit with two classes of waiters: a freed slot is handed to an urgent waiter before a
    deferred one, waiters of a class in the order they came; `deferred_max` slots at most for deferred ones.
    Single event loop; not thread-safe."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"write slots: size {size}: must be at least 1")
        self.size = size
        self.deferred_max = max(1, size // 2)
        self.busy = 0
        self.busy_deferred = 0
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._deferred: deque[asyncio.Future[None]] = deque()

    def waiting(self, urgent: bool) -> int:
        return sum(1 for f in (self._urgent if urgent else self._deferred) if not f.done())

    @staticmethod
    def _any_waiting(waiters: deque[asyncio.Future[None]]) -> bool:
        """Whether a waiter is still waiting; stops at the first (a burst queues hundreds of deferred writes, and
        every acquire asks this)."""
        return any(not f.done() for f in waiters)

    @contextlib.asynccontextmanager
    async def slot(self, urgent: bool = True) -> AsyncIterator[None]:
        await self._acquire(urgent)
        try:
            yield
        finally:
            self._release(urgent)

    def _free_for(self, urgent: bool) -> bool:
        if self.busy >= self.size or self._any_waiting(self._urgent):
            return False
        return urgent or (self.busy_deferred < self.deferred_max and not self._any_waiting(self._deferred))

    async def _acquire(self, urgent: bool) -> None:
        if self._free_for(urgent):
            self._take(urgent)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._deferred).append(future)
        try:
            await future  # `_hand_over` counted the slot as this waiter's
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(urgent)  # handed over as the waiter was cancelled: pass it on
            raise

    def _take(self, urgent: bool) -> None:
        self.busy += 1
        if not urgent:
            self.busy_deferred += 1

    def _release(self, urgent: bool) -> None:
        self.busy -= 1
        if not urgent:
            self.busy_deferred -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        """Give free slots to the waiters: urgent ones first, deferred ones within `deferred_max`."""
        while self.busy < self.size:
            woken = self._wake(self._urgent, True) or (
                self.busy_deferred < self.deferred_max and self._wake(self._deferred, False))
            if not woken:
                return

    def _wake(self, waiters: deque[asyncio.Future[None]], urgent: bool) -> bool:
        while waiters:
            future = waiters.popleft()
            if not future.done():
                self._take(urgent)
                future.set_result(None)
                return True
        return False
