"""Where blocking work runs: store calls and file writes on thread pools of their own.

A hung output mount must never hold up a commit: with one shared pool, a few
output writes stuck in the kernel take every thread and the refresh that
holds a new refresh token can no longer commit it. So the store has its own
pool, the outputs theirs, and the store pool reports how long its oldest call
has been waiting, which is what the systemd watchdog looks at.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

STORE_THREADS = 2
"""The SQLite store serializes on one connection anyway; a second thread lets a read
(the watchdog's probe, a status) queue behind a slow write instead of behind a queue."""
OUTPUT_THREADS = 4


class Workers:
    """Two thread pools, ``store`` and ``files``; ``monotonic`` is injectable for tests."""

    def __init__(
        self,
        *,
        store_threads: int = STORE_THREADS,
        output_threads: int = OUTPUT_THREADS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store_pool = ThreadPoolExecutor(store_threads, thread_name_prefix="tokend-store")
        self._file_pool = ThreadPoolExecutor(output_threads, thread_name_prefix="tokend-files")
        self._monotonic = monotonic
        self._pending: dict[int, float] = {}
        self._ids = itertools.count()

    async def store(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one store call in the store pool."""
        call = next(self._ids)
        self._pending[call] = self._monotonic()
        try:
            return await self._run(self._store_pool, fn, *args, **kwargs)
        finally:
            del self._pending[call]

    async def files(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one batch of file work (outputs) in the file pool."""
        return await self._run(self._file_pool, fn, *args, **kwargs)

    @staticmethod
    async def _run(
        pool: ThreadPoolExecutor, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, functools.partial(fn, *args, **kwargs))

    def store_stalled_for(self) -> float:
        """How long the oldest unfinished store call has been waiting (0 when none is)."""
        if not self._pending:
            return 0.0
        return max(0.0, self._monotonic() - min(self._pending.values()))

    def close(self) -> None:
        """Stop the pools without waiting for a call stuck in the kernel."""
        self._store_pool.shutdown(wait=False, cancel_futures=True)
        self._file_pool.shutdown(wait=False, cancel_futures=True)
