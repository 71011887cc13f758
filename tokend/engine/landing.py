"""What becomes of the server's answer to a refresh: committed, published, told.

The answer holds the only live refresh token once the server has rotated, so it
is committed before anything else (fenced on the generation the refresh was
sent from), kept as a pending record when the store cannot take it
(``engine.pending``), and only then written to the outputs, under the lease the
refresh holds; the lease ends with them. A refresh that ran whole in a file
thread lands there (:meth:`Landing.land_now`); one sent from the event loop
lands in one hop when a file thread is free (``Workers.store_then_files``).
:meth:`Landing.report` then says on the event loop what happened: the log line,
the metrics, the masker, and the outcome the supervisor schedules from.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from tokend.engine.metrics import Metrics
from tokend.engine.pending import PendingCommit, PendingCommits
from tokend.engine.publish import Published, Publisher
from tokend.engine.workers import Workers
from tokend.errors import StateError
from tokend.log import SecretMasker
from tokend.model import Token, TokenName, TokenSpec
from tokend.store.interface import Claim, StateStore, TokenRecord, Written
from tokend.timing import Clock, format_utc

log = structlog.get_logger(__name__)

# skipped: not due (any more) or not authorized; busy: another process holds the claim;
# superseded: another actor stored a newer token (or took the lease) while we worked.
Result = Literal["ok", "transient_error", "permanent_error", "skipped", "busy", "superseded"]


@dataclass(frozen=True)
class RefreshOutcome:
    """What happened to one token, and its record afterwards."""

    name: TokenName
    result: Result
    record: TokenRecord | None
    outputs_ok: bool = True


RefreshedCallback = Callable[[TokenSpec, Token], None]


@dataclass(frozen=True, slots=True)
class Answer:
    """The server's answer to a refresh, and what was sent to get it."""

    token: Token
    record: TokenRecord
    """The record the refresh was sent from (read under the lease)."""
    sent_at: float
    started: float
    """``monotonic`` when it was sent: how long the refresh took."""


@dataclass(frozen=True, slots=True)
class Landed:
    """What became of an answer: committed (``written``; ``None`` when the commit failed
    and the answer was kept as a pending record), published, and whether the lease ended."""

    written: Written | None
    record: TokenRecord | None
    committed_at: float
    """``monotonic`` when the commit returned (or failed)."""
    published: Published | None = None
    released: bool = False
    failed: Exception | None = None
    """Publishing a committed token raised this: raised again once the commit is told of."""


_Committed = tuple[Written, TokenRecord | None, float]
"""What the commit said, the record read back after it, and ``monotonic`` then."""


def _kept_commit(spec: TokenSpec, claim: Claim, answer: Answer) -> PendingCommit:
    return PendingCommit(spec.name, answer.token, claim.generation, answer.sent_at)


class Landing:
    """Commits, publishes and reports the answers of the refreshes of one refresher."""

    def __init__(
        self,
        *,
        store: StateStore,
        workers: Workers,
        publisher: Publisher,
        clock: Clock,
        masker: SecretMasker,
        metrics: Metrics,
        monotonic: Callable[[], float] = time.monotonic,
        pending: PendingCommits | None = None,
        on_refreshed: RefreshedCallback | None = None,
    ) -> None:
        self._store = store
        self._workers = workers
        self._publisher = publisher
        self._clock = clock
        self._masker = masker
        self._metrics = metrics
        self._monotonic = monotonic
        self._pending = pending
        self._on_refreshed = on_refreshed

    async def land(self, spec: TokenSpec, claim: Claim, answer: Answer) -> Landed:
        """Commit ``answer`` (fenced on the generation only), then publish it and end the
        lease, in one hop when a file thread is free; a commit that fails keeps the
        answer as a pending record, its lease still held."""
        try:
            return await self._workers.store_then_files(
                functools.partial(self._commit, spec, claim, answer),
                functools.partial(self._publish, spec, claim))
        except StateError as error:
            if self._pending is None:
                raise
            path = await self._workers.files(self._pending.keep,
                                             _kept_commit(spec, claim, answer))
            return self._kept(spec, answer, error, path)

    def land_now(self, spec: TokenSpec, claim: Claim, answer: Answer) -> Landed:
        """:meth:`land` in the calling file thread: the refresh that got ``answer`` ran there."""
        try:
            with self._workers.store_call():
                committed = self._commit(spec, claim, answer)
        except StateError as error:
            if self._pending is None:
                raise
            path = self._pending.keep(_kept_commit(spec, claim, answer))
            return self._kept(spec, answer, error, path)
        return self._publish(spec, claim, committed)

    def _commit(self, spec: TokenSpec, claim: Claim, answer: Answer) -> _Committed:
        written = self._store.commit(spec.name, answer.token, generation=claim.generation,
                                     issued_at=answer.sent_at, now=self._clock.now())
        return written, self._store.get(spec.name), self._monotonic()

    def _publish(self, spec: TokenSpec, claim: Claim, committed: _Committed) -> Landed:
        written, fresh, at = committed
        try:
            if written is not Written.DONE:
                self._store.release(claim.lease)
                return Landed(written, fresh, at, released=True)
            published = self._publisher.settle_many([(spec, claim.lease, fresh)],
                                                   new_token=True, release=True)[0]
        except Exception as error:  # noqa: BLE001 -- raised once the commit is told of
            return Landed(written, fresh, at, failed=error)
        return Landed(written, published.record, at, published, released=True)

    def _kept(self, spec: TokenSpec, answer: Answer, error: StateError, path: Path) -> Landed:
        # The server rotated: this answer holds the only live refresh token.
        log.error("commit_failed_token_kept", token=str(spec.name), error=str(error),
                  pending=str(path))
        return Landed(None, answer.record, self._monotonic())

    def report(self, spec: TokenSpec, answer: Answer, landed: Landed) -> RefreshOutcome:
        """Tell what the commit did (log, metrics, the masker), then what publishing did."""
        name, token, current = spec.name, answer.token, answer.record.token
        seconds = landed.committed_at - answer.started
        if landed.written is None:
            return RefreshOutcome(name, "busy", answer.record)
        if landed.written is Written.STALE:
            # Our lease had run out and another actor stored a newer token (an
            # authorization, say): ours belongs to a lineage nobody holds any more.
            self._metrics.refresh_finished(name, "superseded", seconds)
            log.warning("refresh_superseded", token=str(name))
            return RefreshOutcome(name, "superseded", landed.record)
        self._metrics.refresh_finished(name, "ok", seconds)
        log.info("token_refreshed", token=str(name),
                 expires_at=None if token.expires_in is None
                 else format_utc(answer.sent_at + token.expires_in))
        if current is not None:
            # The replaced pair stays valid until the old access token expires (a hook may
            # print it): masked until then, then forgotten. (Only a token that expires is
            # refreshed.)
            old_expiry = answer.record.expires_at or answer.sent_at + (current.expires_in or 0)
            self._masker.retire(current.access_token, current.refresh_token, until=old_expiry)
        if landed.failed is not None:
            raise landed.failed
        published = landed.published
        assert published is not None  # noqa: S101 -- a done commit is published or failed
        if self._on_refreshed is not None and published.record is not None and (
            published.record.token is not None
        ):
            self._on_refreshed(spec, published.record.token)
        return RefreshOutcome(name, "ok", published.record, outputs_ok=published.ok)
