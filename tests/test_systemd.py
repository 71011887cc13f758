"""systemd integration: the notify protocol and the shipped unit file."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import Setup, tokend, wait_for
from tests.systemd_units import UNIT, analyze, needs_analyze, unit_values, verify_complaints
from tokend.daemon.systemd import Notifier
from tokend.sandbox import Sandbox

STRACE = shutil.which("strace")

# What tokend/outputs.py and tokend/hooks.py ask of the kernel, under every name
# glibc may use for it: writing an output (lstat, open the temporary file
# O_EXCL, write, fchown when owner:/group: is set, fchmod, fsync, rename over
# the target, fsync the folder; mkdir/chmod for missing parents; unlink a
# leftover or a revoked output) and starting a hook (pipe, fork, new session,
# exec, wait, signal its process group).
OUTPUT_PATH_SYSCALLS = (
    "newfstatat", "statx", "openat", "read", "write", "close", "getrandom",
    "chown", "fchown", "fchownat", "lchown", "fchmod", "chmod", "fchmodat",
    "fsync", "fdatasync", "rename", "renameat", "renameat2", "unlink", "unlinkat",
    "mkdir", "mkdirat",
    "pipe2", "clone", "clone3", "vfork", "setsid", "dup2", "dup3", "close_range",
    "execve", "wait4", "waitid", "kill",
)


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
    result = analyze("security", "--offline=yes", str(UNIT))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.5


@needs_analyze
def test_the_unit_verifies_cleanly(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing wrong (with ExecStart pointing at this install)."""
    tokend = str(Path(sys.executable).parent / "tokend")
    unit = tmp_path / "tokend.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/tokend", tokend))
    assert verify_complaints(unit) == ""


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


def syscall_groups() -> dict[str, list[str]]:
    """Every ``@group`` this systemd knows, with its members (syscalls and nested groups)."""
    listing = analyze("syscall-filter").stdout
    groups: dict[str, list[str]] = {}
    members: list[str] = []
    for line in listing.splitlines():
        if line.startswith("@"):
            members = groups.setdefault(line.strip(), [])
        elif line.startswith("#"):
            break  # the trailing notes on ungrouped syscalls
        elif line.strip() and not line.strip().startswith("#"):
            members.append(line.strip())
    return groups


def allowed_syscalls(unit_text: str) -> set[str]:
    """The syscalls a unit's ``SystemCallFilter=`` lines let through, applied in order as
    systemd does: the first line sets an allow list (plus ``@default``), later lines add to
    it or, with ``~``, take away from it."""
    groups = syscall_groups()

    def expand(item: str) -> set[str]:
        if item.startswith("@"):
            return set().union(*(expand(member) for member in groups[item]))
        return {item}

    allowed: set[str] | None = None
    for value in re.findall(r"^SystemCallFilter=(.*)$", unit_text, re.MULTILINE):
        deny = value.startswith("~")
        names = set().union(*(expand(item) for item in value.lstrip("~").split()))
        if allowed is None:
            assert not deny, "the unit's first SystemCallFilter= should be an allow list"
            allowed = names | expand("@default")
        elif deny:
            allowed -= names
        else:
            allowed |= names
    assert allowed is not None, "the unit has no SystemCallFilter="
    return allowed


@needs_analyze
def test_the_unit_allows_every_syscall_the_output_path_uses() -> None:
    """An output with ``owner:``/``group:`` is fchown'ed; a filter that blocks it leaves that
    file holding the old token while its siblings get the new one."""
    allowed = allowed_syscalls(UNIT.read_text())
    blocked = sorted(set(OUTPUT_PATH_SYSCALLS) - allowed)
    assert blocked == [], f"the unit's SystemCallFilter= refuses {blocked} (EPERM)"


def traced_syscalls(summary: str) -> set[str]:
    """The syscall names in ``strace -c``'s table: the last column of the rows between the
    two dashed rules."""
    rows = re.split(r"^-{6}.*\n", summary, flags=re.MULTILINE)
    assert len(rows) == 3, summary
    return {line.split()[-1] for line in rows[1].splitlines()}


@needs_analyze
@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_the_unit_allows_every_syscall_a_refresh_makes(tmp_path: Path, sandbox: Sandbox) -> None:
    """The real daemon, traced while it writes a group-owned output and runs a hook, at start
    and on a refresh: the unit lets every syscall it (and the hook) made through."""
    assert STRACE is not None
    grouped = tmp_path / "out" / "grouped.env"
    marker = tmp_path / "hook-ran"
    setup = Setup(
        tmp_path, sandbox, [("alice", "read")],
        extra_outputs_yaml={"alice": (
            f"          - path: {grouped}\n            format: env\n"
            f"            mode: \"0640\"\n            group: {os.getgid()}\n")},
        extra_token_yaml={"alice": f"        on_refresh: [touch, {marker}]\n"},
    ).authorized()
    authorized = grouped.read_bytes()
    grouped.unlink()
    marker.unlink()
    summary = tmp_path / "strace.txt"
    with (tmp_path / "daemon.log").open("wb") as log:
        tracer = subprocess.Popen(
            [STRACE, "-f", "-qq", "-c", "-o", str(summary),
             sys.executable, "-m", "tokend", "--config", str(setup.config), "run"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: marker.exists() and grouped.exists(), 60, "outputs healed at start")
            marker.unlink()
            wait_for(lambda: marker.exists() and grouped.read_bytes() != authorized, 60,
                     "a refresh that rewrites the outputs and runs the hook")
            daemon = int(Path(f"/proc/{tracer.pid}/task/{tracer.pid}/children").read_text())
            os.kill(daemon, signal.SIGTERM)
            assert tracer.wait(30) == 0, (tmp_path / "daemon.log").read_text()
        finally:
            if tracer.poll() is None:
                tracer.kill()
                tracer.wait(10)
    made = traced_syscalls(summary.read_text())
    assert {"fchown", "rename", "fsync", "execve"} <= made, sorted(made)
    blocked = sorted(made - allowed_syscalls(UNIT.read_text()))
    assert blocked == [], f"the unit's SystemCallFilter= refuses {blocked} (EPERM)"


def test_a_config_error_does_not_restart_the_daemon_forever(tmp_path: Path) -> None:
    """An invalid config exits with a status the unit names in RestartPreventExitStatus=, so
    systemd stops instead of restarting every 5 s; an ordinary failure (1) still restarts."""
    config = tmp_path / "config.yaml"
    config.write_text("applications:\n  payroll:\n    scope: readwrite\n")
    result = tokend("run", config=config)
    prevent = {int(status) for value in unit_values(UNIT, "RestartPreventExitStatus")
               for status in value.split()}
    assert result.returncode in prevent, (result.returncode, prevent, result.stderr)
    assert 1 not in prevent


def test_the_unit_has_no_empty_setting_that_restricts_nothing() -> None:
    """An empty ``IPAddressDeny=`` reads like a restriction but only resets an empty list.
    Empty is kept only where it means "none" (no capabilities)."""
    empty = set(re.findall(r"^(\w+)=$", UNIT.read_text(), re.MULTILINE))
    assert empty <= {"CapabilityBoundingSet", "AmbientCapabilities"}, sorted(empty)
