"""Every store implementation behind one fixture, so one contract test runs against each.

``open_store`` opens a store on the test's own storage (a SQLite file in a fresh
state directory, or a fresh PostgreSQL database); every call opens one more connection
to the same storage, as a second daemon or a CLI command would. With a
:class:`LeaseClock` the store's lease clock moves only when the test moves it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tokend.store.interface import StateStore
from tokend.store.sqlite import SqliteStateStore

BACKENDS = ["sqlite", "postgres"]
BOOT = "boot-1"


class LeaseClock:
    """A store's lease clock that moves only when the test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class OpenStore(Protocol):
    def __call__(self, *, clock: LeaseClock | None = None) -> StateStore: ...


def _opener(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStore:
    if request.param == "sqlite":
        state_dir = tmp_path / "state"

        def sqlite(*, clock: LeaseClock | None = None) -> StateStore:
            if clock is None:
                return SqliteStateStore(state_dir)
            return SqliteStateStore(state_dir, lease_clock=clock, clock_id=BOOT)

        return sqlite
    from tests.postgres import PostgresServer  # noqa: PLC0415 -- only when PostgreSQL runs
    from tokend.store.postgres import PostgresStateStore  # noqa: PLC0415 -- psycopg is optional

    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.url(server.emptied_database())

    def postgres(*, clock: LeaseClock | None = None) -> StateStore:
        return PostgresStateStore(url, password=server.password, lease_clock=clock)

    return postgres


@pytest.fixture(params=BACKENDS)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Open stores on one test's storage; all are closed at the end."""
    opener = _opener(request, tmp_path)
    opened: list[StateStore] = []

    def open_one(*, clock: LeaseClock | None = None) -> StateStore:
        store = opener(clock=clock)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()
