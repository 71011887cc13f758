"""The sandbox's HTTP layer: stdlib ``http.server`` speaking what Factorial speaks.

HTTP/1.1 with keep-alive, so a client's burst of a few thousand POSTs reuses
connections; a thread per connection, so a "hang" fault blocks nobody else.
It only parses requests and writes answers: every decision is the backend's
(``sandbox.py``), which holds the lock around the model.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import html
import json
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

from tokend.model import OOB
from tokend.sandbox.replies import Refusal, Reply, error_reply
from tokend.sandbox.traffic import Fault
from tokend.timing import format_duration

_DEFAULT_ERRORS = {400: "invalid_request", 401: "invalid_client", 429: "too_many_requests",
                   503: "temporarily_unavailable"}
_PROXY_PAGE = (b"<html><head><title>502 Bad Gateway</title></head><body><center>"
               b"<h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>")
_OOB_PAGE = ("<!doctype html><html><head><title>Authorization code</title></head><body>"
             "<h1>Authorization code</h1><p>Copy this authorization key into the application:</p>"
             '<code id="authorization_code">{code}</code></body></html>')
_HOME_PAGE = """<!doctype html><html><head><title>tokend sandbox</title></head><body>
<h1>tokend sandbox</h1>
<p>This is tokend's local OAuth2 server for testing, <strong>not Factorial</strong>: its clients
and tokens are made up and work nowhere else. It answers like Factorial's Doorkeeper does.</p>
<h2>Endpoints</h2>
<ul>
<li><code>GET /oauth/authorize</code>: approves at once (as <code>&amp;user=NAME</code>, default
demo) and shows the authorization key, or redirects with <code>?code=</code>;
<code>&amp;resource_owner_type=company</code> gives a company token, which never expires</li>
<li><code>POST /oauth/token</code>: <code>grant_type</code> authorization_code or
refresh_token</li>
<li><code>POST /oauth/revoke</code>: revoke an access or refresh token</li>
<li><code>GET /api/v1/me</code>: who owns the bearer token (its first use kills the previous
refresh token)</li>
<li><code>/_sandbox/</code>: the admin API (faults, stats, clients, settings), for tests</li>
</ul>
<h2>Settings</h2>
<ul>
<li>clients: {clients}</li>
<li>{summary}</li>
</ul>
</body></html>
"""
_JSON = "application/json; charset=utf-8"
_HTML = "text/html; charset=utf-8"


class Backend(Protocol):
    """What the HTTP layer asks of the sandbox, one call per request."""

    @property
    def stopping(self) -> threading.Event: ...

    def authorize_request(self, query: Mapping[str, str]) -> str: ...

    def token_request(
        self, form: Mapping[str, str], basic: tuple[str, str] | None
    ) -> Reply | Fault: ...

    def revoke_request(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> Reply: ...

    def me_request(self, access_token: str) -> Reply: ...

    def settings(self) -> dict[str, Any]: ...

    def admin_request(self, method: str, path: str, data: dict[str, Any]) -> Reply: ...


def settings_summary(settings: Mapping[str, Any]) -> str:
    """``access tokens live 1h, refresh tokens 7d; POST rate limit 200/min``, from
    ``Sandbox.settings()``: for the command's banner and the home page."""
    rate = settings["rate_limit"]
    return (f"access tokens live {format_duration(settings['access_token_lifetime'])}, "
            f"refresh tokens {format_duration(settings['refresh_token_lifetime'])}; "
            f"POST rate limit {'off' if rate is None else f'{rate * 60:g}/min'}")


def _home_page(settings: Mapping[str, Any]) -> str:
    """What someone who opens the sandbox's URL in a browser needs to know."""
    return _HOME_PAGE.format(clients=html.escape(", ".join(settings["clients"]) or "none"),
                             summary=html.escape(settings_summary(settings)))


