"""What tokend remembers between runs: every token, its health, and who is working on it.

The store is the one place a new refresh token is committed before anything can
use it, so every write of a token must be durable before it returns.
``StateStore`` is an interface on purpose: SQLite (``sqlite.py``) is the
embedded default, a shared PostgreSQL store with row leases is the way past
one machine.

Many actors touch one token (the daemon's refresher, a reload, ``tokend
refresh``, ``authorize``, ``revoke``), and rotation makes a double refresh or a
stale overwrite destructive. The contract that keeps them apart:

* every stored token carries a **generation**, bumped by every write of its
  token; a token write is a compare-and-swap on the generation read when the
  work began, and a write that lost the race is refused (``STALE``) and changes
  nothing;
* work on a token starts with a **claim**, which returns a :class:`Lease`
  (owner, epoch, how long it lasts on the store's own clock); failure records,
  output-health marks, deletes and the release are fenced on the epoch, so a
  holder whose lease ran out cannot undo its successor's work. The commit of an
  answer the server already gave is fenced on the generation only: refusing it
  would throw away the only live refresh token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from tokend.errors import TokendError
from tokend.model import Token, TokenName
from tokend.store import token_expiry

EXPIRED = "expired"
"""The state shown for an ok or failing token whose access or refresh token has lapsed."""
UNCONFIGURED = "unconfigured"
"""The state shown for a stored token that is no longer in the config: not refreshed, not
published, kept so that putting it back needs no new authorization."""


def nobody_is_dead(owner: str) -> bool:
    """Without knowledge of liveness, every lease holder counts until its lease ends."""
    return False


class TokenState(StrEnum):
    """Health of one token's refresh token: what the server thinks of it."""

    OK = "ok"
    FAILING = "failing"
    NEEDS_AUTHORIZATION = "needs_authorization"
    NOT_AUTHORIZED = "not_authorized"
    CLIENT_REJECTED = "client_rejected"
    """The server refused the application's own credentials (``invalid_client``): the
    refresh token was never looked at and stays usable once the credentials are right."""


NEEDS_A_PERSON = frozenset({TokenState.NOT_AUTHORIZED, TokenState.NEEDS_AUTHORIZATION,
                            TokenState.CLIENT_REJECTED})
"""The states no retry can fix: the daemon says so, with what to do."""


class Written(StrEnum):
    """The answer to a fenced write: it landed, or it lost the race and changed nothing."""

    DONE = "done"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One stored token and its history; ``token`` is ``None`` until authorized or after revoke.

    ``issued_at`` is this host's clock when the request that produced the token
    was sent: ``expires_in`` is relative (RFC 6749 §5.1), so expiry is counted
    from there, never from the server's ``created_at``, whose clock may be off.
    ``output_error`` is the health of the files written from the token, kept
    apart from ``state`` so a broken output can never hide or overwrite what
    the server said about the refresh token. ``outputs`` are the files tokend
    wrote that may hold the token, so the ones a config no longer names can be
    removed even after a restart; ``unconfigured_at`` is when the daemon found
    the token gone from the config (``None`` while it is configured).
    """

    name: TokenName
    token: Token | None
    issued_at: float | None
    state: TokenState
    last_attempt_at: float | None
    last_refresh_at: float | None
    last_error: str | None
    consecutive_failures: int
    next_attempt_at: float | None
    generation: int = 0
    output_error: str | None = None
    outputs: tuple[str, ...] = ()
    unconfigured_at: float | None = None

    @property
    def has_token(self) -> bool:
        """Whether an authorized token is stored (``issued_at`` dates it)."""
        return self.token is not None and self.issued_at is not None

    @property
    def expires_at(self) -> float | None:
        """When the access token stops working, on this host's clock; ``None`` without a
        token, or for a token that never expires (a company token)."""
        return None if self.token is None else token_expiry(self.issued_at,
                                                            self.token.expires_in)

    def refresh_token_expires_at(self, lifetime: float) -> float | None:
        """When the refresh token dies, given its configured ``lifetime``; ``None`` when a
        token that never expires is never refreshed, so its refresh token never lapses."""
        if self.issued_at is None or self.expires_at is None:
            return None
        return self.issued_at + lifetime

    def shown_state(self, refresh_token_lifetime: float | None, now: float) -> str:
        """What ``status``, metrics and ``/healthz`` call this token: :class:`StateFacts`."""
        return StateFacts.of(self, refresh_token_lifetime).shown(now)


@dataclass(frozen=True, slots=True)
class StateFacts:
    """What the state rule reads of a record: no token, so no secret (the metrics keep these)."""

    stored: TokenState
    expires_at: float | None
    refresh_expires_at: float | None
    output_problem: bool
    has_token: bool = True
    """A token is stored: without ``expires_at`` it never expires (a company token)."""

    @classmethod
    def of(cls, record: TokenRecord | None, refresh_token_lifetime: float | None) -> StateFacts:
        """``record``'s facts; ``None``: never stored; an unknown lifetime (no config tells
        it) leaves the refresh token's expiry unknown, so it never counts as lapsed."""
        if record is None:
            return cls(TokenState.NOT_AUTHORIZED, None, None, output_problem=False,
                       has_token=False)
        refresh_expires_at = (None if refresh_token_lifetime is None
                              else record.refresh_token_expires_at(refresh_token_lifetime))
        return cls(record.state, record.expires_at, refresh_expires_at,
                   output_problem=record.output_error is not None, has_token=record.has_token)

    def shown(self, now: float) -> str:
        """The one rule for what ``status``, metrics and ``/healthz`` call a token.

        The stored state, except: without a stored token it is
        ``not_authorized`` (or ``needs_authorization``); an ``ok`` or ``failing``
        token whose access or refresh token has lapsed is ``expired`` (consumers
        read a dead token); an ``ok`` token whose outputs cannot be written is
        ``failing``. A state that needs a person wins over ``expired``: it is what
        must be done. (``unconfigured`` depends on the config, so callers that
        have one decide it.)
        """
        stored, expires_at, refresh_expires_at = (
            self.stored, self.expires_at, self.refresh_expires_at)
        if not self.has_token:
            if stored in (TokenState.NEEDS_AUTHORIZATION, TokenState.CLIENT_REJECTED):
                return stored.value
            return TokenState.NOT_AUTHORIZED.value
        lapsed = (expires_at is not None and expires_at <= now) or (
            refresh_expires_at is not None and refresh_expires_at <= now)
        if stored in (TokenState.OK, TokenState.FAILING) and lapsed:
            return EXPIRED
        if stored is TokenState.OK and self.output_problem:
            return TokenState.FAILING.value
        return stored.value


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to work on one token, until ``valid_for`` seconds after it was granted.

    The length is measured on the store's clock (a clock that no wall-clock step
    or ``date -s`` moves), and handed out as a duration, so the holder can keep
    its own deadline on its monotonic clock.
    """

    name: TokenName
    owner: str
    epoch: int
    valid_for: float


@dataclass(frozen=True, slots=True)
class PublishedFiles:
    """What the publish path leaves behind for one token, written under its lease."""

    lease: Lease
    outputs: tuple[str, ...]
    """The files tokend wrote that may hold the token (sorted)."""
    unconfigured_at: float | None
    """When the token left the config; ``None`` while it is configured."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A granted lease and the token's record as it stood when the lease began."""

    lease: Lease
    record: TokenRecord | None

    @property
    def generation(self) -> int:
        """The generation every token write of this work must compare against."""
        return 0 if self.record is None else self.record.generation


