"""``tokend authorize`` end to end: a person, a browser, the sandbox and a running daemon."""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.e2e import (
    CLIENT_ID,
    CLIENT_SECRET,
    Setup,
    StartDaemon,
    authorize,
    free_port,
    key_from_authorization_page,
    refreshed,
    tokend,
    wait_for,
    with_app_settings,
)
from tokend.errors import PermanentOAuthError
from tokend.factorial import Factorial
from tokend.sandbox import Sandbox

PROMPT = "Authorization required. Follow this link and store your authorization key:"


def _start(config: Path, *args: str, stdin: int | None = subprocess.DEVNULL) -> (
    subprocess.Popen[str]
):
    return subprocess.Popen(
        [sys.executable, "-m", "tokend", "--config", str(config), "authorize", *args],
        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_oob_flow_link_then_key_at_the_prompt_then_token_and_outputs(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The seed's text and link, the key typed at a terminal, and the token in every output."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    setup.write()
    master, slave = pty.openpty()
    process = _start(setup.config, "app/alice", stdin=slave)
    os.close(slave)
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == PROMPT + "\n"
        link = process.stdout.readline().strip()
        assert link.startswith(f"{sandbox.url}/oauth/authorize?client_id=e2e-client&")
        assert "scope=read&" in link or link.endswith("scope=read")
        key = key_from_authorization_page(link, "alice")
        os.write(master, f"{key}\n".encode())
        out, err = process.communicate(timeout=30)
    finally:
        os.close(master)
    assert process.returncode == 0, err
    assert "app/alice/read authorized; access token valid until" in out
    current = tokend("token", "app/alice/read", config=setup.config)
    assert current.returncode == 0
    token = current.stdout.removesuffix("\n")
    same_token = setup.output("alice", "read", "token").read_text() == token
    assert same_token, "token output differs"
    env_text = setup.output("alice", "read", "env").read_text()
    same_env = env_text == f"FACTORIAL_ACCESS_TOKEN={token}\n"
    assert same_env, "env output differs"
    document = json.loads(setup.output("alice", "read", "json").read_text())
    same_json = document["access_token"] == token
    assert same_json, "json output differs"
    assert httpx.get(f"{sandbox.url}/api/v1/me", timeout=5,
                     headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_a_key_on_the_command_line_is_not_asked_for(tmp_path: Path, sandbox: Sandbox) -> None:
    """With --key there is nothing to follow or store: one line, the outcome."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    setup.write()
    key = sandbox.authorize(client_id=CLIENT_ID, redirect_uri="urn:ietf:wg:oauth:2.0:oob",
                            scope="read", user="alice")
    result = tokend("authorize", "app/alice/read", f"--key={key}", config=setup.config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("app/alice/read authorized; access token valid until ")
    assert len(result.stdout.splitlines()) == 1, result.stdout


@pytest.mark.parametrize("source", ["stdin", "file"])
def test_a_key_from_stdin_or_a_file_stays_off_the_command_line(
    tmp_path: Path, sandbox: Sandbox, source: str
) -> None:
    """--key - reads the key from stdin and --key-file PATH from a file, so it never shows
    in ps or shell history; the outcome is the same as with --key=KEY."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    setup.write()
    key = sandbox.authorize(client_id=CLIENT_ID, redirect_uri="urn:ietf:wg:oauth:2.0:oob",
                            scope="read", user="alice")
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    args = ["--key", "-"] if source == "stdin" else ["--key-file", str(key_file)]
    result = subprocess.run(
        [sys.executable, "-m", "tokend", "--config", str(setup.config), "authorize",
         "app/alice/read", *args],
        input=key + "\n" if source == "stdin" else "", capture_output=True, text=True,
        timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("app/alice/read authorized; access token valid until ")
    on_command_line = any(key in arg for arg in result.args)
    assert not on_command_line
    assert setup.output("alice", "read", "token").exists()


def test_an_empty_or_unreadable_key_source_is_a_usage_error(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Nothing on stdin, or a --key-file that cannot be read: exit 2 naming the source."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    setup.write()
    empty = tokend("authorize", "app/alice/read", "--key", "-", config=setup.config)
    missing = tokend("authorize", "app/alice/read", "--key-file", str(tmp_path / "nope"),
                     config=setup.config)
    assert (empty.returncode, missing.returncode) == (2, 2)
    assert "--key - (stdin) is empty" in empty.stderr
    assert f"cannot read --key-file {tmp_path / 'nope'}" in missing.stderr
    assert sandbox.stats()["authorization_code"] == 0


def _listen_setup(tmp_path: Path, sandbox: Sandbox) -> tuple[Setup, str]:
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    with_app_settings(setup, f"    redirect_uri: {redirect}\n")
    return setup, redirect


def test_listen_flow_the_browser_brings_the_code_and_forgeries_are_refused(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Following the link lands on the listener; a request with another state is refused."""
    setup, redirect = _listen_setup(tmp_path, sandbox)
    process = _start(setup.config, "app/alice/read", "--listen", "--timeout", "20")
    try:
        assert process.stdout is not None
        instruction = process.stdout.readline()
        assert "store your authorization key" not in instruction, "nobody types a key here"
        assert instruction.startswith("Authorization required. Follow this link in a browser")
        link = process.stdout.readline().strip()
        assert "state=" in link
        forged = httpx.get(redirect, params={"code": "forged", "state": "guess"}, timeout=5)
        assert forged.status_code == 400
        page = httpx.get(f"{link}&user=alice", follow_redirects=True, timeout=10)
        assert page.status_code == 200
        assert "close this window" in page.text
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    assert "app/alice/read authorized" in out
    assert sandbox.stats()["authorization_code"] == 1
    assert setup.output("alice", "read", "token").exists()


def test_listen_flow_a_code_caught_on_its_way_is_useless_without_the_verifier(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The link carries a PKCE S256 challenge: a program that catches the redirect's code
    (a squatter, a log) and exchanges it with the client secret is refused, and tokend,
    which holds the verifier, still gets the token with that same code."""
    setup, redirect = _listen_setup(tmp_path, sandbox)
    process = _start(setup.config, "app/alice/read", "--listen", "--timeout", "20")
    try:
        assert process.stdout is not None
        process.stdout.readline()
        link = process.stdout.readline().strip()
        assert "code_challenge_method=S256" in link and "code_challenge=" in link
        approval = httpx.get(f"{link}&user=alice", timeout=10)
        assert approval.status_code == 302
        location = approval.headers["location"]
        code = parse_qs(urlsplit(location).query)["code"][0]
        with Factorial(access_token="", base_url=sandbox.url, timeout=5) as thief, \
                pytest.raises(PermanentOAuthError) as refused:
            thief.obtain_access_token(client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                                      redirect_uri=redirect, authorization_key=code)
        assert refused.value.error == "invalid_grant"
        page = httpx.get(location, timeout=30)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert page.status_code == 200
    assert process.returncode == 0, err
    assert "app/alice/read authorized" in out


def test_listen_refuses_to_start_when_another_program_holds_the_port_on_ipv6_loopback(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A localhost redirect whose port another local program holds on ::1 (where a browser
    may knock) is refused before any link is shown, naming that address."""
    try:
        squatter = socket.socket(socket.AF_INET6)
        squatter.bind(("::1", 0))
    except OSError as error:
        pytest.skip(f"this host has no IPv6 loopback address (::1): {error.strerror}")
    with squatter:
        squatter.listen()
        port = squatter.getsockname()[1]
        setup = Setup(tmp_path, sandbox, [("alice", "read")])
        with_app_settings(setup, f"    redirect_uri: http://localhost:{port}/callback\n")
        result = tokend("authorize", "app/alice/read", "--listen", "--timeout", "2",
                        config=setup.config)
    assert result.returncode == 1
    assert f"cannot listen on [::1]:{port}" in result.stderr, result.stderr
    assert "oauth/authorize" not in result.stdout
    assert sandbox.stats()["authorization_code"] == 0


@pytest.mark.parametrize("secret_is_right", [True, False], ids=["right-secret", "wrong-secret"])
def test_listen_answers_the_browser_after_the_exchange_with_its_real_outcome(
    tmp_path: Path, sandbox: Sandbox, secret_is_right: bool
) -> None:
    """The browser's page says what happened to the code: with the right client secret the
    token is already stored when the page arrives; with a wrong one the page says the
    server refused the client (no secret on it) and the command fails the same way."""
    setup, _redirect = _listen_setup(tmp_path, sandbox)
    wrong = "wrong-client-secret-Pq4v"
    if not secret_is_right:
        (tmp_path / "client.secret").write_text(wrong + "\n")
    process = _start(setup.config, "app/alice/read", "--listen", "--timeout", "20")
    try:
        assert process.stdout is not None
        process.stdout.readline()
        link = process.stdout.readline().strip()
        page = httpx.get(f"{link}&user=alice", follow_redirects=True, timeout=30)
        stored_when_answered = tokend("token", "app/alice/read", config=setup.config)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert wrong not in page.text and CLIENT_SECRET not in page.text, "a secret on the page"
    if secret_is_right:
        assert page.status_code == 200
        assert "tokend is authorized" in page.text and "close this window" in page.text
        assert stored_when_answered.returncode == 0, "the page came before the token was stored"
        assert process.returncode == 0, err
        return
    assert page.status_code == 500
    assert "tokend is not authorized" in page.text
    assert "invalid_client" in page.text
    assert process.returncode == 1
    assert "invalid_client" in err and "authorized" not in out
    assert stored_when_answered.returncode == 1


def test_listen_times_out_with_one_clear_line(tmp_path: Path, sandbox: Sandbox) -> None:
    """Nobody opens the link: exit 1 after --timeout, one line on stderr, no traceback."""
    setup, _redirect = _listen_setup(tmp_path, sandbox)
    started = time.monotonic()
    result = tokend("authorize", "app/alice/read", "--listen", "--timeout", "1",
                    config=setup.config)
    assert result.returncode == 1
    assert result.stderr.startswith("tokend: error: no authorization arrived within 1 s")
    assert len(result.stderr.splitlines()) == 1
    assert time.monotonic() - started < 10
    assert not setup.output("alice", "read", "token").exists()


def test_a_running_daemon_picks_up_an_authorization_within_a_second(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """No restart: the daemon schedules the new token at once (here: refreshes it at once)."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")],
                  defaults_yaml="  refresh_at: 0.1\n  retry: {initial: 1s, max: 4s}\n")
    setup.write()
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
    authorize(setup, "alice", "read")
    wait_for(lambda: refreshed(daemon, "app/alice/read") >= 1, 1.0,
             "the daemon to refresh the newly authorized token")
    status = tokend("status", "--json", config=setup.config)
    document = json.loads(status.stdout)
    assert document["daemon"]["running"] is True
    assert document["daemon"]["pid"] == daemon.process.pid
    assert [row["state"] for row in document["tokens"]] == ["ok"]
    assert status.returncode == 0
    assert daemon.stop() == 0
