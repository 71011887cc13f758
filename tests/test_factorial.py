"""Unit tests of the seed client API and the shared protocol code, over httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokend.errors import (
    NetworkError,
    OAuthError,
    PermanentOAuthError,
    TransientOAuthError,
)
from tokend.factorial import DEFAULT_BASE_URL, AsyncFactorial, Factorial
from tokend.model import SCOPES, Token
from tokend.oauth import protocol as oauth

BASE = "http://factorial.test"
OOB = "urn:ietf:wg:oauth:2.0:oob"
SECRET = "s3cret"
Handler = Callable[[httpx.Request], httpx.Response]
Runner = Callable[..., tuple[Any, Any]]


def token_body(**overrides: object) -> dict[str, object]:
    """A fresh, random token body as Doorkeeper sends it."""
    body: dict[str, object] = {
        "access_token": secrets.token_hex(16),
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": secrets.token_hex(16),
        "scope": "read write",
        "created_at": 1_700_000_000,
    }
    body.update(overrides)
    return body


def answer(
    status: int,
    body: object = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Handler:
    """A handler that records requests and always gives the same answer."""
    content = raw if raw is not None else json.dumps(body).encode()

    def handle(request: httpx.Request) -> httpx.Response:
        handle.requests.append(request)  # type: ignore[attr-defined]
        return httpx.Response(status, content=content, headers=headers)

    handle.requests = []  # type: ignore[attr-defined]
    return handle


def form_of(request: httpx.Request) -> dict[str, str]:
    """The form fields of a recorded request, one value each."""
    return {key: values[0] for key, values in parse_qs(request.content.decode()).items()}


def run_sync(handler: Handler, method: str, **kwargs: Any) -> tuple[Any, Any]:
    """Call ``method`` on a sync client over ``handler``; return (result, client)."""
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        client = Factorial(access_token="old", base_url=BASE, client=http)
        return getattr(client, method)(**kwargs), client


def run_async(handler: Handler, method: str, **kwargs: Any) -> tuple[Any, Any]:
    """Call ``method`` on an async client over ``handler``; return (result, client)."""

    async def go() -> tuple[Any, Any]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = AsyncFactorial(access_token="old", base_url=BASE, client=http)
            return await getattr(client, method)(**kwargs), client

    return asyncio.run(go())


@pytest.fixture(params=[run_sync, run_async], ids=["sync", "async"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Each behaviour test runs against both clients, which must not differ."""
    runner: Runner = request.param
    return runner


def exchange(run: Runner, handler: Handler, secret: str = SECRET) -> tuple[Any, Any]:
    return run(
        handler,
        "obtain_access_token",
        client_id="app",
        client_secret=secret,
        redirect_uri=OOB,
        authorization_key="key-123",
    )


def failure(run: Runner, handler: Handler) -> OAuthError:
    with pytest.raises(OAuthError) as info:
        exchange(run, handler)
    return info.value


# --- authorization link -------------------------------------------------------------------


def test_link_matches_seed_library_text() -> None:
    """The default link is exactly what the seed library documents, scope last."""
    link = Factorial.obtain_authorization_link(client_id="abc", redirect_uri=OOB)
    assert link == (
        "https://api.factorialhr.com/oauth/authorize?client_id=abc"
        "&redirect_uri=urn%3Aietf%3Awg%3Aoauth%3A2.0%3Aoob&response_type=code&scope=read+write"
    )


@pytest.mark.parametrize("scope", SCOPES)
def test_link_scope_reads_as_space_separated_on_server(scope: str) -> None:
    """The server decodes ``read+write`` as the two scopes ``read write``."""
    link = Factorial.obtain_authorization_link(client_id="abc", redirect_uri=OOB, scope=scope)
    assert link.endswith(f"&scope={scope}")
    assert parse_qs(urlsplit(link).query)["scope"] == [scope.replace("+", " ")]


def test_link_percent_encodes_redirect_uri_and_client_id() -> None:
    """A local redirect URI and odd client ids survive the round trip unchanged."""
    redirect = "http://127.0.0.1:8765/callback?x=1&y=2"
    link = Factorial.obtain_authorization_link(client_id="a&b=c d", redirect_uri=redirect)
    assert "redirect_uri=http%3A%2F%2F127.0.0.1%3A8765%2Fcallback%3Fx%3D1%26y%3D2&" in link
    query = parse_qs(urlsplit(link).query)
    assert query["client_id"] == ["a&b=c d"]
    assert query["redirect_uri"] == [redirect]
    assert query["response_type"] == ["code"]


