"""The fast way to read config.yaml: plain data straight from the parser's events.

Recording where every key and value was written (what the walker in
:mod:`tokend.config.positions` does) costs most of a large file's load time and
memory, yet only an error message ever needs a position. So the file is read
here into plain data alone, from libyaml's event stream without building a
node tree; the walker runs only when a message needs a position, or when this
reader gives up.

It reads what config files hold: mappings, lists, scalars, anchors, aliases
and merge keys, with the walker's rules. Whatever the walker would refuse or
word an error about (duplicate keys, keys that are not strings, unknown tags,
recursive or undefined aliases, syntax errors), and whatever it might read
differently (deep nesting, a large alias expansion, a file libyaml refuses),
makes this reader give up with ``None``: the walker then reads the file and
says exactly what is wrong. tests/test_config.py checks that the two agree.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceStartEvent,
)
from yaml.nodes import ScalarNode

KeyPath = tuple[str | int, ...]
Records = list[tuple[KeyPath, str]]
"""Raw text of plain scalars YAML read as something other than text, by path below a value."""

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MAX_DEPTH = 64
_NO_KEY = object()
_MERGE_KEY = object()
_NO_RECORDS: Records = []


class _GiveUp(Exception):
    """The walker must read this file: it may refuse it, or read it differently."""


def read_plain(text: str, budget: int) -> tuple[dict[str, Any], dict[KeyPath, str]] | None:
    """``(data, plain)`` as the walker would return them, or ``None`` to let the walker read.

    ``budget`` is the number of values aliases may add, as for the walker.
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        return _Reader(loader, budget).read()
    except (_GiveUp, yaml.YAMLError, RecursionError):
        return None
    finally:
        loader.dispose()


class _Collection:
    """A mapping or list being read, with the plain-scalar records of what it holds so far."""

    __slots__ = ("anchor", "data", "key", "merges", "records", "start")

    def __init__(self, data: Any, anchor: str | None, start: int) -> None:
        self.data = data
        self.anchor = anchor
        self.start = start
        self.records: Records = []
        self.key: Any = _NO_KEY
        self.merges: list[tuple[Any, Records]] = []

    def add(self, value: Any, records: Records, scalar: bool) -> None:
        if type(self.data) is list:
            if value is _MERGE_KEY:
                raise _GiveUp
            if records:
                index = len(self.data)
                self.records.extend(((index, *path), text) for path, text in records)
            self.data.append(value)
        elif self.key is _NO_KEY:
            if not scalar or not (type(value) is str or value is _MERGE_KEY) or value in self.data:
                raise _GiveUp
            self.key = value
        else:
            key, self.key = self.key, _NO_KEY
            if value is _MERGE_KEY:
                raise _GiveUp
            if key is _MERGE_KEY:
                self.merges.append((value, records))
                return
            self.data[key] = value
            if records:
                self.records.extend(((key, *path), text) for path, text in records)

    def finish(self) -> tuple[Any, Records]:
        """The walker's merge rules: earlier sources win, explicit keys win over all."""
        if not self.merges:
            return self.data, self.records
        merged: dict[str, Any] = {}
        records: Records = []
        for value, found in self.merges:
            if type(value) is dict:
                sources = [(value, found)]
            elif type(value) is list and all(type(item) is dict for item in value):
                sources = [(item, [(path[1:], text) for path, text in found if path[0] == index])
                           for index, item in enumerate(value)]
            else:
                raise _GiveUp
            for source, source_records in sources:
                for key, item in source.items():
                    merged.setdefault(key, item)
                records += source_records
        data = {**{k: v for k, v in merged.items() if k not in self.data}, **self.data}
        return data, records + self.records


class _Reader:
    def __init__(self, loader: Any, budget: int) -> None:
        self._loader = loader
        self._budget = budget
        self._anchors: dict[str, tuple[Any, Records, int]] = {}
        self._open: set[str | None] = set()
        self._count = 0

    def read(self) -> tuple[dict[str, Any], dict[KeyPath, str]]:
        get = self._loader.get_event
        get()  # StreamStartEvent
        if not self._loader.check_event(yaml.DocumentStartEvent):
            raise _GiveUp  # an empty file: the walker says so
        get()
        data, records = self._node()
        get()  # DocumentEndEvent
        if type(data) is not dict or not self._loader.check_event(yaml.StreamEndEvent):
            raise _GiveUp
        return data, dict(records)

    def _node(self) -> tuple[Any, Records]:
        """One whole node, read without recursion; aliases are expanded into copies."""
        get = self._loader.get_event
        stack: list[_Collection] = []
        while True:
            event = get()
            kind = type(event)
            scalar = kind is ScalarEvent
            if scalar:
                value, records = self._scalar(event)
            elif kind is AliasEvent:
                value, records = self._alias(event.anchor)
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                mapping = kind is MappingStartEvent
                if event.tag not in (None, "!", _MAP if mapping else _SEQ) or len(
                        stack) >= _MAX_DEPTH:
                    raise _GiveUp
                self._anchor(event.anchor)
                stack.append(_Collection({} if mapping else [], event.anchor, self._count))
                self._count += 1
                continue
            else:  # the end of the innermost mapping or list
                done = stack.pop()
                value, records = done.finish()
                if done.anchor is not None:
                    self._open.discard(done.anchor)
                    self._anchors[done.anchor] = (value, records, self._count - done.start)
            if not stack:
                return value, records
            stack[-1].add(value, records, scalar)

    def _scalar(self, event: ScalarEvent) -> tuple[Any, Records]:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self._loader.resolve(ScalarNode, event.value, event.implicit)
        self._count += 1
        if tag == _STR:
            value: Any = event.value
            records = _NO_RECORDS
        elif tag == _MERGE:
            value, records = _MERGE_KEY, _NO_RECORDS
        else:
            try:
                value = self._loader.construct_object(ScalarNode(tag, event.value,
                                                                 style=event.style))
            except (yaml.YAMLError, ValueError, TypeError, KeyError, OverflowError):
                raise _GiveUp from None
            plain = not event.style and not isinstance(value, str)  # libyaml: "", PyYAML: None
            records = [((), event.value)] if plain else _NO_RECORDS
        if event.anchor is not None:
            self._anchor(event.anchor)
            self._open.discard(event.anchor)
            self._anchors[event.anchor] = (value, records, 1)
        return value, records

    def _anchor(self, name: str | None) -> None:
        """Note an anchor being defined; defining one twice is the walker's error to word."""
        if name is not None:
            if name in self._anchors or name in self._open:
                raise _GiveUp
            self._open.add(name)

    def _alias(self, anchor: str) -> tuple[Any, Records]:
        """A copy of the anchored value: the walker builds a fresh one at every alias too."""
        found = self._anchors.get(anchor)
        if found is None:  # undefined, or an alias inside its own anchor
            raise _GiveUp
        value, records, size = found
        self._budget -= size
        self._count += size
        if self._budget < 0:
            raise _GiveUp
        return _copy(value), records


def _copy(value: Any) -> Any:
    if type(value) is dict:
        return {key: _copy(item) for key, item in value.items()}
    if type(value) is list:
        return [_copy(item) for item in value]
    return value
