"""What the YAML reader works with: key paths, positions, frames, anchors, and what it returns.

Private to :mod:`tokend.config.reader` and the two modules of its one pass
over the parser's events (:mod:`~tokend.config.events`, :mod:`~tokend.config.aliases`).
"""

from __future__ import annotations

from typing import Any

KeyPath = tuple[str | int, ...]
Mark = tuple[int, int]
"""1-based (line, column)."""
Entry = tuple[KeyPath, int, Any]
"""A position (``VALUE_MARK``, ``KEY_MARK``) or raw text (``PLAIN``) recorded at a key path."""

MAX_ALIASED = 100_000
"""Values aliases may add beyond one per character of the file: anchors shared by every
token of a large file stay within it, a file of aliases repeating aliases does not."""
MAX_DEPTH = 500
"""Mappings and lists deeper than this are refused (as Python's recursion limit did before)."""
NO_KEY = object()
MERGE_KEY = object()
VALUE, SOURCE, SOURCES = 0, 1, 2
"""Frame roles: an ordinary value, a mapping merged by ``<<``, a list of such mappings."""
VALUE_MARK, KEY_MARK, PLAIN = 0, 1, 2


# Plain classes, not dataclasses: `tokend exec` reads the whole file with this reader at
# every start, and dataclasses (with inspect) would be a fifth of that start.


class Span:
    """Where the items of one block list start in the text: offsets of their lines."""

    __slots__ = ("column", "end", "starts")

    def __init__(self, column: int, starts: list[int], end: int) -> None:
        self.column = column
        """The column of every item's ``-`` (0-based)."""
        self.starts = starts
        self.end = end
        """The offset of the line after the last item (and its trailing comments)."""


class Read:
    """One reading of a YAML text."""

    __slots__ = ("aliased", "anchors", "data", "keys", "plain", "root", "root_mark", "shared",
                 "spans", "values")

    def __init__(self, data: Any, root: str, root_mark: Mark | None, *,
                 plain: dict[KeyPath, str] | None = None,
                 values: dict[KeyPath, Mark] | None = None,
                 keys: dict[KeyPath, Mark] | None = None,
                 spans: dict[tuple[str, ...], Span] | None = None, aliased: int = 0,
                 shared: bool = False, anchors: list[int] | None = None) -> None:
        self.data = data
        self.root = root
        """What the document is: ``"a mapping"``, ``"a list"``, ``"a single value"`` or
        ``"empty"``; ``data`` is ``None`` unless it is what was expected."""
        self.root_mark = root_mark
        self.plain = {} if plain is None else plain
        """Raw text of plain scalars YAML read as something other than text (``mode: 640``)."""
        self.values = {} if values is None else values
        self.keys = {} if keys is None else keys
        self.spans = {} if spans is None else spans
        self.aliased = aliased
        """Values added by aliases, charged against the budget."""
        self.shared = shared
        """Whether the text holds an anchor, an alias or a merge key."""
        self.anchors = [] if anchors is None else anchors
        """Where each anchor is defined (offsets into the text, in order)."""


class Options:
    """What one reading reads, and what it records."""

    __slots__ = ("expect", "positions", "source", "spans_at", "text")

    def __init__(self, text: str, source: str, expect: type = dict, positions: bool = False,
                 spans_at: tuple[str | None, ...] | None = None) -> None:
        self.text = text
        self.source = source
        self.expect = expect
        self.positions = positions
        self.spans_at = spans_at

    def locating(self) -> Options:
        return Options(self.text, self.source, self.expect, True, self.spans_at)


class Retry(Exception):
    """An error found while not recording positions: read again to locate it."""


class Composer(Exception):
    """A duplicate anchor, an undefined alias or a second document: PyYAML words it."""


class Anchor:
    __slots__ = ("entries", "mark", "raw", "rooted", "size", "value")

    def __init__(self, value: Any, mark: Mark, size: int, entries: list[Entry], *,
                 raw: str | None = None, rooted: bool = True) -> None:
        self.value = value
        self.mark = mark
        self.size = size
        """Values an alias of it adds (its root only when that was counted)."""
        self.entries = entries
        """Positions and plain records below it, by path relative to it."""
        self.raw = raw
        """A scalar's text, for a message about it as a key."""
        self.rooted = rooted
        """Whether its root counts as a value (a list merged by ``<<`` does not)."""


class Frame:
    """A mapping or list being read."""

    __slots__ = ("anchor", "count", "data", "flow", "key", "key_mark", "lines", "log_start",
                 "mark", "merged", "merges", "owner_mark", "path", "role", "span")

    def __init__(self, data: Any, path: KeyPath, *, mark: Any, anchor: str | None, role: int,
                 count: int, log_start: int) -> None:
        self.data = data
        self.path = path
        self.mark = mark
        self.anchor = anchor
        self.role = role
        self.count = count
        self.log_start = log_start
        self.key: Any = NO_KEY
        self.key_mark: Mark | None = None
        self.lines: dict[str, int] | None = None  # key -> line, when recording positions
        self.merges: list[Any] | None = None
        self.merged: list[Entry] | None = None
        self.owner_mark: Mark | None = None
        self.span: list[int] | None = None
        self.flow = False


def merge_into(top: Frame, value: Any, entries: list[Entry]) -> None:
    """What a ``<<`` of ``top`` brings: merged when ``top`` ends, under the keys it writes."""
    if top.merges is None or top.merged is None:
        top.merges, top.merged = [], []
    top.merges.append(value)
    top.merged += entries
    top.key = NO_KEY


def format_key_path(path: KeyPath) -> str:
    """``applications.payroll.tokens[1].scope``: how the operator reads a position in the file."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def mark_of(mark: Any) -> Mark:
    """A parser's 0-based mark as 1-based (line, column)."""
    return (mark.line + 1, mark.column + 1)
