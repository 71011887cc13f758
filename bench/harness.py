"""Measure a process from the outside: what the OS says it cost, and what it told systemd.

Every figure comes from the kernel, not from the process's own opinion:
CPU is ``utime + stime`` of the whole thread group (``/proc/PID/stat``, all
threads, dead ones included), peak memory is ``VmHWM``, wake-ups are the
context switches of every thread. ``READY=1`` and ``RELOADING=1`` arrive on
a real ``$NOTIFY_SOCKET`` datagram socket, timestamped on receipt with the
same monotonic clock the harness uses for ``exec`` and ``rename``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the whole process so far."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # After "pid (comm) ", utime and stime are fields 12 and 13 (1-based 14 and 15 of stat).
    return (int(fields[11]) + int(fields[12])) / _TICK


def memory_kb(pid: int) -> tuple[int, int]:
    """(peak RSS ``VmHWM``, current RSS ``VmRSS``) in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0])
    return values["VmHWM"], values["VmRSS"]


def wakeups(pid: int) -> dict[str, int]:
    """Context switches per thread name (summed over threads of the same name)."""
    counts: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            total = 0
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            continue  # the thread ended meanwhile
        counts[name] = counts.get(name, 0) + total
    return counts


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: with 20 samples, p95 is the 19th smallest."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return float(ordered[int(rank) - 1])


@dataclass(frozen=True)
class Notification:
    """One sd_notify datagram: when it arrived, its fields, and the sender's CPU then."""

    at: float
    fields: dict[str, str]
    cpu: float | None


@dataclass
class NotifyListener:
    """A ``$NOTIFY_SOCKET`` that records every message, as systemd would receive it."""

    path: Path
    pid: int | None = None
    messages: list[Notification] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, name="notify", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.monotonic()
            cpu = None
            if self.pid is not None:
                with contextlib.suppress(OSError):
                    cpu = cpu_seconds(self.pid)
            lines = data.decode(errors="replace").splitlines()
            fields = dict(line.partition("=")[::2] for line in lines if "=" in line)
            with self._cond:
                self.messages.append(Notification(at, fields, cpu))
                self._cond.notify_all()

    def wait(
        self, matches: Callable[[Notification], bool], *, after: float, timeout: float
    ) -> Notification | None:
        """The first message received at or after ``after`` that ``matches``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self.messages:
                    if message.at >= after and matches(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def is_ready(message: Notification) -> bool:
    return message.fields.get("READY") == "1"


def is_reloading(message: Notification) -> bool:
    return message.fields.get("RELOADING") == "1"


class DaemonProcess:
    """``tokend run`` as a child process with a notify socket and a JSON log file."""

    def __init__(self, config: Path, workdir: Path, name: str, *, tree: Path = ROOT) -> None:
        """``tree``: the checkout whose ``tokend`` runs (``bench.ab`` runs another one)."""
        self.log_path = workdir / f"{name}.log"
        self.notify = NotifyListener(workdir / f"{name}.notify")
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path)}
        env.pop("WATCHDOG_USEC", None)
        self._log = self.log_path.open("wb")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tokend", "--config", str(config), "run"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            cwd=tree,  # ``-m tokend`` finds the package from the root (see bench/cli.py)
        )
        self.pid = self.notify.pid = self.process.pid

    def wait_ready(self, timeout: float) -> Notification:
        """The first ``READY=1``; a daemon that exits or takes too long is an error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.notify.wait(is_ready, after=self.started_at, timeout=0.25)
            if message is not None:
                return message
            if self.process.poll() is not None:
                raise RuntimeError(f"tokend exited {self.process.returncode}: {self.tail(1)}")
        raise RuntimeError(f"tokend did not send READY=1 within {timeout:.0f} s")

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines whose ``event`` is ``name``."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if f'"{name}"' in line and line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found

    def tail(self, lines: int = 5) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return " | ".join(text)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; a daemon that will not stop is killed and reported."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise RuntimeError(f"tokend did not stop within {timeout} s") from None
        finally:
            self._log.close()
            self.notify.close()

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()
        self.notify.close()


def wall_time(argv: Sequence[str], *, cwd: Path) -> float:
    """Seconds from ``exec`` to exit of one command, which must succeed."""
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, check=False, stdin=subprocess.DEVNULL,
                            cwd=cwd)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[-2:])} exited {result.returncode}: "
            f"{result.stderr.decode(errors='replace')[-300:]}"
        )
    return elapsed


def peak_rss_of(code: str) -> int:
    """Peak RSS (KiB) of ``python -c code``, read by the child itself at its end."""
    probe = code + "\nimport sys\nsys.stdout.write(open('/proc/self/status').read())"
    result = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True,
        stdin=subprocess.DEVNULL,
    )
    for line in result.stdout.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")
