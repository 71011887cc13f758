"""The store layer: where tokens, leases and generations live (DESIGN §2a).

``interface`` is the :class:`StateStore` contract and its records; ``sqlite`` and
``sqlite_schema`` the embedded store; ``current`` the import-light read of ``tokend
token``; ``lock`` the state directory's host lock, its private files and who holds a
lease; ``postgres``, ``postgres_schema`` and ``postgres_connection`` the store several
hosts share (psycopg, imported only when a config names it); ``choose`` opens the store
a config names. May import ``tokend.model`` (with ``tokend.names``), ``tokend.errors``
and ``tokend.timing``; never the engine or above.
"""

DATABASE_NAME = "tokend.db"
"""The SQLite store's file in the state directory (here, so ``tokend token`` finds it for free)."""


def token_expiry(issued_at: float | None, expires_in: int | None) -> float | None:
    """When an access token stops working, on this host's clock: ``expires_in`` is relative
    (RFC 6749 §5.1), so it counts from ``issued_at``, when the request that got the token was
    sent, never from the server's ``created_at``. ``None``: it never expires (a company
    token), or there is no token. (Here, so ``tokend token`` applies it for free too.)"""
    return None if issued_at is None or expires_in is None else issued_at + expires_in
