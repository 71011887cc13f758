"""``tokend status``: one row per configured token, the daemon's health, as text or JSON.

A token's state is the store's, refined by time so a glance tells the truth
even when no daemon is running:

* ``not_authorized``: no token stored (never authorized, or revoked);
* ``needs_authorization``: the server refused the refresh token; a person must act;
* ``client_rejected``: the server refused the application's client credentials; the
  fix is the credentials, not a new authorization;
* ``unconfigured``: stored, but no longer in the config: not refreshed, its files
  removed, kept so that putting it back needs no new authorization;
* ``expired``: the stored access token or refresh token is past its lifetime, so
  consumers are reading a dead token (typically: the daemon is not running);
* ``failing``: refreshes fail transiently and are being retried, the access
  token still works;
* ``ok``: otherwise.

A reload that fails leaves the daemon running its last good config, and that is
exactly when an operator or a monitor asks for the status. So with an invalid config
file ``status`` still answers: the tokens of the last config a daemon ran (it
publishes them in ``daemon.json``), or every token in the store when no daemon has,
each with its stored state; the daemon's health; and the config error with its place.

Nothing here ever shows a token or a secret.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from tokend.cli.records import stored_records
from tokend.config.quick import quick_state_dir
from tokend.daemon.status_file import read_daemon_status
from tokend.engine.attention import action
from tokend.engine.pending import pending_since
from tokend.engine.schedule import due_at
from tokend.errors import ConfigError
from tokend.model import Config, TokenName, TokenSpec
from tokend.store.interface import UNCONFIGURED, StateFacts, TokenRecord, TokenState
from tokend.store.lock import running_daemon_pid
from tokend.timing import format_duration, format_utc


@dataclass(frozen=True)
class TokenRow:
    """What ``status`` shows about one token; times are epoch seconds or ``None``."""

    name: str
    state: str
    expires_at: float | None
    refresh_token_expires_at: float | None
    next_refresh_at: float | None
    last_refresh_at: float | None
    last_error: str | None
    action: str | None = None
    """What a person must do, for the states no retry can fix (:mod:`tokend.engine.attention`)."""
    does_not_expire: bool = False
    """A company token: no expiry, no refresh, no refresh-token lifetime."""
    pending_since: float | None = None
    """A refreshed token the store did not take yet is kept on this host (asked for then)."""


@dataclass(frozen=True)
class DaemonRow:
    """Whether a daemon runs on this state directory, and how its last reload went."""

    running: bool
    pid: int | None
    started_at: float | None
    last_reload_at: float | None
    last_reload_ok: bool | None
    last_reload_error: str | None


TokensFrom = Literal["config", "daemon", "store"]


@dataclass(frozen=True)
class StatusReport:
    """Everything ``tokend status`` prints.

    With an invalid config file, ``config_error`` says why and where, ``config_tokens``
    is ``None``, and the rows come from the last good config a daemon ran (``tokens_from``
    ``daemon``) or, without one, from every token in the store (``store``); ``daemon`` and
    ``tokens_from`` are ``None`` when not even the state directory can be read from the file.
    """

    config_path: Path
    config_tokens: int | None
    tokens: tuple[TokenRow, ...]
    daemon: DaemonRow | None
    config_error: str | None = None
    tokens_from: TokensFrom | None = "config"

    @property
    def healthy(self) -> bool:
        """Every listed token ``ok`` (or removed from the config on purpose), a valid config
        and no failed reload: exit status 0."""
        return all(row.state in (TokenState.OK, UNCONFIGURED) for row in self.tokens) and (
            self.config_error is None and self.daemon is not None
            and self.daemon.last_reload_ok is not False
        )


def token_row(spec: TokenSpec, record: TokenRecord | None, *, now: float) -> TokenRow:
    """The row of one configured token, from its stored record (``None``: never stored)."""
    state = StateFacts.of(record, spec.refresh_token_lifetime).shown(now)
    if record is None:
        return TokenRow(str(spec.name), state, None, None, None, None, None)
    error = _error(record)
    if record.token is None:
        return TokenRow(str(spec.name), state, None, None, None, record.last_refresh_at, error)
    return TokenRow(str(spec.name), state, record.expires_at,
                    record.refresh_token_expires_at(spec.refresh_token_lifetime),
                    due_at(record, spec), record.last_refresh_at, error,
                    does_not_expire=_never_expires(record))


def _never_expires(record: TokenRecord) -> bool:
    return record.token is not None and record.token.expires_in is None


def stored_row(record: TokenRecord, *, now: float) -> TokenRow:
    """The row of a stored token whose settings no config tells: the refresh token's expiry
    and the next refresh are unknown, and so is whether the refresh token has lapsed."""
    return TokenRow(str(record.name), record.shown_state(None, now), record.expires_at, None,
                    None, record.last_refresh_at, _error(record),
                    does_not_expire=_never_expires(record))


def _error(record: TokenRecord) -> str | None:
    if record.output_error is None:
        return record.last_error
    # Also without a token: a revoked token's file that could not be removed still holds it.
    output_problem = f"outputs: {record.output_error}"
    return output_problem if record.last_error is None else f"{record.last_error}; {output_problem}"


def unconfigured_row(record: TokenRecord) -> TokenRow:
    """The row of a stored token the config does not name (its lifetimes are unknown)."""
    return TokenRow(str(record.name), UNCONFIGURED, record.expires_at, None, None,
                    record.last_refresh_at, _error(record), does_not_expire=_never_expires(record))


def _unconfigured(record: TokenRecord, configured: set[TokenName]) -> bool:
    """Stored, not configured, and still holding something: a token, or a file."""
    return record.name not in configured and (
        record.token is not None or bool(record.outputs) or record.output_error is not None)


def daemon_row(state_dir: Path) -> DaemonRow:
    """The daemon's pid from the state-dir lock; its start and reload from ``daemon.json``."""
    pid = running_daemon_pid(state_dir)
    status = read_daemon_status(state_dir) if pid is not None else None
    if status is None or status.pid != pid:
        return DaemonRow(pid is not None, pid, None, None, None, None)
    return DaemonRow(True, pid, status.started_at, status.last_reload_at,
                     status.last_reload_ok, status.last_reload_error)


