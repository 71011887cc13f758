"""How many refreshes may be on the wire at once: globally and per application.

Under overload the token that expires first goes first, so waiters are served by
expiry, not by arrival. A reload may change the limits; tokens already holding
a slot keep it, and the new limit applies as they finish, so a reload never
raises the number of requests in flight above either limit.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager


class PrioritySlots:
    """At most ``limit`` holders; a free slot goes to the waiter with the lowest priority."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

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

    @asynccontextmanager
    async def hold(self, priority: float) -> AsyncIterator[None]:
        """Hold one slot for the ``async with`` body; lower ``priority`` is served first."""
        if self._held < self._limit and not self._waiters:
            self._held += 1
        else:
            granted = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (priority, next(self._order), granted))
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # granted in the same step as the cancellation
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self._held -= 1
        self._grant()

    def _grant(self) -> None:
        while self._held < self._limit and self._waiters:
            _priority, _order, granted = heapq.heappop(self._waiters)
            if granted.done():  # its waiter was cancelled
                continue
            self._held += 1
            granted.set_result(None)


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

    @asynccontextmanager
    async def hold(self, app: str, priority: float) -> AsyncIterator[None]:
        """One of ``app``'s slots and one global slot, each served earliest ``priority`` first."""
        slots = self._apps.get(app)
        if slots is None:
            slots = self._apps[app] = PrioritySlots(self._global.limit)
        async with slots.hold(priority), self._global.hold(priority):
            yield
