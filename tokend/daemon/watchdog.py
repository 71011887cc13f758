"""systemd's watchdog: pinged while the event loop runs and the store makes progress."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from tokend.daemon.systemd import Notifier
from tokend.engine.workers import Workers
from tokend.errors import TokendError
from tokend.store.interface import StateStore

log = structlog.get_logger(__name__)


async def watchdog(notifier: Notifier, workers: Workers, store: StateStore) -> None:
    """Ping systemd's watchdog while the loop runs and the store makes progress.

    A stalled event loop stops the pings by itself. A store call stuck
    for longer than one interval (a hung disk: commits cannot land) stops
    them too, so systemd restarts the daemon instead of watching it hold
    new refresh tokens it cannot commit. Each interval sends a trivial
    probe, so a store stuck while idle is noticed as well.
    """
    interval = notifier.watchdog_interval
    if interval is None:
        return
    probe: asyncio.Task[None] | None = None
    withheld = False
    while True:
        stalled = workers.store_stalled_for()
        if stalled < interval:
            notifier.watchdog()
            withheld = False
        elif not withheld:
            withheld = True
            log.error("watchdog_withheld", store_stalled_for=round(stalled, 1))
        if probe is None or probe.done():
            probe = asyncio.create_task(_probe_store(workers, store))
        await asyncio.sleep(interval)


async def _probe_store(workers: Workers, store: StateStore) -> None:
    # An error is an answer: only a call that never returns counts as a stall.
    with contextlib.suppress(TokendError):
        await workers.store(store.ping)
