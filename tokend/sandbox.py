"""A local Factorial-compatible OAuth2 server on real HTTP, for the demo and the tests.

Mocks alone prove nothing about a daemon, so tokend's end-to-end tests and
``tokend demo`` talk to this server over 127.0.0.1 exactly as they would talk
to Factorial. The OAuth rules live in ``sandbox_model.py``; this module is the
HTTP layer (stdlib only, HTTP/1.1 keep-alive so a burst of POSTs reuses
connections), the admin API under ``/_sandbox/`` and the :class:`Sandbox`
handle. It prints and logs nothing: the CLI prints the URL.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import math
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

from tokend.clock import Clock, SystemClock
from tokend.sandbox_model import Fault, Refusal, Reply, SandboxModel, error_reply

_DEFAULT_ERRORS = {400: "invalid_request", 401: "invalid_client", 429: "too_many_requests",
                   503: "temporarily_unavailable"}
_PROXY_PAGE = (b"<html><head><title>502 Bad Gateway</title></head><body><center>"
               b"<h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>")
_OOB_PAGE = ("<!doctype html><html><head><title>Authorization code</title></head><body>"
             "<h1>Authorization code</h1><p>Copy this authorization key into the application:</p>"
             '<code id="authorization_code">{code}</code></body></html>')


class Sandbox:
    """The server and its Python API; ``with Sandbox() as sb:`` serves on ``sb.url``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_token_lifetime: float = 3600.0,
        refresh_token_lifetime: float = 7 * 86400.0,
        rate_limit: float | None = None,
        clients: Mapping[str, str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._clock = clock or SystemClock()
        self._model = SandboxModel(
            clock=self._clock,
            access_token_lifetime=access_token_lifetime,
            refresh_token_lifetime=refresh_token_lifetime,
            rate_limit=rate_limit,
            clients={"demo-client": "demo-secret"} if clients is None else clients,
        )
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stop_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, valid once started."""
        if self._server is None:
            raise RuntimeError("the sandbox is not running: call start() first")
        return f"http://{self._host}:{self._server.server_address[1]}"

    def start(self) -> Sandbox:
        """Bind and serve in a background thread."""
        if self._server is None:
            self._stopping.clear()
            self._server = _Server((self._host, self._port), self)
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                name="tokend-sandbox", daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection, even one a "hang" fault holds."""
        self._stopping.set()
        with self._stop_lock:
            server, thread = self._server, self._thread
            if server is None:
                return
            server.shutdown()
            if thread is not None:
                thread.join()
            server.server_close()
            server.drop_connections()
            self._server = self._thread = None

    def serve_forever(self) -> None:
        """Serve until ``stop()`` or KeyboardInterrupt (which propagates after stopping)."""
        self.start()
        try:
            while not self._stopping.wait(0.2):
                pass
        finally:
            self.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def add_client(self, client_id: str, client_secret: str) -> None:
        with self._lock:
            self._model.add_client(client_id, client_secret)

    def authorize(
        self, *, client_id: str, redirect_uri: str, scope: str = "read+write", user: str = "demo"
    ) -> str:
        """What a user's browser approval does: return an authorization code (key)."""
        with self._lock:
            return self._model.authorize(
                client_id=client_id, redirect_uri=redirect_uri, response_type="code",
                scope=scope, user=user,
            )

    def inject_fault(
        self, kind: str, *, count: int = 1, status: int = 500, retry_after: float | None = None,
        seconds: float = 60.0, error: str | None = None, grant: str | None = None,
    ) -> None:
        """Misbehave on the next ``count`` token requests (of ``grant`` only, if given)."""
        fault = Fault(kind, count, status, retry_after, seconds, error, grant)
        with self._lock:
            self._model.add_fault(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._model.clear_faults()

    def stats(self) -> dict[str, Any]:
        """Request counts by kind: authorization_code, refresh_token, revoke, me, rate_limited,
        faulted."""
        with self._lock:
            return dict(self._model.stats())

    def token_requests(self) -> list[tuple[float, str, int]]:
        """``(time.monotonic(), grant, status)`` per token request; status 0 means no answer."""
        with self._lock:
            return self._model.token_requests()

    def reset_stats(self) -> None:
        with self._lock:
            self._model.reset_stats()

    def refresh_token_state(self, refresh_token: str) -> str:
        """live, rotated, expired, revoked or unknown."""
        with self._lock:
            return self._model.refresh_token_state(refresh_token)

    def revoke_user(self, user: str, client_id: str | None = None) -> int:
        """Kill every token of ``user`` (of one client, if given); return how many pairs died."""
        with self._lock:
            return self._model.revoke_user(user, client_id)

    def _authorize_request(self, query: Mapping[str, str]) -> str:
        with self._lock:
            return self._model.authorize(
                client_id=query.get("client_id", ""), redirect_uri=query.get("redirect_uri", ""),
                response_type=query.get("response_type", ""), scope=query.get("scope", ""),
                user=query.get("user", "demo"),
            )

    def _token_request(
        self, form: Mapping[str, str], basic: tuple[str, str] | None
    ) -> Reply | Fault:
        """Rate limit, then faults, then the model: a fault never touches token state."""
        grant, received = form.get("grant_type", ""), time.monotonic()
        with self._lock:
            self._model.count_grant(grant)
            wait = self._model.take_rate_slot()
            if wait is not None:
                reply = _rate_limited(wait)
            elif (fault := self._model.next_fault(grant)) is not None:
                self._model.log_token_request(received, grant, _fault_status(fault))
                return fault
            else:
                reply = self._model.token(form, basic)
            self._model.log_token_request(received, grant, reply.status)
        return reply

    def _revoke_request(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> Reply:
        with self._lock:
            wait = self._model.take_rate_slot()
            return _rate_limited(wait) if wait is not None else self._model.revoke(form, basic)

    def _me_request(self, access_token: str) -> Reply:
        with self._lock:
            return self._model.me(access_token)

    def _admin(self, method: str, path: str, data: dict[str, Any]) -> Reply:
        """The admin API: the Python API over JSON, for a sandbox in another process."""
        routes: dict[tuple[str, str], Callable[[], object]] = {
            ("POST", "faults"): lambda: self.inject_fault(**data),
            ("DELETE", "faults"): self.clear_faults,
            ("GET", "stats"): lambda: {**self.stats(), "token_requests": self.token_requests()},
            ("POST", "stats/reset"): self.reset_stats,
            ("POST", "clients"): lambda: self.add_client(**data),
            ("POST", "authorize"): lambda: {"code": self.authorize(**data)},
            ("POST", "refresh-token-state"): lambda: {"state": self.refresh_token_state(**data)},
            ("POST", "revoke-user"): lambda: {"revoked": self.revoke_user(**data)},
        }
        route = routes.get((method, path.removeprefix("/_sandbox/")))
        if route is None:
            return error_reply(404, "not_found", "No such admin endpoint.")
        try:
            result = route()
        except Refusal as refusal:
            return refusal.reply
        except (TypeError, ValueError) as exc:
            return error_reply(400, "invalid_request", str(exc))
        return Reply(200, result if isinstance(result, dict) else {})


def _rate_limited(wait: float) -> Reply:
    retry_after = str(max(1, math.ceil(wait)))
    return error_reply(429, "too_many_requests", "Rate limit exceeded, retry later.",
                       (("Retry-After", retry_after),))


def _fault_status(fault: Fault) -> int:
    statuses = {"status": fault.status, "html": 502, "malformed_json": 200, "missing_fields": 200}
    return statuses.get(fault.kind, 0)


class _Server(ThreadingHTTPServer):
    """Threads per connection, a deep accept queue for bursts, and a way to drop connections."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def drop_connections(self) -> None:
        """Keep-alive connections outlive ``shutdown()``; a stopped server must answer nothing."""
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    timeout = 120  # an idle keep-alive connection eventually frees its thread
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
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
        sandbox = self.server.sandbox
        if parts.path.startswith("/_sandbox/"):
            try:
                data = json.loads(body or b"{}")
            except ValueError:
                data = None
            if not isinstance(data, dict):
                self._send_reply(error_reply(400, "invalid_request", "Expected a JSON object."))
            else:
                self._send_reply(sandbox._admin(method, parts.path, data))
            return
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        route = (method, parts.path)
        if route == ("GET", "/oauth/authorize"):
            self._authorize(dict(parse_qsl(parts.query, keep_blank_values=True)))
        elif route == ("POST", "/oauth/token"):
            answer = sandbox._token_request(form, self._basic_auth())
            if isinstance(answer, Fault):
                self._act_out(answer)
            else:
                self._send_reply(answer)
        elif route == ("POST", "/oauth/revoke"):
            self._send_reply(sandbox._revoke_request(form, self._basic_auth()))
        elif route == ("GET", "/api/v1/me"):
            scheme, _, token = self.headers.get("Authorization", "").partition(" ")
            self._send_reply(sandbox._me_request(token.strip() if scheme.lower() == "bearer" else ""))
        else:
            self._send_reply(error_reply(404, "not_found", "No such endpoint."))

    def _authorize(self, query: dict[str, str]) -> None:
        try:
            code = self.server.sandbox._authorize_request(query)
        except Refusal as refusal:
            self._send_reply(refusal.reply)
            return
        redirect_uri = query["redirect_uri"]
        if redirect_uri == "urn:ietf:wg:oauth:2.0:oob":
            page = _OOB_PAGE.format(code=html.escape(code)).encode()
            self._send(200, page, "text/html; charset=utf-8")
            return
        params = {"code": code} | ({"state": query["state"]} if "state" in query else {})
        separator = "&" if "?" in redirect_uri else "?"
        location = f"{redirect_uri}{separator}{urlencode(params)}"
        self._send(302, b"", "text/html; charset=utf-8", (("Location", location),))

    def _basic_auth(self) -> tuple[str, str] | None:
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ("", "")
        client_id, _, secret = decoded.partition(":")
        return unquote_plus(client_id), unquote_plus(secret)

    def _act_out(self, fault: Fault) -> None:
        if fault.kind == "status":
            headers = ()
            if fault.retry_after is not None:
                headers = (("Retry-After", f"{fault.retry_after:g}"),)
            error = fault.error or _DEFAULT_ERRORS.get(fault.status, "server_error")
            self._send_reply(error_reply(fault.status, error, "Injected fault.", headers))
        elif fault.kind == "html":
            self._send(502, _PROXY_PAGE, "text/html")
        elif fault.kind == "malformed_json":
            self._send(200, b'{"access_token": "' + secrets.token_urlsafe(8).encode(),
                       "application/json; charset=utf-8")
        elif fault.kind == "missing_fields":
            body = {"access_token": secrets.token_urlsafe(32), "token_type": "Bearer",
                    "scope": "read", "created_at": int(time.time())}
            self._send_reply(Reply(200, body))
        else:
            if fault.kind == "hang":
                self.server.sandbox._stopping.wait(fault.seconds)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the client gave up first

    def _send_reply(self, reply: Reply) -> None:
        body = json.dumps(reply.body).encode()
        self._send(reply.status, body, "application/json; charset=utf-8", reply.headers)

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
