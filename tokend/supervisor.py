"""Every configured token in one place: what is scheduled, what is in flight, what changed.

The daemon's loop asks the supervisor to start what is due and to apply a new
config; the supervisor keeps one heap for all tokens and never more than one
refresh per token in flight.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable

import structlog

from tokend.clock import Clock
from tokend.log import SecretMasker
from tokend.metrics import Metrics
from tokend.model import Config, TokenName, TokenSpec
from tokend.refresher import Refresher
from tokend.schedule import Scheduler, backoff_delay, due_at
from tokend.state import StateStore, TokenRecord, TokenState

log = structlog.get_logger(__name__)

# After an unexpected error in one token's work, try it again this much later.
CRASH_RETRY = 30.0
# When another process holds a token's claim, look again this much later.
BUSY_RETRY = 5.0


class Supervisor:
    """Schedules and runs the refreshes of the tokens of the current config."""

    def __init__(
        self,
        *,
        store: StateStore,
        refresher: Refresher,
        clock: Clock,
        masker: SecretMasker,
        on_settled: Callable[[], None],
        metrics: Metrics | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._refresher = refresher
        self._clock = clock
        self._masker = masker
        self._on_settled = on_settled
        self._metrics = Metrics(process=False) if metrics is None else metrics
        self._config: Config | None = None
        self._specs: dict[TokenName, TokenSpec] = {}
        self._scheduler = Scheduler()
        # Outputs that could not be written are retried on their own, without a refresh.
        self._output_retries = Scheduler()
        self._output_attempts: dict[TokenName, int] = {}
        self._rand = rand
        self._inflight: dict[TokenName, asyncio.Task[None]] = {}
        self._states: dict[TokenName, TokenState] = {}
        self._counts: Counter[TokenState] = Counter()
        # Tokens to try once although they need authorization (their config changed).
        self._forced: set[TokenName] = set()
        self._global_slots = asyncio.Semaphore(1)
        self._app_slots: dict[str, asyncio.Semaphore] = {}
        self.stopping = False

    def next_at(self) -> float | None:
        """When the next token or output retry is due, or ``None`` when nothing is scheduled."""
        times = (self._scheduler.next_at(), self._output_retries.next_at())
        return min((at for at in times if at is not None), default=None)

    def start_due(self) -> None:
        """Start a refresh for every token that is due now, and every output retry."""
        now = self._clock.now()
        for name in self._scheduler.due(now):
            spec = self._specs.get(name)
            if spec is not None and name not in self._inflight:
                self._inflight[name] = asyncio.create_task(self._refresh(spec), name=str(name))
        for name in self._output_retries.due(now):
            spec = self._specs.get(name)
            # A refresh in flight writes the outputs itself.
            if spec is not None and name not in self._inflight:
                self._inflight[name] = asyncio.create_task(self._rewrite(spec), name=str(name))

    def status_line(self) -> str:
        """``3 tokens: 2 ok, 1 needs_authorization``: what ``systemctl status`` shows.

        The counts are kept up to date as states change, so this costs nothing
        per refresh, however many tokens there are.
        """
        if not self._specs:
            return "no tokens configured"
        parts = [f"{count} {state.value}" for state, count in sorted(self._counts.items())
                 if count]
        return f"{len(self._specs)} tokens: " + ", ".join(parts)

    def _set_state(self, name: TokenName, state: TokenState | None) -> None:
        """Record ``name``'s state (``None``: no longer configured) and keep the counts."""
        old = self._states.pop(name, None)
        if old is not None:
            self._counts[old] -= 1
        if state is not None:
            self._states[name] = state
            self._counts[state] += 1

    async def apply(self, new: Config) -> tuple[int, int, int]:
        """Move to ``new``, touching only what changed; return (added, removed, changed).

        Every output is written from the store, which heals a deleted or stale
        file without a refresh and leaves files that are already right untouched.
        Unchanged tokens keep their schedule, so a reload never causes a refresh
        storm; a token that needs authorization is tried once more when its
        settings or its application's credentials changed.
        """
        old_config, old_specs = self._config, self._specs
        new_specs = {spec.name: spec for spec in new.tokens}
        for application in new.applications.values():
            self._masker.add(application.client_secret.reveal())
        self._config = new
        self._specs = new_specs
        self._global_slots = asyncio.Semaphore(new.concurrency)
        self._app_slots = {
            name: asyncio.Semaphore(app.concurrency) for name, app in new.applications.items()
        }
        removed = [name for name in old_specs if name not in new_specs]
        for name in removed:
            self._scheduler.cancel(name)
            self._output_retries.cancel(name)
            self._output_attempts.pop(name, None)
            self._set_state(name, None)
            self._metrics.forget_token(name)
        added = {name for name in new_specs if name not in old_specs}
        changed = {
            name for name, spec in new_specs.items()
            if name in old_specs and (
                old_specs[name] != spec
                or old_config is None
                or old_config.applications.get(name.app) != new.applications[name.app]
            )
        }
        records = {record.name: record for record in await asyncio.to_thread(self._store.all)}
        # A refresh in flight writes its own outputs; writing its old token here could
        # land after them. Nothing new starts while this runs: only the loop starts work.
        stored = [
            (spec, record.token, record) for name, spec in new_specs.items()
            if (record := records.get(name)) is not None and record.token is not None
            and name not in self._inflight
        ]
        for _spec, token, _record in stored:
            self._masker.add(token.access_token, token.refresh_token)
        results = await self._refresher.write_many(stored)
        for (spec, _token, record), written in zip(stored, results, strict=True):
            self._retry_outputs(spec, written=written)
            if not written or record.state is TokenState.FAILING:  # the write changed it
                fresh = await asyncio.to_thread(self._store.get, spec.name)
                if fresh is not None:
                    records[spec.name] = fresh
        for name in added | changed:
            self._track(new_specs[name], records.get(name), retry_if_stuck=name in changed)
        return len(added), len(removed), len(changed)

    async def rescan(self) -> None:
        """Pick up tokens another process (``tokend authorize``) stored."""
        records = {record.name: record for record in await asyncio.to_thread(self._store.all)}
        for name, spec in self._specs.items():
            record = records.get(name)
            if record is None or name in self._inflight:
                continue
            if due_at(record, spec) != self._scheduler.when(name):
                if record.token is not None:
                    self._masker.add(record.token.access_token, record.token.refresh_token)
                    record = await self._write(spec, record)
                self._track(spec, record)

    async def drain(self, grace: float) -> int:
        """Let in-flight refreshes finish for ``grace`` seconds, cancel the rest; return
        how many were cancelled."""
        self.stopping = True
        pending = list(self._inflight.values())
        if not pending:
            return 0
        _done, still = await asyncio.wait(pending, timeout=grace)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still, timeout=1.0)
        return len(still)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def _track(
        self, spec: TokenSpec, record: TokenRecord | None, *, retry_if_stuck: bool = False
    ) -> None:
        self._set_state(spec.name, record.state if record else TokenState.NOT_AUTHORIZED)
        self._metrics.observe_token(spec, record)
        due = due_at(record, spec)
        stuck = record is not None and record.token is not None and (
            record.state is TokenState.NEEDS_AUTHORIZATION
        )
        if due is None and stuck and retry_if_stuck:
            self._forced.add(spec.name)
            due = self._clock.now()
        if due is None:
            self._scheduler.cancel(spec.name)
        else:
            self._scheduler.schedule(spec.name, due)

    async def _write(self, spec: TokenSpec, record: TokenRecord) -> TokenRecord | None:
        """Write ``record``'s token to ``spec``'s outputs (no hooks: nothing changed for
        consumers); return the record as it stands afterwards."""
        assert record.token is not None  # noqa: S101 -- callers pass stored tokens only
        written = await self._refresher.write(spec, record.token, record=record)
        self._retry_outputs(spec, written=written)
        if written and record.state is not TokenState.FAILING:
            return record
        return await asyncio.to_thread(self._store.get, spec.name)

    def _retry_outputs(self, spec: TokenSpec, *, written: bool) -> None:
        """Forget the output retries of ``spec``, or schedule the next with backoff."""
        if written:
            self._output_attempts.pop(spec.name, None)
            self._output_retries.cancel(spec.name)
            return
        attempts = self._output_attempts[spec.name] = self._output_attempts.get(spec.name, 0) + 1
        delay = backoff_delay(attempts, spec.retry, retry_after=None, random=self._rand)
        self._output_retries.schedule(spec.name, self._clock.now() + delay)

    async def _rewrite(self, spec: TokenSpec) -> None:
        """Retry the outputs of a token whose last write failed; hooks run once it works,
        since consumers never heard of that token."""
        try:
            record = await asyncio.to_thread(self._store.get, spec.name)
            if record is None or record.token is None:
                self._retry_outputs(spec, written=True)
                return
            token = record.token
            fresh = await self._write(spec, record)
            if spec.name not in self._output_attempts:
                await self._refresher.announce(spec, token)
            current = self._specs.get(spec.name)
            if current is not None:
                self._track(current, fresh)
        except Exception as error:  # noqa: BLE001 -- one token's failure must never kill the daemon
            self._crashed(spec, error)
        finally:
            self._inflight.pop(spec.name, None)
            self._on_settled()

    def _crashed(self, spec: TokenSpec, error: Exception) -> None:
        log.error(
            "refresh_crashed",
            token=str(spec.name),
            error_type=type(error).__name__,
            error=self._masker.mask(str(error)),
            retry_in=CRASH_RETRY,
        )
        self._scheduler.schedule(spec.name, self._clock.now() + CRASH_RETRY)

    async def _refresh(self, spec: TokenSpec) -> None:
        assert self._config is not None  # noqa: S101 -- apply() runs before anything is due
        app = self._config.applications[spec.name.app]
        try:
            async with self._global_slots, self._app_slots[spec.name.app]:
                if self.stopping:
                    return
                force = spec.name in self._forced
                self._forced.discard(spec.name)
                outcome = await self._refresher.refresh(spec, app, force=force)
            current = self._specs.get(spec.name)
            if current is None:
                return
            if outcome.result == "busy":
                self._scheduler.schedule(spec.name, self._clock.now() + BUSY_RETRY)
            else:
                self._track(current, outcome.record)
            if outcome.result == "ok":
                self._retry_outputs(current, written=outcome.outputs_ok)
        except Exception as error:  # noqa: BLE001 -- one token's failure must never kill the daemon
            self._crashed(spec, error)
        finally:
            self._inflight.pop(spec.name, None)
            self._on_settled()
