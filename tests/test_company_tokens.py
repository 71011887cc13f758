"""Company tokens: an answer without ``expires_in`` is a token that never expires, is never
refreshed, and is shown, published and exported as such (no expiry anywhere)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.test_check import config as check_config_file
from tests.test_factorial import Runner, answer, exchange, run_async, run_sync, token_body
from tokend.cli.check import check_config
from tokend.engine.metrics import Metrics
from tokend.engine.outputs import render
from tokend.engine.schedule import due_at
from tokend.model import OutputSpec, Token, TokenName, TokenSpec
from tokend.store.interface import StateFacts, TokenRecord, TokenState
from tokend.store.sqlite import SqliteStateStore


@pytest.fixture(params=[run_sync, run_async], ids=["sync", "async"])
def client(request: pytest.FixtureRequest) -> Runner:
    """Both seed clients, which must not differ."""
    runner: Runner = request.param
    return runner


@pytest.mark.parametrize("absent", ["missing", "null"])
def test_an_answer_without_expiry_is_a_token_that_never_expires(
    client: Runner, absent: str
) -> None:
    """Doorkeeper leaves out ``expires_in`` (or says null) for a company token: a Token."""
    body = token_body()
    if absent == "missing":
        del body["expires_in"]
    else:
        body["expires_in"] = None
    token, _ = exchange(client, answer(200, body))
    assert isinstance(token, Token)
    assert (token.expires_in, token.expires_at) == (None, None)
    assert "expires_at=None" in repr(token)


class FixedClock:
    def __init__(self, now: float) -> None:
        self.value = now

    def now(self) -> float:
        return self.value


NAME = TokenName("hr", "carol", "employees")
SPEC = TokenSpec(NAME, refresh_token_lifetime=7 * 86400.0, company=True)
ISSUED = 1_700_000_000.0
YEARS = 10 * 365 * 86400.0


def company_token() -> Token:
    return Token("company-access-SECRET", "Bearer", None, "company-refresh-SECRET", "employees",
                 int(ISSUED))


def stored(state: TokenState = TokenState.OK) -> TokenRecord:
    return TokenRecord(NAME, company_token(), ISSUED, state, None, ISSUED, None, 0, None,
                       generation=1)


def test_a_record_that_never_expires_has_no_expiry_and_no_refresh_deadline() -> None:
    """Neither the access token nor its refresh token has an end: nothing to count down."""
    record = stored()
    assert record.expires_at is None
    assert record.refresh_token_expires_at(SPEC.refresh_token_lifetime) is None


def test_a_token_that_never_expires_stays_ok_for_years() -> None:
    """``status``, metrics and ``/healthz`` call it ok, however late they look."""
    assert stored().shown_state(SPEC.refresh_token_lifetime, ISSUED + YEARS) == "ok"
    assert StateFacts.of(stored(), None).shown(ISSUED + YEARS) == "ok"


def test_a_token_that_never_expires_is_never_due() -> None:
    """The schedule never picks it: no refresh, no busy loop over it."""
    assert due_at(stored(), SPEC) is None


def test_metrics_export_its_state_without_an_expiry_series() -> None:
    """``tokend_token_state`` says ok; no expiry gauge pretends a time it does not have."""
    metrics = Metrics(clock=FixedClock(ISSUED + YEARS), process=False)
    metrics.observe_token(SPEC, stored())
    value = metrics.registry.get_sample_value
    assert value("tokend_token_state", {"token": str(NAME), "state": "ok"}) == 1.0
    assert value("tokend_token_expiry_timestamp_seconds", {"token": str(NAME)}) is None
    assert value("tokend_refresh_token_expiry_timestamp_seconds", {"token": str(NAME)}) is None
    assert [(t.name, t.state) for t in metrics.tokens()] == [(str(NAME), "ok")]


def test_the_store_keeps_a_token_without_expiry(tmp_path: Path) -> None:
    """Committed and read back (also by a new process): still without an expiry."""
    store = SqliteStateStore(tmp_path)
    try:
        store.commit(NAME, company_token(), generation=0, issued_at=ISSUED, now=ISSUED)
    finally:
        store.close()
    store = SqliteStateStore(tmp_path)
    try:
        record = store.get(NAME)
    finally:
        store.close()
    assert record is not None and record.token is not None
    assert (record.token.expires_in, record.expires_at, record.state) == (None, None, "ok")


def test_the_json_output_says_it_has_no_expiry(tmp_path: Path) -> None:
    """``expires_at`` is null in the json format; the token and env formats are as ever."""
    token = company_token()
    spec = OutputSpec(tmp_path / "t.json", format="json")
    document = json.loads(render(spec, token, name=NAME, expires_at=None, now=ISSUED))
    assert document == {"access_token": token.access_token, "token_type": "Bearer",
                        "scope": "employees", "expires_at": None}



def test_check_counts_no_refreshes_for_tokens_that_never_expire(tmp_path: Path) -> None:
    """``tokend check``'s rate estimate leaves out company tokens and tokens stored without
    a lifetime: they are never refreshed, so they take none of the rate limit."""
    cfg = check_config_file(tmp_path, app="    rate_limit: 1/min\n", tokens=120)
    never = {TokenName("app", f"user{i}", "read"): None for i in range(120)}
    assert check_config(cfg, lifetimes=lambda: never).warnings == []
    company = dataclasses.replace(cfg, tokens=tuple(
        dataclasses.replace(spec, company=True) for spec in cfg.tokens))
    assert check_config(company, lifetimes=dict).warnings == []


def test_a_template_shows_no_expiry_for_a_token_that_never_expires(tmp_path: Path) -> None:
    """``{expires_at}`` and ``{expires_in}`` are empty: there is no time to give."""
    spec = OutputSpec(tmp_path / "t.txt", format="template",
                      template="[{expires_at}][{expires_in}] {scope}\n")
    assert render(spec, company_token(), name=NAME, expires_at=None, now=ISSUED) == (
        b"[][] employees\n")
