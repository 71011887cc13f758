"""A listening socket on 127.0.0.1 served by one thread, for the tests' hand-made servers.

Closing a listener under a thread blocked in ``accept()`` does not end the
thread: Linux keeps the call waiting, and when a signal restarts it, it
restarts with the same descriptor number, which by then may name a later
test's listener (the sandbox's). The stale thread then takes one of that
server's connections and drops it unanswered: a reset for a client the test
never meant it to touch. So the thread polls a stop flag, and the listener is
closed only after the thread has ended.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import TracebackType

_POLL = 0.1  # seconds between looks at the stop flag while no client comes


class LocalServer:
    """Accept on ``127.0.0.1:port`` from ``with`` to its end, handing each connection to
    ``serve`` in the accepting thread (which must return soon, watch ``stopping`` or start
    a thread of its own).

    ``stopping`` is set when the block ends, for handlers that wait or loop.
    """

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self._serve = serve
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(_POLL)
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="test-server")

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stopping.set()
        self._thread.join(5)
        self._socket.close()
        assert not self._thread.is_alive(), "the server's accepting thread outlived its block"

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            self._serve(connection)
