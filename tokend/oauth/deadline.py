"""A blocking HTTP client whose requests end by a deadline, however slowly the server answers.

httpx's timeouts bound each connect, read and write, not the request: a server
sending a byte every few seconds keeps a blocking request alive for as long as
it likes. A refresh is sent under a lease that must outlive the request, so a
refresh sent from a worker thread runs inside :func:`request_deadline`, and the
network backend under :func:`deadline_client` gives every operation of that
thread at most the time left before it (httpcore's documented network-backend
hook; the event loop's requests have ``asyncio.timeout`` instead).

A client behind a proxy taken from the environment would go through httpx's own
proxy transport, without the deadline; :func:`deadline_client` therefore gives
``None`` when the environment names a proxy, and the daemon sends its refreshes
from the event loop then.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
import typing
import urllib.request
from collections.abc import Iterable, Iterator

import httpcore
import httpx

_KEEPALIVE_CONNECTIONS = 20
"""httpx's default for its own clients: the daemon's two clients keep alike."""

_deadlines = threading.local()


@contextlib.contextmanager
def request_deadline(seconds: float) -> Iterator[None]:
    """Bound every network operation of this thread to end within ``seconds`` from now."""
    _deadlines.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _deadlines.at = None


def deadline_client() -> httpx.Client | None:
    """A blocking client that keeps :func:`request_deadline`, or ``None`` behind a proxy."""
    if urllib.request.getproxies():
        return None
    return httpx.Client(transport=_DeadlineTransport(), trust_env=False)


def _left(timeout: float | None, timed_out: type[httpcore.TimeoutException]) -> float | None:
    """``timeout`` cut to the time left before this thread's deadline, if it has one."""
    at: float | None = getattr(_deadlines, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise timed_out("the request's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's own transport over a connection pool whose streams keep the deadline."""

    def __init__(self) -> None:
        ssl_context = httpx.create_ssl_context()  # loads the CA bundle: once, not twice
        super().__init__(verify=ssl_context)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_keepalive_connections=_KEEPALIVE_CONNECTIONS,
            network_backend=_DeadlineBackend(httpcore.SyncBackend()),
        )


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_tcp(
            host, port, _left(timeout, httpcore.ConnectTimeout), local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_unix_socket(
            path, _left(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(
            ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)
