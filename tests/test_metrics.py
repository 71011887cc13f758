"""Metrics and the listener, in-process: what a Prometheus scrape and a health check see."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from tokend.cli.status import token_row
from tokend.daemon.metrics_http import MetricsServer
from tokend.engine.hooks import HookResult
from tokend.engine.metrics import TOKEN_STATES, Metrics
from tokend.engine.refresher import Refresher
from tokend.log import SecretMasker
from tokend.model import ApplicationSpec, MetricsSpec, Secret, Token, TokenName, TokenSpec
from tokend.store.interface import TokenRecord, TokenState
from tokend.store.sqlite import SqliteStateStore

NAME = TokenName("app", "alice", "read")
SPEC = TokenSpec(name=NAME, refresh_token_lifetime=7 * 86400.0)
ACCESS = "access-token-SECRET-1"
REFRESH = "refresh-token-SECRET-1"
LIFETIME = 3600
TOKEN = Token(ACCESS, "Bearer", LIFETIME, REFRESH, "read", 1_000_000)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.value = now

    def now(self) -> float:
        return self.value


def record(
    state: TokenState = TokenState.OK, token: Token | None = TOKEN, *, skew: float = 0.0,
    output_error: str | None = None,
) -> TokenRecord:
    """A stored record, issued on this host ``skew`` seconds after the server's created_at."""
    issued = None if token is None else float(token.created_at) + skew
    return TokenRecord(NAME, token, issued, state, None, None, None, 0, None,
                       generation=0 if token is None else 1, output_error=output_error)


def metrics_at(now: float = 1_000_100.0) -> tuple[Metrics, FakeClock]:
    clock = FakeClock(now)
    return Metrics(clock=clock, process=False), clock


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def token_state(spec: TokenSpec, stored: TokenRecord | None, now: float) -> str:
    """What ``/healthz`` says of ``stored`` at ``now``."""
    metrics, _ = metrics_at(now)
    metrics.observe_token(spec, stored)
    (health,) = metrics.tokens()
    return health.state


def states(metrics: Metrics) -> dict[str, float | None]:
    return {
        state: sample(metrics, "tokend_token_state", token=str(NAME), state=state)
        for state in TOKEN_STATES
    }


# --- the values ---------------------------------------------------------------------------


def test_expiry_gauges_follow_the_stored_token() -> None:
    """The access and refresh token expiry timestamps are the stored token's, counted from
    this host's issue time (the server's created_at here is 50 minutes behind)."""
    metrics, _ = metrics_at()
    metrics.observe_token(SPEC, record(skew=3000.0))
    assert sample(metrics, "tokend_token_expiry_timestamp_seconds", token=str(NAME)) == (
        TOKEN.created_at + 3000.0 + LIFETIME)
    assert sample(metrics, "tokend_refresh_token_expiry_timestamp_seconds", token=str(NAME)) == (
        TOKEN.created_at + 3000.0 + 7 * 86400.0)


def test_state_is_one_series_per_state_with_the_current_one_at_1() -> None:
    """All six states are exported, so a dashboard never sees a series vanish."""
    metrics, _ = metrics_at()
    metrics.observe_token(SPEC, record(TokenState.FAILING))
    assert states(metrics) == {
        "ok": 0.0, "failing": 1.0, "needs_authorization": 0.0, "not_authorized": 0.0,
        "client_rejected": 0.0, "expired": 0.0,
    }


def test_a_lapsed_token_shows_expired_without_any_event() -> None:
    """Time alone turns an ok token whose access token lapsed into ``expired``."""
    metrics, clock = metrics_at()
    metrics.observe_token(SPEC, record())
    clock.value = TOKEN.created_at + LIFETIME + 1
    assert states(metrics)["expired"] == 1.0
    assert [(t.name, t.state) for t in metrics.tokens()] == [(str(NAME), "expired")]


