"""Validated settings to runtime specs: layering, secrets, owners, duplicates across the file.

:class:`Builder` layers ``defaults`` → application → token, reads secrets,
resolves owners and groups, and finds tokens and outputs named twice. It
reports every problem to a :class:`Reporter` (the document's
:class:`~tokend.config.document.Problems` on a full load) and never quotes a
secret.
"""

from __future__ import annotations

import grp
import pwd
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from tokend.config.quick import state_dir_of
from tokend.config.reader import KeyPath, Mark, format_key_path
from tokend.config.schema import (
    MODE_HINT,
    Application,
    Output,
    Pooled,
    Settings,
    Token,
    Tuning,
    split_listen,
)
from tokend.formats import template_parts
from tokend.model import (
    ApplicationSpec,
    MetricsSpec,
    OutputSpec,
    RetryPolicy,
    Secret,
    StoreSpec,
    TokenName,
    TokenSpec,
    is_loopback,
)
from tokend.timing import format_duration

ENV_SETTINGS = ("state_dir",)
"""Top-level scalars an environment variable ``TOKEND_<NAME>`` may override."""


def secret_keys(prefix: str) -> tuple[str, str, str, str]:
    """The keys that may give the secret ``prefix`` names: inline, file, env, credential."""
    return (prefix, f"{prefix}_file", f"{prefix}_env", f"{prefix}_credential")


def given_keys(holder: Any, prefix: str) -> list[str]:
    """Which of :func:`secret_keys` ``holder`` sets."""
    return [key for key in secret_keys(prefix) if getattr(holder, key, None) is not None]


SECRET_KEYS = secret_keys("client_secret")
_TUNING = ("refresh_at", "timeout", "refresh_token_lifetime", "hook_timeout")
Inherited = tuple[RetryPolicy, dict[str, Any]]
"""What every token of an application inherits: its retry policy and tuning."""


class Reporter(Protocol):
    """Where problems go, and where the file says things are."""

    source: str
    mode: int
    plain: Mapping[KeyPath, str]

    def add(self, path: KeyPath, message: str, *, key: bool = False) -> None: ...

    def location(self, path: KeyPath) -> str: ...

    def mark(self, path: KeyPath, *, key: bool = False) -> Mark | None: ...


