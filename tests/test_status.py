"""``tokend status`` rows: which state an operator sees, and the JSON a monitor reads."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from tokend.cli.status import build_report, daemon_row, render_json, render_text, token_row
from tokend.daemon.status_file import (
    DaemonStatus,
    daemon_tokens,
    read_daemon_status,
    write_daemon_status,
)
from tokend.model import ApplicationSpec, Config, Secret, Token, TokenName, TokenSpec
from tokend.store.interface import TokenRecord, TokenState
from tokend.store.lock import StateDirLock

NAME = TokenName("payroll", "alice", "read")
SPEC = TokenSpec(name=NAME, refresh_token_lifetime=7 * 86400.0)
T0 = 1_700_000_000
ACCESS = "access-token-value-never-shown"
REFRESH = "refresh-token-value-never-shown"


def record(
    *, state: TokenState = TokenState.OK, issued_at: int = T0, created_at: int | None = None,
    with_token: bool = True, last_error: str | None = None, output_error: str | None = None,
) -> TokenRecord:
    """A stored record issued at ``issued_at`` on this host (the server says ``created_at``)."""
    token = Token(ACCESS, "Bearer", 3600, REFRESH, "read",
                  issued_at if created_at is None else created_at)
    return TokenRecord(
        name=NAME, token=token if with_token else None,
        issued_at=float(issued_at) if with_token else None, state=state,
        last_attempt_at=None, last_refresh_at=float(issued_at), last_error=last_error,
        consecutive_failures=1 if state is TokenState.FAILING else 0,
        next_attempt_at=T0 + 60.0 if state is TokenState.FAILING else None,
        generation=1 if with_token else 0, output_error=output_error,
    )


@pytest.mark.parametrize(
    ("stored", "now", "expected"),
    [
        (None, T0, "not_authorized"),
        (record(with_token=False, state=TokenState.NOT_AUTHORIZED), T0, "not_authorized"),
        (record(), T0 + 10, "ok"),
        (record(state=TokenState.FAILING), T0 + 10, "failing"),
        (record(state=TokenState.NEEDS_AUTHORIZATION), T0 + 10, "needs_authorization"),
        (record(), T0 + 3600, "expired"),
        (record(state=TokenState.FAILING), T0 + 4000, "expired"),
        (record(state=TokenState.NEEDS_AUTHORIZATION), T0 + 4000, "needs_authorization"),
        (record(output_error="/run/x: gone"), T0 + 10, "failing"),
        (record(state=TokenState.NEEDS_AUTHORIZATION, output_error="/run/x: gone"), T0 + 10,
         "needs_authorization"),
        (record(output_error="/run/x: gone"), T0 + 3600, "expired"),
        (record(created_at=T0 - 3000), T0 + 1000, "ok"),
        (record(state=TokenState.CLIENT_REJECTED), T0 + 10, "client_rejected"),
        (record(state=TokenState.CLIENT_REJECTED), T0 + 4000, "client_rejected"),
    ],
    ids=["never-stored", "revoked", "fresh", "failing", "refused", "access-expired",
         "failing-and-expired", "refused-and-expired", "outputs-broken",
         "refused-and-outputs-broken", "outputs-broken-and-expired", "server-clock-behind",
         "client-rejected", "client-rejected-and-expired"],
)
def test_state_follows_the_documented_rule(
    stored: TokenRecord | None, now: float, expected: str
) -> None:
    """The state column says what a person must do, even with no daemon running."""
    assert token_row(SPEC, stored, now=now).state == expected


def test_a_dead_refresh_token_is_expired_even_if_the_access_token_lives() -> None:
    """A refresh token past its lifetime can no longer be used: the token is expired."""
    short = TokenSpec(name=NAME, refresh_token_lifetime=60.0)
    assert token_row(short, record(), now=T0 + 61).state == "expired"


def test_row_times_come_from_the_token_and_the_spec() -> None:
    """Access expiry is issue + expires_in, the refresh token's is issue + lifetime, both on
    this host's clock: the server's created_at (here 50 minutes behind) is not used."""
    row = token_row(SPEC, record(created_at=T0 - 3000), now=T0)
    assert row.expires_at == T0 + 3600
    assert row.refresh_token_expires_at == T0 + 7 * 86400
    assert row.next_refresh_at is not None and T0 < row.next_refresh_at < T0 + 3600
    assert row.last_refresh_at == T0


def test_an_output_problem_is_shown_beside_the_last_error() -> None:
    """Broken outputs are named under the token, after any refresh error, marked "outputs:"."""
    alone = token_row(SPEC, record(output_error="/run/x: Read-only file system"), now=T0 + 10)
    assert (alone.state, alone.last_error) == ("failing", "outputs: /run/x: Read-only file system")
    both = token_row(SPEC, record(state=TokenState.NEEDS_AUTHORIZATION, last_error="invalid_grant",
                                  output_error="/run/x: gone"), now=T0 + 10)
    assert (both.state, both.last_error) == (
        "needs_authorization", "invalid_grant; outputs: /run/x: gone")


def _config(tmp_path: Path) -> Config:
    return Config(source=tmp_path / "config.yaml", state_dir=tmp_path / "state",
                  applications={}, tokens=(SPEC,))


def test_a_revoked_token_still_names_an_output_it_could_not_remove() -> None:
    """A dead token left in a file after `tokend revoke` is shown, though nothing is stored."""
    revoked = record(state=TokenState.NOT_AUTHORIZED, with_token=False,
                     output_error="/run/x: cannot remove: Permission denied")
    row = token_row(SPEC, revoked, now=T0 + 10)
    assert (row.state, row.last_error) == (
        "not_authorized", "outputs: /run/x: cannot remove: Permission denied")


def test_json_has_the_documented_schema_and_no_secret(tmp_path: Path) -> None:
    """Monitors get exactly the documented keys, ISO 8601 UTC times, and never a token."""
    config = _config(tmp_path)
    report = build_report(config, [SPEC], [record(last_error="server_error (HTTP 503)")],
                          now=T0 + 10)
    text = render_json(report)
    assert ACCESS not in text and REFRESH not in text, "a token leaked into status --json"
    document = json.loads(text)
    assert set(document) == {"tokens", "daemon", "config"}
    (row,) = document["tokens"]
    assert set(row) == {"name", "state", "expires_at", "does_not_expire",
                        "refresh_token_expires_at", "next_refresh_at", "last_refresh_at",
                        "last_error", "action", "pending_since"}
    assert row["name"] == "payroll/alice/read"
    assert row["expires_at"] == "2023-11-14T23:13:20Z"
    assert row["last_error"] == "server_error (HTTP 503)"
    assert document["daemon"] == {"running": False, "pid": None, "started_at": None,
                                  "last_reload_at": None, "last_reload_ok": None,
                                  "last_reload_error": None}
    assert document["config"] == {"path": str(config.source), "tokens": 1, "valid": True,
                                  "tokens_from": "config", "error": None}


def test_text_shows_relative_times_and_the_last_error(tmp_path: Path) -> None:
    """People read "in 59m" and the error under its token, never a token."""
    report = build_report(_config(tmp_path), [SPEC], [record(last_error="boom")], now=T0 + 60)
    text = render_text(report, now=T0 + 60)
    assert "payroll/alice/read" in text and "in 59m" in text
    assert "last error: boom" in text
    assert "daemon: not running" in text
    assert ACCESS not in text and REFRESH not in text, "a token leaked into status"


def test_daemon_row_reports_a_failed_reload_of_the_running_daemon(tmp_path: Path) -> None:
    """The daemon's own status file is read only while that daemon holds the lock."""
    state = tmp_path / "state"
    state.mkdir()
    write_daemon_status(state, DaemonStatus(pid=1, started_at=T0, config="c.yaml"))
    assert daemon_row(state).running is False
    with StateDirLock(state):
        write_daemon_status(state, DaemonStatus(
            pid=os.getpid(), started_at=T0, config="c.yaml", last_reload_at=T0 + 5,
            last_reload_ok=False, last_reload_error="bad key"))
        row = daemon_row(state)
    assert row.running and row.pid == os.getpid()
    assert row.last_reload_ok is False and row.last_reload_error == "bad key"


