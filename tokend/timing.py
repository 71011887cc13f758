"""Time as the code sees it: clocks as a dependency, durations and rates as operators
write them, and the one UTC time format tokend prints.

The daemon takes a clock, so tests can use a fake one. Durations (``90s``, ``1h``) and
rates (``180/min``) are parsed here for the YAML and the command line alike.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Wall-clock seconds since the epoch (tokens expire in wall-clock time)."""

    def now(self) -> float: ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> float:
        return time.time()


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
            "h": 3600.0, "hour": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")


def parse_duration(value: str | float) -> float:
    """Return seconds for ``90s``, ``5m``, ``1h``, ``7d`` (a bare number is seconds).

    Raises ``ValueError`` with the accepted forms, so a config error can quote it.
    """
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is not None:
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError("must be a duration such as 90s, 5m, 1h or 7d")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def parse_positive_duration(value: str | float) -> float:
    """:func:`parse_duration`, refusing zero and infinity: for a wait or a lifetime."""
    seconds = parse_duration(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def parse_rate(value: str) -> float:
    """Return events per second for ``180/min``, ``50/s``, ``1000/hour``."""
    match = _RATE.match(value)
    if match is None or match.group(2) not in _PERIODS:
        raise ValueError("must be a rate such as 180/min, 50/s or 1000/hour")
    per_second = float(match.group(1)) / _PERIODS[match.group(2)]
    if per_second <= 0:
        raise ValueError("must be greater than zero")
    return per_second


def format_duration(seconds: float) -> str:
    """Render seconds the way an operator reads them: ``59m``, ``6d 23h``, ``12s``."""
    sign = "-" if seconds < 0 else ""
    remaining = int(abs(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, remaining = divmod(remaining, size)
        if amount:
            parts.append(f"{amount}{unit}")
        if len(parts) == 2:
            break
    return sign + (" ".join(parts) or "0s")


def format_utc(epoch: float) -> str:
    """``2026-12-01T20:05:10Z``: the one time format of outputs, hooks and status."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
