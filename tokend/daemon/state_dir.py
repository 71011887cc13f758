"""Opening the state directory for the daemon: its lock, its store and its doorbell."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import structlog

from tokend.daemon.doorbell import Doorbell
from tokend.daemon.systemd import Notifier
from tokend.errors import AlreadyRunningError, StateError
from tokend.model import StoreSpec
from tokend.store.choose import open_store
from tokend.store.interface import StateStore
from tokend.store.lock import StateDirLock

log = structlog.get_logger(__name__)

STATE_RETRY_INITIAL, STATE_RETRY_MAX = 1.0, 30.0


async def open_state(
    state_dir: Path,
    stack: contextlib.ExitStack,
    *,
    on_ring: Callable[[frozenset[str] | None], None],
    notifier: Notifier,
    stop: asyncio.Event,
    shared: StoreSpec | None = None,
) -> StateStore | None:
    """Lock the state directory and open the store, waiting while they are unusable.

    A full or read-only disk at start is logged and retried with backoff
    instead of exiting, so the daemon comes up by itself once it clears;
    another daemon on the same state is an error at once. ``shared``, the
    PostgreSQL store a config names, is waited for the same way, before any
    output is touched; the state directory stays this host's own (its lock,
    its doorbell). ``None`` when told to stop while waiting. What is opened
    is closed by ``stack``.
    """
    delay = STATE_RETRY_INITIAL
    while not stop.is_set():
        try:
            with contextlib.ExitStack() as attempt:
                lock = attempt.enter_context(StateDirLock(state_dir))
                store = open_store(state_dir, shared)
                attempt.callback(store.close)
                doorbell = Doorbell(lock)
                attempt.callback(doorbell.close)
                doorbell.attach(asyncio.get_running_loop(), on_ring)
                stack.push(attempt.pop_all())
                return store
        except AlreadyRunningError:
            raise
        except StateError as error:
            log.error("state_unavailable", error=str(error), retry_in=delay)
            notifier.status(f"waiting for the state directory: {error}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            delay = min(delay * 2, STATE_RETRY_MAX)
    return None
