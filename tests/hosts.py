"""Several "hosts" on one PostgreSQL store: each a config with its own state_dir and output
folder, all naming one database, for the end-to-end tests of the shared store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.e2e import CLIENT_ID, Setup
from tests.postgres import PostgresServer
from tokend.model import Token, TokenName
from tokend.sandbox import Sandbox
from tokend.store.postgres import PostgresStateStore
from tokend.store.postgres_schema import CHANNEL


def shared_hosts(root: Path, sandbox: Sandbox, server: PostgresServer, url: str,
                 tokens: Sequence[tuple[str, str]], *, count: int) -> list[Setup]:
    """``count`` hosts' configs (written) on the database at ``url``."""
    password_file = root / "db.password"
    password_file.write_text(server.password + "\n")
    password_file.chmod(0o600)
    hosts = []
    for index in range(count):
        folder = root / f"host-{index}"
        folder.mkdir()
        setup = Setup(folder, sandbox, tokens, top_level_yaml=(
            f"store: {url}\nstore_password_file: {password_file}\n"))
        setup.write()
        hosts.append(setup)
    return hosts


def own_host(hostname: str) -> list[str]:
    """A command prefix that runs the rest in a UTS namespace of its own named ``hostname``:
    to tokend (whose lease owners start with the host name) another machine, whose
    processes it cannot see, so a SIGKILLed daemon's lease must run out on its own."""
    return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname]


def no_own_host_reason() -> str | None:
    """Why :func:`own_host` cannot work here, or ``None`` when it can."""
    if shutil.which("unshare") is None or shutil.which("hostname") is None:
        return "unshare or hostname (util-linux, hostname) is not installed"
    if os.geteuid() != 0:
        return "a UTS namespace with its own host name needs root"
    done = subprocess.run([*own_host("probe"), "true"], capture_output=True, text=True,
                          timeout=10, check=False)
    if done.returncode != 0:
        return f"unshare --uts is refused here: {done.stderr.strip()}"
    return None


def seed(server: PostgresServer, url: str, sandbox: Sandbox,
         tokens: Sequence[tuple[str, str]]) -> None:
    """Store a fresh token for each of ``tokens`` as if each had been authorized."""
    store = PostgresStateStore(url, password=server.password)
    try:
        items = []
        for user, scope in tokens:
            body = sandbox.issue_token(client_id=CLIENT_ID, user=user, scope=scope)
            items.append((TokenName("app", user, scope), Token(
                access_token=body["access_token"], token_type=body["token_type"],
                expires_in=body["expires_in"], refresh_token=body["refresh_token"],
                scope=body["scope"], created_at=body["created_at"])))
        store.save_tokens(items, now=time.time())
    finally:
        store.close()


def output(setup: Setup, user: str, scope: str) -> str | None:
    """The bare token output of ``app/USER/SCOPE`` on ``setup``'s host, ``None`` if absent."""
    try:
        return setup.output(user, scope, "token").read_text()
    except FileNotFoundError:
        return None


class CommitWatch:
    """Hears every token write on the database and measures how long each host takes to
    hold the committed access token in its output (the cross-host publishing lag).

    A commit a newer one replaced before a host showed it is counted as superseded, not
    as a lag. Tokens are compared, never printed.
    """

    def __init__(self, server: PostgresServer, url: str, hosts: Sequence[Setup]) -> None:
        import psycopg  # noqa: PLC0415 -- the tests import it only where PostgreSQL runs

        self._conn = psycopg.connect(url, password=server.password, autocommit=True)
        self._conn.execute(f"LISTEN {CHANNEL}")
        self._hosts = hosts
        self.pending: dict[tuple[int, str], tuple[str, str, str, float]] = {}
        self.lags: list[float] = []
        self.superseded = 0
        self.commits = 0

    def close(self) -> None:
        self._conn.close()

    def poll(self, seconds: float, *, hear: bool = True) -> None:
        """Hear commits (unless not ``hear``) and look at the hosts' outputs for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            # Read after the generator ends: it holds the connection while it runs.
            notes = [json.loads(note.payload)
                     for note in self._conn.notifies(timeout=0.01, stop_after=50)]
            for note in notes:
                self._heard(note, track=hear)
            self._look()

    def _heard(self, note: dict[str, Any], *, track: bool) -> None:
        """Start timing each host for the commit ``note`` announces (only when ``track``);
        an earlier commit of the token not yet shown is superseded either way."""
        if note.get("released"):
            return  # a lease ended: no token was written
        heard_at = time.monotonic()
        row = self._conn.execute(
            "SELECT access_token FROM tokens WHERE app = %s AND account = %s AND scope = %s "
            "AND generation = %s", (note["app"], note["user"], note["scope"],
                                    note["generation"])).fetchone()
        if row is None or row[0] is None:
            return  # already replaced, or a revoke
        self.commits += track
        for index, _ in enumerate(self._hosts):
            key = (index, f"{note['user']}/{note['scope']}")
            if self.pending.pop(key, None) is not None:
                self.superseded += 1
            if track:
                self.pending[key] = (note["user"], note["scope"], row[0], heard_at)

    def _look(self) -> None:
        now = time.monotonic()
        for key, (user, scope, token, heard_at) in list(self.pending.items()):
            if output(self._hosts[key[0]], user, scope) == token:
                self.lags.append(now - heard_at)
                del self.pending[key]

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


class Leases:
    """The lease of one token as the database sees it, read on the database's clock."""

    def __init__(self, server: PostgresServer, url: str, name: str = "app/alice/read") -> None:
        import psycopg  # noqa: PLC0415 -- the tests import it only where PostgreSQL runs

        self._conn = psycopg.connect(url, password=server.password, autocommit=True)
        self._key = tuple(name.split("/"))

    def close(self) -> None:
        self._conn.close()

    def now(self) -> tuple[str, int, float, float]:
        """The holder (``''``: none), the epoch, when the lease ends and the database's now,
        the times in seconds since the epoch."""
        row = self._conn.execute(
            "SELECT owner, epoch, extract(epoch FROM expires_at)::float8, "
            "extract(epoch FROM now())::float8 FROM leases "
            "WHERE app = %s AND account = %s AND scope = %s", self._key).fetchone()
        assert row is not None, "the token has no lease row"
        return str(row[0]), int(row[1]), float(row[2]), float(row[3])
