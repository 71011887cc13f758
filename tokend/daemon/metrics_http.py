"""The metrics listener: ``/metrics``, ``/healthz`` and ``/readyz`` inside the daemon's event loop.

It shares the loop with the refreshes, so it must never make them wait: every
step that depends on the client has a deadline (the request head must arrive
within ``head_timeout``, the answer must be taken within ``write_timeout``),
a request head larger than ``max_head`` is refused without being buffered
further (the stream reader stops reading at twice its limit), no body is read,
one request is served per connection, and connections past
``max_connections`` are closed the moment they are accepted. A slowloris
client therefore costs one small buffer for a few seconds, and a flood of
them costs a bounded number of those.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from http import HTTPStatus

import structlog

from tokend.engine.metrics import Metrics
from tokend.model import MetricsSpec
from tokend.store.interface import TokenState

log = structlog.get_logger(__name__)

HEAD_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
MAX_HEAD = 8192
MAX_CONNECTIONS = 64
# After an error answer, read and drop at most this much for at most this long before closing.
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024
# Scrapes within this long of each other, with no tokend event between them, share one
# rendering of /metrics (process metrics may then be up to this old).
CACHE_SECONDS = 1.0
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"

Response = tuple[HTTPStatus, str, bytes]


class MetricsServer:
    """Serves one :class:`Metrics` on ``spec.host:spec.port`` until closed."""

    def __init__(
        self,
        metrics: Metrics,
        spec: MetricsSpec,
        *,
        head_timeout: float = HEAD_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_head: int = MAX_HEAD,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.spec = spec
        self._metrics = metrics
        self._head_timeout = head_timeout
        self._write_timeout = write_timeout
        self._max_head = max_head
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._render_lock = asyncio.Lock()
        self._rendered: tuple[float, tuple[str, int], tuple[bytes, str]] | None = None

    async def start(self) -> None:
        """Bind and listen; raises ``OSError`` when the address cannot be used."""
        self._server = await asyncio.start_server(
            self._handle, self.spec.host, self.spec.port, limit=self._max_head
        )
        host, port = self.address
        log.info("metrics_listening", host=host, port=port)

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the real one when the config asked for port 0)."""
        assert self._server is not None  # noqa: S101 -- only asked after start()
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self) -> None:
        """Stop listening and drop the connections still open."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        self._server = None
        log.info("metrics_stopped", listen=self.spec.listen)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self._max_connections:
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 -- start_server runs each connection as a task
        self._connections.add(task)
        flushed = False
        try:
            response = await self._read_and_route(reader)
            if response is not None:
                writer.write(response)
                async with asyncio.timeout(self._write_timeout):
                    await writer.drain()
                flushed = True
                if not response.startswith(b"HTTP/1.1 2"):
                    writer.write_eof()
                    await _discard(reader)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self._connections.discard(task)
            if flushed:
                writer.close()
            else:
                # Whatever is still buffered for a client that does not read is dropped at once.
                writer.transport.abort()

    async def _read_and_route(self, reader: asyncio.StreamReader) -> bytes | None:
        """The whole response to send, or ``None`` when the client left first."""
        try:
            async with asyncio.timeout(self._head_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return _response((HTTPStatus.REQUEST_TIMEOUT, _TEXT, b"request head too slow\n"))
        except asyncio.LimitOverrunError:
            return _response((HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, _TEXT,
                              b"request head too large\n"))
        except asyncio.IncompleteReadError:
            return None
        return await self._answer(head)

    async def _answer(self, head: bytes) -> bytes:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response((HTTPStatus.BAD_REQUEST, _TEXT, b"bad request line\n"))
        method, target = parts[0], parts[1]
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }
        if method not in ("GET", "HEAD"):
            return _response((HTTPStatus.METHOD_NOT_ALLOWED, _TEXT, b"only GET and HEAD\n"),
                             extra="Allow: GET, HEAD\r\n")
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            return _response((HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _TEXT,
                              b"no request body accepted\n"))
        answer = await self._route(target.split("?", 1)[0], headers.get("accept", ""))
        return _response(answer, head_only=method == "HEAD")

    async def _route(self, path: str, accept: str) -> Response:
        if path == "/metrics":
            body, content_type = await self._render(accept)
            return HTTPStatus.OK, content_type, body
        if path == "/healthz":
            return self._health()
        if path == "/readyz":
            ready = self._metrics.ready
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            return status, _JSON, _json({"status": "ready" if ready else "starting"})
        return HTTPStatus.NOT_FOUND, _TEXT, b"not found; try /metrics, /healthz or /readyz\n"

    async def _render(self, accept: str) -> tuple[bytes, str]:
        """The exposition, rendered in a worker thread, one rendering at a time.

        Rendering costs about 0.1 ms per token: in the loop, a scrape of thousands
        of tokens would hold up refreshes for as long. A flood of scrapes shares
        one rendering a second unless an event (a refresh, a reload) changed a
        value; only the latest is kept, so varied ``Accept`` headers cannot
        grow memory.
        """
        async with self._render_lock:
            now = time.monotonic()
            key = (accept, self._metrics.version)
            if self._rendered is not None:
                at, rendered_key, result = self._rendered
                if rendered_key == key and now - at < CACHE_SECONDS:
                    return result
            result = await asyncio.to_thread(self._metrics.exposition, accept)
            self._rendered = (now, key, result)
            return result

    def _health(self) -> Response:
        """200 while every configured token is ok and the store answers; the body lists the
        tokens that are not ok, and says so when the store cannot be reached."""
        attention = [token for token in self._metrics.tokens() if token.state != TokenState.OK]
        reachable = self._metrics.store_reachable
        healthy = self._metrics.ready and not attention and reachable
        body: dict[str, object] = {
            "status": "ok" if healthy else "unhealthy",
            "tokens": [{"name": token.name, "state": token.state} for token in attention],
        }
        if not reachable:
            body["store"] = "unreachable"
        status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
        return status, _JSON, _json(body)


async def _discard(reader: asyncio.StreamReader) -> None:
    """Drop what a refused client is still sending, briefly and boundedly.

    Closing a socket with unread data makes the kernel send a reset, which can
    destroy our error answer before the client reads it (a "lingering close").
    """
    budget = LINGER_BYTES
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER_SECONDS):
            while budget > 0 and (chunk := await reader.read(min(budget, 65536))):
                budget -= len(chunk)


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True).encode() + b"\n"


def _response(answer: Response, *, head_only: bool = False, extra: str = "") -> bytes:
    status, content_type, body = answer
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Cache-Control: no-store\r\n"
        f"Connection: close\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else body)


async def serve_metrics(metrics: Metrics, spec: MetricsSpec) -> MetricsServer | None:
    """Start a listener, or log why not and return ``None``: tokens matter more than metrics."""
    server = MetricsServer(metrics, spec)
    try:
        await server.start()
    except OSError as error:
        log.error("metrics_listen_failed", listen=spec.listen, error=error.strerror or str(error))
        return None
    return server


async def move_metrics(
    current: MetricsServer | None, metrics: Metrics, spec: MetricsSpec | None
) -> MetricsServer | None:
    """Start, move or stop the metrics listener as the config says, without a restart;
    return the listener serving now.

    A new address is bound before the old one closes, so a busy port keeps
    the old listener serving (and logs ``metrics_listen_failed``).
    """
    if current is not None and spec is not None and (
        (current.spec.host, current.spec.port) == (spec.host, spec.port)
    ):
        current.spec = spec
        return current
    started = None
    if spec is not None:
        started = await serve_metrics(metrics, spec)
        if started is None and current is not None:
            return current
    if current is not None:
        await current.close()
    return started


__all__ = ["MetricsServer", "move_metrics", "serve_metrics"]
