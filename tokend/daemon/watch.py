"""Follow edits of the config file, however the editor or orchestrator saves it.

Editors save by rename, Kubernetes swaps a ``..data`` symlink, tools delete
and recreate: watching the file itself misses all of these, so we watch its
folder and, after any change there, compare what the path now holds with
what we last loaded.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
import watchfiles

log = structlog.get_logger(__name__)

# Changes are collected for 50 ms; the watcher thread wakes that often to look,
# which is the whole idle cost of following the file.
DEBOUNCE_MS = 50


def fingerprint(path: Path) -> str | None:
    """A digest of what ``path`` holds now (through symlinks), or ``None`` when unreadable."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


async def watch_config(
    path: Path, on_change: Callable[[], Awaitable[None]], stop: asyncio.Event
) -> None:
    """Call ``on_change`` whenever the content behind ``path`` changes, until ``stop`` is set."""
    folder = path.parent
    last = fingerprint(path)
    async for _changes in watchfiles.awatch(
        folder,
        watch_filter=None,
        debounce=DEBOUNCE_MS,
        step=DEBOUNCE_MS,
        stop_event=stop,
        recursive=False,
        ignore_permission_denied=True,
    ):
        current = fingerprint(path)
        if current is None or current == last:
            continue
        last = current
        await on_change()
