"""Find the state directory without loading the whole configuration.

``tokend token`` runs inside other programs' ``$(…)``, often many times a
minute, so it must start fast: no pydantic, no httpx, no structlog. It needs
exactly one thing from the config file, ``state_dir``, and this module finds
it with the same rules as :func:`tokend.config.load.load_config` (a test keeps the
two in agreement), reading the file only up to that key. Anything unexpected
is a :class:`ConfigError` that points at ``tokend check``, which validates the
whole file: a mistake after ``state_dir`` does not stop ``tokend token``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.nodes import ScalarNode

from tokend.errors import ConfigError

# Mirror tokend.config.load's constants; importing that module would import pydantic.
DEFAULT_CONFIG_PATH = Path("/etc/tokend/config.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/tokend")
_MAP = "tag:yaml.org,2002:map"
_UNSURE = object()
_NOT_TEXT = object()


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
            value = _scan(file)
            if value is _UNSURE:
                file.seek(0)
                value = _state_dir_of(yaml.safe_load(file), path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError):
        raise ConfigError(f"{path}: is not valid YAML; run `tokend check`") from None
    if value is not None:
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise ConfigError(f"{path}: state_dir must be a non-empty string; run `tokend check`")
        return path.absolute().parent / value
    systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(systemd).absolute() if systemd else DEFAULT_STATE_DIR


def _state_dir_of(data: object, path: Path) -> object:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must be a mapping; run `tokend check`")
    return data.get("state_dir")


def _scan(file: BinaryIO) -> object:
    """The top-level ``state_dir`` value, read from parser events up to that key only.

    A 10,000-token file takes seconds to load whole, and state_dir usually comes
    first. Whatever could change the answer further on, or that PyYAML might
    read differently (a merge key or a tag before it, an alias as its value, a
    file libyaml refuses), returns ``_UNSURE``: the caller then loads the whole file.
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(file)
    try:
        return _scan_events(loader)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError):
        return _UNSURE
    finally:
        loader.dispose()


def _scan_events(loader: Any) -> object:
    get = loader.get_event
    get()  # StreamStartEvent
    if not loader.check_event(DocumentStartEvent):
        return None  # an empty file
    get()
    root = get()
    if type(root) is not MappingStartEvent or root.tag not in (None, "!", _MAP):
        return _UNSURE
    while True:
        key = get()
        if type(key) is MappingEndEvent:
            return None
        if type(key) is not ScalarEvent or key.tag is not None or (
                key.value == "<<" and not key.style):  # a merge key may bring state_dir
            return _UNSURE
        value = get()
        if key.value == "state_dir":
            if type(value) is ScalarEvent:
                tag = value.tag
                if tag is None or tag == "!":
                    tag = loader.resolve(ScalarNode, value.value, value.implicit)
                return loader.construct_object(ScalarNode(tag, value.value, style=value.style))
            return _UNSURE if type(value) is AliasEvent else _NOT_TEXT
        depth = int(type(value) in (MappingStartEvent, SequenceStartEvent))
        while depth:
            kind = type(get())
            depth += (kind in (MappingStartEvent, SequenceStartEvent)) - (
                kind in (MappingEndEvent, SequenceEndEvent))


def quick_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$TOKEND_CONFIG``, else ``/etc/tokend/config.yaml`` (as ``default_config_path``)."""
    env = os.environ if environ is None else environ
    return Path(env["TOKEND_CONFIG"]) if env.get("TOKEND_CONFIG") else DEFAULT_CONFIG_PATH
