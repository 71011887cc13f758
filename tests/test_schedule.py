"""Scheduling policy: when each token is refreshed, how failures back off, and the due heap."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokend.engine.schedule import (
    REFRESH_TOKEN_MARGIN_MAX,
    Scheduler,
    backoff_delay,
    due_at,
    jitter_fraction,
    refresh_token_deadline,
)
from tokend.model import MAX_REFRESH_FRACTION, RetryPolicy, Token, TokenName, TokenSpec
from tokend.store.interface import TokenRecord, TokenState

NAME = TokenName("payroll", "alice", "read")
T0 = 1_700_000_000
HOUR = 3600
DAY = 86400.0
ROOT = Path(__file__).resolve().parent.parent


def make_record(
    *,
    expires_in: int = HOUR,
    created_at: int = T0,
    issued_at: float | None = T0,
    state: TokenState = TokenState.OK,
    next_attempt_at: float | None = None,
    with_token: bool = True,
) -> TokenRecord:
    token = Token("access-secret", "Bearer", expires_in, "refresh-secret", "read", created_at)
    return TokenRecord(
        name=NAME, token=token if with_token else None, issued_at=issued_at, state=state,
        last_attempt_at=None, last_refresh_at=None, last_error=None,
        consecutive_failures=0, next_attempt_at=next_attempt_at,
    )


SPEC = TokenSpec(name=NAME)


def test_jitter_stays_within_five_percent_and_spreads() -> None:
    """Tokens issued together come due spread over ±5% of their life, never further."""
    values = [jitter_fraction(TokenName("app", f"user{i}", "read")) for i in range(10_000)]
    assert all(-0.05 <= value <= 0.05 for value in values)
    assert min(values) < -0.045
    assert max(values) > 0.045


def test_jitter_is_the_same_in_every_process() -> None:
    """A restarted daemon refreshes each token at the same point as before the restart."""
    code = ("from tokend.model import TokenName; "
            "from tokend.engine.schedule import jitter_fraction; "
            "print(repr(jitter_fraction(TokenName('payroll', 'alice', 'read'))))")
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed}, timeout=60,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {repr(jitter_fraction(NAME))}


def test_token_is_due_at_its_refresh_fraction() -> None:
    """With refresh_at 0.75 a one-hour token is refreshed about 45 minutes after issue."""
    due = due_at(make_record(), SPEC)
    assert due == T0 + (SPEC.refresh_at + jitter_fraction(NAME)) * HOUR
    assert T0 + 0.70 * HOUR <= due <= T0 + 0.80 * HOUR


@pytest.mark.parametrize("skew", [-50 * 60, 50 * 60], ids=["server-behind", "server-ahead"])
def test_due_time_counts_from_issued_at_not_created_at(skew: int) -> None:
    """A server whose clock is 50 minutes off changes nothing: the token is due on our clock."""
    record = make_record(created_at=T0 + skew, issued_at=T0)
    fraction = SPEC.refresh_at + jitter_fraction(NAME)
    assert due_at(record, SPEC) == T0 + fraction * HOUR


def test_a_token_without_an_issue_time_is_not_scheduled() -> None:
    """Without this host's issue time there is no safe due time: nothing is made up."""
    assert due_at(make_record(issued_at=None), SPEC) is None
    assert refresh_token_deadline(make_record(issued_at=None), SPEC) is None


def test_refresh_token_deadline_counts_from_issued_at() -> None:
    """The refresh token's margin is taken from this host's issue time, not the server's."""
    spec = replace(SPEC, refresh_token_lifetime=70.0)
    record = make_record(created_at=T0 - 3000, issued_at=T0)
    assert refresh_token_deadline(record, spec) == T0 + 60.0


def test_lifetime_comes_from_the_token_not_a_constant() -> None:
    """A token the server gave 7 days is refreshed days later, not after an hour."""
    week = 7 * 86400
    spec = replace(SPEC, refresh_token_lifetime=30 * DAY)
    due = due_at(make_record(expires_in=week), spec)
    assert due == T0 + (SPEC.refresh_at + jitter_fraction(NAME)) * week


