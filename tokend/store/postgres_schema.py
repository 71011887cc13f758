"""The PostgreSQL store's schema and statements, apart from connections and the lease rules.

Columns come in the SQLite store's order, so ``sqlite_schema.record`` maps a row of either
to the same :class:`TokenRecord`; the user column is ``account`` because ``user`` is
reserved in PostgreSQL. Lease ends are ``timestamptz`` on the database's clock: every
host compares against the same ``now()``, so no host's clock skew can stretch or cut a
lease. Statements bind every value; only constants are formatted in.
"""

from __future__ import annotations

from typing import Any

import psycopg

from tokend.errors import StateError
from tokend.model import Token, TokenName

MIGRATION_LOCK = 0x746F6B656E64  # "tokend": the advisory lock key every migrating daemon takes
CHANNEL = "tokend_tokens"
"""The NOTIFY channel: a token's name and generation after each token write, never a secret."""

# Each migration is applied in one transaction; its index + 1 is the schema version it leads
# to. Append only: never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE tokens (app text NOT NULL, account text NOT NULL, scope text NOT NULL,
            access_token text, token_type text, expires_in bigint, refresh_token text,
            granted_scope text, created_at bigint, issued_at double precision,
            state text NOT NULL, last_attempt_at double precision,
            last_refresh_at double precision, last_error text,
            consecutive_failures integer NOT NULL DEFAULT 0, next_attempt_at double precision,
            generation bigint NOT NULL DEFAULT 0, PRIMARY KEY (app, account, scope))""",
        # What each host did with a token's outputs: its own files and their health, and
        # whether its config still names the token. Shared columns would make each host
        # remove the others' files as outputs "moved away from".
        """CREATE TABLE host_files (app text NOT NULL, account text NOT NULL,
            scope text NOT NULL, host text NOT NULL, output_error text, outputs text,
            unconfigured_at double precision, PRIMARY KEY (app, account, scope, host))""",
        """CREATE TABLE leases (app text NOT NULL, account text NOT NULL, scope text NOT NULL,
            owner text NOT NULL, epoch bigint NOT NULL, expires_at timestamptz NOT NULL,
            PRIMARY KEY (app, account, scope))""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS tokend_schema (version integer NOT NULL)"
VERSION = "SELECT max(version) FROM tokend_schema"
SET_VERSION = "INSERT INTO tokend_schema VALUES (%s)"

# "now" on the database's clock; a test may bind its own instant to let a lease run out at once.
NOW = "coalesce(%(at)s::timestamptz, now())"
KEY = "app = %(app)s AND account = %(account)s AND scope = %(scope)s"
COLUMNS = """t.app, t.account, t.scope, access_token, token_type, expires_in, refresh_token,
    granted_scope, created_at, issued_at, state, last_attempt_at, last_refresh_at,
    last_error, consecutive_failures, next_attempt_at, generation, output_error, outputs,
    unconfigured_at"""
# A record is the shared token with this host's files (``%(host)s``).
SELECT = f"""SELECT {COLUMNS} FROM tokens t LEFT JOIN host_files h ON h.app = t.app
    AND h.account = t.account AND h.scope = t.scope AND h.host = %(host)s"""  # noqa: S608
GET = f"{SELECT} WHERE t.app = %(app)s AND t.account = %(account)s AND t.scope = %(scope)s"
ALL = f"{SELECT} ORDER BY t.app, t.account, t.scope"
TOKEN_VALUES = """access_token = %(access_token)s, token_type = %(token_type)s,
    expires_in = %(expires_in)s, refresh_token = %(refresh_token)s,
    granted_scope = %(granted_scope)s, created_at = %(created_at)s, issued_at = %(issued_at)s,
    state = 'ok', last_attempt_at = %(now)s, last_refresh_at = %(now)s, last_error = NULL,
    consecutive_failures = 0, next_attempt_at = NULL"""  # noqa: S105 -- column names
INSERT = """INSERT INTO tokens (app, account, scope, access_token, token_type, expires_in,
    refresh_token, granted_scope, created_at, issued_at, state, last_attempt_at,
    last_refresh_at, generation) VALUES (%(app)s, %(account)s, %(scope)s, %(access_token)s,
    %(token_type)s, %(expires_in)s, %(refresh_token)s, %(granted_scope)s, %(created_at)s,
    %(issued_at)s, 'ok', %(now)s, %(now)s, 1)"""
WRITTEN = "RETURNING app, account, scope, generation"


def notifying(statement: str) -> str:
    """``statement`` (a token write ending in :data:`WRITTEN`) and its ``NOTIFY`` in one
    statement: the other hosts hear of exactly the writes that were committed."""
    return f"""WITH written AS ({statement}) SELECT generation, pg_notify('{CHANNEL}',
        json_build_object('app', app, 'user', account, 'scope', scope,
                          'generation', generation)::text) FROM written"""  # noqa: S608


SAVE = notifying(f"""{INSERT} ON CONFLICT (app, account, scope) DO UPDATE SET {TOKEN_VALUES},
    generation = tokens.generation + 1 {WRITTEN}""")
COMMIT = notifying(f"""UPDATE tokens SET {TOKEN_VALUES}, generation = generation + 1
    WHERE {KEY} AND generation = %(generation)s {WRITTEN}""")  # noqa: S608
