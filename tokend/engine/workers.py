"""Where blocking work runs: store calls and file writes on thread pools of their own.

A hung output mount must never hold up a commit: with one shared pool, a few
output writes stuck in the kernel take every thread and the refresh that
holds a new refresh token can no longer commit it. So the store has its own
pool, the outputs theirs, and the store pool reports how long its oldest call
has been waiting, which is what the systemd watchdog looks at. File work may
call the store (the marks and the release of the files it just wrote), never
the reverse.

A refresh hops to a pool three times, a few times a second, so a hop is kept
to one queue put and one ``call_soon_threadsafe``: the answer is set on the
waiting future directly, without ``run_in_executor``'s second future chained
to the first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

STORE_THREADS = 2
"""The SQLite store serializes on one connection anyway; a second thread lets a read
(the watchdog's probe, a status) queue behind a slow write instead of behind a queue."""
OUTPUT_THREADS = 4

_Job = tuple["asyncio.Future[Any]", Callable[[], Any]]


class Workers:
    """Two thread pools, ``store`` and ``files``; ``monotonic`` is injectable for tests."""

    def __init__(
        self,
        *,
        store_threads: int = STORE_THREADS,
        output_threads: int = OUTPUT_THREADS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store_pool = _Pool(store_threads, "tokend-store")
        self._file_pool = _Pool(output_threads, "tokend-files")
        self._monotonic = monotonic
        self._pending: dict[int, float] = {}
        self._ids = itertools.count()

    async def store(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one store call in the store pool."""
        call = next(self._ids)
        self._pending[call] = self._monotonic()
        try:
            return await self._store_pool.run(functools.partial(fn, *args, **kwargs))
        finally:
            del self._pending[call]

    async def files(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one batch of file work (outputs) in the file pool."""
        return await self._file_pool.run(functools.partial(fn, *args, **kwargs))

    def store_stalled_for(self) -> float:
        """How long the oldest unfinished store call has been waiting (0 when none is)."""
        if not self._pending:
            return 0.0
        return max(0.0, self._monotonic() - min(self._pending.values()))

    def close(self) -> None:
        """Stop the pools without waiting for a call stuck in the kernel."""
        self._store_pool.close()
        self._file_pool.close()


class _Pool:
    """Up to ``size`` daemon threads; a call goes to the thread that went idle last.

    The last one to go idle is the one whose caches are still warm, so a daemon
    doing a few calls a second keeps using one thread instead of rotating through
    all of them. Daemon threads, because a thread stuck in the kernel (a hung
    mount) must not keep the process from exiting once the daemon is done with it.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[_Job | None]] = []
        self._backlog: collections.deque[_Job] = collections.deque()
        self._threads = 0
        self._closed = False

    async def run(self, call: Callable[[], R]) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        job: _Job = (future, call)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name} is closed")
            if self._idle:
                self._idle.pop().put(job)
            elif self._threads < self._size:
                inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
                inbox.put(job)
                threading.Thread(target=self._serve, args=(inbox,), daemon=True,
                                 name=f"{self._name}_{self._threads}").start()
                self._threads += 1
            else:
                self._backlog.append(job)
        return await future

    def _serve(self, inbox: queue.SimpleQueue[_Job | None]) -> None:
        job = inbox.get()
        while job is not None:
            future, call = job
            # Like a cancelled executor call: work nobody waits for any more is not started.
            if not future.cancelled():
                try:
                    result = call()
                except BaseException as error:  # noqa: BLE001 -- handed to the waiting task
                    _answer(future, _fail, error)
                else:
                    _answer(future, _succeed, result)
            with self._lock:
                if self._backlog:
                    job = self._backlog.popleft()
                    continue
                if self._closed:
                    return
                self._idle.append(inbox)
            job = inbox.get()

    def close(self) -> None:
        """No new calls; waiting ones are cancelled, idle threads end, busy ones when done."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            backlog = list(self._backlog)
            self._backlog.clear()
        for future, _call in backlog:
            _answer(future, _cancel, None)
        for inbox in idle:
            inbox.put(None)


def _answer(
    future: asyncio.Future[Any], how: Callable[[asyncio.Future[Any], Any], None], value: Any
) -> None:
    """Hand ``value`` to ``future`` on its own loop (a closed loop has nobody to tell)."""
    with contextlib.suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(how, future, value)


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _cancel(future: asyncio.Future[Any], _value: object) -> None:
    future.cancel()
