"""Run the operator's commands after a refresh or a failure, without letting them hurt the daemon.

A hook is an argv list run without a shell. It learns which token changed
from ``TOKEND_*`` environment variables, never the token itself: a hook that
needs the token reads an output file, with that file's permissions.

Whatever a hook does (missing executable, non-zero exit, hanging forever,
printing megabytes) the daemon keeps going: :func:`run_hook` never raises for
it, keeps only a bounded head of the output, and on timeout kills the hook's
whole process group, so a ``sleep 60 &`` left behind by a shell script dies
with it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from tokend.log import mask_token_shaped
from tokend.model import TokenSpec
from tokend.timing import format_utc

logger = structlog.get_logger(__name__)

_OUTPUT_CHARS = 2000
# UTF-8 needs at most 4 bytes per character: keeping this many bytes is always
# enough to fill _OUTPUT_CHARS characters.
_KEEP_BYTES = 4 * _OUTPUT_CHARS
_CHUNK = 65536
_KILL_GRACE = 2.0
_TRUNCATED = "\n[output truncated]"


@dataclass(frozen=True)
class HookResult:
    """What one hook run did, for logs and ``tokend status``."""

    argv: tuple[str, ...]
    returncode: int | None  # None when it could not start or timed out
    timed_out: bool
    output: str  # head of stdout+stderr, truncation marked
    error: str | None = None  # why it could not start

    @property
    def ok(self) -> bool:
        """Whether the hook ran to completion and exited 0."""
        return self.error is None and not self.timed_out and self.returncode == 0


def hook_environment(
    spec: TokenSpec, *, expires_at: datetime | None, base: Mapping[str, str]
) -> dict[str, str]:
    """``base`` plus the ``TOKEND_*`` variables describing the token; never the token itself.

    ``base`` is the caller's choice (usually the daemon's environment minus
    anything secret), so this function cannot leak what it is not given.
    """
    env = dict(base)
    env.update(
        TOKEND_TOKEN=str(spec.name),
        TOKEND_APP=spec.name.app,
        TOKEND_USER=spec.name.user,
        TOKEND_SCOPE=spec.name.scope,
        TOKEND_EXPIRES_AT="" if expires_at is None else format_utc(expires_at.timestamp()),
        TOKEND_OUTPUTS=":".join(str(output.path) for output in spec.outputs),
    )
    return env


class HookGroups:
    """The process groups of the hooks running now: each hook leads its own session, so
    an exit that cannot wait for them (a second Ctrl-C) must kill them by name."""

    def __init__(self) -> None:
        self._pgids: set[int] = set()

    def kill_all(self) -> None:
        """SIGKILL every running hook's group at once (it may be a signal handler's last act)."""
        for pgid in list(self._pgids):
            _signal_group(pgid, signal.SIGKILL)

    def add(self, pgid: int) -> None:
        self._pgids.add(pgid)

    def remove(self, pgid: int) -> None:
        self._pgids.discard(pgid)


async def run_hook(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,  # noqa: ASYNC109 -- the hook's own time limit, enforced with a group kill
    name: str,
    groups: HookGroups | None = None,
) -> HookResult:
    """Run ``argv`` with ``env`` for at most ``timeout`` seconds; never raises for hook failures.

    The timeout covers the hook's exit and the end of its output: a process
    left in the hook's group that keeps the output pipe open counts as part
    of the hook and is killed with it (the hook's own exit code is still
    reported). A process that left the group is out of reach; we stop reading
    from it. Cancelling this coroutine (daemon shutdown) kills the group too.
    """
    command = tuple(argv)
    if not command:
        return _logged(name, timeout, HookResult(command, None, False, "", "empty command"))
    # Our own pipe rather than PIPE: its read end is ours to close even when a
    # process that escaped the group still holds the write end.
    read_fd, write_fd = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_fd,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
    except OSError as exc:
        os.close(read_fd)
        error = _start_error(command[0], exc)
        return _logged(name, timeout, HookResult(command, None, False, "", error))
    finally:
        os.close(write_fd)
    if groups is not None:
        groups.add(process.pid)  # its pid is its group's id: it leads a new session
    try:
        return await _supervise(process, read_fd, command, timeout, name)
    finally:
        if groups is not None:
            groups.remove(process.pid)


async def _supervise(
    process: asyncio.subprocess.Process,
    read_fd: int,
    command: tuple[str, ...],
    timeout: float,  # noqa: ASYNC109 -- the hook's own time limit, enforced with a group kill
    name: str,
) -> HookResult:
    """Collect the started hook's output and exit within ``timeout``, as :func:`run_hook`."""
    capture = _Capture()
    stream = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(read_fd, "rb", buffering=0)
    )
    tasks: set[asyncio.Task[Any]] = {
        asyncio.create_task(capture.drain(stream)),
        asyncio.create_task(process.wait()),
    }
    try:
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        returncode = process.returncode
        if pending:
            await _kill_group(process.pid, pending)
    except asyncio.CancelledError:
        # Shutdown: no grace for the hook, but reap it so nothing outlives the daemon.
        _signal_group(process.pid, signal.SIGKILL)
        await asyncio.wait(tasks, timeout=_KILL_GRACE)
        for task in tasks:
            task.cancel()
        raise
    finally:
        transport.close()
    timed_out = returncode is None
    return _logged(name, timeout, HookResult(command, returncode, timed_out, capture.text()))


class _Capture:
    """Keeps the head of a stream and drains the rest, so memory stays bounded."""

    def __init__(self) -> None:
        self._kept = bytearray()
        self._dropped = False

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_CHUNK):
            room = _KEEP_BYTES - len(self._kept)
            self._kept += chunk[:room]
            self._dropped = self._dropped or len(chunk) > room

    def text(self) -> str:
        """The head, every token-shaped word masked before it is cut: a hook may print a
        token tokend does not know (read elsewhere, or long forgotten)."""
        text = mask_token_shaped(self._kept.decode(errors="replace"))
        if self._dropped or len(text) > _OUTPUT_CHARS:
            return text[:_OUTPUT_CHARS] + _TRUNCATED
        return text


async def _kill_group(pgid: int, pending: set[asyncio.Task[Any]]) -> None:
    """SIGTERM the hook's process group, SIGKILL it after a grace period."""
    still = pending
    if _signal_group(pgid, signal.SIGTERM):
        _, still = await asyncio.wait(still, timeout=_KILL_GRACE)
        if still and _signal_group(pgid, signal.SIGKILL):
            _, still = await asyncio.wait(still, timeout=_KILL_GRACE)
    # Only a process that left the group can still hold the pipe: stop reading it.
    for task in still:
        task.cancel()
    await asyncio.gather(*still, return_exceptions=True)


def _signal_group(pgid: int, signum: signal.Signals) -> bool:
    """Signal the group; ``False`` when nothing of it is left to signal."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a setuid member we cannot touch: still worth waiting for
    return True


def _start_error(executable: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"executable not found: {executable}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {executable}"
    return f"cannot start {executable}: {exc.strerror}"


def _logged(name: str, timeout: float, result: HookResult) -> HookResult:
    fields = {
        "token": name,
        "hook": result.argv[0] if result.argv else "",
        "returncode": result.returncode,
        "output": result.output,
    }
    if result.ok:
        logger.info("hook_finished", **fields)
    elif result.timed_out:
        logger.warning("hook_timed_out", timeout=timeout, **fields)
    else:
        logger.warning("hook_failed", error=result.error, **fields)
    return result
