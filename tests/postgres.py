"""A throwaway PostgreSQL server for the tests: real SQL, real leases on the server's clock.

One server per test session (``initdb`` + start take about a second), one fresh database
per test (a file copy of ``template0``, tens of milliseconds). ``initdb`` refuses root, so
as root the server runs as the ``postgres`` user in a directory that user owns, outside
pytest's 0700 temporary root. ``fsync=off``: the tests prove tokend's logic, not the
disk's. Connections from 127.0.0.1 need a password (SCRAM), so the tests pass one the
way a deployment does.

CI runs as root with ``CI=true`` on a machine where ``.ci/run`` installed the server:
there a missing server fails the session instead of skipping it.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

USER = "tokend"
SERVER_USER = "postgres"
PROGRAMS = ("initdb", "pg_ctl", "postgres")


def find_bindir() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``: PATH, then Debian's place."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
                         key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                         reverse=True)
    for bindir in candidates:
        if all((bindir / program).exists() for program in PROGRAMS):
            return bindir
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """One PostgreSQL server on 127.0.0.1: start, stop (as a crash would), fresh databases."""

    bindir: Path
    root: Path
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _emptied: str | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=self.root)

    def _check(self, done: subprocess.CompletedProcess[str], what: str) -> None:
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL {what} failed ({done.returncode}): "
                               f"{done.stderr.strip() or done.stdout.strip()}")

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        _give_to_server_user(pwfile)
        self._check(self._run("initdb", "-D", str(self.data), "-U", USER, "--no-sync",
                              "-E", "UTF8", "--locale=C", "--auth-local=trust",
                              "--auth-host=scram-sha-256", f"--pwfile={pwfile}"), "initdb")
        pwfile.unlink()

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off "
                   f"-c full_page_writes=off -c unix_socket_directories={self.root} "
                   "-c max_connections=200")
        self._check(self._run("pg_ctl", "-D", str(self.data), "-o", options,
                              "-l", str(self.root / "server.log"), "-w", "-t", "30", "start"),
                    "start")

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: the server dies as in a crash, clients see their connections cut."""
        self._check(self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"), "stop")

    def url(self, database: str = "postgres") -> str:
        """A libpq URL without the password, as an operator writes ``store:``."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run ``sql`` as the superuser over the unix socket (no password, not a test path)."""
        done = subprocess.run(
            [str(self.bindir / "psql"), "-h", str(self.root), "-p", str(self.port), "-U", USER,
             "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql],
            capture_output=True, text=True, timeout=60, check=False)
        self._check(done, f"psql {sql!r}")

    def new_database(self) -> str:
        """A new empty database's name, for a test that runs daemons (a few hundred ms)."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE template0")
        return name

    def emptied_database(self) -> str:
        """The name of one database kept for the contract tests, emptied: each test starts
        from nothing in milliseconds instead of creating a database of its own."""
        import psycopg  # noqa: PLC0415 -- psycopg is there once unavailable_reason() said so

        if self._emptied is None:
            self._emptied = self.new_database()
        with psycopg.connect(self.url(self._emptied), password=self.password,
                             autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        return self._emptied


def _give_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def unavailable_reason() -> str | None:
    """Why no PostgreSQL server can run here, or ``None`` when one can."""
    if find_bindir() is None:
        return "PostgreSQL is not installed (no initdb/pg_ctl/postgres on PATH or in " \
               "/usr/lib/postgresql/*/bin); .ci/run installs the Debian package"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} user to run the server as"
    try:
        import psycopg  # noqa: F401, PLC0415 -- only to learn whether the extra is installed
    except ImportError:
        return "psycopg is not installed: pip install -e '.[test]'"
    return None


def running_server() -> Iterator[PostgresServer]:
    """Start a server for the session and stop it at the end; skip (never on CI) if none can."""
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests, but: {reason}")
        pytest.skip(reason)
    bindir = find_bindir()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="tokend-pg-", dir="/tmp"))
    _give_to_server_user(root)
    server = PostgresServer(bindir, root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server._run("pg_ctl", "-D", str(server.data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