def test_link_uses_given_base_url_without_double_slash() -> None:
    """Another server (the sandbox) can be named, with or without a trailing slash."""
    link = Factorial.obtain_authorization_link(
        client_id="abc", redirect_uri=OOB, base_url="http://127.0.0.1:9000/"
    )
    assert link.startswith("http://127.0.0.1:9000/oauth/authorize?client_id=abc&")


def test_link_appends_state_only_when_given() -> None:
    """``state`` follows the scope when given and is absent otherwise."""
    plain = Factorial.obtain_authorization_link(client_id="abc", redirect_uri=OOB)
    with_state = Factorial.obtain_authorization_link(client_id="abc", redirect_uri=OOB, state="x y")
    assert "state=" not in plain
    assert with_state == plain + "&state=x+y"


@pytest.mark.parametrize("scope", ["admin", "read write", "READ", "", "write+read"])
def test_bad_scope_is_a_value_error_naming_the_options(scope: str) -> None:
    """A typo in the scope fails at once and says what would have been accepted."""
    with pytest.raises(ValueError, match=r"read, write, read\+write"):
        Factorial.obtain_authorization_link(client_id="abc", redirect_uri=OOB, scope=scope)


def test_authorize_prints_prompt_and_link(capsys: pytest.CaptureFixture[str]) -> None:
    """``authorize`` prints the seed library's sentence, then the instance's link alone."""
    client = Factorial(access_token="abc", base_url=BASE)
    client.authorize(client_id="app", redirect_uri=OOB, scope="read")
    client.close()
    expected_link = Factorial.obtain_authorization_link(
        client_id="app", redirect_uri=OOB, scope="read", base_url=BASE
    )
    assert capsys.readouterr().out == (
        "Authorization required. Follow this link and store your authorization key:\n"
        f"{expected_link}\n"
    )


def test_default_base_url_is_factorial() -> None:
    """Without a base URL the client talks to the real Factorial API."""
    assert DEFAULT_BASE_URL == "https://api.factorialhr.com"
    assert Factorial(access_token="abc").base_url == DEFAULT_BASE_URL


# --- requests sent ------------------------------------------------------------------------


def test_exchange_posts_the_documented_form(run: Runner) -> None:
    """The authorization key goes out as ``code`` with ``grant_type=authorization_code``."""
    handler = answer(200, token_body())
    exchange(run, handler)
    (request,) = handler.requests  # type: ignore[attr-defined]
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/oauth/token"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert form_of(request) == {
        "client_id": "app",
        "client_secret": "s3cret",
        "code": "key-123",
        "grant_type": "authorization_code",
        "redirect_uri": OOB,
    }


def test_exchange_returns_server_token_and_updates_instance(run: Runner) -> None:
    """After the exchange the client holds the new access token, as in the seed library."""
    body = token_body()
    token, client = exchange(run, answer(200, body))
    issued = (body["access_token"], body["refresh_token"])
    same = (token.access_token, token.refresh_token) == issued
    assert same, "token strings differ from the server's"
    assert (token.token_type, token.expires_in, token.created_at) == ("Bearer", 3600, 1_700_000_000)
    updated = client.access_token == body["access_token"]
    assert updated, "instance token not updated"


def test_refresh_posts_the_documented_form_and_updates_instance(run: Runner) -> None:
    """A refresh sends ``grant_type=refresh_token`` and the client adopts the new token."""
    body = token_body()
    handler = answer(200, body)
    token, client = run(
        handler, "refresh_access_token", client_id="app", client_secret="s3cret", refresh_token="rt"
    )
    (request,) = handler.requests  # type: ignore[attr-defined]
    assert str(request.url) == f"{BASE}/oauth/token"
    assert form_of(request) == {
        "client_id": "app",
        "client_secret": "s3cret",
        "grant_type": "refresh_token",
        "refresh_token": "rt",
    }
    issued = (body["refresh_token"], body["access_token"])
    same = (token.refresh_token, client.access_token) == issued
    assert same, "new refresh token or instance token differs"


