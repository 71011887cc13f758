"""One refresh of one token, in the only safe order: rate slot, claim, request, commit, publish.

The new tokens are committed durably before anything can use the new access
token. A crash at any point therefore leaves either the old refresh token
(still valid: the new access token was never used) or the new one on disk.

Rotation makes a second request with the same refresh token destructive, so
the request is sent only under a lease that covers it: the rate-limit wait
comes first (holding nothing), then the claim, and the request is sent only if
the lease still covers its whole deadline (not httpx's per-read timeout: one
``asyncio.timeout`` around the exchange on the event loop, or
:func:`tokend.oauth.deadline.request_deadline` in a thread) plus the commit.
The answer is then committed, published and reported by :mod:`tokend.engine.landing`.

A refresh runs a few times a second in the steady state, so it costs what its
hops and its HTTP stack cost: when a file thread is free, the whole refresh
(claim, request with the blocking client, commit, outputs, end of the lease)
runs there in one hop and the event loop only tells what happened; when every
file thread is busy (a burst, a hung mount) the request goes out from the event
loop, which needs no thread per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
import structlog

from tokend.engine.failures import Failure, Failures
from tokend.engine.landing import Answer, Landed, Landing, RefreshedCallback, RefreshOutcome
from tokend.engine.metrics import Metrics
from tokend.engine.pending import PendingCommits
from tokend.engine.publish import Publisher
from tokend.engine.schedule import RateLimiter, due_at
from tokend.engine.slots import Held, RefreshSlots
from tokend.engine.workers import Workers
from tokend.errors import NetworkError, OAuthError
from tokend.factorial import AsyncFactorial, Factorial
from tokend.log import SecretMasker
from tokend.model import ApplicationSpec, Token, TokenSpec
from tokend.oauth.deadline import request_deadline
from tokend.store.interface import Claim, StateStore, TokenRecord, Written
from tokend.store.lock import owner_is_dead
from tokend.store.sqlite import BUSY_TIMEOUT
from tokend.timing import Clock

log = structlog.get_logger(__name__)

COMMIT_ALLOWANCE = BUSY_TIMEOUT + 5.0
"""What a lease must still cover after the request's deadline: the commit, which may wait
``BUSY_TIMEOUT`` for another writer."""
CLAIM_ALLOWANCE = 5.0
"""Slack for the claim itself, so a lease granted a moment late still covers the request."""


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
        blocking_http: httpx.Client | None = None,
    ) -> None:
        self._store = store
        self._http = http
        self._blocking_http = blocking_http
        self._clock = clock
        self._masker = masker
        self._owner = owner
        self._limiters: dict[str, RateLimiter] = {}
        self._metrics = Metrics(process=False) if metrics is None else metrics
        self.workers = Workers() if workers is None else workers
        self._holder_is_dead = holder_is_dead
        self._monotonic = monotonic
        self._pending = pending
        self.publisher = Publisher(store=store, workers=self.workers, masker=masker,
                                   hook_base_env=hook_base_env, metrics=self._metrics)
        self._failures = Failures(store=store, clock=clock, masker=masker,
                                  metrics=self._metrics, publisher=self.publisher, rand=rand,
                                  monotonic=monotonic)
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

        The refresh runs whole in one file thread when one is free (and the
        blocking client is at hand); else, and while an earlier answer waits as a
        pending record, from the event loop with a hop for each store call.
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
        # The slots bound requests on the wire: they end with the answer, so outputs stuck
        # on a hung mount hold their token's lease but never another token's slot.
        held = await slots.take(app.name, priority) if slots else Held()
        hop = None
        try:
            if self._blocking_http is not None and (
                self._pending is None or self._pending.get(name) is None
            ):
                hop = self.workers.start_at_once(self._refresh_here, spec, app, force, held)
            if hop is None:
                return await self._refresh_from_loop(spec, app, force, held)
        finally:
            if hop is None:
                held.release()
        # Shielded: once started, the thread ends the refresh (and its lease) on its own.
        return await self._tell(spec, app, await asyncio.shield(hop))

    def _refresh_here(self, spec: TokenSpec, app: ApplicationSpec, force: bool,
                      held: Held) -> _Told:
        """The whole refresh in this (file) thread: claim, request, commit, outputs, end of
        the lease; what the event loop must still tell comes back."""
        assert self._blocking_http is not None  # noqa: S101 -- only started with it
        claim: Claim | None = None
        landed: Landed | None = None
        try:
            granted_at = self._monotonic()
            with self.workers.store_call():
                claim = self._claim(spec)
            if claim is None:
                return RefreshOutcome(spec.name, "busy", None)
            current = self._sendable(spec, claim, force=force,
                                     lease_ends=granted_at + claim.lease.valid_for)
            if isinstance(current, RefreshOutcome):
                return current
            sent_at, started = self._clock.now(), self._monotonic()
            try:
                with request_deadline(spec.timeout):
                    token = Factorial(
                        access_token=current.token.access_token, base_url=app.base_url,
                        timeout=spec.timeout, client=self._blocking_http,
                    ).refresh_access_token(**self._form(app, current.token))
            except OAuthError as error:
                held.release()
                timed_out = self._monotonic() - started >= spec.timeout
                with self.workers.store_call():
                    return self._failures.record(
                        spec, claim, NetworkError.deadline(spec.timeout) if timed_out else error,
                        started)
            held.release()
            self._masker.add(token.access_token, token.refresh_token)
            answer = Answer(token, current.record, sent_at, started)
            landed = self._landing.land_now(spec, claim, answer)
            return answer, landed
        finally:
            held.release()
            if claim is not None and (landed is None or not landed.released):
                with self.workers.store_call():
                    self._store.release(claim.lease)

    async def _tell(self, spec: TokenSpec, app: ApplicationSpec, told: _Told) -> RefreshOutcome:
        """Say on the event loop what a refresh did: log lines, metrics, hooks."""
        if isinstance(told, RefreshOutcome):
            return told
        if isinstance(told, Failure):
            return await self._failures.tell(spec, app, told)
        answer, landed = told
        outcome = self._landing.report(spec, answer, landed)
        if landed.published is not None:
            await self.publisher.announce(spec, landed.published)
        return outcome

    async def _refresh_from_loop(self, spec: TokenSpec, app: ApplicationSpec, force: bool,
                                 held: Held) -> RefreshOutcome:
        """The refresh with each store call on a worker thread and the request on the loop."""
        claim: Claim | None = None
        landed: Landed | None = None
        told: _Told
        try:
            granted_at = self._monotonic()
            claim = await self.workers.store(self._claim, spec)
            if claim is None:
                return RefreshOutcome(spec.name, "busy", None)
            exchanged = await self._exchange(spec, app, claim, force=force,
                                             lease_ends=granted_at + claim.lease.valid_for)
            held.release()
            if isinstance(exchanged, Answer):
                landed = await self._landing.land(spec, claim, exchanged)
                told = exchanged, landed
            else:
                told = exchanged
        finally:
            if claim is not None and (landed is None or not landed.released):
                await self.workers.store(self._store.release, claim.lease)
        return await self._tell(spec, app, told)

    def _claim(self, spec: TokenSpec) -> Claim | None:
        claim = self._store.claim(spec.name, owner=self._owner, lease=lease_seconds(spec),
                                  holder_is_dead=self._holder_is_dead)
        if claim is None:
            log.info("refresh_skipped", token=str(spec.name), reason="claimed_by_another_process")
        return claim

    def _wanted(self, record: TokenRecord | None, spec: TokenSpec, *, force: bool) -> bool:
        # A token that never expires is never refreshed, even by force: the server would
        # refuse, and the refusal would mark a working token needs_authorization.
        if record is None or record.token is None or record.token.expires_in is None:
            return False
        due = due_at(record, spec)
        return force or (due is not None and due <= self._clock.now())

    def _sendable(self, spec: TokenSpec, claim: Claim, *, force: bool,
                  lease_ends: float) -> _Current | RefreshOutcome:
        """What to refresh from under ``claim``, or why not to send the refresh after all."""
        name, record = spec.name, claim.record
        if record is None or record.token is None or not self._wanted(record, spec, force=force):
            # Another process refreshed or revoked it since we looked.
            return RefreshOutcome(name, "skipped", record)
        if lease_ends - self._monotonic() < spec.timeout + COMMIT_ALLOWANCE:
            log.warning("refresh_postponed", token=str(name), reason="lease_too_short")
            return RefreshOutcome(name, "busy", record)
        return _Current(record, record.token)

    async def _exchange(
        self, spec: TokenSpec, app: ApplicationSpec, claim: Claim, *, force: bool,
        lease_ends: float,
    ) -> RefreshOutcome | Failure | Answer:
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
        current = self._sendable(spec, claim, force=force, lease_ends=lease_ends)
        if isinstance(current, RefreshOutcome):
            return current
        sent_at, started = self._clock.now(), self._monotonic()
        try:
            async with asyncio.timeout(spec.timeout):
                token = await AsyncFactorial(
                    access_token=current.token.access_token, base_url=app.base_url,
                    timeout=spec.timeout, client=self._http,
                ).refresh_access_token(**self._form(app, current.token))
        except OAuthError as error:
            return await self.workers.store(self._failures.record, spec, claim, error, started)
        except TimeoutError:
            return await self.workers.store(self._failures.record, spec, claim,
                                            NetworkError.deadline(spec.timeout), started)
        self._masker.add(token.access_token, token.refresh_token)
        return Answer(token, current.record, sent_at, started)

    @staticmethod
    def _form(app: ApplicationSpec, current: Token) -> dict[str, str]:
        return {"client_id": app.client_id, "client_secret": app.client_secret.reveal(),
                "refresh_token": current.refresh_token}


@dataclass(frozen=True, slots=True)
class _Current:
    """The record a refresh is sent from, read under its lease, and its token."""

    record: TokenRecord
    token: Token


_Told = RefreshOutcome | Failure | tuple[Answer, Landed]
"""What a refresh leaves the event loop to tell."""
