"""The daemon says when a person is needed, per token, with the exact command to run.

Read from the log of a real daemon subprocess: at start, at a reload that adds
a token, and when a token turns into one that only a person can fix.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e import CLIENT_ID, Daemon, Setup, StartDaemon, authorize, refreshed, wait_for
from tokend.sandbox import Sandbox


def _required(daemon: Daemon, token: str) -> list[dict[str, Any]]:
    return [event for event in daemon.named("action_required") if event.get("token") == token]


def _run_command(command: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run a logged ``tokend …`` command as an operator would paste it."""
    argv = shlex.split(command)
    assert argv[0] == "tokend", command
    return subprocess.run([sys.executable, "-m", "tokend", *argv[1:], *extra],
                          capture_output=True, text=True, timeout=30, check=False,
                          stdin=subprocess.DEVNULL, cwd="/")


def test_a_token_never_authorized_is_named_at_start_with_a_command_that_works(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """One warning for the token that needs a person, none for the healthy one."""
    setup = Setup(tmp_path, sandbox, [("alice", "read"), ("bob", "read")])
    setup.write()
    authorize(setup, "alice", "read")
    daemon = start_daemon(setup.config)
    wait_for(lambda: _required(daemon, "app/bob/read"), 10, "a warning about bob")
    assert not _required(daemon, "app/alice/read")
    (event,) = _required(daemon, "app/bob/read")
    assert event["level"] == "warning" and event["state"] == "not_authorized"
    command = event["command"]
    assert command == f"tokend --config {setup.config.absolute()} authorize app/bob/read"
    assert command in event["action"]
    key = sandbox.authorize(client_id=CLIENT_ID, redirect_uri="urn:ietf:wg:oauth:2.0:oob",
                            scope="read", user="bob")
    result = _run_command(command, f"--key={key}")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: refreshed(daemon, "app/bob/read") >= 1, 10, "bob to be refreshed")
    assert daemon.stop() == 0


def test_a_token_added_by_a_reload_is_named_once(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """A reload warns about the token it added, not again about those already named."""
    setup = Setup(tmp_path, sandbox, [("bob", "read")])
    setup.write()
    daemon = start_daemon(setup.config)
    wait_for(lambda: _required(daemon, "app/bob/read"), 10, "a warning about bob")
    setup.tokens = [("bob", "read"), ("carol", "read")]
    setup.config.write_text(setup.render())
    wait_for(lambda: _required(daemon, "app/carol/read"), 10, "a warning about carol")
    assert daemon.named("config_reloaded")
    assert len(_required(daemon, "app/bob/read")) == 1
    assert "authorize app/carol/read" in _required(daemon, "app/carol/read")[0]["command"]
    assert daemon.stop() == 0


def test_a_refresh_token_refused_by_the_server_is_named_when_it_happens(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """invalid_grant in the middle of the day: the warning says which command brings it back."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    setup.write()
    authorize(setup, "alice", "read")
    daemon = start_daemon(setup.config)
    wait_for(lambda: refreshed(daemon, "app/alice/read") >= 1, 10, "a first refresh")
    assert not _required(daemon, "app/alice/read")
    sandbox.revoke_user("alice")
    wait_for(lambda: _required(daemon, "app/alice/read"), 10, "a warning about alice")
    (event,) = _required(daemon, "app/alice/read")
    assert event["state"] == "needs_authorization"
    assert event["command"].endswith(f"{setup.config.absolute()} authorize app/alice/read")
    assert daemon.stop() == 0
