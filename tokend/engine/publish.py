"""The one path by which a token reaches its consumers: outputs from the stored record, then hooks.

Start-up, reload, rescan, output retries, refreshes and ``tokend authorize`` all
publish through :meth:`Publisher.publish`, and only while holding the token's
lease, so what it writes is the record as it stands under that lease: no actor
can write a snapshot that another has already replaced. A revoked token's
outputs are removed, so nothing keeps using a dead token; so are the files of a
token the config no longer names (:meth:`Publisher.retire_many`) and a file an
output was moved away from. The store remembers which files each token was
written to, so this works after a restart too; a file another configured token
now writes is left to it.

Output health is recorded apart from token health (``output_error``): a
broken output never hides or overwrites what the server said about the
refresh token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import structlog

from tokend.engine.hooks import HookGroups, hook_environment, run_hook
from tokend.engine.metrics import Metrics
from tokend.engine.outputs import remove_outputs, write_outputs
from tokend.engine.workers import Workers
from tokend.errors import OutputError
from tokend.log import SecretMasker
from tokend.model import OutputSpec, TokenSpec
from tokend.store.interface import Lease, PublishedFiles, StateStore, TokenRecord

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
class Files:
    """What :func:`settle_files` did to one token's files."""

    rewritten: tuple[Path, ...]
    error: str | None
    held: tuple[str, ...]
    """The files that may hold the token now: what the store must remember."""


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
        self._in_use: frozenset[Path] | None = None
        self.hook_groups = HookGroups()

    def use_paths(self, in_use: Collection[Path]) -> None:
        """The output paths of every configured token: files a token was written to earlier
        are removed only when not among these. Until told, such files are left alone."""
        self._in_use = frozenset(in_use)

    async def publish(
        self, spec: TokenSpec, lease: Lease, *, record: TokenRecord | None = None,
        new_token: bool = False, release: bool = False,
    ) -> Published:
        """Publish ``spec``'s stored token (``record`` if the caller just read it under
        ``lease``); ``new_token`` when the token itself just changed; ``release`` ends the
        lease once the files are written (see :meth:`publish_many`)."""
        if record is None:
            record = await self._workers.store(self._store.get, spec.name)
        published = await self.publish_many([(spec, lease, record)], new_token=new_token,
                                            release=release)
        return published[0]

    async def publish_many(
        self,
        items: Sequence[tuple[TokenSpec, Lease, TokenRecord | None]],
        *,
        new_token: bool = False,
        release: bool = False,
    ) -> list[Published]:
        """:meth:`publish` for many tokens read under their leases, in one hop to the file pool.

        What the store must remember of the files (their health, where they are) is recorded
        in the same hop, still under the leases; with ``release`` the leases end there too,
        whatever happened (a caller that sees this fail may release again: a second release
        changes nothing). The file pool may call the store, never the reverse, so a hung
        mount still holds up no commit.
        """
        for _spec, _lease, record in items:
            if record is not None and record.token is not None:
                self._masker.add(record.token.access_token, record.token.refresh_token)
        return await self._workers.files(self.settle_many, items, new_token=new_token,
                                         release=release)

    def settle_many(
        self,
        items: Sequence[tuple[TokenSpec, Lease, TokenRecord | None]],
        *,
        new_token: bool = False,
        release: bool = False,
    ) -> list[Published]:
        """The file work of :meth:`publish_many`, in the calling (file) thread; the caller
        has told the masker of every token in ``items``."""
        try:
            results = [settle_files(spec.outputs, record, in_use=self._in_use,
                                    name=str(spec.name), new_token=new_token)
                       for spec, _lease, record in items]
            records = self._record([(lease, record) for _spec, lease, record in items], results,
                                   unconfigured_at=lambda _record: None)
        finally:
            if release:
                self._store.release_many([lease for _spec, lease, _record in items])
        published = []
        for record, files in zip(records, results, strict=True):
            ok = files.error is None
            has_token = record is not None and record.token is not None
            announce = ok and has_token and (new_token or bool(files.rewritten))
            published.append(Published(record, ok, announce))
        return published

    async def retire_many(
        self, items: Sequence[tuple[Lease, TokenRecord | None]], *, now: float
    ) -> list[tuple[TokenRecord | None, bool]]:
        """Take tokens the config no longer names out of circulation, under their leases.

        Every file they were written to is removed (unless another configured token
        writes it now) and a stored token is marked unconfigured: kept, so putting it
        back in the config needs no new authorization, but no longer handed out.
        Returns each record afterwards and whether it was marked just now.
        """
        in_use = self._in_use or frozenset()

        def since(record: TokenRecord) -> float | None:
            if record.unconfigured_at is None and record.token is not None:
                return now
            return record.unconfigured_at

        def settle() -> list[TokenRecord | None]:
            results = [settle_files((), record, in_use=in_use,
                                    name="" if record is None else str(record.name))
                       for _lease, record in items]
            return self._record(items, results, unconfigured_at=since)

        records = await self._workers.files(settle)
        return [
            (after, before is not None and after is not None
             and before.unconfigured_at is None and after.unconfigured_at is not None)
            for (_lease, before), after in zip(items, records, strict=True)
        ]

    def _record(
        self,
        items: Sequence[tuple[Lease, TokenRecord | None]],
        results: Sequence[Files],
        *,
        unconfigured_at: Callable[[TokenRecord], float | None],
    ) -> list[TokenRecord | None]:
        """Store what changed (output health, files held, configured or not), in the calling
        thread and under the leases; return the records as they now stand."""
        health: list[tuple[Lease, str | None]] = []
        placed: list[PublishedFiles] = []
        records: list[TokenRecord | None] = []
        for (lease, stored), files in zip(items, results, strict=True):
            if stored is None:
                records.append(None)
                continue
            since = unconfigured_at(stored)
            if files.error != stored.output_error:
                health.append((lease, files.error))
                self._log_health(str(stored.name), files.error)
            if files.held != stored.outputs or since != stored.unconfigured_at:
                placed.append(PublishedFiles(lease, files.held, since))
            records.append(dataclasses.replace(stored, output_error=files.error,
                                               outputs=files.held, unconfigured_at=since))
        for lease, error in health:
            self._store.set_output_problem(lease, error=error)
        if placed:
            self._store.record_published(placed)
        return records

    @staticmethod
    def _log_health(name: str, error: str | None) -> None:
        if error is None:
            log.info("outputs_recovered", token=name)
        else:
            log.error("outputs_failed", token=name, error=error)

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
        result = await run_hook(argv, env=env, timeout=spec.hook_timeout, name=str(spec.name),
                                groups=self.hook_groups)
        self._metrics.hook_finished(spec.name, hook, result)


