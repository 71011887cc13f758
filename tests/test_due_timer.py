"""The timer that starts due work: at its time, again after a failure, never once closed."""

from __future__ import annotations

import asyncio
import time

from tokend.daemon.wakeups import DueTimer


def test_due_work_starts_at_its_time_and_the_timer_survives_a_failure_to_start_it() -> None:
    """The first start raises (a bug in one token's work): the next due time is still
    honoured, and nothing starts once the timer is closed."""
    starts: list[float] = []
    due = [time.time() + 0.05]

    def start_due() -> None:
        starts.append(time.time())
        due[0] = time.time() + 0.05
        if len(starts) == 1:
            raise RuntimeError("one token's work failed to start")

    async def go() -> int:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, _context: None)  # the failure is expected
        timer = DueTimer(next_at=lambda: due[0], start_due=start_due, now=time.time)
        timer.arm()
        await asyncio.sleep(0.4)
        timer.close()
        started = len(starts)
        due[0] = time.time()
        timer.arm()
        await asyncio.sleep(0.2)
        return len(starts) - started

    began = time.time()
    after_close = asyncio.run(go())
    assert len(starts) >= 3, f"started {len(starts)} times in 0.4 s of work due every 0.05 s"
    assert starts[0] - began >= 0.04, "started before it was due"
    assert after_close == 0, "work started after the timer was closed"


def test_arming_again_for_the_same_time_keeps_one_timer() -> None:
    """Work ends many times a second; each asks for the timer: it fires once per due time."""
    starts: list[float] = []
    due: list[float | None] = [time.time() + 0.1]

    async def go() -> None:
        timer = DueTimer(next_at=lambda: due[0], start_due=lambda: starts.append(time.time()),
                         now=time.time)
        for _ in range(50):
            timer.arm()
        await asyncio.sleep(0.05)
        due[0] = None  # nothing further is due once it fired
        await asyncio.sleep(0.15)
        timer.close()

    asyncio.run(go())
    assert len(starts) == 1, f"started {len(starts)} times for one due time"