def test_report_is_unhealthy_when_any_token_needs_attention(tmp_path: Path) -> None:
    """Exit status 0 only when every listed token is ok."""
    config = _config(tmp_path)
    assert build_report(config, [SPEC], [record()], now=T0).healthy
    assert not build_report(config, [SPEC], [], now=T0).healthy
    assert not build_report(config, [SPEC], [record(output_error="/run/x: gone")], now=T0).healthy


def test_the_daemons_token_list_survives_the_status_file_and_an_older_file_has_none(
    tmp_path: Path,
) -> None:
    """What ``status`` needs of each token of the daemon's config round-trips through
    ``daemon.json``; a file written before the list existed still reads, without one."""
    state = tmp_path / "state"
    state.mkdir()
    spec = TokenSpec(name=NAME, refresh_at=0.5, refresh_token_lifetime=3600.0)
    write_daemon_status(state, DaemonStatus(pid=1, started_at=T0, config="c.yaml",
                                            tokens=daemon_tokens([spec])))
    status = read_daemon_status(state)
    assert status is not None and status.tokens is not None
    assert [token.spec() for token in status.tokens] == [spec]
    (state / "daemon.json").write_text(json.dumps(
        {"pid": 1, "started_at": T0, "config": "c.yaml", "last_reload_at": None,
         "last_reload_ok": True, "last_reload_error": None}))
    older = read_daemon_status(state)
    assert older is not None and older.tokens is None
    bad = {"name": "no-slashes", "refresh_at": 0.5, "refresh_token_lifetime": 1}
    (state / "daemon.json").write_text(json.dumps(
        {"pid": 1, "started_at": T0, "config": "c.yaml", "tokens": [bad]}))
    assert read_daemon_status(state) is None, "a token name that cannot be parsed was accepted"


