"""What wakes the daemon's loop, what it was woken for, and the timer that starts due work.

Signal handlers, the doorbell and the config watcher only set flags here and
wake the loop (as uvicorn does); the loop takes the flags on its next pass.
Work that falls due is started by :class:`DueTimer`, a timer on the event loop,
without a pass of the daemon's loop: a refresh a few times a second costs no
wake-up of it and no new sleep.
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

    async def sleep(self, seconds: float) -> None:
        """Until woken, or for ``seconds``.

        The timeout is a timer on the event loop that wakes the loop like any other
        event: no task per sleep, which ``wait_for`` would create.
        """
        if self._wake.is_set():
            return
        timer = asyncio.get_running_loop().call_later(seconds, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()


class DueTimer:
    """One event-loop timer, always set for when the next piece of work is due.

    ``arm`` is called whenever that may have changed (work ended, a config was
    applied); it sets the timer again only when the time differs. When the timer
    fires, ``start_due`` starts what is due and the timer is set for what comes next,
    even if starting failed. Once closed (the daemon stops), it is never set again.
    """

    def __init__(self, *, next_at: Callable[[], float | None], start_due: Callable[[], None],
                 now: Callable[[], float]) -> None:
        self._next_at = next_at
        self._start_due = start_due
        self._now = now
        self._at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def arm(self) -> None:
        """Set the timer for the next due time (wall clock), unless it already is."""
        if self._closed:
            return
        at = self._next_at()
        if at == self._at:  # set for it already (a time is kept only while its timer is)
            return
        self._cancel()
        if at is not None:
            delay = max(0.0, at - self._now())
            self._timer = asyncio.get_running_loop().call_later(delay, self._fire)
            self._at = at

    def close(self) -> None:
        self._closed = True
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._at = None

    def _fire(self) -> None:
        self._timer = self._at = None
        try:
            self._start_due()
        finally:
            self.arm()
