"""Load the YAML configuration into the frozen runtime values of :mod:`tokend.model`.

Three steps, so each error can say exactly where it is:

1. :mod:`tokend.config.positions` parses the file (refusing duplicate keys, which
   YAML would silently drop) and can tell where any key or value was written;
2. pydantic checks the shape (:mod:`tokend.config.schema`, private to this
   loader: pydantic never reaches the rest of tokend), fed by one
   pydantic-settings source for the document and one for the environment:
   ``TOKEND_STATE_DIR`` overrides ``state_dir``;
3. :class:`_Builder` layers ``defaults`` → application → token, reads secrets,
   resolves owners and groups, and finds duplicates across the whole file.

Every error of a step is collected and raised as one ConfigError, one per
line in file order, ``file:line:col: key.path: message`` (step 3 runs only
once the shape is right). No message ever quotes a value from the file.
"""

from __future__ import annotations

import gc
import grp
import os
import pwd
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from tokend.config.events import KeyPath
from tokend.config.hints import APPLICATION_SETTING, settings_as_applications, unknown_key
from tokend.config.positions import Document, Problems, format_key_path, read_document
from tokend.config.schema import (
    MODE_HINT,
    Application,
    Output,
    Settings,
    SettingsSource,
    Token,
    Tuning,
    split_listen,
)
from tokend.errors import ConfigError
from tokend.model import (
    ApplicationSpec,
    Config,
    MetricsSpec,
    OutputSpec,
    RetryPolicy,
    Secret,
    TokenName,
    TokenSpec,
    is_loopback,
)
from tokend.timing import format_duration

DEFAULT_CONFIG_PATH = Path("/etc/tokend/config.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/tokend")
ENV_SETTINGS = ("state_dir",)
"""Top-level scalars an environment variable ``TOKEND_<NAME>`` may override."""

_SECRET_KEYS = ("client_secret", "client_secret_file", "client_secret_env",
                "client_secret_credential")
_TUNING = ("refresh_at", "timeout", "refresh_token_lifetime", "hook_timeout")


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$TOKEND_CONFIG``, else ``/etc/tokend/config.yaml``."""
    env = os.environ if environ is None else environ
    return Path(env["TOKEND_CONFIG"]) if env.get("TOKEND_CONFIG") else DEFAULT_CONFIG_PATH


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve the configuration at ``path``.

    ``environ`` (default ``os.environ``) supplies ``TOKEND_*`` overrides,
    ``STATE_DIRECTORY``, ``CREDENTIALS_DIRECTORY`` and ``client_secret_env``
    variables. Raises ConfigError listing every problem found.
    """
    with _collector_paused():
        return _load(path, os.environ if environ is None else environ)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Keep Python's cycle collector still while a load allocates its objects.

    A load creates a few objects per value of the file and frees none, so the
    collector's full passes find nothing while they rescan an ever larger heap:
    at 100,000 tokens they took 2 s of a 5.5 s load. Loads make no cycles
    worth collecting, and the collector resumes as soon as the load is done.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _load(path: Path, env: Mapping[str, str]) -> Config:
    document = read_document(path)
    problems = Problems(document)
    overrides = {name: env[f"TOKEND_{name.upper()}"] for name in ENV_SETTINGS
                 if env.get(f"TOKEND_{name.upper()}")}
    # Top-level x-* keys hold anchors for the rest of the file (as in docker compose).
    data = {key: value for key, value in document.data.items() if not key.startswith("x-")}
    misplaced = settings_as_applications(data.get("applications"))
    for name in misplaced:
        problems.add(("applications", name), APPLICATION_SETTING, key=True)
    if misplaced:
        data["applications"] = {name: app for name, app in data["applications"].items()
                                if name not in misplaced}
    sources = (SettingsSource(Settings, overrides), SettingsSource(Settings, data))
    try:
        # pydantic-settings' documented hook for ready-made sources; mypy only sees the fields.
        settings = Settings(_build_sources=(sources, {}))  # type: ignore[call-arg]
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            _report(error, problems, overrides)
        problems.check()
        raise  # unreachable: a ValidationError always carries errors
    config = _Builder(path, document, problems, env).build(settings, overrides)
    problems.check()
    return config


def _report(error: ErrorDetails, problems: Problems, overrides: Mapping[str, str]) -> None:
    """Turn one pydantic error into a located message that never shows the input."""
    loc: KeyPath = tuple(error["loc"])
    location = f"$TOKEND_{loc[0]}".upper() if loc and loc[0] in overrides else None
    kind = error["type"]
    if kind == "missing":
        problems.add(loc, "required key is missing", anchor=loc[:-1], key=True, location=location)
    elif kind == "extra_forbidden":
        problems.add(loc, unknown_key(loc), key=True, location=location)
    elif loc and loc[-1] == "[key]":
        problems.add(loc[:-1], _describe(error), key=True, location=location)
    else:
        problems.add(loc, _describe(error), location=location)


