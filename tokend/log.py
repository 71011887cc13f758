"""structlog setup: JSON lines for journald, a readable console on a terminal.

Secrets are kept out of log lines by construction (nothing logs a token), and
:class:`SecretMasker` is the second line of defence: it replaces any known
secret value that still slips into an event, wherever it appears.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

MASK = "**********"
# Secrets are long URL-safe strings; only words shaped like one are looked up,
# so masking costs one regex pass per string, however many secrets are known.
_CANDIDATE = re.compile(r"[A-Za-z0-9._~+/-]{8,}=*")
_SEPARATOR = re.compile(r"([/.])")
# The pieces of a candidate between its separators: a secret inside a path or dotted name.
_PIECE = re.compile(r"[A-Za-z0-9_~+-]+=*")
_MIN_SECRET_LENGTH = 8


class SecretMasker:
    """A structlog processor that masks every registered secret value."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._short: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *secrets: str) -> None:
        """Remember secrets to mask (empty strings are ignored)."""
        with self._lock:
            for secret in secrets:
                if len(secret) >= _MIN_SECRET_LENGTH:
                    self._secrets.add(secret)
                elif secret:
                    self._short.add(secret)

    def discard(self, *secrets: str) -> None:
        """Forget secrets that no longer exist (rotated tokens), so the set stays small."""
        with self._lock:
            for secret in secrets:
                self._secrets.discard(secret)
                self._short.discard(secret)

    def mask(self, text: str) -> str:
        """``text`` with every known secret replaced by ``**********``."""
        if not self._secrets and not self._short:
            return text
        for short in self._short:
            text = text.replace(short, MASK)
        # Most text holds no secret: two scans and two set lookups in C say so, without a
        # Python call per word (every log line of every refresh comes through here twice).
        if self._secrets.isdisjoint(_CANDIDATE.findall(text)) and self._secrets.isdisjoint(
            _PIECE.findall(text)
        ):
            return text
        return _CANDIDATE.sub(self._mask_word, text)

    def without_secrets(self, environ: Mapping[str, str]) -> dict[str, str]:
        """``environ`` minus every variable holding a known secret (``client_secret_env``),
        so a hook's environment never carries one."""
        return {key: value for key, value in environ.items() if self.mask(value) == value}

    def _mask_word(self, match: re.Match[str]) -> str:
        word = match.group(0)
        if word in self._secrets:
            return MASK
        # A secret inside a path or dotted name ("/run/x/SECRET.json"); most words hold
        # none, and the set answers that in one call.
        pieces = _SEPARATOR.split(word)
        if self._secrets.isdisjoint(pieces):
            return word
        return "".join(MASK if piece in self._secrets else piece for piece in pieces)

    def _mask_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {key: self._mask_value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._mask_value(item) for item in value)
        if isinstance(value, BaseException):
            return self.mask(repr(value))
        return value

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            event_dict[key] = self._mask_value(value)
        return event_dict


def _mask_rendered(masker: SecretMasker) -> structlog.typing.Processor:
    """Mask the final rendered line too: tracebacks are formatted late."""

    def processor(logger: Any, method_name: str, rendered: Any) -> Any:
        return masker.mask(rendered) if isinstance(rendered, str) else rendered

    return processor


def configure_logging(
    level: str = "info",
    *,
    masker: SecretMasker,
    stream: TextIO | None = None,
    json: bool | None = None,
) -> None:
    """Set up structlog for the whole process.

    ``json`` defaults to "stderr is not a terminal", which is what journald and
    log shippers want; people at a terminal get colours.
    """
    out = stream if stream is not None else sys.stderr
    use_json = not out.isatty() if json is None else json
    numeric_level = logging.getLevelNamesMapping().get(level.upper())
    if numeric_level is None:
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning or error")
    renderer: structlog.typing.Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    processors: Iterable[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        masker,
        structlog.processors.format_exc_info if use_json else _passthrough,
        renderer,
        _mask_rendered(masker),
    ]
    structlog.configure(
        processors=list(processors),
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def _passthrough(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return event_dict
