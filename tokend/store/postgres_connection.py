"""How the PostgreSQL store connects: the deadlines of each call, and the watchdog that
keeps them on this side of the wire.

libpq's own bounds cover a dead route: ``tcp_user_timeout`` ends a connection whose sent
bytes go unacknowledged, keepalives one that went silent. They do not cover a peer that
acknowledges and never answers (a stopped server process, a proxy or load balancer
whose backend is gone): the kernel keeps the connection healthy and a query waits
forever. psycopg's blocking calls take no timeout, so :class:`Watchdog` shuts the socket
of a call that outlived its deadline; the call then fails at once with a connection
error, and the pool drops the connection.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

READ_ALL = 60.0
"""The deadline of reading every token: off the refresh path (status, start-up), and as
long as the deployment is large."""
RECONNECT_GIVE_UP = 5.0
"""How long the pool's own reconnect backoff runs (it doubles without a bound); after it,
the next call connects afresh, so a long outage is not followed by a long wait."""
FRESH = 1.0
"""A pooled connection that finished a transaction this recently is handed out unchecked."""
PER_ITEM = 0.001
"""What each statement of a batch adds to its transaction's deadline (about 30 times what
one takes on a loaded machine)."""
WATCHDOG_MARGIN = 0.5
"""How much longer than ``statement_timeout`` the watchdog lets a call run: the server's
own timeout, with its clear message, normally comes first."""


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long each part of a store call may take, in seconds."""

    connect: float = 2.0
    """libpq's ``connect_timeout`` (whole seconds, at least 2): the pool's workers connect."""
    pool: float = 2.0
    """The wait for a free connection from the pool."""
    statement: float = 3.0
    """The server's ``statement_timeout``; the socket's ``tcp_user_timeout`` matches it, and
    the watchdog ends the call a moment after it."""
    keepalive_idle: int = 2
    keepalive_interval: int = 1
    keepalive_count: int = 2

    @property
    def call(self) -> float:
        """The longest one store call can take before it fails: the wait for a connection,
        the pool's check of it (begun at the last instant), then the statement."""
        return self.pool + 2 * (self.statement + WATCHDOG_MARGIN)

    def connection_options(self) -> dict[str, Any]:
        """libpq's parameters that keep these deadlines (the password is added apart)."""
        return {
            "connect_timeout": max(2, round(self.connect)),
            "keepalives": 1,
            "keepalives_idle": self.keepalive_idle,
            "keepalives_interval": self.keepalive_interval,
            "keepalives_count": self.keepalive_count,
            "tcp_user_timeout": round(self.statement * 1000),
            "options": f"-c statement_timeout={round(self.statement * 1000)}",
            "application_name": "tokend",
        }



DEADLINES = Deadlines()

TICK = 0.2
"""How often overdue calls are looked for: the most a deadline can be overrun by."""


class Watchdog:
    """Shuts down the socket of every guarded call still running past its deadline."""

    def __init__(self) -> None:
        self._calls: dict[object, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(self, fileno: int, seconds: float) -> Iterator[None]:
        """Bound what runs inside to ``seconds`` on the connection whose socket is ``fileno``.

        The connection must stay open until the block exits: the socket is shut under the
        same lock that ends the guard, so a closed connection's reused descriptor is never
        touched.
        """
        call = object()
        with self._lock:
            self._calls[call] = (time.monotonic() + seconds, fileno)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, daemon=True,
                                                name="tokend-store-deadlines")
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._calls.pop(call, None)

    def _watch(self) -> None:
        while not self._stop.wait(TICK):
            now = time.monotonic()
            with self._lock:
                overdue = [call for call, (deadline, _) in self._calls.items() if deadline <= now]
                for call in overdue:
                    shut_socket(self._calls.pop(call)[1])

    def close(self) -> None:
        self._stop.set()


def shut_socket(fileno: int) -> None:
    """Shut the socket down without closing its descriptor, which libpq owns."""
    with contextlib.suppress(OSError):
        duplicate = socket.socket(fileno=os.dup(fileno))
        with duplicate:
            duplicate.shutdown(socket.SHUT_RDWR)


def remembering(
    remember: Callable[[psycopg.Error], None],
) -> type[psycopg.Connection[Any]]:
    """A connection class that hands each failed connect to ``remember``: the pool only says
    it timed out, and an operator needs to read why (refused, wrong password …)."""

    class Remembering(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Remembering:
            try:
                return super().connect(*args, **kwargs)
            except psycopg.Error as exc:
                remember(exc)
                raise

    return Remembering


def describe(conninfo: str) -> str:
    """``user@host:port/db`` of ``conninfo``, for messages: never its password."""
    parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    user, host = parts.get("user", ""), parts.get("host", "localhost")
    port, database = parts.get("port", "5432"), parts.get("dbname", "")
    return f"postgresql://{user}{'@' if user else ''}{host}:{port}/{database}"
