"""The shape of config.yaml as pydantic models: private to :mod:`tokend.config.load`.

Models are strict (``client_id: 123`` is an error, not ``"123"``: YAML would
already have mangled ``0123``) and forbid unknown keys. Every validator raises
``ValueError`` with a message that completes "key.path: ..." and never quotes
the value, which may be a secret.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Callable
from typing import Annotated, Any, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
)

from tokend.config.store import check_store
from tokend.model import (
    ENV_VARIABLE,
    MAX_REFRESH_FRACTION,
    MIN_REFRESH_FRACTION,
    OOB,
    SCOPE_RULE,
    OutputFormat,
    is_port,
    scope_name,
)
from tokend.timing import parse_positive_duration, parse_rate

MODE_HINT = ('must be an octal mode in quotes such as "0640" (YAML reads an unquoted 640 '
             "as a decimal number)")
_APP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
_OCTAL = re.compile(r"(?:0o)?([0-7]{1,4})")


def _matching(pattern: re.Pattern[str], message: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if pattern.fullmatch(value) is None:
            raise ValueError(message)
        return value
    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[object], object]:
    def check(value: object) -> object:
        if value not in choices:
            raise ValueError("must be one of " + ", ".join(choices))
        return value
    return check


def _scope(value: object) -> str:
    """The token name's form of a scope (``employees+time_off``), by the one rule."""
    if not isinstance(value, str):
        raise ValueError(f"must be {SCOPE_RULE}")  # noqa: TRY004 -- pydantic reports ValueError, not TypeError
    return scope_name(value)


def _duration(value: object) -> float:
    if not isinstance(value, str | int | float):
        raise ValueError("must be a duration such as 90s, 5m, 1h or 7d")  # noqa: TRY004 -- pydantic reports ValueError, not TypeError
    return parse_positive_duration(value)


def _rate(value: object) -> float:
    if not isinstance(value, str):
        raise ValueError("must be a rate such as 180/min, 50/s or 1000/hour")  # noqa: TRY004 -- pydantic reports ValueError, not TypeError
    return parse_rate(value)


def _fraction(value: float) -> float:
    if not MIN_REFRESH_FRACTION <= value <= MAX_REFRESH_FRACTION:
        raise ValueError("must be a fraction of the token lifetime between "
                         f"{MIN_REFRESH_FRACTION} and {MAX_REFRESH_FRACTION}")
    return value


def _count(value: int) -> int:
    if not 1 <= value <= 1024:
        raise ValueError("must be between 1 and 1024")
    return value


def _non_empty(value: str) -> str:
    if not value.strip() or "\0" in value:
        raise ValueError("must not be empty")
    return value


def _absolute(value: str) -> str:
    if "\0" in value or not os.path.isabs(value):
        raise ValueError("must be an absolute path (starting with /)")
    return os.path.normpath(value)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("must be an http(s) URL such as https://api.factorialhr.com")
    return value.rstrip("/")


def _redirect(value: str) -> str:
    if value == OOB:
        return value
    try:
        return _http_url(value)
    except ValueError:
        raise ValueError(f"must be {OOB} or an http(s) URL") from None


def _credential(value: str) -> str:
    if value in ("", ".", "..") or "/" in value or "\0" in value:
        raise ValueError("must be a credential name (a file name, no /)")
    return value


LISTEN_HINT = "must be HOST:PORT such as 127.0.0.1:9464 ([::1]:9464 for IPv6)"


