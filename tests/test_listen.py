"""``authorize --listen``: the one-shot listener takes the real redirect and nothing else."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tokend.cli.check import check_config
from tokend.cli.listen import ListenAddress, Listener, listen_address
from tokend.config.load import load_config
from tokend.errors import ConfigError, TokendError

STATE = "expected-state-value"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://127.0.0.1:8765/callback", ListenAddress("127.0.0.1", 8765, "/callback")),
        ("http://localhost:9000", ListenAddress("localhost", 9000, "/")),
        ("urn:ietf:wg:oauth:2.0:oob", None),
        ("https://127.0.0.1:8765/callback", None),
        ("http://example.com:8765/callback", None),
        ("http://127.0.0.1/callback", None),
    ],
)
def test_only_loopback_http_with_a_port_can_be_listened_on(
    uri: str, expected: ListenAddress | None
) -> None:
    """--listen works for a loopback http redirect with a port only."""
    assert listen_address(uri) == expected


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("LOCALHOST", True), ("10.0.0.1", False), ("0.0.0.0", False), ("::", False),
    ("example.com", False), ("localhost.example.com", False),
])
def test_check_listen_and_the_metrics_listener_agree_on_loopback(
    tmp_path: Path, host: str, loopback: bool
) -> None:
    """One rule (127.0.0.0/8, ::1, localhost in any case) for the three places that ask:
    ``tokend check`` warns about plain http to any other host, ``authorize --listen``
    listens on a loopback redirect, the metrics listener needs ``allow_remote`` elsewhere.
    They used to disagree on 127.0.0.2, ::1 and LOCALHOST."""
    in_url = f"[{host}]" if ":" in host else host
    path = tmp_path / "config.yaml"
    app = ("applications:\n  app:\n    client_id: abc\n    client_secret: s3cr3t-value\n"
           f"    redirect_uri: http://{in_url}:8765/callback\n"
           "    tokens:\n      - user: alice\n        scope: read\n")
    path.write_text(f"state_dir: {tmp_path}/state\n" + app)
    report = check_config(load_config(path, environ={}), lifetimes=dict)
    warned = any("redirect_uri uses plain http" in warning for warning in report.warnings)
    listened = listen_address(f"http://{in_url}:8765/callback") is not None
    path.write_text(f"state_dir: {tmp_path}/state\nmetrics: {{listen: '{in_url}:9464'}}\n" + app)
    try:
        load_config(path, environ={})
    except ConfigError as error:
        refusal = str(error)
    else:
        refusal = ""
    assert refusal == "" or "is not a loopback address" in refusal, refusal
    metrics_allowed = refusal == ""
    assert (not warned, listened, metrics_allowed) == (loopback, loopback, loopback)


def test_a_redirect_to_ipv6_loopback_is_caught_on_ipv6() -> None:
    """``http://[::1]:PORT/`` is listened on at ::1, where the browser will knock."""
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        port = sock.getsockname()[1]
    address = listen_address(f"http://[::1]:{port}/callback")
    assert address == ListenAddress("::1", port, "/callback")
    listener = Listener(address, STATE)
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(listener.wait(5.0, _exchanged)))
    thread.start()
    page = httpx.get(f"http://[::1]:{port}/callback", params={"code": "c6", "state": STATE},
                     timeout=5)
    thread.join(10)
    assert page.status_code == 200
    assert result == ["token-for-c6"]


def _ipv6_loopback_port() -> int:
    """A free port on ::1 that is also free on 127.0.0.1, or skip: no IPv6 loopback here."""
    for _ in range(20):
        try:
            with socket.socket(socket.AF_INET6) as sock:
                sock.bind(("::1", 0))
                port: int = sock.getsockname()[1]
        except OSError as error:
            pytest.skip(f"this host has no IPv6 loopback address (::1): {error.strerror}")
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no port free on both loopback addresses")


def test_a_squatter_on_ipv6_loopback_stops_a_localhost_listener() -> None:
    """A browser may resolve localhost to ::1: another local user listening there on the
    redirect's port would receive the code. tokend refuses to start, naming that address."""
    port = _ipv6_loopback_port()
    with socket.socket(socket.AF_INET6) as squatter:
        squatter.bind(("::1", port))
        squatter.listen()
        with pytest.raises(TokendError, match=rf"cannot listen on \[::1\]:{port}"):
            Listener(listen_address(f"http://localhost:{port}/cb") or _none(), STATE)
    with socket.socket() as free:
        free.bind(("127.0.0.1", port))  # the IPv4 half was released again


