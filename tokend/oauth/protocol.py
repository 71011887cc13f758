"""The token itself, and the one place that builds token-endpoint requests and parses answers.

Both clients in ``factorial.py`` (sync and async) call into this module, so the
protocol is written down exactly once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import httpx

from tokend.errors import NetworkError, PermanentOAuthError, TransientOAuthError
from tokend.model import DEFAULT_BASE_URL, SCOPES, Token, scope_name
from tokend.oauth import pkce

# Fields whose values must never reach a message, even when a server echoes them back.
_SECRET_FIELDS = ("client_secret", "code", "code_verifier", "refresh_token", "token")
_DESCRIPTION_LIMIT = 200
# Shorter values are not real secrets, and redacting them would shred every message.
_MIN_SECRET_LENGTH = 4
# The largest epoch datetime can show; a token expiring later would break ``Token.expires_at``.
_MAX_EPOCH = 253402300799
_TRANSIENT_STATUSES = frozenset({408, 429})
# RFC 6749 codes that mean "try again later" whatever status they come with.
_TRANSIENT_CODES = frozenset({"server_error", "temporarily_unavailable", "slow_down"})


def validate_scope(scope: str) -> str:
    """Return ``scope`` if the seed client knows it; every scope needs its own token, so no
    aliases. The seed's documented contract: the daemon and CLI take any scope."""
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    return scope


def authorization_link(
    *,
    client_id: str,
    redirect_uri: str,
    scope: str = "read+write",
    base_url: str = DEFAULT_BASE_URL,
    state: str | None = None,
    code_challenge: str | None = None,
    resource_owner_type: str | None = None,
) -> str:
    """The URL a person opens to grant access, with parameters in the seed library's order.

    The scope's ``+`` means a space (``read write``, ``employees time_off``); form-encoding
    the space gives the ``scope=read+write`` the server expects, while ``redirect_uri`` is
    percent-encoded. ``resource_owner_type="company"`` asks an admin for a company token.
    A ``code_challenge`` (:mod:`tokend.oauth.pkce`) is sent with its method, S256.
    """
    params = [
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("response_type", "code"),
        ("scope", scope_name(scope).replace("+", " ")),
    ]
    if state is not None:
        params.append(("state", state))
    if code_challenge is not None:
        params += [("code_challenge", code_challenge), ("code_challenge_method", pkce.METHOD)]
    if resource_owner_type is not None:
        params.append(("resource_owner_type", resource_owner_type))
    return f"{base_url.rstrip('/')}/oauth/authorize?{urlencode(params)}"


def seed_authorization_link(
    *,
    client_id: str,
    redirect_uri: str,
    scope: str = "read+write",
    base_url: str = DEFAULT_BASE_URL,
    state: str | None = None,
    code_challenge: str | None = None,
) -> str:
    """:func:`authorization_link` for the seed client's three scopes only (its contract)."""
    return authorization_link(client_id=client_id, redirect_uri=redirect_uri,
                              scope=validate_scope(scope), base_url=base_url, state=state,
                              code_challenge=code_challenge)


@dataclass(frozen=True, repr=False)
class OAuthRequest:
    """A form POST to the OAuth server; ``repr`` names the fields but never their values."""

    url: str
    form: Mapping[str, str]

    @property
    def secrets(self) -> tuple[str, ...]:
        """The values an error message must never contain."""
        return tuple(self.form[name] for name in _SECRET_FIELDS if self.form.get(name))

    def __repr__(self) -> str:
        return f"OAuthRequest(url={self.url!r}, fields={sorted(self.form)!r})"


def authorization_code_request(
    *, base_url: str, client_id: str, client_secret: str, redirect_uri: str, code: str,
    code_verifier: str | None = None,
) -> OAuthRequest:
    """Exchange an authorization key for the first token (with the PKCE verifier, if any)."""
    form = {
        "client_id": client_id,
        "client_secret": client_secret,
        "code": code,
        "grant_type": "authorization_code",
        "redirect_uri": redirect_uri,
    }
    if code_verifier is not None:
        form["code_verifier"] = code_verifier
    return OAuthRequest(f"{base_url.rstrip('/')}/oauth/token", form)


def refresh_token_request(
    *, base_url: str, client_id: str, client_secret: str, refresh_token: str
) -> OAuthRequest:
    """Trade a refresh token for a new access token and a new refresh token (rotation)."""
    return OAuthRequest(
        f"{base_url.rstrip('/')}/oauth/token",
        {
            "client_id": client_id,
            "client_secret": client_secret,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
        },
    )


