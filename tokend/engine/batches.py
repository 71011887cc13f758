"""Publishing and retiring tokens in batches, each token under a publish lease.

A batch is one store hop to claim its tokens, one file hop for their outputs and
one store hop to release them: start-up then costs a few hops per
``PUBLISH_BATCH`` tokens, and one hung output mount holds up only the tokens
batched with it. A token another process holds is left to it and looked at
again ``BUSY_RETRY`` later. Which tokens are in flight, and what happens when a
batch ends, is the supervisor's business.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from pathlib import Path

import structlog

from tokend.engine import attention
from tokend.engine.publish import Published
from tokend.engine.refresher import Refresher
from tokend.engine.tracker import BUSY_RETRY, CRASH_RETRY, Tracker
from tokend.model import TokenName, TokenSpec
from tokend.store.interface import Claim, StateStore
from tokend.timing import Clock

log = structlog.get_logger(__name__)

# A publish lease covers writing the outputs of one batch of tokens.
PUBLISH_LEASE = 60.0
PUBLISH_BATCH = 64


class Batches:
    """Publishes and retires batches of tokens, keeping the tracker's account of them."""

    def __init__(
        self, *, store: StateStore, refresher: Refresher, clock: Clock, tracker: Tracker
    ) -> None:
        self._store = store
        self._refresher = refresher
        self._workers = refresher.workers
        self._publisher = refresher.publisher
        self._clock = clock
        self._tracker = tracker
        # How many configured tokens write each output path: a reload updates only its own.
        self._paths: Counter[Path] = Counter()

    def use_paths(self, *, gone: Iterable[TokenSpec], came: Iterable[TokenSpec]) -> None:
        """Count the outputs of the specs that ``gone`` and ``came`` by a config change, and
        tell the publisher which paths configured tokens write."""
        for specs, step in ((gone, -1), (came, 1)):
            for spec in specs:
                for output in spec.outputs:
                    if count := self._paths[output.path] + step:
                        self._paths[output.path] = count
                    else:
                        del self._paths[output.path]
        self._publisher.use_paths(self._paths)

    def orphans(self) -> list[TokenName]:
        """Stored tokens the config does not name that still need retiring (a store call)."""
        return [record.name for record in self._store.all()
                if record.name not in self._tracker.specs and (
                    record.outputs or (record.token is not None
                                       and record.unconfigured_at is None))]

    async def changed(self, names: Collection[TokenName]) -> list[TokenName]:
        """The configured tokens of ``names`` whose stored record differs from the one last
        seen: another process changed them."""
        wanted = [name for name in names if name in self._tracker.specs]
        records = await self._workers.store(
            lambda: [r for name in wanted if (r := self._store.get(name)) is not None]
        )
        return [record.name for record in records
                if record.name in self._tracker.specs
                and record != self._tracker.records.get(record.name)]

    async def _claim(self, names: list[TokenName]) -> list[Claim]:
        """Claim what no other process holds; look at the rest again later."""
        claims = await self._workers.store(
            self._store.claim_many, names, owner=self._refresher.owner,
            lease=PUBLISH_LEASE, holder_is_dead=self._refresher.holder_is_dead,
        )
        claimed = {claim.lease.name for claim in claims}
        for name in names:
            if name not in claimed:  # another process works on it and will ring when done
                self._tracker.publish_retries.schedule(name, self._clock.now() + BUSY_RETRY)
        return claims

    async def publish(
        self, names: list[TokenName], retry_if_stuck: set[TokenName]
    ) -> list[tuple[TokenSpec, Published]]:
        """Publish the outputs of ``names`` from their records as they stand under the
        lease; return what to announce (hooks run only once the batch's flight is over)."""
        claims = await self._claim(names)
        specs = self._tracker.specs
        items = [(specs[claim.lease.name], claim.lease, claim.record)
                 for claim in claims if claim.lease.name in specs]
        try:
            published = await self._publisher.publish_many(items)
        finally:
            await self._workers.store(self._store.release_many,
                                      [claim.lease for claim in claims])
        for (spec, _lease, _record), result in zip(items, published, strict=True):
            current = self._tracker.specs.get(spec.name)
            if current is None:  # removed by a reload meanwhile
                continue
            self._tracker.retry_publish(current, ok=result.ok)
            self._tracker.track(current, result.record,
                                retry_if_stuck=spec.name in retry_if_stuck)
        return [(spec, result) for (spec, _lease, _record), result
                in zip(items, published, strict=True)]

    async def retire(self, names: list[TokenName]) -> None:
        """Remove the files of ``names``, no longer configured, and mark their tokens
        unconfigured; files that could not be removed are tried again later."""
        claims = await self._claim(names)
        items = [(claim.lease, claim.record) for claim in claims
                 if claim.lease.name not in self._tracker.specs]
        try:
            retired = await self._publisher.retire_many(items, now=self._clock.now())
        finally:
            await self._workers.store(self._store.release_many,
                                      [claim.lease for claim in claims])
        for (lease, _record), (record, marked) in zip(items, retired, strict=True):
            if record is not None and record.outputs:
                self._tracker.publish_retries.schedule(lease.name,
                                                       self._clock.now() + CRASH_RETRY)
            if marked and (config := self._tracker.config) is not None:
                log.info("token_unconfigured", token=str(lease.name),
                         action=attention.unconfigured(lease.name, config))