def test_localhost_is_listened_on_at_every_loopback_address() -> None:
    """Whichever address the browser picks for localhost, the listener answers there."""
    port = _ipv6_loopback_port()
    listener = Listener(listen_address(f"http://localhost:{port}/cb") or _none(), STATE)
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(listener.wait(5.0, _exchanged)))
    thread.start()
    forged = httpx.get(f"http://127.0.0.1:{port}/cb", params={"state": "x"}, timeout=5)
    page = httpx.get(f"http://[::1]:{port}/cb", params={"code": "c7", "state": STATE},
                     timeout=5)
    thread.join(10)
    assert (forged.status_code, page.status_code) == (400, 200)
    assert result == ["token-for-c7"]


def _none() -> ListenAddress:
    raise AssertionError("not a listenable redirect")


def _exchanged(code: str) -> str:
    return f"token-for-{code}"


@pytest.fixture
def listening() -> Iterator[tuple[str, list[object]]]:
    """A listener waiting (up to 5 s) in a thread, exchanging a code with ``_exchanged``;
    the list receives what the exchange returned, or the error."""
    port = free_port()
    listener = Listener(ListenAddress("127.0.0.1", port, "/callback"), STATE)
    result: list[object] = []

    def wait() -> None:
        try:
            result.append(listener.wait(5.0, _exchanged))
        except TokendError as error:
            result.append(error)

    thread = threading.Thread(target=wait)
    thread.start()
    yield f"http://127.0.0.1:{port}/callback", result
    thread.join(10)


def test_the_right_state_brings_the_code_and_a_closing_page(
    listening: tuple[str, list[object]],
) -> None:
    """The browser lands on "you can close this window" and the code reaches tokend."""
    url, result = listening
    page = httpx.get(url, params={"code": "the-code", "state": STATE}, timeout=5)
    assert page.status_code == 200
    assert "close this window" in page.text
    time.sleep(0.1)
    assert result == ["token-for-the-code"]


def test_a_forged_state_is_refused_and_the_listener_keeps_waiting(
    listening: tuple[str, list[object]],
) -> None:
    """A request without the link's state gets 400; the real one still works afterwards."""
    url, result = listening
    forged = httpx.get(url, params={"code": "evil", "state": "guessed"}, timeout=5)
    missing = httpx.get(url, params={"code": "evil"}, timeout=5)
    elsewhere = httpx.get(url.replace("/callback", "/favicon.ico"), timeout=5)
    assert (forged.status_code, missing.status_code, elsewhere.status_code) == (400, 400, 404)
    assert result == []
    httpx.get(url, params={"code": "real", "state": STATE}, timeout=5)
    time.sleep(0.1)
    assert result == ["token-for-real"]


def test_a_refusal_by_the_server_ends_the_wait_with_its_reason(
    listening: tuple[str, list[object]],
) -> None:
    """When the person clicks "deny", tokend says so instead of waiting for the timeout."""
    url, result = listening
    params = {"error": "access_denied", "error_description": "denied", "state": STATE}
    assert httpx.get(url, params=params, timeout=5).status_code == 400
    time.sleep(0.1)
    assert len(result) == 1 and "refused: denied" in str(result[0])


def test_waiting_times_out_with_a_clear_message() -> None:
    """Nobody comes: after the timeout the error says what happened and what to do."""
    listener = Listener(ListenAddress("127.0.0.1", free_port(), "/"), STATE)
    started = time.monotonic()
    with pytest.raises(TokendError, match=r"no authorization arrived within 0\.3 s"):
        listener.wait(0.3, _exchanged)
    assert time.monotonic() - started < 2


def test_a_busy_port_is_a_clear_error() -> None:
    """If something else holds the redirect's port, the error names it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(TokendError, match=f"cannot listen on 127.0.0.1:{port}"):
            Listener(ListenAddress("127.0.0.1", port, "/"), STATE)


def test_the_browser_is_answered_only_after_the_exchange_and_with_its_outcome() -> None:
    """The page comes after the code was used: success says so; a failed exchange gets a
    page saying what failed (masked), and the error still reaches the caller."""
    port = free_port()
    listener = Listener(ListenAddress("127.0.0.1", port, "/"), STATE)
    exchanged = threading.Event()
    failure = TokendError("invalid_client (HTTP 401): client secret-XYZ was refused")

    def exchange(code: str) -> str:
        exchanged.set()
        raise failure

    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            listener.wait(5.0, exchange, describe=lambda error: str(error).replace("XYZ", "***"))
        except TokendError as error:
            outcome.append(error)

    thread = threading.Thread(target=wait)
    thread.start()
    page = httpx.get(f"http://127.0.0.1:{port}/", params={"code": "c", "state": STATE},
                     timeout=5)
    thread.join(10)
    assert exchanged.is_set()
    assert page.status_code == 500
    assert "tokend is not authorized" in page.text
    assert "invalid_client (HTTP 401): client secret-*** was refused" in page.text
    assert "XYZ" not in page.text
    assert outcome == [failure]