def test_refresh_is_never_later_than_95_percent_of_the_lifetime() -> None:
    """Even with refresh_at 0.99 some lifetime is left for a slow server and retries."""
    due = due_at(make_record(), replace(SPEC, refresh_at=0.99))
    assert due == T0 + MAX_REFRESH_FRACTION * HOUR


def test_overdue_token_is_due_in_the_past() -> None:
    """A daemon started after a long stop refreshes an overdue token at once."""
    record = make_record(created_at=T0 - 10 * HOUR, issued_at=T0 - 10 * HOUR)
    due = due_at(record, SPEC)
    assert due is not None
    assert due < T0
    scheduler = Scheduler()
    scheduler.schedule(NAME, due)
    assert scheduler.due(T0) == [NAME]


def test_refresh_token_deadline_wins_when_closer() -> None:
    """A long-lived access token is still refreshed a day before its refresh token dies."""
    record = make_record(expires_in=30 * 86400)
    assert due_at(record, SPEC) == T0 + 7 * DAY - REFRESH_TOKEN_MARGIN_MAX


def test_refresh_token_margin_shrinks_for_short_lifetimes() -> None:
    """The demo's 70-second refresh tokens are refreshed 10 seconds before they die."""
    spec = replace(SPEC, refresh_token_lifetime=70.0)
    assert refresh_token_deadline(make_record(), spec) == T0 + 60.0
    assert due_at(make_record(), spec) == T0 + 60.0


def test_tokens_needing_a_person_are_not_scheduled() -> None:
    """Tokens waiting for authorization are left alone instead of hammering the server."""
    assert due_at(None, SPEC) is None
    assert due_at(make_record(with_token=False), SPEC) is None
    assert due_at(make_record(state=TokenState.NEEDS_AUTHORIZATION), SPEC) is None
    assert due_at(make_record(state=TokenState.NOT_AUTHORIZED), SPEC) is None


def test_failing_token_waits_for_its_persisted_retry_time() -> None:
    """After a restart a failing token keeps its backoff rather than retrying at once."""
    record = make_record(state=TokenState.FAILING, next_attempt_at=T0 + 123.0)
    assert due_at(record, SPEC) == T0 + 123.0


def test_failing_token_without_retry_time_follows_the_normal_schedule() -> None:
    """A failing token with no backoff recorded is still refreshed before it expires."""
    record = make_record(state=TokenState.FAILING)
    assert due_at(record, SPEC) == due_at(make_record(), SPEC)


RETRY = RetryPolicy(initial=10.0, max=600.0)


def test_backoff_doubles_per_failure() -> None:
    """Each further failure waits twice as long as the one before."""
    delays = [backoff_delay(n, RETRY, retry_after=None, random=lambda: 0.0) for n in range(1, 6)]
    assert [b / a for a, b in itertools.pairwise(delays)] == [2.0] * 4
    assert delays[0] == RETRY.initial / 2


def test_backoff_is_capped() -> None:
    """However long a failure lasts, retries come at least every retry.max seconds."""
    for failures in (7, 50, 10_000):
        delay = backoff_delay(failures, RETRY, retry_after=None, random=lambda: 0.999999)
        assert RETRY.max / 2 <= delay <= RETRY.max


def test_backoff_jitter_stays_between_half_and_full_delay() -> None:
    """Tokens failing together retry spread out, each within [delay/2, delay]."""
    rng = random.Random(7)
    delays = [backoff_delay(3, RETRY, retry_after=None, random=rng.random) for _ in range(1000)]
    assert all(20.0 <= delay <= 40.0 for delay in delays)
    assert max(delays) - min(delays) > 15.0


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    """A server's Retry-After is respected, but never beyond retry.max."""
    assert backoff_delay(1, RETRY, retry_after=300.0, random=lambda: 0.5) == 300.0
    assert backoff_delay(1, RETRY, retry_after=86400.0, random=lambda: 0.5) == RETRY.max
    assert backoff_delay(5, RETRY, retry_after=1.0, random=lambda: 0.0) == 80.0


