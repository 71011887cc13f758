"""Refresh slots: earliest expiry first, application before global, limits that reload safely."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tokend.engine.slots import PrioritySlots, RefreshSlots


@asynccontextmanager
async def _held(slots: PrioritySlots, priority: float) -> AsyncIterator[None]:
    """One slot of ``slots`` for the ``async with`` body, as a refresh holds it."""
    await slots.acquire(priority)
    try:
        yield
    finally:
        slots.release()


@asynccontextmanager
async def _taken(slots: RefreshSlots, app: str, priority: float) -> AsyncIterator[None]:
    """``app``'s slot and a global one for the ``async with`` body."""
    held = await slots.take(app, priority)
    try:
        yield
    finally:
        held.release()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_free_slot_goes_to_the_waiter_that_expires_first() -> None:
    """Under overload the token closest to expiry is sent next, whatever order it came in."""

    async def go() -> list[float]:
        slots = PrioritySlots(1)
        served: list[float] = []
        release = asyncio.Event()

        async def holder() -> None:
            async with _held(slots, 0.0):
                await release.wait()

        async def waiter(expiry: float) -> None:
            async with _held(slots, expiry):
                served.append(expiry)

        first = asyncio.create_task(holder())
        await _settle()
        waiters = [asyncio.create_task(waiter(expiry)) for expiry in (300.0, 100.0, 200.0)]
        await _settle()
        release.set()
        await asyncio.gather(first, *waiters)
        return served

    assert asyncio.run(go()) == [100.0, 200.0, 300.0]


def test_a_lower_limit_is_reached_as_holders_finish_without_taking_slots_away() -> None:
    """A reload that lowers concurrency never interrupts requests already on the wire."""

    async def go() -> tuple[int, int, int]:
        slots = PrioritySlots(3)
        release = asyncio.Event()
        peak_after = 0

        async def holder() -> None:
            async with _held(slots, 0.0):
                await release.wait()

        async def late() -> None:
            nonlocal peak_after
            async with _held(slots, 0.0):
                peak_after = max(peak_after, slots.held)

        holders = [asyncio.create_task(holder()) for _ in range(3)]
        await _settle()
        slots.resize(1)
        held_at_resize = slots.held
        lates = [asyncio.create_task(late()) for _ in range(3)]
        await _settle()
        waiting_late = sum(not task.done() for task in lates)
        release.set()
        await asyncio.gather(*holders, *lates)
        return held_at_resize, waiting_late, peak_after

    held_at_resize, waiting_late, peak_after = asyncio.run(go())
    assert held_at_resize == 3
    assert waiting_late == 3, "a new request started while more than the new limit were busy"
    assert peak_after == 1


def test_a_raised_limit_lets_waiters_go_at_once() -> None:
    """Raising concurrency on reload serves the queue without waiting for a release."""

    async def go() -> int:
        slots = PrioritySlots(1)
        release = asyncio.Event()

        async def holder() -> None:
            async with _held(slots, 0.0):
                await release.wait()

        tasks = [asyncio.create_task(holder()) for _ in range(3)]
        await _settle()
        slots.resize(3)
        await _settle()
        held = slots.held
        release.set()
        await asyncio.gather(*tasks)
        return held

    assert asyncio.run(go()) == 3


def test_a_cancelled_waiter_gives_its_turn_to_the_next() -> None:
    """A refresh cancelled while queued (shutdown, reload) neither leaks nor blocks a slot."""

    async def go() -> tuple[list[str], int]:
        slots = PrioritySlots(1)
        release = asyncio.Event()
        served: list[str] = []

        async def holder() -> None:
            async with _held(slots, 0.0):
                await release.wait()

        async def waiter(label: str, priority: float) -> None:
            async with _held(slots, priority):
                served.append(label)

        first = asyncio.create_task(holder())
        await _settle()
        doomed = asyncio.create_task(waiter("doomed", 1.0))
        survivor = asyncio.create_task(waiter("survivor", 2.0))
        await _settle()
        doomed.cancel()
        release.set()
        await asyncio.gather(first, survivor)
        await asyncio.gather(doomed, return_exceptions=True)
        return served, slots.held

    assert asyncio.run(go()) == (["survivor"], 0)


def test_a_throttled_application_does_not_hold_global_slots_while_it_waits() -> None:
    """An application at its own limit leaves the global slots to the others."""

    async def go() -> bool:
        slots = RefreshSlots(2, {"busy": 1, "idle": 1})
        release = asyncio.Event()
        idle_ran = asyncio.Event()

        async def busy() -> None:
            async with _taken(slots, "busy", 0.0):
                await release.wait()

        async def idle() -> None:
            async with _taken(slots, "idle", 0.0):
                idle_ran.set()

        busy_tasks = [asyncio.create_task(busy()) for _ in range(4)]
        await _settle()
        idle_task = asyncio.create_task(idle())
        await _settle()
        ran = idle_ran.is_set()
        release.set()
        await asyncio.gather(*busy_tasks, idle_task)
        return ran

    assert asyncio.run(go()), "the idle application waited behind the throttled one"


def test_slots_given_back_from_a_worker_thread_serve_the_next_waiter_once() -> None:
    """A refresh running in a worker thread gives its slots back the moment its answer is
    in: the waiting refresh starts then, and giving back twice frees nothing more."""

    async def go() -> tuple[bool, int]:
        slots = RefreshSlots(1, {"app": 1})
        held = await slots.take("app", 0.0)
        waiter = asyncio.create_task(slots.take("app", 1.0))
        await _settle()
        waited = not waiter.done()
        def give_back_twice() -> None:
            held.release()
            held.release()

        thread = threading.Thread(target=give_back_twice)
        thread.start()
        thread.join()
        second = await asyncio.wait_for(waiter, 5.0)
        third = asyncio.create_task(slots.take("app", 2.0))
        await _settle()
        blocked = int(not third.done())
        second.release()
        (await asyncio.wait_for(third, 5.0)).release()
        return waited, blocked

    waited, blocked = asyncio.run(go())
    assert waited, "the second refresh did not wait for the slot"
    assert blocked == 1, "a slot given back twice let a third refresh in beside the second"
