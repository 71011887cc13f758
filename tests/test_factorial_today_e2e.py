"""Today's Factorial end to end: a resource-scope token and a company token, each from
``tokend authorize`` through a running daemon to its output files, ``status`` and metrics,
against the sandbox over real HTTP; bad scopes are located errors; old scopes unchanged."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e import (
    CLIENT_ID,
    CLIENT_SECRET,
    Setup,
    StartDaemon,
    authorize,
    key_from_authorization_page,
    refreshed,
    tokend,
    wait_for,
)
from tests.test_metrics_e2e import METRICS_YAML, _get, _port, _scrape, _value
from tokend.sandbox import Sandbox

SCOPED = "app/alice/employees+time_off"
COMPANY = "app/carol/employees"
OLD = "app/bob/read"


@pytest.fixture
def factorial() -> Iterator[Sandbox]:
    """A sandbox whose e2e client carries resource scopes; user tokens live 3 s."""
    with Sandbox(access_token_lifetime=3, clients={}) as server:
        server.add_client(CLIENT_ID, CLIENT_SECRET, scopes=["employees", "time_off", "read"])
        yield server


def _printed_link(setup: Setup, name: str) -> str:
    """The link ``tokend authorize NAME`` shows a person (no terminal: it stops after it)."""
    shown = tokend("authorize", name, config=setup.config)
    links = [line for line in shown.stdout.splitlines() if "/oauth/authorize?" in line]
    assert len(links) == 1, shown.stdout + shown.stderr
    return links[0]


def _authorize_by_link(setup: Setup, name: str, user: str) -> tuple[str, str]:
    """A person runs ``tokend authorize NAME`` at a terminal, follows the link as ``user`` and
    types the key at the prompt; the link, and the CLI's last line (after the prompt)."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "tokend", "--config", str(setup.config), "authorize", name],
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(slave)
    try:
        assert process.stdout is not None
        process.stdout.readline()  # the seed's sentence
        link = process.stdout.readline().strip()
        os.write(master, f"{key_from_authorization_page(link, user)}\n".encode())
        out, err = process.communicate(timeout=30)
    finally:
        os.close(master)
    assert process.returncode == 0, err
    return link, out.splitlines()[-1]


def _me(sandbox: Sandbox, token: str) -> httpx.Response:
    return httpx.get(f"{sandbox.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"},
                     timeout=5)


def _status(setup: Setup) -> dict[str, dict[str, object]]:
    result = tokend("status", "--json", config=setup.config)
    return {row["name"]: row for row in json.loads(result.stdout)["tokens"]}


def _current(setup: Setup, name: str) -> str:
    result = tokend("token", name, config=setup.config)
    assert result.returncode == 0, result.stderr
    return result.stdout.removesuffix("\n")


def test_a_resource_scope_token_from_authorization_to_outputs_and_status(
    tmp_path: Path, factorial: Sandbox, start_daemon: StartDaemon
) -> None:
    """``scope: employees time_off``: the link asks for both scopes, the token is named
    ``app/alice/employees+time_off``, is refreshed like any other and lands in its files
    with the server's scope; an old-scope token beside it is named and written as ever."""
    setup = Setup(tmp_path, factorial, [("alice", "employees time_off"), ("bob", "read")])
    setup.write()
    assert "&scope=employees+time_off" in _printed_link(setup, "app/alice")
    link, said = _authorize_by_link(setup, "app/alice/employees time_off", "alice")
    assert "&scope=employees+time_off" in link
    assert "resource_owner_type" not in link
    assert f"{SCOPED} authorized; access token valid until " in said
    assert "&scope=read" in _printed_link(setup, OLD)
    authorize(setup, "bob", "read")

    daemon = start_daemon(setup.config)
    wait_for(lambda: refreshed(daemon, SCOPED) >= 1 and refreshed(daemon, OLD) >= 1, 20,
             "a refresh of both tokens")
    # The token rotates every ~1.5 s: compare reads made one right after the other.
    spaced = "app/alice/employees time_off"
    wait_for(lambda: _current(setup, spaced) == _current(setup, SCOPED), 10,
             "the scope written with a space to name the same token")
    token_file = setup.output("alice", "employees time_off", "token")
    wait_for(lambda: token_file.read_text() == _current(setup, SCOPED), 10,
             "the token file to hold the current token")
    document = json.loads(setup.output("alice", "employees time_off", "json").read_text())
    assert document["scope"] == "employees time_off"
    assert _me(factorial, _current(setup, SCOPED)).json()["scope"] == "employees time_off"
    old = json.loads(setup.output("bob", "read", "json").read_text())
    assert (old["scope"], sorted(old)) == ("read", ["access_token", "expires_at", "scope",
                                                   "token_type"])
    rows = _status(setup)
    assert (rows[SCOPED]["state"], rows[OLD]["state"]) == ("ok", "ok")
    assert rows[SCOPED]["expires_at"] is not None
    assert daemon.stop() == 0


