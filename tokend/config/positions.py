"""YAML with positions: read the config file into plain data that remembers where each value was.

PyYAML's ``safe_load`` forgets line numbers, silently keeps the last of two
equal keys and makes every later error message vague. So the loader composes
the node tree itself and walks it, recording the ``line:col`` of every key and
value under its key path (``("applications", "payroll", "tokens", 1)``).
:class:`Problems` then turns any key path back into ``file:line:col`` and
gathers every error into one :class:`~tokend.errors.ConfigError`.

Walking costs most of a large file's load, and only errors need positions: a
file is read by :mod:`tokend.config.events` first, and walked only when that
reader gives up (the walker then words the error) or a message needs a position.
A file YAML itself refuses is described by :mod:`tokend.config.syntax`.

Messages never quote a value from the file: it might be a secret.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from tokend.config.events import KeyPath, read_plain
from tokend.config.syntax import TracingLoader, explain
from tokend.errors import ConfigError

Mark = tuple[int, int]

_MERGE = "tag:yaml.org,2002:merge"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
# Aliases can expand a tiny file exponentially ("billion laughs"). Only values reached again
# through an alias count, and a file may expand by as many values as it has characters plus
# this: anchors shared by every token of a large file stay within it, a bomb does not.
_MAX_ALIASED = 100_000
_MAX_ERRORS = 20
_T = TypeVar("_T")


def format_key_path(path: KeyPath) -> str:
    """``applications.payroll.tokens[1].scope``: how the operator reads a position in the file."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


@dataclass(frozen=True)
class Document:
    """The parsed file: plain data, and where every key and value was written (1-based)."""

    source: str
    data: dict[str, Any]
    plain: Mapping[KeyPath, str]
    """Raw text of unquoted scalars YAML did not read as text: tells ``mode: 640`` (decimal to
    YAML) from ``0640`` (octal). Text needs no record: its raw text is its value."""
    mode: int
    text: str = field(repr=False)

    @cached_property
    def _positions(self) -> tuple[Mapping[KeyPath, Mark], Mapping[KeyPath, Mark]]:
        """(values, keys): found by walking the file again, only once a message needs one."""
        walker = _Walker(self.source)
        walker.parse(self.text)
        return walker.values, walker.keys

    def mark(self, path: KeyPath, *, key: bool = False) -> Mark | None:
        """Where ``path`` (or, if it is not in the file, its nearest ancestor) was written."""
        values, keys = self._positions
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            found = (keys.get(prefix) if key else None) or values.get(prefix)
            if found is not None:
                return found
        return None

    def location(self, path: KeyPath, *, key: bool = False) -> str:
        """``file:line:col`` of ``path``; just the file when nothing better is known."""
        found = self.mark(path, key=key)
        return self.source if found is None else f"{self.source}:{found[0]}:{found[1]}"


class Problems:
    """Every error found in one document, raised together so one edit can fix them all."""

    def __init__(self, document: Document) -> None:
        self._document = document
        self._found: list[tuple[Mark, ConfigError]] = []
        self._seen: set[str] = set()

    def add(
        self,
        path: KeyPath,
        message: str,
        *,
        key: bool = False,
        anchor: KeyPath | None = None,
        location: str | None = None,
    ) -> None:
        """Record an error about ``path``, located at ``anchor`` (default ``path``) in the file.

        ``key`` points at the key rather than its value (unknown or duplicate
        keys); ``location`` replaces the file position for values from elsewhere
        (an environment variable).
        """
        where = path if anchor is None else anchor
        mark = (0, 0) if location is not None else self._document.mark(where, key=key) or (0, 0)
        error = ConfigError(
            message,
            location=location or self._document.location(where, key=key),
            key_path=format_key_path(path),
        )
        if str(error) not in self._seen:
            self._seen.add(str(error))
            self._found.append((mark, error))

    def check(self) -> None:
        """Raise one ConfigError whose first line is the first error in the file, if any."""
        if not self._found:
            return
        ordered = [error for _, error in sorted(self._found, key=lambda item: item[0])]
        first, rest = ordered[0], [str(error) for error in ordered[1:_MAX_ERRORS]]
        if len(ordered) > _MAX_ERRORS:
            rest.append(f"... and {len(ordered) - _MAX_ERRORS} more errors")
        message = "\n".join([first.message, *rest])
        raise ConfigError(message, location=first.location, key_path=first.key_path)


