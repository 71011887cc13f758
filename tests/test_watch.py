"""Following the config file: every finished save is seen once, a half-written one never."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from asyncinotify import Event, Mask
from structlog.testing import capture_logs

from tokend.daemon import watch
from tokend.daemon.watch import fingerprint, watch_config


async def _watching(path: Path, act: Callable[[], Awaitable[None]]) -> list[str | None]:
    """What ``path`` held each time the watcher reported a change while ``act`` ran."""
    seen: list[str | None] = []

    async def on_change() -> None:
        seen.append(fingerprint(path))

    watcher = asyncio.create_task(watch_config(path, on_change))
    await asyncio.sleep(0.05)
    await act()
    await asyncio.sleep(0.3)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    return seen


def test_every_save_by_rename_is_reported(tmp_path: Path) -> None:
    """Three saves a moment apart, as an editor makes them: three reports, the last content."""
    path = tmp_path / "config.yaml"
    path.write_text("version: 0\n")

    async def save_three_times() -> None:
        for version in range(1, 4):
            temp = tmp_path / ".config.yaml.swp"
            temp.write_text(f"version: {version}\n")
            os.rename(temp, path)
            await asyncio.sleep(0.2)

    seen = asyncio.run(_watching(path, save_three_times))
    assert len(seen) == 3
    assert seen[-1] == fingerprint(path)


def test_a_file_written_in_place_in_parts_is_reported_once_complete(tmp_path: Path) -> None:
    """A writer that pauses between parts is not reported half-way: the file could not load."""
    path = tmp_path / "config.yaml"
    path.write_text("version: 0\n")

    async def write_in_two_parts() -> None:
        with path.open("w") as handle:
            handle.write("version:")
            handle.flush()
            await asyncio.sleep(0.01)
            handle.write(" 1\n")

    seen = asyncio.run(_watching(path, write_in_two_parts))
    assert seen == [fingerprint(path)]


def test_a_folder_that_cannot_be_watched_is_logged(tmp_path: Path) -> None:
    """No folder, no watcher: the daemon says so and keeps running (SIGHUP still reloads)."""
    path = tmp_path / "gone" / "config.yaml"

    async def nothing() -> None:
        return None

    with capture_logs() as logs:
        seen = asyncio.run(_watching(path, nothing))
    assert seen == []
    failed = [log for log in logs if log["event"] == "config_watch_failed"]
    assert failed and failed[0]["folder"] == str(path.parent)



class _QueuedInotify:
    """Inotify whose events the test hands over, so a cancellation can be timed to the step."""

    events: asyncio.Queue[Event]

    def __enter__(self) -> _QueuedInotify:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_watch(self, path: Path, mask: Mask) -> None:
        return None

    async def get(self) -> Event:
        return await self.events.get()


def test_the_watcher_stops_when_cancelled_as_an_event_arrives_during_its_debounce(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another file in the config's folder changes all the time (a log written there), so the
    watcher is often waiting out its debounce when the daemon stops. A cancellation that
    lands in the same step as an event must still end it: swallowed, it left the daemon
    hanging after SIGTERM, its loop idle and the watcher waiting for the next event."""
    config = tmp_path / "config.yaml"
    config.write_text("unchanged\n")
    inotify = _QueuedInotify()
    monkeypatch.setattr(watch, "Inotify", lambda: inotify)
    modified = cast(Event, SimpleNamespace(mask=Mask.MODIFY))

    async def no_change() -> None:
        return None

    async def go() -> bool:
        inotify.events = asyncio.Queue()
        task = asyncio.ensure_future(watch_config(config, no_change))
        inotify.events.put_nowait(modified)  # a write still going on: the debounce starts
        for _ in range(5):
            await asyncio.sleep(0)
        inotify.events.put_nowait(modified)  # another write, and the daemon stops, at once
        task.cancel()
        done, _pending = await asyncio.wait([task], timeout=2.0)
        if not done:
            task.cancel()
            await asyncio.wait([task], timeout=2.0)
        return bool(done)

    assert asyncio.run(go()), "the watcher went on after it was cancelled"
