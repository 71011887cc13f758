"""The state of every configured token in the daemon, counted as it changes.

The systemd status line and the daemon's credentials recheck read these after
every event; keeping counts as states change makes that free, however many
tokens there are.
"""

from __future__ import annotations

from collections import Counter

from tokend.model import TokenName
from tokend.store.interface import TokenState


class TokenStates:
    """Each configured token's stored state, and how many tokens are in each."""

    def __init__(self) -> None:
        self._states: dict[TokenName, TokenState] = {}
        self._counts: Counter[TokenState] = Counter()

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

    def line(self, configured: int) -> str:
        """``3 tokens: 2 ok, 1 needs_authorization``: what ``systemctl status`` shows."""
        if not configured:
            return "no tokens configured"
        parts = [f"{count} {state.value}" for state, count in sorted(self._counts.items())
                 if count]
        return f"{configured} tokens: " + ", ".join(parts)

    def rejected_applications(self) -> set[str]:
        """The applications with a token whose client credentials the server rejected."""
        if not self._counts[TokenState.CLIENT_REJECTED]:
            return set()
        return {name.app for name, state in self._states.items()
                if state is TokenState.CLIENT_REJECTED}
