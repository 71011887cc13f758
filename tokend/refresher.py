"""One refresh of one token, in the only safe order: store, then outputs, then hooks.

The new tokens are committed durably before anything can use the new access
token. A crash at any point therefore leaves either the old refresh token
(still valid: the new access token was never used) or the new one on disk.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import httpx
import structlog

from tokend.clock import Clock
from tokend.errors import OAuthError, OutputError
from tokend.factorial import AsyncFactorial
from tokend.hooks import hook_environment, run_hook
from tokend.lock import owner_is_dead
from tokend.log import SecretMasker
from tokend.metrics import Metrics
from tokend.model import ApplicationSpec, TokenName, TokenSpec
from tokend.oauth import Token
from tokend.outputs import write_outputs
from tokend.ratelimit import RateLimiter
from tokend.schedule import backoff_delay, due_at
from tokend.state import StateStore, TokenRecord, TokenState

log = structlog.get_logger(__name__)

# skipped: not due (any more) or not authorized; busy: another process holds the claim.
Result = Literal["ok", "transient_error", "permanent_error", "skipped", "busy"]
# How long a claim outlives the request timeout: covers the store commit and
# the wait for a rate-limit slot, which concurrency keeps short.
_LEASE_MARGIN = 60.0
# How an output problem starts in a token's last_error, so its cure can clear it.
OUTPUT_PROBLEM = "outputs: "


@dataclass(frozen=True)
class RefreshOutcome:
    """What happened to one token, and its record afterwards."""

    name: TokenName
    result: Result
    record: TokenRecord | None
    outputs_ok: bool = True


RefreshedCallback = Callable[[TokenSpec, Token], None]


class Refresher:
    """Refreshes tokens, claiming each through the store so no two processes race."""

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
    ) -> None:
        self._store = store
        self._http = http
        self._clock = clock
        self._masker = masker
        self._owner = owner
        self._hook_base_env = dict(hook_base_env)
        self._rand = rand
        self._on_refreshed = on_refreshed
        self._limiters: dict[str, RateLimiter] = {}
        self._metrics = Metrics(process=False) if metrics is None else metrics

    def limiter(self, app: ApplicationSpec) -> RateLimiter:
        """The application's rate limiter, replaced when its configured rate changes."""
        current = self._limiters.get(app.name)
        if current is None or current.rate != app.rate_limit:
            current = self._limiters[app.name] = RateLimiter(app.rate_limit)
        return current

    async def refresh(
        self, spec: TokenSpec, app: ApplicationSpec, *, force: bool = False
    ) -> RefreshOutcome:
        """Refresh ``spec`` if it is (still) due, or always with ``force``.

        The claim is held until the outputs are written, so a concurrent
        ``tokend revoke`` can never see them rewritten after it removed them.
        """
        name = spec.name
        claimed, record = await asyncio.to_thread(self._claim, spec)
        if not claimed:
            log.info("refresh_skipped", token=str(name), reason="claimed_by_another_process")
            return RefreshOutcome(name, "busy", None)
        released = False
        try:
            if record is None or record.token is None:
                return RefreshOutcome(name, "skipped", record)
            due = due_at(record, spec)
            if not force and (due is None or due > self._clock.now()):
                # Another process refreshed it since we scheduled it.
                return RefreshOutcome(name, "skipped", record)
            # reserve() rather than acquire(): the same wait, but we learn how long it is.
            delay = self.limiter(app).reserve()
            self._metrics.rate_limit_waited(app.name, delay)
            if delay > 0:
                await asyncio.sleep(delay)
            started = time.monotonic()
            try:
                token = await self._request(app, spec, record.token)
            except OAuthError as error:
                result = "transient_error" if error.transient else "permanent_error"
                self._metrics.refresh_finished(name, result, time.monotonic() - started)
                return await self._fail(spec, record, error)
            self._masker.add(token.access_token, token.refresh_token)
            released = True
            outputs_ok, fresh = await asyncio.to_thread(self._commit_and_write, spec, token)
            self._metrics.refresh_finished(name, "ok", time.monotonic() - started)
            self._masker.discard(record.token.access_token, record.token.refresh_token)
        finally:
            if not released:
                await asyncio.to_thread(self._store.release, name, owner=self._owner)
        if outputs_ok:
            await self.announce(spec, token)
        if self._on_refreshed is not None:
            self._on_refreshed(spec, token)
        return RefreshOutcome(name, "ok", fresh, outputs_ok=outputs_ok)

    def _claim(self, spec: TokenSpec) -> tuple[bool, TokenRecord | None]:
        """Claim ``spec`` through the store and read its record (one worker-thread hop)."""
        claimed = self._store.claim(
            spec.name, owner=self._owner, now=self._clock.now(),
            lease=spec.timeout + _LEASE_MARGIN, holder_is_dead=owner_is_dead,
        )
        return claimed, self._store.get(spec.name) if claimed else None

    def _commit_and_write(self, spec: TokenSpec, token: Token) -> tuple[bool, TokenRecord | None]:
        """Commit ``token`` durably, then write the outputs, then release the claim.

        One worker-thread hop for the whole sequence; the order inside is the
        invariant: nothing can read the new token before it is on disk.
        """
        try:
            self._store.save_token(spec.name, token, now=self._clock.now())
            log.info("token_refreshed", token=str(spec.name),
                     expires_at=token.expires_at.isoformat())
            outputs_ok = self._write_now(spec, token, None)
        finally:
            self._store.release(spec.name, owner=self._owner)
        return outputs_ok, self._store.get(spec.name)

    async def write(
        self, spec: TokenSpec, token: Token, *, record: TokenRecord | None = None
    ) -> bool:
        """Write the outputs of a committed token; ``False`` when one could not be written."""
        return await asyncio.to_thread(self._write_now, spec, token, record)

    async def write_many(
        self, items: Sequence[tuple[TokenSpec, Token, TokenRecord | None]]
    ) -> list[bool]:
        """:meth:`write` for many tokens in one worker-thread hop (start-up, reload)."""
        return await asyncio.to_thread(lambda: [self._write_now(*item) for item in items])

    def _write_now(self, spec: TokenSpec, token: Token, record: TokenRecord | None) -> bool:
        """Write the outputs (in the calling thread); whether they all hold ``token`` now.

        A failure marks the token ``failing`` with the reason, so ``tokend status``
        shows it; a later success clears a failure ``record`` shows came from
        the outputs.
        """
        try:
            written = write_outputs(spec.outputs, token)
        except OutputError as error:
            log.error("outputs_failed", token=str(spec.name), error=str(error))
            self._store.set_problem(spec.name, error=f"{OUTPUT_PROBLEM}{error}")
            return False
        if written:
            log.debug("outputs_written", token=str(spec.name), paths=[str(p) for p in written])
        if record is not None and (record.last_error or "").startswith(OUTPUT_PROBLEM):
            self._store.set_problem(spec.name, error=None)
            log.info("outputs_recovered", token=str(spec.name))
        return True

    async def announce(self, spec: TokenSpec, token: Token) -> None:
        """Run ``on_refresh``: the outputs hold ``token`` now."""
        if spec.on_refresh:
            await self._run_hook(spec, "on_refresh", token)

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
        self, spec: TokenSpec, record: TokenRecord, error: OAuthError
    ) -> RefreshOutcome:
        name = spec.name
        now = self._clock.now()
        failures = record.consecutive_failures + 1
        message = self._masker.mask(str(error))
        if error.transient:
            delay = backoff_delay(
                failures, spec.retry, retry_after=error.retry_after, random=self._rand
            )
            state, next_attempt_at = TokenState.FAILING, now + delay
        else:
            state, next_attempt_at = TokenState.NEEDS_AUTHORIZATION, None
        await asyncio.to_thread(
            self._store.record_failure, name,
            error=message, state=state, now=now, next_attempt_at=next_attempt_at,
        )
        if error.transient:
            log.warning("refresh_failed", token=str(name), error=message, attempt=failures,
                        retry_in=round(delay, 1))
            return RefreshOutcome(name, "transient_error", await self._get(name))
        log.error("needs_authorization", token=str(name), error=message)
        if spec.on_failure and record.state is not TokenState.NEEDS_AUTHORIZATION:
            await self._run_hook(spec, "on_failure", None)
        return RefreshOutcome(name, "permanent_error", await self._get(name))

    async def _get(self, name: TokenName) -> TokenRecord | None:
        return await asyncio.to_thread(self._store.get, name)

    async def _run_hook(
        self, spec: TokenSpec, hook: Literal["on_refresh", "on_failure"], token: Token | None
    ) -> None:
        env = hook_environment(
            spec,
            expires_at=token.expires_at if token else None,
            base=self._masker.without_secrets(self._hook_base_env),
        )
        argv = spec.on_refresh if hook == "on_refresh" else spec.on_failure
        result = await run_hook(argv, env=env, timeout=spec.hook_timeout, name=str(spec.name))
        self._metrics.hook_finished(spec.name, hook, result)
