"""The embedded state store: one SQLite file in the state directory.

WAL lets the CLI read beside a running daemon; every token write is one
``synchronous=FULL`` transaction, so a commit is on disk when it returns.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokend.errors import StateError
from tokend.model import TokenName
from tokend.oauth import Token
from tokend.state import StateStore, TokenRecord, TokenState, nobody_is_dead

# Each migration is a list of statements applied in one transaction; its index + 1 is the
# schema version it leads to (PRAGMA user_version). Append only: never edit a released one.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
)
SCHEMA_VERSION = len(_MIGRATIONS)

_COLUMNS = """app, user, scope, access_token, token_type, expires_in, refresh_token,
    granted_scope, created_at, refresh_token_issued_at, state, last_attempt_at, last_refresh_at,
    last_error, consecutive_failures, next_attempt_at"""
_SELECT = f"SELECT {_COLUMNS} FROM tokens"  # noqa: S608 -- constants only, values are bound
_GET = f"{_SELECT} WHERE app = ? AND user = ? AND scope = ?"
_ALL = f"{_SELECT} ORDER BY app, user, scope"
_SAVE = f"""INSERT INTO tokens ({_COLUMNS})
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'ok', ?, ?, NULL, 0, NULL)
    ON CONFLICT (app, user, scope) DO UPDATE SET
    access_token = excluded.access_token, token_type = excluded.token_type,
    expires_in = excluded.expires_in, refresh_token = excluded.refresh_token,
    granted_scope = excluded.granted_scope, created_at = excluded.created_at,
    refresh_token_issued_at = excluded.refresh_token_issued_at, state = 'ok',
    last_attempt_at = excluded.last_attempt_at, last_refresh_at = excluded.last_refresh_at,
    last_error = NULL, consecutive_failures = 0, next_attempt_at = NULL"""  # noqa: S608 -- constants
_FAILURE = """INSERT INTO tokens (app, user, scope, state, last_attempt_at, last_error,
    consecutive_failures, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, 1, ?)
    ON CONFLICT (app, user, scope) DO UPDATE SET
    state = excluded.state, last_attempt_at = excluded.last_attempt_at,
    last_error = excluded.last_error, consecutive_failures = consecutive_failures + 1,
    next_attempt_at = excluded.next_attempt_at"""
_DELETE = """UPDATE tokens SET access_token = NULL, token_type = NULL, expires_in = NULL,
    refresh_token = NULL, granted_scope = NULL, created_at = NULL, refresh_token_issued_at = NULL,
    state = 'not_authorized', last_error = NULL, consecutive_failures = 0, next_attempt_at = NULL
    WHERE app = ? AND user = ? AND scope = ?"""
_PROBLEM = """UPDATE tokens SET state = ?, last_error = ?
    WHERE app = ? AND user = ? AND scope = ? AND access_token IS NOT NULL"""
_LEASE_HOLDER = "SELECT owner, expires_at FROM leases WHERE app = ? AND user = ? AND scope = ?"
_LEASE_TAKE = "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)"
_LEASE_RELEASE = "DELETE FROM leases WHERE app = ? AND user = ? AND scope = ? AND owner = ?"


def _key(name: TokenName) -> tuple[str, str, str]:
    return (name.app, name.user, name.scope)


def _record(row: tuple[Any, ...]) -> TokenRecord:
    token = None
    if row[3] is not None:
        token = Token(
            access_token=row[3], token_type=row[4], expires_in=row[5],
            refresh_token=row[6], scope=row[7], created_at=row[8],
        )
    return TokenRecord(
        name=TokenName(row[0], row[1], row[2]), token=token, refresh_token_issued_at=row[9],
        state=TokenState(row[10]), last_attempt_at=row[11], last_refresh_at=row[12],
        last_error=row[13], consecutive_failures=row[14], next_attempt_at=row[15],
    )


class SqliteStateStore(StateStore):
    """The embedded store: one SQLite file in ``state_dir``, private to the daemon's user.

    Safe to open from the CLI while the daemon runs (WAL lets readers and one writer
    work side by side; ``busy_timeout`` bounds any wait). One connection shared by
    threads behind a lock, because the daemon may call in via ``asyncio.to_thread``.
    """

    def __init__(
        self, state_dir: Path, *, filename: str = "tokend.db", busy_timeout: float = 10.0
    ) -> None:
        self.path = state_dir / filename
        self._lock = threading.Lock()
        try:
            _make_private_dir(state_dir)
            _make_private_file(self.path)
        except OSError as exc:
            raise StateError(f"cannot create state store {self.path}: {exc.strerror}") from exc
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            raise
        _narrow_sidecar_modes(self.path)

    def _error(self, what: str, exc: BaseException) -> StateError:
        return StateError(f"state store {self.path}: {what}: {exc}")

    def _setup(self) -> None:
        try:
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StateError(f"state store {self.path}: cannot use WAL journal mode ({mode})")
            self._conn.execute("PRAGMA synchronous = FULL")
            # Read first without a lock: a CLI opening an up-to-date store next to a running
            # daemon must not wait for the write lock.
            if self._version() != SCHEMA_VERSION:
                self._migrate()
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc

    def _version(self) -> int:
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state store {self.path} has schema version {version}, written by a newer "
                f"tokend; this one knows up to {SCHEMA_VERSION}"
            )
        return version

    def _migrate(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for statements in _MIGRATIONS[self._version():]:  # re-read under the lock
                for statement in statements:
                    self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _write(self, what: str, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: atomic across threads and processes.

        ``durable=False`` skips the fsync at commit, for leases: losing one in a
        crash costs nothing (its holder died with it), and a refresh then pays
        for one fsync, its token's, instead of three.
        """
        with self._lock:
            try:
                if not durable:
                    self._conn.execute("PRAGMA synchronous = NORMAL")
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except (sqlite3.Error, OverflowError) as exc:
                raise self._error(f"cannot {what}", exc) from exc
            finally:
                if not durable:
                    self._restore_durability()

    def _restore_durability(self) -> None:
        try:
            self._conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise self._error("cannot restore synchronous=FULL", exc) from exc

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error("cannot read", exc) from exc

    def get(self, name: TokenName) -> TokenRecord | None:
        rows = self._read(_GET, _key(name))
        return _record(rows[0]) if rows else None

    def all(self) -> list[TokenRecord]:
        return [_record(row) for row in self._read(_ALL)]

    def save_tokens(self, items: Sequence[tuple[TokenName, Token]], *, now: float) -> None:
        rows = [
            (*_key(name), t.access_token, t.token_type, t.expires_in, t.refresh_token, t.scope,
             t.created_at, now, now, now)
            for name, t in items
        ]
        if not rows:
            return
        with self._write("save tokens") as conn:
            conn.executemany(_SAVE, rows)

    def save_token(self, name: TokenName, token: Token, *, now: float) -> None:
        self.save_tokens([(name, token)], now=now)

    def record_failure(
        self,
        name: TokenName,
        *,
        error: str,
        state: TokenState,
        now: float,
        next_attempt_at: float | None,
    ) -> None:
        with self._write("record failure") as conn:
            conn.execute(_FAILURE, (*_key(name), str(state), now, error, next_attempt_at))

    def set_problem(self, name: TokenName, *, error: str | None) -> None:
        with self._write("record problem") as conn:
            conn.execute(_PROBLEM, (str(TokenState.FAILING if error else TokenState.OK), error,
                                    *_key(name)))

    def delete_token(self, name: TokenName) -> None:
        with self._write("delete token") as conn:
            conn.execute(_DELETE, _key(name))

    def claim(
        self,
        name: TokenName,
        *,
        owner: str,
        now: float,
        lease: float,
        holder_is_dead: Callable[[str], bool] = nobody_is_dead,
    ) -> bool:
        with self._write("claim lease", durable=False) as conn:
            held = conn.execute(_LEASE_HOLDER, _key(name)).fetchone()
            if (
                held is not None
                and held[0] != owner
                and held[1] > now
                and not holder_is_dead(held[0])
            ):
                return False
            conn.execute(_LEASE_TAKE, (*_key(name), owner, now + lease))
            return True

    def release(self, name: TokenName, *, owner: str) -> None:
        with self._write("release lease", durable=False) as conn:
            conn.execute(_LEASE_RELEASE, (*_key(name), owner))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _make_private_dir(path: Path) -> None:
    """Create ``path`` 0700; an existing directory keeps the mode its operator chose."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        return
    path.chmod(0o700)  # mkdir's mode is filtered by the umask


def _make_private_file(path: Path) -> None:
    """Create the database 0600 before SQLite opens it, so it is never readable by others."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _narrow_sidecar_modes(path: Path) -> None:
    """Keep ``-wal``/``-shm`` no more open than the database (SQLite copies its mode; belt)."""
    try:
        wanted = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    for suffix in ("-wal", "-shm"):
        sidecar = path.with_name(path.name + suffix)
        try:
            mode = stat.S_IMODE(sidecar.stat().st_mode)
            if mode & ~wanted:
                sidecar.chmod(mode & wanted)
        except OSError:
            continue  # absent, or not ours to change: SQLite already matched the db's mode
