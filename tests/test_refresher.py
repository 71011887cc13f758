"""One refresh, unit-tested with httpx.MockTransport, a fake clock and a real store.

Every test runs both ways a refresh is sent: whole in one file thread with the blocking
client (what the daemon does when a file thread is free), and from the event loop.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tokend.engine.landing import RefreshOutcome
from tokend.engine.refresher import Refresher
from tokend.engine.workers import Workers
from tokend.log import SecretMasker
from tokend.model import (
    ApplicationSpec,
    OutputSpec,
    RetryPolicy,
    Secret,
    Token,
    TokenName,
    TokenSpec,
)
from tokend.store.interface import TokenState, Written
from tokend.store.sqlite import SqliteStateStore

NAME = TokenName("app", "alice", "read")
APP = ApplicationSpec(
    name="app", client_id="cid", client_secret=Secret("client-secret-XYZ"),
    base_url="http://127.0.0.1:9", rate_limit=1000.0,
)
OLD = Token("old-access-token-1", "Bearer", 3600, "old-refresh-token-1", "read", 1_000_000)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.value = now

    def now(self) -> float:
        return self.value


def _new_token_body(created_at: int) -> dict[str, object]:
    return {
        "access_token": "new-access-token-2", "token_type": "Bearer", "expires_in": 3600,
        "refresh_token": "new-refresh-token-2", "scope": "read", "created_at": created_at,
    }


@pytest.fixture(autouse=True, params=["in one thread", "from the loop"])
def sent(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How the refreshes of a test are sent (see the module's docstring)."""
    monkeypatch.setattr(sys.modules[__name__], "IN_ONE_THREAD", request.param == "in one thread")
    return str(request.param)


IN_ONE_THREAD = True


