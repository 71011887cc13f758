"""What the running daemon tells ``tokend status``: when it started and how its last reload went.

The daemon writes ``STATE_DIR/daemon.json`` atomically at start and after each
reload; ``tokend status`` reads it and asks the state-dir lock whether the
daemon is still alive. Nothing secret is in it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tokend.outputs import write_atomic

STATUS_NAME = "daemon.json"


@dataclass(frozen=True)
class DaemonStatus:
    """The daemon's own health, as last written."""

    pid: int
    started_at: float
    config: str
    last_reload_at: float | None = None
    last_reload_ok: bool = True
    last_reload_error: str | None = None


def write_daemon_status(state_dir: Path, status: DaemonStatus) -> None:
    """Replace the status file atomically (0600, like everything in the state dir)."""
    content = json.dumps(asdict(status), sort_keys=True).encode() + b"\n"
    write_atomic(state_dir / STATUS_NAME, content)


def read_daemon_status(state_dir: Path) -> DaemonStatus | None:
    """The last status written, or ``None`` when there is none or it is unreadable."""
    try:
        data = json.loads((state_dir / STATUS_NAME).read_bytes())
        return DaemonStatus(**data)
    except (OSError, ValueError, TypeError):
        return None
