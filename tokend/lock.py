"""One daemon per state directory: an exclusive ``flock`` that names its holder."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from types import TracebackType

from tokend.errors import AlreadyRunningError, StateError

LOCK_NAME = "tokend.pid"


class StateDirLock:
    """Hold ``STATE_DIR/tokend.pid`` locked for the life of the daemon.

    The file holds the daemon's pid, so a second daemon can say who is in the
    way and ``tokend authorize`` can tell the running daemon to look again.
    The kernel drops the lock when the process dies, so a crash never leaves
    a stale lock behind.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> StateDirLock:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as error:
            raise StateError(f"cannot use state directory {self.path.parent}: "
                             f"{error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunningError(
                f"another tokend (pid {holder}) is already running on {self.path.parent}"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as error:
            os.close(fd)
            raise StateError(f"cannot write {self.path}: {error.strerror}") from None
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def running_daemon_pid(state_dir: Path) -> int | None:
    """The pid of the daemon holding ``state_dir``, or ``None`` when none runs."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def owner_id() -> str:
    """Who holds a claim: ``host:pid:start``, where ``start`` tells a reused pid apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def owner_is_dead(owner: str) -> bool:
    """Whether the process named by an :func:`owner_id` on this host has ended.

    Claims of other hosts (a shared store) are never judged dead from here:
    their lease expiry covers them.
    """
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    current = _start_time(int(pid_text))
    return current is None or (bool(start) and current != start)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or ``None`` when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields resume after the last ")".
    return stat.rpartition(")")[2].split()[19]
