"""What the daemon tells Prometheus: token health, refresh and hook outcomes, reloads.

Each daemon owns a :class:`Metrics` with its own ``CollectorRegistry`` (never
prometheus-client's global one), so tests and several daemons in one process
never share a counter. The refresher, supervisor and daemon report events to it;
:mod:`tokend.daemon.metrics_http` serves it.

Token state and expiry are not stored in gauges but computed at scrape time from
the last record seen, because ``expired`` is reached by the clock alone, with no
event to report it. Nothing secret is ever a label: tokens are labelled by their
``APP/USER/SCOPE`` name, which is in every log line already.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from tokend.engine.hooks import HookResult
from tokend.model import TokenName, TokenSpec
from tokend.store.interface import EXPIRED, StateFacts, TokenRecord, TokenState
from tokend.timing import Clock, SystemClock

TOKEN_STATES = (*(state.value for state in TokenState), EXPIRED)
"""Every state a token can show, as ``tokend status`` names them."""
REFRESH_RESULTS = ("ok", "transient_error", "permanent_error", "superseded")
HOOKS = ("on_refresh", "on_failure")
HOOK_RESULTS = ("ok", "failed", "timeout", "not_started")
RELOAD_RESULTS = ("ok", "error")
# Refreshes are one HTTP round trip plus an fsync; the tail reaches the 30 s default timeout.
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def hook_result(result: HookResult) -> str:
    """One of :data:`HOOK_RESULTS`: a small fixed set, so the label never grows."""
    if result.error is not None:
        return "not_started"
    if result.timed_out:
        return "timeout"
    return "ok" if result.ok else "failed"


@dataclass(frozen=True)
class TokenHealth:
    """One configured token as ``/healthz`` lists it."""

    name: str
    state: str


class Metrics:
    """The daemon's metrics, and the token states ``/healthz`` answers from."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
        process: bool = True,
    ) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self._clock = clock or SystemClock()
        self._tokens: dict[TokenName, StateFacts] = {}
        self._ready = False
        self.version = 0
        """Bumped by every event, so a cached rendering knows when it is out of date."""
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.registry.register(_TokenCollector(self._tokens, self._clock))
        self._refreshes = _RefreshCounts()
        self.registry.register(self._refreshes)
        self._duration = Histogram(
            "tokend_refresh_duration_seconds",
            "Time from sending a refresh request to its answer (and, on success, the commit).",
            buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self._hooks = Counter(
            "tokend_hook_runs", "on_refresh / on_failure command runs, by result.",
            ["token", "hook", "result"], registry=self.registry,
        )
        self._rate_wait = Counter(
            "tokend_rate_limit_wait_seconds", "Time refreshes waited for a rate-limit slot.",
            ["application"], registry=self.registry,
        )
        self._rate_waits: dict[str, Counter] = {}
        self._reloads = Counter(
            "tokend_config_reload", "Config reloads, by result.", ["result"],
            registry=self.registry,
        )
        self._last_reload_ok = Gauge(
            "tokend_config_last_reload_successful",
            "1 when the last config load or reload succeeded, 0 when it failed.",
            registry=self.registry,
        )
        self._last_success = Gauge(
            "tokend_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded or reloaded successfully.",
            registry=self.registry,
        )
        for result in RELOAD_RESULTS:
            self._reloads.labels(result)
        self._store_up = Gauge(
            "tokend_store_up",
            "1 while the state store answers, 0 while it cannot be reached (a shared "
            "PostgreSQL store: no refreshes then, outputs are left as they are).",
            registry=self.registry,
        )
        self._store_up.set(1)
        self.store_reachable = True

    @property
    def ready(self) -> bool:
        """Whether the first config is loaded and its outputs written."""
        return self._ready

    def mark_ready(self) -> None:
        self._ready = True

    def store_changed(self, *, reachable: bool) -> None:
        """The shared store came back, or could not be reached."""
        self.store_reachable = reachable
        self._store_up.set(1 if reachable else 0)
        self.version += 1

    def observe_token(self, spec: TokenSpec, record: TokenRecord | None) -> None:
        """Remember ``record`` as the current state of ``spec``'s token."""
        if spec.name not in self._tokens:
            # Zero-valued series from the start, so rate() and increase() see the first event.
            self._refreshes.add(spec.name)
        self._tokens[spec.name] = StateFacts.of(record, spec.refresh_token_lifetime)
        self.version += 1

    def forget_token(self, name: TokenName) -> None:
        """Drop every series of a token that is no longer configured."""
        self._tokens.pop(name, None)
        self.version += 1
        self._refreshes.remove(name)
        label = str(name)
        for hook in HOOKS:
            for result in HOOK_RESULTS:
                # remove() of a label set never created is a KeyError in older prometheus-client.
                with contextlib.suppress(KeyError):
                    self._hooks.remove(label, hook, result)

    def refresh_finished(self, name: TokenName, result: str, seconds: float) -> None:
        """Count one answered (or failed) refresh request and how long it took.

        Only configured tokens are counted: a token a reload removed while its
        refresh was in flight must not bring its series back.
        """
        self._duration.observe(seconds)
        self.version += 1
        if name in self._tokens:
            self._refreshes.inc(name, result)

    def hook_finished(self, name: TokenName, hook: str, result: HookResult) -> None:
        self.version += 1
        if name in self._tokens:
            self._hooks.labels(str(name), hook, hook_result(result)).inc()

    def rate_limit_waited(self, application: str, seconds: float) -> None:
        """Add a refresh's wait for its rate-limit slot (most wait nothing: no new event)."""
        series = self._rate_waits.get(application)
        if series is None:
            series = self._rate_waits[application] = self._rate_wait.labels(application)
            self.version += 1
        if seconds > 0:
            series.inc(seconds)
            self.version += 1

    def config_loaded(self) -> None:
        """The first config loaded: a success, though not a reload."""
        self._last_reload_ok.set(1)
        self._last_success.set(self._clock.now())
        self.version += 1

    def reload_finished(self, *, ok: bool) -> None:
        self.version += 1
        self._reloads.labels("ok" if ok else "error").inc()
        self._last_reload_ok.set(1 if ok else 0)
        if ok:
            self._last_success.set(self._clock.now())

    def tokens(self) -> list[TokenHealth]:
        """Every configured token and its state now, in name order."""
        now = self._clock.now()
        return [
            TokenHealth(str(name), seen.shown(now))
            for name, seen in sorted(self._tokens.items())
        ]

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in the format ``accept`` asks for (Prometheus text by default)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _TokenCollector:
    """Computes the token gauges at scrape time (see the module docstring)."""

    def __init__(self, tokens: dict[TokenName, StateFacts], clock: Clock) -> None:
        self._tokens = tokens
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        return self._families(samples=True)

    def describe(self) -> Iterable[Metric]:
        return self._families(samples=False)

    def _families(self, *, samples: bool) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "tokend_token_expiry_timestamp_seconds",
            "When the stored access token expires.", labels=["token"],
        )
        refresh_expiry = GaugeMetricFamily(
            "tokend_refresh_token_expiry_timestamp_seconds",
            "When the stored refresh token expires unless used (refresh_token_lifetime).",
            labels=["token"],
        )
        state = GaugeMetricFamily(
            "tokend_token_state", "1 for the token's current state, 0 for the others.",
            labels=["token", "state"],
        )
        now = self._clock.now()
        # Scrapes run in a worker thread while the loop may add or drop tokens: copy()
        # is one step under the GIL, iterating the live dict is not.
        tokens = self._tokens.copy() if samples else {}
        for name, seen in sorted(tokens.items()):
            label = str(name)
            if seen.expires_at is not None:
                expiry.add_metric([label], seen.expires_at)
            if seen.refresh_expires_at is not None:
                refresh_expiry.add_metric([label], seen.refresh_expires_at)
            current = seen.shown(now)
            for value in TOKEN_STATES:
                state.add_metric([label, value], 1.0 if value == current else 0.0)
        yield from (expiry, refresh_expiry, state)


