"""One owner per token (DESIGN §2a): every actor that touches a token leaves it right.

Each test drives the refresher, the supervisor, ``tokend authorize`` or the daemon
against the sandbox (or an ``httpx.MockTransport``) the way the findings of the
one-owner issue describe, and checks only what a user sees: the store's record,
the output files, the sandbox's view of the tokens, the daemon's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import (
    CLIENT_ID,
    CLIENT_SECRET,
    Setup,
    StartDaemon,
    refreshed,
    tokend,
    wait_for,
)
from tests.local_server import LocalServer
from tokend.cli.authorize import exchange_and_store
from tokend.engine.refresher import Refresher
from tokend.engine.supervisor import Supervisor
from tokend.log import SecretMasker
from tokend.model import (
    ApplicationSpec,
    Config,
    OutputSpec,
    RetryPolicy,
    Secret,
    Token,
    TokenName,
    TokenSpec,
)
from tokend.oauth.deadline import deadline_client
from tokend.sandbox import Sandbox
from tokend.store.interface import TokenRecord
from tokend.store.sqlite import SqliteStateStore

NAME = TokenName("app", "alice", "read")
OOB = "urn:ietf:wg:oauth:2.0:oob"
# Owners as other processes name themselves; nothing here can prove them dead.
DAEMON = "daemon-host:4242:1"
CLI = "cli-host:4343:1"
# Of a one-hour token: past its refresh point, well before its expiry.
DUE_AGE = 3000.0


class WallClock:
    """The wall clock, off by ``offset`` seconds and steppable, as NTP or a resume steps it."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset



def _app(base_url: str, name: str = "app", *, rate_limit: float = 1000.0,
         concurrency: int = 8, timeout: float = 30.0) -> ApplicationSpec:
    return ApplicationSpec(
        name=name, client_id=CLIENT_ID, client_secret=Secret(CLIENT_SECRET), base_url=base_url,
        rate_limit=rate_limit, concurrency=concurrency, timeout=timeout,
    )


def _config(tmp_path: Path, apps: list[ApplicationSpec], specs: list[TokenSpec],
            *, concurrency: int = 8) -> Config:
    return Config(
        source=tmp_path / "config.yaml", state_dir=tmp_path / "state",
        applications={app.name: app for app in apps}, tokens=tuple(specs),
        concurrency=concurrency,
    )


def _seed(store: SqliteStateStore, name: TokenName, body: Mapping[str, Any],
          *, age: float = 0.0) -> Token:
    """Store a token the sandbox issued as if it had been received ``age`` seconds ago."""
    token = Token(
        access_token=str(body["access_token"]), token_type=str(body["token_type"]),
        expires_in=int(body["expires_in"]), refresh_token=str(body["refresh_token"]),
        scope=str(body["scope"]), created_at=int(body["created_at"] - age),
    )
    store.save_token(name, token, now=time.time() - age)
    return token


def _fake_token(label: str, *, age: float = DUE_AGE) -> Token:
    """A one-hour token for a MockTransport server, issued ``age`` seconds ago."""
    return Token(f"seed-access-{label}", "Bearer", 3600, f"seed-refresh-{label}", "read",
                 int(time.time() - age))


def _answer() -> httpx.Response:
    """A MockTransport token endpoint's answer: a fresh one-hour token pair."""
    return httpx.Response(200, json={
        "access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 3600,
        "refresh_token": secrets.token_urlsafe(16), "scope": "read",
        "created_at": int(time.time()),
    })


def _refresher(store: SqliteStateStore, http: httpx.AsyncClient, *, owner: str = DAEMON,
               clock: WallClock | None = None,
               on_refreshed: Callable[[TokenSpec, Token], None] | None = None,
               blocking: httpx.Client | None = None) -> Refresher:
    """``blocking``: the client a refresh uses when it runs whole in a file thread."""
    return Refresher(
        store=store, http=http, clock=clock or WallClock(), masker=SecretMasker(), owner=owner,
        hook_base_env={"PATH": os.environ.get("PATH", os.defpath)}, on_refreshed=on_refreshed,
        blocking_http=blocking,
    )


