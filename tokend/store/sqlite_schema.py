"""The SQLite store's schema and statements: what the tables hold and how rows map to records.

Kept apart from :mod:`tokend.store.sqlite` (connection, transactions, the
lease rules) so the SQL can be read in one place. Statements bind every value;
only constants are formatted in.
"""

from __future__ import annotations

import json
from typing import Any

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
COLUMNS = """app, user, scope, access_token, token_type, expires_in, refresh_token,
    granted_scope, created_at, issued_at, state, last_attempt_at, last_refresh_at,
    last_error, consecutive_failures, next_attempt_at, generation, output_error, outputs,
    unconfigured_at"""
SELECT = f"SELECT {COLUMNS} FROM tokens"  # noqa: S608 -- constants only, values are bound
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
