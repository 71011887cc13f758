"""Follow edits of the config file, however the editor or orchestrator saves it.

Editors save by rename, Kubernetes swaps a ``..data`` symlink, tools delete
and recreate: watching the file itself misses all of these, so we watch its
folder and, after any change there, compare what the path now holds with
what we last loaded.

The folder is watched with inotify on the event loop itself: no thread polls
a queue, so an idle daemon is not woken by the watcher at all, and a save is
seen the moment it lands. A rename or a closed write is a finished save and
is looked at at once; anything else (a write still going on, a delete before
a re-create) is looked at once the folder has been quiet for ``DEBOUNCE``, so
a file is not read half-written.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

DEBOUNCE = 0.05

# <sys/inotify.h>
_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_Q_OVERFLOW, _IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
_IN_ONLYDIR, _IN_NONBLOCK, _IN_CLOEXEC = 0x01000000, os.O_NONBLOCK, os.O_CLOEXEC
_WATCHED = (_IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO
            | _IN_CREATE | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR)
_FINISHED = _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_Q_OVERFLOW
_GONE = _IN_IGNORED | _IN_DELETE_SELF | _IN_MOVE_SELF
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


def fingerprint(path: Path) -> str | None:
    """A digest of what ``path`` holds now (through symlinks), or ``None`` when unreadable."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class FolderEvents:
    """inotify events of one folder (not its subfolders), read on the running event loop."""

    def __init__(self, folder: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise _os_error(ctypes.get_errno(), folder)
        if libc.inotify_add_watch(fd, os.fsencode(folder), _WATCHED) < 0:
            code = ctypes.get_errno()
            os.close(fd)
            raise _os_error(code, folder)
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._loop.add_reader(fd, self._ready.set)

    async def next(self) -> tuple[bool, bool]:
        """Wait for the next events: (whether the last one finished a save, whether the
        folder itself is gone and no event will follow)."""
        await self._ready.wait()
        self._ready.clear()
        finished, gone = False, False
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return finished, gone
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                finished = bool(mask & _FINISHED)
                gone = gone or bool(mask & _GONE)

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)


def _os_error(code: int, folder: Path) -> OSError:
    return OSError(code, os.strerror(code) if code else "inotify failed", str(folder))


async def watch_config(path: Path, on_change: Callable[[], Awaitable[None]]) -> None:
    """Call ``on_change`` whenever the content behind ``path`` changes, until cancelled.

    A folder that cannot be watched (or stops existing) is logged: the daemon
    then follows edits only on SIGHUP.
    """
    folder = path.parent
    last = fingerprint(path)
    try:
        events = FolderEvents(folder)
    except OSError as error:
        log.error("config_watch_failed", folder=str(folder), error=str(error))
        return
    try:
        while True:
            finished, gone = await events.next()
            while not finished and not gone:
                # A save still going on: look once the folder has been quiet for a moment.
                try:
                    finished, gone = await asyncio.wait_for(events.next(), DEBOUNCE)
                except TimeoutError:
                    break
            current = fingerprint(path)
            if current is not None and current != last:
                last = current
                await on_change()
            if gone:
                log.error("config_watch_failed", folder=str(folder),
                          error="the folder was removed or moved")
                return
    finally:
        events.close()
