"""The daemon's lifecycle: load, lock, heal outputs, loop, reload, stop.

Signal handlers only set flags and wake the main loop (:mod:`wakeups`); all
work happens in the loop. Idle, the loop sleeps until the next token is due,
but at most a minute, and compares wall-clock times on waking, so a suspend
or a clock jump cannot make a token lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import httpx
import structlog

from tokend.config.exposure import config_exposure
from tokend.config.load import load_config
from tokend.daemon.emergency import exit_now
from tokend.daemon.metrics_http import MetricsServer, move_metrics
from tokend.daemon.state_dir import open_state
from tokend.daemon.status_file import DaemonStatus, write_running_status
from tokend.daemon.systemd import Notifier
from tokend.daemon.wakeups import DueTimer, Wakeups
from tokend.daemon.watch import watch_config
from tokend.daemon.watchdog import watchdog
from tokend.engine.attention import CREDENTIALS_RECHECK
from tokend.engine.hooks import HookGroups
from tokend.engine.landing import RefreshedCallback
from tokend.engine.metrics import Metrics
from tokend.engine.pending import PendingCommits
from tokend.engine.refresher import Refresher
from tokend.engine.supervisor import Supervisor
from tokend.engine.workers import Workers
from tokend.errors import ConfigError, StateError, TokendError
from tokend.log import SecretMasker
from tokend.model import Config, StoreSpec, TokenName
from tokend.oauth.deadline import deadline_client
from tokend.store.interface import StateStore
from tokend.store.lock import owner_id
from tokend.timing import Clock, SystemClock

log = structlog.get_logger(__name__)

MAX_SLEEP = 60.0
SHUTDOWN_GRACE = 10.0
RESCAN_RETRY = 1.0


class Daemon:
    """Keeps every configured token fresh until told to stop."""

    def __init__(
        self,
        config_path: Path,
        *,
        masker: SecretMasker,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        on_refreshed: RefreshedCallback | None = None,
        watch: bool = True,
        credentials_recheck: float = CREDENTIALS_RECHECK,
    ) -> None:
        self._config_path = config_path
        self._masker = masker
        self._clock = clock or SystemClock()
        self._environ = dict(os.environ if environ is None else environ)
        self._on_refreshed = on_refreshed
        self._watch = watch
        self._notifier = Notifier(self._environ)
        self._wakeups = Wakeups(on_second_stop=self._exit_now)
        self._status_line = ""
        self._workers = Workers()
        self._hooks: HookGroups | None = None
        self._metrics = Metrics(clock=self._clock)
        self._metrics_server: MetricsServer | None = None
        self._credentials_recheck = credentials_recheck
        # When to re-read rejected credentials next (monotonic); None while none are rejected.
        self._recheck_at: float | None = None
        self._due: DueTimer | None = None

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the process exit status."""
        config = self._read_config(None)
        self._metrics.config_loaded()
        self._warn(config)
        self._state_dir = config.state_dir
        self._wakeups.install_signal_handlers()
        with contextlib.ExitStack() as stack:
            stack.callback(self._workers.close)
            store = await open_state(self._state_dir, stack, on_ring=self._wakeups.ring,
                                     notifier=self._notifier, stop=self._wakeups.stopping,
                                     shared=config.store)
            if store is None:
                return 0
            blocking_http = deadline_client()
            if blocking_http is not None:
                stack.callback(blocking_http.close)
            async with httpx.AsyncClient() as http:
                return await self._serve(config, store, http, blocking_http)

    def request_stop(self) -> None:
        """Stop scheduling, let in-flight refreshes commit, then return from ``run``."""
        self._wakeups.request_stop()

    async def _serve(self, config: Config, store: StateStore, http: httpx.AsyncClient,
                     blocking_http: httpx.Client | None) -> int:
        refresher = Refresher(
            store=store,
            http=http,
            blocking_http=blocking_http,
            clock=self._clock,
            masker=self._masker,
            owner=owner_id(),
            hook_base_env=self._environ,
            on_refreshed=self._on_refreshed,
            metrics=self._metrics,
            workers=self._workers,
            pending=PendingCommits(self._state_dir),
        )
        self._store = store
        self._hooks = refresher.publisher.hook_groups
        self._supervisor = Supervisor(
            store=store, refresher=refresher, clock=self._clock, masker=self._masker,
            on_settled=self._settled, metrics=self._metrics,
        )
        self._metrics_server = await move_metrics(self._metrics_server, self._metrics,
                                                  config.metrics)
        try:
            return await self._run_supervisor(config)
        finally:
            if self._metrics_server is not None:
                await self._metrics_server.close()

    async def _run_supervisor(self, config: Config) -> int:
        self._status = DaemonStatus(
            pid=os.getpid(), started_at=self._clock.now(), config=str(self._config_path),
        )
        # Before the outputs: the file's transient peak then passes before every token's
        # record is held, instead of adding to them.
        await asyncio.to_thread(
            write_running_status, self._state_dir, self._status, config.tokens)
        await self._supervisor.apply(config)
        background = [
            asyncio.create_task(watchdog(self._notifier, self._workers, self._store))
        ]
        if self._watch:
            background.append(
                asyncio.create_task(watch_config(self._config_path, self._on_file_change))
            )
        if config.store is not None:
            background.append(asyncio.create_task(self._listen(config.store)))
        self._metrics.mark_ready()
        self._notifier.ready(self._supervisor.status_line())
        log.info("daemon_started", tokens=len(config.tokens), config=str(self._config_path))
        due = self._due = DueTimer(next_at=self._supervisor.next_at, start_due=self._start_due,
                                   now=self._clock.now)
        try:
            await self._loop(due)
        finally:
            due.close()
            self._notifier.stopping()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        log.info("daemon_stopping", in_flight=self._supervisor.in_flight)
        cancelled = await self._supervisor.drain(SHUTDOWN_GRACE)
        log.info("daemon_stopped", cancelled=cancelled)
        return 0

    async def _loop(self, due: DueTimer) -> None:
        while not self._wakeups.stopping.is_set():
            self._wakeups.begin_pass()
            if (heal := self._wakeups.take_reload()) is not None:
                await self._reload(heal=heal)
            await self._recheck_credentials()
            rescan, names = self._wakeups.take_rescan()
            if rescan:
                await self._rescan(names)
            self._start_due()
            due.arm()
            await self._sleep()

    async def _rescan(self, names: set[TokenName] | None) -> None:
        """Publish what another process changed; when the store cannot be read (a shared
        database away for a moment), look again shortly instead of stopping the daemon."""
        try:
            await self._supervisor.rescan(names)
        except StateError as error:
            log.warning("rescan_postponed", error=str(error), retry_in=RESCAN_RETRY)
            again = None if names is None else frozenset(str(name) for name in names)
            asyncio.get_running_loop().call_later(RESCAN_RETRY, self._wakeups.ring, again)

    async def _sleep(self) -> None:
        """Until woken (due work is started by its timer), or until credentials are to be
        re-read, at most ``MAX_SLEEP``."""
        timeout = MAX_SLEEP
        if self._recheck_at is not None:
            timeout = min(timeout, max(0.0, self._recheck_at - time.monotonic()))
        await self._wakeups.sleep(timeout)

    def _start_due(self) -> None:
        """Start what is due, and tell systemd when the counts of the status line changed."""
        self._supervisor.start_due()
        if (line := self._supervisor.status_line()) != self._status_line:
            self._status_line = line
            self._notifier.status(line)

    def _settled(self) -> None:
        """Work ended: set the due timer again, and wake the loop when the counts changed
        (a new status line; rejected credentials are to be re-read now and then).

        A refresh moves its token's due time later and leaves the counts as they were,
        so most of the time the loop sleeps on.
        """
        if self._due is None:  # the loop does not run yet: start-up awaits its own work
            return
        self._due.arm()
        if self._supervisor.status_line() != self._status_line:
            self._wakeups.wake()

    async def _listen(self, shared: StoreSpec) -> None:
        from tokend.daemon.listener import follow  # noqa: PLC0415 -- psycopg: only here

        await follow(shared, tokens=lambda: self._supervisor.config, on_ring=self._wakeups.ring,
                     on_back=self._store_back, metrics=self._metrics, notifier=self._notifier,
                     stop=self._wakeups.stopping)

    def _store_back(self) -> None:
        self._supervisor.store_back()
        self._wakeups.wake()

    async def _on_file_change(self) -> None:
        self._wakeups.request_reload()

    def _exit_now(self) -> None:
        """A second Ctrl-C: take the running hooks along and leave no temporary file."""
        supervisor = getattr(self, "_supervisor", None)  # none before the store opens
        exit_now(self._hooks, None if supervisor is None else supervisor.config)

    async def _recheck_credentials(self) -> None:
        """While an application's credentials are rejected, re-read the config now and then
        and reload when they changed: a fixed secret file then needs no reload by hand.

        Quiet otherwise: a config that does not load is reported by the reload its edit
        causes, not once a minute from here.
        """
        rejected = self._supervisor.rejected_applications()
        now = time.monotonic()
        if not rejected:
            self._recheck_at = None
            return
        if self._recheck_at is None:
            self._recheck_at = now + self._credentials_recheck
        if now < self._recheck_at:
            return
        self._recheck_at = now + self._credentials_recheck
        current = self._supervisor.config
        assert current is not None  # noqa: S101 -- applied before the loop starts
        try:
            config = await asyncio.to_thread(self._read_config, current)
        except ConfigError:
            return
        changed = sorted(app for app in rejected
                         if config.applications.get(app) != current.applications.get(app))
        if changed:
            log.info("credentials_changed", applications=changed)
            await self._reload(config)

    def _read_config(self, previous: Config | None) -> Config:
        """Load the config file; ``previous``, the config running, lets the loader keep the
        specs of the tokens whose text did not change, so a reload validates only the rest."""
        return load_config(self._config_path, environ=self._environ, previous=previous)

    async def _reload(self, config: Config | None = None, *, heal: bool = False) -> None:
        """Load the config (unless given, freshly loaded) and move to it; with ``heal``,
        publish every token's outputs, not only those of the tokens that changed."""
        self._notifier.reloading()
        if config is None:
            try:
                config = await asyncio.to_thread(self._read_config, self._supervisor.config)
            except ConfigError as error:
                await self._reload_failed(str(error))
                return
        if config.state_dir != self._state_dir:
            await self._reload_failed(
                f"state_dir changed to {config.state_dir}; restart tokend to move the state"
            )
            return
        self._warn(config)
        added, removed, changed = await self._supervisor.apply(config, heal=heal)
        log.info("config_reloaded", added=added, removed=removed, changed=changed)
        self._metrics.reload_finished(ok=True)
        self._metrics_server = await move_metrics(self._metrics_server, self._metrics,
                                                  config.metrics)
        await self._record_reload(None)
        self._notifier.ready(self._supervisor.status_line())

    async def _reload_failed(self, error: str) -> None:
        """Keep running on the last good config, and say so everywhere an operator looks."""
        log.error("config_reload_failed", error=error)
        self._metrics.reload_finished(ok=False)
        await self._record_reload(error)
        first_line = error.splitlines()[0] if error else error
        self._notifier.ready(f"reload failed, running the last good config: {first_line}")

    async def _record_reload(self, error: str | None) -> None:
        self._status = replace(
            self._status,
            last_reload_at=self._clock.now(),
            last_reload_ok=error is None,
            last_reload_error=error,
        )
        config = self._supervisor.config
        assert config is not None  # noqa: S101 -- applied before the loop starts
        try:
            await asyncio.to_thread(
                write_running_status, self._state_dir, self._status, config.tokens)
        except TokendError as failure:
            log.error("daemon_status_write_failed", error=str(failure))

    @staticmethod
    def _warn(config: Config) -> None:
        # Its hooks run with our rights: whoever else may write the config may run code as us.
        for warning in (*config.warnings, *config_exposure(config.source)):
            log.warning("config_warning", message=warning)
