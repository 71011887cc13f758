"""``tokend status``, ``token`` and ``check`` as an operator and a monitor run them."""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import (
    CLIENT_SECRET,
    Setup,
    StartDaemon,
    authorize,
    sandbox_with_lifetime,
    tokend,
    wait_for,
    with_app_settings,
)
from tokend.cli.main import build_parser
from tokend.sandbox import Sandbox

USERS = ("alice", "bob", "carol", "dave", "erin")


def _wait_until_expired(setup: Setup, user: str) -> None:
    document = json.loads(setup.output(user, "read", "json").read_text())
    expires = calendar.timegm(time.strptime(document["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
    time.sleep(max(0.0, expires - time.time()) + 0.1)



@pytest.fixture
def short_sandbox() -> Iterator[Sandbox]:
    """Four-second access tokens: long enough to use once, short enough to see expire."""
    with sandbox_with_lifetime(4) as server:
        yield server


def test_status_shows_every_state_and_exits_1_until_all_are_ok(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """ok, failing, needs_authorization, not_authorized and expired, each where it belongs."""
    sandbox = hour_sandbox
    # erin's refresh token outlives its configured lifetime after a second: expired.
    setup = Setup(tmp_path, sandbox, [(user, "read") for user in USERS],
                  {"erin": "        refresh_token_lifetime: 1s\n"})
    setup.write()
    authorize(setup, "erin", "read")
    erin_authorized = time.monotonic()
    for user in ("alice", "bob", "carol"):
        authorize(setup, user, "read")
    sandbox.revoke_user("carol")
    refused = tokend("refresh", "--force", "app/carol", config=setup.config)
    assert refused.returncode == 1
    assert "app/carol/read: needs authorization: invalid_grant" in refused.stdout
    sandbox.inject_fault("status", status=503, grant="refresh_token")
    failing = tokend("refresh", "--force", "app/bob", config=setup.config)
    assert failing.returncode == 1
    assert "app/bob/read: failed, will be retried: temporarily_unavailable (HTTP 503)" in (
        failing.stdout)
    time.sleep(max(0.0, erin_authorized + 1.1 - time.monotonic()))

    text = tokend("status", config=setup.config)
    as_json = tokend("status", "--json", config=setup.config)
    assert (text.returncode, as_json.returncode) == (1, 1)
    rows = {line.split()[0]: line.split()[1] for line in text.stdout.splitlines()
            if line.startswith("app/")}
    expected = {"app/alice/read": "ok", "app/bob/read": "failing",
                "app/carol/read": "needs_authorization", "app/dave/read": "not_authorized",
                "app/erin/read": "expired"}
    assert rows == expected
    document = json.loads(as_json.stdout)
    assert {row["name"]: row["state"] for row in document["tokens"]} == expected
    errors = {row["name"]: row["last_error"] for row in document["tokens"]}
    assert "503" in errors["app/bob/read"] and "invalid_grant" in errors["app/carol/read"]
    assert document["config"] == {"path": str(setup.config), "tokens": 5, "valid": True,
                                  "tokens_from": "config", "error": None}
    alice = setup.output("alice", "read", "token").read_text()
    for output in (text.stdout, as_json.stdout):
        assert alice not in output and CLIENT_SECRET not in output, "status shows a secret"
    only_ok = tokend("status", "app/alice", config=setup.config)
    assert only_ok.returncode == 0


def test_status_json_times_are_iso_8601_utc(tmp_path: Path, hour_sandbox: Sandbox) -> None:
    """Every time is ``YYYY-MM-DDTHH:MM:SSZ`` and matches what the outputs say."""
    setup = Setup(tmp_path, hour_sandbox, [("alice", "read")])
    setup.write()
    authorize(setup, "alice", "read")
    result = tokend("status", "--json", config=setup.config)
    assert result.returncode == 0
    (row,) = json.loads(result.stdout)["tokens"]
    written = json.loads(setup.output("alice", "read", "json").read_text())
    assert row["expires_at"] == written["expires_at"]
    for key in ("refresh_token_expires_at", "next_refresh_at", "last_refresh_at"):
        time.strptime(row[key], "%Y-%m-%dT%H:%M:%SZ")
    assert row["last_error"] is None


def test_status_shows_a_failed_reload_of_the_running_daemon(
    tmp_path: Path, hour_sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """The daemon keeps its last good config; status says so and exits 1."""
    setup = Setup(tmp_path, hour_sandbox, [("alice", "read")])
    setup.write()
    authorize(setup, "alice", "read")
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
    text = setup.render().replace(
        f"client_secret_file: {tmp_path / 'client.secret'}",
        "client_secret_env: TOKEND_TEST_CLI_SECRET")
    setup.config.write_text(text)  # the daemon's environment lacks the variable
    wait_for(lambda: daemon.named("config_reload_failed"), 10, "the reload to fail")
    env = {"TOKEND_TEST_CLI_SECRET": CLIENT_SECRET}
    result = tokend("status", "--json", config=setup.config, env=env)
    assert result.returncode == 1
    status = json.loads(result.stdout)["daemon"]
    assert status["running"] is True and status["last_reload_ok"] is False
    assert "TOKEND_TEST_CLI_SECRET" in status["last_reload_error"]
    assert "last reload FAILED" in tokend("status", config=setup.config, env=env).stdout
    assert daemon.stop() == 0


def test_token_prints_a_valid_token_and_refuses_missing_and_expired_ones(
    tmp_path: Path, short_sandbox: Sandbox
) -> None:
    """`$(tokend token …)` gets the token or fails loudly, never a dead token."""
    setup = Setup(tmp_path, short_sandbox, [("alice", "read"), ("bob", "read")])
    setup.write()
    authorize(setup, "alice", "read")
    valid = tokend("token", "app/alice", config=setup.config)
    assert valid.returncode == 0
    assert valid.stdout == setup.output("alice", "read", "token").read_text() + "\n", "differs"
    missing = tokend("token", "app/bob/read", config=setup.config)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert "no token named 'app/bob/read'" in missing.stderr
    _wait_until_expired(setup, "alice")
    expired = tokend("token", "app/alice/read", config=setup.config)
    assert (expired.returncode, expired.stdout) == (1, "")
    assert "the access token of app/alice/read expired at" in expired.stderr
    assert len(expired.stderr.splitlines()) == 1


def test_check_passes_a_good_setup(tmp_path: Path, sandbox: Sandbox) -> None:
    """A config whose folders can be created and whose secret is readable: exit 0."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    setup.write()
    result = tokend("check", config=setup.config)
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[-1] == "check: OK, 0 warning(s)"


def test_check_finds_an_output_folder_that_cannot_exist(tmp_path: Path, sandbox: Sandbox) -> None:
    """An output below a regular file is a problem: exit 1, the path named."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    setup.write()
    (tmp_path / "out").write_text("a file where the output folder should be")
    result = tokend("check", config=setup.config)
    assert result.returncode == 1
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem:")]
    assert len(problems) == 3
    assert all(f"{tmp_path / 'out'} exists and is not a directory" in p for p in problems)


def test_check_warns_when_the_rate_limit_cannot_keep_up(tmp_path: Path, sandbox: Sandbox) -> None:
    """Tokens needing more refreshes a minute than rate_limit allows: a warning, exit 0."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    with_app_settings(setup, "    rate_limit: 1/hour\n")
    result = tokend("check", config=setup.config)
    assert result.returncode == 0
    assert "warning: application app: its tokens need about" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("check",), "unknown key"),
        (("status", "app/nobody"), "configured tokens: app/alice/read"),
        (("authorize", "app/alice/read"), "no terminal to read the authorization key"),
        (("authorize", "app/alice/read", "--listen"), "--listen needs an http://127.0.0.1"),
    ],
    ids=["config-error", "unknown-name", "no-terminal", "listen-without-loopback"],
)
def test_usage_and_config_errors_exit_2_in_one_line(
    tmp_path: Path, sandbox: Sandbox, args: tuple[str, ...], message: str
) -> None:
    """Exit 2 and one line on stderr with the cause, never a traceback."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    setup.write()
    if args == ("check",):
        setup.config.write_text(setup.render() + "bogus_key: 1\n")
    result = tokend(*args, config=setup.config)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_verb_has_an_example_in_its_help() -> None:
    """`tokend VERB -h` ends with an example to copy."""
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices
    assert isinstance(verbs, dict)
    assert {"authorize", "status", "token", "refresh", "revoke", "check"} <= set(verbs)
    for name, sub in verbs.items():
        assert "example:\n  tokend" in sub.format_help() or name == "token", name
    assert "$(tokend token" in verbs["token"].format_help()
