"""The seed client API against the sandbox server over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tokend.errors import NetworkError, PermanentOAuthError, TransientOAuthError
from tokend.factorial import AsyncFactorial, Factorial
from tokend.model import Token
from tokend.sandbox import Sandbox

CLIENT_ID = "demo-client"
SECRET = "demo-secret"
OOB = "urn:ietf:wg:oauth:2.0:oob"
_CODE = re.compile(r'<code id="authorization_code">([^<]+)</code>')


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as server:
        yield server


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[Factorial]:
    with Factorial(access_token="", base_url=sandbox.url, timeout=5.0) as factorial:
        yield factorial


def key_from_page(link: str) -> str:
    """Open the link as a browser would and read the key the oob page shows."""
    page = httpx.get(link)
    assert page.status_code == 200
    match = _CODE.search(page.text)
    assert match is not None, "no authorization key on the page"
    return match.group(1)


def me_status(sandbox: Sandbox, access_token: str) -> int:
    """Use an access token the way an application would."""
    headers = {"Authorization": f"Bearer {access_token}"}
    return httpx.get(f"{sandbox.url}/api/v1/me", headers=headers).status_code


def first_token(sandbox: Sandbox, client: Factorial, scope: str = "read+write") -> Token:
    link = client.obtain_authorization_link(
        client_id=CLIENT_ID, redirect_uri=OOB, scope=scope, base_url=sandbox.url
    )
    return client.obtain_access_token(
        client_id=CLIENT_ID,
        client_secret=SECRET,
        redirect_uri=OOB,
        authorization_key=key_from_page(link),
    )


def refresh(client: Factorial, refresh_token: str) -> Token:
    return client.refresh_access_token(
        client_id=CLIENT_ID, client_secret=SECRET, refresh_token=refresh_token
    )


def test_link_page_key_exchanges_for_a_working_token(sandbox: Sandbox, client: Factorial) -> None:
    """The documented flow works end to end: link, key on the page, token, API call."""
    token = first_token(sandbox, client)
    assert token.scope == "read write"
    assert me_status(sandbox, token.access_token) == 200
    adopted = client.access_token == token.access_token
    assert adopted, "client did not adopt the new access token"
    assert sandbox.stats()["authorization_code"] == 1


@pytest.mark.parametrize("scope", ["read", "write"])
def test_single_scope_links_give_single_scope_tokens(
    sandbox: Sandbox, client: Factorial, scope: str
) -> None:
    """Each scope gets its own token, and the server grants exactly the scope asked for."""
    assert first_token(sandbox, client, scope).scope == scope


def test_local_redirect_receives_key_and_state(sandbox: Sandbox, client: Factorial) -> None:
    """With a 127.0.0.1 redirect the key and the state arrive in the redirect's query."""
    redirect = "http://127.0.0.1:1/callback"
    link = client.obtain_authorization_link(
        client_id=CLIENT_ID, redirect_uri=redirect, base_url=sandbox.url, state="s t&x"
    )
    answer = httpx.get(link)
    assert answer.status_code == 302
    location = answer.headers["location"]
    assert location.startswith(redirect + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == ["s t&x"]
    token = client.obtain_access_token(
        client_id=CLIENT_ID,
        client_secret=SECRET,
        redirect_uri=redirect,
        authorization_key=query["code"][0],
    )
    assert me_status(sandbox, token.access_token) == 200


def test_key_exchanged_twice_returns_the_same_token(sandbox: Sandbox, client: Factorial) -> None:
    """A key works once: exchanging it again gives back the same token, not a second one."""
    link = client.obtain_authorization_link(
        client_id=CLIENT_ID, redirect_uri=OOB, base_url=sandbox.url
    )
    key = key_from_page(link)
    tokens = [
        client.obtain_access_token(
            client_id=CLIENT_ID, client_secret=SECRET, redirect_uri=OOB, authorization_key=key
        )
        for _ in range(2)
    ]
    same = tokens[0].access_token == tokens[1].access_token
    assert same, "second exchange issued a different token"


def test_refresh_rotates_both_tokens(sandbox: Sandbox, client: Factorial) -> None:
    """A refresh gives a new access and refresh token; the old refresh token dies on first use."""
    old = first_token(sandbox, client)
    new = refresh(client, old.refresh_token)
    rotated = new.access_token != old.access_token and new.refresh_token != old.refresh_token
    assert rotated, "refresh did not rotate the tokens"
    assert sandbox.refresh_token_state(old.refresh_token) == "live"
    assert me_status(sandbox, new.access_token) == 200
    assert sandbox.refresh_token_state(old.refresh_token) == "rotated"
    assert sandbox.refresh_token_state(new.refresh_token) == "live"


def test_reused_rotated_refresh_token_is_invalid_grant(sandbox: Sandbox, client: Factorial) -> None:
    """Once the new access token was used, the old refresh token is refused for good."""
    old = first_token(sandbox, client)
    new = refresh(client, old.refresh_token)
    assert me_status(sandbox, new.access_token) == 200
    with pytest.raises(PermanentOAuthError) as info:
        refresh(client, old.refresh_token)
    assert (info.value.error, info.value.status_code) == ("invalid_grant", 400)


def test_wrong_secret_is_invalid_client(sandbox: Sandbox, client: Factorial) -> None:
    """A wrong client secret is a permanent error that does not quote the secret."""
    with pytest.raises(PermanentOAuthError) as info:
        client.refresh_access_token(
            client_id=CLIENT_ID, client_secret="wrong-secret", refresh_token="whatever"
        )
    assert (info.value.error, info.value.status_code) == ("invalid_client", 401)
    leaked = "wrong-secret" in str(info.value)
    assert not leaked, "secret in message"


def test_revoked_tokens_stop_working(sandbox: Sandbox, client: Factorial) -> None:
    """Revoking the refresh token kills the pair: the access token and refreshes fail."""
    token = first_token(sandbox, client)
    client.revoke_token(client_id=CLIENT_ID, client_secret=SECRET, token=token.refresh_token)
    assert sandbox.refresh_token_state(token.refresh_token) == "revoked"
    assert me_status(sandbox, token.access_token) == 401
    with pytest.raises(PermanentOAuthError, match="invalid_grant"):
        refresh(client, token.refresh_token)
    assert sandbox.stats()["revoke"] == 1


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("html", "invalid_response"),
        ("malformed_json", "invalid_response"),
        ("missing_fields", "invalid_response"),
        ("status", "server_error"),
    ],
)
def test_faulty_refresh_is_transient_and_old_token_still_works(
    sandbox: Sandbox, client: Factorial, kind: str, error: str
) -> None:
    """A broken answer is retried later, and the refresh token we sent still refreshes."""
    token = first_token(sandbox, client)
    sandbox.inject_fault(kind, grant="refresh_token")
    with pytest.raises(TransientOAuthError) as info:
        refresh(client, token.refresh_token)
    assert info.value.error == error
    assert me_status(sandbox, refresh(client, token.refresh_token).access_token) == 200


