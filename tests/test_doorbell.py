"""The doorbell tells a daemon the store changed, through its socket and never through a pid."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokend.daemon.doorbell import MAX_PAYLOAD, SOCKET_NAME, Doorbell, ring
from tokend.errors import StateError
from tokend.store.lock import StateDirLock, running_daemon_pid

Names = frozenset[str] | None

# Takes the flock on argv[1] the way a daemon in another pid namespace would,
# with argv[2] written as its pid (a number that names a stranger here).
FOREIGN_DAEMON = (
    "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
    "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, sys.argv[2].encode() + b'\\n'); "
    "print('locked', flush=True); sys.stdin.read()"
)
# Blocks SIGUSR1 and SIGTERM and prints the first that arrives: SIGUSR1 (10) would be
# reported before SIGTERM (15) had both been sent, since lower signals are delivered first.
BYSTANDER = (
    "import signal; wanted = {signal.SIGUSR1, signal.SIGTERM}; "
    "signal.pthread_sigmask(signal.SIG_BLOCK, wanted); print('ready', flush=True); "
    "print(signal.sigwaitinfo(wanted).si_signo, flush=True)"
)


@pytest.fixture
def lock(tmp_path: Path) -> Iterator[StateDirLock]:
    with StateDirLock(tmp_path) as held:
        yield held


@pytest.fixture
def doorbell(lock: StateDirLock) -> Iterator[Doorbell]:
    bell = Doorbell(lock)
    yield bell
    bell.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


def _heard(doorbell: Doorbell, loop: asyncio.AbstractEventLoop) -> list[Names]:
    """Every on_ring call while the loop runs until the first one and a few turns past it."""
    calls: list[Names] = []
    first = loop.create_future()

    def on_ring(names: Names) -> None:
        calls.append(names)
        if not first.done():
            first.set_result(None)

    doorbell.attach(loop, on_ring)
    loop.run_until_complete(asyncio.wait_for(first, 5))
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    return calls


def _send_raw(path: Path, payload: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(payload, str(path))


def test_ring_without_a_daemon_returns_false(tmp_path: Path) -> None:
    """No socket, no daemon: ring says so and raises nothing."""
    assert not ring(tmp_path, ["app/alice/read"])


def test_ring_without_a_state_directory_returns_false(tmp_path: Path) -> None:
    """A state directory that does not exist yet has no daemon either."""
    assert not ring(tmp_path / "missing")


def test_ring_reaches_an_attached_doorbell_with_its_names(
    tmp_path: Path, doorbell: Doorbell, loop: asyncio.AbstractEventLoop
) -> None:
    """The daemon hears exactly the token names rung."""
    assert ring(tmp_path, ["app/alice/read", "app/bob/write"])
    assert _heard(doorbell, loop) == [frozenset({"app/alice/read", "app/bob/write"})]


def test_rings_before_the_loop_runs_arrive_as_one_call(
    tmp_path: Path, doorbell: Doorbell, loop: asyncio.AbstractEventLoop
) -> None:
    """Rings waiting in the socket are drained together into one call with the union."""
    assert ring(tmp_path, ["app/alice/read"])
    assert ring(tmp_path, ["app/bob/read", "app/alice/read"])
    assert ring(tmp_path, ["app/carol/read"])
    assert _heard(doorbell, loop) == [
        frozenset({"app/alice/read", "app/bob/read", "app/carol/read"})
    ]


def test_ring_for_everything_arrives_as_none(
    tmp_path: Path, doorbell: Doorbell, loop: asyncio.AbstractEventLoop
) -> None:
    """One ring for every token makes the whole drain ask for every token."""
    assert ring(tmp_path, ["app/alice/read"])
    assert ring(tmp_path)
    assert _heard(doorbell, loop) == [None]


def test_names_too_many_for_one_datagram_ring_for_everything(
    tmp_path: Path, doorbell: Doorbell, loop: asyncio.AbstractEventLoop
) -> None:
    """Names that do not fit one datagram are not cut: the ring asks for every token."""
    assert ring(tmp_path, [f"app/user{n}/read" for n in range(MAX_PAYLOAD)])
    assert _heard(doorbell, loop) == [None]


def test_a_flood_past_the_socket_queue_rings_for_everything(
    tmp_path: Path, doorbell: Doorbell, loop: asyncio.AbstractEventLoop
) -> None:
    """Rings the kernel turned away (queue full) lose their names, so the daemon hears "all"."""
    sent = [ring(tmp_path, [f"app/user{n}/read"]) for n in range(1000)]
    assert not all(sent)
    assert _heard(doorbell, loop)[0] is None


def test_malformed_datagrams_are_ignored(
    tmp_path: Path, doorbell: Doorbell, loop: asyncio.AbstractEventLoop
) -> None:
    """Non-UTF-8 bytes, empty names or oversized datagrams add no name and raise nothing."""
    path = tmp_path / SOCKET_NAME
    for payload in (b"\xff\xfe", b"app/x/read\n\napp/y/read", b"a" * (MAX_PAYLOAD + 1)):
        _send_raw(path, payload)
    assert ring(tmp_path, ["app/alice/read"])
    assert _heard(doorbell, loop) == [frozenset({"app/alice/read"})]


def test_stale_socket_of_a_dead_daemon_is_replaced(tmp_path: Path, lock: StateDirLock) -> None:
    """A socket file nobody listens on any more is rebound, and rings reach the new daemon."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(tmp_path / SOCKET_NAME))
    stale.close()
    assert not ring(tmp_path)
    bell = Doorbell(lock)
    try:
        assert ring(tmp_path)
    finally:
        bell.close()