def build_report(
    config: Config, specs: list[TokenSpec], records: list[TokenRecord], *, now: float
) -> StatusReport:
    """Rows for ``specs`` (in config order) from the store's ``records``, each with what to do;
    when ``specs`` are all the configured tokens, then the stored tokens the config no longer
    names."""
    by_name = {record.name: record for record in records}
    rows = [token_row(spec, by_name.get(spec.name), now=now) for spec in specs]
    configured = {spec.name for spec in config.tokens}
    if configured <= {spec.name for spec in specs}:
        rows += [unconfigured_row(record) for record in records
                 if _unconfigured(record, configured)]
    kept = pending_since(config.state_dir)
    return StatusReport(config.source.absolute(), len(config.tokens),
                        tuple(_with_action(row, config, kept) for row in rows),
                        daemon_row(config.state_dir))


def _with_action(row: TokenRow, config: Config, kept: dict[TokenName, float]) -> TokenRow:
    name = TokenName.parse(row.name)
    todo = action(row.state, name, config)
    return replace(row, action=None if todo is None else todo.text,
                   pending_since=kept.get(name))


def invalid_config_report(
    path: Path,
    error: ConfigError,
    select: Callable[[Config], list[TokenSpec]],
    *,
    now: float,
) -> StatusReport:
    """The report for a config file that was read but is invalid (``error``).

    ``select`` picks the tokens to show from a stand-in config holding the known
    ones (it resolves the names on the command line). A file that cannot be read
    at all raises ``error`` again: a wrong path is a usage error, not a broken config.
    """
    try:
        path.open("rb").close()
    except OSError:
        raise error from None
    shown = path.absolute()
    try:
        state_dir = quick_state_dir(path)
    except ConfigError:
        return StatusReport(shown, None, (), None, str(error), None)
    records = stored_records(state_dir)
    status = read_daemon_status(state_dir)
    view = None if status is None else status.tokens
    if view is not None:
        specs = tuple(token.spec() for token in view)
    else:
        specs = tuple(TokenSpec(record.name) for record in records)
    chosen = select(Config(source=shown, state_dir=state_dir, applications={}, tokens=specs))
    by_name = {record.name: record for record in records}
    if view is not None:
        rows = tuple(token_row(spec, by_name.get(spec.name), now=now) for spec in chosen)
    else:
        # These specs were made from the records: their settings are defaults, not the config's.
        rows = tuple(stored_row(by_name[spec.name], now=now) for spec in chosen)
    return StatusReport(shown, None, rows, daemon_row(state_dir), str(error),
                        "store" if view is None else "daemon")


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else format_utc(epoch)