def test_rate_limit_answer_carries_retry_after(sandbox: Sandbox, client: Factorial) -> None:
    """A 429 with Retry-After is transient and tells the caller how long to wait."""
    sandbox.inject_fault("status", status=429, retry_after=17)
    with pytest.raises(TransientOAuthError) as info:
        refresh(client, "any")
    assert (info.value.status_code, info.value.retry_after) == (429, 17.0)


@pytest.mark.parametrize("kind", ["hang", "close"])
def test_silent_or_dropped_connection_is_network_error(sandbox: Sandbox, kind: str) -> None:
    """A server that hangs or hangs up becomes a ``network_error`` within the timeout."""
    sandbox.inject_fault(kind, seconds=10.0)
    with (
        Factorial(access_token="", base_url=sandbox.url, timeout=0.5) as client,
        pytest.raises(NetworkError) as info,
    ):
        refresh(client, "any")
    assert info.value.error == "network_error"


def test_async_client_end_to_end(sandbox: Sandbox) -> None:
    """The async client exchanges, refreshes and revokes against the same server."""
    link = AsyncFactorial.obtain_authorization_link(
        client_id=CLIENT_ID, redirect_uri=OOB, base_url=sandbox.url
    )
    key = key_from_page(link)

    async def flow() -> tuple[Token, str]:
        async with AsyncFactorial(access_token="", base_url=sandbox.url, timeout=5.0) as client:
            first = await client.obtain_access_token(
                client_id=CLIENT_ID, client_secret=SECRET, redirect_uri=OOB, authorization_key=key
            )
            second = await client.refresh_access_token(
                client_id=CLIENT_ID, client_secret=SECRET, refresh_token=first.refresh_token
            )
            held = client.access_token
            await client.revoke_token(
                client_id=CLIENT_ID, client_secret=SECRET, token=second.refresh_token
            )
            return second, held

    second, held = asyncio.run(flow())
    adopted = held == second.access_token
    assert adopted, "async client did not adopt the refreshed access token"
    assert sandbox.refresh_token_state(second.refresh_token) == "revoked"
    assert sandbox.stats()["refresh_token"] == 1
