"""Where blocking work runs: store calls and file writes, on threads a hung mount cannot take.

A hung output mount must never hold up a commit: with one shared pool, a few
output writes stuck in the kernel take every thread and the refresh that
holds a new refresh token can no longer commit it. So file work runs only in
the file pool, and a store call runs in a file thread only when one is free
to start it at once, else in the store pool, which file work never uses: a
store call never queues behind file work. The free file thread is the one that
ran the last refresh, whose caches are warm, so a daemon doing a few refreshes
a second keeps to one thread. How long the oldest store call has been waiting
is what the systemd watchdog looks at. File work may call the store (the marks
and the release of the files it just wrote), never the reverse.

A refresh runs whole in one free file thread (:meth:`Workers.start_at_once`:
claim, request, commit, outputs); when none is free it hops to a thread for the
claim, then for the commit with its outputs (:meth:`Workers.store_then_files`).
That happens a few times a second, so a hop is kept to one queue put and one
``call_soon_threadsafe``: the answer is set on the waiting future directly,
without ``run_in_executor``'s second future chained to the first.
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
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar, overload

P = ParamSpec("P")
R = TypeVar("R")
A = TypeVar("A")

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
        # Store calls not yet returned, by when they were asked for. A store call made
        # in a file thread ends there, hence the lock.
        self._pending: dict[int, float] = {}
        self._pending_lock = threading.Lock()
        self._ids = itertools.count()

    async def store(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one store call: in a file thread that is free to start it at once (the one
        that ran the last refresh, whose caches are warm), else in the store pool."""
        work = functools.partial(fn, *args, **kwargs)
        with self.store_call():
            started = self._file_pool.submit(work, only_if_free=True)
            return await (started if started is not None else self._store_pool.submit(work))

    async def files(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one batch of file work (outputs) in the file pool."""
        return await self._file_pool.submit(functools.partial(fn, *args, **kwargs))

    async def store_then_files(self, store_call: Callable[[], A],
                               file_work: Callable[[A], R]) -> R:
        """Run ``store_call``, then ``file_work`` on its result (which may call the store).

        Both run in one file thread when one is free to start at once: the store call
        comes first there, so it waits behind nothing. When every file thread is busy
        (perhaps stuck on a hung mount) the store call goes to the store pool and the
        file work queues, as two separate calls would.
        """
        call = self._store_call_begins()

        def both() -> R:
            try:
                result = store_call()
            finally:
                self._store_call_ends(call)
            return file_work(result)

        try:
            started = self._file_pool.submit(both, only_if_free=True)
            if started is not None:
                return await started
        finally:
            self._store_call_ends(call)  # cancelled, or the store pool's turn: ended here
        return await self.files(file_work, await self.store(store_call))

    def start_at_once(self, fn: Callable[P, R], *args: P.args,
                      **kwargs: P.kwargs) -> asyncio.Future[R] | None:
        """Start ``fn`` (file work that may call the store) in a file thread free to start
        it at once, or give ``None`` when every file thread is busy. Its store calls are
        watched through :meth:`store_call`."""
        return self._file_pool.submit(functools.partial(fn, *args, **kwargs), only_if_free=True)

    @contextlib.contextmanager
    def store_call(self) -> Iterator[None]:
        """Count the ``with`` body as a store call, for :meth:`store_stalled_for`: the calls
        :meth:`store` runs, and those a worker thread makes itself."""
        call = self._store_call_begins()
        try:
            yield
        finally:
            self._store_call_ends(call)

    def _store_call_begins(self) -> int:
        call = next(self._ids)
        with self._pending_lock:
            self._pending[call] = self._monotonic()
        return call

    def _store_call_ends(self, call: int) -> None:
        with self._pending_lock:
            self._pending.pop(call, None)

    def store_stalled_for(self) -> float:
        """How long the oldest unfinished store call has been waiting (0 when none is)."""
        with self._pending_lock:
            oldest = min(self._pending.values(), default=None)
        return 0.0 if oldest is None else max(0.0, self._monotonic() - oldest)

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

    @overload
    def submit(self, call: Callable[[], R]) -> asyncio.Future[R]: ...

    @overload
    def submit(self, call: Callable[[], R], *, only_if_free: bool) -> asyncio.Future[R] | None: ...

    def submit(self, call: Callable[[], R], *,
               only_if_free: bool = False) -> asyncio.Future[R] | None:
        """Hand ``call`` to a thread; the future gets its answer. With ``only_if_free``,
        ``None`` instead of queueing when no thread can start it at once."""
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
            elif only_if_free:
                return None
            else:
                self._backlog.append(job)
        return future

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
