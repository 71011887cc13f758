"""structlog setup: JSON lines for journald, a readable console on a terminal.

Secrets are kept out of log lines by construction (nothing logs a token), and
:class:`SecretMasker` is the second line of defence: it replaces any known
secret value that still slips into an event, wherever it appears. A rotated
token is still valid until it expires, so it stays known until then. Text tokend
does not write itself (a hook's output) also loses every token-shaped word
(:func:`mask_token_shaped`): a hook may print a token tokend never saw.
"""

from __future__ import annotations

import heapq
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
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
# Printable ASCII but a quote or backslash: what JSON and the console write unchanged.
_RENDERED_AS_IS = re.compile(r'[ !#-\[\]-~]*')
# Replaced tokens kept until the old access token expires: two per token at most at the
# default refresh_at (that is before the next rotation), so 20,000 for 10,000 tokens.
# Past the cap, those closest to their expiry go first.
MAX_RETIRED = 100_000
# A word that may be a token: 20 or more characters of the base64url alphabet that mix
# at least two of lower case, upper case and digits. Random tokens always do; words,
# identifiers and paths (cut at "/" and ".") rarely reach the length without being one case.
_TOKEN_SHAPED = re.compile(r"[A-Za-z0-9_-]{20,}=*")
_CLASSES = (re.compile("[a-z]"), re.compile("[A-Z]"), re.compile("[0-9]"))


def mask_token_shaped(text: str) -> str:
    """``text`` with every token-shaped word masked, for output tokend did not write."""
    return _TOKEN_SHAPED.sub(_mask_if_token, text)


def _mask_if_token(match: re.Match[str]) -> str:
    word = match.group(0)
    return MASK if sum(1 for c in _CLASSES if c.search(word)) >= 2 else word


class SecretMasker:
    """Every registered secret value, masked in text, in log events and in environments."""

    def __init__(self, *, now: Callable[[], float] = time.time,
                 max_retired: int = MAX_RETIRED) -> None:
        self._secrets: set[str] = set()
        # Found by plain replacement: short secrets, and those no candidate word can hold
        # (a quote, a space, a non-ASCII letter in a client secret).
        self._literal: set[str] = set()
        self._lock = threading.Lock()
        self._now = now
        self._max_retired = max_retired
        self._retired: dict[str, float] = {}  # secret -> when it expires and is forgotten
        self._expiries: list[tuple[float, str]] = []  # heap; entries not in _retired are stale

    def add(self, *secrets: str) -> None:
        """Remember secrets to mask (empty strings are ignored), until they are retired."""
        with self._lock:
            for secret in secrets:
                self._retired.pop(secret, None)
                self._remember(secret)

    def retire(self, *secrets: str, until: float) -> None:
        """Keep masking secrets that were replaced (rotated tokens) until ``until``, when they
        expire, then forget them, so the set stays bounded."""
        with self._lock:
            for secret in secrets:
                if not self._remember(secret):
                    continue
                self._retired[secret] = until
                heapq.heappush(self._expiries, (until, secret))
            self._forget_expired()

    def mask(self, text: str) -> str:
        """``text`` with every known secret replaced by ``**********``."""
        if self._retired:
            with self._lock:
                if self._expiries and self._expiries[0][0] <= self._now():
                    self._forget_expired()
        if not self._secrets and not self._literal:
            return text
        for literal in self._literal:
            text = text.replace(literal, MASK)
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

    def _remember(self, secret: str) -> bool:
        if len(secret) >= _MIN_SECRET_LENGTH and _CANDIDATE.fullmatch(secret):
            self._secrets.add(secret)
        elif secret:
            self._literal.add(secret)
        return bool(secret)

    def _forget_expired(self) -> None:
        """Drop retired secrets past their expiry, and the soonest to expire past the cap."""
        now = self._now()
        while self._expiries and (self._expiries[0][0] <= now
                                  or len(self._retired) > self._max_retired):
            until, secret = heapq.heappop(self._expiries)
            if self._retired.get(secret) == until:
                del self._retired[secret]
                self._secrets.discard(secret)
                self._literal.discard(secret)
        if len(self._expiries) > 2 * max(len(self._retired), 1024):
            # Stale entries (retired again, or added back) would pile up otherwise.
            self._expiries = [(until, s) for s, until in self._retired.items()]
            heapq.heapify(self._expiries)

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

    def mask_escaped_values(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """The structlog processor of a pipeline whose rendered line is masked as well (the
        one :func:`configure_logging` sets up): a string the renderer writes as it is appears
        in that line and is masked there, so only the values a renderer may change (quotes,
        backslashes, control or non-ASCII characters; anything not a string) are masked
        here, where a secret is still whole."""
        for key, value in event_dict.items():
            if not (isinstance(value, str) and _RENDERED_AS_IS.fullmatch(value)):
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
    writer = structlog.WriteLogger(out)
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
        masker.mask_escaped_values,  # before the level and time are added: no secret there
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info if use_json else _passthrough,
        renderer,
        _mask_rendered(masker),
    ]
    structlog.configure(
        processors=list(processors),
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # One logger for every call (it locks each write), writing a line at a time.
        logger_factory=lambda *_args: writer,
        cache_logger_on_first_use=False,
    )


def _passthrough(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return event_dict