APP = ApplicationSpec(name="payroll", client_id="payroll-client", client_secret=Secret("s3cr3t"),
                      secret_source="client_secret_file: /etc/tokend/payroll.secret")


def _with_app(tmp_path: Path, *specs: TokenSpec) -> Config:
    return Config(source=tmp_path / "config.yaml", state_dir=tmp_path / "state",
                  applications={"payroll": APP}, tokens=specs)


def test_rejected_credentials_point_at_the_credentials_not_at_authorize(tmp_path: Path) -> None:
    """client_rejected names the client id and where the secret comes from, never the secret."""
    config = _with_app(tmp_path, SPEC)
    report = build_report(config, [SPEC], [record(state=TokenState.CLIENT_REJECTED,
                                                  last_error="invalid_client (HTTP 401)")],
                          now=T0 + 10)
    (row,) = report.tokens
    assert row.action is not None
    assert "payroll-client" in row.action and "client_secret_file: /etc/tokend/payroll.secret" \
        in row.action
    assert "authorize" not in row.action and "s3cr3t" not in render_json(report)
    assert not report.healthy


def test_a_token_that_needs_authorization_says_which_command_to_run(tmp_path: Path) -> None:
    """The action is the exact command, with the config file this status read."""
    config = _with_app(tmp_path, SPEC)
    report = build_report(config, [SPEC], [], now=T0)
    text = render_text(report, now=T0)
    assert f"what to do: run `tokend --config {tmp_path / 'config.yaml'} authorize " \
        "payroll/alice/read`" in text


def test_stored_tokens_the_config_no_longer_names_are_listed_unconfigured(
    tmp_path: Path
) -> None:
    """Listed after the configured ones, with what to do; they do not fail the exit status."""
    gone = TokenName("payroll", "bob", "read")
    stored = [record(), dataclasses.replace(record(), name=gone),
              dataclasses.replace(record(with_token=False, state=TokenState.NOT_AUTHORIZED),
                                  name=TokenName("payroll", "carol", "read"))]
    config = _with_app(tmp_path, SPEC)
    report = build_report(config, [SPEC], stored, now=T0 + 10)
    assert [(row.name, row.state) for row in report.tokens] == [
        ("payroll/alice/read", "ok"), ("payroll/bob/read", "unconfigured")]
    action = report.tokens[1].action
    assert action is not None and "revoke payroll/bob/read" in action
    assert "revoke --local-only payroll/bob/read" in action
    assert report.healthy
    document = json.loads(render_json(report))
    assert document["tokens"][1]["state"] == "unconfigured"
    assert ACCESS not in render_json(report)
    unknown_app = Config(source=config.source, state_dir=config.state_dir, applications={},
                         tokens=(SPEC,))
    without = build_report(unknown_app, [SPEC], stored, now=T0 + 10).tokens[1].action
    assert without is not None and "revoke --local-only" in without
    assert "revoke payroll/bob/read" not in without, "revoking needs the credentials"
