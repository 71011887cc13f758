"""The one YAML reader: text to plain data in one pass over libyaml's events.

PyYAML's ``safe_load`` keeps the last of two equal keys, forgets every line
number and builds a node tree first (most of a large file's load time). This
reader builds plain data straight from the parser's events (libyaml's C parser
when installed) and refuses what a config file must not hold: duplicate keys,
keys that are not strings, unknown tags, aliases that contain themselves, and
aliases that expand beyond a budget (a "billion laughs" file). Anchors, aliases
and merge keys (``<<``) work as in YAML 1.1.

Positions cost time and memory, and only an error message needs one: a
reading records them only when asked (``positions=True``), which the caller
does once a message needs ``file:line:col``. An error the reader itself finds
reads the file again that way, so it is located exactly. What YAML itself
refuses is worded by :mod:`tokend.config.syntax` from PyYAML's own parser,
which also reads the few files libyaml refuses and PyYAML accepts.

Messages never quote a value from the file: it might be a secret.
"""

from __future__ import annotations

from typing import Any

import yaml

from tokend.config.events import EventReader
from tokend.config.frames import (
    MAX_ALIASED,
    Composer,
    KeyPath,
    Mark,
    Options,
    Read,
    Retry,
    Span,
    format_key_path,
)
from tokend.errors import ConfigError

__all__ = ["MAX_ALIASED", "KeyPath", "Mark", "Read", "Span", "format_key_path", "read_yaml"]


def read_yaml(text: str, source: str, *, expect: type = dict, positions: bool = False,
              spans_at: tuple[str | None, ...] | None = None) -> Read:
    """Read ``text`` (named ``source`` in messages); raise a located ConfigError if it is refused.

    ``expect`` is the root's type (dict or list): another root is only described.
    ``spans_at`` asks where the items of the block lists at that key path start
    (``None`` matches any key); block lists of mappings only, each item on its own line.
    """
    options = Options(text, source, expect, positions, spans_at)
    try:
        fast = getattr(yaml, "CSafeLoader", None)
        if fast is not None:
            try:
                return _read(fast, options)
            except (yaml.YAMLError, Composer):
                pass  # PyYAML words what libyaml refused, or reads it
        _explain_refusal(text, source)
        return _read(yaml.SafeLoader, options)
    except (yaml.YAMLError, Composer):  # PyYAML's composer accepted it: not expected
        raise ConfigError("YAML syntax error: the file cannot be read",
                          location=source) from None
    except RecursionError:  # PyYAML's composer, wording a deep file's syntax error
        raise ConfigError("is nested too deeply", location=source) from None


def _read(loader_class: Any, options: Options) -> Read:
    loader = loader_class(options.text)
    try:
        try:
            return EventReader(loader, options).read()
        except Retry:
            pass  # an error: read again, recording positions to locate it
        loader.dispose()
        loader = loader_class(options.text)
        return EventReader(loader, options.locating()).read()
    finally:
        loader.dispose()


def _explain_refusal(text: str, source: str) -> None:
    """Raise the error PyYAML's own composer finds in ``text``, in the operator's words."""
    # Only for a file libyaml refused: `tokend exec` reads a good one without these.
    from tokend.config.syntax import TracingLoader, explain  # noqa: PLC0415 -- see above

    try:
        loader = TracingLoader(text)
    except yaml.YAMLError as exc:  # a character YAML does not allow: known by offset
        raise _character_error(text, source, exc) from None
    try:
        loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark, message = explain(text, exc, loader.last_scalar)
        where = "" if mark is None else f":{mark[0]}:{mark[1]}"
        raise ConfigError(message, location=f"{source}{where}") from None
    except yaml.YAMLError as exc:
        raise _character_error(text, source, exc) from None
    finally:
        loader.dispose()


def _character_error(text: str, source: str, exc: yaml.YAMLError) -> ConfigError:
    offset = getattr(exc, "position", None)
    where = ""
    if isinstance(offset, int):
        line = text.count("\n", 0, offset) + 1
        column = offset - text.rfind("\n", 0, offset)
        where = f":{line}:{column}"
    return ConfigError("YAML syntax error: the file holds a character YAML does not allow",
                       location=f"{source}{where}")