def test_broken_outputs_show_an_ok_token_as_failing() -> None:
    """Consumers of an ok token whose files cannot be written read a stale file: failing."""
    metrics, _ = metrics_at()
    metrics.observe_token(SPEC, record(output_error="/run/x: Read-only file system"))
    assert states(metrics)["failing"] == 1.0
    assert [(t.name, t.state) for t in metrics.tokens()] == [(str(NAME), "failing")]


def test_broken_outputs_never_hide_needs_authorization() -> None:
    """A refused token with broken outputs still says a person must authorize it."""
    metrics, _ = metrics_at()
    metrics.observe_token(SPEC, record(TokenState.NEEDS_AUTHORIZATION, output_error="x"))
    assert states(metrics)["needs_authorization"] == 1.0


def test_needs_authorization_wins_over_expired() -> None:
    """A lapsed token that needs a person keeps saying so: authorizing is the fix."""
    late = TOKEN.created_at + LIFETIME + 1.0
    assert token_state(SPEC, record(TokenState.NEEDS_AUTHORIZATION), late) == (
        "needs_authorization")
    assert token_state(SPEC, None, late) == "not_authorized"
    assert token_state(SPEC, record(token=None), late) == "not_authorized"


def test_a_lapsed_refresh_token_is_expired_too() -> None:
    """Past refresh_token_lifetime the token cannot be refreshed any more: ``expired``."""
    short = TokenSpec(name=NAME, refresh_token_lifetime=60.0)
    assert token_state(short, record(), TOKEN.created_at + 30.0) == "ok"
    assert token_state(short, record(), TOKEN.created_at + 61.0) == "expired"


def test_states_match_tokend_status() -> None:
    """/healthz and the metrics name every state exactly as ``tokend status --json`` does."""
    token = Token(ACCESS, "Bearer", 3600, REFRESH, "read", 1_000_000)
    short = TokenSpec(name=NAME, refresh_token_lifetime=600.0)
    cases = itertools.product(TokenState, (token, None), (0.0, 3000.0), (None, "x"),
                              (1_000_010.0, 1_000_700.0, 1_004_000.0, 1_006_000.0), (SPEC, short))
    for state, stored, skew, problem, now, spec in cases:
        stored_record = record(state, stored, skew=skew, output_error=problem)
        assert token_state(spec, stored_record, now) == token_row(
            spec, stored_record, now=now).state, (state, stored is None, skew, problem, now)


def test_an_unauthorized_token_has_a_state_but_no_expiry() -> None:
    """No token yet: state not_authorized, and no made-up expiry timestamp."""
    metrics, _ = metrics_at()
    metrics.observe_token(SPEC, None)
    assert states(metrics)["not_authorized"] == 1.0
    assert sample(metrics, "tokend_token_expiry_timestamp_seconds", token=str(NAME)) is None


def test_refresh_counters_start_at_zero_and_count_by_result() -> None:
    """Every result series exists from the start, so increase() sees the first failure."""
    metrics, _ = metrics_at()
    metrics.observe_token(SPEC, record())
    metrics.refresh_finished(NAME, "ok", 0.2)
    metrics.refresh_finished(NAME, "ok", 0.3)
    metrics.refresh_finished(NAME, "transient_error", 5.0)
    counts = {result: sample(metrics, "tokend_refresh_total", token=str(NAME), result=result)
              for result in ("ok", "transient_error", "permanent_error")}
    assert counts == {"ok": 2.0, "transient_error": 1.0, "permanent_error": 0.0}
    assert sample(metrics, "tokend_refresh_duration_seconds_count") == 3.0
    assert sample(metrics, "tokend_refresh_duration_seconds_sum") == 5.5
    assert sample(metrics, "tokend_refresh_duration_seconds_bucket", le="0.25") == 1.0


