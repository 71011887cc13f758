"""Which store a config names: SQLite in ``state_dir`` by default, PostgreSQL with ``store:``.

One function for the daemon and every CLI command, so all of them open the same store.
psycopg is imported only here and only for a PostgreSQL store: ``tokend token`` and a
deployment without the ``postgres`` extra never pay for it.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tokend.errors import StateError
from tokend.model import StoreSpec
from tokend.store.interface import StateStore


def open_store(state_dir: Path, store: StoreSpec | None) -> StateStore:
    """The store a config names (its ``state_dir`` and ``store``), open and migrated; a
    :class:`StateError` if it cannot be."""
    if store is None:
        from tokend.store.sqlite import SqliteStateStore  # noqa: PLC0415 -- see module doc

        return SqliteStateStore(state_dir)
    try:
        from tokend.store.postgres import PostgresStateStore  # noqa: PLC0415 -- see module doc
    except ImportError:
        raise StateError("store: a PostgreSQL store needs psycopg; install it with "
                         "pip install 'tokend[postgres]'") from None
    password = store.password
    # The state directory is this host's own: it names the host's view of its files.
    return PostgresStateStore(store.conninfo, host=f"{socket.gethostname()}:{state_dir}",
                              password=None if password is None else password.reveal())
