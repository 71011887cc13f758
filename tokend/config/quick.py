"""Find the state directory, and a token's outputs, without loading the whole configuration.

``tokend token`` runs inside other programs' ``$(…)``, often many times a
minute, so it must start fast: no pydantic, no httpx, no structlog. It needs
exactly one thing from the config file, ``state_dir``, and this module finds
it with the same rules as :func:`tokend.config.load.load_config` (a test keeps the
two in agreement), reading the file only up to that key, its value tagged and
constructed by the rules of the config layer's one YAML reader
(:mod:`tokend.config.scalars`, which needs PyYAML only); the reader itself, with its
dataclasses, is loaded only when the whole file must be read.
Anything unexpected is a :class:`ConfigError` that points at ``tokend check``,
which validates the whole file: a mistake after ``state_dir`` does not stop
``tokend token``. ``tokend token --format env|template`` and ``tokend exec`` also
need the token's outputs (:func:`quick_outputs`), read from the whole file by the
same reader (a test keeps them in agreement with the loader's too).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from tokend.config.scalars import (
    DEFAULT_TAGS,
    MERGE,
    NOT_CONSTRUCTED,
    STR,
    scalar_tag,
    scalar_value,
)
from tokend.errors import ConfigError
from tokend.names import DEFAULT_ENV_VARIABLE

# Here, not in tokend.config.load, which imports pydantic: both loaders read them from here.
DEFAULT_CONFIG_PATH = Path("/etc/tokend/config.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/tokend")
UNSURE = object()
"""What :func:`top_level_scalar` answers when only the whole file tells."""
NOT_TEXT = object()


def quick_state_dir(path: Path, *, environ: Mapping[str, str] | None = None) -> Path:
    """``state_dir`` as ``load_config`` resolves it.

    Order: ``$TOKEND_STATE_DIR``; the file's ``state_dir`` (relative to the
    file's folder); the first entry of systemd's ``$STATE_DIRECTORY``;
    ``/var/lib/tokend``.
    """
    env = os.environ if environ is None else environ
    override = env.get("TOKEND_STATE_DIR")
    if override:
        return Path(override).absolute()
    try:
        with path.open("rb") as file:
            value = top_level_scalar(file, "state_dir")
            if value is UNSURE:  # read the whole file, as the daemon does
                file.seek(0)
                value = _state_dir_of(file.read(), path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if value is not None and (not isinstance(value, str) or not value.strip() or "\0" in value):
        raise ConfigError(f"{path}: state_dir must be a non-empty string; run `tokend check`")
    return state_dir_of(path, value, env)


def state_dir_of(path: Path, value: str | None, environ: Mapping[str, str]) -> Path:
    """The state directory of the config at ``path`` whose ``state_dir`` is ``value``.

    Relative to the file's folder; without one, the first entry of systemd's
    ``$STATE_DIRECTORY``, else ``/var/lib/tokend``. (``$TOKEND_STATE_DIR`` wins over
    all of these; each loader reads it first, the quick one before it opens the file.)
    """
    if value is not None:
        return path.absolute().parent / value
    systemd = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(systemd).absolute() if systemd else DEFAULT_STATE_DIR


def _state_dir_of(raw: bytes, path: Path) -> object:
    from tokend.config.reader import read_yaml  # noqa: PLC0415 -- the whole reader: not for the scan

    try:
        found = read_yaml(raw.decode("utf-8-sig"), str(path))
    except (ConfigError, ValueError):
        raise ConfigError(f"{path}: is not valid YAML; run `tokend check`") from None
    if found.root == "empty":
        return None
    if found.data is None:
        raise ConfigError(f"{path}: the file must be a mapping; run `tokend check`")
    value: object = found.data.get("state_dir", None)
    return NOT_TEXT if isinstance(value, dict | list) else value


def names_a_shared_store(path: Path) -> bool:
    """Whether the config at ``path`` may have a top-level ``store:`` (a PostgreSQL store).

    A byte search, not a parse: ``tokend token`` on the SQLite store must not pay for
    scanning a large file for a key it does not have. A ``store:`` line that is not the
    top-level key (inside a block scalar) only costs the full load it then triggers.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    # The regex tried only where the word is: searching 1 MB (10,000 tokens) for a line
    # start with it takes 3 ms, a tenth of `tokend token`'s own time.
    at = raw.find(b"store")
    while at >= 0:
        if _STORE_KEY.match(raw, at):
            return True
        at = raw.find(b"store", at + 1)
    return False