def settle_files(
    outputs: Sequence[OutputSpec],
    record: TokenRecord | None,
    *,
    in_use: Collection[Path] | None,
    name: str,
    new_token: bool = False,
) -> Files:
    """Make a token's files match ``record`` (in the calling thread).

    ``outputs`` get its token (``new_token``: one just issued, see
    :func:`write_outputs`), or are removed when it has none (revoked). Files
    it was written to before that ``outputs`` no longer name are removed, except
    those another configured token writes now (``in_use``); with ``in_use``
    ``None`` (a caller that does not know the whole config) they are kept, and
    stay remembered for the daemon. A record never stored has no files.
    """
    if record is None:
        return Files((), None, ())
    wanted = tuple(str(output.path) for output in outputs)
    errors: list[str] = []
    rewritten: list[Path] = []
    has_token = record.has_token
    try:
        if record.token is not None and record.has_token:
            rewritten = write_outputs(outputs, record.token, name=record.name,
                                      expires_at=record.expires_at, new_token=new_token)
            if rewritten:
                log.debug("outputs_written", token=name, paths=[str(p) for p in rewritten])
        else:  # revoked: no file may keep a dead token
            remove_outputs(outputs)
    except OutputError as error:
        errors.append(str(error))
    held = set(wanted) if has_token or errors else set()
    stale = [path for path in record.outputs if path not in wanted]
    if in_use is None:
        held.update(stale)
    elif removable := [path for path in stale if Path(path) not in in_use]:
        try:
            remove_outputs(OutputSpec(Path(path)) for path in removable)
            log.info("old_outputs_removed", token=name, paths=removable)
        except OutputError as error:
            errors.append(str(error))
            held.update(removable)
    return Files(tuple(rewritten), "; ".join(errors) or None, tuple(sorted(held)))
