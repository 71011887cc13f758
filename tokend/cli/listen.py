"""``tokend authorize --listen``: catch the redirect in a one-shot local HTTP listener.

With a loopback ``http://HOST:PORT/…`` redirect URI (:func:`tokend.model.is_loopback`)
the browser brings the authorization code to us, so nobody copies a key by
hand. The link carries a random ``state``; a request without that exact state
did not come from our link (another local program, a forged page) and is
refused with 400 while the listener keeps waiting for the real one.

The browser is answered only once the code has been exchanged and the token
stored, with what really happened: a page saying "authorized" before a wrong
client secret turned the exchange down would send the person away content.
"""

from __future__ import annotations

import hmac
import html
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from tokend.errors import OutputError, TokendError
from tokend.model import is_loopback

T = TypeVar("T")

_PAGE = ("<!doctype html><html><head><meta charset=utf-8><title>tokend</title></head>"
         "<body><h1>{title}</h1><p>{text}</p></body></html>")


@dataclass(frozen=True)
class ListenAddress:
    """Where the listener binds and which path it answers."""

    host: str
    port: int
    path: str


def listen_address(redirect_uri: str) -> ListenAddress | None:
    """The address of a loopback ``http`` redirect URI with an explicit port, else ``None``."""
    parts = urlsplit(redirect_uri)
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    if parts.scheme != "http" or not is_loopback(host) or port is None:
        return None
    # A browser tries each address localhost resolves to, so 127.0.0.1 is enough.
    return ListenAddress("127.0.0.1" if host == "localhost" else host, port, parts.path or "/")


def _not_set(code: str) -> None:
    raise AssertionError("the listener serves only inside Listener.wait")


class _Server(HTTPServer):
    """Remembers the expected state, what to do with the code, and how that went."""

    def __init__(self, address: ListenAddress, state: str) -> None:
        self.expected_path = address.path
        self.expected_state = state
        self.use: Callable[[str], None] = _not_set
        self.describe: Callable[[Exception], str] = str
        self.done = False
        self.failure: Exception | None = None
        self.denied: str | None = None
        if ":" in address.host:
            self.address_family = socket.AF_INET6
        super().__init__((address.host, address.port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 5.0  # a connection that never sends a request must not block the listener

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the query holds the code, which must not reach a terminal or log."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != self.server.expected_path:
            self._answer(404, "Not found", "This is tokend's one-shot authorization listener.")
            return
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        state = query.get("state", "")
        if not hmac.compare_digest(state.encode(), self.server.expected_state.encode()):
            self._answer(400, "Refused", "This request does not carry the state of tokend's "
                         "authorization link, so it was not started by tokend. Ignored.")
            return
        if "error" in query:
            self.server.denied = query.get("error_description") or query["error"]
            self._answer(400, "Authorization failed", "The server refused the authorization. "
                         "See the terminal for details.")
            return
        code = query.get("code", "")
        if not code:
            self._answer(400, "Refused", "The request carries no authorization code.")
            return
        self.server.done = True
        try:
            self.server.use(code)
        except Exception as error:  # noqa: BLE001 -- any failure: wait() re-raises it
            self.server.failure = error
            title = ("tokend is authorized, but an output failed"
                     if isinstance(error, OutputError) else "tokend is not authorized")
            self._answer(500, title, f"{self.server.describe(error)} (see the terminal)")
            return
        self._answer(200, "tokend is authorized", "You can close this window.")

    def _answer(self, status: int, title: str, text: str) -> None:
        body = _PAGE.format(title=html.escape(title), text=html.escape(text)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


class Listener:
    """Bound on creation (so the port is ours before the link is shown), served by ``wait``."""

    def __init__(self, address: ListenAddress, state: str) -> None:
        try:
            self._server = _Server(address, state)
        except OSError as exc:
            raise TokendError(f"cannot listen on {address.host}:{address.port} for the "
                              f"redirect: {exc.strerror}") from None

    def wait(self, timeout: float, use: Callable[[str], T], *,
             describe: Callable[[Exception], str] = str) -> T:
        """Serve until a request with the right state brings a code; return ``use(code)``.

        ``use`` runs while the browser waits, which is then answered with its outcome;
        an exception from it is re-raised here, shown on the page as ``describe`` says
        (which must leave out any secret).
        """
        results: list[T] = []
        self._server.use = lambda code: results.append(use(code))
        self._server.describe = describe
        deadline = time.monotonic() + timeout
        try:
            while not self._server.done and self._server.denied is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TokendError(
                        f"no authorization arrived within {timeout:g} s; run the command "
                        "again and open the link in a browser on this machine"
                    )
                self._server.timeout = min(remaining, 1.0)
                self._server.handle_request()
        finally:
            self._server.server_close()
        if self._server.denied is not None:
            raise TokendError(f"the authorization was refused: {self._server.denied}")
        if self._server.failure is not None:
            raise self._server.failure
        return results[0]
