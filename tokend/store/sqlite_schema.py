"""The SQLite store's schema and statements, where each column is in a row, how rows map to
records, and the read-only reads of ``status`` and ``check``, which never write or migrate.

Kept apart from :mod:`tokend.store.sqlite` (connection, transactions, the
lease rules) so the SQL can be read in one place, and so ``tokend token``
(:mod:`tokend.store.current`) reads its one row by the same statements and column
mapping without that module's imports, nor the classes of a record. Statements
bind every value; only constants are formatted in.
"""

from __future__ import annotations

import sqlite3
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokend.errors import StateError
from tokend.store import DATABASE_NAME

if TYPE_CHECKING:
    from collections.abc import Callable

    from tokend.model import Token, TokenName
    from tokend.store.interface import TokenRecord, TokenState

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
# Where each column is in a row of SELECT (and of the PostgreSQL store's): the one row
# mapping, of record() and of the fast read alike.
(APP, USER, SCOPE, ACCESS_TOKEN, TOKEN_TYPE, EXPIRES_IN, REFRESH_TOKEN, GRANTED_SCOPE,
 CREATED_AT, ISSUED_AT, STATE, LAST_ATTEMPT_AT, LAST_REFRESH_AT, LAST_ERROR,
 CONSECUTIVE_FAILURES, NEXT_ATTEMPT_AT, GENERATION, OUTPUT_ERROR, OUTPUTS,
 UNCONFIGURED_AT) = range(20)
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
    """The record of a row. The daemon holds one for every token, so what rows repeat is
    held once: an application's, scope's or token type's name is one string for all tokens
    (and the config's), and a row's equal times are one object."""
    token_class, name_class, record_class, state_class, loads = _record_types()
    token = None
    attempt = _same(row[LAST_ATTEMPT_AT], row[ISSUED_AT])
    if row[ACCESS_TOKEN] is not None:
        token = token_class(
            access_token=row[ACCESS_TOKEN], token_type=_text(row[TOKEN_TYPE]),
            expires_in=row[EXPIRES_IN], refresh_token=row[REFRESH_TOKEN],
            scope=_text(row[GRANTED_SCOPE]), created_at=row[CREATED_AT],
        )
    return record_class(
        name=name_class(sys.intern(row[APP]), row[USER], sys.intern(row[SCOPE])), token=token,
        issued_at=row[ISSUED_AT], state=state_class(row[STATE]), last_attempt_at=attempt,
        last_refresh_at=_same(row[LAST_REFRESH_AT], attempt),
        last_error=row[LAST_ERROR], consecutive_failures=row[CONSECUTIVE_FAILURES],
        next_attempt_at=row[NEXT_ATTEMPT_AT], generation=row[GENERATION],
        output_error=row[OUTPUT_ERROR],
        outputs=tuple(loads(row[OUTPUTS])) if row[OUTPUTS] else (),
        unconfigured_at=row[UNCONFIGURED_AT],
    )


@cache
def _record_types() -> tuple[type[Token], type[TokenName], type[TokenRecord], type[TokenState],
                             Callable[[str], Any]]:
    """What a record is built of, imported by the first record built: `tokend token` reads
    its row without them (they would be most of its start-up)."""
    import json  # noqa: PLC0415 -- see above

    from tokend.model import Token, TokenName  # noqa: PLC0415 -- see above
    from tokend.store.interface import TokenRecord, TokenState  # noqa: PLC0415 -- see above

    return Token, TokenName, TokenRecord, TokenState, json.loads


def _text(value: Any) -> Any:
    return value if value is None else sys.intern(value)  # a column SQLite did not check


def _same(value: float | None, other: float | None) -> float | None:
    return other if value == other and type(value) is type(other) else value


def outputs_value(paths: tuple[str, ...]) -> str | None:
    import json  # noqa: PLC0415 -- only a writer needs it, never `tokend token`

    return json.dumps(list(paths)) if paths else None


def token_values(token: Token) -> tuple[Any, ...]:
    return (token.access_token, token.token_type, token.expires_in, token.refresh_token,
            token.scope, token.created_at)


# --- Readers (status, check, and tokend.store.current): read-only, without the store's connection


def read_records(state_dir: Path) -> list[TokenRecord]:
    """Every stored record, read-only, or none when no store exists: ``status`` and ``check``
    only look, so they neither create, migrate nor tighten anything, and a store of the
    previous schema version is read as it is (during an upgrade, or by another user)."""
    path = state_dir / DATABASE_NAME
    if not path.exists():
        return []
    conn = connect_read_only(path)
    try:
        return [record(row)
                for row in rows_where(conn, readable_select(conn, path, "this tokend"), [])]
    except sqlite3.Error as exc:
        raise StateError(f"cannot read the state store {path}: {exc}") from None
    finally:
        conn.close()


def connect_read_only(path: Path) -> sqlite3.Connection:
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


def readable_select(conn: sqlite3.Connection, path: Path, reader: str) -> str:
    """The statement that reads every column of the store's schema version, as it is."""
    schema = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if schema not in READABLE:
        known = " and ".join(map(str, READABLE))
        raise StateError(f"state store {path} has schema version {schema}; {reader} "
                         f"reads versions {known}")
    return READABLE[schema]


def rows_where(conn: sqlite3.Connection, select: str, parts: list[str]) -> list[tuple[Any, ...]]:
    """The rows whose first ``len(parts)`` key columns equal ``parts``, in key order."""
    where = " AND ".join(f"{column} = ?" for column in KEY_COLUMNS[: len(parts)])
    query = select + (f" WHERE {where}" if where else "") + " ORDER BY app, user, scope"
    return conn.execute(query, parts).fetchall()