class StateStore(Protocol):
    """Durable token state; every method is one transaction."""

    def get(self, name: TokenName) -> TokenRecord | None: ...

    def all(self) -> list[TokenRecord]: ...

    def save_tokens(self, items: Sequence[tuple[TokenName, Token]], *, now: float) -> None:
        """Store tokens unconditionally (one durable transaction), marking them ok.

        Not fenced: for seeding a store nobody else uses (benchmarks, tests,
        imports). Every path that can race another actor uses :meth:`commit`.
        """

    def save_token(self, name: TokenName, token: Token, *, now: float) -> None:
        """:meth:`save_tokens` for one token."""
        self.save_tokens([(name, token)], now=now)

    def commit(
        self, name: TokenName, token: Token, *, generation: int, issued_at: float, now: float
    ) -> Written:
        """Store a new token for ``name`` if its generation is still ``generation``.

        Durable before it returns; marks the token ok, clears its failures and
        bumps the generation. ``STALE`` when another write came first.
        ``issued_at`` is kept in whole seconds, rounded down.
        """

    def record_failure(
        self,
        lease: Lease,
        *,
        generation: int,
        error: str,
        state: TokenState,
        now: float,
        next_attempt_at: float | None,
    ) -> Written:
        """Note a failed attempt on the token of ``generation``; fenced on the lease.

        The stored token stays: only an explicit revoke deletes it.
        """

    def set_output_problem(self, lease: Lease, *, error: str | None) -> Written:
        """Record why the outputs could not be written (``None``: they are fine again).

        Only ``output_error`` changes: the token's state, failures and schedule stay.
        """

    def record_published(self, marks: Sequence[PublishedFiles]) -> list[Written]:
        """Record, in one transaction, which files hold each token and whether it is still
        configured; each mark is fenced on its lease. Token, state and schedule stay."""

    def delete_token(self, lease: Lease, *, generation: int) -> Written:
        """Forget the token (explicit revoke): not_authorized, generation bumped."""

    def claim(
        self,
        name: TokenName,
        *,
        owner: str,
        lease: float,
        holder_is_dead: Callable[[str], bool] = nobody_is_dead,
    ) -> Claim | None:
        """Lease ``name`` to ``owner`` for ``lease`` seconds; ``None`` while another holds it.

        A holder that ``holder_is_dead`` proves has died (a SIGKILLed daemon)
        no longer counts, so a restart need not wait for its lease to run out.
        """
        claims = self.claim_many([name], owner=owner, lease=lease, holder_is_dead=holder_is_dead)
        return claims[0] if claims else None

    def claim_many(
        self,
        names: Sequence[TokenName],
        *,
        owner: str,
        lease: float,
        holder_is_dead: Callable[[str], bool] = nobody_is_dead,
    ) -> list[Claim]:
        """:meth:`claim` for many tokens in one transaction; the busy ones are left out."""

    def release(self, lease: Lease) -> Written:
        """End ``lease``; ``STALE`` when it had already run out and was taken by another."""

    def release_many(self, leases: Sequence[Lease]) -> None: ...

    def ping(self) -> None:
        """A trivial read: returns once the store answers at all (the watchdog's probe)."""

    def close(self) -> None: ...


CLAIM_POLL = 0.2


def wait_for_claim(
    store: StateStore,
    name: TokenName,
    *,
    owner: str,
    lease: float,
    holder_is_dead: Callable[[str], bool],
    timeout: float,
) -> Claim:
    """Claim ``name``, waiting up to ``timeout`` s for another process's work to end.

    For the CLI's one-shot commands (``authorize``, ``revoke``): an operator
    would rather wait out a refresh in flight than be told to try again.
    """
    deadline = time.monotonic() + timeout
    while (claim := store.claim(name, owner=owner, lease=lease,
                                holder_is_dead=holder_is_dead)) is None:
        if time.monotonic() >= deadline:
            raise TokendError(f"{name} is being worked on by another process; try again")
        time.sleep(CLAIM_POLL)
    return claim