def test_socket_is_private_to_the_daemon_user(tmp_path: Path, lock: StateDirLock) -> None:
    """The socket is mode 0600 even under a permissive umask."""
    old = os.umask(0)
    try:
        bell = Doorbell(lock)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.lstat(tmp_path / SOCKET_NAME).st_mode) == 0o600
    finally:
        bell.close()


def test_close_removes_the_socket(tmp_path: Path, lock: StateDirLock) -> None:
    """After close no socket file is left behind, and a ring finds no daemon."""
    Doorbell(lock).close()
    assert not (tmp_path / SOCKET_NAME).exists()
    assert not ring(tmp_path)


def test_close_after_the_lock_is_released_leaves_the_socket_path_alone(tmp_path: Path) -> None:
    """Once the lock is gone the path may be a successor's socket, so close does not unlink it."""
    with StateDirLock(tmp_path) as lock:
        bell = Doorbell(lock)
    bell.close()
    assert stat.S_ISSOCK(os.lstat(tmp_path / SOCKET_NAME).st_mode)


def test_ring_refuses_one_str_for_a_list_of_names(tmp_path: Path) -> None:
    """A bare str would ring for each of its characters; it is a caller's bug, said at once."""
    with pytest.raises(TypeError):
        ring(tmp_path, "app/alice/read")


def test_doorbell_needs_the_state_directory_lock(tmp_path: Path) -> None:
    """Without the lock another daemon may own the socket, so none is bound."""
    with pytest.raises(StateError, match="lock"):
        Doorbell(StateDirLock(tmp_path))
    assert not (tmp_path / SOCKET_NAME).exists()


def test_doorbell_leaves_a_file_that_is_not_a_socket(tmp_path: Path, lock: StateDirLock) -> None:
    """A regular file at the socket's path is not ours to delete: the doorbell refuses."""
    (tmp_path / SOCKET_NAME).write_text("keep me")
    with pytest.raises(StateError, match="not a socket"):
        Doorbell(lock)
    assert (tmp_path / SOCKET_NAME).read_text() == "keep me"


def test_ring_does_not_write_into_a_regular_file(tmp_path: Path) -> None:
    """A regular file at the socket's path is neither written to nor taken for a daemon."""
    (tmp_path / SOCKET_NAME).write_text("keep me")
    assert not ring(tmp_path, ["app/alice/read"])
    assert (tmp_path / SOCKET_NAME).read_text() == "keep me"


def test_ring_does_not_follow_a_symlink(tmp_path: Path) -> None:
    """A symlink at the socket's path is refused, even when it leads to a listening socket."""
    elsewhere = tmp_path / "elsewhere.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(elsewhere))
        listener.setblocking(False)
        (tmp_path / SOCKET_NAME).symlink_to(elsewhere)
        assert not ring(tmp_path, ["app/alice/read"])
        with pytest.raises(BlockingIOError):
            listener.recv(MAX_PAYLOAD)


def test_ring_never_signals_the_pid_in_the_lock_file(tmp_path: Path) -> None:
    """A daemon of another pid namespace holds the lock; the pid it wrote is a bystander here.

    ``SIGUSR1`` would kill such a bystander (its default action); ring uses
    no pid, so the first signal the bystander sees is the test's own SIGTERM.
    """
    bystander = subprocess.Popen(
        [sys.executable, "-c", BYSTANDER], stdout=subprocess.PIPE, text=True
    )
    foreign = subprocess.Popen(
        [sys.executable, "-c", FOREIGN_DAEMON, str(tmp_path / "tokend.pid"), str(bystander.pid)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert bystander.stdout is not None and foreign.stdout is not None
        assert bystander.stdout.readline() == "ready\n"
        assert foreign.stdout.readline() == "locked\n"
        assert running_daemon_pid(tmp_path) == bystander.pid

        assert not ring(tmp_path, ["app/alice/read"])
        bystander.terminate()
        assert bystander.stdout.readline() == f"{signal.SIGTERM.value}\n"
    finally:
        bystander.kill()
        bystander.communicate(timeout=10)
        foreign.communicate(timeout=10)
