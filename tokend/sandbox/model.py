"""The sandbox's OAuth server model, free of HTTP so its rules read in one place.

It behaves like Doorkeeper as Factorial configures it: single-use codes that
return the same token when exchanged twice, refresh-token rotation where the
old refresh token survives until the new access token is first used, and
expiring refresh tokens; company tokens that never expire. Rate limit, faults and
statistics live in ``traffic.py``, the shape of an answer in ``replies.py``, what a grant
may hold (scopes, owner) in ``grants.py``. The model is not
thread-safe on purpose: ``__init__.py`` holds one lock around every call.
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from tokend.model import OOB
from tokend.sandbox.grants import allowed_scopes, granted_scope, invalid_grant, is_company
from tokend.sandbox.pkce import Challenge
from tokend.sandbox.replies import Refusal, Reply, error_reply, refuse
from tokend.timing import Clock

CODE_LIFETIME = 600.0
GRANTS = ("authorization_code", "refresh_token")


@dataclass(frozen=True)
class _Code:
    client_id: str
    redirect_uri: str
    scope: str
    user: str
    issued_at: float
    company: bool = False
    refresh_token: str | None = None  # set once exchanged, so a repeat returns the same pair
    challenge: Challenge | None = None  # PKCE: the exchange must bring the verifier


@dataclass(frozen=True)
class _Pair:
    """An access token and its refresh token; ``status`` is fresh, used, rotated or revoked."""

    access_token: str
    refresh_token: str
    client_id: str
    user: str
    scope: str
    created_at: int  # on the real clock: when the pair really dies
    reported_at: int  # the created_at the server says, on its possibly wrong clock
    parent: str | None  # the refresh token this pair replaced
    status: str = "fresh"
    company: bool = False  # a company token: never expires, never refreshed


class SandboxModel:
    """Clients, codes and token pairs."""

    def __init__(
        self,
        *,
        clock: Clock,
        access_token_lifetime: float,
        refresh_token_lifetime: float,
        clients: Mapping[str, str],
        clock_offset: float = 0.0,
    ) -> None:
        self._clock = clock
        self.set_clock_offset(clock_offset)
        # The wire carries whole seconds; the server enforces what it advertises.
        self._expires_in = max(1, math.ceil(access_token_lifetime))
        self._refresh_lifetime = refresh_token_lifetime
        self._clients = dict(clients)
        self._scopes: dict[str, frozenset[str] | None] = {}  # a client's own scopes, if any
        self._codes: dict[str, _Code] = {}
        self._pairs: dict[str, _Pair] = {}  # by refresh token
        self._by_access: dict[str, str] = {}  # access token -> refresh token
        self._child: dict[str, str] = {}  # refresh token -> refresh token of its latest successor

    def set_clock_offset(self, seconds: float) -> None:
        """Report ``created_at`` this far off the real clock, as a server whose clock is wrong."""
        if not math.isfinite(seconds):
            raise ValueError("clock offset must be a finite number of seconds")
        self._clock_offset = seconds

    def settings(self) -> dict[str, Any]:
        """The lifetimes this server enforces and the ids of its clients (never their secrets)."""
        return {"access_token_lifetime": self._expires_in,
                "refresh_token_lifetime": self._refresh_lifetime,
                "clients": sorted(self._clients)}

    def add_client(
        self, client_id: str, client_secret: str, scopes: Iterable[str] | None = None
    ) -> None:
        if not client_id or not client_secret:
            raise ValueError("client_id and client_secret must not be empty")
        self._scopes[client_id] = allowed_scopes(scopes)
        self._clients[client_id] = client_secret

    def authorize(
        self, *, client_id: str, redirect_uri: str, response_type: str, scope: str, user: str,
        resource_owner_type: str = "", challenge: Challenge | None = None,
    ) -> str:
        """Auto-approve an authorization request and return its code (or raise ``Refusal``)."""
        if not client_id:
            raise refuse(400, "invalid_request", "The request is missing client_id.")
        if client_id not in self._clients:
            raise refuse(400, "invalid_client", "Client authentication failed: unknown client.")
        if response_type != "code":
            raise refuse(
                400, "unsupported_response_type", "The authorization server does not support "
                "this response type.",
            )
        parts = urlsplit(redirect_uri)
        if redirect_uri != OOB and not (parts.scheme in ("http", "https") and parts.netloc):
            raise refuse(400, "invalid_request", "The redirect_uri is not a valid URI.")
        granted = granted_scope(scope, self._scopes.get(client_id))
        company = is_company(resource_owner_type)
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Code(
            client_id, redirect_uri, granted, user or "demo", self._clock.now(), company,
            challenge=challenge,
        )
        return code

    def token(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> Reply:
        """Answer one ``POST /oauth/token``."""
        try:
            grant = form.get("grant_type", "")
            if not grant:
                raise refuse(400, "invalid_request", "The request is missing grant_type.")
            if grant not in GRANTS:
                raise refuse(
                    400, "unsupported_grant_type", "The authorization grant type is not supported "
                    "by the authorization server.",
                )
            client_id = self._authenticate(form, basic)
            if grant == "authorization_code":
                pair = self._exchange(client_id, form)
            else:
                pair = self._refresh(client_id, form)
        except Refusal as refusal:
            return refusal.reply
        return Reply(200, self._token_body(pair), (("Cache-Control", "no-store"),))

    def revoke(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> Reply:
        """Answer one ``POST /oauth/revoke``: 200 even for unknown tokens (RFC 7009)."""
        try:
            client_id = self._authenticate(form, basic)
            token = form.get("token", "")
            if not token:
                raise refuse(400, "invalid_request", "The request is missing token.")
        except Refusal as refusal:
            return refusal.reply
        pair = self._pairs.get(self._by_access.get(token, token))
        if pair is not None and pair.client_id == client_id:
            self._set_status(pair, "revoked")
        return Reply(200, {})

    def me(self, access_token: str) -> Reply:
        """``GET /api/v1/me``: the first use of an access token kills its predecessor."""
        pair = self._pairs.get(self._by_access.get(access_token, ""))
        if (
            pair is None
            or pair.status not in ("fresh", "used")
            or (not pair.company and self._clock.now() >= pair.created_at + self._expires_in)
        ):
            return error_reply(
                401, "invalid_token", "The access token is invalid.",
                (("WWW-Authenticate", 'Bearer error="invalid_token"'),),
            )
        self._take_up(pair)
        owner = {"resource_owner_type": "company"} if pair.company else {}
        return Reply(200, {"user": pair.user, "scope": pair.scope, **owner})

    def issue(
        self, *, client_id: str, user: str, scope: str, resource_owner_type: str = ""
    ) -> dict[str, Any]:
        """A token pair as an authorization-code exchange would give it, without the HTTP."""
        if client_id not in self._clients:
            raise refuse(400, "invalid_client", "Client authentication failed: unknown client.")
        granted = granted_scope(scope, self._scopes.get(client_id))
        return self._token_body(self._issue(client_id, user, granted, parent=None,
                                            company=is_company(resource_owner_type)))

    def issued_secrets(self) -> list[str]:
        """Every access and refresh token ever issued, so tests can hunt for leaks."""
        return [secret for pair in self._pairs.values()
                for secret in (pair.access_token, pair.refresh_token)]

    def refresh_token_state(self, refresh_token: str) -> str:
        """live, rotated, expired, revoked or unknown."""
        pair = self._pairs.get(refresh_token)
        if pair is None:
            return "unknown"
        if pair.status in ("revoked", "rotated"):
            return pair.status
        if not pair.company and self._clock.now() >= pair.created_at + self._refresh_lifetime:
            return "expired"
        return "live"

    def was_refreshed(self, refresh_token: str) -> bool:
        """Whether an earlier refresh presented this refresh token: sending it again reuses it."""
        return refresh_token in self._child

    def revoke_user(self, user: str, client_id: str | None = None) -> int:
        """Kill every token and pending code of ``user``; return how many pairs died."""
        def mine(client: str, owner: str) -> bool:
            return owner == user and client_id in (None, client)

        self._codes = {k: c for k, c in self._codes.items() if not mine(c.client_id, c.user)}
        victims = [
            p for p in self._pairs.values()
            if mine(p.client_id, p.user) and p.status in ("fresh", "used")
        ]
        for pair in victims:
            self._set_status(pair, "revoked")
        return len(victims)

    def _authenticate(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> str:
        client_id, secret = basic or (form.get("client_id", ""), form.get("client_secret", ""))
        known = self._clients.get(client_id)
        if known is None or not hmac.compare_digest(known.encode(), secret.encode()):
            raise refuse(
                401, "invalid_client", "Client authentication failed due to unknown client, "
                "no client authentication included, or unsupported authentication method.",
            )
        return client_id

    def _exchange(self, client_id: str, form: Mapping[str, str]) -> _Pair:
        code, redirect_uri = form.get("code", ""), form.get("redirect_uri", "")
        if not code or not redirect_uri:
            raise refuse(400, "invalid_request", "The request is missing code or redirect_uri.")
        entry = self._codes.get(code)
        if entry is None or entry.client_id != client_id:
            raise invalid_grant()
        if self._clock.now() >= entry.issued_at + CODE_LIFETIME:
            raise invalid_grant()
        if entry.redirect_uri != redirect_uri:
            raise invalid_grant()
        if entry.challenge is not None and not entry.challenge.verifies(form):
            raise invalid_grant()
        if entry.refresh_token is not None:
            pair = self._pairs[entry.refresh_token]
            if pair.status not in ("fresh", "used"):
                raise invalid_grant()
            return pair
        pair = self._issue(client_id, entry.user, entry.scope, parent=None, company=entry.company)
        self._codes[code] = replace(entry, refresh_token=pair.refresh_token)
        return pair

    def _refresh(self, client_id: str, form: Mapping[str, str]) -> _Pair:
        refresh_token = form.get("refresh_token", "")
        if not refresh_token:
            raise refuse(400, "invalid_request", "The request is missing refresh_token.")
        pair = self._pairs.get(refresh_token)
        # A company token never expires, so Doorkeeper has nothing to refresh.
        if pair is None or pair.client_id != client_id or pair.company:
            raise invalid_grant()
        if self.refresh_token_state(refresh_token) != "live":
            raise invalid_grant()
        previous = self._pairs.get(self._child.get(refresh_token, ""))
        if previous is not None and previous.status == "fresh":
            self._set_status(previous, "revoked")
        # Refreshing a pair proves its holder took it up, just like using its access token.
        self._take_up(self._pairs[refresh_token])
        return self._issue(client_id, pair.user, pair.scope, parent=refresh_token)

    def _issue(
        self, client_id: str, user: str, scope: str, *, parent: str | None, company: bool = False
    ) -> _Pair:
        now = self._clock.now()
        pair = _Pair(
            secrets.token_urlsafe(32), secrets.token_urlsafe(32), client_id, user, scope,
            int(now), int(now + self._clock_offset), parent, company=company,
        )
        self._pairs[pair.refresh_token] = pair
        self._by_access[pair.access_token] = pair.refresh_token
        if parent is not None:
            self._child[parent] = pair.refresh_token
        return pair

    def _take_up(self, pair: _Pair) -> None:
        if pair.status != "fresh":
            return
        self._set_status(pair, "used")
        parent = self._pairs.get(pair.parent or "")
        if parent is not None and parent.status in ("fresh", "used"):
            self._set_status(parent, "rotated")

    def _set_status(self, pair: _Pair, status: str) -> None:
        self._pairs[pair.refresh_token] = replace(pair, status=status)

    def _token_body(self, pair: _Pair) -> dict[str, Any]:
        # Doorkeeper leaves out a field without a value: a company token has no expires_in.
        lifetime = {} if pair.company else {"expires_in": self._expires_in}
        return {
            "access_token": pair.access_token,
            "token_type": "Bearer",
            **lifetime,
            "refresh_token": pair.refresh_token,
            "scope": pair.scope,
            "created_at": pair.reported_at,
        }