def test_revoke_posts_token_and_returns_none(run: Runner) -> None:
    """Revoking posts the token to ``/oauth/revoke`` and leaves the instance token alone."""
    handler = answer(200, {})
    result, client = run(
        handler, "revoke_token", client_id="app", client_secret="s3cret", token="tok-1"
    )
    (request,) = handler.requests  # type: ignore[attr-defined]
    assert result is None
    assert str(request.url) == f"{BASE}/oauth/revoke"
    assert form_of(request) == {"client_id": "app", "client_secret": "s3cret", "token": "tok-1"}
    assert client.access_token == "old"


def test_revoke_failure_is_classified_like_token_errors(run: Runner) -> None:
    """A refused revocation raises the same error classes as the token endpoint."""
    handler = answer(403, {"error": "unauthorized_client", "error_description": "nope"})
    with pytest.raises(PermanentOAuthError) as info:
        run(handler, "revoke_token", client_id="app", client_secret="s3cret", token="tok-1")
    assert (info.value.error, info.value.status_code) == ("unauthorized_client", 403)


def test_timeout_applies_to_each_request() -> None:
    """The configured timeout bounds requests even on an injected client."""
    seen: list[dict[str, float]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json=token_body())

    with httpx.Client(transport=httpx.MockTransport(handle), timeout=99.0) as http:
        Factorial(access_token="a", base_url=BASE, timeout=7.5, client=http).refresh_access_token(
            client_id="app", client_secret="s", refresh_token="rt"
        )
    assert seen[0]["read"] == 7.5
    assert seen[0]["connect"] == 7.5


def test_closing_leaves_an_injected_client_open() -> None:
    """An injected HTTP client belongs to the caller and stays usable after ``close``."""
    with httpx.Client(transport=httpx.MockTransport(answer(200, token_body()))) as http:
        with Factorial(access_token="a", base_url=BASE, client=http):
            pass
        assert not http.is_closed


def test_closing_an_owned_client_ends_its_use() -> None:
    """A client the instance created is closed with it; later calls fail loudly."""
    client = Factorial(access_token="a", base_url=BASE)
    client.close()
    with pytest.raises(RuntimeError):
        client.refresh_access_token(client_id="app", client_secret="s", refresh_token="rt")


def test_async_context_manager_closes_owned_client() -> None:
    """``async with AsyncFactorial(...)`` closes the client it created."""

    async def go() -> None:
        async with AsyncFactorial(access_token="a", base_url=BASE) as client:
            pass
        await client.refresh_access_token(client_id="app", client_secret="s", refresh_token="r")

    with pytest.raises(RuntimeError):
        asyncio.run(go())


# --- token bodies ------------------------------------------------------------------------


def test_token_keeps_scope_as_server_sent_it(run: Runner) -> None:
    """``read write`` from the server stays ``read write``; we do not rewrite it."""
    token, _ = exchange(run, answer(200, token_body(scope="read write")))
    assert token.scope == "read write"


def test_token_ignores_unknown_fields(run: Runner) -> None:
    """Extra fields a newer server sends do not break the client."""
    token, _ = exchange(run, answer(200, token_body(id_token="x", resource_owner_id=7)))
    assert isinstance(token, Token)


def test_token_accepts_integer_valued_floats(run: Runner) -> None:
    """``3600.0`` is an integer lifetime even if a JSON encoder wrote it as a float."""
    token, _ = exchange(run, answer(200, token_body(expires_in=3600.0, created_at=1.7e9)))
    assert (token.expires_in, token.created_at) == (3600, 1_700_000_000)
    assert isinstance(token.expires_in, int)


def test_token_repr_hides_token_strings() -> None:
    """Printing or logging a token shows its expiry, never the token strings."""
    body = token_body()
    token = oauth.parse_token_response(200, {}, json.dumps(body).encode())
    for text in (repr(token), str(token), f"{token}"):
        leaked = str(body["access_token"]) in text or str(body["refresh_token"]) in text
        assert not leaked, "token string leaked"
        assert "2023-11-14T23:13:20+00:00" in text


