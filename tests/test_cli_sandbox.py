"""``tokend sandbox``: the local OAuth server as a command, for testing other programs offline."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.e2e import wait_for
from tokend.factorial import Factorial

OOB = "urn:ietf:wg:oauth:2.0:oob"


def test_the_sandbox_command_serves_the_whole_flow_until_interrupted() -> None:
    """It prints its URL first, serves link -> key -> token -> refresh, and stops on Ctrl-C."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tokend", "sandbox", "--client", "app-1:s3cret-value",
         "--access-token-lifetime", "90s", "--rate-limit", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        link = Factorial.obtain_authorization_link(
            client_id="app-1", redirect_uri=OOB, scope="read", base_url=url
        )
        page = httpx.get(link, timeout=5).text
        match = re.search(r'<code id="authorization_code">([^<]+)</code>', page)
        assert match is not None
        with Factorial(access_token="", base_url=url) as client:
            token = client.obtain_access_token(
                client_id="app-1", client_secret="s3cret-value", redirect_uri=OOB,
                authorization_key=match.group(1),
            )
            assert token.expires_in == 90
            fresh = client.refresh_access_token(
                client_id="app-1", client_secret="s3cret-value",
                refresh_token=token.refresh_token,
            )
        assert fresh.access_token != token.access_token
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0


