"""What the sandbox answers: a JSON reply, and the refusal that carries one.

Kept apart from the OAuth model so that the HTTP layer, the traffic rules and
the model share one shape of answer without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One JSON answer: the HTTP layer only serializes it."""

    status: int
    body: Mapping[str, Any]
    headers: tuple[tuple[str, str], ...] = ()
    # Seconds to wait before answering, and whether to close instead of answering:
    # the server did its work, but the client hears late or never.
    delay: float = 0.0
    dropped: bool = False


def error_reply(
    status: int, error: str, description: str, headers: tuple[tuple[str, str], ...] = ()
) -> Reply:
    """A Doorkeeper-style error body: ``{"error": code, "error_description": text}``."""
    return Reply(status, {"error": error, "error_description": description}, headers)


class Refusal(ValueError):
    """A request the server refuses; ``reply`` is what it answers over HTTP.

    A ``ValueError`` so that callers of the Python API get the usual error for
    a bad argument, with the OAuth error code in the message.
    """

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        super().__init__(f"{reply.body['error']}: {reply.body['error_description']}")


def refuse(status: int, error: str, description: str) -> Refusal:
    """The refusal of a request, ready to raise."""
    return Refusal(error_reply(status, error, description))