def test_client_and_request_reprs_hide_secrets() -> None:
    """Neither a client nor a prepared request shows its access token or form values."""
    client = Factorial(access_token="tok-abc", base_url=BASE)
    request = oauth.refresh_token_request(
        base_url=BASE, client_id="app", client_secret="sec-xyz", refresh_token="rt-123"
    )
    assert "tok-abc" not in repr(client)
    assert "sec-xyz" not in repr(request)
    assert "rt-123" not in repr(request)
    client.close()


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        "invalid_grant",
        "invalid_client",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_request",
        "invalid_scope",
        "something_new",
    ],
)
def test_oauth_error_bodies_on_4xx_are_permanent(run: Runner, error: str) -> None:
    """RFC 6749 errors mean a person must act: the class, code and description say so."""
    exc = failure(run, answer(400, {"error": error, "error_description": "Read the docs."}))
    assert type(exc) is PermanentOAuthError
    assert (exc.error, exc.description, exc.status_code) == (error, "Read the docs.", 400)
    assert str(exc) == f"{error} (HTTP 400): Read the docs."


@pytest.mark.parametrize("status", [401, 403, 404, 410, 418])
def test_other_4xx_are_permanent(run: Runner, status: int) -> None:
    """Any other client error cannot be fixed by retrying, whatever the body says."""
    exc = failure(run, answer(status, raw=b"<html>Forbidden</html>"))
    assert type(exc) is PermanentOAuthError
    assert exc.status_code == status


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_timeouts_rate_limits_and_5xx_are_transient(run: Runner, status: int) -> None:
    """Server trouble is retried later, even when the body carries an OAuth code."""
    exc = failure(run, answer(status, {"error": "invalid_grant"}))
    assert type(exc) is TransientOAuthError
    assert (exc.error, exc.status_code) == ("invalid_grant", status)


def test_empty_5xx_is_a_server_error(run: Runner) -> None:
    """A bare 500 gets our own ``server_error`` code."""
    exc = failure(run, answer(500, raw=b""))
    assert (type(exc), exc.error) == (TransientOAuthError, "server_error")


def test_temporarily_unavailable_is_transient_on_any_status(run: Runner) -> None:
    """The RFC's "come back later" code is retried even on a 400."""
    exc = failure(run, answer(400, {"error": "temporarily_unavailable"}))
    assert type(exc) is TransientOAuthError


def test_proxy_html_page_is_transient_invalid_response(run: Runner) -> None:
    """A gateway's HTML error page is retried and named ``invalid_response``."""
    handler = answer(
        502, raw=b"<html><h1>Bad Gateway</h1></html>", headers={"content-type": "text/html"}
    )
    exc = failure(run, handler)
    assert (type(exc), exc.error, exc.status_code) == (TransientOAuthError, "invalid_response", 502)
    assert "text/html" in exc.description
    assert "Bad Gateway" not in str(exc)


def test_retry_after_seconds_are_parsed(run: Runner) -> None:
    """A 429's ``Retry-After: 120`` reaches the caller as 120 seconds."""
    exc = failure(run, answer(429, {"error": "rate_limited"}, headers={"Retry-After": "120"}))
    assert exc.retry_after == 120.0


def test_retry_after_http_date_is_parsed() -> None:
    """The HTTP-date form of ``Retry-After`` becomes the seconds left until that date."""
    now = 1_700_000_000.0
    header = format_datetime(datetime.fromtimestamp(now + 90, tz=UTC), usegmt=True)
    with pytest.raises(TransientOAuthError) as info:
        oauth.parse_token_response(503, {"Retry-After": header}, b"", now=now)
    assert info.value.retry_after == 90.0


@pytest.mark.parametrize("value", ["soon", "-5", "1.5e3", "²", ""])
def test_unreadable_retry_after_is_ignored(value: str) -> None:
    """A garbled ``Retry-After`` leaves the decision to the caller's backoff."""
    assert oauth.parse_retry_after(value) is None


def test_retry_after_in_the_past_is_zero() -> None:
    """A date already passed means "retry now", never a negative wait."""
    assert oauth.parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=1e9) == 0.0


@pytest.mark.parametrize(
    "raw",
    [b"<html>ok</html>", b'{"access_token": "abc"', b"[]", b'"token"', b"", b"\xff\xfe\x00"],
    ids=["html", "truncated", "list", "string", "empty", "binary"],
)
def test_unreadable_success_body_is_transient(run: Runner, raw: bytes) -> None:
    """A 200 that is not a JSON object is retried: the old refresh token still works."""
    exc = failure(run, answer(200, raw=raw))
    assert (type(exc), exc.error, exc.status_code) == (TransientOAuthError, "invalid_response", 200)


