"""One refresh of one token, in the only safe order: rate slot, claim, request, commit, publish.

The new tokens are committed durably before anything can use the new access
token. A crash at any point therefore leaves either the old refresh token
(still valid: the new access token was never used) or the new one on disk.

Rotation makes a second request with the same refresh token destructive, so
the request is sent only under a lease that covers it: the rate-limit wait
comes first (holding nothing), then the claim, and the request is sent only if
the lease still covers its whole deadline (one ``asyncio.timeout`` around the
exchange, not httpx's per-read timeout) plus the commit. The answer is then
committed, published and reported by :mod:`tokend.engine.landing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Mapping

import httpx
import structlog

from tokend.engine.attention import CLIENT_RETRY_INITIAL, CLIENT_RETRY_MAX
from tokend.engine.landing import Answer, Landed, Landing, RefreshedCallback, RefreshOutcome, Result
from tokend.engine.metrics import Metrics
from tokend.engine.pending import PendingCommits
from tokend.engine.publish import Publisher
from tokend.engine.schedule import RateLimiter, backoff_delay, due_at
from tokend.engine.slots import RefreshSlots
from tokend.engine.workers import Workers
from tokend.errors import NetworkError, OAuthError
from tokend.factorial import AsyncFactorial
from tokend.log import SecretMasker
from tokend.model import ApplicationSpec, RetryPolicy, Token, TokenSpec
from tokend.store.interface import Claim, StateStore, TokenRecord, TokenState, Written
from tokend.store.lock import owner_is_dead
from tokend.store.sqlite import BUSY_TIMEOUT
from tokend.timing import Clock

log = structlog.get_logger(__name__)

COMMIT_ALLOWANCE = BUSY_TIMEOUT + 5.0
"""What a lease must still cover after the request's deadline: the commit, which may wait
``BUSY_TIMEOUT`` for another writer."""
CLAIM_ALLOWANCE = 5.0
"""Slack for the claim itself, so a lease granted a moment late still covers the request."""
CLIENT_REJECTED_ERRORS = frozenset({"invalid_client"})
"""OAuth errors about the application's credentials, not the refresh token: the server
never looked at the refresh token, so it stays usable once the credentials are right."""
CLIENT_RETRY = RetryPolicy(initial=CLIENT_RETRY_INITIAL, max=CLIENT_RETRY_MAX)


def lease_seconds(spec: TokenSpec) -> float:
    """How long a claim on ``spec`` lasts: the request's whole deadline plus the commit."""
    return spec.timeout + COMMIT_ALLOWANCE + CLAIM_ALLOWANCE


