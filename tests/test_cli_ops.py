"""``tokend refresh`` and ``revoke`` by hand, with and without a running daemon."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e import (
    CLIENT_ID,
    Setup,
    StartDaemon,
    authorize,
    refreshed,
    stored_refresh_token,
    tokend,
    wait_for,
)
from tokend.sandbox import Sandbox

TOKENS = [("alice", "read"), ("bob", "read"), ("carol", "read")]




def test_refresh_skips_tokens_that_are_not_due(tmp_path: Path, hour_sandbox: Sandbox) -> None:
    """Without --force only due tokens are refreshed; the others say when they will be."""
    sandbox = hour_sandbox
    setup = Setup(tmp_path, sandbox, TOKENS[:2])
    setup.write()
    authorize(setup, "alice", "read")
    result = tokend("refresh", config=setup.config)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("app/alice/read: skipped; not due until ")
    assert lines[1].startswith("app/bob/read: skipped; not authorized")
    assert sandbox.stats()["refresh_token"] == 0
    named = tokend("refresh", "app/bob/read", config=setup.config)
    assert named.returncode == 1, "a named token that cannot be refreshed is a failure"


def test_forced_refresh_writes_outputs_and_runs_hooks_like_the_daemon(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """--force rotates the token, rewrites every output and runs on_refresh."""
    marker = tmp_path / "hook.log"
    hook = f"        on_refresh: [sh, -c, 'echo \"$TOKEND_TOKEN\" >> {marker}']\n"
    setup = Setup(tmp_path, sandbox, TOKENS[:1], {"alice": hook})
    setup.write()
    authorize(setup, "alice", "read")
    before = setup.output("alice", "read", "token").read_text()
    result = tokend("refresh", "--force", config=setup.config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("app/alice/read: refreshed; valid until ")
    after = setup.output("alice", "read", "token").read_text()
    assert after != before, "the output still holds the old token"
    assert tokend("token", "app/alice", config=setup.config).stdout == after + "\n", "differs"
    assert marker.read_text().splitlines() == ["app/alice/read", "app/alice/read"]


def test_concurrent_refreshes_and_a_daemon_never_refresh_a_token_twice(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """Every refresh request the sandbox saw is one committed rotation; none was refused."""
    # refresh_at 0.3: the daemon wants each token again ~1 s after any rotation, so it
    # keeps competing with the forced CLI refreshes instead of being pushed back by them.
    setup = Setup(tmp_path, sandbox, TOKENS,
                  defaults_yaml="  refresh_at: 0.3\n  retry: {initial: 1s, max: 4s}\n")
    setup.write()
    for user, scope in TOKENS:
        authorize(setup, user, scope)
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
    argv = [sys.executable, "-m", "tokend", "--config", str(setup.config), "refresh", "--force"]
    outputs: list[str] = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        batch = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 stdin=subprocess.DEVNULL, text=True) for _ in range(2)]
        for process in batch:
            out, _ = process.communicate(timeout=30)
            assert process.returncode == 0, out
            outputs.append(out)
    assert daemon.stop() == 0

    cli = sum(line.count(": refreshed;") for line in outputs)
    by_daemon = sum(refreshed(daemon, f"app/{user}/read") for user, _ in TOKENS)
    assert cli >= 2 and by_daemon >= 2, f"too little concurrency to prove much: {cli}, {by_daemon}"

    requests = [status for _at, grant, status in sandbox.token_requests()
                if grant == "refresh_token"]
    assert requests == [200] * len(requests), "a refresh was refused"
    assert sandbox.stats()["refresh_token"] == cli + by_daemon
    assert sandbox.reused_refresh_tokens() == 0, "a refresh token was used twice"
    for user, _ in TOKENS:
        token = stored_refresh_token(setup, user)
        assert token is not None and sandbox.refresh_token_state(token) == "live", user


def test_revoke_kills_the_token_at_the_server_and_removes_the_outputs(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """After revoke the refresh token is dead, the files are gone, the state not_authorized."""
    sandbox = hour_sandbox
    setup = Setup(tmp_path, sandbox, TOKENS[:2])
    setup.write()
    authorize(setup, "alice", "read")
    authorize(setup, "bob", "read")
    refresh_token = stored_refresh_token(setup, "alice")
    assert refresh_token is not None
    result = tokend("revoke", "app/alice", config=setup.config)
    assert result.returncode == 0, result.stderr
    assert "revoked at the server and locally" in result.stdout
    assert sandbox.refresh_token_state(refresh_token) == "revoked"
    assert not any(setup.output("alice", "read", s).exists() for s in ("token", "env", "json"))
    assert setup.output("bob", "read", "token").exists()
    status = json.loads(tokend("status", "--json", config=setup.config).stdout)
    assert [row["state"] for row in status["tokens"]] == ["not_authorized", "ok"]
    assert tokend("token", "app/alice/read", config=setup.config).returncode == 1


def test_revoke_with_a_running_daemon_stops_its_refreshes(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """The daemon forgets a revoked token at once: no refresh, no error, no file brought back."""
    setup = Setup(tmp_path, sandbox, TOKENS[:2])
    setup.write()
    authorize(setup, "alice", "read")
    authorize(setup, "bob", "read")
    daemon = start_daemon(setup.config)
    wait_for(lambda: refreshed(daemon, "app/alice/read") >= 1, 10, "a first refresh")
    assert tokend("revoke", "app/alice/read", config=setup.config).returncode == 0
    alice = refreshed(daemon, "app/alice/read")
    bob = refreshed(daemon, "app/bob/read")
    wait_for(lambda: refreshed(daemon, "app/bob/read") >= bob + 1, 10, "bob to go on")
    time.sleep(0.5)
    assert refreshed(daemon, "app/alice/read") == alice
    assert not daemon.named("needs_authorization") and not daemon.named("refresh_failed")
    assert not setup.output("alice", "read", "token").exists()
    assert daemon.stop() == 0


def test_revoke_keeps_everything_when_the_server_cannot_be_reached(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Nothing is deleted on a failed revoke; --local-only forgets the token anyway."""
    setup = Setup(tmp_path, sandbox, TOKENS[:1])
    setup.write()
    authorize(setup, "alice", "read")
    sandbox.stop()
    failed = tokend("revoke", "app/alice/read", config=setup.config)
    assert failed.returncode == 1
    assert "nothing was deleted" in failed.stderr and "--local-only" in failed.stderr
    assert len(failed.stderr.splitlines()) == 1, failed.stderr
    assert setup.output("alice", "read", "token").exists()
    assert stored_refresh_token(setup, "alice") is not None
    local = tokend("revoke", "--local-only", "app/alice/read", config=setup.config)
    assert local.returncode == 0
    assert "locally only" in local.stdout
    assert not setup.output("alice", "read", "token").exists()
    assert stored_refresh_token(setup, "alice") is None


