"""What needs a person: how many tokens are in each state, and what to do about one.

A state that no retry can fix is useless without the next step, so every place
that shows one (the daemon's ``action_required`` log line, ``tokend status``)
words it here, with the exact command where there is one, naming the config
file the daemon or the CLI actually read.

The systemd status line and the daemon's credentials recheck read the counts of
:class:`TokenStates` after every event; keeping counts as states change makes that
free, however many tokens there are.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tokend.model import Config, TokenName
from tokend.store.interface import UNCONFIGURED, TokenState

CREDENTIALS_RECHECK = 60.0
"""How often the daemon re-reads the config while an application's credentials are rejected."""
CLIENT_RETRY_INITIAL, CLIENT_RETRY_MAX = 15 * 60.0, 60 * 60.0
"""The server is asked again with unchanged credentials after 15 minutes, doubling up to an
hour: a fix made at the server's side is noticed too."""


@dataclass(frozen=True, slots=True)
class Action:
    """What to do, in words, and the command to run when one command does it."""

    text: str
    command: str | None = None


def command(config_path: Path, *args: str) -> str:
    """``tokend --config /abs/config.yaml ARGS…``, quoted for a shell, runnable from anywhere."""
    return shlex.join(["tokend", "--config", str(config_path.absolute()), *args])


def action(state: str, name: TokenName, config: Config) -> Action | None:
    """What a person must do about ``name`` in ``state`` (a shown state), or ``None``."""
    if state in (TokenState.NOT_AUTHORIZED, TokenState.NEEDS_AUTHORIZATION):
        run = command(config.source, "authorize", str(name))
        return Action(f"run `{run}` and follow the link", run)
    if state == TokenState.CLIENT_REJECTED:
        return Action(client_rejected(name.app, config))
    if state == UNCONFIGURED:
        return Action(unconfigured(name, config))
    return None


def client_rejected(app_name: str, config: Config) -> str:
    """The server refuses the application's credentials: the fix is the credentials."""
    app = config.applications.get(app_name)
    where = "" if app is None else f" (client_id {app.client_id}, {app.secret_source})"
    return (
        f"the server rejects the client credentials of application {app_name}{where}: correct "
        f"them; tokend re-reads the config every {CREDENTIALS_RECHECK:.0f} s and retries at "
        f"once when they change, and asks the server again every "
        f"{CLIENT_RETRY_INITIAL / 60:.0f}-{CLIENT_RETRY_MAX / 60:.0f} min; "
        "no new authorization is needed"
    )


def unconfigured(name: TokenName, config: Config) -> str:
    """A stored token the config no longer names: how to bring it back or be rid of it."""
    forget = command(config.source, "revoke", "--local-only", str(name))
    back = ("not refreshed, its output files removed; add it back to the config to resume "
            "(no new authorization while its refresh token lives)")
    if name.app not in config.applications:
        return (f"{back}, or run `{forget}` to forget it here (application {name.app} is not "
                "configured, so tokend has no credentials to revoke it at the server)")
    revoke = command(config.source, "revoke", str(name))
    return f"{back}, run `{revoke}` to revoke it at the server, or `{forget}` to forget it here"


class TokenStates:
    """Each configured token's stored state, and how many tokens are in each."""

    def __init__(self) -> None:
        self._states: dict[TokenName, TokenState] = {}
        self._counts: Counter[TokenState] = Counter()
        self._line: tuple[int, str] | None = None
        """The last status line and the token count it was made for: the loop asks for it
        at every pass, and a refresh leaves the counts as they were."""

    def get(self, name: TokenName) -> TokenState | None:
        """``name``'s state, or ``None`` while this daemon has not tracked it."""
        return self._states.get(name)

    def change(self, name: TokenName, state: TokenState | None) -> None:
        """Record ``name``'s state (``None``: no longer configured) and keep the counts."""
        old = self._states.pop(name, None)
        if old is not None:
            self._counts[old] -= 1
        if state is not None:
            self._states[name] = state
            self._counts[state] += 1
        if old is not state:
            self._line = None

    def line(self, configured: int) -> str:
        """``3 tokens: 2 ok, 1 needs_authorization``: what ``systemctl status`` shows."""
        if self._line is not None and self._line[0] == configured:
            return self._line[1]
        if not configured:
            line = "no tokens configured"
        else:
            parts = [f"{count} {state.value}" for state, count in sorted(self._counts.items())
                     if count]
            line = f"{configured} tokens: " + ", ".join(parts)
        self._line = (configured, line)
        return line

    def rejected_applications(self) -> set[str]:
        """The applications with a token whose client credentials the server rejected."""
        if not self._counts[TokenState.CLIENT_REJECTED]:
            return set()
        return {name.app for name, state in self._states.items()
                if state is TokenState.CLIENT_REJECTED}
