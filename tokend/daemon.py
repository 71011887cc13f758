"""The daemon's lifecycle: load, heal outputs, schedule, refresh, reload, stop.

Signal handlers only set flags and wake the main loop (as uvicorn does); all
work happens in the loop. One scheduler heap holds every token, so idle costs
one wake-up a minute, whatever the number of tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Mapping
from pathlib import Path

import httpx
import structlog
from tokend.config import load_config
from tokend.schedule import Scheduler, due_at

from tokend.clock import Clock, SystemClock
from tokend.errors import ConfigError
from tokend.lock import StateDirLock
from tokend.log import SecretMasker
from tokend.model import Config, TokenName, TokenSpec
from tokend.refresher import RefreshedCallback, Refresher
from tokend.state import SqliteStateStore, StateStore, TokenRecord

log = structlog.get_logger(__name__)

# Wake at least this often and compare wall-clock times, so a suspend/resume
# or a clock jump cannot make a token lapse.
MAX_SLEEP = 60.0
SHUTDOWN_GRACE = 10.0
# After an unexpected error in one token's work, try it again this much later.
CRASH_RETRY = 30.0
BUSY_RETRY = 5.0


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
    ) -> None:
        self._config_path = config_path
        self._masker = masker
        self._clock = clock or SystemClock()
        self._environ = dict(os.environ if environ is None else environ)
        self._on_refreshed = on_refreshed
        self._config: Config | None = None
        self._scheduler = Scheduler()
        self._inflight: dict[TokenName, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._reload_requested = False
        self._rescan_requested = False
        self._signals = 0

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the process exit status."""
        config = load_config(self._config_path, environ=self._environ)
        for warning in config.warnings:
            log.warning("config_warning", message=warning)
        with StateDirLock(config.state_dir) as _lock:
            store = SqliteStateStore(config.state_dir)
            try:
                async with httpx.AsyncClient() as http:
                    return await self._serve(config, store, http)
            finally:
                store.close()

    async def _serve(self, config: Config, store: StateStore, http: httpx.AsyncClient) -> int:
        self._store = store
        self._refresher = Refresher(
            store=store,
            http=http,
            clock=self._clock,
            masker=self._masker,
            owner=f"{socket.gethostname()}:{os.getpid()}",
            hook_base_env=self._environ,
            on_refreshed=self._on_refreshed,
        )
        self._install_signal_handlers()
        await self._apply(config)
        log.info("daemon_started", tokens=len(config.tokens), config=str(self._config_path))
        while not self._stopping:
            self._wake.clear()
            if self._reload_requested:
                self._reload_requested = False
                await self._reload()
            if self._rescan_requested:
                self._rescan_requested = False
                await self._rescan()
            for name in self._scheduler.due(self._clock.now()):
                self._start_refresh(name)
            await self._sleep()
        return await self._shutdown()

    async def _sleep(self) -> None:
        next_at = self._scheduler.next_at()
        timeout = MAX_SLEEP
        if next_at is not None:
            timeout = min(MAX_SLEEP, max(0.0, next_at - self._clock.now()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        loop.add_signal_handler(signal.SIGUSR1, self._request_rescan)

    def request_stop(self) -> None:
        """Stop scheduling, let in-flight refreshes commit, then return from ``run``."""
        self._stopping = True
        self._wake.set()

    def _on_stop_signal(self) -> None:
        self._signals += 1
        if self._signals > 1:
            # A second Ctrl-C means "now": the store is consistent at every commit.
            os._exit(1)
        self.request_stop()

    def _request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def _request_rescan(self) -> None:
        self._rescan_requested = True
        self._wake.set()

    async def _reload(self) -> None:
        try:
            config = await asyncio.to_thread(
                load_config, self._config_path, environ=self._environ
            )
        except ConfigError as error:
            log.error("config_reload_failed", error=str(error))
            return
        await self._apply(config)

    async def _apply(self, new: Config) -> None:
        """Move from the current config to ``new``, touching only what changed."""
        old = self._config
        old_specs = {spec.name: spec for spec in old.tokens} if old else {}
        new_specs = {spec.name: spec for spec in new.tokens}
        for application in new.applications.values():
            self._masker.add(application.client_secret.reveal())
        self._config = new
        self._global_slots = asyncio.Semaphore(new.concurrency)
        self._app_slots = {
            name: asyncio.Semaphore(app.concurrency) for name, app in new.applications.items()
        }
        removed = [name for name in old_specs if name not in new_specs]
        for name in removed:
            self._scheduler.cancel(name)
        changed = [
            spec for name, spec in new_specs.items()
            if name in old_specs and old_specs[name] != spec
        ]
        added = [spec for name, spec in new_specs.items() if name not in old_specs]
        records = {record.name: record for record in await asyncio.to_thread(self._store.all)}
        for spec in added + changed:
            record = records.get(spec.name)
            if record is not None and record.token is not None:
                self._masker.add(record.token.access_token, record.token.refresh_token)
                previous = old_specs.get(spec.name)
                if previous is None or previous.outputs != spec.outputs:
                    await self._refresher.publish(spec, record.token, run_hooks=False)
            self._reschedule(spec, record)
        if old is not None:
            log.info(
                "config_reloaded", added=len(added), removed=len(removed), changed=len(changed)
            )

    async def _rescan(self) -> None:
        """Pick up tokens another process (``tokend authorize``) stored."""
        assert self._config is not None  # noqa: S101 -- set before the loop starts
        records = {record.name: record for record in await asyncio.to_thread(self._store.all)}
        for spec in self._config.tokens:
            record = records.get(spec.name)
            if record is None or record.token is None or spec.name in self._inflight:
                continue
            due = due_at(record, spec)
            if due != self._scheduler.when(spec.name):
                self._masker.add(record.token.access_token, record.token.refresh_token)
                await self._refresher.publish(spec, record.token, run_hooks=False)
                self._reschedule(spec, record)

    def _reschedule(self, spec: TokenSpec, record: TokenRecord | None) -> None:
        due = due_at(record, spec)
        if due is None:
            self._scheduler.cancel(spec.name)
        else:
            self._scheduler.schedule(spec.name, due)

    def _start_refresh(self, name: TokenName) -> None:
        if name in self._inflight or self._config is None:
            return
        spec = self._config.token(name)
        if spec is None:
            return
        self._inflight[name] = asyncio.create_task(self._refresh(spec), name=str(name))

    async def _refresh(self, spec: TokenSpec) -> None:
        assert self._config is not None  # noqa: S101 -- set before the loop starts
        app = self._config.applications[spec.name.app]
        try:
            async with self._global_slots, self._app_slots[spec.name.app]:
                if self._stopping:
                    return
                outcome = await self._refresher.refresh(spec, app)
            current = self._config.token(spec.name)
            if current is None:
                return
            if outcome.result == "busy":
                # Another process holds the claim: look again once it is done.
                self._scheduler.schedule(spec.name, self._clock.now() + BUSY_RETRY)
            else:
                self._reschedule(current, outcome.record)
        except Exception as error:  # noqa: BLE001 -- one token's failure must never kill the daemon
            self._retry_later(spec, error)
        finally:
            self._inflight.pop(spec.name, None)
            self._wake.set()

    def _retry_later(self, spec: TokenSpec, error: BaseException) -> None:
        log.error(
            "refresh_crashed",
            token=str(spec.name),
            error_type=type(error).__name__,
            error=self._masker.mask(str(error)),
            retry_in=CRASH_RETRY,
        )
        self._scheduler.schedule(spec.name, self._clock.now() + CRASH_RETRY)

    async def _shutdown(self) -> int:
        log.info("daemon_stopping", in_flight=len(self._inflight))
        pending = list(self._inflight.values())
        if pending:
            _done, still = await asyncio.wait(pending, timeout=SHUTDOWN_GRACE)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=1.0)
        log.info("daemon_stopped")
        return 0
