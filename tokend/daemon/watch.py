"""Follow edits of the config file, however the editor or orchestrator saves it.

Editors save by rename, Kubernetes swaps a ``..data`` symlink, tools delete
and recreate: watching the file itself misses all of these, so we watch its
folder and, after any change there, compare what the path now holds with
what we last loaded.

The folder is watched with inotify on the event loop itself (asyncinotify:
watchfiles polls its event queue every few tens of milliseconds, which was
nearly all of an idle daemon's wake-ups and most of a reload's latency). An
idle daemon is not woken by the watcher at all, and a save is seen the moment
it lands. A rename or a closed write is a finished save and is looked at at
once; anything else (a write still going on, a delete before a re-create) is
looked at once the folder has been quiet for ``DEBOUNCE``, so a file is not
read half-written.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from asyncinotify import Event, Inotify, Mask

log = structlog.get_logger(__name__)

DEBOUNCE = 0.05

_WATCHED = (Mask.MODIFY | Mask.ATTRIB | Mask.CLOSE_WRITE | Mask.MOVED_FROM | Mask.MOVED_TO
            | Mask.CREATE | Mask.DELETE | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ONLYDIR)
_FINISHED = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.Q_OVERFLOW
_GONE = Mask.IGNORED | Mask.DELETE_SELF | Mask.MOVE_SELF


def fingerprint(path: Path) -> str | None:
    """A digest of what ``path`` holds now (through symlinks), or ``None`` when unreadable."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _finished_or_gone(event: Event) -> tuple[bool, bool]:
    return bool(event.mask & _FINISHED), bool(event.mask & _GONE)


async def watch_config(path: Path, on_change: Callable[[], Awaitable[None]]) -> None:
    """Call ``on_change`` whenever the content behind ``path`` changes, until cancelled.

    A folder that cannot be watched (or stops existing) is logged: the daemon
    then follows edits only on SIGHUP.
    """
    folder = path.parent
    last = fingerprint(path)
    try:
        inotify = Inotify()
    except OSError as error:  # no inotify instance left for this user
        log.error("config_watch_failed", folder=str(folder), error=str(error))
        return
    with inotify:
        try:
            inotify.add_watch(folder, _WATCHED)
        except OSError as error:
            log.error("config_watch_failed", folder=str(folder), error=str(error))
            return
        while True:
            finished, gone = _finished_or_gone(await inotify.get())
            while not finished and not gone:
                # A save still going on: look once the folder has been quiet for a moment.
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the event
                # instead of raising when it is cancelled in the step the event arrives, and
                # the daemon's stop then waited for ever on a watcher that went on.
                try:
                    async with asyncio.timeout(DEBOUNCE):
                        event = await inotify.get()
                except TimeoutError:
                    break
                finished, gone = _finished_or_gone(event)
            current = fingerprint(path)
            if current is not None and current != last:
                last = current
                await on_change()
            if gone:
                log.error("config_watch_failed", folder=str(folder),
                          error="the folder was removed or moved")
                return
