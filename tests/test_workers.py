"""Thread pools: a hung output never blocks the store, and a hung store is visible."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading

import pytest

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


def test_a_commit_and_its_outputs_never_wait_behind_hung_file_work() -> None:
    """Every file thread stuck in the kernel: a commit that would take its outputs along in
    one hop is made at once in the store pool; its outputs wait for a file thread."""
    committed = threading.Event()

    def commit() -> str:
        committed.set()
        return "token"

    async def go() -> tuple[bool, bool, str]:
        workers = Workers(store_threads=1, output_threads=2)
        stuck = threading.Event()
        try:
            hung = [asyncio.ensure_future(workers.files(stuck.wait)) for _ in range(2)]
            await asyncio.sleep(0)
            both = asyncio.ensure_future(
                workers.store_then_files(commit, lambda token: f"{token} published"))
            in_time = await asyncio.to_thread(committed.wait, 5)
            waiting = not both.done()
            stuck.set()
            await asyncio.gather(*hung)
            return in_time, waiting, await both
        finally:
            stuck.set()
            workers.close()

    assert asyncio.run(go()) == (True, True, "token published")


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


def test_a_call_whose_waiter_was_cancelled_is_never_started() -> None:
    """A store call queued behind a slow one, whose refresh is cancelled meanwhile (a
    shutdown's drain), never runs: a claim nobody waits for would hold its lease."""
    ran: list[str] = []

    async def go() -> None:
        workers = Workers(store_threads=1, output_threads=1)
        slow = threading.Event()
        try:
            busy_files = asyncio.ensure_future(workers.files(slow.wait))
            first = asyncio.ensure_future(workers.store(slow.wait))
            queued = asyncio.ensure_future(workers.store(ran.append, "claim"))
            await asyncio.sleep(0.1)
            queued.cancel()
            await asyncio.sleep(0)
            slow.set()
            await asyncio.gather(first, busy_files)
            assert await workers.store(lambda: "after") == "after"
        finally:
            slow.set()
            workers.close()

    asyncio.run(go())
    assert ran == [], "a cancelled store call ran anyway"


def test_a_call_stuck_forever_does_not_keep_the_process_from_exiting() -> None:
    """An output write that never returns (a dead network mount): once the daemon is done,
    the process exits instead of waiting for that thread until systemd kills it."""
    code = textwrap.dedent("""
        import asyncio, threading
        from tokend.engine.workers import Workers

        async def main():
            workers = Workers()
            call = asyncio.ensure_future(workers.files(threading.Event().wait))
            await asyncio.sleep(0.2)
            call.cancel()
            workers.close()

        asyncio.run(main())
        print("stopped")
    """)
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=20, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit within 20 s: it waits for the stuck thread")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "stopped"
