"""What the supervisor knows of each configured token, and when its next work is due.

For every token: the record last seen, its state (and how many tokens are in
each), when its next refresh is due and when a publish that failed is tried
again. The supervisor runs the work; this module only keeps account of it, so
the rules that turn a record into a schedule live in one place. Work that failed
because the store could not be reached is tried again as soon as it answers. Whenever a
token enters a state only a person can fix, ``action_required`` is logged with
what to do.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import structlog

from tokend.engine import attention
from tokend.engine.metrics import Metrics
from tokend.engine.schedule import Scheduler, backoff_delay, due_at
from tokend.errors import StateError
from tokend.log import SecretMasker
from tokend.model import Config, TokenName, TokenSpec
from tokend.store.interface import NEEDS_A_PERSON, TokenRecord, TokenState
from tokend.timing import Clock

log = structlog.get_logger(__name__)

# After an unexpected error in one token's work, try it again this much later.
CRASH_RETRY = 30.0
# When another process holds a token's claim, look again this much later.
BUSY_RETRY = 5.0
# States a token stays in until a person acts, or its settings change: then it is tried once.
STUCK = (TokenState.NEEDS_AUTHORIZATION, TokenState.CLIENT_REJECTED)


class Tracker:
    """Every configured token's last record, state and due times."""

    def __init__(
        self,
        *,
        clock: Clock,
        masker: SecretMasker,
        metrics: Metrics,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._clock = clock
        self._masker = masker
        self._metrics = metrics
        self._rand = rand
        self.config: Config | None = None
        """The config applied last: the actions ``action_required`` names come from it."""
        self.specs: dict[TokenName, TokenSpec] = {}
        """The specs of ``config``'s tokens: a token not in it is no longer tracked."""
        self.records: dict[TokenName, TokenRecord | None] = {}
        self.refreshes = Scheduler()
        # Outputs that could not be written (or a token busy elsewhere) are published again
        # on their own, without a refresh.
        self.publish_retries = Scheduler()
        self._publish_attempts: dict[TokenName, int] = {}
        self._states = attention.TokenStates()
        # Tokens to try once although they need authorization (their config changed).
        self._forced: set[TokenName] = set()
        # Work that failed on the store, and where its retry is scheduled: tried at once
        # when the store answers again (a shared database back after a short outage).
        self._store_waits: dict[TokenName, Scheduler] = {}

    def next_at(self) -> float | None:
        """When the next refresh or publish retry is due, or ``None`` when nothing is."""
        times = (self.refreshes.next_at(), self.publish_retries.next_at())
        return min((at for at in times if at is not None), default=None)

    def expiry(self, name: TokenName) -> float:
        """When the token last seen for ``name`` expires; 0 when unknown (most urgent)."""
        record = self.records.get(name)
        expires_at = record.expires_at if record is not None else None
        return 0.0 if expires_at is None else expires_at

    def state(self, name: TokenName) -> TokenState | None:
        return self._states.get(name)

    def status_line(self, configured: int) -> str:
        """``3 tokens: 2 ok, 1 needs_authorization``: what ``systemctl status`` shows."""
        return self._states.line(configured)

    def rejected_applications(self) -> set[str]:
        """The applications with a configured token whose credentials the server rejected."""
        return self._states.rejected_applications()

    def take_forced(self, name: TokenName) -> bool:
        """Whether ``name`` is to be tried once although it needs a person; asks only once."""
        forced = name in self._forced
        self._forced.discard(name)
        return forced

    def track(
        self, spec: TokenSpec, record: TokenRecord | None, *, retry_if_stuck: bool = False
    ) -> None:
        """Take ``record`` as what is known of ``spec`` now, and schedule its next refresh."""
        self.records[spec.name] = record
        self._store_waits.pop(spec.name, None)
        state = record.state if record else TokenState.NOT_AUTHORIZED
        first = self._states.get(spec.name) is None
        if state is not self._states.get(spec.name) and state in NEEDS_A_PERSON:
            self._action_required(spec.name, state, record)
        self._states.change(spec.name, state)
        self._metrics.observe_token(spec, record)
        due = due_at(record, spec)
        stuck = record is not None and record.token is not None and state in STUCK
        # Rejected credentials may have been fixed while this daemon did not hold the token.
        if stuck and (retry_if_stuck or (first and state is TokenState.CLIENT_REJECTED)):
            self._forced.add(spec.name)
            due = self._clock.now()
        if due is None:
            self.refreshes.cancel(spec.name)
        else:
            self.refreshes.schedule(spec.name, due)

    def forget(self, name: TokenName) -> None:
        """Drop everything known of ``name``: it left the config."""
        self.refreshes.cancel(name)
        self.publish_retries.cancel(name)
        self._publish_attempts.pop(name, None)
        self._store_waits.pop(name, None)
        self.records.pop(name, None)
        self._states.change(name, None)
        self._metrics.forget_token(name)

    def _action_required(
        self, name: TokenName, state: TokenState, record: TokenRecord | None
    ) -> None:
        """Tell the operator that only a person can move ``name`` on, and how."""
        assert self.config is not None  # noqa: S101 -- tokens are tracked only once applied
        action = attention.action(state, name, self.config)
        assert action is not None  # noqa: S101 -- every state that needs a person has one
        log.warning("action_required", token=str(name), state=str(state), action=action.text,
                    command=action.command,
                    error=None if record is None else record.last_error)

    def retry_publish(self, spec: TokenSpec, *, ok: bool) -> None:
        """Forget the publish retries of ``spec``, or schedule the next with backoff."""
        if ok:
            self._publish_attempts.pop(spec.name, None)
            self.publish_retries.cancel(spec.name)
            return
        attempts = self._publish_attempts.get(spec.name, 0) + 1
        self._publish_attempts[spec.name] = attempts
        delay = backoff_delay(attempts, spec.retry, retry_after=None, random=self._rand)
        self.publish_retries.schedule(spec.name, self._clock.now() + delay)

    def crashed(self, name: TokenName, error: Exception, retry: Scheduler) -> None:
        """Log an unexpected error in ``name``'s work and try it again ``CRASH_RETRY`` later,
        or as soon as the store answers again if the store failed (:meth:`store_back`)."""
        log.error(
            "refresh_crashed",
            token=str(name),
            error_type=type(error).__name__,
            error=self._masker.mask(str(error)),
            retry_in=CRASH_RETRY,
        )
        retry.schedule(name, self._clock.now() + CRASH_RETRY)
        if isinstance(error, StateError):
            self._store_waits[name] = retry

    def store_back(self) -> None:
        """The store answers again: the work that failed on it is due now. Waiting out
        ``CRASH_RETRY`` would leave a short-lived token expired after a short outage."""
        now = self._clock.now()
        for name, retry in self._store_waits.items():
            retry.schedule(name, now)
        self._store_waits.clear()
