"""Every configured token in one place: what is scheduled, what is in flight, what changed.

The daemon's loop asks the supervisor to start what is due, to apply a new
config and to look again at tokens another process changed. At most one piece
of work per token is in flight in this process (a refresh, or a publish of its
outputs), and every piece holds the token's lease in the store, so nothing
here ever writes a record that another actor has since replaced. Work that
arrives for a token while it is in flight (a reload changed its outputs, the
CLI changed its token) is done when the flight ends, from the record as it
then stands.

A token that leaves the config is retired: its files are removed and its stored
token is kept, marked unconfigured, until it is put back or revoked. Whenever a
token enters a state only a person can fix, the supervisor logs
``action_required`` with what to do.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import structlog

from tokend.engine import attention
from tokend.engine.config_diff import diff_configs
from tokend.engine.metrics import Metrics
from tokend.engine.refresher import Refresher
from tokend.engine.schedule import Scheduler, backoff_delay, due_at
from tokend.engine.slots import RefreshSlots
from tokend.log import SecretMasker
from tokend.model import Config, TokenName, TokenSpec
from tokend.store.interface import NEEDS_A_PERSON, StateStore, TokenRecord, TokenState
from tokend.timing import Clock

log = structlog.get_logger(__name__)

# After an unexpected error in one token's work, try it again this much later.
CRASH_RETRY = 30.0
# When another process holds a token's claim, look again this much later.
BUSY_RETRY = 5.0
# A publish lease covers writing the outputs of one batch of tokens.
PUBLISH_LEASE = 60.0
PUBLISH_BATCH = 64
# States a token stays in until a person acts, or its settings change: then it is tried once.
STUCK = (TokenState.NEEDS_AUTHORIZATION, TokenState.CLIENT_REJECTED)


class Supervisor:
    """Schedules and runs the refreshes and publishes of the tokens of the current config."""

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
        self._workers = refresher.workers
        self._publisher = refresher.publisher
        self._clock = clock
        self._masker = masker
        self._on_settled = on_settled
        self._metrics = Metrics(process=False) if metrics is None else metrics
        self._rand = rand
        self._config: Config | None = None
        self._specs: dict[TokenName, TokenSpec] = {}
        # How many configured tokens write each output path: a reload updates only its own.
        self._paths: Counter[Path] = Counter()
        self._records: dict[TokenName, TokenRecord | None] = {}
        self._scheduler = Scheduler()
        # Outputs that could not be written (or a token busy elsewhere) are published again
        # on their own, without a refresh.
        self._publish_retries = Scheduler()
        self._publish_attempts: dict[TokenName, int] = {}
        self._inflight: dict[TokenName, asyncio.Task[None]] = {}
        self._republish: set[TokenName] = set()
        # Tokens removed from the config while in flight: retired when the flight ends.
        self._retire_after: set[TokenName] = set()
        self._states = attention.TokenStates()
        # Tokens to try once although they need authorization (their config changed).
        self._forced: set[TokenName] = set()
        self._slots: RefreshSlots | None = None
        self.stopping = False

    def next_at(self) -> float | None:
        """When the next refresh or publish retry is due, or ``None`` when nothing is."""
        times = (self._scheduler.next_at(), self._publish_retries.next_at())
        return min((at for at in times if at is not None), default=None)

    def start_due(self) -> None:
        """Start every refresh that is due now, earliest expiry first, and every retry of
        a publish (or of a retirement, for a token no longer configured)."""
        now = self._clock.now()
        due = [name for name in self._scheduler.due(now)
               if name in self._specs and name not in self._inflight]
        due.sort(key=self._expiry)
        for name in due:
            self._inflight[name] = asyncio.create_task(self._refresh(self._specs[name]),
                                                       name=str(name))
        files = self._publish_retries.due(now)
        self._publish(name for name in files if name in self._specs)
        self._retire([name for name in files if name not in self._specs])

    @property
    def config(self) -> Config | None:
        """The config applied last."""
        return self._config

    def rejected_applications(self) -> set[str]:
        """The applications with a configured token whose credentials the server rejected."""
        return self._states.rejected_applications()

    def _expiry(self, name: TokenName) -> float:
        record = self._records.get(name)
        expires_at = record.expires_at if record is not None else None
        return 0.0 if expires_at is None else expires_at

    def status_line(self) -> str:
        """``3 tokens: 2 ok, 1 needs_authorization``: what ``systemctl status`` shows."""
        return self._states.line(len(self._specs))

    async def apply(self, new: Config, *, heal: bool = False) -> tuple[int, int, int]:
        """Move to ``new``; return (added, removed, changed).

        Only what changed is applied. Added tokens, and tokens whose outputs
        changed, are published from the store, which heals a deleted or stale
        file of theirs without a refresh and leaves files that are already
        right untouched; tokens whose other settings changed are rescheduled
        from their last known record; the files of every other token are
        trusted until its next refresh or an explicit heal. With ``heal``
        (always for the first config) every token is published. A token in
        flight is published when its flight ends. The first config's outputs
        are written before this returns (the daemon is ready only then); a
        reload's go on in the background. Schedules follow from the stored
        records, so a reload never causes a refresh storm; a token that needs
        authorization is tried once more when its settings or its
        application's credentials changed.
        """
        first, old_specs = self._config is None, self._specs
        changes = diff_configs(self._config, old_specs, new)
        for application in new.applications.values():
            self._masker.add(application.client_secret.reveal())
        self._config = new
        self._specs = changes.specs
        gone = [old_specs[name] for name in (*changes.removed, *changes.outputs)]
        came = [changes.specs[name] for name in (*changes.added, *changes.outputs)]
        if first or gone or came:
            self._count_paths(gone, -1)
            self._count_paths(came, 1)
            self._publisher.use_paths(self._paths)
        limits = {name: app.concurrency for name, app in new.applications.items()}
        if self._slots is None:
            self._slots = RefreshSlots(new.concurrency, limits)
        else:
            self._slots.resize(new.concurrency, limits)
        for name in changes.removed:
            self._forget(name)
        retiring = self._retire(changes.removed)
        changed = {*changes.outputs, *changes.settings, *changes.credentials}
        if first or heal:
            tasks = self._publish(changes.specs, retry_if_stuck=changed)
        else:
            tasks = self._publish([*changes.added, *changes.outputs], retry_if_stuck=changed)
            stuck = [name for name in changes.credentials if self._states.get(name) in STUCK]
            self._publish(self._reschedule([*changes.settings, *stuck]), retry_if_stuck=changed)
        if first:
            # Tokens removed from the config while no daemon ran: their files go too.
            orphans = await self._workers.store(self._orphans)
            await asyncio.gather(*tasks, *retiring, *self._retire(orphans))
        return len(changes.added), len(changes.removed), changes.changed

    def _count_paths(self, specs: Iterable[TokenSpec], step: int) -> None:
        """Keep count of the configured tokens writing each output path."""
        for spec in specs:
            for output in spec.outputs:
                if count := self._paths[output.path] + step:
                    self._paths[output.path] = count
                else:
                    del self._paths[output.path]

    def _reschedule(self, names: Iterable[TokenName]) -> list[TokenName]:
        """Track ``names`` again under their new settings, from the record last seen (a
        stuck token is tried once more); return those that must be published instead:
        in flight (their record is about to change) or never tracked."""
        unknown = []
        for name in names:
            if name in self._inflight or name not in self._records:
                unknown.append(name)
            else:
                self._track(self._specs[name], self._records[name], retry_if_stuck=True)
        return unknown

    def _orphans(self) -> list[TokenName]:
        """Stored tokens the config does not name that still need retiring."""
        return [record.name for record in self._store.all()
                if record.name not in self._specs and (
                    record.outputs or (record.token is not None
                                       and record.unconfigured_at is None))]

    def _retire(self, names: Iterable[TokenName]) -> list[asyncio.Task[None]]:
        """Retire ``names`` in background batches; those in flight when their flight ends."""
        batch = []
        for name in names:
            if name in self._inflight:
                self._retire_after.add(name)
            else:
                batch.append(name)
        tasks = []
        for start in range(0, len(batch), PUBLISH_BATCH):
            chunk = batch[start:start + PUBLISH_BATCH]
            task = asyncio.create_task(self._retire_batch(chunk))
            for name in chunk:
                self._inflight[name] = task
            tasks.append(task)
        return tasks

    async def _retire_batch(self, names: list[TokenName]) -> None:
        try:
            claims = await self._workers.store(
                self._store.claim_many, names, owner=self._refresher.owner,
                lease=PUBLISH_LEASE, holder_is_dead=self._refresher.holder_is_dead,
            )
            claimed = {claim.lease.name for claim in claims}
            for name in names:
                if name not in claimed:  # another process works on it: look again later
                    self._publish_retries.schedule(name, self._clock.now() + BUSY_RETRY)
            items = [(claim.lease, claim.record) for claim in claims
                     if claim.lease.name not in self._specs]
            try:
                retired = await self._publisher.retire_many(items, now=self._clock.now())
            finally:
                await self._workers.store(self._store.release_many,
                                          [claim.lease for claim in claims])
            for (lease, _record), (record, marked) in zip(items, retired, strict=True):
                if record is not None and record.outputs:
                    self._publish_retries.schedule(lease.name, self._clock.now() + CRASH_RETRY)
                if marked and self._config is not None:
                    log.info("token_unconfigured", token=str(lease.name),
                             action=attention.unconfigured(lease.name, self._config))
        except Exception as error:  # noqa: BLE001 -- one batch's failure must never kill the daemon
            for name in names:
                self._crashed(name, error, self._publish_retries)
        finally:
            self._settle(names)

    def _forget(self, name: TokenName) -> None:
        self._scheduler.cancel(name)
        self._publish_retries.cancel(name)
        self._publish_attempts.pop(name, None)
        self._records.pop(name, None)
        self._republish.discard(name)
        self._states.change(name, None)
        self._metrics.forget_token(name)

    async def rescan(self, names: Collection[TokenName] | None = None) -> None:
        """Publish the tokens another process changed (those of ``names`` whose record
        differs from the one last seen), or, with ``None``, every configured token: an
        explicit heal, which writes back any output that is missing or stale.

        The records read here only say which tokens changed; each is then
        published from the record as it stands under its lease.
        """
        if names is None:
            self._publish(self._specs)
            return
        wanted = [name for name in names if name in self._specs]
        records = await self._workers.store(
            lambda: [r for name in wanted if (r := self._store.get(name)) is not None]
        )
        self._publish(record.name for record in records
                      if record.name in self._specs and record != self._records.get(record.name))

    def _publish(
        self, names: Iterable[TokenName], *, retry_if_stuck: Collection[TokenName] = ()
    ) -> list[asyncio.Task[None]]:
        """Publish ``names`` in background batches; those in flight when their flight ends.

        Batches keep start-up at one store and one file hop per ``PUBLISH_BATCH`` tokens,
        and bound what one hung output mount holds up to the tokens batched with it.
        """
        batch = []
        for name in names:
            if name in self._inflight:
                self._republish.add(name)
            else:
                batch.append(name)
        stuck = set(retry_if_stuck)
        tasks = []
        for start in range(0, len(batch), PUBLISH_BATCH):
            chunk = batch[start:start + PUBLISH_BATCH]
            task = asyncio.create_task(self._publish_batch(chunk, stuck))
            for name in chunk:
                self._inflight[name] = task
            tasks.append(task)
        return tasks

    async def _publish_batch(self, names: list[TokenName], retry_if_stuck: set[TokenName]) -> None:
        try:
            claims = await self._workers.store(
                self._store.claim_many, names, owner=self._refresher.owner,
                lease=PUBLISH_LEASE,
                holder_is_dead=self._refresher.holder_is_dead,
            )
            claimed = {claim.lease.name for claim in claims}
            for name in names:
                if name not in claimed:  # another process works on it and will ring when done
                    self._publish_retries.schedule(name, self._clock.now() + BUSY_RETRY)
            items = [(self._specs[claim.lease.name], claim.lease, claim.record)
                     for claim in claims if claim.lease.name in self._specs]
            try:
                published = await self._publisher.publish_many(items)
            finally:
                await self._workers.store(self._store.release_many,
                                          [claim.lease for claim in claims])
            for (spec, _lease, _record), result in zip(items, published, strict=True):
                current = self._specs.get(spec.name)
                if current is None:  # removed by a reload meanwhile
                    continue
                self._retry_publish(current, ok=result.ok)
                self._track(current, result.record, retry_if_stuck=spec.name in retry_if_stuck)
        except Exception as error:  # noqa: BLE001 -- one batch's failure must never kill the daemon
            for name in names:
                self._crashed(name, error, self._publish_retries)
            return
        finally:
            self._settle(names)
        for (spec, _lease, _record), result in zip(items, published, strict=True):
            await self._publisher.announce(spec, result)

    def _settle(self, names: Iterable[TokenName]) -> None:
        """End the in-flight work of ``names``; publish those that changed meanwhile."""
        again, retire = [], []
        for name in names:
            self._inflight.pop(name, None)
            if name in self._republish:
                self._republish.discard(name)
                again.append(name)
            if name in self._retire_after:
                self._retire_after.discard(name)
                if name not in self._specs:
                    retire.append(name)
        if not self.stopping:
            self._publish(again)
            self._retire(retire)
        self._on_settled()

    async def drain(self, grace: float) -> int:
        """Let in-flight work finish for ``grace`` seconds, cancel the rest; return
        how many were cancelled."""
        self.stopping = True
        pending = set(self._inflight.values())
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
        self._records[spec.name] = record
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
            self._scheduler.cancel(spec.name)
        else:
            self._scheduler.schedule(spec.name, due)

    def _action_required(
        self, name: TokenName, state: TokenState, record: TokenRecord | None
    ) -> None:
        """Tell the operator that only a person can move ``name`` on, and how."""
        assert self._config is not None  # noqa: S101 -- tokens are tracked only once applied
        action = attention.action(state, name, self._config)
        assert action is not None  # noqa: S101 -- every state that needs a person has one
        log.warning("action_required", token=str(name), state=str(state), action=action.text,
                    command=action.command,
                    error=None if record is None else record.last_error)

    def _retry_publish(self, spec: TokenSpec, *, ok: bool) -> None:
        """Forget the publish retries of ``spec``, or schedule the next with backoff."""
        if ok:
            self._publish_attempts.pop(spec.name, None)
            self._publish_retries.cancel(spec.name)
            return
        attempts = self._publish_attempts.get(spec.name, 0) + 1
        self._publish_attempts[spec.name] = attempts
        delay = backoff_delay(attempts, spec.retry, retry_after=None, random=self._rand)
        self._publish_retries.schedule(spec.name, self._clock.now() + delay)

    def _crashed(self, name: TokenName, error: Exception, retry: Scheduler) -> None:
        log.error(
            "refresh_crashed",
            token=str(name),
            error_type=type(error).__name__,
            error=self._masker.mask(str(error)),
            retry_in=CRASH_RETRY,
        )
        retry.schedule(name, self._clock.now() + CRASH_RETRY)

    async def _refresh(self, spec: TokenSpec) -> None:
        assert self._config is not None  # noqa: S101 -- apply() runs before anything is due
        app = self._config.applications[spec.name.app]
        try:
            if self.stopping:
                return
            force = spec.name in self._forced
            self._forced.discard(spec.name)
            outcome = await self._refresher.refresh(spec, app, force=force, slots=self._slots,
                                                    seen=self._records.get(spec.name))
            current = self._specs.get(spec.name)
            if current is None:
                return
            if outcome.result == "busy":
                self._scheduler.schedule(spec.name, self._clock.now() + BUSY_RETRY)
                return
            self._track(current, outcome.record)
            if outcome.result == "ok":
                self._retry_publish(current, ok=outcome.outputs_ok)
            if outcome.result == "superseded":
                self._republish.add(spec.name)  # another actor's token: make sure it is out
        except Exception as error:  # noqa: BLE001 -- one token's failure must never kill the daemon
            self._crashed(spec.name, error, self._scheduler)
        finally:
            self._settle([spec.name])
