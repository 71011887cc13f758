"""What becomes of a refresh the server (or the network) refused: stored, then told.

The failure is stored under the refresh's lease, fenced on the generation it was
sent from, with what it means for the token: a transient error backs off (the
server's ``Retry-After`` honoured), rejected client credentials are tried again
slowly (the server never looked at the refresh token, so it stays usable once the
credentials are right), and anything else needs a person to authorize again.
:meth:`Failures.record` is a store call, made in whichever thread the refresh
runs in; :meth:`Failures.tell` counts, logs and runs the failure hook on the
event loop.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from tokend.engine.attention import CLIENT_RETRY_INITIAL, CLIENT_RETRY_MAX
from tokend.engine.landing import RefreshOutcome, Result
from tokend.engine.metrics import Metrics
from tokend.engine.publish import Publisher
from tokend.engine.schedule import backoff_delay
from tokend.errors import OAuthError
from tokend.log import SecretMasker
from tokend.model import ApplicationSpec, RetryPolicy, TokenSpec
from tokend.store.interface import Claim, StateStore, TokenRecord, TokenState, Written
from tokend.timing import Clock

log = structlog.get_logger(__name__)

CLIENT_REJECTED_ERRORS = frozenset({"invalid_client"})
"""OAuth errors about the application's credentials, not the refresh token."""
CLIENT_RETRY = RetryPolicy(initial=CLIENT_RETRY_INITIAL, max=CLIENT_RETRY_MAX)


@dataclass(frozen=True, slots=True)
class Failure:
    """A refused refresh, as stored under its lease."""

    transient: bool
    state: TokenState
    was: TokenState
    """The token's state before this refresh: the failure hook runs on a change only."""
    message: str
    """The error, masked."""
    attempt: int
    retry_in: float
    seconds: float
    """How long the refresh took, to its failure."""
    written: Written
    record: TokenRecord | None


class Failures:
    """Stores and tells the refused refreshes of one refresher."""

    def __init__(
        self,
        *,
        store: StateStore,
        clock: Clock,
        masker: SecretMasker,
        metrics: Metrics,
        publisher: Publisher,
        rand: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._clock = clock
        self._masker = masker
        self._metrics = metrics
        self._publisher = publisher
        self._rand = rand
        self._monotonic = monotonic

    def record(self, spec: TokenSpec, claim: Claim, error: OAuthError,
               started: float) -> Failure:
        """Store what ``error`` means for the token sent under ``claim`` (a store call)."""
        name, record = spec.name, claim.record
        assert record is not None  # noqa: S101 -- only tokens that exist are sent
        seconds = self._monotonic() - started
        now = self._clock.now()
        failures = record.consecutive_failures + 1
        if error.transient:
            delay = backoff_delay(
                failures, spec.retry, retry_after=error.retry_after, random=self._rand
            )
            state, next_attempt_at = TokenState.FAILING, now + delay
        elif error.error in CLIENT_REJECTED_ERRORS:
            delay = backoff_delay(failures, CLIENT_RETRY, retry_after=None, random=self._rand)
            state, next_attempt_at = TokenState.CLIENT_REJECTED, now + delay
        else:
            delay, state, next_attempt_at = 0.0, TokenState.NEEDS_AUTHORIZATION, None
        message = self._masker.mask(str(error))
        written = self._store.record_failure(
            claim.lease, generation=claim.generation, error=message, state=state, now=now,
            next_attempt_at=next_attempt_at,
        )
        return Failure(error.transient, state, record.state, message, failures, delay,
                       seconds, written, self._store.get(name))

    async def tell(self, spec: TokenSpec, app: ApplicationSpec,
                   failure: Failure) -> RefreshOutcome:
        """Log ``failure`` and run the token's failure hook when its state changed."""
        name, message = spec.name, failure.message
        result: Result = "transient_error" if failure.transient else "permanent_error"
        self._metrics.refresh_finished(name, result, failure.seconds)
        if failure.written is Written.STALE:
            # Someone else owns the token now; what we learned is about a token it replaced.
            log.warning("refresh_failure_superseded", token=str(name), error=message)
            return RefreshOutcome(name, "superseded", failure.record)
        if failure.transient:
            log.warning("refresh_failed", token=str(name), error=message,
                        attempt=failure.attempt, retry_in=round(failure.retry_in, 1))
            return RefreshOutcome(name, "transient_error", failure.record)
        if failure.state is TokenState.CLIENT_REJECTED:
            log.error("client_rejected", token=str(name), application=app.name,
                      client_id=app.client_id, secret_from=app.secret_source, error=message,
                      retry_in=round(failure.retry_in))
        else:
            log.error("needs_authorization", token=str(name), error=message)
        if spec.on_failure and failure.was is not failure.state:
            await self._publisher.run_hook(spec, "on_failure", None)
        return RefreshOutcome(name, "permanent_error", failure.record)