_EXPECTED = {"string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
             "model_type": "a mapping", "float_type": "a number", "int_type": "a whole number",
             "int_from_float": "a whole number", "tuple_type": "a list",
             "bool_type": "true or false"}


def _describe(error: ErrorDetails) -> str:
    if error["type"] == "value_error":
        return str(error.get("ctx", {}).get("error", "is not valid"))
    expected = _EXPECTED.get(error["type"])
    if expected is None:
        return error["msg"]
    value = error["input"]
    if value is None:
        return f"is empty; it must be {expected}"
    kind = ("true/false" if isinstance(value, bool)
            else "a number" if isinstance(value, int)
            else "a decimal number" if isinstance(value, float)
            else "text" if isinstance(value, str)
            else "a mapping" if isinstance(value, dict)
            else "a list" if isinstance(value, list)
            else "another kind of value")
    scalar = isinstance(value, bool | int | float)
    quote = "; quote it" if expected == "a string" and scalar else ""
    if expected == "a mapping" and isinstance(value, list) and value and all(
            isinstance(item, dict) for item in value):
        quote = "; remove the '- ' in front of its keys"  # a list of mappings: "- key: value"
    return f"must be {expected}, not {kind}{quote}"


class _Builder:
    """Layers defaults → application → token and resolves what lives outside the file."""

    def __init__(self, path: Path, document: Document, problems: Problems,
                 environ: Mapping[str, str]) -> None:
        self._path = path
        self._doc = document
        self._problems = problems
        self._environ = environ
        self._warnings: list[str] = []
        self._outputs: dict[Path, KeyPath] = {}
        self._tokens: dict[TokenName, KeyPath] = {}
        self._ids: dict[tuple[str, str], int | None] = {}

    def build(self, settings: Settings, overrides: Mapping[str, str]) -> Config:
        defaults = settings.defaults
        self._retry(("defaults",), defaults)
        applications: dict[str, ApplicationSpec] = {}
        tokens: list[TokenSpec] = []
        for name, app in settings.applications.items():
            where: KeyPath = ("applications", name)
            # What a token inherits, worked out once: most tokens set nothing of their own.
            inherited = (self._retry(where, app, defaults), _layered(_TUNING, app, defaults))
            applications[name] = ApplicationSpec(
                name=name, client_id=app.client_id, client_secret=self._secret(app, where),
                secret_source=_secret_source(app),
                **_layered(("base_url", "redirect_uri"), app),
                **_layered(("rate_limit", "concurrency", "timeout"), app, defaults),
            )
            for index, token in enumerate(app.tokens):
                tokens.append(self._token(name, token, (*where, "tokens", index), inherited,
                                          app, defaults))
        concurrency = {} if defaults.concurrency is None else {"concurrency": defaults.concurrency}
        return Config(source=self._path, state_dir=self._state_dir(settings, overrides),
                      applications=applications, tokens=tuple(tokens),
                      warnings=tuple(self._warnings), metrics=self._metrics(settings),
                      **concurrency)

    def _metrics(self, settings: Settings) -> MetricsSpec | None:
        """Off unless configured; a listener reachable from other hosts must be asked for."""
        if settings.metrics is None:
            return None
        host, port = split_listen(settings.metrics.listen)
        if not (settings.metrics.allow_remote or is_loopback(host)):
            self._problems.add(("metrics", "listen"), "is not a loopback address, so other hosts "
                               "could read the metrics; set metrics.allow_remote: true to allow it")
        return MetricsSpec(host=host, port=port, allow_remote=settings.metrics.allow_remote)

    def _state_dir(self, settings: Settings, overrides: Mapping[str, str]) -> Path:
        if "state_dir" in overrides:
            return Path(overrides["state_dir"]).absolute()
        if settings.state_dir is not None:
            return self._path.absolute().parent / settings.state_dir
        systemd = self._environ.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(systemd).absolute() if systemd else DEFAULT_STATE_DIR

    def _retry(self, where: KeyPath, *layers: Tuning) -> RetryPolicy:
        """Merge ``initial`` and ``max`` separately, so a token can change just one of them."""
        retries = [layer.retry for layer in layers if layer.retry is not None]
        policy = RetryPolicy(**_layered(("initial", "max"), *retries))
        if layers[0].retry is not None and policy.max < policy.initial:
            self._problems.add((*where, "retry"),
                               f"max ({format_duration(policy.max)}) must not be shorter than "
                               f"initial ({format_duration(policy.initial)})")
        return policy

    def _token(self, app_name: str, token: Token, where: KeyPath,
               inherited: tuple[RetryPolicy, dict[str, Any]], *layers: Tuning) -> TokenSpec:
        name = TokenName(app_name, token.user, token.scope)
        if name in self._tokens:
            first = self._tokens[name]
            self._problems.add(where, f"token {name} is configured twice; first at "
                               f"{self._doc.location(first)} ({format_key_path(first)})")
        self._tokens.setdefault(name, where)
        outputs = tuple(self._output(output, (*where, "outputs", index))
                        for index, output in enumerate(token.outputs))
        return TokenSpec(name=name, outputs=outputs, on_refresh=tuple(token.on_refresh),
                         on_failure=tuple(token.on_failure),
                         retry=inherited[0] if token.retry is None
                         else self._retry(where, token, *layers),
                         **{**inherited[1], **_layered(_TUNING, token)})

    def _output(self, output: Output, where: KeyPath) -> OutputSpec:
        path = Path(output.path)
        if path in self._outputs:
            first = self._outputs[path]
            self._problems.add((*where, "path"), f"{path} is also written by "
                               f"{format_key_path(first)} ({self._doc.location(first)})")
        self._outputs.setdefault(path, (*where, "path"))
        if output.variable is not None and output.format != "env":
            self._problems.add((*where, "variable"), "only applies to format: env", key=True)
        text = self._doc.plain.get((*where, "mode"), "0")
        if text[:1].isdigit() and not text.startswith("0"):
            self._problems.add((*where, "mode"), MODE_HINT)
        return OutputSpec(path=path, format=output.format, mode=output.mode,
                          owner=self._id(output.owner, (*where, "owner"), _uid, "user"),
                          group=self._id(output.group, (*where, "group"), _gid, "group"),
                          **({} if output.variable is None else {"variable": output.variable}))

    def _id(self, value: int | str | None, where: KeyPath, lookup: Callable[[str], int],
            kind: str) -> int | None:
        if value is None or isinstance(value, int):
            return value
        # Thousands of outputs often name one owner; each lookup may ask NSS (LDAP, sssd).
        if (kind, value) not in self._ids:
            try:
                self._ids[kind, value] = lookup(value)
            except (KeyError, ValueError):
                self._ids[kind, value] = None
        found = self._ids[kind, value]
        if found is None:
            self._problems.add(where, f"unknown {kind} {value!r}")
        return found

    def _secret(self, app: Application, where: KeyPath) -> Secret:
        given = [key for key in _SECRET_KEYS if getattr(app, key) is not None]
        if len(given) != 1:
            # In file order, so the first one written is kept; positions cost a second parse.
            given.sort(key=lambda key: self._doc.mark((*where, key), key=True) or (0, 0))
            if not given:
                self._problems.add(where, "needs a client secret: set one of "
                                   + ", ".join(_SECRET_KEYS), key=True)
            for extra in given[1:]:
                self._problems.add((*where, extra), f"conflicts with {given[0]}: give the client "
                                   "secret in exactly one way", key=True)
            return Secret("")
        key = given[0]
        if app.client_secret is not None:
            warning = (f"{self._doc.source}: holds an inline client_secret and is readable by "
                       "other users; chmod 600 it or use client_secret_file")
            if self._doc.mode & 0o004 and warning not in self._warnings:
                self._warnings.append(warning)
            return Secret(app.client_secret.get_secret_value())
        if app.client_secret_env is not None:
            value = self._environ.get(app.client_secret_env)
            if not value:
                state = "is not set" if value is None else "is empty"
                self._problems.add((*where, key), f"environment variable "
                                   f"{app.client_secret_env} {state}")
            return Secret(value or "")
        if app.client_secret_file is not None:
            file = self._path.absolute().parent / app.client_secret_file
        else:
            directory = self._environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                self._problems.add((*where, key), "needs $CREDENTIALS_DIRECTORY, which systemd "
                                   "sets for LoadCredential=; it is not set")
                return Secret("")
            file = Path(directory) / str(app.client_secret_credential)
        return Secret(self._read_secret(file, (*where, key)))

    def _read_secret(self, file: Path, where: KeyPath) -> str:
        try:
            value = file.read_text(encoding="utf-8").rstrip()
        except FileNotFoundError:
            problem = "no such file"
        except IsADirectoryError:
            problem = "is a directory"
        except PermissionError:
            problem = "permission denied"
        except UnicodeDecodeError:
            problem = "is not UTF-8 text"
        except (OSError, ValueError) as exc:
            problem = getattr(exc, "strerror", None) or "cannot be read"
        else:
            if value:
                return value
            problem = "is empty"
        self._problems.add(where, f"cannot read the secret from {file}: {problem}")
        return ""


def _uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def _secret_source(app: Application) -> str:
    """Where ``app``'s client secret comes from, in the config's words (never the secret)."""
    for key in _SECRET_KEYS[1:]:
        value = getattr(app, key)
        if value is not None:
            return f"{key}: {value}"
    return "client_secret (inline)"


def _layered(names: tuple[str, ...], *layers: Any) -> dict[str, Any]:
    """The innermost value set for each name; names set nowhere keep the dataclass default."""
    chosen: dict[str, Any] = {}
    for name in names:
        value = next((v for layer in layers if (v := getattr(layer, name, None)) is not None), None)
        if value is not None:
            chosen[name] = value
    return chosen


__all__ = ["DEFAULT_CONFIG_PATH", "ConfigError", "default_config_path", "load_config"]
