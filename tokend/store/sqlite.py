"""The embedded state store: one SQLite file in the state directory.

WAL lets the CLI read beside a running daemon; every token write is one
``synchronous=FULL`` transaction, so a commit is on disk when it returns.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokend.errors import StateError
from tokend.model import Token, TokenName
from tokend.store import DATABASE_NAME
from tokend.store import sqlite_schema as sql
from tokend.store.interface import (
    Claim,
    Lease,
    PublishedFiles,
    StateStore,
    TokenRecord,
    TokenState,
    Written,
    nobody_is_dead,
)
from tokend.store.lock import boot_id, make_private_dir, make_private_file, narrow_sidecar_modes

BUSY_TIMEOUT = 10.0
"""The longest a store call waits for another process's write: part of every commit's budget."""

def boot_clock() -> float:
    """Seconds since this machine booted, suspend included: no wall-clock step moves it."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)



class SqliteStateStore(StateStore):
    """The embedded store: one SQLite file in ``state_dir``, private to the daemon's user.

    Safe to open from the CLI while the daemon runs (WAL lets readers and one writer
    work side by side; ``busy_timeout`` bounds any wait). One connection shared by
    threads behind a lock, because the daemon may call in via ``asyncio.to_thread``.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        filename: str = DATABASE_NAME,
        busy_timeout: float = BUSY_TIMEOUT,
        lease_clock: Callable[[], float] = boot_clock,
        clock_id: str | None = None,
    ) -> None:
        self.path = state_dir / filename
        self._lock = threading.Lock()
        self._lease_clock = lease_clock
        # Which boot boot_clock counts from: a lease of an earlier boot has ended.
        clock = boot_id() if clock_id is None else clock_id
        self._clock_id = "unknown-boot" if clock is None else clock
        try:
            make_private_dir(state_dir)
            make_private_file(self.path)
        except OSError as exc:
            raise StateError(f"cannot create state store {self.path}: {exc.strerror}") from exc
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc
        try:
            self._setup_waiting(busy_timeout)
        except BaseException:
            self._conn.close()
            raise
        narrow_sidecar_modes(self.path)

    def _error(self, what: str, exc: BaseException) -> StateError:
        return StateError(f"state store {self.path}: {what}: {exc}")

    def _setup_waiting(self, busy_timeout: float) -> None:
        """:meth:`_setup`, retried while another process is creating the same store.

        Switching a new file to WAL, or reading it meanwhile, can answer "locked" at
        once instead of waiting out ``busy_timeout`` (several ``tokend authorize`` on a
        fresh state directory), so that wait is done here.
        """
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                self._setup()
            except sqlite3.Error as exc:
                locked = isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
                if not locked or time.monotonic() >= deadline:
                    raise self._error("cannot open", exc) from exc
            else:
                return
            time.sleep(0.05)

    def _setup(self) -> None:
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StateError(f"state store {self.path}: cannot use WAL journal mode ({mode})")
        self._conn.execute("PRAGMA synchronous = FULL")
        # Read first without a lock: a CLI opening an up-to-date store next to a running
        # daemon must not wait for the write lock.
        if sql.version(self._conn, self.path) != sql.SCHEMA_VERSION:
            sql.migrate(self._conn, self.path)

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
        rows = self._read(sql.GET, sql.key(name))
        return sql.record(rows[0]) if rows else None

    def all(self) -> list[TokenRecord]:
        return [sql.record(row) for row in self._read(sql.ALL)]

    def ping(self) -> None:
        self._read("SELECT 1")

    def save_tokens(self, items: Sequence[tuple[TokenName, Token]], *, now: float) -> None:
        rows = [(*sql.key(name), *sql.token_values(token), now, now, now) for name, token in items]
        if not rows:
            return
        with self._write("save tokens") as conn:
            conn.executemany(sql.SAVE, rows)

    def commit(
        self, name: TokenName, token: Token, *, generation: int, issued_at: float, now: float
    ) -> Written:
        # Whole seconds, rounded down: every expiry a consumer sees (the json output,
        # `tokend token`) is then the same second, and never later than the truth.
        values = (*sql.token_values(token), math.floor(issued_at), now, now)
        with self._write("commit token") as conn:
            if conn.execute(sql.COMMIT, (*values, *sql.key(name), generation)).rowcount:
                return Written.DONE
            if generation == 0 and conn.execute(sql.EXISTS, sql.key(name)).fetchone() is None:
                conn.execute(sql.INSERT, (*sql.key(name), *values))
                return Written.DONE
            return Written.STALE

    def _live(self, conn: sqlite3.Connection, lease: Lease) -> bool:
        params = (*sql.key(lease.name), lease.epoch, lease.owner, self._clock_id,
                  self._lease_clock())
        return conn.execute(sql.LEASE_LIVE, params).fetchone() is not None

    def record_failure(
        self,
        lease: Lease,
        *,
        generation: int,
        error: str,
        state: TokenState,
        now: float,
        next_attempt_at: float | None,
    ) -> Written:
        with self._write("record failure") as conn:
            if not self._live(conn, lease):
                return Written.STALE
            params = (str(state), now, error, next_attempt_at, *sql.key(lease.name), generation)
            if conn.execute(sql.FAILURE, params).rowcount:
                return Written.DONE
            # No row is generation 0, as for commit: a token that failed before it was ever
            # stored still shows in `tokend status`.
            if generation == 0 and conn.execute(sql.EXISTS, sql.key(lease.name)).fetchone() is None:
                conn.execute(sql.FIRST_FAILURE,
                             (*sql.key(lease.name), str(state), now, error, next_attempt_at))
                return Written.DONE
            return Written.STALE

    def set_output_problem(self, lease: Lease, *, error: str | None) -> Written:
        with self._write("record output problem", durable=False) as conn:
            if not self._live(conn, lease):
                return Written.STALE
            conn.execute(sql.OUTPUT_PROBLEM, (error, *sql.key(lease.name)))
            return Written.DONE

    def record_published(self, marks: Sequence[PublishedFiles]) -> list[Written]:
        if not marks:
            return []
        # Like output health, no fsync: a start-up after an upgrade records every token's files,
        # and what a power loss loses is recorded again by the next publish (or retirement).
        with self._write("record published files", durable=False) as conn:
            written = []
            for mark in marks:
                if not self._live(conn, mark.lease):
                    written.append(Written.STALE)
                    continue
                conn.execute(sql.PUBLISHED, (sql.outputs_value(mark.outputs),
                                             mark.unconfigured_at, *sql.key(mark.lease.name)))
                written.append(Written.DONE)
            return written

    def delete_token(self, lease: Lease, *, generation: int) -> Written:
        with self._write("delete token") as conn:
            if not self._live(conn, lease):
                return Written.STALE
            params = (*sql.key(lease.name), generation)
            return Written.DONE if conn.execute(sql.DELETE, params).rowcount else Written.STALE

    def claim_many(
        self,
        names: Sequence[TokenName],
        *,
        owner: str,
        lease: float,
        holder_is_dead: Callable[[str], bool] = nobody_is_dead,
    ) -> list[Claim]:
        claims: list[Claim] = []
        if not names:
            return claims
        # Leases skip the fsync: losing one in a crash costs nothing, its holder died with it.
        with self._write("claim lease", durable=False) as conn:
            now = self._lease_clock()
            for name in names:
                held = conn.execute(sql.LEASE_HOLDER, sql.key(name)).fetchone()
                epoch = 1
                if held is not None:
                    holder, epoch = held[0], held[1] + 1
                    busy = (holder not in ("", owner) and held[3] == self._clock_id
                            and held[2] > now and not holder_is_dead(holder))
                    if busy:
                        continue
                conn.execute(sql.LEASE_TAKE,
                             (*sql.key(name), owner, epoch, now + lease, self._clock_id))
                row = conn.execute(sql.GET, sql.key(name)).fetchone()
                claims.append(Claim(Lease(name, owner, epoch, lease),
                                    sql.record(row) if row is not None else None))
        return claims

    def release(self, lease: Lease) -> Written:
        with self._write("release lease", durable=False) as conn:
            params = (*sql.key(lease.name), lease.epoch, lease.owner)
            released = conn.execute(sql.LEASE_RELEASE, params).rowcount
            return Written.DONE if released else Written.STALE

    def release_many(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        with self._write("release leases", durable=False) as conn:
            conn.executemany(sql.LEASE_RELEASE, [(*sql.key(lease.name), lease.epoch, lease.owner)
                                              for lease in leases])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