def render_json(report: StatusReport) -> str:
    """The documented ``status --json`` object (README, "tokend status")."""
    daemon = report.daemon
    document: dict[str, Any] = {
        "tokens": [
            {
                "name": row.name,
                "state": row.state,
                "expires_at": _iso(row.expires_at),
                "does_not_expire": row.does_not_expire,
                "refresh_token_expires_at": _iso(row.refresh_token_expires_at),
                "next_refresh_at": _iso(row.next_refresh_at),
                "last_refresh_at": _iso(row.last_refresh_at),
                "last_error": row.last_error,
                "action": row.action,
                "pending_since": _iso(row.pending_since),
            }
            for row in report.tokens
        ],
        "daemon": None if daemon is None else {
            "running": daemon.running,
            "pid": daemon.pid,
            "started_at": _iso(daemon.started_at),
            "last_reload_at": _iso(daemon.last_reload_at),
            "last_reload_ok": daemon.last_reload_ok,
            "last_reload_error": daemon.last_reload_error,
        },
        "config": {"path": str(report.config_path), "tokens": report.config_tokens,
                   "valid": report.config_error is None, "tokens_from": report.tokens_from,
                   "error": report.config_error},
    }
    return json.dumps(document, indent=2)


def _relative(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "-"
    delta = epoch - now
    if abs(delta) < 1:
        return "now"
    text = format_duration(abs(delta))
    return f"in {text}" if delta > 0 else f"{text} ago"


_HEADERS = ("TOKEN", "STATE", "EXPIRES", "REFRESH TOKEN", "NEXT REFRESH", "LAST REFRESH")


def render_text(report: StatusReport, *, now: float) -> str:
    """A table for people: relative times, the last error on its own line below its row."""
    table = [_HEADERS] + [
        (row.name, row.state,
         "does not expire" if row.does_not_expire else _relative(row.expires_at, now),
         _relative(row.refresh_token_expires_at, now), _relative(row.next_refresh_at, now),
         _relative(row.last_refresh_at, now))
        for row in report.tokens
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(_HEADERS))]
    lines = []
    for index, line in enumerate(table):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
                     .rstrip())
        row = report.tokens[index - 1] if index else None
        if row is not None and row.last_error:
            lines.append(f"  last error: {row.last_error}")
        if row is not None and row.action:
            lines.append(f"  what to do: {row.action}")
        if row is not None and row.pending_since is not None:
            lines.append(f"  pending: a token refreshed {_relative(row.pending_since, now)} is "
                         "kept on this host until the store takes it (its only live copy)")
    lines.append("")
    lines.append(_daemon_line(report.daemon, now))
    if report.config_error is not None:
        lines.append(f"config: INVALID, {report.config_error}")
        if report.tokens_from is not None:
            lines.append(f"  tokens shown: {_SHOWN[report.tokens_from]}")
    return "\n".join(lines)


_SHOWN = {
    "daemon": "those of the daemon's last good config",
    "store": "those in the store, as no daemon ran a good config here ('-': only it can tell)",
}


def _daemon_line(daemon: DaemonRow | None, now: float) -> str:
    if daemon is None:
        return "daemon: unknown (the invalid config does not say where the state directory is)"
    if not daemon.running:
        return "daemon: not running"
    line = f"daemon: running (pid {daemon.pid}"
    if daemon.started_at is not None:
        line += f", started {_relative(daemon.started_at, now)}"
    line += ")"
    if daemon.last_reload_ok is False:
        line += f"; last reload FAILED {_relative(daemon.last_reload_at, now)}: "
        line += f"{daemon.last_reload_error}; still running the previous config"
    return line
