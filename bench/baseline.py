"""The bare baseline: the unavoidable work of a refresh burst, and nothing else.

Run as a standalone script (``python bench/baseline.py SPEC.json``), never
imported by tokend: for each token, one ``httpx.AsyncClient`` POST to the
token endpoint, the JSON answer parsed, one fsynced SQLite commit (WAL,
``synchronous=FULL``, as tokend's store) and then one atomic file write
(temporary file, fsync, rename, fsync of the folder), with the same
concurrency as tokend. The durable writes of one token run in one worker
thread, as any asyncio program must run blocking fsyncs, and in tokend's
order: commit before the file.

It prints one JSON line: the CPU seconds of the burst (``getrusage`` of this
process, all threads, setup excluded), its wall time, and the counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Store:
    def __init__(self, path: Path, users: list[str]) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS tokens (user TEXT PRIMARY KEY, access_token TEXT, "
            "refresh_token TEXT, expires_in INTEGER, created_at INTEGER) WITHOUT ROWID"
        )
        self._conn.executemany(
            "INSERT OR IGNORE INTO tokens (user) VALUES (?)", [(user,) for user in users]
        )

    def commit(self, user: str, body: dict[str, Any]) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "UPDATE tokens SET access_token = ?, refresh_token = ?, expires_in = ?, "
                "created_at = ? WHERE user = ?",
                (body["access_token"], body["refresh_token"], body["expires_in"],
                 body["created_at"], user),
            )
            self._conn.execute("COMMIT")


def _write_atomic(path: Path, content: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def _burst(spec: dict[str, Any], store: _Store, out_dir: Path) -> dict[str, Any]:
    slots = asyncio.Semaphore(spec["concurrency"])
    url = spec["url"] + "/oauth/token"
    ok = failed = 0

    def persist(user: str, body: dict[str, Any]) -> None:
        store.commit(user, body)
        _write_atomic(out_dir / f"{user}.token", body["access_token"].encode())

    async def refresh(http: httpx.AsyncClient, user: str, refresh_token: str) -> None:
        nonlocal ok, failed
        async with slots:
            response = await http.post(url, data={
                "grant_type": "refresh_token", "client_id": spec["client_id"],
                "client_secret": spec["client_secret"], "refresh_token": refresh_token,
            }, headers={"Accept": "application/json"})
            body = response.json()
            if response.status_code != 200:
                failed += 1
                return
            await asyncio.to_thread(persist, user, body)
            ok += 1

    async with httpx.AsyncClient() as http:
        # Measured from here: tokend's figure also starts after its client exists (READY=1).
        cpu, wall = _cpu(), time.monotonic()
        await asyncio.gather(*(refresh(http, user, rt) for user, rt in spec["tokens"]))
        cpu, wall = _cpu() - cpu, time.monotonic() - wall
    return {"cpu_s": cpu, "wall_s": wall, "ok": ok, "failed": failed}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    store = _Store(Path(spec["db"]), [user for user, _ in spec["tokens"]])
    result = asyncio.run(_burst(spec, store, out_dir))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