INSERT_NEW = notifying(f"{INSERT} ON CONFLICT DO NOTHING {WRITTEN}")
FAILURE = f"""UPDATE tokens SET state = %(state)s, last_attempt_at = %(now)s,
    last_error = %(error)s, consecutive_failures = consecutive_failures + 1,
    next_attempt_at = %(next)s WHERE {KEY} AND generation = %(generation)s"""  # noqa: S608
FIRST_FAILURE = """INSERT INTO tokens (app, account, scope, state, last_attempt_at, last_error,
    consecutive_failures, next_attempt_at, generation) VALUES (%(app)s, %(account)s,
    %(scope)s, %(state)s, %(now)s, %(error)s, 1, %(next)s, 0) ON CONFLICT DO NOTHING"""
DELETE = notifying(f"""UPDATE tokens SET access_token = NULL, token_type = NULL, expires_in = NULL,
    refresh_token = NULL, granted_scope = NULL, created_at = NULL, issued_at = NULL,
    state = 'not_authorized', last_error = NULL, consecutive_failures = 0,
    next_attempt_at = NULL, generation = generation + 1
    WHERE {KEY} AND generation = %(generation)s {WRITTEN}""")  # noqa: S608
FORGET_PROBLEMS = f"UPDATE host_files SET output_error = NULL WHERE {KEY}"  # noqa: S608
# Only a stored token has files: the INSERT ... SELECT finds no row for an unknown one.
OUTPUT_PROBLEM = f"""INSERT INTO host_files (app, account, scope, host, output_error)
    SELECT app, account, scope, %(host)s, %(error)s FROM tokens WHERE {KEY}
    ON CONFLICT (app, account, scope, host) DO UPDATE SET
    output_error = excluded.output_error"""  # noqa: S608 -- constants
PUBLISHED = f"""INSERT INTO host_files (app, account, scope, host, outputs, unconfigured_at)
    SELECT app, account, scope, %(host)s, %(outputs)s, %(unconfigured)s FROM tokens
    WHERE {KEY} ON CONFLICT (app, account, scope, host) DO UPDATE SET
    outputs = excluded.outputs, unconfigured_at = excluded.unconfigured_at"""  # noqa: S608

# A claim is one statement: take the lease where it is free, ours, expired on the database's
# clock, or held by a holder proven dead at the epoch we saw; no row back means busy. Released
# leases keep their row, so the epoch only ever grows.
CLAIM = f"""INSERT INTO leases AS held (app, account, scope, owner, epoch, expires_at)
    VALUES (%(app)s, %(account)s, %(scope)s, %(owner)s, 1,
            {NOW} + make_interval(secs => %(lease)s))
    ON CONFLICT (app, account, scope) DO UPDATE SET owner = excluded.owner,
        epoch = held.epoch + 1, expires_at = excluded.expires_at
    WHERE held.owner IN ('', excluded.owner) OR held.expires_at <= {NOW}
        OR held.epoch = %(dead_epoch)s
    RETURNING epoch"""  # noqa: S608 -- constants
HOLDER = f"SELECT owner, epoch FROM leases WHERE {KEY}"  # noqa: S608 -- constants
# A fenced write locks its lease row, so no claim can take the lease between the check and
# the write: the successor then reads what this write left.
LEASE_LIVE = f"""SELECT 1 FROM leases WHERE {KEY} AND epoch = %(epoch)s AND owner = %(owner)s
    AND expires_at > {NOW} FOR UPDATE"""  # noqa: S608 -- constants
# A release is announced too: another host that found the token busy (it publishes a write
# it heard of under the same lease) looks again at once instead of a retry later.
RELEASE = f"""WITH released AS (UPDATE leases SET owner = '', expires_at = '-infinity'
    WHERE {KEY} AND epoch = %(epoch)s AND owner = %(owner)s RETURNING app, account, scope)
    SELECT pg_notify('{CHANNEL}', json_build_object('app', app, 'user', account,
        'scope', scope, 'released', true)::text) FROM released"""  # noqa: S608 -- constants


def migrate(conn: psycopg.Connection[Any], where: str) -> None:
    """Bring the schema up to date under an advisory lock, in the caller's transaction:
    daemons starting at once migrate once, the others wait and find it done."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    conn.execute(VERSION_TABLE)
    row = conn.execute(VERSION).fetchone()
    version = 0 if row is None or row[0] is None else int(row[0])
    if version > SCHEMA_VERSION:
        raise StateError(f"state store {where} has schema version {version}, written by a "
                         f"newer tokend; this one knows up to {SCHEMA_VERSION}")
    for statements in MIGRATIONS[version:]:
        for statement in statements:
            conn.execute(statement)
    if version < SCHEMA_VERSION:
        conn.execute(SET_VERSION, (SCHEMA_VERSION,))


def key(name: TokenName) -> dict[str, str]:
    return {"app": name.app, "account": name.user, "scope": name.scope}


def token_values(token: Token) -> dict[str, Any]:
    return {"access_token": token.access_token, "token_type": token.token_type,
            "expires_in": token.expires_in, "refresh_token": token.refresh_token,
            "granted_scope": token.scope, "created_at": token.created_at}