def _refresh(
    tmp_path: Path,
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    spec: TokenSpec | None = None,
    force: bool = False,
    before: Callable[[SqliteStateStore], None] | None = None,
) -> tuple[RefreshOutcome, SqliteStateStore, list[httpx.Request]]:
    spec = spec or TokenSpec(name=NAME, outputs=(OutputSpec(tmp_path / "out.token"),))
    store = SqliteStateStore(tmp_path / "state")
    store.save_token(NAME, OLD, now=OLD.created_at)
    if before is not None:
        before(store)
    requests: list[httpx.Request] = []

    def recording(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return handler(request)

    clock = FakeClock(OLD.created_at + 3000.0)

    async def go() -> RefreshOutcome:
        transport = httpx.MockTransport(recording)
        async with httpx.AsyncClient(transport=transport) as http:
            with httpx.Client(transport=transport) as blocking:
                refresher = Refresher(
                    store=store, http=http, clock=clock, masker=SecretMasker(), owner="test",
                    hook_base_env={}, rand=lambda: 0.5,
                    blocking_http=blocking if IN_ONE_THREAD else None,
                )
                try:
                    return await refresher.refresh(spec, APP, force=force)
                finally:
                    refresher.workers.close()

    return asyncio.run(go()), store, requests


def test_a_refresh_commits_then_writes_outputs_then_runs_hooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store holds the new token before the output does, and the hook sees the output."""
    output = tmp_path / "out.token"
    output_at_commit: list[bool] = []
    original_commit = SqliteStateStore.commit

    def spying_commit(
        self: SqliteStateStore, name: TokenName, token: Token, *, generation: int,
        issued_at: float, now: float,
    ) -> Written:
        output_at_commit.append(output.exists())
        return original_commit(self, name, token, generation=generation, issued_at=issued_at,
                               now=now)

    monkeypatch.setattr(SqliteStateStore, "commit", spying_commit)
    seen_by_hook = tmp_path / "hook-saw"
    spec = TokenSpec(
        name=NAME, outputs=(OutputSpec(output),),
        on_refresh=("sh", "-c", f"cat {output} > {seen_by_hook}"),
    )
    store_when_responding: list[bool] = []

    def handler(request: httpx.Request) -> httpx.Response:
        store_when_responding.append(output.exists())
        return httpx.Response(200, json=_new_token_body(OLD.created_at + 3000))

    outcome, store, requests = _refresh(tmp_path, handler, spec=spec)

    assert outcome.result == "ok"
    record = store.get(NAME)
    assert record is not None and record.token is not None
    assert record.token.access_token == "new-access-token-2", "store lacks the new token"
    assert output.read_text() == "new-access-token-2", "output lacks the new token"
    assert seen_by_hook.read_text() == "new-access-token-2", "hook ran before the output"
    assert store_when_responding == [False]
    assert output_at_commit == [False], "an output was written before the commit"
    form = dict(httpx.QueryParams(requests[0].content.decode()))
    assert form["grant_type"] == "refresh_token"
    assert form["refresh_token"] == OLD.refresh_token, "the stored refresh token was not used"


def test_a_token_that_is_not_due_is_left_alone(tmp_path: Path) -> None:
    """Another process refreshed it already: no request goes out."""
    fresh = Token("a-access-token-3", "Bearer", 3600, "a-refresh-token-3", "read", 1_002_990)

    def before(store: SqliteStateStore) -> None:
        store.save_token(NAME, fresh, now=fresh.created_at)

    outcome, _store, requests = _refresh(
        tmp_path, lambda r: httpx.Response(500), before=before
    )
    assert outcome.result == "skipped"
    assert requests == []


def test_a_token_claimed_by_another_process_is_reported_busy(tmp_path: Path) -> None:
    """The store's claim keeps a CLI and the daemon from refreshing the same token."""

    def before(store: SqliteStateStore) -> None:
        assert store.claim(NAME, owner="someone-else", lease=60) is not None

    outcome, _store, requests = _refresh(
        tmp_path, lambda r: httpx.Response(500), before=before
    )
    assert outcome.result == "busy"
    assert requests == []


def test_a_transient_error_backs_off_and_keeps_the_token(tmp_path: Path) -> None:
    """A 503 makes the token failing, schedules a retry within the policy, loses nothing."""
    spec = TokenSpec(name=NAME, retry=RetryPolicy(initial=10, max=600))
    outcome, store, _requests = _refresh(
        tmp_path, lambda r: httpx.Response(503, text="<html>down</html>"), spec=spec
    )
    assert outcome.result == "transient_error"
    record = store.get(NAME)
    assert record is not None and record.token is not None
    assert record.state is TokenState.FAILING
    assert record.token.refresh_token == OLD.refresh_token, "the refresh token was lost"
    assert record.next_attempt_at is not None
    assert 5 <= record.next_attempt_at - (OLD.created_at + 3000.0) <= 10
    assert record.consecutive_failures == 1


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    """A 429 with Retry-After: 120 waits at least two minutes."""
    outcome, store, _requests = _refresh(
        tmp_path,
        lambda r: httpx.Response(429, headers={"Retry-After": "120"}, json={"error": "slow"}),
    )
    record = store.get(NAME)
    assert outcome.result == "transient_error"
    assert record is not None and record.next_attempt_at is not None
    assert record.next_attempt_at - (OLD.created_at + 3000.0) >= 120


def test_invalid_grant_needs_authorization_and_runs_on_failure(tmp_path: Path) -> None:
    """A dead refresh token is permanent: the state says a person must act, the hook runs."""
    marker = tmp_path / "failed"
    spec = TokenSpec(name=NAME, on_failure=("sh", "-c", f'echo "$TOKEND_TOKEN" > {marker}'))
    outcome, store, _requests = _refresh(
        tmp_path,
        lambda r: httpx.Response(400, json={"error": "invalid_grant", "error_description": "x"}),
        spec=spec,
    )
    record = store.get(NAME)
    assert outcome.result == "permanent_error"
    assert record is not None and record.state is TokenState.NEEDS_AUTHORIZATION
    assert record.last_error is not None and "invalid_grant" in record.last_error
    assert record.token is not None, "the token was deleted"
    assert marker.read_text().strip() == str(NAME)


def test_an_output_failure_keeps_the_committed_token(tmp_path: Path) -> None:
    """When an output cannot be written, the new token is still safe in the store."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    spec = TokenSpec(name=NAME, outputs=(OutputSpec(blocker / "out.token"),))
    outcome, store, _requests = _refresh(
        tmp_path, lambda r: httpx.Response(200, json=_new_token_body(1_003_000)), spec=spec
    )
    record = store.get(NAME)
    assert outcome.result == "ok"
    assert record is not None and record.token is not None
    assert record.token.refresh_token == "new-refresh-token-2", "the new token was lost"


@pytest.mark.parametrize("body", ["{", json.dumps({"access_token": "x"})])
def test_a_malformed_success_body_is_transient(tmp_path: Path, body: str) -> None:
    """A 200 that is not a token keeps the old refresh token and retries."""
    outcome, store, _requests = _refresh(
        tmp_path, lambda r: httpx.Response(200, text=body)
    )
    record = store.get(NAME)
    assert outcome.result == "transient_error"
    assert record is not None and record.token is not None
    assert record.token.refresh_token == OLD.refresh_token, "the refresh token was lost"


def test_a_refresh_runs_whole_in_a_free_file_thread_else_from_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sent: str
) -> None:
    """With a file thread free, the request and the commit happen in that one thread. With
    the only file thread busy (stuck on a hung mount, say) the request goes out from the
    event loop, the commit from the store's own thread, and the token is refreshed all the
    same once the outputs can be written."""
    output = tmp_path / "out.token"
    spec = TokenSpec(name=NAME, outputs=(OutputSpec(output),))
    store = SqliteStateStore(tmp_path / "state")
    store.save_token(NAME, OLD, now=OLD.created_at)
    threads: dict[str, str] = {}
    original_commit = SqliteStateStore.commit

    def spying_commit(self: SqliteStateStore, name: TokenName, token: Token, *,
                      generation: int, issued_at: float, now: float) -> Written:
        threads["commit"] = threading.current_thread().name
        return original_commit(self, name, token, generation=generation, issued_at=issued_at,
                               now=now)

    def handler(request: httpx.Request) -> httpx.Response:
        threads["request"] = threading.current_thread().name
        return httpx.Response(200, json=_new_token_body(OLD.created_at + 3000))

    monkeypatch.setattr(SqliteStateStore, "commit", spying_commit)
    hung = threading.Event()

    async def go() -> RefreshOutcome:
        workers = Workers(output_threads=1)
        transport = httpx.MockTransport(handler)
        stuck = None
        if sent == "from the loop":
            stuck = asyncio.ensure_future(workers.files(hung.wait))
            await asyncio.sleep(0.05)
            asyncio.get_running_loop().call_later(0.3, hung.set)
        async with httpx.AsyncClient(transport=transport) as http:
            with httpx.Client(transport=transport) as blocking:
                refresher = Refresher(
                    store=store, http=http, clock=FakeClock(OLD.created_at + 3000.0),
                    masker=SecretMasker(), owner="test", hook_base_env={}, workers=workers,
                    blocking_http=blocking,
                )
                try:
                    return await refresher.refresh(spec, APP)
                finally:
                    hung.set()
                    if stuck is not None:
                        await stuck
                    workers.close()

    outcome = asyncio.run(go())
    assert outcome.result == "ok"
    assert output.read_text() == "new-access-token-2"
    if sent == "in one thread":
        assert threads["request"].startswith("tokend-files"), threads
        assert threads["commit"] == threads["request"], threads
    else:
        assert threads["request"] == "MainThread", threads
        assert threads["commit"].startswith("tokend-store"), threads
