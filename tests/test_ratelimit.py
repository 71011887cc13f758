"""The per-application rate limiter spaces requests evenly and never bursts."""

from __future__ import annotations

import pytest

from tokend.engine.schedule import RateLimiter


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_requests_are_spaced_by_the_rate() -> None:
    """Ten requests at once at 5/s get slots 0.2 s apart: no burst."""
    clock = FakeMonotonic()
    limiter = RateLimiter(5.0, monotonic=clock)
    delays = [limiter.reserve() for _ in range(10)]
    assert delays == pytest.approx([0.2 * i for i in range(10)])
    assert limiter.waited_seconds == pytest.approx(sum(delays))


def test_an_idle_limiter_does_not_bank_permits() -> None:
    """After a long idle time the next request goes at once, the one after waits again."""
    clock = FakeMonotonic()
    limiter = RateLimiter(2.0, monotonic=clock)
    limiter.reserve()
    clock.now += 3600
    assert limiter.reserve() == 0.0
    assert limiter.reserve() == pytest.approx(0.5)


def test_no_window_ever_exceeds_the_limit() -> None:
    """Over any 60 s window of granted slots, at most rate * 60 fit."""
    clock = FakeMonotonic()
    limiter = RateLimiter(3.0, monotonic=clock)
    slots = [clock.now + limiter.reserve() for _ in range(1000)]
    for start in slots:
        in_window = sum(1 for slot in slots if start <= slot < start + 60 - 1e-6)
        assert in_window <= 180


def test_a_non_positive_rate_is_refused() -> None:
    """A rate of zero would block forever, so it is an error."""
    with pytest.raises(ValueError, match="greater than zero"):
        RateLimiter(0)