def read_document(path: Path) -> Document:
    """Read and parse ``path``; raise ConfigError for anything that is not a YAML mapping."""
    source = str(path)
    try:
        with path.open("rb") as stream:
            raw = stream.read()
            mode = os.fstat(stream.fileno()).st_mode
    except FileNotFoundError:
        raise ConfigError("no such file", location=source) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", location=source) from None
    except PermissionError:
        raise ConfigError("cannot be read: permission denied", location=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror}", location=source) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise ConfigError("is not UTF-8 text", location=f"{source}:{line}:{column}") from None
    found = read_plain(text, _alias_budget(text))
    if found is None:
        walker = _Walker(source)
        found = walker.parse(text), walker.plain
    return Document(source, *found, mode, text)


def _alias_budget(text: str) -> int:
    return _MAX_ALIASED + len(text)


def _mark(node: Node) -> Mark:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Walker:
    """Turns a composed YAML node tree into plain data, recording positions on the way."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.values: dict[KeyPath, Mark] = {}
        self.keys: dict[KeyPath, Mark] = {}
        self.plain: dict[KeyPath, str] = {}
        self._active: set[int] = set()
        self._visited: set[int] = set()
        self._budget = 0
        self._alias: tuple[KeyPath, Mark | None] | None = None
        self._loader: yaml.SafeLoader | None = None

    def parse(self, text: str) -> dict[str, Any]:
        loader: yaml.SafeLoader | None = None
        self._budget = _alias_budget(text)
        try:
            loader, root = _compose(text, self.source)
            self._loader = loader
            if root is None:
                raise ConfigError("is empty; it needs at least an applications: mapping",
                                  location=self.source)
            if not isinstance(root, MappingNode):
                kind = "a list" if isinstance(root, SequenceNode) else "a single value"
                raise self._error(root, (), f"must be a mapping of settings "
                                            f"(state_dir, defaults, applications), not {kind}")
            data = self._walk(root, ())
        except yaml.YAMLError as exc:
            # ReaderError (a control character) knows an offset, not a line.
            offset = getattr(exc, "position", None)
            where = f":{_line_col(text, offset)}" if isinstance(offset, int) else ""
            raise ConfigError("YAML syntax error: the file holds a character YAML does not allow",
                              location=f"{self.source}{where}") from None
        except RecursionError:
            raise ConfigError("is nested too deeply", location=self.source) from None
        finally:
            if loader is not None:
                loader.dispose()
        assert isinstance(data, dict)  # noqa: S101 -- the root was checked to be a mapping
        return data

    def _error(self, node: Node, path: KeyPath, message: str) -> ConfigError:
        line, column = _mark(node)
        return ConfigError(message, location=f"{self.source}:{line}:{column}",
                           key_path=format_key_path(path))

    @contextmanager
    def _enter(self, node: Node, path: KeyPath) -> Iterator[None]:
        """Guard against aliases that contain themselves."""
        if id(node) in self._active:
            raise self._error(node, path, "an alias refers to a mapping or list that contains it")
        self._active.add(id(node))
        try:
            yield
        finally:
            self._active.discard(id(node))

    def _charge(self, node: Node) -> None:
        """Count a node met a second time (through an alias) against the alias budget."""
        if id(node) not in self._visited:
            self._visited.add(id(node))
            return
        self._budget -= 1
        if self._budget < 0:
            raise self._too_many()

    def _through_alias(self, where: KeyPath, mark: Mark | None, walk: Callable[[], _T]) -> _T:
        """Walk what an alias repeats, remembering where the alias itself is written.

        The copy's key paths lead through the expansion, which the operator
        cannot find in the file; an error about the expansion names ``where``.
        """
        self._alias = (where, mark)
        try:
            return walk()
        finally:
            self._alias = None

    def _too_many(self) -> ConfigError:
        where, mark = self._alias or ((), None)
        return ConfigError(
            f"its aliases expand to more than {_MAX_ALIASED:,} values, which tokend refuses "
            "(aliases that repeat other aliases grow exponentially)",
            location=self.source if mark is None else f"{self.source}:{mark[0]}:{mark[1]}",
            key_path=format_key_path(where))

    def _walk(self, node: Node, path: KeyPath) -> Any:
        if self._alias is None and id(node) in self._visited:
            # An alias: a mapping value is found by its key, a list item by its list.
            key = isinstance(path[-1], str)
            where = path if key else path[:-1]
            mark = self.keys.get(where) if key else self.values.get(where)
            return self._through_alias(where, mark, partial(self._walk, node, path))
        self._charge(node)
        self.values[path] = _mark(node)
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        with self._enter(node, path):
            if isinstance(node, SequenceNode) and node.tag == _SEQ:
                return [self._walk(item, (*path, index)) for index, item in enumerate(node.value)]
            if isinstance(node, MappingNode) and node.tag == _MAP:
                return self._mapping(node, path)
            raise self._error(node, path, f"uses the YAML tag {node.tag}, which tokend cannot read")

    def _scalar(self, node: ScalarNode, path: KeyPath) -> Any:
        value = self._construct(node, path)
        if not node.style and not isinstance(value, str):  # plain: "" from libyaml
            self.plain[path] = node.value
        return value

    def _construct(self, node: ScalarNode, path: KeyPath) -> Any:
        assert self._loader is not None  # noqa: S101 -- only called from parse()
        try:
            return self._loader.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError, KeyError, OverflowError):
            # The library's message would quote the value, which may be a secret.
            raise self._error(node, path, f"is not a valid {node.tag} value") from None

    def _mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.update(
                    (key, value) for key, value in self._merge(value_node, path).items()
                    if key not in merged
                )
        result: dict[str, Any] = {}
        seen: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self._key(key_node, path)
            if key in seen:
                first = _mark(seen[key])[0]
                raise self._error(key_node, (*path, key),
                                  f"duplicate key (first written on line {first})")
            seen[key] = key_node
            self.keys[(*path, key)] = _mark(key_node)
            result[key] = self._walk(value_node, (*path, key))
        return {**{k: v for k, v in merged.items() if k not in result}, **result}

    def _merge(self, node: Node, path: KeyPath) -> dict[str, Any]:
        """``<<: *shared`` or ``<<: [*a, *b]``: earlier mappings win, explicit keys win over all."""
        sources = node.value if isinstance(node, SequenceNode) else [node]
        result: dict[str, Any] = {}
        for source in sources:
            if not isinstance(source, MappingNode):
                raise self._error(source, path, "a merge key (<<) can only merge mappings")
            merge = partial(self._merge_one, source, path)
            merged = (self._through_alias(path, self.values.get(path), merge)
                      if self._alias is None and id(source) in self._visited else merge())
            for key, value in merged.items():
                result.setdefault(key, value)
        return result

    def _merge_one(self, source: MappingNode, path: KeyPath) -> dict[str, Any]:
        self._charge(source)
        with self._enter(source, path):
            return self._mapping(source, path)

    def _key(self, node: Node, path: KeyPath) -> str:
        key = self._construct(node, path) if isinstance(node, ScalarNode) else None
        if not isinstance(key, str):
            shown = node.value if isinstance(node, ScalarNode) else "?"
            raise self._error(node, (*path, shown), "keys must be strings; quote this one")
        return key


def _compose(text: str, source: str) -> tuple[Any, Node | None]:
    """The node tree, composed by libyaml when present (five times faster than PyYAML).

    libyaml words its errors differently from PyYAML and refuses a few edge
    cases PyYAML reads, so any file it rejects is composed again by PyYAML:
    what a file means and how its errors read do not depend on libyaml.
    """
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        loader = fast(text)
        try:
            return loader, loader.get_single_node()
        except yaml.YAMLError:
            loader.dispose()
    slow = TracingLoader(text)
    try:
        return slow, slow.get_single_node()
    except yaml.MarkedYAMLError as exc:
        slow.dispose()
        mark, message = explain(text, exc, slow.last_scalar)
        where = "" if mark is None else f":{mark[0]}:{mark[1]}"
        raise ConfigError(message, location=f"{source}{where}") from None
    except BaseException:
        slow.dispose()
        raise


def _line_col(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - text.rfind("\n", 0, offset)
    return f"{line}:{column}"