@pytest.mark.parametrize(
    "field", ["access_token", "token_type", "refresh_token", "scope", "created_at"]
)
def test_missing_token_field_is_transient(run: Runner, field: str) -> None:
    """A token without one of its fields is rejected and the message names the field
    (without ``expires_in`` it never expires: tests/test_company_tokens.py)."""
    body = token_body()
    del body[field]
    exc = failure(run, answer(200, body))
    assert (type(exc), exc.error) == (TransientOAuthError, "invalid_response")
    assert repr(field) in exc.description


@pytest.mark.parametrize(
    "override",
    [
        {"expires_in": "3600"},
        {"expires_in": True},
        {"expires_in": 3600.5},
        {"expires_in": 0},
        {"expires_in": -60},
        {"created_at": "2024-01-01"},
        {"created_at": False},
        {"created_at": 10**20},
        {"access_token": 123},
        {"access_token": ""},
        {"refresh_token": None},
        {"token_type": ["Bearer"]},
        {"scope": {"read": True}},
    ],
    ids=repr,
)
def test_wrongly_typed_token_field_is_transient(run: Runner, override: dict[str, object]) -> None:
    """Fields of the wrong type or impossible value never become a Token."""
    exc = failure(run, answer(200, token_body(**override)))
    assert (type(exc), exc.error) == (TransientOAuthError, "invalid_response")


@pytest.mark.parametrize(
    "exc_type", [httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.ReadError]
)
def test_transport_failures_are_network_errors(run: Runner, exc_type: type[Exception]) -> None:
    """Refused connections and timeouts are retried as ``network_error``."""

    def handle(request: httpx.Request) -> httpx.Response:
        raise exc_type("it broke", request=request)  # type: ignore[call-arg]

    exc = failure(run, handle)
    assert (type(exc), exc.error) == (NetworkError, "network_error")
    assert exc_type.__name__ in exc.description
    assert exc.__cause__ is None


def test_error_messages_never_echo_secrets(run: Runner) -> None:
    """Even a server that echoes the secret and the key in its description does not leak them."""
    secret = secrets.token_hex(8)
    echo = f"client_secret={secret} code=key-123 was rejected"
    handler = answer(401, {"error": "invalid_client", "error_description": echo})
    with pytest.raises(OAuthError) as info:
        exchange(run, handler, secret=secret)
    exc = info.value
    for text in (str(exc), repr(exc), exc.description):
        leaked = secret in text or "key-123" in text
        assert not leaked, "client secret or authorization key leaked"
    assert "was rejected" in exc.description


def test_network_error_message_never_echoes_secrets(run: Runner) -> None:
    """A transport error quoting the request body is scrubbed too."""

    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(request.content.decode(), request=request)

    exc = failure(run, handle)
    leaked = "s3cret" in str(exc) or "key-123" in str(exc)
    assert not leaked, "client secret or authorization key leaked"


def test_description_is_bounded_and_single_line(run: Runner) -> None:
    """A huge or multi-line description is cut to one log-safe line of about 200 chars."""
    exc = failure(run, answer(400, {"error": "invalid_grant", "error_description": "x\n" * 500}))
    assert len(exc.description) <= 200
    assert "\n" not in str(exc)


# --- property ----------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
_token_like = st.fixed_dictionaries(
    {},
    optional={
        name: _json | st.integers() | st.text()
        for name in (
            "access_token",
            "token_type",
            "expires_in",
            "refresh_token",
            "scope",
            "created_at",
            "error",
            "error_description",
        )
    },
)
_bodies = (
    st.binary(max_size=64)
    | _json.map(lambda value: json.dumps(value).encode())
    | _token_like.map(lambda value: json.dumps(value).encode())
)


@given(
    status=st.integers(min_value=100, max_value=599),
    body=_bodies,
    retry_after=st.none() | st.text(max_size=40),
)
def test_any_answer_is_a_token_or_an_oauth_error(
    status: int, body: bytes, retry_after: str | None
) -> None:
    """Whatever comes back, callers only ever see a Token or an OAuthError."""
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    outcome: Token | OAuthError
    try:
        outcome = oauth.parse_token_response(status, headers, body)
    except OAuthError as exc:
        outcome = exc
    if isinstance(outcome, OAuthError):
        assert outcome.error
        assert len(outcome.description) <= 200
    else:
        assert 200 <= status < 300
        assert repr(outcome)
