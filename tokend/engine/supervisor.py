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
token is kept, marked unconfigured, until it is put back or revoked. What is
known of each token (its record, state and due times) is kept by the
:class:`~tokend.engine.tracker.Tracker`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Collection, Coroutine, Iterable

import structlog

from tokend.engine.batches import PUBLISH_BATCH, Batches
from tokend.engine.config_diff import diff_configs
from tokend.engine.metrics import Metrics
from tokend.engine.refresher import Refresher
from tokend.engine.slots import RefreshSlots
from tokend.engine.tracker import BUSY_RETRY, STUCK, Tracker
from tokend.log import SecretMasker
from tokend.model import Config, TokenName, TokenSpec
from tokend.store.interface import StateStore
from tokend.timing import Clock

log = structlog.get_logger(__name__)



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
        self._refresher = refresher
        self._workers = refresher.workers
        self._publisher = refresher.publisher
        self._clock = clock
        self._masker = masker
        self._on_settled = on_settled
        self._tracker = Tracker(
            clock=clock, masker=masker,
            metrics=Metrics(process=False) if metrics is None else metrics, rand=rand,
        )
        self._batches = Batches(store=store, refresher=refresher, clock=clock,
                                tracker=self._tracker)
        self._inflight: dict[TokenName, asyncio.Task[None]] = {}
        self._republish: set[TokenName] = set()
        # Tokens removed from the config while in flight: retired when the flight ends.
        self._retire_after: set[TokenName] = set()
        self._slots: RefreshSlots | None = None
        self.stopping = False

    def next_at(self) -> float | None:
        """When the next refresh or publish retry is due, or ``None`` when nothing is."""
        return self._tracker.next_at()

    def start_due(self) -> None:
        """Start every refresh that is due now, earliest expiry first, and every retry of
        a publish (or of a retirement, for a token no longer configured)."""
        now = self._clock.now()
        due = [name for name in self._tracker.refreshes.due(now)
               if name in self._tracker.specs and name not in self._inflight]
        due.sort(key=self._tracker.expiry)
        for name in due:
            self._inflight[name] = asyncio.create_task(self._refresh(self._tracker.specs[name]),
                                                       name=str(name))
        if files := self._tracker.publish_retries.due(now):
            self._publish(name for name in files if name in self._tracker.specs)
            self._retire([name for name in files if name not in self._tracker.specs])

    @property
    def config(self) -> Config | None:
        """The config applied last."""
        return self._tracker.config

    def rejected_applications(self) -> set[str]:
        """The applications with a configured token whose credentials the server rejected."""
        return self._tracker.rejected_applications()

    def status_line(self) -> str:
        """``3 tokens: 2 ok, 1 needs_authorization``: what ``systemctl status`` shows."""
        return self._tracker.status_line(len(self._tracker.specs))

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
        first, old_specs = self._tracker.config is None, self._tracker.specs
        changes = diff_configs(self._tracker.config, old_specs, new)
        for application in new.applications.values():
            self._masker.add(application.client_secret.reveal())
        self._tracker.config = new
        self._tracker.specs = changes.specs
        gone = [old_specs[name] for name in (*changes.removed, *changes.outputs)]
        came = [changes.specs[name] for name in (*changes.added, *changes.outputs)]
        if first or gone or came:
            self._batches.use_paths(gone=gone, came=came)
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
            stuck = [name for name in changes.credentials
                     if self._tracker.state(name) in STUCK]
            self._publish(self._reschedule([*changes.settings, *stuck]), retry_if_stuck=changed)
        if first:
            # Tokens removed from the config while no daemon ran: their files go too.
            orphans = await self._workers.store(self._batches.orphans)
            await asyncio.gather(*tasks, *retiring, *self._retire(orphans))
        return len(changes.added), len(changes.removed), changes.changed

    def _reschedule(self, names: Iterable[TokenName]) -> list[TokenName]:
        """Track ``names`` again under their new settings, from the record last seen (a
        stuck token is tried once more); return those that must be published instead:
        in flight (their record is about to change) or never tracked."""
        unknown = []
        for name in names:
            if name in self._inflight or name not in self._tracker.records:
                unknown.append(name)
            else:
                self._tracker.track(self._tracker.specs[name], self._tracker.records[name],
                                    retry_if_stuck=True)
        return unknown

    def _retire(self, names: Iterable[TokenName]) -> list[asyncio.Task[None]]:
        """Retire ``names`` in background batches; those in flight when their flight ends."""
        return self._in_batches(names, self._retire_after, self._retire_batch)

    def _in_batches(
        self, names: Iterable[TokenName], after_flight: set[TokenName],
        work: Callable[[list[TokenName]], Coroutine[None, None, None]],
    ) -> list[asyncio.Task[None]]:
        """Start ``work`` on batches of ``names`` not in flight; add the rest to
        ``after_flight``, for when their flight ends.

        Batches keep start-up at one store and one file hop per ``PUBLISH_BATCH`` tokens,
        and bound what one hung output mount holds up to the tokens batched with it.
        """
        batch = []
        for name in names:
            if name in self._inflight:
                after_flight.add(name)
            else:
                batch.append(name)
        tasks = []
        for start in range(0, len(batch), PUBLISH_BATCH):
            chunk = batch[start:start + PUBLISH_BATCH]
            task = asyncio.create_task(work(chunk))
            for name in chunk:
                self._inflight[name] = task
            tasks.append(task)
        return tasks

    async def _retire_batch(self, names: list[TokenName]) -> None:
        try:
            await self._batches.retire(names)
        except Exception as error:  # noqa: BLE001 -- one batch's failure must never kill the daemon
            for name in names:
                self._tracker.crashed(name, error, self._tracker.publish_retries)
        finally:
            self._settle(names)

    def _forget(self, name: TokenName) -> None:
        self._tracker.forget(name)
        self._republish.discard(name)

    def store_back(self) -> None:
        """The store answers again: start at once the work that failed on it."""
        self._tracker.store_back()

    async def rescan(self, names: Collection[TokenName] | None = None) -> None:
        """Publish the tokens another process changed (those of ``names`` whose record
        differs from the one last seen), or, with ``None``, every configured token: an
        explicit heal, which writes back any output that is missing or stale.

        The records read here only say which tokens changed; each is then
        published from the record as it stands under its lease.
        """
        if names is None:
            self._publish(self._tracker.specs)
            return
        self._publish(await self._batches.changed(names))

    def _publish(
        self, names: Iterable[TokenName], *, retry_if_stuck: Collection[TokenName] = ()
    ) -> list[asyncio.Task[None]]:
        """Publish ``names`` in background batches; those in flight when their flight ends."""
        stuck = set(retry_if_stuck)
        return self._in_batches(names, self._republish,
                                lambda chunk: self._publish_batch(chunk, stuck))

    async def _publish_batch(self, names: list[TokenName], retry_if_stuck: set[TokenName]) -> None:
        try:
            published = await self._batches.publish(names, retry_if_stuck)
        except Exception as error:  # noqa: BLE001 -- one batch's failure must never kill the daemon
            for name in names:
                self._tracker.crashed(name, error, self._tracker.publish_retries)
            return
        finally:
            self._settle(names)
        for spec, result in published:
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
                if name not in self._tracker.specs:
                    retire.append(name)
        if not self.stopping and (again or retire):
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

    async def _refresh(self, spec: TokenSpec) -> None:
        config = self._tracker.config
        assert config is not None  # noqa: S101 -- apply() runs before anything is due
        app = config.applications[spec.name.app]
        try:
            if self.stopping:
                return
            force = self._tracker.take_forced(spec.name)
            outcome = await self._refresher.refresh(spec, app, force=force, slots=self._slots,
                                                    seen=self._tracker.records.get(spec.name))
            current = self._tracker.specs.get(spec.name)
            if current is None:
                return
            if outcome.result == "busy":
                self._tracker.refreshes.schedule(spec.name, self._clock.now() + BUSY_RETRY)
                return
            self._tracker.track(current, outcome.record)
            if outcome.result == "ok":
                self._tracker.retry_publish(current, ok=outcome.outputs_ok)
            if outcome.result == "superseded":
                self._republish.add(spec.name)  # another actor's token: make sure it is out
        except Exception as error:  # noqa: BLE001 -- one token's failure must never kill the daemon
            self._tracker.crashed(spec.name, error, self._tracker.refreshes)
        finally:
            self._settle([spec.name])
