"""The text side of a reread: which lines an edit changed, and whether the items of a
``tokens:`` list read on their own exactly as they read in place.

Kept apart from :mod:`tokend.config.reread` (which decides what to validate again
and builds the specs) because it only compares and slices text: it knows nothing of
the schema. Every doubt raises :class:`Stale`, and the caller loads the whole file.
"""

from __future__ import annotations

import re
from typing import Any

from tokend.config.reader import KeyPath, Span, read_yaml

_BREAKS = ("\x85", "\u2028", "\u2029")  # line breaks to YAML, not to a regex's ^ and $


class Stale(Exception):
    """This load could differ from a full one: load the whole file."""


def shifted(span: Span, delta: int) -> Span:
    """``span`` moved by ``delta`` characters: an edit before it grew or shrank the file."""
    return Span(span.column, [at + delta for at in span.starts], span.end + delta)


def item_starts(segment: str, column: int) -> list[int]:
    """Where the items of ``segment`` start: at a line whose ``-`` is in ``column``."""
    starts = [match.start() for match in re.finditer(rf"^ {{{column}}}-(?: |\r?$)", segment,
                                                         re.MULTILINE)]
    if segment.strip() and starts[:1] != [0]:
        raise Stale
    return starts


def read_items(run: str, starts: list[int], source: str) -> tuple[list[Any], dict[KeyPath, str]]:
    """The items of ``run``, read on their own, if that reads them as they read in place.

    It does when every line is blank, a comment, an item's ``-`` at the list's
    column or indented deeper (nothing in an item then reaches outside it), the
    items start where their ``-`` lines say, and no anchor, alias or merge key
    ties them to the rest of the file.
    """
    column = len(run) - len(run.lstrip(" "))
    text = run.replace("\r\n", "\n")
    if "\r" in text or (not text.isascii() and any(mark in text for mark in _BREAKS)) or (
            re.search(rf"^(?! {{{column + 1}}}| {{{column}}}-(?: |$)| *(?:#|$))", text,
                      re.MULTILINE)):
        raise Stale
    found = read_yaml(run, source, expect=list, spans_at=())
    span = found.spans.get(())
    if found.data is None or found.shared or span is None or span.starts != starts:
        raise Stale
    return found.data, found.plain


def changed_lines(old: str, new: str) -> tuple[int, int, int] | None:
    """``(start, old_end, new_end)``: the whole lines of ``old`` that ``new`` replaces."""
    if old == new:
        return None
    start = _common_prefix(old, new)
    start = old.rfind("\n", 0, start) + 1
    cap = min(len(old), len(new)) - start
    old_end = len(old) - _common_suffix(old, new, cap)
    new_end = old_end + len(new) - len(old)
    if (old_end > start and old[old_end - 1] != "\n") or (
            new_end > start and new[new_end - 1] != "\n"):  # a line both texts end alike
        after = old.find("\n", old_end)
        old_end = len(old) if after < 0 else after + 1
    return start, old_end, old_end + len(new) - len(old)


_BLOCK = 4096


def _common_prefix(a: str, b: str) -> int:
    size = min(len(a), len(b))
    at = 0
    while at < size and a[at:at + _BLOCK] == b[at:at + _BLOCK]:
        at += _BLOCK
    while at < size and a[at] == b[at]:
        at += 1
    return min(at, size)


def _common_suffix(a: str, b: str, cap: int) -> int:
    """How many characters ``a`` and ``b`` end with alike, at most ``cap``."""
    length = 0
    while length + _BLOCK <= cap and a[len(a) - length - _BLOCK:len(a) - length] == b[
            len(b) - length - _BLOCK:len(b) - length]:
        length += _BLOCK
    while length < cap and a[len(a) - length - 1] == b[len(b) - length - 1]:
        length += 1
    return length