def _supervisor(store: SqliteStateStore, refresher: Refresher,
                on_settled: Callable[[], None] = lambda: None) -> Supervisor:
    return Supervisor(store=store, refresher=refresher, clock=WallClock(), masker=SecretMasker(),
                      on_settled=on_settled)


async def _daemon_loop(supervisor: Supervisor, seconds: float,
                       until: Callable[[], bool] = lambda: False) -> None:
    """What the daemon's loop does, for ``seconds`` or until ``until()``: start what is due."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        supervisor.start_due()
        await asyncio.sleep(0.02)


async def _cancel_the_rest() -> None:
    """Cancel the refreshes still running, before their HTTP client closes."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


def _stored(store: SqliteStateStore, name: TokenName = NAME) -> Token:
    record = store.get(name)
    assert record is not None and record.token is not None, f"{name} has no stored token"
    return record.token


def _me(sandbox: Sandbox, access_token: str) -> httpx.Response:
    """What a consumer of the output does with the access token: call the API."""
    return httpx.get(f"{sandbox.url}/api/v1/me",
                     headers={"Authorization": f"Bearer {access_token}"}, timeout=10.0)


# Finding 1: a claim does not protect the commit.


def test_a_clock_step_during_a_refresh_does_not_leave_a_revoked_refresh_token_stored(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """The clock jumps 2 minutes while the daemon waits for a slow answer and an operator
    runs ``tokend refresh --force``: the token keeps refreshing, it does not end up
    needing a new authorization."""
    sandbox = hour_sandbox
    spec, app, clock = TokenSpec(name=NAME), _app(sandbox.url), WallClock()
    daemon_store = SqliteStateStore(tmp_path / "state")
    cli_store = SqliteStateStore(tmp_path / "state")
    _seed(daemon_store, NAME, sandbox.issue_token(client_id=CLIENT_ID, user="alice", scope="read"))

    async def go() -> tuple[str, str]:
        async with httpx.AsyncClient() as http:
            daemon = _refresher(daemon_store, http, clock=clock)
            cli = _refresher(cli_store, http, owner=CLI, clock=clock)
            # The server rotates at once; the daemon hears the answer 2 s later.
            # TODO(new sandbox API): a per-request answer delay instead of a one-shot fault.
            sandbox.inject_fault("delay", seconds=2.0, grant="refresh_token")
            in_flight = asyncio.create_task(daemon.refresh(spec, app, force=True))
            await asyncio.sleep(0.5)
            clock.offset += 120.0
            await cli.refresh(spec, app, force=True)
            await in_flight
            at_server = sandbox.refresh_token_state(_stored(daemon_store).refresh_token)
            following = await daemon.refresh(spec, app, force=True)
            return at_server, following.result

    at_server, following = asyncio.run(go())
    assert at_server == "live", f"the stored refresh token is {at_server} at the server"
    record = daemon_store.get(NAME)
    assert following == "ok" and record is not None and record.state == "ok", (
        f"the next refresh: {following}, {record.state if record else None}"
    )


@pytest.fixture
def trickling_server() -> Iterator[str]:
    """A token endpoint on 127.0.0.1 whose valid answer trickles in a byte every 0.04 s
    (about 8 s in all): every read is on time, the whole answer is not."""
    body = json.dumps({
        "access_token": "trickled-access-token", "token_type": "Bearer", "expires_in": 3600,
        "refresh_token": "trickled-refresh-token", "scope": "read",
        "created_at": int(time.time()),
    }).encode()
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))

    def answer(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the client gave up: that is the point
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            headers, _, rest = request.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in headers.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(rest) < length:
                rest += conn.recv(65536)
            conn.sendall(head)
            for byte in body:
                if server.stopping.wait(0.04):
                    return
                conn.sendall(bytes([byte]))

    with LocalServer(answer) as server:
        yield server.url


@pytest.mark.usefixtures("no_proxy")
@pytest.mark.parametrize("in_one_thread", [True, False], ids=["in one thread", "from the loop"])
def test_a_token_timeout_bounds_the_whole_refresh(
    tmp_path: Path, trickling_server: str, in_one_thread: bool
) -> None:
    """``timeout: 1s`` means the refresh gives up after about a second, even when the
    server keeps sending a byte now and then; the stored token is left as it was."""
    spec, app = TokenSpec(name=NAME, timeout=1.0), _app(trickling_server, timeout=1.0)
    store = SqliteStateStore(tmp_path / "state")
    seeded = _fake_token("alice")
    store.save_token(NAME, seeded, now=time.time() - DUE_AGE)
    error: list[str | None] = []

    async def go() -> str:
        blocking = deadline_client() if in_one_thread else None
        async with httpx.AsyncClient() as http:
            refresher = _refresher(store, http, blocking=blocking)
            try:
                outcome = await refresher.refresh(spec, app, force=True)
            finally:
                refresher.workers.close()
                if blocking is not None:
                    blocking.close()
            error.append(outcome.record.last_error if outcome.record else None)
            return outcome.result

    started = time.monotonic()
    result = asyncio.run(go())
    elapsed = time.monotonic() - started
    assert result == "transient_error" and elapsed < 5.0, (
        f"with a 1 s timeout the refresh took {elapsed:.1f} s and ended {result}"
    )
    assert error == ["timeout: no complete answer within 1 s"]
    kept = _stored(store).refresh_token == seeded.refresh_token
    assert kept, "the stored token changed"


# Finding 3: `tokend authorize` takes no claim.


def _authorize_during_refresh(tmp_path: Path, sandbox: Sandbox, *, revoked: bool,
                              account: str) -> tuple[SqliteStateStore, Token, Config]:
    """The daemon refreshes alice's token (its answer 1 s late) while the operator
    re-authorizes it as ``account``; ``revoked``: the server killed the old grant first."""
    spec, app = TokenSpec(name=NAME), _app(sandbox.url)
    config = _config(tmp_path, [app], [spec])
    daemon_store = SqliteStateStore(tmp_path / "state")
    _seed(daemon_store, NAME, sandbox.issue_token(client_id=CLIENT_ID, user="alice", scope="read"))
    if revoked:
        sandbox.revoke_user("alice")
    sandbox.inject_fault("delay", seconds=1.0, grant="refresh_token")

    async def go() -> Token:
        async with httpx.AsyncClient() as http:
            daemon = _refresher(daemon_store, http)
            in_flight = asyncio.create_task(daemon.refresh(spec, app, force=True))
            await asyncio.sleep(0.3)
            key = sandbox.authorize(client_id=CLIENT_ID, redirect_uri=OOB, scope="read",
                                    user=account)
            cli_store = SqliteStateStore(tmp_path / "state")
            await asyncio.to_thread(exchange_and_store, config, spec, key, store=cli_store,
                                    clock=WallClock(), masker=SecretMasker())
            new = _stored(cli_store)
            await in_flight
            return new

    return daemon_store, asyncio.run(go()), config


def test_reauthorizing_during_a_refresh_of_a_revoked_token_leaves_the_new_token_healthy(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """The operator re-authorizes a revoked token while the daemon still waits for the
    server's invalid_grant: status shows the new token ok, and the daemon keeps it fresh."""
    store, new, config = _authorize_during_refresh(
        tmp_path, hour_sandbox, revoked=True, account="alice"
    )
    record = store.get(NAME)
    assert record is not None and record.token is not None
    kept = record.token.refresh_token == new.refresh_token
    assert kept, "the new authorization was lost"
    assert record.state == "ok", f"the new token is {record.state}: {record.last_error}"

    async def scheduled() -> float | None:
        async with httpx.AsyncClient() as http:
            supervisor = _supervisor(store, _refresher(store, http))
            await supervisor.apply(config)
            return supervisor.next_at()

    assert asyncio.run(scheduled()) is not None, "the daemon never refreshes the new token"


def test_reauthorizing_during_a_refresh_keeps_the_new_authorization(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """The daemon's late answer for the old grant does not replace the token the operator
    just authorized (here as another account, so the server tells the grants apart):
    the stored token works and belongs to the new account."""
    sandbox = hour_sandbox
    store, _new, _unused = _authorize_during_refresh(
        tmp_path, sandbox, revoked=False, account="alice-reauthorized"
    )
    stored = _stored(store)
    assert sandbox.refresh_token_state(stored.refresh_token) == "live"
    me = _me(sandbox, stored.access_token)
    assert me.status_code == 200, me.text
    assert me.json()["user"] == "alice-reauthorized", "the stored token is the old grant's"


# Finding 4: rescan writes a stale snapshot.


class SnapshotOutlivesRefresh(SqliteStateStore):
    """The real store, except that while ``armed``, ``all()`` hands its snapshot back only
    once the refresh in flight has settled: the widest window a busy thread pool opens."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.armed = threading.Event()
        self.settled = threading.Event()

    def all(self) -> list[TokenRecord]:
        records = super().all()
        if self.armed.is_set():
            self.settled.wait(3.0)
        return records


def test_a_rescan_during_a_refresh_leaves_the_new_token_in_the_outputs(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """A ``tokend authorize`` of another token (SIGUSR1, a rescan) while this one refreshes:
    once the refresh is over, the output holds the new access token, not the old one."""
    sandbox = hour_sandbox
    output = tmp_path / "out.token"
    spec, app = TokenSpec(name=NAME, outputs=(OutputSpec(output),)), _app(sandbox.url)
    store = SnapshotOutlivesRefresh(tmp_path / "state")
    old = _seed(store, NAME, sandbox.issue_token(client_id=CLIENT_ID, user="alice", scope="read"),
                age=DUE_AGE)

    async def go() -> None:
        async with httpx.AsyncClient() as http:
            supervisor = _supervisor(store, _refresher(store, http), store.settled.set)
            await supervisor.apply(_config(tmp_path, [app], [spec]))
            store.settled.clear()
            sandbox.inject_fault("delay", seconds=0.5, grant="refresh_token")
            supervisor.start_due()
            await asyncio.sleep(0.1)
            store.armed.set()
            await supervisor.rescan()
            store.armed.clear()
            await _daemon_loop(supervisor, 3.0, until=store.settled.is_set)
            await _daemon_loop(supervisor, 1.0)

    asyncio.run(go())
    stored = _stored(store)
    assert stored.access_token != old.access_token, "the token was not refreshed"
    held = output.read_text()
    current = held == stored.access_token
    assert current, (
        "the output holds the OLD token" if held == old.access_token else "the output is stale"
    )


# Finding 5: a reload during a token's refresh loses the output change.


def test_an_output_added_by_a_reload_during_its_tokens_refresh_is_written_when_it_ends(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """A reload adds an output to a token whose refresh is in flight: the new file appears
    with the current token right after that refresh, not at the next one."""
    sandbox = hour_sandbox
    first, added = tmp_path / "a.token", tmp_path / "b.token"
    app = _app(sandbox.url)
    before = TokenSpec(name=NAME, outputs=(OutputSpec(first),))
    after = TokenSpec(name=NAME, outputs=(OutputSpec(first), OutputSpec(added)))
    store = SqliteStateStore(tmp_path / "state")
    old = _seed(store, NAME, sandbox.issue_token(client_id=CLIENT_ID, user="alice", scope="read"),
                age=DUE_AGE)

    def holds_stored() -> bool:
        return added.exists() and added.read_text() == _stored(store).access_token

    async def go() -> None:
        async with httpx.AsyncClient() as http:
            supervisor = _supervisor(store, _refresher(store, http))
            await supervisor.apply(_config(tmp_path, [app], [before]))
            sandbox.inject_fault("delay", seconds=0.5, grant="refresh_token")
            supervisor.start_due()
            await asyncio.sleep(0.1)
            await supervisor.apply(_config(tmp_path, [app], [after]))
            await _daemon_loop(supervisor, 3.0,
                               until=lambda: _stored(store).access_token != old.access_token)
            await _daemon_loop(supervisor, 2.0, until=holds_stored)

    asyncio.run(go())
    assert _stored(store).access_token != old.access_token, "the token was not refreshed"
    assert added.exists(), "the output added by the reload was not written"
    assert holds_stored(), "the added output does not hold the stored token"


# Finding 6: an output failure during `authorize` leaves the daemon unaware.


def test_a_token_authorized_while_its_output_folder_is_broken_is_refreshed_by_the_daemon(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """``tokend authorize`` stores the token but cannot write its output (the folder's
    place is taken by a file): once the operator fixes the folder, the running daemon
    keeps the token fresh, without a restart or a reload."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    config = setup.write()
    daemon = start_daemon(config)
    wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
    out_dir = setup.output("alice", "read", "token").parent
    out_dir.write_text("")
    key = sandbox.authorize(client_id=CLIENT_ID, redirect_uri=OOB, scope="read", user="alice")
    tokend("authorize", "app/alice/read", f"--key={key}", config=config)
    store = SqliteStateStore(setup.state_dir)
    try:
        record = store.get(NAME)
    finally:
        store.close()
    assert record is not None and record.token is not None, "authorize stored no token"
    out_dir.unlink()
    # Sandbox tokens live 3 s and refresh_at is 0.5: the first refresh is due 1.5 s after.
    wait_for(lambda: refreshed(daemon, "app/alice/read") >= 1, 6,
             "the daemon to refresh the authorized token")
    daemon.stop()


# Finding 7: output problems overwrite token health.


@dataclass(frozen=True)
class _Observed:
    """A revoked token's record at each step, and what the server and hook saw."""

    states: dict[str, tuple[str, str]]
    refresh_requests: int
    on_failure_runs: int


def _revoked_token_whose_outputs_fail_then_heal(tmp_path: Path, sandbox: Sandbox) -> _Observed:
    """The daemon gets invalid_grant for a due token; then a reload cannot write its output
    (the folder's place is taken by a file) and the daemon retries the output for a while;
    the operator fixes the folder, the retries succeed, and the operator reloads again."""
    folder = tmp_path / "out"
    marker = tmp_path / "on_failure.log"
    spec = TokenSpec(
        name=NAME, outputs=(OutputSpec(folder / "alice.token"),),
        on_failure=("sh", "-c", f"echo ran >> {marker}"),
        retry=RetryPolicy(initial=0.2, max=0.4),
    )
    config = _config(tmp_path, [_app(sandbox.url)], [spec])
    store = SqliteStateStore(tmp_path / "state")
    _seed(store, NAME, sandbox.issue_token(client_id=CLIENT_ID, user="alice", scope="read"),
          age=DUE_AGE)
    sandbox.revoke_user("alice")
    states: dict[str, tuple[str, str]] = {}

    def note(step: str) -> None:
        record = store.get(NAME)
        assert record is not None
        states[step] = (str(record.state), record.last_error or "")

    async def go() -> None:
        async with httpx.AsyncClient() as http:
            supervisor = _supervisor(store, _refresher(store, http))
            await supervisor.apply(config)
            await _daemon_loop(supervisor, 3.0, until=marker.exists)
            await _daemon_loop(supervisor, 0.3)
            note("revoked")
            shutil.rmtree(folder)
            folder.write_text("")
            await supervisor.apply(config)
            note("output failed")
            await _daemon_loop(supervisor, 1.0)
            note("output retried")
            folder.unlink()
            await _daemon_loop(supervisor, 1.0)
            note("output healed")
            await supervisor.apply(config)
            await _daemon_loop(supervisor, 1.0)
            note("reloaded")
            await _cancel_the_rest()

    asyncio.run(go())
    runs = len(marker.read_text().splitlines()) if marker.exists() else 0
    return _Observed(states, sandbox.stats()["refresh_token"], runs)


def test_output_problems_never_hide_that_a_token_needs_authorization(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """A revoked token whose output folder breaks and is fixed again shows
    needs_authorization with the server's invalid_grant all along, never failing or ok."""
    observed = _revoked_token_whose_outputs_fail_then_heal(tmp_path, hour_sandbox)
    for step, (state, error) in observed.states.items():
        assert state == "needs_authorization", f"{step}: {state} ({error})"
        assert "invalid_grant" in error, f"{step}: the invalid_grant error is gone: {error}"


def test_a_token_that_needs_authorization_is_not_retried_when_its_outputs_heal(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """Fixing the output folder of a revoked token does not make the daemon send its dead
    refresh token again, nor run on_failure a second time."""
    observed = _revoked_token_whose_outputs_fail_then_heal(tmp_path, hour_sandbox)
    requests, runs = observed.refresh_requests, observed.on_failure_runs
    assert requests == 1, f"the dead refresh token was sent {requests} times"
    assert runs == 1, f"on_failure ran {runs} times"


# Finding 8: the server's clock is compared with the host's.


def _authorize_directly(tmp_path: Path, sandbox: Sandbox, spec: TokenSpec,
                        config: Config) -> SqliteStateStore:
    """``tokend authorize`` for ``spec``, as the real exchange does it."""
    store = SqliteStateStore(tmp_path / "state")
    key = sandbox.authorize(client_id=CLIENT_ID, redirect_uri=OOB, scope="read", user="alice")
    exchange_and_store(config, spec, key, store=store, clock=WallClock(), masker=SecretMasker())
    return store


def test_a_server_clock_50_minutes_behind_does_not_make_a_fresh_token_refresh_in_a_loop(
    tmp_path: Path
) -> None:
    """A one-hour token from a server whose clock is 50 minutes behind is refreshed once
    per hour, not over and over at the rate limit."""
    with Sandbox(access_token_lifetime=3600, clients={CLIENT_ID: CLIENT_SECRET},
                 clock=WallClock(-3000.0)) as sandbox:
        spec, app = TokenSpec(name=NAME), _app(sandbox.url, rate_limit=10.0)
        config = _config(tmp_path, [app], [spec])
        store = _authorize_directly(tmp_path, sandbox, spec, config)

        async def go() -> None:
            async with httpx.AsyncClient() as http:
                supervisor = _supervisor(store, _refresher(store, http))
                await supervisor.apply(config)
                await _daemon_loop(supervisor, 3.0)
                await _cancel_the_rest()

        asyncio.run(go())
        requests = sandbox.stats()["refresh_token"]
    assert requests <= 1, f"{requests} refresh requests in 3 s for a fresh one-hour token"


def test_a_server_clock_ahead_does_not_let_the_output_hold_an_expired_token(
    tmp_path: Path
) -> None:
    """With 4 s tokens from a server whose clock runs 3 s ahead (50 minutes of a one-hour
    token, scaled down), a program reading the output always gets a working token."""
    output = tmp_path / "out.token"
    spec = TokenSpec(name=NAME, outputs=(OutputSpec(output),), refresh_at=0.5)
    with Sandbox(access_token_lifetime=4, clients={CLIENT_ID: CLIENT_SECRET},
                 clock=WallClock(3.0)) as sandbox:
        app = _app(sandbox.url)
        config = _config(tmp_path, [app], [spec])
        store = _authorize_directly(tmp_path, sandbox, spec, config)
        refused: list[float] = []

        async def go() -> None:
            async with httpx.AsyncClient() as http:
                supervisor = _supervisor(store, _refresher(store, http))
                await supervisor.apply(config)
                started = time.monotonic()
                while time.monotonic() - started < 5.0:
                    supervisor.start_due()
                    answer = await http.get(
                        f"{sandbox.url}/api/v1/me",
                        headers={"Authorization": f"Bearer {output.read_text()}"},
                    )
                    if answer.status_code == 401:
                        refused.append(round(time.monotonic() - started, 1))
                    await asyncio.sleep(0.05)
                await _cancel_the_rest()

        asyncio.run(go())
        requests = sandbox.stats()["refresh_token"]
    assert not refused, (
        f"the output held an expired token at {refused} s ({requests} refreshes in 5 s)"
    )


# Finding 9: ordering under overload.


def test_a_throttled_application_does_not_delay_an_idle_one(tmp_path: Path) -> None:
    """24 due tokens of an application limited to 2 refreshes/s do not hold up the one
    due token of another application: it is refreshed at once, not 10 s later."""
    slow = _app("http://127.0.0.1:9", "slow", rate_limit=2.0, concurrency=4)
    idle = _app("http://127.0.0.1:9", "idle", concurrency=4)
    waiting = [TokenSpec(name=TokenName("slow", f"u{i}", "read")) for i in range(24)]
    urgent = TokenSpec(name=TokenName("idle", "alice", "read"))
    store = SqliteStateStore(tmp_path / "state")
    for spec in waiting:  # due longer, and expiring sooner, than the idle app's token
        store.save_token(spec.name, _fake_token(spec.name.user, age=3300),
                         now=time.time() - 3300)
    store.save_token(urgent.name, _fake_token("idle"), now=time.time() - DUE_AGE)
    done: dict[TokenName, float] = {}

    def on_refreshed(spec: TokenSpec, token: Token) -> None:
        done.setdefault(spec.name, time.monotonic())

    async def go() -> float:
        transport = httpx.MockTransport(lambda request: _answer())
        async with httpx.AsyncClient(transport=transport) as http:
            supervisor = _supervisor(store, _refresher(store, http, on_refreshed=on_refreshed))
            await supervisor.apply(
                _config(tmp_path, [slow, idle], [*waiting, urgent], concurrency=4)
            )
            started = time.monotonic()
            await _daemon_loop(supervisor, 4.0, until=lambda: urgent.name in done)
            await _cancel_the_rest()
            return started

    started = asyncio.run(go())
    finished = done.get(urgent.name)
    assert finished is not None, "the idle application's token was not refreshed within 4 s"
    assert finished - started < 2.0, f"it was refreshed {finished - started:.1f} s late"


class ConcurrencyMeter:
    """A MockTransport token endpoint that answers in 0.5 s and counts requests in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0.5)
        finally:
            self.in_flight -= 1
        return _answer()


def test_a_reload_during_a_burst_does_not_raise_concurrency(tmp_path: Path) -> None:
    """With ``concurrency: 4``, a reload (here one that adds more due tokens) in the middle
    of a burst of refreshes never has more than 4 token requests in flight."""
    app = _app("http://127.0.0.1:9", concurrency=4)
    specs = [TokenSpec(name=TokenName("app", f"u{i}", "read")) for i in range(16)]
    store = SqliteStateStore(tmp_path / "state")
    for spec in specs:
        store.save_token(spec.name, _fake_token(spec.name.user), now=time.time() - DUE_AGE)
    meter = ConcurrencyMeter()
    done: set[TokenName] = set()

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(meter.handle)) as http:
            refresher = _refresher(store, http, on_refreshed=lambda spec, _: done.add(spec.name))
            supervisor = _supervisor(store, refresher)
            await supervisor.apply(_config(tmp_path, [app], specs[:8], concurrency=4))
            supervisor.start_due()
            await asyncio.sleep(0.2)
            await supervisor.apply(_config(tmp_path, [app], specs, concurrency=4))
            await _daemon_loop(supervisor, 6.0, until=lambda: len(done) == len(specs))
            await _cancel_the_rest()

    asyncio.run(go())
    assert meter.most <= 4, f"{meter.most} token requests were in flight at once"
    assert len(done) == len(specs), f"only {len(done)} of {len(specs)} tokens were refreshed"


def test_a_rate_limit_change_keeps_the_slots_already_reserved(tmp_path: Path) -> None:
    """Five refreshes are already spaced out over the next 5 s at 1/s when a reload sets
    the rate to 2/s: the next refresh still waits for them, it does not burst."""
    store = SqliteStateStore(tmp_path / "state")

    async def go() -> tuple[list[float], float]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: _answer())) as http:
            refresher = _refresher(store, http)
            before = _app("http://127.0.0.1:9", rate_limit=1.0)
            reserved = [refresher.limiter(before).reserve() for _ in range(5)]
            after = _app("http://127.0.0.1:9", rate_limit=2.0)
            return reserved, refresher.limiter(after).reserve()

    reserved, wait = asyncio.run(go())
    assert reserved[-1] >= 3.9, f"the limiter did not space the first slots: {reserved}"
    assert wait >= 3.9, f"after the rate change the next refresh waits only {wait:.1f} s"


# Finding 10: one executor for everything.


@pytest.mark.parametrize("in_one_thread", [True, False], ids=["in one thread", "from the loop"])
@pytest.mark.parametrize("concurrency", [64, 4])
def test_a_hung_output_mount_does_not_stop_other_tokens_from_being_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, concurrency: int, in_one_thread: bool
) -> None:
    """Outputs on a mount that hangs (fsync never returns) for many tokens: another token,
    whose outputs are elsewhere, still gets its new token committed within seconds, even
    when the stuck tokens outnumber the refresh slots, and when the refreshes run whole in
    file threads, which the hung outputs then hold."""
    hung, fine = tmp_path / "hung", tmp_path / "fine"
    hanging, release = threading.Event(), threading.Event()
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def on_hung_mount(fd: int) -> bool:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False
        return hanging.is_set() and (path == str(hung) or path.startswith(f"{hung}/"))

    def fsync(fd: int) -> None:
        if on_hung_mount(fd):
            release.wait()
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        if on_hung_mount(fd):
            release.wait()
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    # More hung outputs than any shared thread pool has threads (asyncio's default: <= 32).
    stuck = [TokenSpec(name=TokenName("app", f"u{i}", "read"),
                       outputs=(OutputSpec(hung / f"u{i}.token"),)) for i in range(32)]
    other = TokenSpec(name=NAME, outputs=(OutputSpec(fine / "alice.token"),))
    app = _app("http://127.0.0.1:9", concurrency=concurrency)
    store = SqliteStateStore(tmp_path / "state")
    for spec in [*stuck, other]:
        store.save_token(spec.name, _fake_token(spec.name.user), now=time.time() - DUE_AGE)
    seeded = _stored(store).refresh_token

    def endpoint(request: httpx.Request) -> httpx.Response:
        if dict(httpx.QueryParams(request.content.decode())).get("refresh_token") == seeded:
            time.sleep(0.3)  # answered after the others are stuck in their outputs
        return _answer()

    def committed() -> bool:
        return _stored(store).refresh_token != seeded

    async def go() -> bool:
        transport = httpx.MockTransport(endpoint)
        with httpx.Client(transport=transport) as blocking:
            async with httpx.AsyncClient(transport=transport) as http:
                refresher = _refresher(store, http, blocking=blocking if in_one_thread else None)
                supervisor = _supervisor(store, refresher)
                try:
                    await supervisor.apply(_config(tmp_path, [app], [*stuck, other],
                                                   concurrency=concurrency))
                    hanging.set()
                    await _daemon_loop(supervisor, 3.0, until=committed)
                    in_time = committed()
                finally:
                    release.set()  # the mount comes back: every thread can finish
                    refresher.workers.close()
                await _cancel_the_rest()
                return in_time

    before = set(threading.enumerate())
    try:
        in_time = asyncio.run(go())
    finally:
        release.set()
        # The released writes finish (and log) here, not in whatever test runs next.
        for thread in set(threading.enumerate()) - before:
            if thread.name.startswith("tokend-"):
                thread.join(10)
    assert in_time, "the new token was not committed within 3 s while other outputs hung"
