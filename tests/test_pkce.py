"""PKCE (RFC 7636, S256): an authorization code is useless to whoever intercepts it."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.test_factorial_sandbox import CLIENT_ID, OOB, SECRET, key_from_page
from tokend.errors import PermanentOAuthError
from tokend.factorial import Factorial
from tokend.oauth.pkce import Pkce
from tokend.sandbox import Sandbox


@pytest.fixture
def client() -> Iterator[tuple[Sandbox, Factorial]]:
    with Sandbox() as sandbox, Factorial(access_token="", base_url=sandbox.url,
                                         timeout=5.0) as factorial:
        yield sandbox, factorial


def test_the_challenge_is_rfc_7636s_s256_of_the_verifier() -> None:
    """The example of RFC 7636 appendix B, and a fresh verifier within the RFC's limits."""
    example = Pkce("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
    assert example.challenge == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    fresh, other = Pkce.new(), Pkce.new()
    assert 43 <= len(fresh.verifier) <= 128 and fresh.verifier != other.verifier
    assert "verifier" not in repr(fresh) or fresh.verifier not in repr(fresh)


def test_the_link_carries_the_challenge_and_the_method() -> None:
    """With a challenge the link asks for S256; without one it is the seed library's link."""
    pkce = Pkce.new()
    link = Factorial.obtain_authorization_link(client_id="c", redirect_uri=OOB, scope="read",
                                               code_challenge=pkce.challenge)
    query = parse_qs(urlsplit(link).query)
    assert query["code_challenge"] == [pkce.challenge]
    assert query["code_challenge_method"] == ["S256"]
    plain = Factorial.obtain_authorization_link(client_id="c", redirect_uri=OOB, scope="read")
    assert "code_challenge" not in plain


def _key(sandbox: Sandbox, pkce: Pkce | None) -> str:
    return key_from_page(Factorial.obtain_authorization_link(
        client_id=CLIENT_ID, redirect_uri=OOB, scope="read", base_url=sandbox.url,
        code_challenge=None if pkce is None else pkce.challenge))


def test_an_intercepted_code_without_the_verifier_is_refused(
    client: tuple[Sandbox, Factorial],
) -> None:
    """Whoever catches the code but not the verifier gets invalid_grant (without it or with a
    guessed one); the holder of the verifier still exchanges the same code."""
    sandbox, factorial = client
    pkce = Pkce.new()
    key = _key(sandbox, pkce)
    for stolen in (None, Pkce.new().verifier):
        with pytest.raises(PermanentOAuthError) as refused:
            factorial.obtain_access_token(client_id=CLIENT_ID, client_secret=SECRET,
                                          redirect_uri=OOB, authorization_key=key,
                                          code_verifier=stolen)
        assert refused.value.error == "invalid_grant"
    token = factorial.obtain_access_token(client_id=CLIENT_ID, client_secret=SECRET,
                                          redirect_uri=OOB, authorization_key=key,
                                          code_verifier=pkce.verifier)
    assert token.scope == "read"
    assert sandbox.stats()["authorization_code"] == 3


def test_a_verifier_for_a_code_issued_without_a_challenge_is_ignored(
    client: tuple[Sandbox, Factorial],
) -> None:
    """A server (or code) without PKCE ignores the verifier, as RFC 7636 servers do, and the
    seed API without a verifier works as it always did."""
    sandbox, factorial = client
    with_verifier = factorial.obtain_access_token(
        client_id=CLIENT_ID, client_secret=SECRET, redirect_uri=OOB,
        authorization_key=_key(sandbox, None), code_verifier=Pkce.new().verifier)
    without = factorial.obtain_access_token(
        client_id=CLIENT_ID, client_secret=SECRET, redirect_uri=OOB,
        authorization_key=_key(sandbox, None))
    assert with_verifier.access_token != without.access_token