def test_hook_runs_are_counted_by_a_small_fixed_set_of_results() -> None:
    """Exit 0, non-zero exit, timeout and a missing program are four results, never more."""
    metrics, _ = metrics_at()
    metrics.observe_token(SPEC, record())
    runs = [HookResult(("x",), 0, False, ""), HookResult(("x",), 3, False, ""),
            HookResult(("x",), None, True, ""), HookResult(("x",), None, False, "", "missing")]
    for run in runs:
        metrics.hook_finished(NAME, "on_refresh", run)
    counts = {result: sample(metrics, "tokend_hook_runs_total", token=str(NAME),
                             hook="on_refresh", result=result)
              for result in ("ok", "failed", "timeout", "not_started")}
    assert counts == {"ok": 1.0, "failed": 1.0, "timeout": 1.0, "not_started": 1.0}


def test_a_removed_token_leaves_no_series_behind() -> None:
    """After a reload drops a token, no series of it is exported, even by a late refresh."""
    metrics, _ = metrics_at()
    metrics.observe_token(SPEC, record())
    metrics.refresh_finished(NAME, "ok", 0.1)
    metrics.hook_finished(NAME, "on_failure", HookResult(("x",), 0, False, ""))
    metrics.forget_token(NAME)
    metrics.refresh_finished(NAME, "ok", 0.1)  # a refresh that was in flight during the reload
    text = metrics.exposition()[0].decode()
    assert str(NAME) not in text
    assert metrics.tokens() == []


def test_reloads_count_by_result_and_remember_the_last_success() -> None:
    """A good reload sets the success time; a bad one counts and flips the gauge to 0."""
    metrics, clock = metrics_at(500.0)
    metrics.config_loaded()
    assert sample(metrics, "tokend_config_last_reload_success_timestamp_seconds") == 500.0
    clock.value = 600.0
    metrics.reload_finished(ok=True)
    clock.value = 700.0
    metrics.reload_finished(ok=False)
    assert sample(metrics, "tokend_config_reload_total", result="ok") == 1.0
    assert sample(metrics, "tokend_config_reload_total", result="error") == 1.0
    assert sample(metrics, "tokend_config_last_reload_success_timestamp_seconds") == 600.0
    assert sample(metrics, "tokend_config_last_reload_successful") == 0.0


def test_rate_limit_waits_add_up_per_application() -> None:
    """Seconds spent waiting for a rate-limit slot add up per application."""
    metrics, _ = metrics_at()
    metrics.rate_limit_waited("payroll", 0.25)
    metrics.rate_limit_waited("payroll", 0.5)
    assert sample(metrics, "tokend_rate_limit_wait_seconds_total", application="payroll") == 0.75


def test_two_daemons_in_one_process_do_not_share_metrics() -> None:
    """Each Metrics has its own registry: no 'duplicated timeseries' error, no shared counts."""
    first, second = Metrics(), Metrics()
    first.observe_token(SPEC, record())
    second.observe_token(SPEC, record())
    first.refresh_finished(NAME, "ok", 0.1)
    assert sample(second, "tokend_refresh_total", token=str(NAME), result="ok") == 0.0
    assert sample(first, "process_cpu_seconds_total") is not None, "no process metrics"


def test_a_registry_can_be_passed_in() -> None:
    """A caller-owned registry receives tokend's metrics."""
    registry = CollectorRegistry()
    Metrics(registry=registry, process=False).reload_finished(ok=True)
    assert registry.get_sample_value("tokend_config_reload_total", {"result": "ok"}) == 1.0


def test_no_secret_reaches_the_exposition() -> None:
    """Neither the access nor the refresh token appears anywhere in a scrape."""
    metrics, _ = metrics_at()
    metrics.observe_token(SPEC, record())
    text = metrics.exposition()[0].decode()
    assert ACCESS not in text, "the access token is in the metrics"
    assert REFRESH not in text, "the refresh token is in the metrics"


def test_openmetrics_is_served_when_asked_for() -> None:
    """A Prometheus asking for OpenMetrics gets it; anything else gets the text format."""
    metrics, _ = metrics_at()
    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert metrics.exposition()[1].startswith("text/plain; version=0.0.4")


