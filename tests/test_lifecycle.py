"""The daemon's lifecycle as systemd and an operator see it: notify, lock, stop."""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import Setup, StartDaemon, refreshed, sandbox_with_lifetime, tokend, wait_for
from tokend.model import TokenName
from tokend.sandbox import Sandbox
from tokend.store.sqlite import SqliteStateStore


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def _drain(sock: socket.socket, until: float) -> list[list[str]]:
    messages: list[list[str]] = []
    while time.monotonic() < until:
        try:
            messages.append(sock.recv(4096).decode().split("\n"))
        except TimeoutError:
            continue
    return messages


def test_sd_notify_sequence_with_watchdog_pings(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon, notify_socket: socket.socket
) -> None:
    """READY=1 after start, RELOADING=1/READY=1 around a reload, STOPPING=1, and pings."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")]).authorized()
    daemon = start_daemon(setup.config, env={
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000",
    })
    messages = _drain(notify_socket, time.monotonic() + 2.0)
    daemon.process.send_signal(signal.SIGHUP)
    messages += _drain(notify_socket, time.monotonic() + 1.0)
    daemon.process.terminate()
    messages += _drain(notify_socket, time.monotonic() + 1.0)
    assert daemon.stop() == 0

    firsts = [fields[0] for fields in messages if fields[0] != "WATCHDOG=1"]
    states = [f for f in firsts if f in ("READY=1", "RELOADING=1", "STOPPING=1")]
    assert states == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    ready = next(fields for fields in messages if fields[0] == "READY=1")
    assert ready[1] == "STATUS=1 tokens: 1 ok"
    reloading = next(fields for fields in messages if fields[0] == "RELOADING=1")
    assert reloading[1].startswith("MONOTONIC_USEC=")
    pings = sum(1 for fields in messages if fields == ["WATCHDOG=1"])
    assert pings >= 10, f"only {pings} watchdog pings in ~4 s at a 0.2 s interval"


def _pings(sock: socket.socket, until: float) -> list[float]:
    """When each ``WATCHDOG=1`` arrived, until ``until``."""
    times: list[float] = []
    while time.monotonic() < until:
        try:
            if sock.recv(4096).decode().split("\n")[0] == "WATCHDOG=1":
                times.append(time.monotonic())
        except TimeoutError:
            continue
    return times


def test_the_watchdog_goes_quiet_while_commits_cannot_make_progress(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon, notify_socket: socket.socket
) -> None:
    """A store stuck behind another writer stops the pings (systemd restarts us); they resume."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")]).authorized()
    daemon = start_daemon(setup.config, env={
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "600000",
    })
    wait_for(lambda: refreshed(daemon, "app/alice/read") >= 1, 10, "a first refresh")
    blocker = sqlite3.connect(setup.state_dir / "tokend.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # every write of the daemon now waits for us
    locked_at = time.monotonic()
    during = _pings(notify_socket, locked_at + 4.0)
    blocker.execute("ROLLBACK")
    blocker.close()
    after = _pings(notify_socket, time.monotonic() + 2.0)
    assert daemon.stop() == 0

    # 3 s tokens at refresh_at 0.5: a refresh wants the store within 1.5 s of the lock.
    gaps = [b - a for a, b in zip([locked_at, *during], [*during, locked_at + 4.0], strict=True)]
    assert max(gaps) >= 1.5, f"the pings went on while the store was stuck: {gaps}"
    assert daemon.named("watchdog_withheld")
    assert len(after) >= 3, "the pings did not resume once the store moved again"


def test_a_second_daemon_on_the_same_state_is_refused(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """Two daemons on one store would race; the second exits 1 naming the first's pid."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    setup.write()
    first = start_daemon(setup.config)
    wait_for(lambda: first.named("daemon_started"), 10, "the first daemon")
    second = tokend("run", config=setup.config, timeout=20)
    assert second.returncode == 1
    assert f"pid {first.process.pid}" in second.stderr
    assert first.process.poll() is None
    assert first.stop() == 0


def test_sigterm_during_a_refresh_loses_nothing(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """The server rotates, the answer is slow, SIGTERM arrives: the new token is committed."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")]).authorized()
    sandbox.inject_fault("delay", seconds=2.0, grant="refresh_token")
    daemon = start_daemon(setup.config)
    wait_for(lambda: sandbox.stats()["faulted"] >= 1, 10, "the slow refresh to start")
    daemon.process.terminate()
    assert daemon.stop() == 0

    events = [event["event"] for event in daemon.events()]
    assert events.index("token_refreshed") < events.index("daemon_stopped")
    store = SqliteStateStore(setup.state_dir)
    record = store.get(TokenName("app", "alice", "read"))
    store.close()
    assert record is not None and record.token is not None
    assert sandbox.refresh_token_state(record.token.refresh_token) == "live"
    current = setup.output("alice", "read", "token").read_text() == record.token.access_token
    assert current, "the output does not hold the stored token"

    again = start_daemon(setup.config, "again")
    wait_for(lambda: refreshed(again, "app/alice/read") >= 1, 10, "a refresh after restart")
    assert again.stop() == 0


def _context_switches(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid``: how often it went to sleep."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    total += int(line.split()[1])
    return total


def test_an_idle_daemon_stays_asleep_while_following_its_config(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    """With nothing due the daemon sleeps until its minute tick: following the config file
    wakes it only when the folder changes, so it can still react to an edit at once."""
    with sandbox_with_lifetime(3600) as sandbox:
        setup = Setup(tmp_path, sandbox, [("alice", "read")]).authorized()
        daemon = start_daemon(setup.config)
        wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
        time.sleep(1.0)  # the start's last writes and the watcher's setup
        before = _context_switches(daemon.process.pid)
        time.sleep(3.0)
        woke = _context_switches(daemon.process.pid) - before
        assert woke <= 6, f"an idle daemon woke {woke} times in 3 s"

        setup.config.write_text(setup.render().replace("refresh_at: 0.5", "refresh_at: 0.6"))
        wait_for(lambda: daemon.named("config_reloaded"), 5, "the edit to be applied")
        assert daemon.stop() == 0