def test_a_company_token_is_published_never_refreshed_and_still_revocable(
    tmp_path: Path, factorial: Sandbox, start_daemon: StartDaemon
) -> None:
    """``resource_owner_type: company``: the link asks for a company token, the answer has
    no expiry; the daemon writes it, never refreshes it (while a user token beside it
    rotates), ``status`` and metrics say ok without an expiry, and a revoke still works."""
    heard = tmp_path / "hook.out"
    hook = f"""        on_refresh: [sh, -c, 'printf "[%s]" "$TOKEND_EXPIRES_AT" > {heard}']\n"""
    setup = Setup(tmp_path, factorial, [("carol", "employees"), ("bob", "read")],
                  extra_token_yaml={"carol": "        resource_owner_type: company\n" + hook},
                  top_level_yaml=METRICS_YAML)
    setup.write()
    assert "resource_owner_type" not in _printed_link(setup, OLD)
    link, said = _authorize_by_link(setup, COMPANY, "carol")
    assert link.endswith("&resource_owner_type=company")
    assert said.endswith(f"{COMPANY} authorized; the access token does not expire")
    assert heard.read_text() == "[]"  # on_refresh ran, and heard of no expiry
    authorize(setup, "bob", "read")
    token = _current(setup, COMPANY)

    daemon = start_daemon(setup.config)
    port = _port(daemon)
    wait_for(lambda: refreshed(daemon, OLD) >= 3, 30, "three refreshes of the user token")
    assert refreshed(daemon, COMPANY) == 0
    refused = [status for _, grant, status in factorial.token_requests()
               if grant == "refresh_token" and status != 200]
    assert refused == [], "a refresh was refused: the company token's, sent in vain"
    unchanged = _current(setup, COMPANY) == token
    assert unchanged, "the company token changed"
    written = setup.output("carol", "employees", "token").read_text() == token
    assert written, "the token file does not hold the company token"
    env_file = setup.output("carol", "employees", "env").read_text() == (
        f"FACTORIAL_ACCESS_TOKEN={token}\n")
    assert env_file, "the env file does not hold the company token"
    document = json.loads(setup.output("carol", "employees", "json").read_text())
    assert (document["expires_at"], document["scope"]) == (None, "employees")
    handed = json.loads(tokend("token", COMPANY, "--format", "json", config=setup.config).stdout)
    assert handed["expires_at"] is None
    mentions = [event for event in daemon.events() if event.get("token") == COMPANY]
    assert len(mentions) < 5, mentions  # published once, not worked on in a loop

    row = _status(setup)[COMPANY]
    assert (row["state"], row["expires_at"], row["does_not_expire"]) == ("ok", None, True)
    assert (row["refresh_token_expires_at"], row["next_refresh_at"]) == (None, None)
    assert _status(setup)[OLD]["does_not_expire"] is False
    text = tokend("status", COMPANY, config=setup.config)
    assert text.returncode == 0, text.stdout
    assert "does not expire" in text.stdout.splitlines()[1]
    samples = _scrape(port)
    assert _value(samples, "tokend_token_state", token=COMPANY, state="ok") == 1.0
    assert _value(samples, "tokend_token_expiry_timestamp_seconds", token=COMPANY) is None
    assert _value(samples, "tokend_refresh_token_expiry_timestamp_seconds",
                  token=COMPANY) is None
    assert _value(samples, "tokend_token_expiry_timestamp_seconds", token=OLD) is not None
    health = _get(port, "/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok", "tokens": []})

    forced = tokend("refresh", "--force", COMPANY, config=setup.config)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert forced.stdout == f"{COMPANY}: skipped; it does not expire, so it is never refreshed\n"
    assert all(status == 200 for _, _, status in factorial.token_requests())
    assert _me(factorial, token).status_code == 200
    revoked = tokend("revoke", COMPANY, config=setup.config)
    assert revoked.returncode == 0, revoked.stderr
    assert _me(factorial, token).status_code == 401
    wait_for(lambda: not setup.output("carol", "employees", "token").exists(), 10,
             "the revoked token's file to go")
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    ("scope", "says"),
    [('"emp\\"loyees"', "'\"' (character 4) cannot be in a scope"),
     ('"employees  time_off"', "two spaces or + in a row"),
     ('""', "cannot be empty")],
)
def test_a_bad_scope_is_a_located_config_error(
    tmp_path: Path, factorial: Sandbox, scope: str, says: str
) -> None:
    """``tokend check`` names the file, line and column of a scope no server can grant."""
    setup = Setup(tmp_path, factorial, [("alice", "read")])
    config = setup.write()
    config.write_text(setup.render().replace("scope: read", f"scope: {scope}"))
    line = next(number for number, text in enumerate(config.read_text().splitlines(), 1)
                if "scope:" in text)
    result = tokend("check", config=config)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"config.yaml:{line}:16: applications.app.tokens[0].scope: " in result.stderr
    assert says in result.stderr


def test_a_bad_scope_on_the_command_line_is_a_usage_error(
    tmp_path: Path, factorial: Sandbox
) -> None:
    """``tokend authorize 'app/alice/emp"loyees'`` says the scope is malformed, and why."""
    setup = Setup(tmp_path, factorial, [("alice", "employees")])
    setup.write()
    result = tokend("authorize", 'app/alice/emp"loyees', "--key=k", config=setup.config)
    assert result.returncode == 2
    assert "its scope is malformed: '\"' (character 4) cannot be in a scope" in result.stderr