def test_the_refresher_reports_results_hooks_and_rate_limit_waits(tmp_path: Path) -> None:
    """A real refresh (mocked server) counts an ok, its hook run and its rate-limit wait."""
    store = SqliteStateStore(tmp_path / "state")
    store.save_token(NAME, TOKEN, now=TOKEN.created_at)
    app = ApplicationSpec("app", "cid", Secret("client-secret"), base_url="http://127.0.0.1:9")
    spec = TokenSpec(name=NAME, on_refresh=("true",))
    body = {"access_token": "a2", "token_type": "Bearer", "expires_in": 3600,
            "refresh_token": "r2", "scope": "read", "created_at": TOKEN.created_at + 3000}
    clock = FakeClock(TOKEN.created_at + 3000.0)
    metrics = Metrics(clock=clock, process=False)
    metrics.observe_token(spec, store.get(NAME))

    async def go() -> None:
        transport = httpx.MockTransport(lambda _: httpx.Response(200, json=body))
        async with httpx.AsyncClient(transport=transport) as http:
            refresher = Refresher(store=store, http=http, clock=clock, masker=SecretMasker(),
                                  owner="t", hook_base_env={}, metrics=metrics)
            await refresher.refresh(spec, app)

    asyncio.run(go())
    store.close()
    assert sample(metrics, "tokend_refresh_total", token=str(NAME), result="ok") == 1.0
    assert sample(metrics, "tokend_hook_runs_total", token=str(NAME), hook="on_refresh",
                  result="ok") == 1.0
    assert sample(metrics, "tokend_rate_limit_wait_seconds_total", application="app") == 0.0


# --- the listener -------------------------------------------------------------------------


def serving(
    metrics: Metrics, scenario: Callable[[int], Awaitable[None]], **limits: Any
) -> None:
    """Run ``scenario(port)`` against a listener on a free loopback port."""

    async def go() -> None:
        server = MetricsServer(metrics, MetricsSpec("127.0.0.1", 0), **limits)
        await server.start()
        try:
            await scenario(server.address[1])
        finally:
            await server.close()

    asyncio.run(go())


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


async def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    return await request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def test_metrics_endpoint_serves_the_text_format() -> None:
    """GET /metrics answers 200 with the Prometheus text format, one request per connection,
    and the next scrape shows an event that just happened."""
    metrics, _ = metrics_at()
    metrics.observe_token(SPEC, record())

    async def scenario(port: int) -> None:
        status, headers, body = await get(port, "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert headers["Connection"] == "close"
        assert f'tokend_token_state{{state="ok",token="{NAME}"}} 1.0'.encode() in body
        metrics.refresh_finished(NAME, "ok", 0.1)
        counted = f'tokend_refresh_total{{result="ok",token="{NAME}"}} 1.0'.encode()
        assert counted in (await get(port, "/metrics"))[2], "a scrape right after an event is stale"

    serving(metrics, scenario)


def test_healthz_and_readyz_follow_readiness_and_token_states() -> None:
    """503 while starting; then 200 with every token ok; 503 naming a token that is not."""
    metrics, _ = metrics_at()
    metrics.observe_token(SPEC, record())
    other = TokenSpec(name=TokenName("app", "bob", "read"))

    async def scenario(port: int) -> None:
        assert (await get(port, "/readyz"))[0] == 503
        assert (await get(port, "/healthz"))[0] == 503
        metrics.mark_ready()
        assert (await get(port, "/readyz"))[0] == 200
        status, _, body = await get(port, "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok", "tokens": []})
        metrics.observe_token(other, None)
        status, headers, body = await get(port, "/healthz?verbose=1")
        assert headers["Content-Type"] == "application/json"
        assert (status, json.loads(body)) == (503, {
            "status": "unhealthy", "tokens": [{"name": "app/bob/read", "state": "not_authorized"}],
        })

    serving(metrics, scenario)


