"""The stored records as the CLI reads them: read-only, from whichever store the config names."""

from __future__ import annotations

from pathlib import Path

from tokend.model import StoreSpec
from tokend.store.choose import open_store
from tokend.store.interface import TokenRecord
from tokend.store.sqlite_schema import read_records


def stored_records(state_dir: Path, shared: StoreSpec | None = None) -> list[TokenRecord]:
    """Every record in the store, or none when no store exists yet: read-only, since
    ``status`` and ``check`` only look (no store created, migrated or tightened).
    ``shared``: the PostgreSQL store's records (opening it checks its schema)."""
    if shared is None:
        return read_records(state_dir)
    store = open_store(state_dir, shared)
    try:
        return store.all()
    finally:
        store.close()
