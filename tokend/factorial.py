"""The seed library's client API, sync (:class:`Factorial`) and async (:class:`AsyncFactorial`).

Both classes only move bytes: every URL, form field and answer is built or
parsed in :mod:`tokend.oauth.protocol`, so the two can never disagree about the protocol.
After a successful exchange or refresh the instance's ``access_token`` is the
new token, as in the seed library.
"""

from __future__ import annotations

from types import TracebackType

import httpx

from tokend.model import DEFAULT_BASE_URL, Token
from tokend.oauth import protocol as oauth
from tokend.oauth.protocol import OAuthRequest

__all__ = ["DEFAULT_BASE_URL", "AsyncFactorial", "Factorial"]

_HEADERS = {"Accept": "application/json"}
PROMPT = "Authorization required. Follow this link and store your authorization key:"


class _FactorialBase:
    """What both clients share: settings, the authorization link, and the request builders."""

    def __init__(self, *, access_token: str, base_url: str, timeout: float) -> None:
        self.access_token = access_token
        self.base_url = base_url
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    obtain_authorization_link = staticmethod(oauth.seed_authorization_link)

    def authorize(self, *, client_id: str, redirect_uri: str, scope: str = "read+write",
                  code_challenge: str | None = None) -> None:
        """Print the link a person must open to grant access (no I/O, so sync in both clients).

        ``scope`` is ``read``, ``write`` or ``read+write`` (else ``ValueError``), as the seed
        library documents; ``tokend authorize`` takes any scope the server defines. With a
        PKCE ``code_challenge`` (:class:`tokend.oauth.pkce.Pkce`), pass its verifier to
        :meth:`obtain_access_token`.
        """
        link = oauth.seed_authorization_link(
            client_id=client_id, redirect_uri=redirect_uri, scope=scope, base_url=self.base_url,
            code_challenge=code_challenge,
        )
        print(PROMPT)
        print(link)

    def _exchange(
        self, client_id: str, client_secret: str, redirect_uri: str, authorization_key: str,
        code_verifier: str | None,
    ) -> OAuthRequest:
        return oauth.authorization_code_request(
            base_url=self.base_url,
            client_id=client_id,
            client_secret=client_secret,
            redirect_uri=redirect_uri,
            code=authorization_key,
            code_verifier=code_verifier,
        )

    def _refresh(self, client_id: str, client_secret: str, refresh_token: str) -> OAuthRequest:
        return oauth.refresh_token_request(
            base_url=self.base_url,
            client_id=client_id,
            client_secret=client_secret,
            refresh_token=refresh_token,
        )

    def _revoke(self, client_id: str, client_secret: str, token: str) -> OAuthRequest:
        return oauth.revoke_request(
            base_url=self.base_url, client_id=client_id, client_secret=client_secret, token=token
        )

    def _accept(self, request: OAuthRequest, response: httpx.Response) -> Token:
        token = oauth.parse_token_response(
            response.status_code, response.headers, response.content, secrets=request.secrets
        )
        self.access_token = token.access_token
        return token


class Factorial(_FactorialBase):
    """Blocking client; pass ``client`` to share a connection pool (it is then yours to close).

    ``timeout`` applies to every request, also on an injected client, because a
    token refresh must never hang the daemon.
    """

    def __init__(
        self,
        *,
        access_token: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        client: httpx.Client | None = None,
    ) -> None:
        super().__init__(access_token=access_token, base_url=base_url, timeout=timeout)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)

    def obtain_access_token(
        self, *, client_id: str, client_secret: str, redirect_uri: str, authorization_key: str,
        code_verifier: str | None = None,
    ) -> Token:
        """Exchange an authorization key for the first token (the key works once); give the
        PKCE ``code_verifier`` when the link carried its challenge."""
        request = self._exchange(client_id, client_secret, redirect_uri, authorization_key,
                                 code_verifier)
        return self._accept(request, self._post(request))

    def refresh_access_token(
        self, *, client_id: str, client_secret: str, refresh_token: str
    ) -> Token:
        """Get a new token; keep its new refresh token, the old one dies once it is used."""
        request = self._refresh(client_id, client_secret, refresh_token)
        return self._accept(request, self._post(request))

    def revoke_token(self, *, client_id: str, client_secret: str, token: str) -> None:
        """Revoke an access or refresh token, e.g. when an operator removes it from config."""
        request = self._revoke(client_id, client_secret, token)
        response = self._post(request)
        oauth.parse_revoke_response(
            response.status_code, response.headers, response.content, secrets=request.secrets
        )

    def close(self) -> None:
        """Close the HTTP client if this instance created it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Factorial:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _post(self, request: OAuthRequest) -> httpx.Response:
        try:
            return self._client.post(
                request.url, data=dict(request.form), headers=_HEADERS, timeout=self.timeout
            )
        except httpx.RequestError as exc:
            # Not chained: the httpx error holds the request, whose form carries the secrets.
            raise oauth.request_error(exc, secrets=request.secrets) from None


class AsyncFactorial(_FactorialBase):
    """The same client for asyncio; the daemon refreshes many tokens concurrently with it."""

    def __init__(
        self,
        *,
        access_token: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(access_token=access_token, base_url=base_url, timeout=timeout)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout)

    async def obtain_access_token(
        self, *, client_id: str, client_secret: str, redirect_uri: str, authorization_key: str,
        code_verifier: str | None = None,
    ) -> Token:
        """Exchange an authorization key for the first token (the key works once); give the
        PKCE ``code_verifier`` when the link carried its challenge."""
        request = self._exchange(client_id, client_secret, redirect_uri, authorization_key,
                                 code_verifier)
        return self._accept(request, await self._post(request))

    async def refresh_access_token(
        self, *, client_id: str, client_secret: str, refresh_token: str
    ) -> Token:
        """Get a new token; keep its new refresh token, the old one dies once it is used."""
        request = self._refresh(client_id, client_secret, refresh_token)
        return self._accept(request, await self._post(request))

    async def revoke_token(self, *, client_id: str, client_secret: str, token: str) -> None:
        """Revoke an access or refresh token, e.g. when an operator removes it from config."""
        request = self._revoke(client_id, client_secret, token)
        response = await self._post(request)
        oauth.parse_revoke_response(
            response.status_code, response.headers, response.content, secrets=request.secrets
        )

    async def aclose(self) -> None:
        """Close the HTTP client if this instance created it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncFactorial:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _post(self, request: OAuthRequest) -> httpx.Response:
        try:
            return await self._client.post(
                request.url, data=dict(request.form), headers=_HEADERS, timeout=self.timeout
            )
        except httpx.RequestError as exc:
            # Not chained: the httpx error holds the request, whose form carries the secrets.
            raise oauth.request_error(exc, secrets=request.secrets) from None
