"""What the YAML reader works with: key paths, positions, frames, anchors, and what it returns.

Private to :mod:`tokend.config.reader` and the two modules of its one pass
over the parser's events (:mod:`~tokend.config.events`, :mod:`~tokend.config.aliases`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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


@dataclass(frozen=True)
class Span:
    """Where the items of one block list start in the text: offsets of their lines."""

    column: int
    """The column of every item's ``-`` (0-based)."""
    starts: list[int]
    end: int
    """The offset of the line after the last item (and its trailing comments)."""


@dataclass
class Read:
    """One reading of a YAML text."""

    data: Any
    root: str
    """What the document is: ``"a mapping"``, ``"a list"``, ``"a single value"`` or ``"empty"``;
    ``data`` is ``None`` unless it is what was expected."""
    root_mark: Mark | None
    plain: dict[KeyPath, str] = field(default_factory=dict)
    """Raw text of plain scalars YAML read as something other than text (``mode: 640``)."""
    values: dict[KeyPath, Mark] = field(default_factory=dict)
    keys: dict[KeyPath, Mark] = field(default_factory=dict)
    spans: dict[tuple[str, ...], Span] = field(default_factory=dict)
    aliased: int = 0
    """Values added by aliases, charged against the budget."""
    shared: bool = False
    """Whether the text holds an anchor, an alias or a merge key."""
    anchors: list[int] = field(default_factory=list)
    """Where each anchor is defined (offsets into the text, in order)."""


@dataclass(frozen=True)
class Options:
    """What one reading reads, and what it records."""

    text: str
    source: str
    expect: type = dict
    positions: bool = False
    spans_at: tuple[str | None, ...] | None = None

    def locating(self) -> Options:
        return replace(self, positions=True)


class Retry(Exception):
    """An error found while not recording positions: read again to locate it."""


class Composer(Exception):
    """A duplicate anchor, an undefined alias or a second document: PyYAML words it."""


@dataclass
class Anchor:
    value: Any
    mark: Mark
    size: int
    """Values an alias of it adds (its root only when that was counted)."""
    entries: list[Entry]
    """Positions and plain records below it, by path relative to it."""
    raw: str | None = None
    """A scalar's text, for a message about it as a key."""
    rooted: bool = True
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
