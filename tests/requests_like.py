"""The parts of the ``requests`` library an ``auth=`` callable meets, for testing
:class:`tokend.consumer.TokenAuth` without depending on requests.

``call`` does what ``requests.Session.send`` does with ``auth=``: the auth prepares the
request, the adapter sends it, the response hooks run (and may resend through the
adapter, which runs no hooks).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any


class Request:
    """A prepared request: headers, and hooks shared with its copies (as requests does)."""

    def __init__(self) -> None:
        self.headers: MutableMapping[str, str] = {}
        self.hooks: dict[str, list[Callable[..., Any]]] = {"response": []}

    def register_hook(self, event: str, hook: Callable[..., Any]) -> None:
        self.hooks[event].append(hook)

    def copy(self) -> Request:
        copied = Request()
        copied.headers = dict(self.headers)
        copied.hooks = self.hooks
        return copied


class Response:
    """What a response hook reads and calls."""

    def __init__(self, request: Request, status_code: int, connection: Adapter) -> None:
        self.request = request
        self.status_code = status_code
        self.connection = connection
        self.history: list[Response] = []
        self.content = b""
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Adapter:
    """A transport adapter: ``answer(request)`` is the status; ``sent`` counts requests."""

    def __init__(self, answer: Callable[[Request], int]) -> None:
        self.answer = answer
        self.sent = 0

    def send(self, request: Request, **_kwargs: object) -> Response:
        self.sent += 1
        return Response(request, self.answer(request), self)


def call(auth: Callable[[Request], Request], adapter: Adapter) -> Response:
    """One ``requests`` call with ``auth=auth`` through ``adapter``."""
    request = auth(Request())
    response = adapter.send(request)
    for hook in request.hooks["response"]:
        response = hook(response, timeout=5)
    return response
