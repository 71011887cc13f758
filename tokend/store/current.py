"""The current token of a name, for ``tokend token`` and ``tokend exec``: the rule of what a
consumer may be handed, and the read of its one row from the SQLite store.

Read-only, without the store's connection, and without building a record: these run
inside other programs many times a minute, so they read the row through the store's
column mapping (:mod:`tokend.store.sqlite_schema`) and never import the store's contract
or the model's classes. The shared PostgreSQL store's record goes through the same rule
(:meth:`Stored.of_record`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokend.errors import StateError, TokendError
from tokend.names import join_name, name_parts, pick_named
from tokend.store import DATABASE_NAME, token_expiry
from tokend.store.sqlite_schema import (
    ACCESS_TOKEN,
    APP,
    EXPIRES_IN,
    GRANTED_SCOPE,
    ISSUED_AT,
    KEY_COLUMNS,
    SCOPE,
    STATE,
    TOKEN_TYPE,
    UNCONFIGURED_AT,
    connect_read_only,
    readable_select,
    rows_where,
)
from tokend.timing import format_utc

if TYPE_CHECKING:
    from tokend.store.interface import TokenRecord

# Why an expired token was not refreshed, for the states that say so.
_HINTS = {
    "needs_authorization": "it needs a new authorization",
    "client_rejected": "the server rejects its application's client credentials (no new "
                       "authorization needed); see `tokend status`",
}


class NoValidTokenError(TokendError):
    """The token exists in config or store, but there is no usable access token right now."""


class UsableToken:
    """A token ``tokend token`` may hand out: its access token is live right now.

    Plain classes here, as :class:`tokend.config.quick.QuickOutput`: a dataclass would cost
    every start the import of dataclasses and inspect, and the generated code's compile.
    """

    __slots__ = ("access_token", "expires_at", "name", "scope", "token_type")

    def __init__(self, name: str, access_token: str, token_type: str, scope: str,
                 expires_at: float | None) -> None:
        self.name = name
        self.access_token = access_token
        self.token_type = token_type
        self.scope = scope
        """The scope the server granted."""
        self.expires_at = expires_at
        """On this host's clock: when it was requested, plus ``expires_in``; ``None``: never."""


class Stored:
    """What :func:`usable_token` reads of a stored token: from a row of the SQLite file,
    not built into a record (``tokend token`` reads one row per start), or from a record."""

    __slots__ = ("access_token", "expires_at", "has_token", "name", "scope", "state",
                 "token_type", "unconfigured_at")

    def __init__(self, name: str, token: tuple[str, str, str] | None, *, has_token: bool,
                 expires_at: float | None, state: str, unconfigured_at: float | None) -> None:
        self.name = name
        self.access_token = None if token is None else token[0]
        self.token_type = "" if token is None else token[1]  # read only with a token
        self.scope = "" if token is None else token[2]
        self.has_token = has_token
        self.expires_at = expires_at
        self.state = state
        self.unconfigured_at = unconfigured_at

    @classmethod
    def of_row(cls, row: tuple[Any, ...]) -> Stored:
        """A row's, as :func:`~tokend.store.sqlite_schema.record` maps it: a token with an
        issue time is stored."""
        token = None if row[ACCESS_TOKEN] is None else (
            row[ACCESS_TOKEN], row[TOKEN_TYPE], row[GRANTED_SCOPE])
        return cls(join_name(row[APP:SCOPE + 1]), token,
                   has_token=token is not None and row[ISSUED_AT] is not None,
                   expires_at=None if token is None else token_expiry(row[ISSUED_AT],
                                                                      row[EXPIRES_IN]),
                   state=row[STATE], unconfigured_at=row[UNCONFIGURED_AT])

    @classmethod
    def of_record(cls, found: TokenRecord) -> Stored:
        """A record's (the shared store's)."""
        token = found.token
        return cls(str(found.name), None if token is None else (
            token.access_token, token.token_type, token.scope), has_token=found.has_token,
            expires_at=found.expires_at, state=found.state, unconfigured_at=found.unconfigured_at)


def current_access_token(state_dir: Path, text: str, *, now: float) -> str:
    """The access token of ``text`` (``APP/USER/SCOPE`` or an unambiguous ``APP/USER``);
    raises as :func:`current_token`."""
    return current_token(state_dir, text, now=now).access_token


def current_token(state_dir: Path, text: str, *, now: float) -> UsableToken:
    """The token ``text`` names (``APP/USER/SCOPE`` or an unambiguous ``APP/USER``).

    Raises :class:`NoValidTokenError` when there is no such token in the store
    (never authorized, or a typo: without loading the config the two look alike),
    when it is not authorized or has expired; :class:`NotFoundError` when the
    name is ambiguous.
    A token in ``needs_authorization`` is still returned while its access token
    lasts: the server may accept it until then. A token the daemon found gone
    from the config is not: nobody refreshes it, so a consumer must not start
    depending on it.
    """
    return usable_token(_find(state_dir / DATABASE_NAME, text), now=now)


def usable_token(found: Stored, *, now: float) -> UsableToken:
    """``found`` if a consumer may use it now: the rule of :func:`current_token`, for the
    SQLite file and the shared PostgreSQL store alike."""
    expires_at = found.expires_at  # None with a token: it never expires (a company token)
    if found.access_token is None or not found.has_token:
        raise NoValidTokenError(
            f"{found.name} is not authorized; run `tokend authorize {found.name}`")
    if found.unconfigured_at is not None:
        raise NoValidTokenError(
            f"{found.name} is no longer in the config (since {format_utc(found.unconfigured_at)}), "
            "so tokend does not refresh it or hand it out; add it back to the config, or see "
            "`tokend status` to revoke it")
    if expires_at is not None and expires_at <= now:
        when = format_utc(expires_at)
        hint = _HINTS.get(found.state, "is the daemon running? see `tokend status`")
        raise NoValidTokenError(f"the access token of {found.name} expired at {when}; {hint}")
    return UsableToken(found.name, found.access_token, found.token_type, found.scope,
                       expires_at)


def _find(path: Path, text: str) -> Stored:
    """The stored token ``text`` names, by the rule of :func:`tokend.model.pick_named`.

    Read-only (a store is migrated by the daemon or another command, never by
    this one; it never writes, so a consumer calling it in a loop cannot disturb
    the daemon), and only the rows ``text`` can match are read, through the
    primary key: a store of 10,000 tokens is otherwise read whole on every call.
    All names are read only to list them in an error.
    """
    if not path.exists():
        raise NoValidTokenError(f"no token has been authorized yet (no store at {path})")
    conn = connect_read_only(path)
    parts = name_parts(text)
    try:
        select = readable_select(conn, path, "`tokend token`")
        matches = ([Stored.of_row(row) for row in rows_where(conn, select, parts)]
                   if len(parts) <= len(KEY_COLUMNS) else [])
        found = pick_named(text, matches)
        if found is None:
            known = ", ".join(join_name(row[APP:SCOPE + 1])
                              for row in rows_where(conn, select, [])) or "none"
            raise NoValidTokenError(
                f"no token named {text!r} has been authorized (or it is not configured); "
                f"stored tokens: {known}"
            )
    except sqlite3.Error as exc:
        raise StateError(f"cannot read the state store {path}: {exc}") from None
    finally:
        conn.close()
    return found
