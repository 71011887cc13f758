"""Thread pools: a hung output never blocks the store, and a hung store is visible."""

from __future__ import annotations

import asyncio
import threading

from tokend.engine.workers import Workers


def test_hung_file_work_does_not_hold_up_store_calls() -> None:
    """Every output thread stuck in the kernel: commits still go through their own pool."""

    async def go() -> str:
        workers = Workers(store_threads=1, output_threads=2)
        stuck = threading.Event()
        try:
            hung = [asyncio.ensure_future(workers.files(stuck.wait)) for _ in range(4)]
            answer = await asyncio.wait_for(workers.store(lambda: "committed"), 5)
            stuck.set()
            await asyncio.gather(*hung)
            return answer
        finally:
            stuck.set()
            workers.close()

    assert asyncio.run(go()) == "committed"


def test_a_store_call_that_does_not_return_shows_as_a_stall() -> None:
    """The watchdog's signal: how long the oldest unfinished store call has been waiting."""
    now = [100.0]

    async def go() -> tuple[float, float, float]:
        workers = Workers(monotonic=lambda: now[0])
        stuck = threading.Event()
        try:
            idle = workers.store_stalled_for()
            call = asyncio.ensure_future(workers.store(stuck.wait))
            await asyncio.sleep(0)
            now[0] += 42.0
            stalled = workers.store_stalled_for()
            stuck.set()
            await call
            return idle, stalled, workers.store_stalled_for()
        finally:
            stuck.set()
            workers.close()

    assert asyncio.run(go()) == (0.0, 42.0, 0.0)