class Refresher:
    """Refreshes tokens, claiming each through the store so no two actors race."""

    def __init__(
        self,
        *,
        store: StateStore,
        http: httpx.AsyncClient,
        clock: Clock,
        masker: SecretMasker,
        owner: str,
        hook_base_env: Mapping[str, str],
        rand: Callable[[], float] = random.random,
        on_refreshed: RefreshedCallback | None = None,
        metrics: Metrics | None = None,
        workers: Workers | None = None,
        holder_is_dead: Callable[[str], bool] = owner_is_dead,
        monotonic: Callable[[], float] = time.monotonic,
        pending: PendingCommits | None = None,
    ) -> None:
        self._store = store
        self._http = http
        self._clock = clock
        self._masker = masker
        self._owner = owner
        self._rand = rand
        self._limiters: dict[str, RateLimiter] = {}
        self._metrics = Metrics(process=False) if metrics is None else metrics
        self.workers = Workers() if workers is None else workers
        self._holder_is_dead = holder_is_dead
        self._monotonic = monotonic
        self._pending = pending
        self.publisher = Publisher(store=store, workers=self.workers, masker=masker,
                                   hook_base_env=hook_base_env, metrics=self._metrics)
        self._landing = Landing(store=store, workers=self.workers, publisher=self.publisher,
                                clock=clock, masker=masker, metrics=self._metrics,
                                monotonic=monotonic, pending=pending, on_refreshed=on_refreshed)

    @property
    def owner(self) -> str:
        return self._owner

    @property
    def holder_is_dead(self) -> Callable[[str], bool]:
        return self._holder_is_dead

    def limiter(self, app: ApplicationSpec) -> RateLimiter:
        """The application's rate limiter; a new rate keeps the slots already handed out."""
        current = self._limiters.get(app.name)
        if current is None:
            current = self._limiters[app.name] = RateLimiter(app.rate_limit)
        elif current.rate != app.rate_limit:
            current.retune(app.rate_limit)
        return current

    async def refresh(
        self,
        spec: TokenSpec,
        app: ApplicationSpec,
        *,
        force: bool = False,
        slots: RefreshSlots | None = None,
        seen: TokenRecord | None = None,
    ) -> RefreshOutcome:
        """Refresh ``spec`` if it is (still) due, or always with ``force``.

        ``seen`` is the record the caller last saw (the daemon keeps them): it
        decides whether to start at all, saving a store read; what counts is
        the record read under the lease. The lease is held until the outputs
        are written, so a concurrent ``tokend revoke`` can never see them
        rewritten after it removed them; hooks run after it is released.
        """
        name = spec.name
        record = seen if seen is not None else await self.workers.store(self._store.get, name)
        if not self._wanted(record, spec, force=force):
            return RefreshOutcome(name, "skipped", record)
        # The rate-limit wait holds nothing: no slot, no lease.
        delay = self.limiter(app).reserve()
        self._metrics.rate_limit_waited(app.name, delay)
        if delay > 0:
            await asyncio.sleep(delay)
        priority = (record.expires_at if record is not None else None) or 0.0
        held = slots.hold(app.name, priority) if slots else contextlib.nullcontext()
        claim: Claim | None = None
        landed: Landed | None = None
        try:
            # The slot bounds requests on the wire: it ends with the answer, so outputs
            # stuck on a hung mount hold their token's lease but never another's slot.
            async with held:
                granted_at = self._monotonic()
                claim = await self.workers.store(
                    self._store.claim, name, owner=self._owner, lease=lease_seconds(spec),
                    holder_is_dead=self._holder_is_dead,
                )
                if claim is None:
                    log.info("refresh_skipped", token=str(name),
                             reason="claimed_by_another_process")
                    return RefreshOutcome(name, "busy", None)
                answer = await self._exchange(
                    spec, app, claim, force=force, lease_ends=granted_at + claim.lease.valid_for
                )
            if isinstance(answer, RefreshOutcome):
                return answer
            landed = await self._landing.land(spec, claim, answer)
        finally:
            if claim is not None and (landed is None or not landed.released):
                await self.workers.store(self._store.release, claim.lease)
        outcome = self._landing.report(spec, answer, landed)
        if landed.published is not None:
            await self.publisher.announce(spec, landed.published)
        return outcome

    def _wanted(self, record: TokenRecord | None, spec: TokenSpec, *, force: bool) -> bool:
        # A token that never expires is never refreshed, even by force: the server would
        # refuse, and the refusal would mark a working token needs_authorization.
        if record is None or record.token is None or record.token.expires_in is None:
            return False
        due = due_at(record, spec)
        return force or (due is not None and due <= self._clock.now())

    async def _exchange(
        self, spec: TokenSpec, app: ApplicationSpec, claim: Claim, *, force: bool,
        lease_ends: float,
    ) -> RefreshOutcome | Answer:
        """Commit a pending answer of an earlier try first: the token's old refresh token
        must never be sent while its successor waits here (``engine.pending``)."""
        name = spec.name
        if self._pending is not None and self._pending.get(name) is not None:
            landed = await self.workers.store(self._pending.settle, self._store, name,
                                              now=self._clock.now())
            fresh = await self.workers.store(self._store.get, name)
            log.info("pending_commit_settled", token=str(name), result=str(landed))
            if landed is Written.DONE:
                log.info("token_refreshed", token=str(name), from_pending=True)
                return RefreshOutcome(name, "ok", fresh)
            claim = dataclasses.replace(claim, record=fresh)
        return await self._send(spec, app, claim, force=force, lease_ends=lease_ends)

    async def _send(
        self, spec: TokenSpec, app: ApplicationSpec, claim: Claim, *, force: bool,
        lease_ends: float,
    ) -> RefreshOutcome | Answer:
        """Send the refresh under ``claim``: the server's answer, or how it ended without one."""
        name, record = spec.name, claim.record
        if record is None or record.token is None or not self._wanted(record, spec, force=force):
            # Another process refreshed or revoked it since we looked.
            return RefreshOutcome(name, "skipped", record)
        if lease_ends - self._monotonic() < spec.timeout + COMMIT_ALLOWANCE:
            log.warning("refresh_postponed", token=str(name), reason="lease_too_short")
            return RefreshOutcome(name, "busy", record)
        sent_at = self._clock.now()
        started = self._monotonic()
        try:
            async with asyncio.timeout(spec.timeout):
                token = await self._request(app, spec, record.token)
        except OAuthError as error:
            return await self._fail(spec, app, claim, error, started)
        except TimeoutError:
            return await self._fail(spec, app, claim, NetworkError.deadline(spec.timeout),
                                    started)
        self._masker.add(token.access_token, token.refresh_token)
        return Answer(token, record, sent_at, started)

    async def _request(self, app: ApplicationSpec, spec: TokenSpec, current: Token) -> Token:
        client = AsyncFactorial(
            access_token=current.access_token,
            base_url=app.base_url,
            timeout=spec.timeout,
            client=self._http,
        )
        return await client.refresh_access_token(
            client_id=app.client_id,
            client_secret=app.client_secret.reveal(),
            refresh_token=current.refresh_token,
        )

    async def _fail(
        self, spec: TokenSpec, app: ApplicationSpec, claim: Claim, error: OAuthError,
        started: float,
    ) -> RefreshOutcome:
        name, record = spec.name, claim.record
        assert record is not None  # noqa: S101 -- only tokens that exist are sent
        result: Result = "transient_error" if error.transient else "permanent_error"
        self._metrics.refresh_finished(name, result, self._monotonic() - started)
        now = self._clock.now()
        failures = record.consecutive_failures + 1
        message = self._masker.mask(str(error))
        if error.transient:
            delay = backoff_delay(
                failures, spec.retry, retry_after=error.retry_after, random=self._rand
            )
            state, next_attempt_at = TokenState.FAILING, now + delay
        elif error.error in CLIENT_REJECTED_ERRORS:
            delay = backoff_delay(failures, CLIENT_RETRY, retry_after=None, random=self._rand)
            state, next_attempt_at = TokenState.CLIENT_REJECTED, now + delay
        else:
            state, next_attempt_at = TokenState.NEEDS_AUTHORIZATION, None
        written = await self.workers.store(
            self._store.record_failure, claim.lease, generation=claim.generation,
            error=message, state=state, now=now, next_attempt_at=next_attempt_at,
        )
        fresh = await self.workers.store(self._store.get, name)
        if written is Written.STALE:
            # Someone else owns the token now; what we learned is about a token it replaced.
            log.warning("refresh_failure_superseded", token=str(name), error=message)
            return RefreshOutcome(name, "superseded", fresh)
        if error.transient:
            log.warning("refresh_failed", token=str(name), error=message, attempt=failures,
                        retry_in=round(delay, 1))
            return RefreshOutcome(name, "transient_error", fresh)
        if state is TokenState.CLIENT_REJECTED:
            log.error("client_rejected", token=str(name), application=app.name,
                      client_id=app.client_id, secret_from=app.secret_source, error=message,
                      retry_in=round(delay))
        else:
            log.error("needs_authorization", token=str(name), error=message)
        if spec.on_failure and record.state is not state:
            await self.publisher.run_hook(spec, "on_failure", None)
        return RefreshOutcome(name, "permanent_error", fresh)

