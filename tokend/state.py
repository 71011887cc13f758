"""What tokend remembers between runs: every token, its health, and who is refreshing it.

The store is the one place a new refresh token is committed before anything can
use it, so every write of a token must be durable before it returns.
``StateStore`` is an interface on purpose: SQLite (``sqlite_store.py``) is the
embedded default, a shared PostgreSQL store with row leases is the planned way
past one machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from tokend.model import TokenName
from tokend.oauth import Token


def nobody_is_dead(owner: str) -> bool:
    """Without knowledge of liveness, every lease holder counts until its lease ends."""
    return False


class TokenState(StrEnum):
    """Health of one token, as ``tokend status`` shows it."""

    OK = "ok"
    FAILING = "failing"
    NEEDS_AUTHORIZATION = "needs_authorization"
    NOT_AUTHORIZED = "not_authorized"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One stored token and its history; ``token`` is ``None`` until authorized or after revoke."""

    name: TokenName
    token: Token | None
    refresh_token_issued_at: float | None
    state: TokenState
    last_attempt_at: float | None
    last_refresh_at: float | None
    last_error: str | None
    consecutive_failures: int
    next_attempt_at: float | None


class StateStore(Protocol):
    """Durable token state; every method is one transaction."""

    def get(self, name: TokenName) -> TokenRecord | None: ...

    def all(self) -> list[TokenRecord]: ...

    def save_tokens(self, items: Sequence[tuple[TokenName, Token]], *, now: float) -> None:
        """Commit all new tokens in one durable transaction (group commit), marking them ok."""

    def save_token(self, name: TokenName, token: Token, *, now: float) -> None: ...

    def record_failure(
        self,
        name: TokenName,
        *,
        error: str,
        state: TokenState,
        now: float,
        next_attempt_at: float | None,
    ) -> None:
        """Note a failed attempt; the stored token stays, only an explicit revoke deletes it."""

    def set_problem(self, name: TokenName, *, error: str | None) -> None:
        """Mark a stored token ``failing`` for a problem that is not its refresh (an output
        that cannot be written), or ``ok`` again with ``None``; the token, its failure count
        and its schedule stay as they are."""

    def delete_token(self, name: TokenName) -> None:
        """Forget the token of ``name`` (explicit revoke): not_authorized; unknown names: no-op."""

    def claim(
        self,
        name: TokenName,
        *,
        owner: str,
        now: float,
        lease: float,
        holder_is_dead: Callable[[str], bool] = nobody_is_dead,
    ) -> bool:
        """Lease ``name`` to ``owner`` until ``now + lease``; ``False`` while another holds it.

        A holder that ``holder_is_dead`` says has died (a SIGKILLed daemon) no
        longer counts, so a restart need not wait for its lease to run out.
        """

    def release(self, name: TokenName, *, owner: str) -> None: ...

    def close(self) -> None: ...