def split_listen(value: str) -> tuple[str, int]:
    """``127.0.0.1:9464`` or ``[::1]:9464`` as (host, port); port 0 picks a free one."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address without brackets: which colon starts the port?
    if not sep or not host or not is_port(port) or "\0" in host:
        raise ValueError(LISTEN_HINT)
    return host, int(port)


def _listen(value: str) -> str:
    split_listen(value)
    return value


def _mode(value: object) -> int:
    """A quoted octal string, or the int YAML made of an unquoted ``0640``."""
    if isinstance(value, str) and (match := _OCTAL.fullmatch(value)):
        value = int(match.group(1), 8)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ValueError(MODE_HINT)
    if value & 0o002:
        raise ValueError("must not let other users write the file")
    return value


def _user_or_id(value: object) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip() and "\0" not in value:
        return int(value) if value.isdigit() else value
    raise ValueError("must be a name or a numeric id")


def _argv(value: object) -> object:
    if isinstance(value, str):
        raise ValueError("must be a list of arguments such as [pkill, -HUP, -x, agent]; "  # noqa: TRY004 -- pydantic reports ValueError, not TypeError
                         "no shell runs it")
    return [] if value is None else value


def _per_application(value: object) -> object:
    raise ValueError("can only be set under defaults or an application, not per token")


def _empty_list(value: object) -> object:
    return [] if value is None else value


def _empty_mapping(value: object) -> object:
    return {} if value is None else value


NonEmpty = Annotated[str, AfterValidator(_non_empty)]
Duration = Annotated[float, BeforeValidator(_duration)]
EnvName = Annotated[str, AfterValidator(_matching(
    ENV_VARIABLE,
    "must be an environment variable name (letters, digits and _, not starting with a digit)",
))]
Argv = Annotated[list[NonEmpty], BeforeValidator(_argv)]
UserOrId = Annotated[int | str, PlainValidator(_user_or_id)]
AppName = Annotated[str, AfterValidator(_matching(
    _APP, "application names start with a letter or digit and hold only letters, digits, . _ -"))]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Retry(_Model):
    initial: Duration | None = None
    max: Duration | None = None


class Tuning(_Model):
    """Settings that defaults, applications and tokens may all set; ``None`` means inherit."""

    refresh_at: Annotated[float, AfterValidator(_fraction)] | None = None
    timeout: Duration | None = None
    retry: Retry | None = None
    refresh_token_lifetime: Duration | None = None
    hook_timeout: Duration | None = None


class Pooled(Tuning):
    """Settings shared by all tokens of an application, so not settable per token."""

    concurrency: Annotated[int, AfterValidator(_count)] | None = None
    rate_limit: Annotated[float, BeforeValidator(_rate)] | None = None


class Output(_Model):
    path: Annotated[str, AfterValidator(_absolute)]
    format: Annotated[OutputFormat, BeforeValidator(_one_of(get_args(OutputFormat)))] = "token"
    variable: EnvName | None = None
    template: NonEmpty | None = None
    template_file: NonEmpty | None = None
    mode: Annotated[int, BeforeValidator(_mode)] = 0o600
    owner: UserOrId | None = None
    group: UserOrId | None = None


class Token(Tuning):
    user: Annotated[str, AfterValidator(_matching(
        _USER, "user names start with a letter or digit and hold only letters, digits, . _ @ -"))]
    scope: Annotated[str, BeforeValidator(_scope)] = "read+write"
    resource_owner_type: Annotated[str, BeforeValidator(_one_of(("user", "company")))] = "user"
    outputs: Annotated[list[Output], BeforeValidator(_empty_list)] = Field(default_factory=list)
    on_refresh: Argv = Field(default_factory=list)
    on_failure: Argv = Field(default_factory=list)
    concurrency: Annotated[object, BeforeValidator(_per_application)] = None
    rate_limit: Annotated[object, BeforeValidator(_per_application)] = None


class Application(Pooled):
    base_url: Annotated[str, AfterValidator(_http_url)] | None = None
    client_id: NonEmpty
    client_secret: SecretStr | None = None
    client_secret_file: NonEmpty | None = None
    client_secret_env: EnvName | None = None
    client_secret_credential: Annotated[str, AfterValidator(_credential)] | None = None
    redirect_uri: Annotated[str, AfterValidator(_redirect)] | None = None
    tokens: Annotated[list[Token], BeforeValidator(_empty_list)] = Field(default_factory=list)


class Metrics(_Model):
    listen: Annotated[str, AfterValidator(_listen)] = "127.0.0.1:9464"
    allow_remote: bool = False


class Settings(BaseModel):
    """The whole file (``TOKEND_STATE_DIR`` already laid over ``state_dir`` by the loader)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    state_dir: NonEmpty | None = None
    store: Annotated[str, AfterValidator(check_store)] | None = None
    store_password_file: NonEmpty | None = None
    store_password_env: EnvName | None = None
    store_password_credential: Annotated[str, AfterValidator(_credential)] | None = None
    defaults: Annotated[Pooled, BeforeValidator(_empty_mapping)] = Field(default_factory=Pooled)
    applications: Annotated[dict[AppName, Application], BeforeValidator(_empty_mapping)] = Field(
        default_factory=dict)
    metrics: Metrics | None = None


def known_keys(path: tuple[str | int, ...]) -> list[str]:
    """The keys allowed in the mapping at ``path``, for "did you mean" hints."""
    shape: Any = Settings
    for part in path:
        if isinstance(shape, type) and issubclass(shape, BaseModel):
            field = shape.model_fields.get(str(part))
            if field is None:
                return []
            shape = field.annotation
        else:
            shape = get_args(shape)[-1] if get_args(shape) else None
        while get_origin(shape) in (Union, types.UnionType, Annotated):
            shape = next(arg for arg in get_args(shape) if arg is not type(None))
    if isinstance(shape, type) and issubclass(shape, BaseModel):
        return list(shape.model_fields)
    return []
