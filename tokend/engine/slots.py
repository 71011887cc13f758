"""How many refreshes may be on the wire at once: globally and per application.

Under overload the token that expires first goes first, so waiters are served by
expiry, not by arrival. A reload may change the limits; tokens already holding
a slot keep it, and the new limit applies as they finish, so a reload never
raises the number of requests in flight above either limit.

A slot is taken on the event loop and may be given back from the worker thread
that sent the refresh (:class:`Held`): the moment the answer is in, before the
thread goes on to commit and write the outputs. Giving back wakes the event loop
only when a refresh waits for the slot.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Mapping, Sequence


class PrioritySlots:
    """At most ``limit`` holders; a free slot goes to the waiter with the lowest priority."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def held(self) -> int:
        return self._held

    def resize(self, limit: int) -> None:
        """Change the limit; holders keep their slots, a lower limit is reached as they end."""
        self._limit = limit
        self._grant()

    async def acquire(self, priority: float) -> None:
        """Take one slot (lower ``priority`` is served first); :meth:`release` gives it back."""
        with self._lock:
            if self._held < self._limit and not self._waiters:
                self._held += 1
                return
            self._loop = asyncio.get_running_loop()
            granted = self._loop.create_future()
            heapq.heappush(self._waiters, (priority, next(self._order), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # granted in the same step as the cancellation
            raise

    def release(self) -> None:
        """Give one slot back; from any thread, waking the event loop only for a waiter."""
        with self._lock:
            self._held -= 1
            loop = self._loop if self._waiters else None
        if loop is None:
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._grant()
        else:
            loop.call_soon_threadsafe(self._grant)

    def _grant(self) -> None:
        with self._lock:
            while self._held < self._limit and self._waiters:
                _priority, _order, granted = heapq.heappop(self._waiters)
                if granted.done():  # its waiter was cancelled
                    continue
                self._held += 1
                granted.set_result(None)


class Held:
    """Slots taken for one refresh; :meth:`release` gives them back once, from any thread."""

    def __init__(self, slots: Sequence[PrioritySlots] = ()) -> None:
        self._slots = slots
        self._lock = threading.Lock()

    def release(self) -> None:
        """Give the slots back; later calls do nothing."""
        with self._lock:
            slots, self._slots = self._slots, ()
        for held in slots:
            held.release()


class RefreshSlots:
    """The application's slot, then a global one: never the other way round.

    Taking the global slot first let a throttled application hold global slots
    while it waited for its own, starving every other application.
    """

    def __init__(self, concurrency: int, applications: Mapping[str, int]) -> None:
        self._global = PrioritySlots(concurrency)
        self._apps = {name: PrioritySlots(limit) for name, limit in applications.items()}

    def resize(self, concurrency: int, applications: Mapping[str, int]) -> None:
        """Apply a reloaded config's limits without touching slots in use."""
        self._global.resize(concurrency)
        for name, limit in applications.items():
            slots = self._apps.get(name)
            if slots is None:
                self._apps[name] = PrioritySlots(limit)
            else:
                slots.resize(limit)
        for name in set(self._apps) - set(applications):
            if not self._apps[name].held:
                del self._apps[name]

    async def take(self, app: str, priority: float) -> Held:
        """One of ``app``'s slots and one global slot, each served earliest ``priority`` first."""
        slots = self._apps.get(app)
        if slots is None:
            slots = self._apps[app] = PrioritySlots(self._global.limit)
        await slots.acquire(priority)
        try:
            await self._global.acquire(priority)
        except BaseException:
            slots.release()
            raise
        return Held((self._global, slots))