def test_bad_requests_get_clear_answers() -> None:
    """Unknown paths, other methods, bodies and garbage get 404, 405, 413 and 400."""
    metrics, _ = metrics_at()

    async def scenario(port: int) -> None:
        assert (await get(port, "/nope"))[0] == 404
        status, headers, _ = await request(port, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert (status, headers["Allow"]) == (405, "GET, HEAD")
        body = b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
        assert (await request(port, body))[0] == 413
        assert (await request(port, b"hello\r\n\r\n"))[0] == 400
        status, headers, body = await request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert (status, body) == (200, b"")
        assert int(headers["Content-Length"]) > 0

    serving(metrics, scenario)


def test_a_huge_request_head_is_refused_without_reading_it_all() -> None:
    """A head past the cap gets 431 and the connection closes; the rest is never buffered."""
    metrics, _ = metrics_at()

    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nX-Junk: " + b"a" * 100_000)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 431 ")

    serving(metrics, scenario, max_head=8192)


def test_a_slow_request_head_is_cut_off() -> None:
    """A client that never finishes its request head gets 408 after the head timeout."""
    metrics, _ = metrics_at()

    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\n")
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 2.0

    serving(metrics, scenario, head_timeout=0.3)


def test_a_held_connection_neither_blocks_others_nor_the_loop() -> None:
    """While a slowloris client holds a connection, scrapes answer and the loop keeps ticking."""
    metrics, _ = metrics_at()

    async def scenario(port: int) -> None:
        _, held = await asyncio.open_connection("127.0.0.1", port)
        held.write(b"GET /metrics HTTP/1.1\r\nHost: x")
        started = time.monotonic()
        await asyncio.sleep(0.2)
        lag = time.monotonic() - started - 0.2
        assert (await get(port, "/metrics"))[0] == 200
        held.close()
        assert lag < 0.1, f"the event loop stalled for {lag:.3f} s"

    serving(metrics, scenario)


def test_connections_past_the_cap_are_closed_at_once() -> None:
    """With the cap reached, a new connection is dropped at once; freed slots serve again."""
    metrics, _ = metrics_at()

    async def scenario(port: int) -> None:
        holders = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        try:
            extra = await asyncio.wait_for(reader.read(), 2)
        except ConnectionResetError:
            extra = b""
        assert extra == b"", "a connection past the cap was served"
        for _, held in holders:
            held.close()
        await asyncio.sleep(0.1)
        assert (await get(port, "/metrics"))[0] == 200

    serving(metrics, scenario, max_connections=2)


def test_a_scrape_of_thousands_of_tokens_does_not_hold_up_the_loop() -> None:
    """Rendering /metrics for 3,000 tokens happens off the event loop: refreshes keep time."""
    metrics, _ = metrics_at()
    for index in range(3000):
        spec = TokenSpec(name=TokenName("app", f"u{index:05d}", "read"))
        metrics.observe_token(spec, TokenRecord(spec.name, TOKEN, 1.0, TokenState.OK, None, None,
                                                None, 0, None))
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.005)
            lags.append(time.monotonic() - before - 0.005)

    async def scenario(port: int) -> None:
        ticking = asyncio.create_task(ticker())
        started = time.monotonic()
        status, _, body = await get(port, "/metrics")
        took = time.monotonic() - started
        ticking.cancel()
        assert status == 200 and body.count(b"tokend_token_state{") == 3000 * 6
        assert took > 0.1, "rendering was too fast for this test to mean anything"
        # Rendered on the loop, one stall would last the whole scrape; off the loop, the
        # loop keeps ticking (how evenly depends on the machine, so no absolute bound).
        assert len(lags) >= 3, "the loop did not run while /metrics rendered"
        assert max(lags) < took / 2, f"the loop stalled {max(lags):.3f} s of a {took:.2f} s scrape"

    serving(metrics, scenario)
