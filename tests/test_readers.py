"""``tokend status`` and ``tokend check`` only look: they never migrate, chmod or create
anything in the state directory, so a monitoring check run as another user, or during an
upgrade, cannot change the store under the daemon."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import Setup, as_nobody, tokend
from tokend.sandbox import Sandbox
from tokend.store import DATABASE_NAME
from tokend.store.sqlite_schema import MIGRATIONS

Snapshot = dict[str, tuple[bytes | None, int, int]]


def _snapshot(root: Path) -> Snapshot:
    """Every file and folder under ``root``: its bytes (files), mode and owner."""
    return {
        str(path.relative_to(root)): (
            path.read_bytes() if path.is_file() else None,
            stat.S_IMODE(path.lstat().st_mode), path.lstat().st_uid,
        )
        for path in [root, *sorted(root.rglob("*"))]
    }


def _old_store(state_dir: Path, version: int = 2) -> None:
    """A WAL store at schema ``version`` holding one live token, closed cleanly, as an
    older tokend leaves it."""
    state_dir.mkdir(mode=0o750, exist_ok=True)
    state_dir.chmod(0o750)  # looser than tokend makes it: a reader must not tighten it
    conn = sqlite3.connect(state_dir / DATABASE_NAME, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for statements in MIGRATIONS[:version]:
        for statement in statements:
            conn.execute(statement)
    now = time.time()
    conn.execute(
        "INSERT INTO tokens (app, user, scope, access_token, token_type, expires_in, "
        "refresh_token, granted_scope, created_at, issued_at, state, last_refresh_at, "
        "generation) VALUES ('app', 'alice', 'read', 'old-access-Tk9', 'Bearer', 3600, "
        "'old-refresh-Tk9', 'read', ?, ?, 'ok', ?, 1)", (int(now), now, now))
    conn.execute(f"PRAGMA user_version = {version:d}")
    conn.close()
    (state_dir / DATABASE_NAME).chmod(0o640)


def test_status_and_check_leave_an_old_schema_store_byte_for_byte_unchanged(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """During an upgrade the new tokend's status and check read the old store as it is:
    no migration, no chmod of the store or its folder, no new file; the token is shown."""
    setup = Setup(tmp_path, hour_sandbox, [("alice", "read")])
    setup.write()
    _old_store(setup.state_dir)
    before = _snapshot(setup.state_dir)
    status = tokend("status", "--json", config=setup.config)
    text = tokend("status", config=setup.config)
    check = tokend("check", config=setup.config)
    after = _snapshot(setup.state_dir)
    changed = sorted(name for name in before.keys() | after.keys()
                     if before.get(name) != after.get(name))
    assert changed == []
    assert status.returncode == 0, status.stdout + status.stderr
    assert [(row["name"], row["state"]) for row in json.loads(status.stdout)["tokens"]] == [
        ("app/alice/read", "ok")]
    assert text.returncode == 0, text.stdout + text.stderr
    assert check.returncode == 0, check.stdout + check.stderr


@contextlib.contextmanager
def _shared_setup(sandbox: Sandbox) -> Iterator[Setup]:
    """A setup under a folder ``nobody`` can enter: the config and secret readable by all
    (test data), the state directory root's, 0755, and the store 0644."""
    shared = Path(tempfile.mkdtemp(prefix="tokend-readers-"))
    shared.chmod(0o755)
    try:
        setup = Setup(shared, sandbox, [("alice", "read")])
        setup.write()
        setup.config.chmod(0o644)
        (shared / "client.secret").chmod(0o644)
        _old_store(setup.state_dir)
        setup.state_dir.chmod(0o755)
        (setup.state_dir / DATABASE_NAME).chmod(0o644)
        yield setup
    finally:
        shutil.rmtree(shared)


def _cli_as_nobody(*args: str) -> tuple[int, str]:
    """Run ``tokend ARGS`` in-process in a child that dropped to nobody: (status, output).

    What the commands import is imported here first: ``nobody`` cannot read this venv.
    """
    for module in ("tokend.cli.check", "tokend.cli.status", "tokend.config.load",
                   "tokend.store.sqlite", "tokend.log", "encodings.utf_8_sig"):
        importlib.import_module(module)
    from tokend.cli.main import main  # noqa: PLC0415 -- imported where it runs

    def work() -> str:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
        return json.dumps([code, out.getvalue() + err.getvalue()])

    code, out = json.loads(as_nobody(work))
    return code, out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges to nobody")
def test_a_monitoring_user_who_can_only_read_the_store_gets_a_status(
    hour_sandbox: Sandbox,
) -> None:
    """``nobody`` may read the store but write nothing in its folder: status and check
    answer from it, and the folder is exactly as it was (no -wal, -shm, chmod)."""
    with _shared_setup(hour_sandbox) as setup:
        before = _snapshot(setup.state_dir)
        status_code, status_out = _cli_as_nobody("--config", str(setup.config), "status",
                                                 "--json")
        check_code, check_out = _cli_as_nobody("--config", str(setup.config), "check")
        after = _snapshot(setup.state_dir)
    assert status_code == 0, status_out
    assert [row["state"] for row in json.loads(status_out)["tokens"]] == ["ok"]
    # It may find problems (nobody cannot write the store the daemon writes); it still ran.
    assert check_code in (0, 1) and "check: " in check_out, check_out
    changed = sorted(name for name in before.keys() | after.keys()
                     if before.get(name) != after.get(name))
    assert changed == []
