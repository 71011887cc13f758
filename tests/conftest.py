"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.e2e import CLIENT_ID, CLIENT_SECRET, Daemon, StartDaemon, sandbox_with_lifetime
from tests.postgres import PostgresServer, running_server
from tests.stores import open_store  # noqa: F401 -- the fixture, for every test module
from tokend.sandbox import Sandbox


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A sandbox whose access tokens live 3 s, so tokens rotate every ~1.5 s."""
    with Sandbox(access_token_lifetime=3, clients={CLIENT_ID: CLIENT_SECRET}) as server:
        yield server


@pytest.fixture
def hour_sandbox() -> Iterator[Sandbox]:
    """A sandbox whose access tokens live an hour: nothing comes due, expires or turns
    anything but ``ok`` on its own while a test runs, however slowly."""
    with sandbox_with_lifetime(3600) as server:
        yield server


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """Start ``tokend run`` subprocesses; every one still running is killed at the end."""
    started: list[Daemon] = []

    def start(config: Path, name: str = "daemon", env: dict[str, str] | None = None,
              prefix: Sequence[str] = ()) -> Daemon:
        daemon = Daemon(config, tmp_path / f"{name}-{len(started)}.log", env, prefix)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.kill()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1 for the whole session (tests/postgres.py)."""
    yield from running_server()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A libpq URL (no password) of an empty database on the session's server."""
    return postgres_server.url(postgres_server.emptied_database())


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kills", type=int, default=50,
        help="SIGKILLs in the crash-safety test (CI: 50; soak: --kills 1000)",
    )
    parser.addoption(
        "--soak", action="store_true", help="run the long versions of the reliability tests",
    )


_FIGURES = pytest.StashKey[dict[str, str]]()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, str]:
    """Reliability figures a test measured; printed at the end of the run."""
    return request.config.stash.setdefault(_FIGURES, {})


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    measured = config.stash.get(_FIGURES, {})
    if measured:
        terminalreporter.section("reliability figures")
        for name, value in measured.items():
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy in the environment: the daemon's blocking client exists only then."""
    for variable in [name for name in os.environ if name.lower().endswith("_proxy")]:
        monkeypatch.delenv(variable)
