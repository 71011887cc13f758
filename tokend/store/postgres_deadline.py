"""A deadline for each call on a PostgreSQL connection, kept on this side of the wire.

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
from collections.abc import Iterator
from contextlib import contextmanager

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
                    _shut(self._calls.pop(call)[1])

    def close(self) -> None:
        self._stop.set()


def _shut(fileno: int) -> None:
    """Shut the socket down without closing its descriptor, which libpq owns."""
    with contextlib.suppress(OSError):
        duplicate = socket.socket(fileno=os.dup(fileno))
        with duplicate:
            duplicate.shutdown(socket.SHUT_RDWR)

