"""The one path by which a token reaches its consumers: outputs from the stored record, then hooks.

Start-up, reload, rescan, output retries, refreshes and ``tokend authorize`` all
publish through :meth:`Publisher.publish`, and only while holding the token's
lease, so what it writes is the record as it stands under that lease: no actor
can write a snapshot that another has already replaced. A revoked token's
outputs are removed, so nothing keeps using a dead token.

Output health is recorded apart from token health (``output_error``): a
broken output never hides or overwrites what the server said about the
refresh token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import structlog

from tokend.errors import OutputError
from tokend.hooks import hook_environment, run_hook
from tokend.log import SecretMasker
from tokend.metrics import Metrics
from tokend.model import TokenSpec
from tokend.outputs import remove_outputs, write_outputs
from tokend.state import Lease, StateStore, TokenRecord
from tokend.workers import Workers

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Published:
    """What one publish did: the record it published, and whether consumers must hear of it."""

    record: TokenRecord | None
    ok: bool
    """The outputs now hold the record's token (or are gone, for a revoked token)."""
    announce: bool
    """``on_refresh`` is due: a new token, or files a consumer reads changed."""


@dataclass(frozen=True, slots=True)
class _Written:
    paths: tuple[Path, ...]
    error: str | None


class Publisher:
    """Writes outputs from the store and runs hooks; callers hold the token's lease."""

    def __init__(
        self,
        *,
        store: StateStore,
        workers: Workers,
        masker: SecretMasker,
        hook_base_env: Mapping[str, str],
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._workers = workers
        self._masker = masker
        self._hook_base_env = dict(hook_base_env)
        self._metrics = metrics

    async def publish(
        self, spec: TokenSpec, lease: Lease, *, record: TokenRecord | None = None,
        new_token: bool = False,
    ) -> Published:
        """Publish ``spec``'s stored token (``record`` if the caller just read it under
        ``lease``); ``new_token`` when the token itself just changed."""
        if record is None:
            record = await self._workers.store(self._store.get, spec.name)
        published = await self.publish_many([(spec, lease, record)], new_token=new_token)
        return published[0]

    async def publish_many(
        self,
        items: Sequence[tuple[TokenSpec, Lease, TokenRecord | None]],
        *,
        new_token: bool = False,
    ) -> list[Published]:
        """:meth:`publish` for many tokens read under their leases, in one hop per pool."""
        for _spec, _lease, record in items:
            if record is not None and record.token is not None:
                self._masker.add(record.token.access_token, record.token.refresh_token)
        results = await self._workers.files(
            lambda: [_write(spec, record) for spec, _lease, record in items]
        )
        changed = [
            (lease, written.error) for (_spec, lease, record), written in zip(items, results,
                                                                              strict=True)
            if record is not None and written.error != record.output_error
        ]
        if changed:
            await self._workers.store(self._mark_output_health, changed)
        published = []
        for (spec, _lease, stored), written in zip(items, results, strict=True):
            record = stored
            if stored is not None and written.error != stored.output_error:
                self._log_health(spec, written.error)
                record = dataclasses.replace(stored, output_error=written.error)
            ok = written.error is None
            has_token = record is not None and record.token is not None
            announce = ok and has_token and (new_token or bool(written.paths))
            published.append(Published(record, ok, announce))
        return published

    def _mark_output_health(self, changed: list[tuple[Lease, str | None]]) -> None:
        for lease, error in changed:
            self._store.set_output_problem(lease, error=error)

    @staticmethod
    def _log_health(spec: TokenSpec, error: str | None) -> None:
        if error is None:
            log.info("outputs_recovered", token=str(spec.name))
        else:
            log.error("outputs_failed", token=str(spec.name), error=error)

    async def announce(self, spec: TokenSpec, published: Published) -> None:
        """Run ``on_refresh`` if ``published`` says consumers must hear of it.

        Called after the lease is released: a slow hook must not hold up the token.
        """
        if published.announce and spec.on_refresh and published.record is not None:
            await self.run_hook(spec, "on_refresh", published.record)

    async def run_hook(
        self,
        spec: TokenSpec,
        hook: Literal["on_refresh", "on_failure"],
        record: TokenRecord | None,
    ) -> None:
        expires_at = record.expires_at if record is not None else None
        env = hook_environment(
            spec,
            expires_at=None if expires_at is None else datetime.fromtimestamp(expires_at, tz=UTC),
            base=self._masker.without_secrets(self._hook_base_env),
        )
        argv = spec.on_refresh if hook == "on_refresh" else spec.on_failure
        result = await run_hook(argv, env=env, timeout=spec.hook_timeout, name=str(spec.name))
        self._metrics.hook_finished(spec.name, hook, result)


def _write(spec: TokenSpec, record: TokenRecord | None) -> _Written:
    """Make ``spec``'s files match ``record`` (in the calling thread): its token, or none."""
    try:
        if record is not None and record.token is not None and record.expires_at is not None:
            paths = write_outputs(spec.outputs, record.token, expires_at=record.expires_at)
            if paths:
                log.debug("outputs_written", token=str(spec.name), paths=[str(p) for p in paths])
            return _Written(tuple(paths), None)
        if record is not None:  # revoked: no file may keep a dead token
            remove_outputs(spec.outputs)
    except OutputError as error:
        return _Written((), str(error))
    return _Written((), None)