class _RefreshCounts:
    """The ``tokend_refresh`` counter: each configured token's refreshes, by result.

    A prometheus-client ``Counter`` child per token and result held about 2 KB a
    token (a fifth of the daemon's memory per token); here a token holds one
    list of counts and when its series began, and labels are made at scrape time.
    """

    def __init__(self) -> None:
        self._counts: dict[TokenName, tuple[float, list[float]]] = {}

    def add(self, name: TokenName) -> None:
        """Start ``name``'s series at zero."""
        self._counts.setdefault(name, (time.time(), [0.0] * len(REFRESH_RESULTS)))

    def remove(self, name: TokenName) -> None:
        self._counts.pop(name, None)

    def inc(self, name: TokenName, result: str) -> None:
        """Count one refresh of ``name`` (one of :data:`REFRESH_RESULTS`), if it has series."""
        if (entry := self._counts.get(name)) is not None:
            entry[1][REFRESH_RESULTS.index(result)] += 1.0

    def collect(self) -> Iterable[Metric]:
        return self._family(samples=True)

    def describe(self) -> Iterable[Metric]:
        return self._family(samples=False)

    def _family(self, *, samples: bool) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "tokend_refresh", "Refresh attempts that reached the token endpoint, by result.",
            labels=["token", "result"],
        )
        # A scrape runs in a worker thread while the loop adds and drops tokens (see below).
        for name, (created, counts) in (self._counts.copy() if samples else {}).items():
            label = str(name)
            for result, value in zip(REFRESH_RESULTS, counts, strict=True):
                family.add_metric([label, result], value, created=created)
        yield family
