"""The CLI against the shared PostgreSQL store, from two "hosts" (separate state_dirs and
output folders, one database): each sees and changes what the other did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e import Setup, authorize, tokend
from tests.postgres import PostgresServer
from tokend.sandbox import Sandbox

TOKENS = [("alice", "read")]


@pytest.fixture
def hosts(tmp_path: Path, hour_sandbox: Sandbox, postgres_server: PostgresServer,
          postgres_url: str) -> tuple[Setup, Setup]:
    """Two hosts' configs naming one database, each with its own state_dir and outputs."""
    password_file = tmp_path / "db.password"
    password_file.write_text(postgres_server.password + "\n")
    password_file.chmod(0o600)
    pair = []
    for name in ("host-a", "host-b"):
        (tmp_path / name).mkdir()
        setup = Setup(tmp_path / name, hour_sandbox, TOKENS, top_level_yaml=(
            f"store: {postgres_url}\nstore_password_file: {password_file}\n"))
        setup.write()
        pair.append(setup)
    return pair[0], pair[1]


def status(setup: Setup) -> dict[str, dict[str, object]]:
    done = tokend("status", "--json", config=setup.config)
    return {token["name"]: token for token in json.loads(done.stdout)["tokens"]}


def test_check_connects_to_the_shared_store_and_says_so(hosts: tuple[Setup, Setup],
                                                        postgres_url: str) -> None:
    """`tokend check` proves the database answers with the configured password."""
    done = tokend("check", config=hosts[0].config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"store {postgres_url}: connected, schema up to date" in done.stdout


def test_check_reports_a_refused_login_without_the_password(
    hosts: tuple[Setup, Setup], postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """A wrong password is a problem the check names, and the password shows nowhere."""
    wrong = "wrong-" + postgres_server.password
    (tmp_path / "db.password").write_text(wrong + "\n")
    done = tokend("check", config=hosts[0].config)
    assert done.returncode == 1
    assert "password authentication failed" in done.stdout
    leaked = wrong in done.stdout + done.stderr
    assert not leaked, "the password is in the output"


def test_a_token_authorized_on_one_host_is_seen_refreshed_and_revoked_from_another(
    hosts: tuple[Setup, Setup],
) -> None:
    """Authorize on A; B's status shows it ok; B refreshes it and A's `tokend token` hands out
    B's new token; B revokes it; A's status shows it not authorized."""
    first, second = hosts
    authorize(first, "alice", "read")
    assert status(second)["app/alice/read"]["state"] == "ok"
    refreshed = tokend("refresh", "--force", "app/alice/read", config=second.config)
    assert refreshed.returncode == 0, refreshed.stdout + refreshed.stderr
    token = tokend("token", "app/alice/read", config=first.config)
    assert token.returncode == 0, token.stderr
    written_on_b = second.output("alice", "read", "token").read_text()
    same = token.stdout.strip() == written_on_b
    assert same, "host A's `tokend token` is not the token host B refreshed"
    revoked = tokend("revoke", "app/alice/read", config=second.config)
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert status(first)["app/alice/read"]["state"] == "not_authorized"


def test_status_says_when_the_shared_store_cannot_be_reached(
    hosts: tuple[Setup, Setup], postgres_server: PostgresServer, postgres_url: str,
) -> None:
    """`tokend status` names the database it cannot reach and why, never the password."""
    postgres_server.stop()
    try:
        done = tokend("status", config=hosts[0].config)
    finally:
        postgres_server.start()
    assert done.returncode != 0
    assert postgres_url in done.stderr
    assert "Connection refused" in done.stderr
    leaked = postgres_server.password in done.stdout + done.stderr
    assert not leaked, "the password is in the output"
