"""A token removed from the config: its files go, its stored token stays visible and revocable.

Each test runs the real daemon and CLI against the sandbox and checks what an
operator sees: the output files, ``tokend status``, ``tokend token``, ``tokend
revoke``, and the sandbox's own view of the refresh token.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from tests.e2e import (
    Setup,
    StartDaemon,
    refreshed,
    stored_refresh_token,
    tokend,
    wait_for,
)
from tokend.sandbox import Sandbox

TOKENS = [("alice", "read"), ("bob", "read")]
BOB = "app/bob/read"
SUFFIXES = ("token", "env", "json")




def _rows(setup: Setup) -> dict[str, dict[str, Any]]:
    result = tokend("status", "--json", config=setup.config)
    return {row["name"]: row for row in json.loads(result.stdout)["tokens"]}


def _bob_files(setup: Setup) -> list[bool]:
    return [setup.output("bob", "read", suffix).exists() for suffix in SUFFIXES]


def _without_bob(setup: Setup) -> None:
    setup.tokens = TOKENS[:1]
    setup.config.write_text(setup.render())


def test_a_token_removed_by_a_reload_loses_its_files_but_stays_listed(
    tmp_path: Path, hour_sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """No file keeps a token nobody refreshes; status, token and the log say what happened."""
    setup = Setup(tmp_path, hour_sandbox, TOKENS).authorized()
    refresh_token = stored_refresh_token(setup, "bob")
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
    _without_bob(setup)
    wait_for(lambda: not any(_bob_files(setup)), 10, "bob's outputs to be removed")
    assert setup.output("alice", "read", "token").exists()
    # The line follows the removal, so it may still be on its way.
    wait_for(lambda: daemon.named("token_unconfigured"), 5, "the token_unconfigured line")
    assert daemon.named("token_unconfigured")[0]["token"] == BOB

    rows = _rows(setup)
    assert rows[BOB]["state"] == "unconfigured"
    action = rows[BOB]["action"]
    assert f"revoke {BOB}" in action and f"revoke --local-only {BOB}" in action
    text = tokend("status", config=setup.config)
    assert "app/bob/read" in text.stdout and "unconfigured" in text.stdout
    assert text.returncode == 0, "a token removed on purpose does not fail monitoring"
    printed = tokend("token", BOB, config=setup.config)
    assert printed.returncode == 1 and not printed.stdout
    assert "no longer in the config" in printed.stderr
    assert refresh_token is not None and hour_sandbox.refresh_token_state(refresh_token) == "live"
    assert daemon.stop() == 0


def test_a_re_added_token_is_published_again_without_a_new_authorization(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """Put back in the config, the stored token is written out and refreshed again."""
    setup = Setup(tmp_path, sandbox, TOKENS).authorized()
    daemon = start_daemon(setup.config)
    wait_for(lambda: refreshed(daemon, BOB) >= 1, 10, "a refresh of bob")
    _without_bob(setup)
    wait_for(lambda: not any(_bob_files(setup)), 10, "bob's outputs to be removed")
    setup.tokens = TOKENS
    setup.config.write_text(setup.render())
    wait_for(lambda: all(_bob_files(setup)), 10, "bob's outputs to come back")
    before = refreshed(daemon, BOB)
    wait_for(lambda: refreshed(daemon, BOB) > before, 10, "bob to be refreshed again")
    assert _rows(setup)[BOB]["state"] == "ok"
    assert tokend("token", BOB, config=setup.config).returncode == 0
    assert not daemon.named("needs_authorization")
    assert daemon.stop() == 0


def test_a_token_removed_while_the_daemon_was_down_loses_its_files_at_start(
    tmp_path: Path, hour_sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """The paths tokend wrote are remembered in the store, so a restart still cleans up."""
    setup = Setup(tmp_path, hour_sandbox, TOKENS).authorized()
    first = start_daemon(setup.config)
    wait_for(lambda: first.named("daemon_started"), 10, "the daemon to start")
    assert first.stop() == 0
    _without_bob(setup)
    assert all(_bob_files(setup))
    second = start_daemon(setup.config)
    wait_for(lambda: second.named("daemon_started"), 10, "the daemon to start again")
    assert not any(_bob_files(setup)), "a file still holds a token nobody refreshes"
    assert _rows(setup)[BOB]["state"] == "unconfigured"
    assert second.stop() == 0


def test_a_moved_output_leaves_no_copy_at_its_old_path(
    tmp_path: Path, hour_sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """An output whose path changes is written at the new path and removed at the old one."""
    setup = Setup(tmp_path, hour_sandbox, TOKENS[:1]).authorized()
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
    old, new = setup.output("alice", "read", "token"), tmp_path / "out" / "moved.token"
    setup.config.write_text(setup.render().replace(str(old), str(new)))
    wait_for(lambda: new.exists() and not old.exists(), 10, "the output to move")
    assert daemon.stop() == 0


def test_revoke_accepts_an_unconfigured_token_and_revokes_it_at_the_server(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """While its application is configured, revoke uses its credentials at the server."""
    setup = Setup(tmp_path, hour_sandbox, TOKENS).authorized()
    refresh_token = stored_refresh_token(setup, "bob")
    _without_bob(setup)
    assert _rows(setup)[BOB]["state"] == "unconfigured"
    result = tokend("revoke", BOB, config=setup.config)
    assert result.returncode == 0, result.stderr
    assert refresh_token is not None
    assert hour_sandbox.refresh_token_state(refresh_token) == "revoked"
    assert not any(_bob_files(setup))
    assert BOB not in _rows(setup)
    assert stored_refresh_token(setup, "bob") is None


def test_a_token_of_a_removed_application_can_only_be_forgotten_locally(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """Without the application's credentials the server cannot be asked: revoke says so."""
    setup = Setup(tmp_path, hour_sandbox, TOKENS).authorized()
    refresh_token = stored_refresh_token(setup, "bob")
    setup.tokens = TOKENS[:1]
    setup.config.write_text(setup.render().replace("  app:\n", "  other:\n"))
    assert _rows(setup)[BOB]["state"] == "unconfigured"
    refused = tokend("revoke", BOB, config=setup.config)
    assert refused.returncode == 1
    assert "--local-only" in refused.stderr and "application 'app'" in refused.stderr
    assert refresh_token is not None and hour_sandbox.refresh_token_state(refresh_token) == "live"
    forgotten = tokend("revoke", "--local-only", BOB, config=setup.config)
    assert forgotten.returncode == 0, forgotten.stderr
    assert BOB not in _rows(setup)
    assert not any(_bob_files(setup))


def test_a_configured_token_of_another_application_keeps_an_output_path_it_took_over(
    tmp_path: Path, hour_sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """A removed token's old path, now another token's output, is left to its new owner."""
    setup = Setup(tmp_path, hour_sandbox, TOKENS).authorized()
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
    alice_path, bob_path = (setup.output(user, "read", "token") for user in ("alice", "bob"))
    text = setup.render()
    setup.tokens = TOKENS[:1]
    moved = setup.render().replace(str(alice_path), str(bob_path))
    assert moved != text
    setup.config.write_text(moved)
    wait_for(lambda: daemon.named("token_unconfigured"), 10, "bob to be unconfigured")
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: len(daemon.named("config_reloaded")) >= 2, 10, "a second reload")
    alice = tokend("token", "app/alice/read", config=setup.config).stdout.strip()
    holds_alice = bob_path.exists() and bob_path.read_text() == alice
    assert holds_alice, "the path alice took over lost her token"
    assert daemon.stop() == 0
