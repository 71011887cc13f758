"""When is a token due (pure policy), and how fast may requests go (the rate limiter).

The due-time rules do no I/O and read no clock (times come in as arguments).

Keeping the arithmetic free of side effects is what lets tests jump the clock by a
week in microseconds, and lets a restarted daemon recompute everything from the store.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import heapq
import time
from collections.abc import Callable

from tokend.model import MAX_REFRESH_FRACTION, RetryPolicy, TokenName, TokenSpec
from tokend.store.interface import TokenRecord, TokenState

REFRESH_TOKEN_MARGIN_MAX = 86400.0
"""Refresh at the latest this long before the refresh token itself dies (or 1/7 of its life)."""

JITTER = 0.05
"""Each token's refresh point moves by up to this fraction of its lifetime, so tokens issued
together (a restart, a bulk authorization) do not all come due in the same second."""

JITTER_CACHE = 4096
"""Names whose jitter is kept: a bounded cache, so it never adds to the memory a token costs."""

_MAX_DOUBLINGS = 64  # 2**64 times any sane initial delay is far past any cap; avoids float overflow


@functools.lru_cache(maxsize=JITTER_CACHE)
def jitter_fraction(name: TokenName) -> float:
    """A fixed offset in ``[-JITTER, JITTER)`` for ``name``.

    Derived from a hash of the name (not ``hash()``, which changes per process), so
    the same token comes due at the same point after every restart. A refresh asks
    for it three times, so the answers for the tokens seen last are kept.
    """
    digest = hashlib.sha256(str(name).encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64
    return (unit * 2 - 1) * JITTER


def refresh_token_deadline(record: TokenRecord, spec: TokenSpec) -> float | None:
    """The latest moment to refresh before the refresh token expires; ``None`` without one.

    The margin is ``min(1 day, lifetime / 7)``: a day before a week-long refresh token
    dies, and proportionally less for the short lifetimes of the demo.
    """
    dies_at = record.refresh_token_expires_at(spec.refresh_token_lifetime)
    if dies_at is None:
        return None
    margin = min(REFRESH_TOKEN_MARGIN_MAX, spec.refresh_token_lifetime / 7)
    return dies_at - margin


def due_at(record: TokenRecord | None, spec: TokenSpec) -> float | None:
    """When ``record`` should next be refreshed, or ``None`` when nothing can be done.

    ``None`` means a person must act first: no token yet, or the state is
    needs_authorization / not_authorized; or nothing is ever to be done: a token
    without ``expires_in`` (a company token) never expires and is never refreshed.
    A failing or client_rejected token is due at
    its persisted ``next_attempt_at`` (so a restart does not hammer the server). Otherwise the
    token is due at ``issued_at + f * expires_in`` where ``f`` is ``refresh_at`` plus
    the token's jitter, clamped to ``[0, MAX_REFRESH_FRACTION]``, and never later
    than :func:`refresh_token_deadline`. ``issued_at`` is this host's clock when the
    request was sent: the server's ``created_at`` comes from a clock that may be
    off by minutes, and comparing it with ours made a skewed server's tokens
    come due at once (or lapse). The result may lie in the past: the caller
    refreshes at once.
    """
    if record is None or record.token is None or record.issued_at is None:
        return None
    lifetime = record.token.expires_in
    if lifetime is None:
        return None
    if record.state in (TokenState.NEEDS_AUTHORIZATION, TokenState.NOT_AUTHORIZED):
        return None
    if record.state is TokenState.CLIENT_REJECTED:
        return record.next_attempt_at
    if record.state is TokenState.FAILING and record.next_attempt_at is not None:
        return record.next_attempt_at
    fraction = min(max(spec.refresh_at + jitter_fraction(spec.name), 0.0), MAX_REFRESH_FRACTION)
    at = record.issued_at + fraction * lifetime
    deadline = refresh_token_deadline(record, spec)
    return at if deadline is None else min(at, deadline)


def backoff_delay(
    failures: int,
    retry: RetryPolicy,
    *,
    retry_after: float | None,
    random: Callable[[], float],
) -> float:
    """Seconds to wait after the ``failures``-th consecutive transient failure (1 = first).

    ``retry.initial`` doubles per failure up to ``retry.max``, then "equal jitter" keeps
    it in ``[delay / 2, delay)`` so many tokens failing together spread out again.
    A server's ``Retry-After`` is honoured as a lower bound, but only up to
    ``retry.max``: a hint of a day must not leave a one-hour token to expire.
    ``random`` returns a float in ``[0, 1)`` (``random.random`` or a fake).
    """
    doublings = min(max(failures - 1, 0), _MAX_DOUBLINGS)
    delay = min(retry.initial * 2.0**doublings, retry.max)
    delay *= 0.5 + random() / 2
    if retry_after is not None:
        delay = max(delay, min(max(retry_after, 0.0), retry.max))
    return delay


class Scheduler:
    """Every token's next due time in one heap, rather than a sleeping task per token.

    Replacing or cancelling an entry only bumps its generation in a dict; the stale
    heap tuple is skipped when it surfaces (lazy deletion) and the heap is compacted
    when stale tuples outnumber live ones, so memory stays proportional to tokens.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TokenName]] = []
        self._live: dict[TokenName, tuple[float, int]] = {}
        self._generation = 0

    def schedule(self, name: TokenName, at: float) -> None:
        """Make ``name`` due at ``at``, replacing any earlier entry for it."""
        self._generation += 1
        self._live[name] = (at, self._generation)
        heapq.heappush(self._heap, (at, self._generation, name))
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = [(when, gen, key) for key, (when, gen) in self._live.items()]
            heapq.heapify(self._heap)

    def cancel(self, name: TokenName) -> None:
        """Forget ``name`` (a no-op when it is not scheduled)."""
        self._live.pop(name, None)

    def _is_live(self, entry: tuple[float, int, TokenName]) -> bool:
        live = self._live.get(entry[2])
        return live is not None and live[1] == entry[1]

    def due(self, now: float) -> list[TokenName]:
        """Remove and return every name due at or before ``now``, earliest first."""
        names = []
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            if self._is_live(entry):
                del self._live[entry[2]]
                names.append(entry[2])
        return names

    def next_at(self) -> float | None:
        """The earliest due time, or ``None`` when nothing is scheduled."""
        while self._heap and not self._is_live(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def when(self, name: TokenName) -> float | None:
        """When ``name`` is due, or ``None`` when it is not scheduled."""
        live = self._live.get(name)
        return None if live is None else live[0]

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, name: object) -> bool:
        return name in self._live


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
