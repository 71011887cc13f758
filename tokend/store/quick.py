"""``tokend token``: the current access token straight from the store, in milliseconds.

Importing :mod:`tokend.store.interface` would import :mod:`tokend.oauth.protocol` and with it
httpx, so this module reads the one row it needs with :mod:`sqlite3` directly,
read-only, against the schema in ``sqlite_schema.py`` (versions 2 and 3: a store is
migrated by the daemon or another command, never by this one). It never writes: a
consumer calling it in a loop cannot disturb the daemon.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import cast

from tokend.errors import NotFoundError, StateError, TokendError
from tokend.store import DATABASE_NAME
from tokend.timing import format_utc

# Expiry counts from this host's clock when the request was sent (``issued_at``); version 3
# knows when a token left the config.
_COLUMNS = ("app, user, scope, access_token, issued_at, expires_in, state, token_type, "
            "granted_scope")
_ROWS = {2: f"SELECT {_COLUMNS}, NULL FROM tokens",  # noqa: S608 -- constants only
         3: f"SELECT {_COLUMNS}, unconfigured_at FROM tokens"}  # noqa: S608
_KEYS = ("app", "user", "scope")
# Why an expired token was not refreshed, for the states that say so.
_HINTS = {
    "needs_authorization": "it needs a new authorization",
    "client_rejected": "the server rejects its application's client credentials (no new "
                       "authorization needed); see `tokend status`",
}


class _Row:
    """One stored token. A plain class: importing dataclasses would cost ``tokend token``
    a tenth of its run; no repr either, since it holds the access token."""

    __slots__ = ("access_token", "expires_at", "granted_scope", "name", "state", "token_type",
                 "unconfigured_at")

    def __init__(self, name: str, access_token: str | None, expires_at: float | None,
                 state: str, unconfigured_at: float | None, *, token_type: str | None,
                 granted_scope: str | None) -> None:
        self.name = name
        self.access_token = access_token
        self.expires_at = expires_at
        self.state = state
        self.unconfigured_at = unconfigured_at
        self.token_type = token_type or "Bearer"
        self.granted_scope = granted_scope or name.rsplit("/", 1)[-1]


class NoValidTokenError(TokendError):
    """The token exists in config or store, but there is no usable access token right now."""


def current_access_token(state_dir: Path, text: str, *, now: float) -> str:
    """The access token of ``text`` (``APP/USER/SCOPE`` or an unambiguous ``APP/USER``);
    raises as :func:`current_token`."""
    return cast(str, current_token(state_dir, text, now=now).access_token)  # never None there


def current_token(state_dir: Path, text: str, *, now: float) -> _Row:
    """The stored token ``text`` names, with a usable access token and its expiry.

    Raises :class:`NoValidTokenError` when there is no such token in the store
    (never authorized, or a typo: without loading the config the two look alike),
    when it is not authorized or has expired; :class:`NotFoundError` when the
    name is ambiguous.
    A token in ``needs_authorization`` is still returned while its access token
    lasts: the server may accept it until then. A token the daemon found gone
    from the config is not: nobody refreshes it, so a consumer must not start
    depending on it.
    """
    row = _find(state_dir / DATABASE_NAME, text)
    if row.access_token is None or row.expires_at is None:
        raise NoValidTokenError(f"{row.name} is not authorized; run `tokend authorize {row.name}`")
    if row.unconfigured_at is not None:
        raise NoValidTokenError(
            f"{row.name} is no longer in the config (since {format_utc(row.unconfigured_at)}), "
            "so tokend does not refresh it or hand it out; add it back to the config, or see "
            "`tokend status` to revoke it")
    if row.expires_at <= now:
        when = format_utc(row.expires_at)
        hint = _HINTS.get(row.state, "is the daemon running? see `tokend status`")
        raise NoValidTokenError(f"the access token of {row.name} expired at {when}; {hint}")
    return row


def _find(path: Path, text: str) -> _Row:
    """The row ``text`` names, by the rule of :func:`tokend.model.resolve_token`.

    Only the rows ``text`` can match are read, through the primary key: a store
    of 10,000 tokens is otherwise read whole on every call. All names are read
    only to list them in an error.
    """
    if not path.exists():
        raise NoValidTokenError(f"no token has been authorized yet (no store at {path})")
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise StateError(f"cannot open the state store {path}: {exc}") from None
    parts = text.split("/")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version not in _ROWS:
            known = " and ".join(map(str, _ROWS))
            raise StateError(f"state store {path} has schema version {version}; this "
                             f"`tokend token` reads versions {known}")
        query = _ROWS[version]
        matches = _rows(conn, query, parts) if len(parts) <= len(_KEYS) else []
        if len(parts) in (2, 3) and len(matches) == 1:
            return matches[0]
        if len(parts) == 3 or not matches:
            known = ", ".join(row.name for row in _rows(conn, query, [])) or "none"
            raise NoValidTokenError(
                f"no token named {text!r} has been authorized (or it is not configured); "
                f"stored tokens: {known}"
            )
    except sqlite3.Error as exc:
        raise StateError(f"cannot read the state store {path}: {exc}") from None
    finally:
        conn.close()
    listed = ", ".join(row.name for row in matches)
    raise NotFoundError(f"{text!r} is ambiguous; say which one: {listed}")


def _rows(conn: sqlite3.Connection, select: str, parts: list[str]) -> list[_Row]:
    """The rows whose first ``len(parts)`` key columns equal ``parts``, in key order."""
    where = " AND ".join(f"{column} = ?" for column in _KEYS[: len(parts)])
    query = select + (f" WHERE {where}" if where else "") + " ORDER BY app, user, scope"
    return [
        _Row(f"{app}/{user}/{scope}", access,
             None if issued is None or lifetime is None else float(issued + lifetime), state,
             unconfigured_at, token_type=token_type, granted_scope=granted_scope)
        for app, user, scope, access, issued, lifetime, state, token_type, granted_scope,
        unconfigured_at in conn.execute(query, parts)
    ]