class SandboxHTTPServer(ThreadingHTTPServer):
    """Threads per connection, a deep accept queue for bursts, and a way to drop connections."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], backend: Backend) -> None:
        self.backend = backend
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def drop_connections(self) -> None:
        """Keep-alive connections outlive ``shutdown()``; a stopped server must answer nothing."""
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    timeout = 120  # an idle keep-alive connection eventually frees its thread
    server: SandboxHTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: request lines would only clutter test and demo output."""

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        backend = self.server.backend
        if parts.path.startswith("/_sandbox/"):
            self._admin(method, parts.path, body)
            return
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        route = (method, parts.path)
        if route == ("GET", "/"):
            self._send(200, _home_page(backend.settings()).encode(), _HTML)
        elif route == ("GET", "/oauth/authorize"):
            self._authorize(dict(parse_qsl(parts.query, keep_blank_values=True)))
        elif route == ("POST", "/oauth/token"):
            answer = backend.token_request(form, self._basic_auth())
            if isinstance(answer, Fault):
                self._act_out(answer)
            elif answer.dropped:
                self._hang_up()
            else:
                if answer.delay:
                    backend.stopping.wait(answer.delay)
                self._send_reply(answer)
        elif route == ("POST", "/oauth/revoke"):
            self._send_reply(backend.revoke_request(form, self._basic_auth()))
        elif route == ("GET", "/api/v1/me"):
            scheme, _, token = self.headers.get("Authorization", "").partition(" ")
            bearer = token.strip() if scheme.lower() == "bearer" else ""
            self._send_reply(backend.me_request(bearer))
        else:
            self._send_reply(error_reply(404, "not_found", "No such endpoint."))

    def _admin(self, method: str, path: str, body: bytes) -> None:
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self._send_reply(error_reply(400, "invalid_request", "Expected a JSON object."))
            return
        self._send_reply(self.server.backend.admin_request(method, path, data))

    def _authorize(self, query: dict[str, str]) -> None:
        try:
            code = self.server.backend.authorize_request(query)
        except Refusal as refusal:
            self._send_reply(refusal.reply)
            return
        redirect_uri = query["redirect_uri"]
        if redirect_uri == OOB:
            self._send(200, _OOB_PAGE.format(code=html.escape(code)).encode(), _HTML)
            return
        params = {"code": code} | ({"state": query["state"]} if "state" in query else {})
        separator = "&" if "?" in redirect_uri else "?"
        location = f"{redirect_uri}{separator}{urlencode(params)}"
        self._send(302, b"", _HTML, (("Location", location),))

    def _basic_auth(self) -> tuple[str, str] | None:
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ("", "")  # unreadable credentials fail authentication like wrong ones
        client_id, _, secret = decoded.partition(":")
        return unquote_plus(client_id), unquote_plus(secret)

    def _act_out(self, fault: Fault) -> None:
        if fault.kind == "status":
            headers: tuple[tuple[str, str], ...] = ()
            if fault.retry_after is not None:
                # As given, so a test can ask for a sub-second wait.
                headers = (("Retry-After", f"{fault.retry_after:g}"),)
            error = fault.error or _DEFAULT_ERRORS.get(fault.status, "server_error")
            self._send_reply(error_reply(fault.status, error, "Injected fault.", headers))
        elif fault.kind == "html":
            self._send(502, _PROXY_PAGE, _HTML)
        elif fault.kind == "malformed_json":
            self._send(200, b'{"access_token": "' + secrets.token_urlsafe(8).encode(), _JSON)
        elif fault.kind == "missing_fields":
            body = {"access_token": secrets.token_urlsafe(32), "token_type": "Bearer",
                    "scope": "read", "created_at": int(time.time())}
            self._send_reply(Reply(200, body))
        else:
            if fault.kind == "hang":
                self.server.backend.stopping.wait(fault.seconds)
            self._hang_up()

    def _hang_up(self) -> None:
        """Close the connection without a word, as a crashing proxy would."""
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client gave up first
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send_reply(self, reply: Reply) -> None:
        self._send(reply.status, json.dumps(reply.body).encode(), _JSON, reply.headers)

    def _send(
        self, status: int, body: bytes, content_type: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
