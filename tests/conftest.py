"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import CLIENT_ID, CLIENT_SECRET, Daemon, StartDaemon
from tokend.sandbox import Sandbox


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A sandbox whose access tokens live 3 s, so tokens rotate every ~1.5 s."""
    with Sandbox(access_token_lifetime=3, clients={CLIENT_ID: CLIENT_SECRET}) as server:
        yield server


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """Start ``tokend run`` subprocesses; every one still running is killed at the end."""
    started: list[Daemon] = []

    def start(config: Path, name: str = "daemon", env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(config, tmp_path / f"{name}-{len(started)}.log", env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.kill()
