"""A small TCP proxy on 127.0.0.1 that a test can cut or black-hole: the simplest partition.

``cut()`` closes every connection (the peer sees a reset, as when a host reboots);
``black_hole()`` keeps connections open but forwards nothing in either direction and
accepts new ones without answering, as a dropped route or a dead switch does: only
timeouts and keepalives can tell. ``heal()`` forwards again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

from tests.local_server import LocalServer


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target``; start with ``with``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._server = LocalServer(self._forward)
        self.port: int = self._server.port
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False

    def __enter__(self) -> TcpProxy:
        self._server.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._closed = True
        self._open.set()
        self._server.__exit__(kind, value, traceback)
        self.cut()

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def black_hole(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    def _forward(self, client: socket.socket) -> None:
        threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        with self._lock:
            self._sockets.append(client)
        self._open.wait()
        try:
            server = socket.create_connection(self._target, timeout=5)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        with self._lock:
            self._sockets.append(server)
        for source, sink in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                # Black-holed: hold the bytes as a dead route does; they are lost.
                self._open.wait()
                if self._closed:
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