def revoke_request(
    *, base_url: str, client_id: str, client_secret: str, token: str
) -> OAuthRequest:
    """Revoke an access or refresh token (RFC 7009)."""
    return OAuthRequest(
        f"{base_url.rstrip('/')}/oauth/revoke",
        {"client_id": client_id, "client_secret": client_secret, "token": token},
    )


def parse_token_response(
    status_code: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: Iterable[str] = (),
    now: float | None = None,
) -> Token:
    """Turn any answer of the token endpoint into a :class:`Token` or an :class:`OAuthError`.

    A success body that is not a complete token is transient: the server may have
    been cut off mid-answer, and the refresh token we sent still works. ``expires_in``
    absent or ``null`` is a token that never expires (Factorial's company tokens).
    """
    _raise_for_error(status_code, headers, body, secrets=secrets, now=now)
    data = _json_object(body)
    if data is None:
        raise TransientOAuthError(
            "invalid_response", "token response is not a JSON object", status_code=status_code
        )
    fields = {
        name: _field(data, name, status_code)
        for name in ("access_token", "token_type", "refresh_token", "scope")
    }
    expires_in = (None if data.get("expires_in") is None
                  else _int_field(data, "expires_in", status_code))
    created_at = _int_field(data, "created_at", status_code)
    if created_at < 0 or (expires_in is not None and (
        expires_in <= 0 or created_at + expires_in > _MAX_EPOCH
    )):
        raise TransientOAuthError(
            "invalid_response", "token response has an impossible lifetime", status_code=status_code
        )
    return Token(expires_in=expires_in, created_at=created_at, **fields)


def parse_revoke_response(
    status_code: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: Iterable[str] = (),
    now: float | None = None,
) -> None:
    """Accept any success: RFC 7009 answers 200 even for unknown tokens, and we need no body."""
    _raise_for_error(status_code, headers, body, secrets=secrets, now=now)


def request_error(exc: httpx.RequestError, *, secrets: Iterable[str] = ()) -> TransientOAuthError:
    """The error to raise when httpx could not complete the request at all."""
    detail = _scrub(f"{type(exc).__name__}: {exc}", secrets)
    if isinstance(exc, httpx.TransportError):
        return NetworkError("network_error", detail)
    return TransientOAuthError("invalid_response", detail)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date), else None."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _raise_for_error(
    status_code: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: Iterable[str],
    now: float | None,
) -> None:
    """Raise the classified error unless ``status_code`` is a success.

    The status decides transient versus permanent (only the RFC's "retry later"
    codes make a 4xx transient); the body names the error.
    """
    if 200 <= status_code < 300:
        return
    secrets = tuple(secrets)
    data = _json_object(body)
    code = data.get("error") if data is not None else None
    description = data.get("error_description") if data is not None else None
    if not isinstance(code, str) or not code.strip():
        if data is None and body.strip():
            code = "invalid_response"
            description = f"non-JSON body ({_header(headers, 'content-type') or 'no content type'})"
        else:
            code = "server_error" if status_code >= 500 else "invalid_response"
    code = _scrub(code, secrets)[:64] or "invalid_response"
    text = _scrub(description, secrets) if isinstance(description, str) else ""
    retry_after = parse_retry_after(_header(headers, "retry-after"), now=now)
    transient = (
        not 400 <= status_code < 500
        or status_code in _TRANSIENT_STATUSES
        or code in _TRANSIENT_CODES
    )
    cls = TransientOAuthError if transient else PermanentOAuthError
    raise cls(code, text, status_code=status_code, retry_after=retry_after)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _field(data: Mapping[str, Any], name: str, status_code: int) -> str:
    value = data.get(name)
    if not isinstance(value, str) or (not value and name != "scope"):
        raise TransientOAuthError(
            "invalid_response",
            f"token response field {name!r} is missing or not a string",
            status_code=status_code,
        )
    return value


def _int_field(data: Mapping[str, Any], name: str, status_code: int) -> int:
    value = data.get(name)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TransientOAuthError(
            "invalid_response",
            f"token response field {name!r} is missing or not an integer",
            status_code=status_code,
        )
    return value


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup, so plain dicts work as well as ``httpx.Headers``."""
    return next((v for k, v in headers.items() if k.lower() == name), None)


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """Make server text safe for a log line: no secrets, no control characters, bounded."""
    for secret in secrets:
        if len(secret) >= _MIN_SECRET_LENGTH:
            text = text.replace(secret, "[redacted]")
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    if len(text) > _DESCRIPTION_LIMIT:
        text = text[: _DESCRIPTION_LIMIT - 1] + "…"
    return text
