"""Server faults: each is classified right, retried within the backoff bounds, and loses nothing."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import Setup, StartDaemon, authorize, refreshed, wait_for
from tokend.model import TokenName
from tokend.sandbox import Sandbox
from tokend.store.sqlite import SqliteStateStore

INITIAL, MAXIMUM, TIMEOUT = 0.2, 0.8, 0.5
POLICY = (
    f"  refresh_at: 0.5\n  timeout: {TIMEOUT}s\n"
    f"  retry: {{initial: {INITIAL}s, max: {MAXIMUM}s}}\n"
)
NAME = "app/alice/read"


@dataclass(frozen=True)
class Case:
    kind: str
    fault: dict[str, Any] = field(default_factory=dict)
    min_gap: float = 0.0  # a Retry-After the client must honour


TRANSIENT = {
    "500": Case("status", {"status": 500}),
    "502": Case("status", {"status": 502}),
    "503": Case("status", {"status": 503}),
    "504": Case("status", {"status": 504}),
    "429": Case("status", {"status": 429}),
    # Retry-After is honoured up to retry.max, so a huge hint cannot let a token lapse.
    "429-retry-after": Case("status", {"status": 429, "retry_after": 1}, min_gap=MAXIMUM),
    "hang": Case("hang", {"seconds": 5.0}),
    "closed-connection": Case("close"),
    "html-page": Case("html"),
    "malformed-json": Case("malformed_json"),
    "missing-fields": Case("missing_fields"),
    "answer-lost-after-rotation": Case("drop"),
}
PERMANENT = {
    "invalid_grant": Case("status", {"status": 400, "error": "invalid_grant"}),
    "invalid_client": Case("status", {"status": 401, "error": "invalid_client"}),
}
# invalid_client is about the application's credentials, not the refresh token.
PERMANENT_STATE = {"invalid_grant": "needs_authorization", "invalid_client": "client_rejected"}


def _stored(setup: Setup) -> Any:
    store = SqliteStateStore(setup.state_dir)
    try:
        return store.get(TokenName("app", "alice", "read"))
    finally:
        store.close()


def _start(tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon,
           extra: str = "") -> tuple[Setup, Any]:
    setup = Setup(tmp_path, sandbox, [("alice", "read")], {"alice": extra},
                  defaults_yaml=POLICY)
    setup.write()
    authorize(setup, "alice", "read")
    return setup, start_daemon(setup.config)


@pytest.mark.parametrize("case", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_a_transient_fault_is_retried_with_backoff_and_recovers(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon, case: Case
) -> None:
    """Three faults in a row: retried with growing gaps, then one more step to recover."""
    sandbox.inject_fault(case.kind, count=3, grant="refresh_token", **case.fault)
    setup, daemon = _start(tmp_path, sandbox, start_daemon)
    wait_for(lambda: refreshed(daemon, NAME) >= 1, 15, "recovery")
    assert daemon.stop() == 0

    requests = [t for t, grant, _status in sandbox.token_requests() if grant == "refresh_token"]
    assert len(requests) >= 4
    failed, recovered = requests[:3], requests[3]
    assert [event["attempt"] for event in daemon.named("refresh_failed")] == [1, 2, 3]
    assert not daemon.named("needs_authorization"), "a transient fault was taken as permanent"
    for attempt, (earlier, later) in enumerate(itertools.pairwise([*failed, recovered]), 1):
        step = min(INITIAL * 2 ** (attempt - 1), MAXIMUM)
        gap = later - earlier
        # Equal jitter waits [step/2, step); a hang adds the request timeout.
        assert gap >= max(step / 2, case.min_gap) - 0.02, f"attempt {attempt} too soon: {gap}"
        assert gap <= max(step, case.min_gap) + TIMEOUT + 0.5, f"attempt {attempt} late: {gap}"
    record = _stored(setup)
    assert record is not None and record.token is not None
    assert sandbox.refresh_token_state(record.token.refresh_token) == "live", "token lost"


@pytest.mark.parametrize("error", PERMANENT)
def test_a_permanent_fault_stops_retrying_and_keeps_the_token(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon, error: str
) -> None:
    """invalid_grant (needs_authorization) / invalid_client (client_rejected): one request,
    on_failure, no hammering."""
    case, state = PERMANENT[error], PERMANENT_STATE[error]
    marker = tmp_path / "on_failure"
    hook = f"        on_failure: [touch, {marker}]\n"
    sandbox.inject_fault(case.kind, count=1, grant="refresh_token", **case.fault)
    setup, daemon = _start(tmp_path, sandbox, start_daemon, hook)
    wait_for(lambda: daemon.named(state), 10, state)
    wait_for(marker.exists, 5, "the on_failure hook")
    time.sleep(2.5)  # several of its would-be refresh cycles
    assert sandbox.stats()["refresh_token"] == 1, "it kept retrying"
    assert daemon.stop() == 0
    record = _stored(setup)
    assert record is not None and record.token is not None, "the token was deleted"
    assert record.state.value == state
    assert sandbox.refresh_token_state(record.token.refresh_token) == "live"


def test_a_long_outage_is_not_hammered(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon, figures: dict[str, str]
) -> None:
    """During a 6 s outage requests stay under the bound the backoff allows, then recover."""
    sandbox.inject_fault("status", count=10_000, status=503, grant="refresh_token")
    setup, daemon = _start(tmp_path, sandbox, start_daemon)
    wait_for(lambda: daemon.named("refresh_failed"), 10, "the outage to start")
    time.sleep(6)
    during = [t for t, _grant, status in sandbox.token_requests() if status == 503]
    sandbox.clear_faults()
    cleared = time.monotonic()
    wait_for(lambda: refreshed(daemon, NAME) >= 1, MAXIMUM + 2, "recovery after the outage")
    recovery = time.monotonic() - cleared
    assert daemon.stop() == 0

    span = during[-1] - during[0]
    # At the cap, equal jitter waits at least MAXIMUM / 2 between attempts.
    bound = 1 + 3 + span / (MAXIMUM / 2)
    figures["server outage"] = (
        f"{len(during)} requests in {span:.1f} s of 503s "
        f"({len(during) / span * 60:.0f}/min, bound {bound / span * 60:.0f}/min), "
        f"recovered {recovery:.2f} s after it cleared"
    )
    assert len(during) <= bound
    assert len(during) >= span / MAXIMUM, "it gave up retrying"
    record = _stored(setup)
    assert record is not None and record.token is not None
    assert sandbox.refresh_token_state(record.token.refresh_token) == "live"
