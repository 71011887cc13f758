"""Hearing other hosts' token writes on the shared store (DESIGN §2b).

Each daemon keeps one listening connection. A ``NOTIFY`` (token name and generation,
sent in the statement of every token write) makes the daemon look at that token
again; what changed is then published through the one publish path, the outputs and
``on_refresh`` of this host. Notifications sent while this connection was away are
lost, so every (re)connect starts with a look at every token, and so does a slow
periodic pass. The connection is probed every few seconds with a deadline kept on
this side of the wire, so a black-holed database is noticed and reported (the store
is down: no claims, outputs left as they are) instead of waited on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import structlog

from tokend.daemon.systemd import Notifier
from tokend.engine.metrics import Metrics
from tokend.model import Config, StoreSpec
from tokend.store.postgres_connection import DEADLINES, Deadlines, describe, shut_socket
from tokend.store.postgres_schema import CHANNEL

log = structlog.get_logger(__name__)

PROBE_EVERY = 3.0
"""How often a quiet connection is asked for a sign of life."""
RESCAN_EVERY = 300.0
"""The slow periodic look at every token, in case a notification was lost all the same."""
RECONNECT_INITIAL, RECONNECT_MAX = 0.5, 1.0
"""Tries while the database is away: its return is the signal that the refreshes which failed
on it are due now, so it is heard within a second (an attempt costs one connection)."""

T = TypeVar("T")


class StoreListener:
    """Calls ``on_changed`` with the names another host wrote (``None``: look at every
    token) and ``on_reachable`` when the database comes or goes."""

    def __init__(
        self,
        spec: StoreSpec,
        *,
        on_changed: Callable[[frozenset[str] | None], None],
        on_reachable: Callable[[bool, str | None], None],
        deadlines: Deadlines = DEADLINES,
    ) -> None:
        self._spec = spec
        self._on_changed = on_changed
        self._on_reachable = on_reachable
        self._deadlines = deadlines
        self._connected = False
        self._options: dict[str, Any] = deadlines.connection_options()
        if spec.password is not None:
            self._options["password"] = spec.password.reveal()

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until ``stop``; reconnect with backoff whenever the connection fails."""
        delay = RECONNECT_INITIAL
        while not stop.is_set():
            self._connected = False
            try:
                await self._listen(stop)
            except (psycopg.Error, OSError, TimeoutError) as error:
                self._on_reachable(False, self._clean(error))
            else:
                return
            if self._connected:  # it worked until now: try again soon
                delay = RECONNECT_INITIAL
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            delay = min(delay * 2, RECONNECT_MAX)

    async def _listen(self, stop: asyncio.Event) -> None:
        async with asyncio.timeout(self._deadlines.call):
            conn = await psycopg.AsyncConnection.connect(self._spec.conninfo, autocommit=True,
                                                         **self._options)
        async with conn:
            await self._bounded(conn, conn.execute(f"LISTEN {CHANNEL}"))
            self._connected = True
            self._on_reachable(True, None)
            self._on_changed(None)  # what was written while away was not heard
            rescanned = time.monotonic()
            while not stop.is_set():
                async for note in conn.notifies(timeout=PROBE_EVERY):
                    name = _token_name(note.payload)
                    if name is not None:
                        self._on_changed(frozenset({name}))
                    if stop.is_set():
                        return
                await self._bounded(conn, conn.execute("SELECT 1"))
                if time.monotonic() - rescanned >= RESCAN_EVERY:
                    rescanned = time.monotonic()
                    self._on_changed(None)

    async def _bounded(self, conn: psycopg.AsyncConnection[Any], work: Awaitable[T]) -> T:
        """``work`` on ``conn``, its socket shut if no answer comes in time: a server that
        acknowledges and never answers would otherwise hold the await forever."""
        timer = asyncio.get_running_loop().call_later(
            self._deadlines.statement, shut_socket, conn.pgconn.socket)
        try:
            return await work
        finally:
            timer.cancel()

    def _clean(self, error: BaseException) -> str:
        text = f"{describe(self._spec.conninfo)}: {error}".strip()
        password = self._spec.password
        return text if password is None else text.replace(password.reveal(), "***")


async def follow(
    shared: StoreSpec,
    *,
    tokens: Callable[[], Config | None],
    on_ring: Callable[[frozenset[str] | None], None],
    on_back: Callable[[], None],
    metrics: Metrics,
    notifier: Notifier,
    stop: asyncio.Event,
) -> None:
    """The daemon's side: a written token is rung like the local doorbell rings it (the
    supervisor publishes what changed); a lost database is logged, counted in
    ``tokend_store_up`` and ``/healthz``, and shown in systemd's status line; once it is
    back, ``on_back`` (the work that failed on it is tried again at once)."""

    def changed(names: frozenset[str] | None) -> None:
        config = tokens()
        if names is None and config is not None:
            names = frozenset(str(spec.name) for spec in config.tokens)
        on_ring(names)

    def reachable(up: bool, error: str | None) -> None:
        if up == metrics.store_reachable:
            return
        metrics.store_changed(reachable=up)
        if up:
            log.info("store_reachable")
            notifier.status("the shared store answers again")
            on_back()
        else:
            log.error("store_unreachable", error=error,
                      consequence="no refreshes until it is back; outputs are left as they are")
            notifier.status(f"the shared store cannot be reached: {error}")

    await StoreListener(shared, on_changed=changed, on_reachable=reachable).run(stop)


def _token_name(payload: str) -> str | None:
    """``APP/USER/SCOPE`` of a notification, or ``None`` for one this version cannot read."""
    try:
        note = json.loads(payload)
        return f"{note['app']}/{note['user']}/{note['scope']}"
    except (ValueError, KeyError, TypeError):
        log.warning("store_notification_unreadable")
        return None
