"""systemd integration: the notify protocol and the shipped unit file."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokend.systemd import Notifier

UNIT = Path(__file__).parent.parent / "systemd" / "tokend.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def test_ready_sends_one_datagram_with_status(listener: tuple[socket.socket, str]) -> None:
    """READY=1 and STATUS= arrive together in one message, as systemd expects."""
    sock, path = listener
    Notifier({"NOTIFY_SOCKET": path}).ready("2 tokens: 2 ok")
    assert sock.recv(4096).decode().split("\n") == ["READY=1", "STATUS=2 tokens: 2 ok"]


def test_reloading_carries_the_monotonic_time(listener: tuple[socket.socket, str]) -> None:
    """RELOADING=1 comes with MONOTONIC_USEC, which Type=notify-reload requires."""
    sock, path = listener
    Notifier({"NOTIFY_SOCKET": path}).reloading()
    fields = sock.recv(4096).decode().split("\n")
    assert fields[0] == "RELOADING=1"
    assert re.fullmatch(r"MONOTONIC_USEC=\d+", fields[1])


def test_an_abstract_socket_is_supported() -> None:
    """NOTIFY_SOCKET=@name addresses the abstract namespace."""
    name = f"tokend-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        Notifier({"NOTIFY_SOCKET": "@" + name}).stopping()
        assert sock.recv(4096) == b"STOPPING=1"


def test_nothing_happens_without_notify_socket() -> None:
    """Outside systemd the notifier is disabled and sending is a no-op."""
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")
    assert notifier.watchdog_interval is None


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    """Pings go at half the watchdog timeout, as sd_watchdog_enabled(3) advises."""
    assert Notifier({"WATCHDOG_USEC": "4000000"}).watchdog_interval == 2.0
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None


@needs_analyze
def test_the_unit_is_hardened_to_an_exposure_of_at_most_1_5() -> None:
    """systemd-analyze security rates the shipped unit 1.5 or better."""
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(UNIT)],
        capture_output=True, text=True, check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.5


@needs_analyze
def test_the_unit_verifies_cleanly(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing wrong (with ExecStart pointing at this install)."""
    assert ANALYZE is not None
    tokend = str(Path(sys.executable).parent / "tokend")
    unit = tmp_path / "tokend.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/tokend", tokend))
    result = subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_the_unit_has_what_operators_rely_on() -> None:
    """Type=notify, reload by SIGHUP, restart on failure, a watchdog, private state."""
    text = UNIT.read_text()
    for line in (
        "Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
        "StateDirectory=tokend", "StateDirectoryMode=0700", "ConfigurationDirectory=tokend",
        "RuntimeDirectoryPreserve=yes", "UMask=0077", "#LoadCredential=",
    ):
        assert line in text, f"{line} missing from the unit"
    assert re.search(r"^WatchdogSec=\d+", text, re.MULTILINE)
