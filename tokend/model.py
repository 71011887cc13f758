"""The vocabulary every layer shares: token names, tokens, the frozen specs of a loaded
configuration, and the constants and rules that go with them (free of pydantic and httpx).

:mod:`tokend.config` turns YAML into these specs; everything else in tokend only ever sees
them. They compare by value, which is what makes a reload a simple diff.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from tokend.errors import NotFoundError

# The naming rules live apart, light enough for `tokend token`; every layer finds them here.
from tokend.names import (
    DEFAULT_ENV_VARIABLE,
    ENV_VARIABLE,
    SCOPE_RULE,
    name_matches,
    name_parts,
    pick_named,
    scope_name,
    split_name,
)

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_ENV_VARIABLE", "ENV_VARIABLE", "MAX_REFRESH_FRACTION",
           "MIN_REFRESH_FRACTION", "OOB", "SCOPES", "SCOPE_RULE", "ApplicationSpec", "Config",
           "MetricsSpec", "OutputFormat", "OutputSpec", "RetryPolicy", "Secret", "StoreSpec",
           "Token", "TokenName", "TokenSpec", "is_loopback", "is_port", "name_matches",
           "name_parts", "pick_named", "resolve_token", "scope_name", "split_name"]

SCOPES = ("read", "write", "read+write")
"""The seed client's scopes: all its ``authorize`` takes. Config and CLI take any scope."""
OutputFormat = Literal["token", "env", "json", "template"]
DEFAULT_BASE_URL = "https://api.factorialhr.com"
"""Factorial's API: where the seed client and every application talk unless told otherwise."""
OOB = "urn:ietf:wg:oauth:2.0:oob"
"""The out-of-band redirect URI: the server shows the authorization key in the browser."""
MIN_REFRESH_FRACTION = 0.1
MAX_REFRESH_FRACTION = 0.95
"""Never later than this fraction of the access token's lifetime, whatever ``refresh_at`` says:
the remaining 5% is the headroom for a slow server, a retry and the rate limit."""


def is_port(text: str) -> bool:
    """Whether ``text`` is a TCP port number, 0 to 65535 (0 picks a free port)."""
    return text.isdigit() and int(text) <= 65535


def is_loopback(host: str) -> bool:
    """Whether ``host`` only ever reaches this machine: ``localhost``, 127.0.0.0/8 or ::1.

    The one rule for ``tokend check``'s plain-http warning, ``authorize --listen`` and the
    metrics listener's ``allow_remote``. Other names are not trusted: they may resolve
    anywhere.
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Secret:
    """A secret string that never shows itself in a repr, str or log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: call it only where the protocol needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, order=True, slots=True)
class TokenName:
    """``APP/USER/SCOPE``: the one name of a token in config, store, logs and CLI."""

    app: str
    user: str
    scope: str

    def __str__(self) -> str:
        return f"{self.app}/{self.user}/{self.scope}"

    @classmethod
    def parse(cls, text: str) -> TokenName:
        """Parse a full ``APP/USER/SCOPE`` name (the CLI resolves partial names itself)."""
        parts = split_name(text)
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"token name {text!r} is not of the form APP/USER/SCOPE")
        return cls(*parts)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff for transient failures: ``initial`` doubling up to ``max``."""

    initial: float = 10.0
    max: float = 600.0


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """One file that receives the access token after every refresh."""

    path: Path
    format: OutputFormat = "token"
    variable: str = DEFAULT_ENV_VARIABLE
    mode: int = 0o600
    owner: int | None = None
    group: int | None = None
    template: str = ""
    """The text of a ``template`` output (``template_file``'s, read when the config loads)."""


@dataclass(frozen=True, slots=True)
class ApplicationSpec:
    """An OAuth application registered at the server, and how to talk to it."""

    name: str
    client_id: str
    client_secret: Secret
    base_url: str = DEFAULT_BASE_URL
    redirect_uri: str = OOB
    rate_limit: float = 3.0
    concurrency: int = 8
    timeout: float = 30.0
    secret_source: str = ""
    """Where the secret comes from, as the config says it (``client_secret_file: …``), for
    messages about rejected credentials: never the secret itself."""


@dataclass(frozen=True, slots=True)
class TokenSpec:
    """A user/scope pair of an application that must always hold a fresh token."""

    name: TokenName
    outputs: tuple[OutputSpec, ...] = ()
    on_refresh: tuple[str, ...] = ()
    on_failure: tuple[str, ...] = ()
    refresh_at: float = 0.75
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    refresh_token_lifetime: float = 7 * 86400.0
    hook_timeout: float = 30.0
    company: bool = False
    """A company token (``resource_owner_type: company``): its link asks an admin for a
    token of the whole company, which the server issues without an expiry."""


@dataclass(frozen=True, slots=True)
class MetricsSpec:
    """Where the Prometheus/health listener binds; a non-loopback host needs ``allow_remote``."""

    host: str = "127.0.0.1"
    port: int = 9464
    allow_remote: bool = False

    @property
    def listen(self) -> str:
        """``HOST:PORT`` as written in the config (IPv6 hosts in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """The shared PostgreSQL store (``store:``): a libpq connection string that holds no
    password (the config refuses one), and the password read from where the config says."""

    conninfo: str
    password: Secret | None = None


@dataclass(frozen=True)
class Config:
    """A whole validated configuration file."""

    source: Path
    state_dir: Path
    applications: Mapping[str, ApplicationSpec]
    tokens: tuple[TokenSpec, ...]
    concurrency: int = 8
    warnings: tuple[str, ...] = ()
    metrics: MetricsSpec | None = None
    store: StoreSpec | None = None
    """``None``: the embedded SQLite store in ``state_dir``."""
    reread: object = field(default=None, compare=False, repr=False)
    """What the loader keeps to re-read this file quickly after an edit (``load_config``'s
    ``previous``); opaque to everything else."""


def resolve_token(config: Config, text: str) -> TokenSpec:
    """Find the token an operator means by ``APP/USER/SCOPE`` or, when unambiguous, ``APP/USER``.

    Raises ``NotFoundError`` listing the candidates, so a typo is one step from fixed. The
    scope may be written as in the config, with spaces.
    """
    parts = name_parts(text)
    found = pick_named(text, [spec for spec in config.tokens if name_matches(spec.name, parts)])
    if found is None:
        candidates = ", ".join(str(spec.name) for spec in config.tokens) or "none configured"
        raise NotFoundError(f"no token named {text!r}; configured tokens: {candidates}")
    return found


@dataclass(frozen=True, repr=False, slots=True)
class Token:
    """An access token and its refresh token, exactly as the server issued them.

    Expiry is ``created_at + expires_in``: the lifetime is whatever the server
    says, never a constant. ``expires_in`` is ``None`` when the server gave none: a
    company token, which never expires and is never refreshed. ``repr`` and ``str``
    never show the token strings.
    """

    access_token: str
    token_type: str
    expires_in: int | None
    refresh_token: str
    scope: str
    created_at: int

    @property
    def expires_at(self) -> datetime | None:
        """When the access token stops working (aware, UTC); ``None``: never."""
        if self.expires_in is None:
            return None
        return datetime.fromtimestamp(self.created_at + self.expires_in, tz=UTC)

    def __repr__(self) -> str:
        return (
            f"Token(token_type={self.token_type!r}, scope={self.scope!r}, "
            f"expires_at={None if self.expires_at is None else self.expires_at.isoformat()!r})"
        )

    __str__ = __repr__
