"""The doorbell: how the CLI tells a daemon on the same state directory that the store changed.

A pid is no address for this: it means something only inside one pid
namespace. In a container sharing the state directory, the pid written in
``tokend.pid`` is some unrelated process, and ``SIGUSR1``'s default action
kills it. A unix datagram socket, ``STATE_DIR/tokend.sock``, is addressed
through the file system instead: a ring reaches the daemon that bound it, or
nobody.

Wire format: one datagram of UTF-8 token names separated by ``\\n``; an empty
datagram asks for every token. A ring is only a hint: the daemon re-reads the
store, which stays the one source of truth, so the worst a peer allowed to
write to the socket (mode 0600: the daemon's user and root) can do is cause a
needless re-read. Whatever cannot be carried exactly becomes "everything",
which is never wrong, only slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from tokend.errors import StateError
from tokend.store.lock import StateDirLock

SOCKET_NAME = "tokend.sock"
MAX_PAYLOAD = 4096

_SOCKET_FLAGS = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK


class Doorbell:
    """The daemon's end: a socket in the state directory that collects rings.

    It needs the held :class:`StateDirLock`: holding it proves no other
    daemon uses this state directory, so a socket file already there belongs
    to a dead one and may be replaced.
    """

    def __init__(self, lock: StateDirLock) -> None:
        if not lock.held:
            raise StateError(f"the doorbell of {lock.path.parent} needs its lock held")
        self._lock = lock
        self.path = lock.path.parent / SOCKET_NAME
        self._limit = _queue_limit()
        self._loop: asyncio.AbstractEventLoop | None = None
        try:
            self._sock = _bound_socket(self.path)
        except OSError as error:
            raise StateError(f"cannot create {self.path}: {error.strerror}") from None

    def attach(
        self,
        loop: asyncio.AbstractEventLoop,
        on_ring: Callable[[frozenset[str] | None], None],
    ) -> None:
        """Call ``on_ring`` from ``loop`` with the names rung (``None``: every token)."""
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self._drain, on_ring)

    def close(self) -> None:
        """Stop listening and remove the socket file, while the lock still says it is ours."""
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop = None
        self._sock.close()
        if self._lock.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _drain(self, on_ring: Callable[[frozenset[str] | None], None]) -> None:
        payloads: list[bytes] = []
        while len(payloads) < self._limit:
            try:
                payloads.append(self._sock.recv(MAX_PAYLOAD + 1))
            except BlockingIOError:
                break
        if not payloads:
            return
        # A queue that reached its limit may have turned senders away (EAGAIN)
        # and their names with them; every such refusal happens while at least
        # this many datagrams wait, so a drain that reads as many covers it.
        if len(payloads) >= self._limit:
            on_ring(None)
            return
        union: set[str] = set()
        for payload in payloads:
            names = _parse(payload)
            if names is None:
                on_ring(None)
                return
            union |= names
        if union:
            on_ring(frozenset(union))


def ring(state_dir: Path, names: Iterable[str] | None = None) -> bool:
    """Tell the daemon on ``state_dir`` that ``names`` changed (``None``: any token).

    Never blocks and never raises for a missing, stale, busy or forbidden
    socket: the answer is whether a daemon received the ring. Only a socket is
    rung: the path is opened without following a symlink and checked, and the
    datagram goes to that very inode through ``/proc/self/fd``, so nothing
    swapped in between is written to.
    """
    if isinstance(names, str):
        raise TypeError("ring() takes an iterable of token names, not one str")
    payload = _payload(names)
    try:
        target = os.open(state_dir / SOCKET_NAME, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return stat.S_ISSOCK(os.fstat(target).st_mode) and _send(target, payload)
    finally:
        os.close(target)


def _bound_socket(path: Path) -> socket.socket:
    """A socket bound at ``path``, replacing the socket file a dead daemon left there."""
    sock = socket.socket(socket.AF_UNIX, _SOCKET_FLAGS)
    # Through an O_PATH descriptor of the directory the bound path stays short
    # whatever the state directory's length (sun_path holds 108 bytes).
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _remove_stale(directory, path)
        # Linux creates the socket file with the socket inode's mode, so the
        # file is 0600 from its first instant: no window open to other users.
        os.fchmod(sock.fileno(), 0o600)
        sock.bind(f"/proc/self/fd/{directory}/{path.name}")
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(directory)
    return sock


def _remove_stale(directory: int, path: Path) -> None:
    """Unlink a dead daemon's socket file; anything else there is not ours to delete."""
    try:
        mode = os.lstat(path.name, dir_fd=directory).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StateError(f"{path} exists and is not a socket; remove it")
    os.unlink(path.name, dir_fd=directory)


def _send(target: int, payload: bytes) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, _SOCKET_FLAGS) as sock:
            sock.sendto(payload, f"/proc/self/fd/{target}")
    except OSError:
        return False
    return True


def _payload(names: Iterable[str] | None) -> bytes:
    """The datagram for ``names``; empty (everything) when they cannot travel exactly."""
    if names is None:
        return b""
    listed = list(dict.fromkeys(names))
    if any(not name or "\n" in name for name in listed):
        return b""
    try:
        payload = "\n".join(listed).encode()
    except UnicodeEncodeError:
        return b""
    return payload if len(payload) <= MAX_PAYLOAD else b""


def _parse(payload: bytes) -> frozenset[str] | None:
    """The names one datagram asks for: ``None`` for every token, none when malformed."""
    if not payload:
        return None
    if len(payload) > MAX_PAYLOAD:
        return frozenset()
    try:
        names = payload.decode().split("\n")
    except UnicodeDecodeError:
        return frozenset()
    return frozenset() if "" in names else frozenset(names)


def _queue_limit() -> int:
    """How many waiting datagrams mean the kernel may be refusing senders.

    Linux queues about ``net.unix.max_dgram_qlen`` datagrams on a unix socket
    before a non-blocking sender gets EAGAIN. When that is unknown, 1: every
    drain then asks for everything, which is always correct.
    """
    try:
        return max(1, int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text()))
    except (OSError, ValueError):
        return 1
