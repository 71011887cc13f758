"""What wakes the daemon's loop, and what it was woken for.

Signal handlers, the doorbell, the config watcher and finished work only set
flags here and wake the loop (as uvicorn does); the loop takes the flags on its
next pass. Between passes it sleeps until the next token is due or it is woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

from tokend.model import TokenName


class Wakeups:
    """The loop's wake-up call and the requests waiting for its next pass."""

    def __init__(self, *, on_second_stop: Callable[[], None]) -> None:
        self.stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._reload: bool | None = None
        """``None``: no reload asked for; else whether to heal (SIGHUP: publish every
        token's outputs, not only the changed ones')."""
        # Names another process changed; ``None`` in it means "look at every token".
        self._rescan: set[TokenName] | None = set()
        self._signals = 0
        self._on_second_stop = on_second_stop
        self.sleeping_until: float | None = None
        """While the loop sleeps, when it wakes by itself (wall clock); else ``None``."""

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload, True)
        loop.add_signal_handler(signal.SIGUSR1, self.ring, None)

    def wake(self) -> None:
        self._wake.set()

    def request_stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def _on_stop_signal(self) -> None:
        self._signals += 1
        if self._signals > 1:
            # A second Ctrl-C means "now": the store is consistent at every commit.
            self._on_second_stop()
        self.request_stop()

    def request_reload(self, heal: bool = False) -> None:
        self._reload = bool(self._reload) or heal
        self._wake.set()

    def ring(self, names: frozenset[str] | None) -> None:
        """The store changed (the doorbell, or SIGUSR1 for every token): look again."""
        if names is None or self._rescan is None:
            self._rescan = None
        else:
            for text in names:
                with contextlib.suppress(ValueError):  # a hint only: ignore what is no name
                    self._rescan.add(TokenName.parse(text))
        self._wake.set()

    def begin_pass(self) -> None:
        """The loop starts a pass: what wakes it from now on wakes its next sleep."""
        self._wake.clear()

    def take_reload(self) -> bool | None:
        """``None`` when no reload was asked for, else whether to heal."""
        reload, self._reload = self._reload, None
        return reload

    def take_rescan(self) -> tuple[bool, set[TokenName] | None]:
        """Whether to rescan, and which names (``None``: every token)."""
        names, self._rescan = self._rescan, set()
        return names is None or bool(names), names

    async def sleep(self, seconds: float, *, now: float) -> None:
        """Until woken, or for ``seconds`` from ``now`` (wall clock).

        The timeout is a timer on the event loop that wakes the loop like any other
        event: no task per sleep, which ``wait_for`` would create a few times a second.
        """
        if self._wake.is_set():
            return
        timer = asyncio.get_running_loop().call_later(seconds, self._wake.set)
        self.sleeping_until = now + seconds
        try:
            await self._wake.wait()
        finally:
            self.sleeping_until = None
            timer.cancel()
