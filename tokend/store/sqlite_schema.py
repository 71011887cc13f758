"""The SQLite store's schema and statements, how rows map to records, and the read-only
reads of ``tokend token``, ``status`` and ``check``, which never write or migrate.

Kept apart from :mod:`tokend.store.sqlite` (connection, transactions, the
lease rules) so the SQL can be read in one place, and so ``tokend token`` reads
its one row by the same statements without that module's imports. Statements
bind every value; only constants are formatted in.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokend.errors import StateError, TokendError
from tokend.model import Token, TokenName, name_parts, pick_named
from tokend.store import DATABASE_NAME
from tokend.store.interface import TokenRecord, TokenState
from tokend.timing import format_utc

# Each migration is a list of statements applied in one transaction; its index + 1 is the
# schema version it leads to (PRAGMA user_version). Append only: never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE tokens (app TEXT NOT NULL, user TEXT NOT NULL, scope TEXT NOT NULL,
            access_token TEXT, token_type TEXT, expires_in INTEGER, refresh_token TEXT,
            granted_scope TEXT, created_at INTEGER, refresh_token_issued_at REAL,
            state TEXT NOT NULL, last_attempt_at REAL, last_refresh_at REAL, last_error TEXT,
            consecutive_failures INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL,
            PRIMARY KEY (app, user, scope)) WITHOUT ROWID""",
        """CREATE TABLE leases (app TEXT NOT NULL, user TEXT NOT NULL, scope TEXT NOT NULL,
            owner TEXT NOT NULL, expires_at REAL NOT NULL,
            PRIMARY KEY (app, user, scope)) WITHOUT ROWID""",
    ),
    # 2: generations and fenced leases; output health apart from token health; the issue
    # time on this host's clock (the old column already was the host's commit time).
    (
        "ALTER TABLE tokens RENAME COLUMN refresh_token_issued_at TO issued_at",
        "ALTER TABLE tokens ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE tokens ADD COLUMN output_error TEXT",
        "UPDATE tokens SET generation = 1 WHERE access_token IS NOT NULL",
        """UPDATE tokens SET output_error = substr(last_error, 10), last_error = NULL,
            state = 'ok' WHERE state = 'failing' AND last_error LIKE 'outputs: %'""",
        # Old leases count wall-clock seconds; nothing holds one across an upgrade.
        "DROP TABLE leases",
        """CREATE TABLE leases (app TEXT NOT NULL, user TEXT NOT NULL, scope TEXT NOT NULL,
            owner TEXT NOT NULL, epoch INTEGER NOT NULL, expires_at REAL NOT NULL,
            clock TEXT NOT NULL, PRIMARY KEY (app, user, scope)) WITHOUT ROWID""",
    ),
    # 3: the files each token was written to (a JSON list of paths), so a token removed from
    # the config, or an output moved, leaves no copy behind; when a token left the config.
    (
        "ALTER TABLE tokens ADD COLUMN outputs TEXT",
        "ALTER TABLE tokens ADD COLUMN unconfigured_at REAL",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

KEY = "app = ? AND user = ? AND scope = ?"
KEY_COLUMNS = ("app", "user", "scope")
_COLUMNS_2 = """app, user, scope, access_token, token_type, expires_in, refresh_token,
    granted_scope, created_at, issued_at, state, last_attempt_at, last_refresh_at,
    last_error, consecutive_failures, next_attempt_at, generation, output_error"""
SELECT = f"SELECT {_COLUMNS_2}, outputs, unconfigured_at FROM tokens"  # noqa: S608 -- constants
# What `tokend token` reads: it never migrates, and a version-2 store lacks only what
# version 3 added (no token of it has left the config).
READABLE = {2: f"SELECT {_COLUMNS_2}, NULL, NULL FROM tokens",  # noqa: S608 -- constants
            3: SELECT}
GET = f"{SELECT} WHERE {KEY}"
ALL = f"{SELECT} ORDER BY app, user, scope"
TOKEN_VALUES = """access_token = ?, token_type = ?, expires_in = ?, refresh_token = ?,
    granted_scope = ?, created_at = ?, issued_at = ?, state = 'ok', last_attempt_at = ?,
    last_refresh_at = ?, last_error = NULL, consecutive_failures = 0, next_attempt_at = NULL,
    generation = generation + 1"""  # noqa: S105 -- column names, not a password
SAVE = """INSERT INTO tokens (app, user, scope, access_token, token_type, expires_in,
    refresh_token, granted_scope, created_at, issued_at, state, last_attempt_at,
    last_refresh_at, generation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'ok', ?, ?, 1)
    ON CONFLICT (app, user, scope) DO UPDATE SET
    access_token = excluded.access_token, token_type = excluded.token_type,
    expires_in = excluded.expires_in, refresh_token = excluded.refresh_token,
    granted_scope = excluded.granted_scope, created_at = excluded.created_at,
    issued_at = excluded.issued_at, state = 'ok',
    last_attempt_at = excluded.last_attempt_at, last_refresh_at = excluded.last_refresh_at,
    last_error = NULL, consecutive_failures = 0, next_attempt_at = NULL,
    generation = generation + 1"""
COMMIT = f"UPDATE tokens SET {TOKEN_VALUES} WHERE {KEY} AND generation = ?"  # noqa: S608
EXISTS = f"SELECT 1 FROM tokens WHERE {KEY}"  # noqa: S608 -- constants
INSERT = """INSERT INTO tokens (app, user, scope, access_token, token_type, expires_in,
    refresh_token, granted_scope, created_at, issued_at, state, last_attempt_at,
    last_refresh_at, generation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'ok', ?, ?, 1)"""
FAILURE = f"""UPDATE tokens SET state = ?, last_attempt_at = ?, last_error = ?,
    consecutive_failures = consecutive_failures + 1, next_attempt_at = ?
    WHERE {KEY} AND generation = ?"""  # noqa: S608 -- constants
FIRST_FAILURE = """INSERT INTO tokens (app, user, scope, state, last_attempt_at, last_error,
    consecutive_failures, next_attempt_at, generation) VALUES (?, ?, ?, ?, ?, ?, 1, ?, 0)"""
DELETE = f"""UPDATE tokens SET access_token = NULL, token_type = NULL, expires_in = NULL,
    refresh_token = NULL, granted_scope = NULL, created_at = NULL, issued_at = NULL,
    state = 'not_authorized', last_error = NULL, consecutive_failures = 0,
    next_attempt_at = NULL, output_error = NULL, generation = generation + 1
    WHERE {KEY} AND generation = ?"""  # noqa: S608 -- constants
OUTPUT_PROBLEM = f"UPDATE tokens SET output_error = ? WHERE {KEY}"  # noqa: S608 -- constants
PUBLISHED = f"UPDATE tokens SET outputs = ?, unconfigured_at = ? WHERE {KEY}"  # noqa: S608
LEASE_HOLDER = f"SELECT owner, epoch, expires_at, clock FROM leases WHERE {KEY}"  # noqa: S608
LEASE_TAKE = "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?, ?)"
# A lease is live when its epoch is current and its end has not passed on this boot's clock.
LEASE_LIVE = f"""SELECT 1 FROM leases WHERE {KEY} AND epoch = ? AND owner = ?
    AND clock = ? AND expires_at > ?"""  # noqa: S608 -- constants
# Released leases keep their row, so the epoch only ever grows.
LEASE_RELEASE = f"""UPDATE leases SET owner = '', expires_at = 0
    WHERE {KEY} AND epoch = ? AND owner = ?"""  # noqa: S608 -- constants


def version(conn: sqlite3.Connection, path: Path) -> int:
    """The store's schema version; a newer one than this tokend knows is refused."""
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise StateError(
            f"state store {path} has schema version {found}, written by a newer "
            f"tokend; this one knows up to {SCHEMA_VERSION}"
        )
    return found


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the store to :data:`SCHEMA_VERSION` in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statements in MIGRATIONS[version(conn, path):]:  # re-read under the lock
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def key(name: TokenName) -> tuple[str, str, str]:
    return (name.app, name.user, name.scope)


def record(row: tuple[Any, ...]) -> TokenRecord:
    token = None
    if row[3] is not None:
        token = Token(
            access_token=row[3], token_type=row[4], expires_in=row[5],
            refresh_token=row[6], scope=row[7], created_at=row[8],
        )
    return TokenRecord(
        name=TokenName(row[0], row[1], row[2]), token=token, issued_at=row[9],
        state=TokenState(row[10]), last_attempt_at=row[11], last_refresh_at=row[12],
        last_error=row[13], consecutive_failures=row[14], next_attempt_at=row[15],
        generation=row[16], output_error=row[17],
        outputs=tuple(json.loads(row[18])) if row[18] else (), unconfigured_at=row[19],
    )


def outputs_value(paths: tuple[str, ...]) -> str | None:
    return json.dumps(list(paths)) if paths else None


def token_values(token: Token) -> tuple[Any, ...]:
    return (token.access_token, token.token_type, token.expires_in, token.refresh_token,
            token.scope, token.created_at)


# --- Readers (`tokend token`, status, check): read-only, without the store's connection ------

# Why an expired token was not refreshed, for the states that say so.
_HINTS = {
    "needs_authorization": "it needs a new authorization",
    "client_rejected": "the server rejects its application's client credentials (no new "
                       "authorization needed); see `tokend status`",
}


class NoValidTokenError(TokendError):
    """The token exists in config or store, but there is no usable access token right now."""


@dataclass(frozen=True, slots=True)
class UsableToken:
    """A token ``tokend token`` may hand out: its access token is live right now."""

    name: TokenName
    token: Token
    expires_at: float | None
    """On this host's clock: when it was requested, plus ``expires_in``; ``None``: never."""


def current_access_token(state_dir: Path, text: str, *, now: float) -> str:
    """The access token of ``text`` (``APP/USER/SCOPE`` or an unambiguous ``APP/USER``);
    raises as :func:`current_token`."""
    return current_token(state_dir, text, now=now).token.access_token


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
    found = _find(state_dir / DATABASE_NAME, text)
    expires_at = found.expires_at  # None with a token: it never expires (a company token)
    if found.token is None or not found.has_token:
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
    return UsableToken(found.name, found.token, expires_at)


def _find(path: Path, text: str) -> TokenRecord:
    """The record ``text`` names, by the rule of :func:`tokend.model.pick_named`.

    Read-only (a store is migrated by the daemon or another command, never by
    this one; it never writes, so a consumer calling it in a loop cannot disturb
    the daemon), and only the rows ``text`` can match are read, through the
    primary key: a store of 10,000 tokens is otherwise read whole on every call.
    All names are read only to list them in an error.
    """
    if not path.exists():
        raise NoValidTokenError(f"no token has been authorized yet (no store at {path})")
    conn = _connect_read_only(path)
    parts = name_parts(text)
    try:
        select = _readable_select(conn, path, "`tokend token`")
        matches = _records(conn, select, parts) if len(parts) <= len(KEY_COLUMNS) else []
        found = pick_named(text, matches)
        if found is None:
            known = ", ".join(str(row.name) for row in _records(conn, select, [])) or "none"
            raise NoValidTokenError(
                f"no token named {text!r} has been authorized (or it is not configured); "
                f"stored tokens: {known}"
            )
    except sqlite3.Error as exc:
        raise StateError(f"cannot read the state store {path}: {exc}") from None
    finally:
        conn.close()
    return found


def read_records(state_dir: Path) -> list[TokenRecord]:
    """Every stored record, read-only, or none when no store exists: ``status`` and ``check``
    only look, so they neither create, migrate nor tighten anything, and a store of the
    previous schema version is read as it is (during an upgrade, or by another user)."""
    path = state_dir / DATABASE_NAME
    if not path.exists():
        return []
    conn = _connect_read_only(path)
    try:
        return _records(conn, _readable_select(conn, path, "this tokend"), [])
    except sqlite3.Error as exc:
        raise StateError(f"cannot read the state store {path}: {exc}") from None
    finally:
        conn.close()


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that writes nothing, not even beside the store.

    With a ``-wal`` file (a writer has the store open, or crashed) the read goes
    through the writer's WAL index. Without one, every change is in the store
    itself, and it is read as immutable: SQLite would otherwise create ``-wal``
    and ``-shm`` files and leave them behind, owned by the reader. A writer that
    starts meanwhile writes to a new ``-wal``, not to the store, until it
    checkpoints.
    """
    immutable = "" if path.with_name(path.name + "-wal").exists() else "&immutable=1"
    try:
        return sqlite3.connect(f"{path.as_uri()}?mode=ro{immutable}", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise StateError(f"cannot open the state store {path}: {exc}") from None


def _readable_select(conn: sqlite3.Connection, path: Path, reader: str) -> str:
    """The statement that reads every column of the store's schema version, as it is."""
    schema = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if schema not in READABLE:
        known = " and ".join(map(str, READABLE))
        raise StateError(f"state store {path} has schema version {schema}; {reader} "
                         f"reads versions {known}")
    return READABLE[schema]


def _records(conn: sqlite3.Connection, select: str, parts: list[str]) -> list[TokenRecord]:
    """The records whose first ``len(parts)`` key columns equal ``parts``, in key order."""
    where = " AND ".join(f"{column} = ?" for column in KEY_COLUMNS[: len(parts)])
    query = select + (f" WHERE {where}" if where else "") + " ORDER BY app, user, scope"
    return [record(row) for row in conn.execute(query, parts)]
