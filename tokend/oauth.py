"""The token itself, and the one place that builds token-endpoint requests and parses answers.

Both clients in ``factorial.py`` (sync and async) call into this module, so the
protocol is written down exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, repr=False)
class Token:
    """An access token and its refresh token, exactly as the server issued them.

    Expiry is ``created_at + expires_in``: the lifetime is whatever the server
    says, never a constant. ``repr`` and ``str`` never show the token strings.
    """

    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str
    scope: str
    created_at: int

    @property
    def expires_at(self) -> datetime:
        """When the access token stops working (aware, UTC)."""
        return datetime.fromtimestamp(self.created_at + self.expires_in, tz=UTC)

    @property
    def expires_at_epoch(self) -> float:
        """``expires_at`` as epoch seconds, for arithmetic."""
        return float(self.created_at + self.expires_in)

    def __repr__(self) -> str:
        return (
            f"Token(token_type={self.token_type!r}, scope={self.scope!r}, "
            f"expires_at={self.expires_at.isoformat()!r})"
        )

    __str__ = __repr__
