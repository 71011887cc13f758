"""YAML syntax errors in the operator's words, at the line the operator must fix.

PyYAML words its errors for people who know its grammar (``expected <block
end>, but found '?'``) and often points past the mistake: a key without its
colon is noticed on the next line, an unclosed ``[`` at the end of the file.
:func:`explain` turns the common ones into a plain sentence placed on the line
to edit; anything it does not recognise keeps PyYAML's words and position.

Only the parser's error and the file's text are used, plus the last scalar the
parser took (:class:`TracingLoader`): a mistake found after a value often lies
in that value, a quote never closed or a line YAML read as its continuation.
Messages never quote the file: a value may be a secret.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.tokens import ScalarToken

Mark = tuple[int, int]
"""1-based (line, column)."""
Found = tuple[Mark | None, str]

_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what PyYAML counts as a line break
_GLUED = re.compile(r"[^\s:#'\"]+:\S")  # key:value, the space after the colon forgotten
_KEY_LINE = re.compile(r"""(?:"[^"]*"|'[^']*'|[^\s#'"][^#]*?):(?:\s|$)""")
_RESERVED = re.compile(r"found character ('.') that cannot start any token"
                       r"|expected the node content, but found ('[]},]')")
_FLOW = re.compile(r"expected ',' or '([]}])', but got (.+)")
_CLOSERS = {"]": "this list has no closing ']'", "}": "this mapping has no closing '}'"}
_ITEMS = {"'<scalar>'", "'['", "'{'", "'<alias>'", "'<anchor>'", "'<tag>'"}
_QUOTED = ('"', "'")
_NO_COLON = "this line needs a ':' after its key, as in key: value"
_ITEM_FOR_KEY = ("a list item ('- ') cannot stand where a key is expected; remove the '- ', or "
                 "put it under a key that holds a list")

_FIXED: tuple[tuple[str, str, bool, str], ...] = (
    ("context", "while scanning a quoted scalar", True, "this quoted value has no closing quote"),
    ("context", "while scanning an alias", True,
     "'*' starts an alias and must be followed by an anchor's name; put the value in quotes if "
     "it is meant literally"),
    ("context", "while scanning an anchor", True,
     "'&' starts an anchor and must be followed by a name; put the value in quotes if it is "
     "meant literally"),
    ("context", "while scanning a block scalar", True,
     "'|' and '>' start a block of text and must end their line; put the value in quotes if "
     "it is meant literally"),
    ("context", "found duplicate anchor", False,
     "this anchor's name is already used on line {line}; give each anchor a name of its own"),
    ("context", "expected a single document", False,
     "a second YAML document starts here, but a config file holds one; remove this '---' or "
     "what follows it"),
    ("problem", "sequence entries are not allowed here", False,
     "a list item ('- ') cannot start on the line of its key; put it on the next line, indented"),
    ("problem", "found undefined alias", False,
     "this alias (*name) refers to no anchor (&name) defined above it"),
    ("problem", "expected <block end>, but found '-'", False, _ITEM_FOR_KEY),
    ("problem", "expected <block end>, but found '<block sequence start>'", False, _ITEM_FOR_KEY),
)
"""(field, how it starts, whether to point where the construct starts, message)."""


class TracingLoader(yaml.SafeLoader):
    """PyYAML's safe loader, remembering the last scalar the parser took."""

    last_scalar: ScalarToken | None = None

    def get_token(self) -> Any:
        token = super().get_token()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        if isinstance(token, ScalarToken):
            self.last_scalar = token
        return token


@dataclass(frozen=True)
class _Error:
    """A PyYAML error, with the file's lines and the last scalar read before it."""

    problem: str
    context: str
    at: Mark  # where PyYAML noticed the problem
    start: Mark | None  # where the construct it was reading starts
    lines: list[str]
    last: ScalarToken | None

    def line(self, number: int) -> str:
        return self.lines[number - 1]

    def quoted_last(self) -> bool:
        return self.last is not None and self.last.style in _QUOTED


def explain(text: str, error: yaml.MarkedYAMLError, last: ScalarToken | None) -> Found:
    """Where to look and what is wrong, for an error PyYAML raised reading ``text``."""
    problem, context = error.problem or "", error.context or ""
    at, start = _mark(error.problem_mark), _mark(error.context_mark)
    if at is not None:
        found = _Error(problem, context, at, start, _BREAK.split(text), last)
        for rule in _RULES:
            answer = rule(found)
            if answer is not None:
                return answer
    return at or start, f"YAML syntax error: {problem or context}"


def _runs_on(error: _Error) -> Found | None:
    """A quoted value ending on the line of the mistake, begun lines earlier: a lost quote."""
    last = error.last
    if last is None or not error.quoted_last() or not (
            last.start_mark.line < last.end_mark.line == error.at[0] - 1):
        return None
    return (_position(last.start_mark),
            f"this quoted value runs on to line {error.at[0]}: is its closing quote missing?")


def _fixed(error: _Error) -> Found | None:
    for field, text, at_start, message in _FIXED:
        if getattr(error, field).startswith(text):
            where = error.start if at_start else error.at
            return where, message.format(line=(error.start or error.at)[0])
    return None


def _no_colon(error: _Error) -> Found | None:
    """PyYAML notices a key without its colon on the next line; blame the key's line."""
    if error.problem != "could not find expected ':'" or error.start is None:
        return None
    if _GLUED.match(error.line(error.start[0]), error.start[1] - 1):
        return error.start, "this line needs a space after the ':' of its key, as in key: value"
    return error.start, _NO_COLON


def _flow(error: _Error) -> Found | None:
    """An unclosed ``[`` or ``{`` is noticed where the file or its line ends."""
    flow = _FLOW.fullmatch(error.problem)
    if flow is None or error.start is None:
        return None
    if flow[2] == "'<stream end>'" or error.at[0] != error.start[0]:
        return error.start, _CLOSERS[flow[1]]
    return (error.at, "a ',' is missing before this item") if flow[2] in _ITEMS else None


def _colon(error: _Error) -> Found | None:
    """A ``: `` YAML cannot take as a key: in a value, or ending a line read as a continuation.

    A plain value goes on over every following line indented deeper than its
    key, so a key indented too far, or a line missing its colon, is noticed
    only at the next colon: the scalar the parser last took says which.
    """
    if error.problem != "mapping values are not allowed here":
        return None
    last = error.last
    if last is None or last.start_mark.line == error.at[0] - 1:
        return error.at, "a value that holds ': ' must be put in quotes"
    begun = _position(last.start_mark)
    if _starts_line(error, begun):
        return begun, _NO_COLON
    line = error.line(error.at[0])
    return _misaligned(error, (error.at[0], len(line) - len(line.lstrip(" ")) + 1))


def _document_end(error: _Error) -> Found | None:
    """YAML took the lines above for the file's whole content, so more content cannot follow.

    Either the first line lacks its colon (the file would be that one value)
    or the first key is indented, so that keys at the first column end it.
    """
    if not error.problem.startswith("expected '<document start>'"):
        return None
    last = error.last
    if last is not None and last.style is None and _starts_line(error,
                                                                _position(last.start_mark)):
        return _position(last.start_mark), _NO_COLON
    for number, line in enumerate(error.lines, 1):
        if line.strip() and not line.lstrip().startswith(("#", "---", "%")):
            indent = len(line) - len(line.lstrip(" "))
            if not indent:
                break
            return (number, indent + 1), (f"the file's first key is indented by "
                                          f"{_spaces(indent)}; top-level keys start at the "
                                          "beginning of the line")
    return None


def _tab(error: _Error) -> Found | None:
    if error.problem != "found character '\\t' that cannot start any token":
        return None
    if error.line(error.at[0])[:error.at[1] - 1].strip(" \t-"):
        return error.at, "a tab cannot stand here; use spaces"
    return error.at, "this line is indented with a tab; YAML indents with spaces only"


def _reserved(error: _Error) -> Found | None:
    """``@``, a backtick or a closing bracket cannot start a plain value."""
    reserved = _RESERVED.fullmatch(error.problem)
    if reserved is None:
        return None
    character = reserved[1] or reserved[2]
    return error.at, f"a value cannot start with {character}; put the value in quotes"


def _escape(error: _Error) -> Found | None:
    if not error.problem.startswith(("found unknown escape character", "expected escape seq")):
        return None
    backslash = error.line(error.at[0]).rfind("\\", 0, error.at[1] - 1)
    return ((error.at[0], backslash + 1) if backslash >= 0 else error.at,
            "a backslash in double quotes starts an escape such as \\n; write \\\\ for a "
            "backslash, or use single quotes")


def _block_end(error: _Error) -> Found | None:
    """Something where a mapping's next key (or its end) must come."""
    found = error.problem.removeprefix("expected <block end>, but found ")
    if found == error.problem:
        return None
    if found in ("'?'", "'<block mapping start>'"):
        return _misaligned(error, error.at)
    if found == "'<scalar>'" and error.quoted_last() and (
            error.last is not None and error.last.end_mark.line == error.at[0] - 1):
        return error.at, ("this value goes on after its closing quote; put all of it inside the "
                          "quotes")
    if _starts_line(error, error.at):
        return error.at, ("this line holds no key: write key: value, or start it with '#' if it "
                          "is a comment")
    return error.at, "this text follows a complete value; remove it, or quote the whole value"


def _misaligned(error: _Error, at: Mark) -> Found:
    """A key indented unlike the keys beside it: name both indentations."""
    indent = at[1] - 1
    for number in range(at[0] - 1, 0, -1):
        line = error.line(number)
        key = _key_column(line)
        if _KEY_LINE.match(line, key) is None:
            continue
        if line[key] == "-":  # "-key:": the list item lacks its space
            return (number, key + 1), "a list item needs a space after its '-'"
        if key != indent:
            return at, (f"this key is indented by {_spaces(indent)} and the key above it by "
                        f"{key}: the keys of one mapping must line up")
        break
    return at, "this key is not lined up with the keys around it"


_RULES: tuple[Callable[[_Error], Found | None], ...] = (
    _runs_on, _fixed, _no_colon, _flow, _colon, _document_end, _tab, _reserved, _escape,
    _block_end)


def _starts_line(error: _Error, at: Mark) -> bool:
    """Whether ``at`` is where its line's content begins (after any "- " of list items)."""
    return not error.line(at[0])[:at[1] - 1].strip(" -")


def _spaces(count: int) -> str:
    return f"{count} space{'' if count == 1 else 's'}"


def _key_column(line: str) -> int:
    """Where a line's first key would start: after its indentation and any "- " of list items."""
    column = len(line) - len(line.lstrip(" "))
    while line.startswith("- ", column):
        column = len(line) - len(line[column + 1:].lstrip(" "))
    return column


def _position(mark: yaml.Mark) -> Mark:
    return (mark.line + 1, mark.column + 1)


def _mark(mark: yaml.Mark | None) -> Mark | None:
    return None if mark is None else _position(mark)