def test_scheduler_returns_due_names_in_time_order() -> None:
    """Tokens come due earliest first, and only once their time has come."""
    scheduler = Scheduler()
    names = [TokenName("app", user, "read") for user in ("c", "a", "b")]
    for name, at in zip(names, (30.0, 10.0, 20.0), strict=True):
        scheduler.schedule(name, at)
    assert scheduler.due(5.0) == []
    assert scheduler.next_at() == 10.0
    assert scheduler.due(20.0) == [names[1], names[2]]
    assert scheduler.due(1e9) == [names[0]]
    assert scheduler.next_at() is None


def test_clock_jump_forward_releases_everything_overdue() -> None:
    """After a suspend/resume, every token whose time passed is refreshed, none twice."""
    scheduler = Scheduler()
    for i in range(10):
        scheduler.schedule(TokenName("app", f"u{i}", "read"), T0 + i * HOUR)
    due = scheduler.due(T0 + 7 * DAY)
    assert due == [TokenName("app", f"u{i}", "read") for i in range(10)]
    assert scheduler.due(T0 + 8 * DAY) == []


def test_scheduling_again_replaces_the_entry() -> None:
    """Rescheduling a token moves it; it never comes due at its old time too."""
    scheduler = Scheduler()
    scheduler.schedule(NAME, 10.0)
    scheduler.schedule(NAME, 50.0)
    assert (scheduler.when(NAME), len(scheduler), scheduler.next_at()) == (50.0, 1, 50.0)
    assert scheduler.due(20.0) == []
    scheduler.schedule(NAME, 5.0)
    assert scheduler.due(20.0) == [NAME]
    assert scheduler.due(100.0) == []


def test_cancel_removes_the_entry() -> None:
    """A token removed from the config is never refreshed again."""
    scheduler = Scheduler()
    other = TokenName("app", "bob", "read")
    scheduler.schedule(NAME, 10.0)
    scheduler.schedule(other, 20.0)
    scheduler.cancel(NAME)
    scheduler.cancel(NAME)
    assert NAME not in scheduler
    assert other in scheduler
    assert (scheduler.when(NAME), scheduler.next_at(), len(scheduler)) == (None, 20.0, 1)
    assert scheduler.due(100.0) == [other]


@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 1000) | st.none()), max_size=60))
def test_due_order_matches_the_latest_schedule(ops: list[tuple[int, float | None]]) -> None:
    """Whatever mix of schedules and cancels, each live token comes due once, in time order."""
    scheduler = Scheduler()
    expected: dict[TokenName, float] = {}
    for user, at in ops:
        name = TokenName("app", f"u{user}", "read")
        if at is None:
            scheduler.cancel(name)
            expected.pop(name, None)
        else:
            scheduler.schedule(name, at)
            expected[name] = at
    assert len(scheduler) == len(expected)
    got = scheduler.due(float("inf"))
    assert sorted(got) == sorted(expected)
    assert [expected[name] for name in got] == sorted(expected.values())


def test_100k_tokens_are_drained_in_due_order() -> None:
    """A very large deployment comes out of the heap complete and in due order.

    How fast is the benchmark suite's business (bench/), not a timed test's.
    """
    rng = random.Random(1)
    at = {TokenName("app", f"u{i}", "read"): rng.uniform(0, 1e6) for i in range(100_000)}
    scheduler = Scheduler()
    for name, when in at.items():
        scheduler.schedule(name, when)
    due = scheduler.due(float("inf"))
    assert len(set(due)) == 100_000
    assert [at[name] for name in due] == sorted(at.values())


def test_rescheduling_does_not_grow_memory() -> None:
    """Replacing entries over and over (config reloads) keeps memory proportional to tokens."""
    names = [TokenName("app", f"u{i}", "read") for i in range(1000)]
    scheduler = Scheduler()
    for name in names:
        scheduler.schedule(name, 0.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for round_ in range(100):
            for name in names:
                scheduler.schedule(name, float(round_))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(scheduler) == 1000
    assert grown < 1_000_000
