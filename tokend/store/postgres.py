"""The shared state store: one PostgreSQL database for the daemons of several hosts.

The same contract as the SQLite store (generations, fenced leases, DESIGN §2a), with
leases on the database's clock so hosts whose clocks disagree still agree on who holds
a token. Every token write carries, in the same statement, a ``NOTIFY`` with the token's
name and generation (never a secret), so the daemons of the other hosts publish it too.

Every call has a deadline, so a black-holed connection cannot hang the daemon: libpq's
``connect_timeout``, TCP keepalives and ``tcp_user_timeout`` bound the network, the
server's ``statement_timeout`` bounds the work, the pool's timeout bounds the wait for a
connection, and a watchdog (``postgres_connection``) ends a call whose peer acknowledges
but never answers. Their sum (:attr:`Deadlines.call`) stays within the SQLite store's
``BUSY_TIMEOUT``, the part of a lease the refresher keeps for the commit.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg_pool

from tokend.errors import StateError
from tokend.model import Token, TokenName
from tokend.store import postgres_schema as sql
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
from tokend.store.postgres_connection import (
    DEADLINES,
    FRESH,
    PER_ITEM,
    READ_ALL,
    RECONNECT_GIVE_UP,
    WATCHDOG_MARGIN,
    Deadlines,
    Watchdog,
    describe,
    remembering,
)
from tokend.store.sqlite_schema import outputs_value, record

# The pool logs each failed connect and dropped connection on its own, in plain text; tokend
# reports an unreachable store once, with the reason (``store_unreachable``, the errors).
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


class PostgresStateStore(StateStore):
    """Tokens and leases in a PostgreSQL database shared by every host's daemon.

    ``conninfo`` is a libpq URL or key/value string without the password, which comes
    apart (``store_password_file`` …) and never shows in an error. ``lease_clock``
    replaces the database's ``now()`` (seconds since the epoch) for tests that let a lease
    run out at once; production leaves it ``None``. ``host`` names this host's view of
    the files: which outputs it wrote and their health are its own (``host_files``).
    A call that writes several tokens takes their rows in name order: hosts working
    through the same tokens in different orders (a set's order differs between
    processes) would otherwise deadlock, and the aborted batch would keep its leases.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        password: str | None = None,
        deadlines: Deadlines = DEADLINES,
        lease_clock: Callable[[], float] | None = None,
        max_connections: int = 4,
        host: str = "",
    ) -> None:
        self._host = {"host": host}
        self._password = password
        self._lease_clock = lease_clock
        self._deadlines = deadlines
        self._watchdog = Watchdog()
        self._connect_error: str | None = None
        self._worked: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary())
        options = deadlines.connection_options()
        if password is not None:
            options["password"] = password
        try:
            self.where = describe(conninfo)
            self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = (
                psycopg_pool.ConnectionPool(
                    conninfo, kwargs=options, min_size=1, max_size=max_connections,
                    connection_class=remembering(self._remember),
                    open=False, timeout=deadlines.pool, name="tokend",
                    check=self._check,
                    reconnect_timeout=RECONNECT_GIVE_UP))
        except psycopg.Error as exc:
            raise StateError(f"state store: bad connection string: {self._clean(exc)}") from None
        self._pool.open(wait=False)
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _remember(self, exc: psycopg.Error) -> None:
        self._connect_error = self._clean(exc)

    def _clean(self, exc: BaseException) -> str:
        """``exc``'s message without the password, whatever libpq chose to quote."""
        text = str(exc).strip() or type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return text

    def _guard(self, conn: psycopg.Connection[Any],
                extra: float = 0.0) -> AbstractContextManager[None]:
        """The watchdog's deadline for a transaction: ``extra`` for batches (a seeding batch
        of 100,000 tokens is one transaction) and reads of every token; a refresh's calls
        take none."""
        return self._watchdog.guard(
            conn.fileno(), self._deadlines.statement + WATCHDOG_MARGIN + extra)

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check that a connection it hands out still works, bounded too; skipped
        for one that just worked (a refresh's calls come in a row: a round trip each)."""
        if time.monotonic() - self._worked.get(conn, -FRESH) < FRESH:
            return
        with self._guard(conn):
            psycopg_pool.ConnectionPool.check_connection(conn)

    @contextmanager
    def _transaction(self, what: str, extra: float = 0.0) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on a pooled connection; any failure is a :class:`StateError`."""
        try:
            with self._pool.connection() as conn, self._guard(conn, extra), conn.transaction():
                yield conn
            self._worked[conn] = time.monotonic()
        except psycopg.Error as exc:
            why = self._clean(exc)
            if isinstance(exc, psycopg_pool.PoolTimeout) and self._connect_error is not None:
                why = f"{why}; the last attempt: {self._connect_error}"
            raise StateError(f"state store {self.where}: cannot {what}: {why}") from None

    def _migrate(self) -> None:
        with self._transaction("open") as conn:
            sql.migrate(conn, self.where)

    def _at(self) -> dict[str, Any]:
        if self._lease_clock is None:
            return {"at": None}
        return {"at": datetime.fromtimestamp(self._lease_clock(), UTC)}

    def get(self, name: TokenName) -> TokenRecord | None:
        with self._transaction("read") as conn:
            row = conn.execute(sql.GET, {**sql.key(name), **self._host}).fetchone()
        return record(row) if row is not None else None

    def all(self) -> list[TokenRecord]:
        with self._transaction("read", READ_ALL) as conn:
            conn.execute(f"SET LOCAL statement_timeout = {round(READ_ALL * 1000):d}")
            return [record(row) for row in conn.execute(sql.ALL, self._host)]

    def ping(self) -> None:
        with self._transaction("read") as conn:
            conn.execute("SELECT 1")

    def save_tokens(self, items: Sequence[tuple[TokenName, Token]], *, now: float) -> None:
        if not items:
            return
        rows = [{**sql.key(name), **sql.token_values(token), "issued_at": now, "now": now}
                for name, token in sorted(items, key=lambda item: str(item[0]))]
        with self._transaction("save tokens", len(rows) * PER_ITEM) as conn:
            conn.cursor().executemany(sql.SAVE, rows)

    def commit(
        self, name: TokenName, token: Token, *, generation: int, issued_at: float, now: float
    ) -> Written:
        # Whole seconds, rounded down, as the SQLite store keeps them.
        params = {**sql.key(name), **sql.token_values(token), "issued_at": float(int(issued_at)),
                  "now": now, "generation": generation}
        with self._transaction("commit token") as conn:
            row = conn.execute(sql.COMMIT, params).fetchone()
            if row is None and generation == 0:
                row = conn.execute(sql.INSERT_NEW, params).fetchone()
            return Written.STALE if row is None else Written.DONE

    def _live(self, conn: psycopg.Connection[Any], lease: Lease) -> bool:
        params = {**sql.key(lease.name), "epoch": lease.epoch, "owner": lease.owner,
                  **self._at()}
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
        params = {**sql.key(lease.name), "state": str(state), "now": now, "error": error,
                  "next": next_attempt_at, "generation": generation}
        with self._transaction("record failure") as conn:
            if not self._live(conn, lease):
                return Written.STALE
            if conn.execute(sql.FAILURE, params).rowcount:
                return Written.DONE
            # No row is generation 0, as for commit: a token that failed before it was ever
            # stored still shows in `tokend status`.
            if generation == 0 and conn.execute(sql.FIRST_FAILURE, params).rowcount:
                return Written.DONE
            return Written.STALE

    def set_output_problem(self, lease: Lease, *, error: str | None) -> Written:
        with self._transaction("record output problem") as conn:
            if not self._live(conn, lease):
                return Written.STALE
            conn.execute(sql.OUTPUT_PROBLEM, {**sql.key(lease.name), **self._host,
                                              "error": error})
            return Written.DONE

    def record_published(self, marks: Sequence[PublishedFiles]) -> list[Written]:
        if not marks:
            return []
        with self._transaction("record published files", len(marks) * PER_ITEM) as conn:
            written = []
            for mark in marks:
                if not self._live(conn, mark.lease):
                    written.append(Written.STALE)
                    continue
                conn.execute(sql.PUBLISHED, {**sql.key(mark.lease.name), **self._host,
                                             "outputs": outputs_value(mark.outputs),
                                             "unconfigured": mark.unconfigured_at})
                written.append(Written.DONE)
            return written

    def delete_token(self, lease: Lease, *, generation: int) -> Written:
        with self._transaction("delete token") as conn:
            if not self._live(conn, lease):
                return Written.STALE
            row = conn.execute(sql.DELETE, {**sql.key(lease.name),
                                            "generation": generation}).fetchone()
            if row is not None:
                conn.execute(sql.FORGET_PROBLEMS, sql.key(lease.name))
            return Written.STALE if row is None else Written.DONE

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
        with self._transaction("claim lease", len(names) * PER_ITEM) as conn:
            for name in sorted(names, key=str):
                epoch = self._take(conn, name, owner, lease, holder_is_dead)
                if epoch is None:
                    continue
                row = conn.execute(sql.GET, {**sql.key(name), **self._host}).fetchone()
                claims.append(Claim(Lease(name, owner, epoch, lease),
                                    record(row) if row is not None else None))
        return claims

    def _take(self, conn: psycopg.Connection[Any], name: TokenName, owner: str, lease: float,
              holder_is_dead: Callable[[str], bool]) -> int | None:
        """The new epoch of ``name``'s lease for ``owner``, or ``None`` while another holds it."""
        params = {**sql.key(name), "owner": owner, "lease": lease, "dead_epoch": -1,
                  **self._at()}
        row = conn.execute(sql.CLAIM, params).fetchone()
        if row is None:
            held = conn.execute(sql.HOLDER, sql.key(name)).fetchone()
            if held is None or not holder_is_dead(held[0]):
                return None
            # Proven dead at the epoch we saw: take it over only if nobody moved it since.
            row = conn.execute(sql.CLAIM, {**params, "dead_epoch": held[1]}).fetchone()
        return None if row is None else int(row[0])

    def release(self, lease: Lease) -> Written:
        with self._transaction("release lease") as conn:
            released = conn.execute(sql.RELEASE, {**sql.key(lease.name), "epoch": lease.epoch,
                                                  "owner": lease.owner}).rowcount
            return Written.DONE if released else Written.STALE

    def release_many(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        with self._transaction("release leases", len(leases) * PER_ITEM) as conn:
            conn.cursor().executemany(sql.RELEASE, [
                {**sql.key(lease.name), "epoch": lease.epoch, "owner": lease.owner}
                for lease in sorted(leases, key=lambda lease: str(lease.name))])

    def close(self) -> None:
        self._pool.close()
        self._watchdog.close()

