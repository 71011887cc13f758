"""``python -m bench.store_cycle``: the store's share of a refresh, SQLite next to PostgreSQL.

One cycle is the store hops of one refresh (claim, commit, read back, release), on tokens
of a seeded store, one at a time in this process. It reports cycles per second and this
process's CPU per cycle (for PostgreSQL the server's own work is on top, on its host).
PostgreSQL is the server of ``--postgres URL`` (password from ``$PGPASSWORD``), else a
throwaway one started as the tests start theirs (``initdb`` on this machine). The
figures are the store's ceiling, not the daemon's: HTTP, outputs and hooks come on top.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tokend.model import Token, TokenName
from tokend.store.interface import StateStore, Written
from tokend.store.sqlite import SqliteStateStore


def _token(serial: int) -> Token:
    return Token(f"access-{serial}", "Bearer", 3600, f"refresh-{serial}", "read", serial)


def measure(store: StateStore, cycles: int, tokens: int) -> tuple[float, float]:
    """Cycles per second and CPU milliseconds per cycle."""
    names = [TokenName("bench", f"u{index:05d}", "read") for index in range(tokens)]
    store.save_tokens([(name, _token(0)) for name in names], now=time.time())
    generations = dict.fromkeys(names, 1)
    wall, cpu = time.perf_counter(), time.process_time()
    for cycle in range(cycles):
        name = names[cycle % tokens]
        claim = store.claim(name, owner="bench", lease=60.0)
        if claim is None:
            raise RuntimeError(f"{name} is busy: is another process using this store?")
        written = store.commit(name, _token(cycle + 1), generation=generations[name],
                               issued_at=time.time(), now=time.time())
        if written is not Written.DONE:
            raise RuntimeError(f"{name}: commit {written}")
        generations[name] += 1
        store.get(name)
        store.release(claim.lease)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return cycles / wall, cpu / cycles * 1000


@contextmanager
def _postgres(url: str | None) -> Iterator[Callable[[], StateStore]]:
    from tokend.store.postgres import PostgresStateStore  # noqa: PLC0415 -- optional extra

    if url is not None:
        password = os.environ.get("PGPASSWORD")
        yield lambda: PostgresStateStore(url, password=password)
        return
    from tests.postgres import running_server  # noqa: PLC0415 -- the tests' throwaway server

    servers = running_server()
    server = next(servers)
    try:
        database = server.url(server.new_database())
        yield lambda: PostgresStateStore(database, password=server.password)
    finally:
        next(servers, None)  # the generator stops the server as it ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000, help="cycles per store (2000)")
    parser.add_argument("--tokens", type=int, default=100, help="tokens seeded (100)")
    parser.add_argument("--postgres", metavar="URL", help="an existing database to use")
    args = parser.parse_args()
    print("store        cycles/s   CPU per cycle (this process)")
    with tempfile.TemporaryDirectory(prefix="tokend-store-cycle-") as root:
        sqlite = SqliteStateStore(Path(root) / "state")
        try:
            rate, cpu = measure(sqlite, args.cycles, args.tokens)
        finally:
            sqlite.close()
        print(f"sqlite     {rate:>10.0f}   {cpu:.2f} ms")
    with _postgres(args.postgres) as open_postgres:
        postgres = open_postgres()
        try:
            rate, cpu = measure(postgres, args.cycles, args.tokens)
        finally:
            postgres.close()
        print(f"postgresql {rate:>10.0f}   {cpu:.2f} ms")


if __name__ == "__main__":
    main()