def test_a_malformed_client_is_a_usage_error() -> None:
    """--client must be ID:SECRET; anything else exits 2 with one line."""
    result = subprocess.run(
        [sys.executable, "-m", "tokend", "sandbox", "--client", "no-secret"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert "ID:SECRET" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def sandbox_command(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``tokend sandbox ARGS`` to completion (for command lines it must refuse, --help)."""
    return subprocess.run(
        [sys.executable, "-m", "tokend", "sandbox", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
        stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"},  # no wrapped help
    )


@pytest.mark.parametrize(
    ("option", "value"),
    [("--port", "99999"), ("--port", "-1"), ("--port", "http"),
     ("--access-token-lifetime", "5min"), ("--access-token-lifetime", "0"),
     ("--refresh-token-lifetime", "a week"), ("--rate-limit", "fast")],
)
def test_a_bad_option_value_is_a_usage_error_naming_the_option(option: str, value: str) -> None:
    """A value the sandbox cannot use exits 2 naming the option and the value, no traceback."""
    result = sandbox_command(option, value)
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert option in last_line and value in last_line, result.stderr


def test_a_busy_port_names_the_address_it_could_not_listen_on() -> None:
    """Another program on the port: one line naming host:port, not a bare errno."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = sandbox_command("--port", str(port))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert "in use" in result.stderr


@contextmanager
def running_sandbox(tmp_path: Path, *args: str) -> Iterator[tuple[str, Path]]:
    """``tokend sandbox ARGS`` in the background: yield its URL and the file of its stdout.

    It is stopped with Ctrl-C at the end and must exit 0.
    """
    out = tmp_path / "sandbox.out"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tokend", "sandbox", "--rate-limit", "off", *args],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        wait_for(lambda: "\n" in out.read_text() or process.poll() is not None, 30,
                 "the sandbox's URL")
        yield out.read_text().partition("\n")[0], out
    finally:
        process.send_signal(signal.SIGINT)
        try:
            status = process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
    assert status == 0


def banner(out: Path) -> str:
    """What the sandbox printed after its URL, once it says how to stop it."""
    wait_for(lambda: "Ctrl-C" in out.read_text(), 10, "the sandbox's banner")
    return out.read_text().partition("\n")[2]


def test_the_banner_names_the_clients_says_it_is_for_testing_and_prints_no_secret(
    tmp_path: Path,
) -> None:
    """Registered client ids and where their secrets come from, never the secrets themselves."""
    with running_sandbox(tmp_path, "--client", "app-1:s3cret-value",
                         "--client", "app-2:0ther-value") as (url, out):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        text = banner(out)
        assert "app-1" in text and "app-2" in text
        assert "--client" in text
        assert "testing" in text and "not Factorial" in text
        leaked = "s3cret-value" in text or "0ther-value" in text
        assert not leaked, "the banner prints a client secret"


def test_the_default_client_is_named_and_its_secret_found_where_the_banner_says(
    tmp_path: Path,
) -> None:
    """Without --client: the banner names the seeded client and points at --help for its
    secret, which the token endpoint then accepts for that client."""
    with running_sandbox(tmp_path) as (url, out):
        text = banner(out)
        match = re.search(r"client ([\w.-]+)", text)
        assert match is not None, text
        client_id = match.group(1)
        assert "tokend sandbox --help" in text
        help_text = sandbox_command("--help").stdout
        secret_match = re.search(rf"\b{re.escape(client_id)}:(\S+?)\)", help_text)
        assert secret_match is not None, help_text
        secret = secret_match.group(1)
        leaked = secret in text
        assert not leaked, "the banner prints the default client's secret"
        answer = httpx.post(f"{url}/oauth/token", timeout=5, data={
            "grant_type": "refresh_token", "refresh_token": "no-such-token",
            "client_id": client_id, "client_secret": secret})
        assert answer.json()["error"] == "invalid_grant"  # not invalid_client: the secret works


def test_the_root_page_says_it_is_a_test_server_and_lists_what_it_serves(
    tmp_path: Path,
) -> None:
    """GET / on the running command: a page naming the sandbox, not a 404 JSON body."""
    with running_sandbox(tmp_path, "--access-token-lifetime", "90s") as (url, _out):
        page = httpx.get(f"{url}/", timeout=5)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "tokend" in page.text and "not Factorial" in page.text
        for endpoint in ("/oauth/authorize", "/oauth/token", "/oauth/revoke", "/api/v1/me",
                         "/_sandbox/"):
            assert endpoint in page.text, endpoint
        assert "1m 30s" in page.text  # the access-token lifetime it was started with


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_a_non_loopback_host_is_refused_without_allow_remote(host: str) -> None:
    """Its admin API has no authentication: listening where other hosts reach it must be
    asked for with --allow-remote; otherwise a usage error naming the host and the flag,
    before anything is bound."""
    try:
        result = sandbox_command("--host", host, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the sandbox started serving on {host}")
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert host in result.stderr and "--allow-remote" in result.stderr
    assert result.stdout == ""


def test_the_banner_says_the_admin_api_is_unauthenticated_and_for_testing(
    tmp_path: Path,
) -> None:
    """Whoever reads the banner learns the server is a test tool anyone on it can drive."""
    with running_sandbox(tmp_path) as (_url, out):
        text = banner(out)
    assert "for testing" in text
    assert "no authentication" in text


def test_clients_come_from_a_file_and_the_environment_without_the_command_line(
    tmp_path: Path,
) -> None:
    """--client-file (one ID:SECRET a line) and $TOKEND_SANDBOX_CLIENTS register clients
    whose secrets never appear in ps; the token endpoint accepts each secret."""
    clients = tmp_path / "clients"
    clients.write_text("file-app:f1le-s3cret-value\n\n")
    clients.chmod(0o600)
    os.environ["TOKEND_SANDBOX_CLIENTS"] = "env-app:env-s3cret-value"
    try:
        with running_sandbox(tmp_path, "--client-file", str(clients)) as (url, out):
            text = banner(out)
            answers = {
                client_id: httpx.post(f"{url}/oauth/token", timeout=5, data={
                    "grant_type": "refresh_token", "refresh_token": "no-such-token",
                    "client_id": client_id, "client_secret": secret}).json()["error"]
                for client_id, secret in (("file-app", "f1le-s3cret-value"),
                                          ("env-app", "env-s3cret-value"))}
    finally:
        del os.environ["TOKEND_SANDBOX_CLIENTS"]
    assert answers == {"file-app": "invalid_grant", "env-app": "invalid_grant"}
    assert "file-app" in text and "env-app" in text
    leaked = "f1le-s3cret-value" in text or "env-s3cret-value" in text
    assert not leaked, "the banner prints a client secret"


def test_an_unreadable_or_malformed_client_file_is_a_usage_error(tmp_path: Path) -> None:
    """A missing file, or a line that is not ID:SECRET, exits 2 naming the file (and line),
    never echoing the line (it may hold a secret)."""
    missing = sandbox_command("--client-file", str(tmp_path / "nope"))
    bad = tmp_path / "clients"
    bad.write_text("ok-app:s3cret-value\nno-colon-s3cret\n")
    malformed = sandbox_command("--client-file", str(bad))
    assert (missing.returncode, malformed.returncode) == (2, 2)
    assert str(tmp_path / "nope") in missing.stderr
    assert f"{bad}:2" in malformed.stderr and "ID:SECRET" in malformed.stderr
    assert "no-colon-s3cret" not in malformed.stderr
