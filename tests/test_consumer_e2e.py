"""TokenAuth against the sandbox while the daemon rotates the tokens: no request fails."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e import Setup, StartDaemon, refreshed, sandbox_with_lifetime, tokend, wait_for
from tests.requests_like import Adapter, Request, call
from tokend.consumer import TokenAuth
from tokend.sandbox import Sandbox

ROTATIONS = 4
STREAMS = 2
"""Two request loops per token: when one uses a new token first, which kills the old one
at the server, the other may have the old one in flight. That is the 401 TokenAuth retries."""
PAUSE = 0.02


@pytest.fixture
def rotating_sandbox() -> Iterator[Sandbox]:
    """Tokens living 4 s, refreshed at half-life: a rotation every ~2 s, and 2 s of margin
    before a token the daemon is late to replace expires."""
    with sandbox_with_lifetime(4) as server:
        yield server


@dataclass
class Tally:
    """What one client style saw: calls made, HTTP requests sent, calls that failed."""

    calls: int = 0
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, status: int | str) -> None:
        with self.lock:
            self.calls += 1
            if status != 200:
                self.failed.append(str(status))

    def count_sent(self) -> None:
        with self.lock:
            self.sent += 1

    @property
    def retries(self) -> int:
        return self.sent - self.calls


def _sync_httpx(url: str, path: Path, tally: Tally, stop: threading.Event) -> None:
    hooks = {"request": [lambda _request: tally.count_sent()]}
    with httpx.Client(auth=TokenAuth(path), event_hooks=hooks, timeout=10) as client:
        while not stop.wait(PAUSE):
            try:
                tally.record(client.get(url).status_code)
            except httpx.HTTPError as error:
                tally.record(type(error).__name__)


def _async_httpx(url: str, path: Path, tally: Tally, stop: threading.Event) -> None:
    async def count(_request: httpx.Request) -> None:
        tally.count_sent()

    async def stream(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            await asyncio.sleep(PAUSE)
            try:
                tally.record((await client.get(url)).status_code)
            except httpx.HTTPError as error:
                tally.record(type(error).__name__)

    async def main() -> None:
        async with httpx.AsyncClient(auth=TokenAuth(path), timeout=10,
                                     event_hooks={"request": [count]}) as client:
            await asyncio.gather(*(stream(client) for _ in range(STREAMS)))

    asyncio.run(main())


def _requests_style(url: str, path: Path, tally: Tally, stop: threading.Event) -> None:
    """TokenAuth as requests calls it, the request sent for real with httpx (no auth)."""
    auth = TokenAuth(path)

    def send(request: Request) -> int:
        tally.count_sent()
        return httpx.get(url, headers=dict(request.headers), timeout=10).status_code

    adapter = Adapter(send)
    while not stop.wait(PAUSE):
        try:
            tally.record(call(auth, adapter).status_code)
        except httpx.HTTPError as error:
            tally.record(type(error).__name__)


Style = Callable[[str, Path, Tally, threading.Event], None]
STYLES: dict[str, tuple[Style, int, str]] = {
    # style: (client loop, loops started, the output it reads)
    "httpx": (_sync_httpx, STREAMS, "token"),
    "httpx-async": (_async_httpx, 1, "json"),  # one client, STREAMS concurrent tasks
    "requests-style": (_requests_style, STREAMS, "env"),
}


def test_requests_through_token_auth_survive_every_rotation(
    tmp_path: Path, rotating_sandbox: Sandbox, start_daemon: StartDaemon,
    figures: dict[str, str],
) -> None:
    """Each client style calls /api/v1/me with its own token while the daemon rotates it:
    no call fails, and each rotation costs at most one retried request."""
    users = {style: f"user-{style}" for style in STYLES}
    setup = Setup(tmp_path, rotating_sandbox, [(user, "read") for user in users.values()])
    setup.authorized()
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("daemon_started"), 15, "the daemon to start")
    url = f"{rotating_sandbox.url}/api/v1/me"
    stop = threading.Event()
    tallies = {style: Tally() for style in STYLES}
    before = {style: refreshed(daemon, f"app/{user}/read") for style, user in users.items()}
    threads = [
        threading.Thread(target=loop, args=(url, setup.output(users[style], "read", suffix),
                                            tallies[style], stop))
        for style, (loop, count, suffix) in STYLES.items() for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: all(refreshed(daemon, f"app/{user}/read") - before[style] >= ROTATIONS
                             for style, user in users.items()),
                 60, f"{ROTATIONS} rotations of every token")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert daemon.stop() == 0

    for style, tally in tallies.items():
        rotations = refreshed(daemon, f"app/{users[style]}/read") - before[style]
        figures[f"TokenAuth, {style}"] = (
            f"{tally.calls} calls, {len(tally.failed)} failed, {tally.retries} retried, "
            f"during {rotations} rotations")
        assert tally.failed == [], style
        assert tally.calls >= 50, style
        assert tally.retries <= rotations, style


def _rotate_and_use(setup: Setup, url: str) -> None:
    """What another consumer does at the worst moment: the token is refreshed and the new
    one used at once, which kills the one the request in flight carries."""
    assert tokend("refresh", "--force", "app/alice/read", config=setup.config).returncode == 0
    fresh = setup.output("alice", "read", "token").read_text()
    status = httpx.get(url, headers={"Authorization": f"Bearer {fresh}"}).status_code
    assert status == 200  # on its own line: a failure must not print the headers


def test_a_token_killed_in_flight_is_retried_once_with_httpx(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """The request left with the old token, the server refused it (401), the file now holds
    the new one: one retry, and the caller sees only the success."""
    setup = Setup(tmp_path, hour_sandbox, [("alice", "read")]).authorized()
    url = f"{hour_sandbox.url}/api/v1/me"
    sent: list[int] = []

    def on_request(_request: httpx.Request) -> None:
        sent.append(1)
        if len(sent) == 1:
            _rotate_and_use(setup, url)

    auth = TokenAuth(setup.output("alice", "read", "token"))
    with httpx.Client(auth=auth, event_hooks={"request": [on_request]}) as client:
        answer = client.get(url)
    assert (answer.status_code, len(sent)) == (200, 2)


def test_a_token_killed_in_flight_is_retried_once_requests_style(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """The same through the requests-style callable and its response hook."""
    setup = Setup(tmp_path, hour_sandbox, [("alice", "read")]).authorized()
    url = f"{hour_sandbox.url}/api/v1/me"

    def send(request: Request) -> int:
        if adapter.sent == 1:
            _rotate_and_use(setup, url)
        return httpx.get(url, headers=dict(request.headers)).status_code

    adapter = Adapter(send)
    response = call(TokenAuth(setup.output("alice", "read", "env")), adapter)
    assert (response.status_code, adapter.sent) == (200, 2)
    assert [earlier.status_code for earlier in response.history] == [401]
