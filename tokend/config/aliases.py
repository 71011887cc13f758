"""The part of the YAML reader's pass that repeats values: anchors, aliases, merge keys.

Each alias adds its anchor's value where it stands (shared, since nothing
mutates it) and the positions recorded under the anchor, so an error about a
value an alias brought points where that value is written. A merge key
(``<<``) adds the keys of the mappings it names that the mapping does not write
itself, earlier mappings first. Every value an alias or a merge adds is charged
to a budget of ``MAX_ALIASED`` plus one per character of the file: a "billion
laughs" file is refused where its aliases are written.

Errors are raised here too, once the rest of the file is read: a syntax
error anywhere is reported before any other, as PyYAML's composer would.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent, DocumentEndEvent, StreamEndEvent

from tokend.config.frames import (
    KEY_MARK,
    MAX_ALIASED,
    MERGE_KEY,
    NO_KEY,
    SOURCES,
    VALUE_MARK,
    Anchor,
    Composer,
    Entry,
    Frame,
    KeyPath,
    Mark,
    Retry,
    format_key_path,
    mark_of,
    merge_into,
)
from tokend.config.scalars import MERGE
from tokend.errors import ConfigError


class Repeats:
    """Anchors, aliases and merges of one reading, and how its errors are raised."""

    _loader: Any
    _source: str
    _positions: bool
    _budget: int
    _count: int
    _shared: bool
    _log: list[Entry]
    _anchors: dict[str, Anchor]
    _open: dict[str, Any]
    """Anchors of the mappings and lists being read, with their marks."""
    _anchored: list[int]

    def _alias_key(self, top: Frame, event: Any) -> None:
        """An alias as a key: the anchored value must be text, as any key."""
        self._shared = True
        anchor = self._anchors.get(event.anchor)
        if anchor is None and event.anchor not in self._open:
            raise Composer
        if anchor is None or anchor.raw is None:  # a mapping or list
            mark = self._open[event.anchor] if anchor is None else anchor.mark
            raise self._fail(mark, (*top.path, "?"), "keys must be strings; quote this one")
        if anchor.value is MERGE_KEY:
            top.key = MERGE_KEY
        else:
            self._set_key(top, anchor.value, anchor.raw, anchor.mark)

    def _set_key(self, top: Frame, key: Any, raw: str, mark: Any) -> None:
        if not isinstance(key, str):
            raise self._fail(mark, (*top.path, raw), "keys must be strings; quote this one")
        if not self._positions:
            if key in top.data:
                raise Retry
            top.key = key
            return
        if top.lines is None:
            top.lines = {}
        if key in top.lines:
            raise self._fail(mark, (*top.path, key),
                             f"duplicate key (first written on line {top.lines[key]})")
        top.key, top.key_mark = key, mark_of(mark)
        top.lines[key] = top.key_mark[0]
        self._log.append(((*top.path, key), KEY_MARK, top.key_mark))

    def _add(self, top: Frame, value: Any) -> None:
        if type(top.data) is list:
            top.data.append(value)
        else:
            top.data[top.key] = value
            top.key = NO_KEY

    def _define(self, name: str, mark: Any) -> None:
        if name in self._anchors or name in self._open:
            raise Composer  # a duplicate anchor: PyYAML's composer words it
        self._shared = True
        self._anchored.append(mark.index)

    def _alias(self, top: Frame, event: Any) -> None:
        """A copy of the anchored value where the alias stands: positions and all."""
        self._shared = True
        anchor = self._anchors.get(event.anchor)
        merge = top.key is MERGE_KEY or top.role == SOURCES
        in_list = type(top.data) is list and not merge
        path = top.path if merge else (*top.path, len(top.data)) if in_list else (
            *top.path, top.key)
        if anchor is None:
            if event.anchor not in self._open:
                raise Composer  # an undefined alias
            raise self._fail(self._open[event.anchor], path,
                             "an alias refers to a mapping or list that contains it")
        if merge:
            self._merge_alias(top, anchor)
            return
        if anchor.value is MERGE_KEY:
            raise self._fail(anchor.mark, path, f"is not a valid {MERGE} value")
        # An error about the expansion names the key or list that holds the alias.
        if in_list:
            self._charge(anchor.size, top.path, top.owner_mark)
        else:
            self._charge(anchor.size, path, top.key_mark)
        self._count += anchor.size
        if self._positions:
            self._log.append((path, VALUE_MARK, mark_of(anchor.mark)))
        self._log += [((*path, *below), kind, payload) for below, kind, payload in anchor.entries]
        top.span = None
        self._add(top, anchor.value)

    def _merge_alias(self, top: Frame, anchor: Anchor) -> None:
        """``<<: *name``, or ``*name`` in ``<<: [...]``: a mapping, or a list of mappings."""
        value = anchor.value
        entries = anchor.entries
        size = anchor.size
        if type(value) is list and top.role != SOURCES:
            for index, item in enumerate(value):
                if type(item) is not dict:
                    where = next((payload for below, kind, payload in entries
                                  if below == (index,) and kind == VALUE_MARK), None)
                    raise self._fail(where, top.path, "a merge key (<<) can only merge mappings")
            # The list itself is no value of the mapping: its items' keys are.
            entries = [(below[1:], kind, payload) for below, kind, payload in entries
                       if len(below) > 1]
            size -= anchor.rooted
        elif type(value) is not dict:
            raise self._fail(anchor.mark, top.path, "a merge key (<<) can only merge mappings")
        self._charge(size, top.path, top.owner_mark)
        self._count += size
        moved = [((*top.path, *below), kind, payload) for below, kind, payload in entries]
        if top.role == SOURCES:
            self._log += moved
            top.data.append(value)
        else:
            merge_into(top, value, moved)

    def _charge(self, size: int, where: KeyPath, mark: Mark | None) -> None:
        """Count what an alias adds against the budget; a bomb is refused where it is written."""
        self._budget -= size
        if self._budget >= 0:
            return
        if not self._positions:
            raise Retry
        error = ConfigError(
            f"its aliases expand to more than {MAX_ALIASED:,} values, which tokend refuses "
            "(aliases that repeat other aliases grow exponentially)",
            location=self._source if mark is None else f"{self._source}:{mark[0]}:{mark[1]}",
            key_path=format_key_path(where))
        self._drain()
        raise error

    def _below(self, frame: Frame) -> list[Entry]:
        """What an anchored mapping or list holds, by path relative to it.

        The mappings of an anchored ``<<`` list were read without their index, as
        merged: a copy of that list has no positions of its own, and an error in
        it is located where the alias is (the only loss of a rare construct).
        """
        if frame.role == SOURCES:
            return []
        depth = len(frame.path)
        return [(path[depth:], kind, payload)
                for path, kind, payload in self._log[frame.log_start:]]

    def _fail(self, mark: Any, path: KeyPath, message: str) -> Exception:
        """The error to raise: located once positions are recorded, the rest of the file read."""
        if not self._positions:
            return Retry()
        if mark is not None and not isinstance(mark, tuple):
            mark = mark_of(mark)
        location = self._source if mark is None else f"{self._source}:{mark[0]}:{mark[1]}"
        error = ConfigError(message, location=location, key_path=format_key_path(path))
        self._drain()
        return error

    def _drain(self) -> None:
        """Read the rest of the file: a syntax error anywhere is reported before any other."""
        names = set(self._anchors) | set(self._open)
        loader = self._loader
        try:
            while True:
                event = loader.get_event()
                kind = type(event)
                if kind is AliasEvent:
                    if event.anchor not in names:
                        raise Composer
                elif kind is DocumentEndEvent:
                    if not loader.check_event(StreamEndEvent):
                        raise Composer
                elif kind is StreamEndEvent:
                    return
                elif getattr(event, "anchor", None) is not None:
                    if event.anchor in names:
                        raise Composer
                    names.add(event.anchor)
        except yaml.YAMLError:
            raise Composer from None
