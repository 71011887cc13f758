"""End to end: ``tokend run`` as a subprocess against the sandbox over real HTTP."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e import Setup, StartDaemon, refreshed, tokend, wait_for
from tokend.daemon.lifecycle import Daemon
from tokend.engine.supervisor import Supervisor
from tokend.log import SecretMasker
from tokend.sandbox import Sandbox


def _me(sandbox: Sandbox, access_token: str) -> int:
    return httpx.get(
        f"{sandbox.url}/api/v1/me", headers={"Authorization": f"Bearer {access_token}"}
    ).status_code


def test_outputs_always_hold_a_working_token_across_rotations(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """A consumer reading the outputs while tokens rotate never gets a 401."""
    setup = Setup(tmp_path, sandbox, [("alice", "read"), ("bob", "read+write")]).authorized()
    daemon = start_daemon(setup.config)

    seen: dict[str, set[str]] = {"alice": set(), "bob": set()}
    statuses: list[int] = []
    failures: list[str] = []

    def check(user: str, source: str, access_token: str) -> None:
        status = _me(sandbox, access_token)
        statuses.append(status)
        if status != 200:
            failures.append(f"{user} {source}: HTTP {status} at {time.monotonic():.2f}")

    deadline = time.monotonic() + 9
    while time.monotonic() < deadline:
        for user, scope in setup.tokens:
            # Like three consumers: each reads its own file and uses the token at once.
            raw = setup.output(user, scope, "token").read_text()
            check(user, "token", raw)
            env_line = setup.output(user, scope, "env").read_text()
            assert env_line.startswith("FACTORIAL_ACCESS_TOKEN=") and env_line.endswith("\n")
            check(user, "env", env_line.strip().partition("=")[2])
            document = json.loads(setup.output(user, scope, "json").read_text())
            assert set(document) == {"access_token", "token_type", "scope", "expires_at"}
            check(user, "json", document["access_token"])
            seen[user].add(raw)
        time.sleep(0.1)

    assert not failures, f"{len(failures)} of {len(statuses)} calls failed: {failures}"
    assert all(len(tokens) >= 4 for tokens in seen.values()), "tokens did not rotate"
    assert daemon.stop() == 0


def test_a_restarted_daemon_continues_without_a_new_authorization(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """The store carries the refresh token across a restart: no person is needed."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")]).authorized()
    first = start_daemon(setup.config)
    wait_for(lambda: refreshed(first, "app/alice/read") >= 1, 10, "a first refresh")
    assert first.stop() == 0
    refreshes_before = sandbox.stats()["refresh_token"]

    second = start_daemon(setup.config, "second")
    wait_for(lambda: refreshed(second, "app/alice/read") >= 2, 10, "refreshes after restart")
    assert second.stop() == 0

    assert sandbox.stats()["authorization_code"] == 1
    assert sandbox.stats()["refresh_token"] >= refreshes_before + 2
    token = setup.output("alice", "read", "token").read_text()
    assert _me(sandbox, token) == 200


def test_a_revoked_token_needs_authorization_and_the_others_keep_refreshing(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """invalid_grant marks one token needs_authorization, runs on_failure once, spares the rest."""
    marker = tmp_path / "on_failure.log"
    hook = f'        on_failure: [sh, -c, \'echo "$TOKEND_TOKEN" >> {marker}\']\n'
    tokens = [("alice", "read"), ("bob", "read")]
    setup = Setup(tmp_path, sandbox, tokens, {"alice": hook}).authorized()
    daemon = start_daemon(setup.config)
    wait_for(lambda: refreshed(daemon, "app/alice/read") >= 1, 10, "a first refresh")

    assert sandbox.revoke_user("alice") >= 1
    wait_for(lambda: daemon.named("needs_authorization"), 10, "needs_authorization")
    bob_then = refreshed(daemon, "app/bob/read")
    wait_for(lambda: refreshed(daemon, "app/bob/read") >= bob_then + 2, 10, "bob to go on")

    failed = {event["token"] for event in daemon.named("needs_authorization")}
    assert failed == {"app/alice/read"}
    assert marker.read_text().splitlines() == ["app/alice/read"]
    assert daemon.stop() == 0


def test_an_outage_is_ridden_out_with_backoff(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """Five 503s in a row are retried with growing gaps, then the token refreshes again."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")]).authorized()
    daemon = start_daemon(setup.config)
    wait_for(lambda: refreshed(daemon, "app/alice/read") >= 1, 10, "a first refresh")
    sandbox.inject_fault("status", count=5, status=503, grant="refresh_token")
    before = refreshed(daemon, "app/alice/read")
    wait_for(lambda: refreshed(daemon, "app/alice/read") > before, 30, "recovery")
    assert daemon.stop() == 0

    failures = [t for t, grant, status in sandbox.token_requests() if status == 503]
    assert len(failures) == 5
    gaps = [later - earlier for earlier, later in itertools.pairwise(failures)]
    # retry: initial 1 s doubling to 4 s, each delay jittered into [50 %, 100 %].
    assert all(gap >= 0.45 for gap in gaps), f"retried too fast: {gaps}"
    assert sum(gaps) >= 0.5 * (1 + 2 + 4 + 4), f"no backoff: {gaps}"
    attempts = [event["attempt"] for event in daemon.named("refresh_failed")]
    assert attempts == [1, 2, 3, 4, 5]


def test_sigterm_stops_the_daemon_cleanly(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """SIGTERM ends the daemon with status 0 and a daemon_stopped line."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")]).authorized()
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
    assert daemon.stop(signal.SIGTERM) == 0
    assert daemon.named("daemon_stopped")


def test_demo_authorizes_and_refreshes_on_its_own() -> None:
    """``tokend demo`` shows authorizations and refreshes with no setup at all."""
    result = tokend("demo", "--duration", "7", "--lifetime", "3", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum(" authorized " in line for line in lines) == 4  # three users and a company
    assert sum(" refreshed " in line for line in lines) >= 3


def test_the_loop_wakes_once_per_refresh_not_again_when_it_ends(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens rotating all day: the daemon's loop wakes when a refresh is due, not a second
    time when it ends, which changes nothing the loop must act on (the next due time is
    another token's, the status line stays): a pass and a new sleep per refresh saved."""
    users = ["alice", "bob", "carol"]
    setup = Setup(tmp_path, sandbox, [(user, "read") for user in users]).authorized()
    passes = 0
    start_due = Supervisor.start_due

    def counting(self: Supervisor) -> None:
        nonlocal passes
        passes += 1
        start_due(self)

    monkeypatch.setattr(Supervisor, "start_due", counting)
    daemon = Daemon(setup.config, masker=SecretMasker())
    samples: list[tuple[int, int]] = []

    async def sample_then_stop() -> None:
        for target in (3, 12):
            deadline = time.monotonic() + 60
            while sandbox.stats()["refresh_token"] < target:
                assert time.monotonic() < deadline, f"fewer than {target} refreshes in 60 s"
                await asyncio.sleep(0.02)
            samples.append((sandbox.stats()["refresh_token"], passes))
        daemon.request_stop()

    async def run() -> int:
        sampler = asyncio.create_task(sample_then_stop())
        try:
            return await daemon.run()
        finally:
            await sampler

    assert asyncio.run(run()) == 0
    (refreshes_before, passes_before), (refreshes_after, passes_after) = samples
    refreshes, loop_passes = refreshes_after - refreshes_before, passes_after - passes_before
    assert loop_passes <= 1.5 * refreshes, f"{loop_passes} passes for {refreshes} refreshes"
