"""The bare baseline: the unavoidable work of a refresh, and nothing else.

Run as a standalone script (``python bench/baseline.py SPEC.json``), never
imported by tokend: for each refresh, one ``httpx.AsyncClient`` POST to the
token endpoint, the JSON answer parsed, one fsynced SQLite commit (WAL,
``synchronous=FULL``, as tokend's store) and then the token's atomic output
files (each a temporary file, fsynced, renamed; then one fsync of the folder,
as tokend does for outputs that share one), with the same concurrency as
tokend. The durable writes of one refresh run in one worker thread, as any
asyncio program must run blocking fsyncs, and in tokend's order: commit
before the files.

Two modes, chosen by the spec's ``mode``:

* ``burst`` (default): every token refreshed once, all due at once. It
  prints one JSON line: the CPU seconds of the burst (``getrusage`` of this
  process, all threads, setup excluded), its wall time, and the counts.
* ``steady``: every token refreshed again and again, each when its
  ``refresh_at`` fraction of the lifetime, moved by a fixed ``jitter`` of its
  own, has passed (counted from the whole second the request was sent in, as
  tokend's store keeps it), until the process is stopped. It prints
  ``ready`` once its HTTP client exists; the caller measures its CPU from
  outside, as tokend's. A refresh that fails ends the process with an error,
  so a broken baseline cannot pass for a cheap one.
"""

from __future__ import annotations

import asyncio
import json
import math
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


def _render(fmt: str, body: dict[str, Any], expires_at: float) -> bytes:
    """The bytes tokend writes for an output of format ``fmt``."""
    if fmt == "token":
        return str(body["access_token"]).encode()
    if fmt == "env":
        return f"FACTORIAL_ACCESS_TOKEN={body['access_token']}\n".encode()
    document = {
        "access_token": body["access_token"], "token_type": body["token_type"],
        "scope": body["scope"],
        "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at)),
    }
    return (json.dumps(document, sort_keys=True) + "\n").encode()


def _write_outputs(out_dir: Path, user: str, formats: list[str], body: dict[str, Any],
                   expires_at: float) -> None:
    """Every output of ``user`` replaced atomically and durably, one folder fsync for all."""
    renames = []
    for fmt in formats:
        path = out_dir / f"{user}.{fmt}"
        temp = path.with_name(f".{path.name}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, _render(fmt, body, expires_at))
            os.fsync(fd)
        finally:
            os.close(fd)
        renames.append((temp, path))
    for temp, path in renames:
        os.rename(temp, path)
    directory = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class _Refresher:
    """One refresh: POST, parse, commit, outputs; under the spec's concurrency."""

    def __init__(self, spec: dict[str, Any], store: _Store, out_dir: Path) -> None:
        self._spec = spec
        self._store = store
        self._out_dir = out_dir
        self._formats: list[str] = spec.get("formats", ["token"])
        self._slots = asyncio.Semaphore(spec["concurrency"])
        self._url = spec["url"] + "/oauth/token"

    def _persist(self, user: str, body: dict[str, Any], expires_at: float) -> None:
        self._store.commit(user, body)
        _write_outputs(self._out_dir, user, self._formats, body, expires_at)

    async def refresh(
        self, http: httpx.AsyncClient, user: str, refresh_token: str
    ) -> tuple[float, dict[str, Any] | None]:
        """(when the request was sent, the answer; ``None`` when refused)."""
        async with self._slots:
            sent = time.time()
            response = await http.post(self._url, data={
                "grant_type": "refresh_token", "client_id": self._spec["client_id"],
                "client_secret": self._spec["client_secret"], "refresh_token": refresh_token,
            }, headers={"Accept": "application/json"})
            body: dict[str, Any] = response.json()
            if response.status_code != 200:
                return sent, None
            await asyncio.to_thread(self._persist, user, body, sent + body["expires_in"])
            return sent, body


async def _burst(spec: dict[str, Any], store: _Store, out_dir: Path) -> dict[str, Any]:
    refresher = _Refresher(spec, store, out_dir)

    async def one(http: httpx.AsyncClient, user: str, refresh_token: str) -> bool:
        _sent, body = await refresher.refresh(http, user, refresh_token)
        return body is not None

    async with httpx.AsyncClient() as http:
        # Measured from here: tokend's figure also starts after its client exists (READY=1).
        cpu, wall = _cpu(), time.monotonic()
        done = await asyncio.gather(*(one(http, user, rt) for user, rt in spec["tokens"]))
        cpu, wall = _cpu() - cpu, time.monotonic() - wall
    ok = sum(done)
    return {"cpu_s": cpu, "wall_s": wall, "ok": ok, "failed": len(done) - ok}


async def _steady(spec: dict[str, Any], store: _Store, out_dir: Path) -> None:
    refresher = _Refresher(spec, store, out_dir)
    tokens = spec["tokens"]
    # The first refreshes spread evenly over one refresh interval, as tokend's seeded store.
    interval = spec["refresh_at"] * spec["lifetime"]
    began = time.time() + spec.get("delay", 0.0)

    async def rotate(http: httpx.AsyncClient, index: int, user: str, refresh_token: str) -> None:
        due = began + interval * index / len(tokens)
        # A fixed offset per token, spread over tokend's jitter range as its name hashes are.
        fraction = spec["refresh_at"] + ((index + 0.5) / len(tokens) * 2 - 1) * spec["jitter"]
        while True:
            await asyncio.sleep(max(0.0, due - time.time()))
            sent, body = await refresher.refresh(http, user, refresh_token)
            if body is None:
                raise RuntimeError(f"the refresh of {user} was refused")
            refresh_token = body["refresh_token"]
            due = math.floor(sent) + fraction * body["expires_in"]

    async with httpx.AsyncClient() as http:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await asyncio.gather(*(rotate(http, index, user, rt)
                               for index, (user, rt) in enumerate(tokens)))


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    store = _Store(Path(spec["db"]), [user for user, _ in spec["tokens"]])
    if spec.get("mode", "burst") == "steady":
        asyncio.run(_steady(spec, store, out_dir))
        return
    result = asyncio.run(_burst(spec, store, out_dir))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
