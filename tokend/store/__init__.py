"""The store layer: where tokens, leases and generations live (DESIGN §2a).

``interface`` is the :class:`StateStore` contract and its records; ``sqlite`` and
``sqlite_schema`` the embedded store; ``quick`` the import-light read for ``tokend
token``; ``lock`` the state directory's host lock and who holds a lease. May import
``tokend.model``, ``tokend.errors`` and ``tokend.timing``; never the engine or above.
"""

DATABASE_NAME = "tokend.db"
"""The SQLite store's file in the state directory (here, so ``quick`` finds it for free)."""