def test_forced_refresh_with_an_output_it_cannot_write_names_it_and_exits_1(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """`refresh && restart-consumer` must not hand the consumer a stale file: the token's
    line says which output failed, and the exit status is 1."""
    setup = Setup(tmp_path, hour_sandbox, TOKENS[:2])
    setup.write()
    authorize(setup, "alice", "read")
    authorize(setup, "bob", "read")
    blocked = setup.output("alice", "read", "env")
    blocked.unlink()
    blocked.mkdir()  # a folder where the env file should be: the write must fail
    result = tokend("refresh", "--force", config=setup.config)
    assert result.returncode == 1, result.stdout
    alice, bob = result.stdout.splitlines()
    assert alice.startswith("app/alice/read: refreshed, but an output failed: "), alice
    assert str(blocked) in alice, alice
    assert bob.startswith("app/bob/read: refreshed; valid until "), bob


def test_every_time_printed_is_utc_in_one_form(tmp_path: Path, hour_sandbox: Sandbox) -> None:
    """authorize and refresh lines, status --json, the JSON output, the hook's environment
    and the log lines all write UTC as ``2025-01-31T14:05:00Z`` (logs add the fraction of
    the second); ``+00:00`` appears nowhere."""
    marker = tmp_path / "hook.env"
    hook = f"        on_refresh: [sh, -c, 'echo \"$TOKEND_EXPIRES_AT\" >> {marker}']\n"
    setup = Setup(tmp_path, hour_sandbox, TOKENS[:1], {"alice": hook})
    setup.write()
    key = hour_sandbox.authorize(client_id=CLIENT_ID, redirect_uri="urn:ietf:wg:oauth:2.0:oob",
                                 scope="read", user="alice")
    runs = [tokend("authorize", "app/alice/read", f"--key={key}", config=setup.config),
            tokend("refresh", "--force", config=setup.config),
            tokend("status", "--json", config=setup.config)]
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    printed = [run.stdout for run in runs] + [run.stderr for run in runs] + [
        setup.output("alice", "read", "json").read_text(), marker.read_text()]
    assert not any("+00:00" in text for text in printed)
    found = [match for text in printed
             for match in re.findall(r"\d{4}-\d\d-\d\dT[\d:.]+\S*?(?=[\"\s;,]|$)", text)]
    assert len(found) >= 12, found
    bad = [time for time in found if not re.fullmatch(r"[\d-]{10}T\d\d:\d\d:\d\d(\.\d+)?Z", time)]
    assert not bad, bad
