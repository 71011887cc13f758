"""sd_notify on the documented protocol: one datagram per message to ``$NOTIFY_SOCKET``.

Nothing happens when ``NOTIFY_SOCKET`` is unset, so the daemon calls these
unconditionally. An abstract socket is written ``@name`` in the variable.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends state changes to systemd's service manager."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        pid_matches = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_interval: float | None = (
            int(usec) / 2_000_000 if usec.isdigit() and int(usec) > 0 and pid_matches else None
        )

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self._address is not None

    def send(self, *fields: str) -> None:
        """Send ``KEY=VALUE`` lines as one message; a failure is logged, never raised."""
        if self._address is None:
            return
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message)
        except OSError as error:
            log.warning("sd_notify_failed", error=str(error))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")


def _socket_address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None
