"""Spread token-endpoint requests out so an application never exceeds its rate limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RateLimiter:
    """Evenly spaced permits: at most ``rate`` per second, never a burst.

    The Factorial API allows about 200 POSTs per minute per application. Spacing
    requests ``1/rate`` apart keeps every window of any length under the limit,
    which a bucket that allows bursts cannot promise.
    """

    def __init__(self, rate: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be greater than zero")
        self._interval = 1.0 / rate
        self._monotonic = monotonic
        self._next_slot = 0.0
        self.waited_seconds = 0.0

    @property
    def rate(self) -> float:
        """Permits per second."""
        return 1.0 / self._interval

    def retune(self, rate: float) -> None:
        """Change the rate from the next reservation on; slots already handed out stay taken.

        A fresh limiter would forget them and let the next request go at once,
        right beside the ones still waiting for their slots.
        """
        if rate <= 0:
            raise ValueError("rate must be greater than zero")
        self._interval = 1.0 / rate

    def reserve(self) -> float:
        """Take the next free slot and return how long the caller must wait for it."""
        now = self._monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + self._interval
        delay = slot - now
        self.waited_seconds += delay
        return delay

    async def acquire(self) -> None:
        """Wait for a permit. Slots are reserved first, so waiters keep their order."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)
