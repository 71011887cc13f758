"""What the running daemon tells ``tokend status``: when it started, how its last reload went,
and which tokens its config (the last good one) lists.

The daemon writes ``STATE_DIR/daemon.json`` atomically at start and after each
reload; ``tokend status`` reads it and asks the state-dir lock whether the
daemon is still alive. When the config file has since become invalid, the
token list is what ``status`` still knows of the config the daemon runs.
Nothing secret is in it.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tokend.engine.atomic import write_atomic
from tokend.model import TokenName, TokenSpec

STATUS_NAME = "daemon.json"


@dataclass(frozen=True)
class DaemonToken:
    """One configured token, with the settings ``status`` needs to compute its row."""

    name: str
    refresh_at: float
    refresh_token_lifetime: float

    def spec(self) -> TokenSpec:
        return TokenSpec(TokenName.parse(self.name), refresh_at=self.refresh_at,
                         refresh_token_lifetime=self.refresh_token_lifetime)


def daemon_tokens(specs: Iterable[TokenSpec]) -> tuple[DaemonToken, ...]:
    """What the daemon publishes about the tokens of the config it runs."""
    return tuple(DaemonToken(str(spec.name), spec.refresh_at, spec.refresh_token_lifetime)
                 for spec in specs)


@dataclass(frozen=True)
class DaemonStatus:
    """The daemon's own health, as last written."""

    pid: int
    started_at: float
    config: str
    last_reload_at: float | None = None
    last_reload_ok: bool = True
    last_reload_error: str | None = None
    tokens: tuple[DaemonToken, ...] | None = None
    """The tokens of the config it runs; ``None`` from a daemon that did not publish them."""


def write_daemon_status(state_dir: Path, status: DaemonStatus) -> None:
    """Replace the status file atomically (0600, like everything in the state dir)."""
    # Not asdict() on the whole: its deep copy took 0.4 s for 100,000 tokens.
    document = asdict(replace(status, tokens=None))
    if status.tokens is not None:
        document["tokens"] = [vars(token) for token in status.tokens]
    content = json.dumps(document, sort_keys=True).encode() + b"\n"
    write_atomic(state_dir / STATUS_NAME, content)


def write_running_status(state_dir: Path, status: DaemonStatus,
                         specs: Iterable[TokenSpec]) -> None:
    """Write ``status`` with the tokens of ``specs``, those of the last good config.

    The token list, as large as the config, lives only for this write, and
    is built with the cycle collector paused: it then dies young instead of
    being promoted to the oldest generation, where a few reloads' worth of
    it made the next reload pay for a full collection (over 100 ms at
    10,000 tokens).
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        write_daemon_status(state_dir, replace(status, tokens=daemon_tokens(specs)))
    finally:
        if paused:
            gc.enable()


def read_daemon_status(state_dir: Path) -> DaemonStatus | None:
    """The last status written, or ``None`` when there is none or it is unreadable.

    The file outlives the daemon: its token list is the last config a daemon ran.
    """
    try:
        data = json.loads((state_dir / STATUS_NAME).read_bytes())
        listed = data.pop("tokens", None)
        status = DaemonStatus(**data)
        if listed is None:
            return status
        tokens = tuple(DaemonToken(**token) for token in listed)
        for token in tokens:
            token.spec()  # a name that does not parse makes the file unreadable here, not later
        return replace(status, tokens=tokens)
    except (OSError, ValueError, TypeError):
        return None