_STORE_KEY = re.compile(rb"^store[ \t]*:", re.MULTILINE)


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$TOKEND_CONFIG``, else ``/etc/tokend/config.yaml``."""
    env = os.environ if environ is None else environ
    return Path(env["TOKEND_CONFIG"]) if env.get("TOKEND_CONFIG") else DEFAULT_CONFIG_PATH


def top_level_scalar(stream: Any, key: str) -> Any:
    """The value of the top-level ``key``, read from the start of ``stream`` up to it only.

    ``None`` when the file has no such key, :data:`NOT_TEXT` when it holds a
    mapping or list, :data:`UNSURE` whenever something before it could change
    the answer (a merge key, a tag, an alias, a file libyaml refuses).
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(stream)
    try:
        return _scan(loader, key)
    except NOT_CONSTRUCTED:  # also what libyaml refuses
        return UNSURE
    finally:
        loader.dispose()


def _scan(loader: Any, wanted: str) -> Any:
    """The reader's pass over the top-level mapping only: other keys' values are skipped,
    not built, and a scalar is tagged and constructed as a full read does
    (:mod:`tokend.config.scalars`), so the value found is the one the daemon reads."""
    get = loader.get_event
    resolvers = loader.yaml_implicit_resolvers
    get()  # StreamStartEvent
    if loader.check_event(StreamEndEvent):
        return None  # an empty file
    get()  # DocumentStartEvent
    root = get()
    if type(root) is not MappingStartEvent or root.tag not in DEFAULT_TAGS[MappingStartEvent]:
        return UNSURE
    while True:
        key = get()
        if type(key) is not ScalarEvent:
            return None if type(key) is MappingEndEvent else UNSURE
        if key.tag is not None or scalar_tag(key, resolvers, loader) == MERGE:
            return UNSURE  # a merge may bring the key
        value = get()
        if key.value == wanted:
            if type(value) is ScalarEvent:
                tag = scalar_tag(value, resolvers, loader)
                return value.value if tag == STR else scalar_value(loader, tag, value)
            return UNSURE if type(value) is AliasEvent else NOT_TEXT
        depth = int(type(value) in (MappingStartEvent, SequenceStartEvent))
        while depth:
            kind = type(get())
            depth += (kind in (MappingStartEvent, SequenceStartEvent)) - (
                kind in (MappingEndEvent, SequenceEndEvent))


class QuickOutput:
    """One output of a token as the config writes it: format, env variable, template text."""

    __slots__ = ("kind", "template", "variable")

    def __init__(self, kind: str, variable: str, template: str) -> None:
        self.kind = kind
        self.variable = variable
        self.template = template


def quick_outputs(path: Path, names: Sequence[str]) -> dict[str, list[QuickOutput]]:
    """The outputs the config file gives each token of ``names`` (``APP/USER/SCOPE``),
    without pydantic: for ``tokend token --format env|template`` and ``tokend exec``.

    Only the keys these read are looked at, with the loader's defaults (format
    ``token``, variable ``FACTORIAL_ACCESS_TOKEN``, scope ``read+write``); a
    ``template_file`` is read relative to the config file's folder. A token the
    config does not name has no outputs. Anything unexpected is a
    :class:`ConfigError` that points at ``tokend check``.
    """
    from tokend.config.reader import read_yaml  # noqa: PLC0415 -- the whole reader: not for the scan

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    applications = _mapping(_mapping(read_yaml(raw.decode("utf-8-sig"), str(path)).data,
                                     path).get("applications"), path)
    found: dict[str, list[QuickOutput]] = {}
    for name in names:
        app, user, scope = name.split("/", 2)
        found[name] = []
        for item in _list(_mapping(applications.get(app), path).get("tokens"), path):
            entry = _mapping(item, path)
            if entry.get("user") == user and entry.get("scope", "read+write") == scope:
                found[name] = [_output(_mapping(output, path), path)
                               for output in _list(entry.get("outputs"), path)]
                break
    return found


def _output(output: Mapping[str, object], path: Path) -> QuickOutput:
    kind, variable = output.get("format", "token"), output.get("variable", DEFAULT_ENV_VARIABLE)
    template, file = output.get("template", ""), output.get("template_file")
    if file is not None:
        try:
            template = (path.absolute().parent / str(file)).read_text(encoding="utf-8")
        except (OSError, ValueError):
            raise ConfigError(f"{path}: cannot read the template_file {file}; run `tokend check`"
                              ) from None
    if not all(isinstance(value, str) for value in (kind, variable, template)):
        raise ConfigError(f"{path}: an output of this token is not valid; run `tokend check`")
    return QuickOutput(str(kind), str(variable), str(template))


def _mapping(value: object, path: Path) -> Mapping[str, object]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: is not a valid config file; run `tokend check`")
    return value


def _list(value: object, path: Path) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{path}: is not a valid config file; run `tokend check`")
    return value
