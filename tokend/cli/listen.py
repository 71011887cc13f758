"""``tokend authorize --listen``: catch the redirect in a one-shot local HTTP listener.

With a loopback ``http://HOST:PORT/…`` redirect URI (:func:`tokend.model.is_loopback`)
the browser brings the authorization code to us, so nobody copies a key by
hand. The link carries a random ``state``; a request without that exact state
did not come from our link (another local program, a forged page) and is
refused with 400 while the listener keeps waiting for the real one.

The listener holds the port on every address the browser may try for the
redirect's host (``localhost``: 127.0.0.1 and ::1, whatever this host's resolver
says, since browsers resolve it themselves), or refuses to start naming the
address another program holds: that program would receive the code. The code
is useless to it anyway, as the link carries a PKCE challenge.

The browser is answered only once the code has been exchanged and the token
stored, with what really happened: a page saying "authorized" before a wrong
client secret turned the exchange down would send the person away content.
"""

from __future__ import annotations

import errno
import hmac
import html
import select
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
    return ListenAddress(host.lower(), port, parts.path or "/")


def _bind_hosts(host: str, port: int) -> list[str]:
    """Every address a browser may connect to for ``host``: for ``localhost`` both loopback
    addresses and whatever the resolver adds (only loopback ones: nothing else is ours)."""
    if host != "localhost":
        return [host]
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        found = []
    resolved = [str(info[4][0]) for info in found]
    return list(dict.fromkeys(h for h in ["127.0.0.1", "::1", *resolved] if is_loopback(h)))


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Wait:
    """What the servers of one listener share: the expected request, the outcome."""

    def __init__(self, path: str, state: str) -> None:
        self.expected_path = path
        self.expected_state = state
        self.use: Callable[[str], None] = _not_set
        self.describe: Callable[[Exception], str] = str
        self.done = False
        self.failure: Exception | None = None
        self.denied: str | None = None


def _not_set(code: str) -> None:
    raise AssertionError("the listener serves only inside Listener.wait")


class _Server(HTTPServer):
    """One bound address; the expected request and the outcome are the listener's."""

    def __init__(self, host: str, port: int, wait: _Wait) -> None:
        self.wait = wait
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 5.0  # a connection that never sends a request must not block the listener

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the query holds the code, which must not reach a terminal or log."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != self.server.wait.expected_path:
            self._answer(404, "Not found", "This is tokend's one-shot authorization listener.")
            return
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        state = query.get("state", "")
        if not hmac.compare_digest(state.encode(), self.server.wait.expected_state.encode()):
            self._answer(400, "Refused", "This request does not carry the state of tokend's "
                         "authorization link, so it was not started by tokend. Ignored.")
            return
        if "error" in query:
            self.server.wait.denied = query.get("error_description") or query["error"]
            self._answer(400, "Authorization failed", "The server refused the authorization. "
                         "See the terminal for details.")
            return
        code = query.get("code", "")
        if not code:
            self._answer(400, "Refused", "The request carries no authorization code.")
            return
        self.server.wait.done = True
        try:
            self.server.wait.use(code)
        except Exception as error:  # noqa: BLE001 -- any failure: wait() re-raises it
            self.server.wait.failure = error
            title = ("tokend is authorized, but an output failed"
                     if isinstance(error, OutputError) else "tokend is not authorized")
            self._answer(500, title, f"{self.server.wait.describe(error)} (see the terminal)")
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
        self._wait = _Wait(address.path, state)
        self._servers: list[_Server] = []
        implied = address.host == "localhost"
        for host in _bind_hosts(address.host, address.port):
            try:
                self._servers.append(_Server(host, address.port, self._wait))
            except OSError as exc:
                if implied and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    continue  # no such address here (no IPv6): nobody can listen on it either
                self._close()
                raise TokendError(f"cannot listen on {_shown(host, address.port)} for the "
                                  f"redirect: {exc.strerror}; a program listening there would "
                                  "receive the authorization code") from None
        if not self._servers:
            raise TokendError(f"cannot listen on {_shown(address.host, address.port)} for the "
                              "redirect: no loopback address is available")

    def wait(self, timeout: float, use: Callable[[str], T], *,
             describe: Callable[[Exception], str] = str) -> T:
        """Serve until a request with the right state brings a code; return ``use(code)``.

        ``use`` runs while the browser waits, which is then answered with its outcome;
        an exception from it is re-raised here, shown on the page as ``describe`` says
        (which must leave out any secret).
        """
        results: list[T] = []
        outcome = self._wait
        outcome.use = lambda code: results.append(use(code))
        outcome.describe = describe
        deadline = time.monotonic() + timeout
        try:
            while not outcome.done and outcome.denied is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TokendError(
                        f"no authorization arrived within {timeout:g} s; run the command "
                        "again and open the link in a browser on this machine"
                    )
                ready, _, _ = select.select(self._servers, [], [], min(remaining, 1.0))
                for server in ready:
                    if not outcome.done and outcome.denied is None:
                        server.timeout = 0.0  # it is readable: accept without waiting
                        server.handle_request()
        finally:
            self._close()
        if outcome.denied is not None:
            raise TokendError(f"the authorization was refused: {outcome.denied}")
        if outcome.failure is not None:
            raise outcome.failure
        return results[0]

    def _close(self) -> None:
        for server in self._servers:
            server.server_close()
