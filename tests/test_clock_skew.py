"""End to end: a server whose clock is 50 minutes off changes nothing for consumers.

``expires_in`` is relative (RFC 6749 §5.1), so tokend counts a token's life
from its own clock when the request was sent; the server's ``created_at`` is
shown, never used to schedule.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e import CLIENT_ID, CLIENT_SECRET, Setup, StartDaemon, refreshed, wait_for
from tokend.sandbox import Sandbox

LIFETIME = 4.0
REFRESH_AT = 0.5
RUN = 10.0


@pytest.fixture(params=[-3000.0, 3000.0], ids=["server-50min-behind", "server-50min-ahead"])
def skewed_sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    with Sandbox(access_token_lifetime=LIFETIME, clients={CLIENT_ID: CLIENT_SECRET},
                 clock_offset=request.param) as server:
        yield server


def test_a_skewed_server_gets_one_refresh_per_cycle_and_no_token_lapses(
    tmp_path: Path, skewed_sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """Refreshes come once per cycle (no loop, no gap) and the output always works."""
    sandbox = skewed_sandbox
    setup = Setup(tmp_path, sandbox, [("alice", "read")],
                  defaults_yaml=f"  refresh_at: {REFRESH_AT}\n  retry: {{initial: 1s, max: 4s}}\n")
    setup.authorized()
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
    sandbox.reset_stats()
    failures: list[str] = []
    output = setup.output("alice", "read", "token")
    started = time.monotonic()
    while time.monotonic() - started < RUN:
        answer = httpx.get(f"{sandbox.url}/api/v1/me",
                           headers={"Authorization": f"Bearer {output.read_text()}"})
        if answer.status_code != 200:
            failures.append(f"HTTP {answer.status_code} at +{time.monotonic() - started:.1f} s")
        time.sleep(0.1)
    assert daemon.stop() == 0

    requests = sandbox.stats()["refresh_token"]
    cycles = RUN / (LIFETIME * REFRESH_AT)
    # Jitter moves each refresh by up to 5 % of the lifetime: allow one cycle either way.
    assert cycles - 1 <= requests <= cycles + 1, f"{requests} refreshes in {cycles:g} cycles"
    assert sandbox.reused_refresh_tokens() == 0
    assert refreshed(daemon, "app/alice/read") >= requests
    assert not failures, f"the output held a dead token: {failures}"
