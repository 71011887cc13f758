"""A local Factorial-compatible OAuth2 server on real HTTP, for the demo and the tests.

Mocks alone prove nothing about a daemon, so tokend's end-to-end tests and
``tokend demo`` talk to this server over 127.0.0.1 exactly as they would talk
to Factorial. The OAuth rules live in ``model.py``, rate limit, faults
and statistics in ``traffic.py``, the HTTP layer in ``http.py`` and its
view of the sandbox in ``backend.py``; this module holds them together
under one lock and offers the same controls as a Python API and as an admin
API under ``/_sandbox/``. It prints and logs nothing: the CLI prints the URL
and what the server is for.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from tokend.sandbox.backend import Backend
from tokend.sandbox.http import SandboxHTTPServer
from tokend.sandbox.model import SandboxModel
from tokend.sandbox.traffic import Fault, Traffic
from tokend.timing import Clock, SystemClock


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
        clock_offset: float = 0.0,
    ) -> None:
        self._host, self._port = host, port
        self._clock = clock or SystemClock()
        self._model = SandboxModel(
            clock=self._clock,
            access_token_lifetime=access_token_lifetime,
            refresh_token_lifetime=refresh_token_lifetime,
            clients={"demo-client": "demo-secret"} if clients is None else clients,
            clock_offset=clock_offset,
        )
        self._traffic = Traffic(clock=self._clock, rate_limit=rate_limit)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stop_lock = threading.Lock()
        self._server: SandboxHTTPServer | None = None
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
            try:
                self._server = SandboxHTTPServer((self._host, self._port), Backend(
                    self, model=self._model, traffic=self._traffic, lock=self._lock,
                    stopping=self._stopping,
                ))
            except OSError as error:
                # The bare errno ("Address already in use") does not say which address.
                raise OSError(error.errno, f"cannot listen on {self._host}:{self._port}: "
                              f"{error.strerror or error}") from error
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

    def settings(self) -> dict[str, Any]:
        """access_token_lifetime (the ``expires_in`` it answers), refresh_token_lifetime,
        rate_limit (POSTs per second, None if off) and the client ids: what it enforces."""
        with self._lock:
            return {**self._model.settings(), "rate_limit": self._traffic.rate_limit}

    def add_client(
        self, client_id: str, client_secret: str, scopes: Iterable[str] | None = None
    ) -> None:
        """Register a client; with ``scopes`` (resource scopes such as ``employees``) it may
        ask for any of them instead of the seed library's ``read`` and ``write``."""
        with self._lock:
            self._model.add_client(client_id, client_secret, scopes)

    def authorize(
        self, *, client_id: str, redirect_uri: str, scope: str = "read+write", user: str = "demo",
        resource_owner_type: str = "",
    ) -> str:
        """What a user's browser approval does: return an authorization code (key).

        ``resource_owner_type="company"`` is an admin's approval of a company token,
        which never expires."""
        with self._lock:
            return self._model.authorize(
                client_id=client_id, redirect_uri=redirect_uri, response_type="code",
                scope=scope, user=user, resource_owner_type=resource_owner_type,
            )

    def inject_fault(
        self, kind: str, *, count: int = 1, status: int = 500, retry_after: float | None = None,
        seconds: float = 60.0, error: str | None = None, grant: str | None = None,
    ) -> None:
        """Misbehave on the next ``count`` token requests (of ``grant`` only, if given)."""
        fault = Fault(kind, count, status, retry_after, seconds, error, grant)
        with self._lock:
            self._traffic.add_fault(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._traffic.clear_faults()

    def set_clock_offset(self, seconds: float) -> None:
        """Say ``created_at`` ``seconds`` off the real clock, like a server whose clock is wrong.

        Codes and tokens still die on the real clock, so a client that schedules
        by the server's ``created_at`` instead of its own clock shows up.
        """
        with self._lock:
            self._model.set_clock_offset(seconds)

    def set_answer_delay(self, seconds: float, *, grant: str | None = None) -> None:
        """Answer every token request (of ``grant`` only, if given) ``seconds`` late; 0 stops.

        Like a "delay" fault but lasting until changed: the work is done at once
        (a refresh rotates), only the answer waits. The rate limit and faults
        take precedence for the requests they catch.
        """
        with self._lock:
            self._traffic.set_answer_delay(seconds, grant)

    def stats(self) -> dict[str, Any]:
        """Request counts: authorization_code, refresh_token, revoke, me, rate_limited, faulted.

        Token requests count by grant type whatever their fate (rate limited,
        faulted or answered), so tests see every request the client made;
        refresh_token_reused is ``reused_refresh_tokens()``.
        """
        with self._lock:
            return dict(self._traffic.stats())

    def reused_refresh_tokens(self) -> int:
        """Refresh requests that presented a refresh token an earlier refresh already presented.

        Counted whatever the answer, so 0 proves no client ever sent a refresh
        token twice; ``reset_stats`` resets it.
        """
        with self._lock:
            return self._traffic.stats()["refresh_token_reused"]

    def token_requests(self) -> list[tuple[float, str, int]]:
        """``(time.monotonic(), grant, status)`` per token request; status 0 means no answer."""
        with self._lock:
            return self._traffic.token_requests()

    def reset_stats(self) -> None:
        with self._lock:
            self._traffic.reset_stats()

    def issue_token(
        self, *, client_id: str, user: str = "demo", scope: str = "read+write",
        resource_owner_type: str = "",
    ) -> dict[str, Any]:
        """Issue a token pair directly, as a code exchange would: for seeding many tokens."""
        with self._lock:
            return self._model.issue(client_id=client_id, user=user, scope=scope,
                                     resource_owner_type=resource_owner_type)

    def issued_secrets(self) -> list[str]:
        """Every access and refresh token this sandbox ever issued."""
        with self._lock:
            return self._model.issued_secrets()

    def refresh_token_state(self, refresh_token: str) -> str:
        """live, rotated, expired, revoked or unknown."""
        with self._lock:
            return self._model.refresh_token_state(refresh_token)

    def revoke_user(self, user: str, client_id: str | None = None) -> int:
        """Kill every token of ``user`` (of one client, if given); return how many pairs died."""
        with self._lock:
            return self._model.revoke_user(user, client_id)
