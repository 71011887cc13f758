"""What the sandbox does to requests before the OAuth model sees them, and what it counts.

The rate limit and the injected faults stand for the network and the real
server's bad days; the counters and the request log let tests prove that a
daemon spreads its refreshes out instead of bursting. Not thread-safe on
purpose: ``sandbox.py`` holds one lock around every call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tokend.sandbox.model import GRANTS
from tokend.sandbox.replies import Reply, error_reply
from tokend.timing import Clock

FAULT_KINDS = (
    "status", "hang", "close", "html", "malformed_json", "missing_fields", "delay", "drop",
)
# Faults that let the request through to the model, then tamper with the answer.
PROCESSED_FAULTS = ("delay", "drop")
COUNTERS = ("authorization_code", "refresh_token", "revoke", "me", "rate_limited", "faulted",
            "refresh_token_reused")


@dataclass(frozen=True)
class Fault:
    """A misbehaviour to show instead of answering the next ``count`` token requests.

    ``status`` answers ``status`` with an OAuth error body (``error``, optional
    ``retry_after``); ``hang`` waits ``seconds`` then closes without answer;
    ``close`` closes at once; ``html`` is a proxy's 502 page; ``malformed_json``
    a truncated 200 body; ``missing_fields`` a 200 body without
    ``refresh_token`` and ``expires_in``; ``delay`` does the work (a refresh
    rotates) but answers only after ``seconds``; ``drop`` does the work and
    closes without answer. ``grant`` limits it to one grant type.
    """

    kind: str
    count: int = 1
    status: int = 500
    retry_after: float | None = None
    seconds: float = 60.0
    error: str | None = None
    grant: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}")
        if self.count < 1:
            raise ValueError("fault count must be at least 1")
        if not 100 <= self.status <= 599:
            raise ValueError("fault status must be an HTTP status code")
        if self.grant is not None and self.grant not in GRANTS:
            raise ValueError(f"fault grant must be one of {', '.join(GRANTS)}")

    @property
    def answer_status(self) -> int:
        """The status the client sees; 0 when it gets no answer at all."""
        statuses = {"status": self.status, "html": 502, "malformed_json": 200,
                    "missing_fields": 200, "delay": 200}
        return statuses.get(self.kind, 0)


class Traffic:
    """A token bucket over POSTs to /oauth/*, faults, an answer delay, counters and a log."""

    def __init__(self, *, clock: Clock, rate_limit: float | None) -> None:
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be positive (or None for no limit)")
        self._clock = clock
        self._rate = rate_limit
        # One second's worth of burst, but never less than a single request.
        self._capacity = max(1.0, rate_limit or 1.0)
        self._bucket = self._capacity
        self._bucket_at = clock.now()
        self._faults: list[Fault] = []
        self._answer_delay = 0.0
        self._answer_delay_grant: str | None = None
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._log: list[tuple[float, str, int]] = []

    @property
    def rate_limit(self) -> float | None:
        """POSTs per second allowed, or None for no limit."""
        return self._rate

    def take_rate_slot(self) -> float | None:
        """Spend one POST from the bucket; None if allowed, else the seconds to wait."""
        if self._rate is None:
            return None
        now = self._clock.now()
        refill = max(0.0, now - self._bucket_at) * self._rate
        self._bucket = min(self._capacity, self._bucket + refill)
        self._bucket_at = now
        if self._bucket >= 1.0:
            self._bucket -= 1.0
            return None
        self._counts["rate_limited"] += 1
        return (1.0 - self._bucket) / self._rate

    def add_fault(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear_faults(self) -> None:
        self._faults.clear()

    def next_fault(self, grant: str) -> Fault | None:
        """Consume one use of the first pending fault that applies to ``grant``."""
        for index, fault in enumerate(self._faults):
            if fault.grant in (None, grant):
                if fault.count == 1:
                    del self._faults[index]
                else:
                    self._faults[index] = replace(fault, count=fault.count - 1)
                self._counts["faulted"] += 1
                return fault
        return None

    def set_answer_delay(self, seconds: float, grant: str | None) -> None:
        """Hold every answer to a token request of ``grant`` (any, if None) ``seconds``."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError("answer delay must be a finite, non-negative number of seconds")
        if grant is not None and grant not in GRANTS:
            raise ValueError(f"answer delay grant must be one of {', '.join(GRANTS)}")
        self._answer_delay, self._answer_delay_grant = seconds, grant

    def answer_delay(self, grant: str) -> float:
        """The seconds to hold the model's answer to a token request of ``grant``."""
        return self._answer_delay if self._answer_delay_grant in (None, grant) else 0.0

    def count(self, counter: str) -> None:
        """Count one request of a kind in ``COUNTERS``; other kinds (a bad grant) are ignored."""
        if counter in self._counts:
            self._counts[counter] += 1

    def log_token_request(self, at: float, grant: str, status: int) -> None:
        self._log.append((at, grant, status))

    def stats(self) -> dict[str, int]:
        return dict(self._counts)

    def token_requests(self) -> list[tuple[float, str, int]]:
        return list(self._log)

    def reset_stats(self) -> None:
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._log = []


def rate_limited_reply(wait: float) -> Reply:
    """The 429 a client over the limit gets, with ``Retry-After`` in whole seconds."""
    retry_after = str(max(1, math.ceil(wait)))
    return error_reply(429, "too_many_requests", "Rate limit exceeded, retry later.",
                       (("Retry-After", retry_after),))
