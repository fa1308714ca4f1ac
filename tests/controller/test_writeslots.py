"""controller.writeslots.WriteSlots: the bound holds, an urgent waiter goes first, cancellation leaks nothing."""

from __future__ import annotations

import asyncio
import random

import pytest

from controller.writeslots import WriteSlots


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="size 0"):
        WriteSlots(0)


def test_a_freed_slot_goes_to_the_urgent_waiter_before_earlier_deferred_ones() -> None:
    order: list[str] = []

    async def scenario() -> None:
        slots = WriteSlots(1)
        gate = asyncio.Event()

        async def write(name: str, urgent: bool, hold: asyncio.Event | None = None) -> None:
            async with slots.slot(urgent):
                order.append(name)
                if hold is not None:
                    await hold.wait()

        first = asyncio.create_task(write("holder", True, gate))
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(write("deferred-1", False)), asyncio.create_task(write("deferred-2", False))]
        await asyncio.sleep(0)
        waiters.append(asyncio.create_task(write("urgent", True)))
        await asyncio.sleep(0)
        assert (slots.waiting(True), slots.waiting(False)) == (1, 2)
        gate.set()
        await asyncio.gather(first, *waiters)
        assert slots.busy == 0

    asyncio.run(scenario())
    assert order == ["holder", "urgent", "deferred-1", "deferred-2"]


def test_a_deferred_write_does_not_jump_a_waiting_urgent_one_even_with_a_slot_free() -> None:
    """A slot freed while an urgent write waits is that write's, not a newcomer's."""

    async def scenario() -> None:
        slots = WriteSlots(2)
        async with slots.slot(True):
            async with slots.slot(True):
                urgent = asyncio.create_task(slots._acquire(True))
                await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert urgent.done() and slots.busy == 2  # handed the slot on release
            late = asyncio.create_task(slots._acquire(False))
            await asyncio.sleep(0)
            assert not late.done()  # the two slots: the outer holder and the urgent write
            slots._release(True)  # the urgent write's slot
            await late
            slots._release(False)
        assert slots.busy == 0 == slots.busy_deferred

    asyncio.run(scenario())


def test_deferred_writes_hold_half_the_slots_at_most_so_an_urgent_one_always_finds_one() -> None:
    async def scenario() -> None:
        slots = WriteSlots(4)
        stuck = asyncio.Event()

        async def deferred() -> None:
            async with slots.slot(False):
                await stuck.wait()  # an API server that does not answer them

        held = [asyncio.create_task(deferred()) for _ in range(5)]
        await asyncio.sleep(0)
        assert (slots.busy, slots.busy_deferred, slots.waiting(False)) == (2, 2, 3)
        async with asyncio.timeout(30):  # a guard against a stall, not a timed assertion
            for _ in range(10):
                async with slots.slot(True):
                    pass
        stuck.set()
        await asyncio.gather(*held)
        assert slots.busy == 0 == slots.busy_deferred

    asyncio.run(scenario())


def test_random_holders_and_cancellations_never_exceed_the_bound_nor_leak_a_slot() -> None:
    rng = random.Random(7)

    async def scenario() -> None:
        slots = WriteSlots(3)
        inside = 0
        most = 0
        deferred_inside = 0
        deferred_most = 0

        async def write(urgent: bool, hold: float) -> None:
            nonlocal inside, most, deferred_inside, deferred_most
            async with slots.slot(urgent):
                inside += 1
                deferred_inside += not urgent
                most = max(most, inside)
                deferred_most = max(deferred_most, deferred_inside)
                try:
                    await asyncio.sleep(hold)
                finally:
                    inside -= 1
                    deferred_inside -= not urgent

        tasks = [asyncio.create_task(write(rng.random() < 0.5, rng.random() / 500)) for _ in range(300)]
        for _ in range(60):
            await asyncio.sleep(rng.random() / 1000)
            rng.choice(tasks).cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert most <= 3 and inside == 0 and deferred_most <= slots.deferred_max == 1
        assert slots.busy == 0 == slots.busy_deferred and slots.waiting(True) == slots.waiting(False) == 0

    asyncio.run(scenario())