class Builder:
    """Turns validated settings into specs, one application or token at a time."""

    def __init__(self, path: Path, report: Reporter, environ: Mapping[str, str]) -> None:
        self._path = path
        self._report = report
        self._environ = environ
        self.warnings: list[str] = []
        self.outputs: dict[Path, KeyPath] = {}
        self.tokens: dict[TokenName, KeyPath] = {}
        self.ids: dict[tuple[str, str], int | None] = {}
        self.templates: dict[Path, str | None] = {}
        """The text each ``template_file`` held when read (``None``: unreadable)."""

    def application(self, name: str, app: Application,
                    defaults: Pooled) -> tuple[ApplicationSpec, Inherited]:
        """The application's spec, and what its tokens inherit (worked out once: most tokens
        set nothing of their own)."""
        where: KeyPath = ("applications", name)
        inherited = (self.retry(where, app, defaults), _layered(_TUNING, app, defaults))
        spec = ApplicationSpec(
            name=name, client_id=app.client_id, client_secret=self._secret(app, where),
            secret_source=_secret_source(app),
            **_layered(("base_url", "redirect_uri"), app),
            **_layered(("rate_limit", "concurrency", "timeout"), app, defaults),
        )
        return spec, inherited

    def metrics(self, settings: Settings) -> MetricsSpec | None:
        """Off unless configured; a listener reachable from other hosts must be asked for."""
        if settings.metrics is None:
            return None
        host, port = split_listen(settings.metrics.listen)
        if not (settings.metrics.allow_remote or is_loopback(host)):
            self._report.add(("metrics", "listen"), "is not a loopback address, so other hosts "
                             "could read the metrics; set metrics.allow_remote: true to allow it")
        return MetricsSpec(host=host, port=port, allow_remote=settings.metrics.allow_remote)

    def state_dir(self, settings: Settings, overrides: Mapping[str, str]) -> Path:
        if "state_dir" in overrides:
            return Path(overrides["state_dir"]).absolute()
        return state_dir_of(self._path, settings.state_dir, self._environ)

    def retry(self, where: KeyPath, *layers: Tuning) -> RetryPolicy:
        """Merge ``initial`` and ``max`` separately, so a token can change just one of them."""
        retries = [layer.retry for layer in layers if layer.retry is not None]
        policy = RetryPolicy(**_layered(("initial", "max"), *retries))
        if layers[0].retry is not None and policy.max < policy.initial:
            self._report.add((*where, "retry"),
                             f"max ({format_duration(policy.max)}) must not be shorter than "
                             f"initial ({format_duration(policy.initial)})")
        return policy

    def token(self, app_name: str, token: Token, where: KeyPath, inherited: Inherited,
              *layers: Tuning) -> TokenSpec:
        # One string per scope for all tokens, shared with the store's records of them.
        name = TokenName(app_name, token.user, sys.intern(token.scope))
        if name in self.tokens:
            first = self.tokens[name]
            self._report.add(where, f"token {name} is configured twice; first at "
                             f"{self._report.location(first)} ({format_key_path(first)})")
        self.tokens.setdefault(name, where)
        outputs = tuple(self._output(output, (*where, "outputs", index))
                        for index, output in enumerate(token.outputs))
        return TokenSpec(name=name, outputs=outputs, on_refresh=tuple(token.on_refresh),
                         on_failure=tuple(token.on_failure),
                         company=token.resource_owner_type == "company",
                         retry=inherited[0] if token.retry is None
                         else self.retry(where, token, *layers),
                         **{**inherited[1], **_layered(_TUNING, token)})

    def _output(self, output: Output, where: KeyPath) -> OutputSpec:
        path = Path(output.path)
        if path in self.outputs:
            first = self.outputs[path]
            self._report.add((*where, "path"), f"{path} is also written by "
                             f"{format_key_path(first)} ({self._report.location(first)})")
        self.outputs.setdefault(path, (*where, "path"))
        if output.variable is not None and output.format != "env":
            self._report.add((*where, "variable"), "only applies to format: env", key=True)
        text = self._report.plain.get((*where, "mode"), "0")
        if text[:1].isdigit() and not text.startswith("0"):
            self._report.add((*where, "mode"), MODE_HINT)
        return OutputSpec(path=path, format=output.format, mode=output.mode,
                          owner=self._id(output.owner, (*where, "owner"), "user"),
                          group=self._id(output.group, (*where, "group"), "group"),
                          template=self._template(output, where),
                          **({} if output.variable is None else {"variable": output.variable}))

    def _template(self, output: Output, where: KeyPath) -> str:
        """A ``template`` output's text, given in exactly one way and checked ("" for others)."""
        given = [key for key in ("template", "template_file") if getattr(output, key) is not None]
        if output.format != "template":
            for key in given:
                self._report.add((*where, key), "only applies to format: template", key=True)
            return ""
        if not given:
            self._report.add(where, "format: template needs template (the text) or "
                             "template_file (a file holding it)", key=True)
            return ""
        if len(given) > 1:
            self._report.add((*where, "template_file"), "conflicts with template: give the "
                             "template in exactly one way", key=True)
            return ""
        file = output.template_file
        if file is None:
            text, named = str(output.template), ""
        else:
            path = self._path.absolute().parent / file
            found = self._read_text(path, (*where, "template_file"), "template")
            self.templates[path] = found
            text, named = found or "", f"{file}: "
        if text:
            try:
                template_parts(text)
            except ValueError as error:
                self._report.add((*where, given[0]), f"{named}{error}")
        return text

    def _id(self, value: int | str | None, where: KeyPath, kind: str) -> int | None:
        if value is None or isinstance(value, int):
            return value
        # Thousands of outputs often name one owner; each lookup may ask NSS (LDAP, sssd).
        if (kind, value) not in self.ids:
            self.ids[kind, value] = lookup_id(kind, value)
        found = self.ids[kind, value]
        if found is None:
            self._report.add(where, f"unknown {kind} {value!r}")
        return found

    def _secret(self, app: Application, where: KeyPath) -> Secret:
        if app.client_secret is not None and len(given_keys(app, "client_secret")) == 1:
            warning = (f"{self._report.source}: holds an inline client_secret and is readable by "
                       "other users; chmod 600 it or use client_secret_file")
            if self._report.mode & 0o004 and warning not in self.warnings:
                self.warnings.append(warning)
            return Secret(app.client_secret.get_secret_value())
        found = self.secret(app, "client_secret", where, noun="client secret", required=True)
        return found or Secret("")

    def store(self, settings: Settings) -> StoreSpec | None:
        """The shared store, its password read like a client secret (one way at most: a
        server may trust the host, or libpq may find a ``.pgpass``)."""
        if settings.store is None:
            for key in given_keys(settings, "store_password"):
                self._report.add((key,), "only applies with store: (the shared PostgreSQL "
                                 "store)", key=True)
            return None
        password = self.secret(settings, "store_password", (), noun="store password",
                               required=False)
        return StoreSpec(conninfo=settings.store, password=password)

    def secret(self, holder: Any, prefix: str, where: KeyPath, *, noun: str,
               required: bool) -> Secret | None:
        """The secret ``holder`` gives by one of ``PREFIX_file``, ``_env``, ``_credential``
        (``None`` when it gives none and none is ``required``); each problem is reported."""
        given = given_keys(holder, prefix)
        if len(given) != 1:
            # In file order, so the first one written is kept; positions cost a second parse.
            given.sort(key=lambda key: self._report.mark((*where, key), key=True) or (0, 0))
            if not given and required:
                self._report.add(where, f"needs a {noun}: set one of "
                                 + ", ".join(secret_keys(prefix)), key=True)
            for extra in given[1:]:
                self._report.add((*where, extra), f"conflicts with {given[0]}: give the {noun} "
                                 "in exactly one way", key=True)
            return Secret("") if given or required else None
        key = given[0]
        value = getattr(holder, key)
        if key.endswith("_env"):
            variable = self._environ.get(value)
            if not variable:
                state = "is not set" if variable is None else "is empty"
                self._report.add((*where, key), f"environment variable {value} {state}")
            return Secret(variable or "")
        if key.endswith("_file"):
            file = self._path.absolute().parent / value
        else:
            directory = self._environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                self._report.add((*where, key), "needs $CREDENTIALS_DIRECTORY, which systemd "
                                 "sets for LoadCredential=; it is not set")
                return Secret("")
            file = Path(directory) / str(value)
        return Secret(self._read_secret(file, (*where, key)))

    def _read_secret(self, file: Path, where: KeyPath) -> str:
        return (self._read_text(file, where, "secret") or "").rstrip()

    def _read_text(self, file: Path, where: KeyPath, what: str) -> str | None:
        """The text of ``file`` (not blank), else ``None``, the problem reported at ``where``."""
        try:
            value = file.read_text(encoding="utf-8")
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
            if value.strip():
                return value
            problem = "is empty"
        self._report.add(where, f"cannot read the {what} from {file}: {problem}")
        return None


def environment_overrides(env: Mapping[str, str]) -> dict[str, str]:
    """``TOKEND_STATE_DIR`` (when set and not empty), by the setting it overrides."""
    return {name: env[f"TOKEND_{name.upper()}"] for name in ENV_SETTINGS
            if env.get(f"TOKEND_{name.upper()}")}


def lookup_id(kind: str, name: str) -> int | None:
    """The uid (``kind`` "user") or gid ("group") of ``name``; ``None`` if there is none."""
    try:
        return _uid(name) if kind == "user" else _gid(name)
    except (KeyError, ValueError):
        return None


def _uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def _secret_source(app: Application) -> str:
    """Where ``app``'s client secret comes from, in the config's words (never the secret)."""
    for key in SECRET_KEYS[1:]:
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
