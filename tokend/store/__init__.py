"""The store layer: where tokens, leases and generations live (DESIGN §2a).

``interface`` is the :class:`StateStore` contract and its records; ``sqlite`` and
``sqlite_schema`` the embedded store (the schema module also holds the import-light
read of ``tokend token``); ``lock`` the state directory's host lock, its private
files and who holds a lease; ``postgres``, ``postgres_schema`` and
``postgres_connection`` the store several hosts share (psycopg, imported only when a
config names it); ``choose`` opens the store a config names. May import
``tokend.model``, ``tokend.errors`` and ``tokend.timing``; never the engine or above.
"""

DATABASE_NAME = "tokend.db"
"""The SQLite store's file in the state directory (here, so ``tokend token`` finds it for free)."""
