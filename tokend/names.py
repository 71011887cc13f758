"""The rules of what things are called: a token's name and scope, an env output's variable.

Part of the shared vocabulary of :mod:`tokend.model`, which re-exports every name here; kept
apart, free of dataclasses, so ``tokend token`` and ``tokend exec`` can apply these rules
without building the model's classes on every call. Imports only :mod:`tokend.errors`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from tokend.errors import NotFoundError

if TYPE_CHECKING:
    from tokend.model import TokenName

# RFC 6749 §3.3 scope-token characters (NQCHAR) but '+', which in a token name, on the link
# and in the seed's ``read+write`` stands for the space between two scope tokens.
_SCOPE_CHARACTER = re.compile(r"[\x21\x23-\x2a\x2c-\x5b\x5d-\x7e]")
SCOPE_RULE = ("read, write, read+write, or scopes separated by single spaces (such as "
              "employees time_off), each of printable ASCII without \" or \\")
DEFAULT_ENV_VARIABLE = "FACTORIAL_ACCESS_TOKEN"
ENV_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""What an ``env`` output's variable may be called: a name every shell and env file reads."""


def scope_name(scope: str) -> str:
    """The SCOPE part of a token name for ``scope`` as written: its spaces become ``+``.

    The one rule for a scope in config, CLI and authorize link: the seed's three values,
    or any space-separated list of RFC 6749 scope tokens (``employees time_off``), since
    applications at the server may carry scopes of their own. Raises ``ValueError`` naming
    the rule and what breaks it.
    """
    if not scope:
        raise ValueError(f"a scope cannot be empty: use {SCOPE_RULE}")
    for position, character in enumerate(scope, start=1):
        if character not in " +" and _SCOPE_CHARACTER.fullmatch(character) is None:
            raise ValueError(f"{character!r} (character {position}) cannot be in a scope: "
                             f"use {SCOPE_RULE}")
    parts = re.split("[ +]", scope)
    if not parts[0] or not parts[-1]:
        raise ValueError(f"a scope cannot have a space or + at its start or end: use {SCOPE_RULE}")
    if not all(parts):
        raise ValueError(f"a scope cannot have two spaces or + in a row: use {SCOPE_RULE}")
    return "+".join(parts)


def split_name(text: str) -> list[str]:
    """``APP/USER/SCOPE`` in its parts: application and user names hold no ``/``, a scope
    token may (RFC 6749), so only the first two slashes separate."""
    return text.split("/", 2)


def join_name(parts: Sequence[str]) -> str:
    """``APP/USER/SCOPE`` of its parts: what :func:`split_name` splits."""
    return "/".join(parts)


class _HasName(Protocol):
    @property
    def name(self) -> TokenName | str: ...


_Named = TypeVar("_Named", bound=_HasName)


def name_parts(text: str) -> list[str]:
    """A full or partial name in its parts, for :func:`name_matches`: the scope may be
    written as in the config, with spaces. ``NotFoundError`` when it is malformed, since
    no token can have that name."""
    parts = split_name(text)
    if len(parts) == 3:
        try:
            parts[2] = scope_name(parts[2])
        except ValueError as error:
            raise NotFoundError(f"{text!r} names no token, since its scope is malformed: "
                                f"{error}") from None
    return parts


def name_matches(name: TokenName, parts: list[str]) -> bool:
    """Whether ``name`` begins with ``parts`` (:func:`name_parts`; see :func:`pick_named`)."""
    return [name.app, name.user, name.scope][: len(parts)] == parts


def pick_named(text: str, matches: list[_Named]) -> _Named | None:
    """The one of ``matches`` (those :func:`name_matches` ``text``) that ``text`` names.

    The rule for every command taking a name: ``APP/USER/SCOPE``, or ``APP/USER`` when
    that user has one token. ``None`` when ``text`` names nothing (the caller lists what
    exists); ``NotFoundError`` listing the candidates when it is ambiguous.
    """
    parts = len(split_name(text))
    if parts in (2, 3) and len(matches) == 1:
        return matches[0]
    if parts == 3 or not matches:
        return None
    listed = ", ".join(str(match.name) for match in matches)
    raise NotFoundError(f"{text!r} is ambiguous; say which one: {listed}")
