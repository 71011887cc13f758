"""``tokend status`` when the config file is invalid: what the store and the daemon still know.

A reload that fails leaves the daemon running its last good config, and that is
exactly when an operator or a monitor asks for the status. So ``status`` still
answers: the tokens of the last config a daemon ran (it publishes them in
``daemon.json``), or every token in the store when no daemon has, each with its
stored state; the daemon's health; and the config error with its place.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tokend.cli.status import StatusReport, daemon_row, stored_records, stored_row, token_row
from tokend.config.quick import quick_state_dir
from tokend.daemon.status_file import read_daemon_status
from tokend.errors import ConfigError
from tokend.model import Config, TokenSpec


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
