"""The YAML reader's one pass over the parser's events: mappings, lists, keys, scalars.

:func:`tokend.config.reader.read_yaml` is the way in. :class:`EventReader`
builds plain data from the events without a node tree (what makes a large
file fast to read), refusing duplicate keys, keys that are not text and
unknown tags, and, when asked, records where each key and value was written,
where the items of some lists start, and where anchors are defined. What
repeats values (anchors, aliases, merge keys) and how errors are raised is in
:mod:`tokend.config.aliases`.

Two errors in one file are reported in file order: the first one written.
"""

from __future__ import annotations

from typing import Any

from yaml.events import (
    AliasEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from tokend.config.aliases import Repeats
from tokend.config.frames import (
    KEY_MARK,
    MAX_ALIASED,
    MAX_DEPTH,
    MERGE_KEY,
    NO_KEY,
    PLAIN,
    SOURCE,
    SOURCES,
    VALUE,
    VALUE_MARK,
    Anchor,
    Composer,
    Entry,
    Frame,
    KeyPath,
    Options,
    Read,
    Retry,
    Span,
    mark_of,
    merge_into,
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


class EventReader(Repeats):
    """One pass over the events of one document."""

    def __init__(self, loader: Any, options: Options) -> None:
        self._loader = loader
        self._text = text = options.text
        self._source = options.source
        self._expect = MappingStartEvent if options.expect is dict else SequenceStartEvent
        self._positions = options.positions
        self._spans_at = options.spans_at
        self._budget = MAX_ALIASED + len(text)
        self._log: list[Entry] = []
        self._anchors: dict[str, Anchor] = {}
        self._open: dict[str, Any] = {}
        self._count = 0
        self._shared = False
        self._anchored: list[int] = []
        self._spans: dict[tuple[str, ...], Span] = {}
        self._resolvers = loader.yaml_implicit_resolvers

    def read(self) -> Read:
        loader = self._loader
        loader.get_event()  # StreamStartEvent
        if loader.check_event(StreamEndEvent):
            return Read(None, "empty", None)
        loader.get_event()  # DocumentStartEvent
        first = loader.peek_event()
        kind = type(first)
        if kind is not self._expect:
            self._drain()
            root = ("a mapping" if kind is MappingStartEvent else
                    "a list" if kind is SequenceStartEvent else "a single value")
            return Read(None, root, mark_of(first.start_mark))
        data = self._node()
        loader.get_event()  # DocumentEndEvent
        if not loader.check_event(StreamEndEvent):
            raise Composer
        tables: tuple[dict[KeyPath, Any], ...] = ({}, {}, {})
        for path, kind_of, payload in self._log:
            tables[kind_of][path] = payload
        return Read(data, "a mapping" if type(data) is dict else "a list",
                    mark_of(first.start_mark), plain=tables[PLAIN], values=tables[VALUE_MARK],
                    keys=tables[KEY_MARK], spans=self._spans,
                    aliased=MAX_ALIASED + len(self._text) - self._budget, shared=self._shared,
                    anchors=self._anchored)

    def _node(self) -> Any:  # noqa: PLR0912 -- the loop over every event, inlined for speed
        """The root collection, read without recursion."""
        get = self._loader.get_event
        resolvers = self._resolvers
        fast = not self._positions  # text without anchor or tag is read here, the rest below
        stack: list[Frame] = []
        top: Any = None
        while True:
            event = get()
            kind = type(event)
            if kind is ScalarEvent:
                value = event.value
                plain_text = fast and event.tag is None and event.anchor is None and (
                    not event.implicit[0] or (value and value[:1] not in resolvers))
                if top.key is NO_KEY and type(top.data) is dict:
                    if not plain_text or value in top.data:
                        self._key(top, event)
                    else:
                        top.key = value
                elif plain_text and top.role == VALUE and top.key is not MERGE_KEY:
                    self._count += 1
                    if type(top.data) is list:
                        top.data.append(value)
                        top.span = None
                    else:
                        top.data[top.key] = value
                        top.key = NO_KEY
                else:
                    self._scalar(top, event)
            elif kind is AliasEvent:
                if top.key is NO_KEY and type(top.data) is dict:
                    self._alias_key(top, event)
                else:
                    self._alias(top, event)
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                top = self._start(top, event, kind, stack)
                stack.append(top)
            else:  # the end of the innermost mapping or list
                frame = stack.pop()
                value = self._finish(frame, event.start_mark)
                if not stack:
                    return value
                top = stack[-1]
                self._finished(top, frame, value)

    def _tag(self, event: Any) -> str:
        return scalar_tag(event, self._resolvers, self._loader)

    def _construct(self, tag: str, event: Any, path: KeyPath) -> Any:
        try:
            return scalar_value(self._loader, tag, event)
        except NOT_CONSTRUCTED:
            # The library's message would quote the value, which may be a secret.
            raise self._fail(event.start_mark, path, f"is not a valid {tag} value") from None

    def _key(self, top: Frame, event: Any) -> None:
        tag = self._tag(event)
        if event.anchor is not None:
            self._define(event.anchor, event.start_mark)
        if tag == MERGE:
            key: Any = MERGE_KEY
            self._shared = True
        else:
            key = event.value if tag == STR else self._construct(tag, event, top.path)
        if event.anchor is not None:
            self._anchors[event.anchor] = Anchor(key, event.start_mark, 1, [], raw=event.value)
        if key is MERGE_KEY:
            top.key = key
        else:
            self._set_key(top, key, event.value, event.start_mark)

    def _scalar(self, top: Frame, event: Any) -> None:
        tag = self._tag(event)
        if event.anchor is not None:
            self._define(event.anchor, event.start_mark)
        if top.key is MERGE_KEY or top.role == SOURCES:
            raise self._fail(event.start_mark, top.path, "a merge key (<<) can only merge mappings")
        path = (*top.path, len(top.data)) if type(top.data) is list else (*top.path, top.key)
        value = event.value if tag == STR else self._construct(tag, event, path)
        self._count += 1
        entries: list[Entry] = []
        if self._positions:
            self._log.append((path, VALUE_MARK, mark_of(event.start_mark)))
        if not event.style and not isinstance(value, str):  # plain: "" from libyaml
            self._log.append((path, PLAIN, event.value))
            entries = [((), PLAIN, event.value)]
        if event.anchor is not None:
            self._anchors[event.anchor] = Anchor(value, event.start_mark, 1, entries,
                                                  raw=event.value)
        top.span = None  # a list item that is not a mapping: its list gets no spans
        self._add(top, value)

    def _start(self, top: Frame | None, event: Any, kind: type, stack: list[Frame]) -> Frame:
        mapping = kind is MappingStartEvent
        if event.anchor is not None:
            self._define(event.anchor, event.start_mark)
            self._open[event.anchor] = event.start_mark
        path, role = self._place(top, event, mapping)
        if len(stack) >= MAX_DEPTH:
            if not self._positions:
                raise Retry
            self._drain()
            raise ConfigError("is nested too deeply", location=self._source)
        if role == VALUE and event.tag not in DEFAULT_TAGS[kind]:
            raise self._fail(event.start_mark, path,
                             f"uses the YAML tag {event.tag}, which tokend cannot read")
        counted = role != SOURCES
        self._count += counted
        if role == VALUE and self._positions:
            self._log.append((path, VALUE_MARK, mark_of(event.start_mark)))
        frame = Frame({} if mapping else [], path, mark=event.start_mark, anchor=event.anchor,
                      role=role, count=self._count - counted, log_start=len(self._log))
        frame.flow = bool(event.flow_style)
        if role == VALUE:
            frame.owner_mark = mark_of(event.start_mark) if self._positions else None
        else:
            frame.owner_mark = top.owner_mark  # type: ignore[union-attr]
        if self._spans_at is not None:
            self._span(top, frame, event, stack)
        return frame

    def _place(self, top: Frame | None, event: Any, mapping: bool) -> tuple[KeyPath, int]:
        """The path of a mapping or list that starts in ``top``, and its role there."""
        if top is None:
            return (), VALUE
        if top.key is NO_KEY and type(top.data) is dict:
            raise self._fail(event.start_mark, (*top.path, "?"),
                             "keys must be strings; quote this one")
        if top.role == SOURCES or top.key is MERGE_KEY:
            if top.role == SOURCES and not mapping:
                raise self._fail(event.start_mark, top.path,
                                 "a merge key (<<) can only merge mappings")
            self._shared = True
            return top.path, SOURCE if mapping else SOURCES
        return (*top.path, len(top.data)) if type(top.data) is list else (*top.path, top.key), VALUE

    def _span(self, top: Frame | None, frame: Frame, event: Any, stack: list[Frame]) -> None:
        """Note where each item of a list at ``spans_at`` starts, while that can be told."""
        if top is not None and top.span is not None:
            line = event.start_mark.index - event.start_mark.column
            dash = self._text[line:event.start_mark.index]
            column = len(dash) - len(dash.lstrip(" "))
            if type(frame.data) is dict and dash.strip(" ") == "-" and (
                    not top.span or column == top.span[0]):
                if not top.span:
                    top.span.append(column)
                top.span.append(line)
            else:
                top.span = None
        pattern = self._spans_at
        assert pattern is not None  # noqa: S101 -- only called when spans are asked for
        if type(frame.data) is list and len(frame.path) == len(pattern) and not frame.flow and (
                frame.anchor is None and frame.role == VALUE and all(
                    want is None or want == part for want, part in zip(pattern, frame.path,
                                                                       strict=True))
                and all(f.anchor is None and not f.flow and f.role == VALUE for f in stack)):
            frame.span = []

    def _finish(self, frame: Frame, end: Any) -> Any:
        data = frame.data
        if frame.merges:  # earlier sources win, keys written in the mapping win over all
            merged: dict[str, Any] = {}
            for value in frame.merges:
                for source in value if type(value) is list else (value,):
                    for key, item in source.items():
                        merged.setdefault(key, item)
            data = {**{k: v for k, v in merged.items() if k not in data}, **data}
            self._log[frame.log_start:frame.log_start] = frame.merged or []
        if frame.span:
            # The line where what follows the list starts (the file's end: wherever it is).
            after = end.index if end.index >= len(self._text) else end.index - end.column
            self._spans[tuple(str(part) for want, part in zip(
                self._spans_at or (), frame.path, strict=True) if want is None)] = Span(
                frame.span[0], frame.span[1:], after)
        if frame.anchor is not None:
            self._open.pop(frame.anchor)
            self._anchors[frame.anchor] = Anchor(
                data, frame.mark, self._count - frame.count, self._below(frame),
                rooted=frame.role != SOURCES)
        return data

    def _finished(self, top: Frame, frame: Frame, value: Any) -> None:
        """Put a finished mapping or list where it belongs: a value, or what ``<<`` merges."""
        if frame.role == VALUE:
            self._add(top, value)
            return
        if top.role == SOURCES:
            top.data.append(value)
            return
        merge_into(top, value, self._log[frame.log_start:])
        del self._log[frame.log_start:]
