"""The blocking client of a refresh sent from a worker thread: its deadline, and its proxy rule."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.local_server import LocalServer
from tokend.oauth.deadline import deadline_client, request_deadline


@pytest.fixture
def silent_server() -> Iterator[str]:
    """127.0.0.1: accepts, reads the request, never answers."""
    held: list[socket.socket] = []
    with LocalServer(held.append) as server:
        yield server.url
    for conn in held:
        conn.close()


@pytest.mark.usefixtures("no_proxy")
def test_the_deadline_ends_a_request_whose_reads_are_each_allowed_longer(
    silent_server: str,
) -> None:
    """A read timeout of 30 s, a deadline of 0.5 s: the request ends after about 0.5 s, and
    the next request of the thread, outside any deadline, gets its own timeout again."""
    client = deadline_client()
    assert client is not None
    with client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout), request_deadline(0.5):
            client.get(silent_server, timeout=30.0)
        within = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            client.get(silent_server, timeout=1.0)
        afterwards = time.monotonic() - started
    assert within < 5.0, f"the 0.5 s deadline let the request run {within:.1f} s"
    assert afterwards >= 0.9, f"the deadline outlived its block: {afterwards:.2f} s"


def test_behind_a_proxy_the_refreshes_go_out_from_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx sends through its own proxy transport, which knows no deadline: no blocking
    client then, so the daemon sends every refresh from the event loop."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert deadline_client() is None
