"""config.yaml as read: plain data that can say where each value was written.

:func:`read_document` reads the file with :mod:`tokend.config.reader`, without
positions; :class:`Document` reads it again with positions the first time a
message needs one. :class:`Problems` turns key paths into ``file:line:col``
and gathers every error into one :class:`~tokend.errors.ConfigError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tokend.config.reader import KeyPath, Mark, Read, format_key_path, read_yaml
from tokend.errors import ConfigError

_MAX_ERRORS = 20
TOKEN_LISTS = ("applications", None, "tokens")
"""Where the lists of tokens are: a reload finds an edited token by where these items start."""


@dataclass(frozen=True)
class Document:
    """The parsed file (its data aside): where every key and value was written (1-based)."""

    source: str
    read: Read
    mode: int
    text: str = field(repr=False)

    @property
    def plain(self) -> Mapping[KeyPath, str]:
        """Raw text of unquoted scalars YAML did not read as text: tells ``mode: 640``
        (decimal to YAML) from ``0640`` (octal). Text needs no record: its raw text is its value."""
        return self.read.plain

    @cached_property
    def _positions(self) -> tuple[Mapping[KeyPath, Mark], Mapping[KeyPath, Mark]]:
        """(values, keys): found by reading the file again, only once a message needs one."""
        found = read_yaml(self.text, self.source, positions=True)
        return found.values, found.keys

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
        self.source = document.source
        self.mode = document.mode
        self.plain = document.plain
        self.location = document.location
        self.mark = document.mark

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


def read_text(path: Path) -> tuple[str, int]:
    """The file's text and mode; a ConfigError if it cannot be read or is not UTF-8."""
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
        return raw.decode("utf-8-sig"), mode
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise ConfigError("is not UTF-8 text", location=f"{source}:{line}:{column}") from None


def parse_document(source: str, text: str, mode: int) -> tuple[Document, dict[str, Any]]:
    """Parse ``text``; raise ConfigError for anything that is not a YAML mapping.

    The data comes apart from the document, so that it is freed once validated: a large
    file's load then never holds its plain data, its models and its specs all at once.
    """
    found = read_yaml(text, source, spans_at=TOKEN_LISTS)
    if found.root == "empty":
        raise ConfigError("is empty; it needs at least an applications: mapping",
                          location=source)
    if found.data is None:
        assert found.root_mark is not None  # noqa: S101 -- a document that is not empty
        line, column = found.root_mark
        raise ConfigError("must be a mapping of settings (state_dir, defaults, applications), "
                          f"not {found.root}", location=f"{source}:{line}:{column}")
    data, found.data = found.data, None
    return Document(source, found, mode, text), data


def read_document(path: Path) -> Document:
    """Read and parse ``path``; raise ConfigError for anything that is not a YAML mapping."""
    return parse_document(str(path), *read_text(path))[0]


__all__ = ["Document", "KeyPath", "Problems", "format_key_path", "read_document"]
