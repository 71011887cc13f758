"""Disk faults: a clear error, the state intact, and recovery once the fault clears.

These tests mount a read-only bind or a tiny tmpfs, so they need root with
CAP_SYS_ADMIN; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e import Setup, StartDaemon, authorize, refreshed, wait_for
from tokend.model import TokenName
from tokend.sandbox import Sandbox
from tokend.store.interface import TokenRecord
from tokend.store.sqlite import SqliteStateStore

NAME = TokenName("app", "alice", "read")
Mount = Callable[..., None]


def _run(*argv: str) -> bool:
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    """Mount helpers (read-only bind, sized tmpfs); everything is unmounted at the end."""
    probe = tmp_path / "probe"
    probe.mkdir()
    if not _run("mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(probe)):
        pytest.skip("cannot mount here (needs root with CAP_SYS_ADMIN)")
    _run("umount", str(probe))
    mounted: list[Path] = []

    def do(kind: str, path: Path, size: str = "64k") -> None:
        if kind == "ro":
            ok = _run("mount", "--bind", str(path), str(path)) and _run(
                "mount", "-o", "remount,bind,ro", str(path)
            )
        else:
            ok = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
        assert ok, f"mount {kind} {path} failed"
        mounted.append(path)

    yield do
    for path in reversed(mounted):
        _run("umount", "-l", str(path))


def _unmount(path: Path) -> None:
    assert _run("umount", str(path)), f"umount {path} failed"


def _record(setup: Setup) -> TokenRecord | None:
    store = SqliteStateStore(setup.state_dir)
    try:
        return store.get(NAME)
    finally:
        store.close()


def _setup(tmp_path: Path, sandbox: Sandbox) -> Setup:
    setup = Setup(tmp_path, sandbox, [("alice", "read")],
                  defaults_yaml="  refresh_at: 0.5\n  retry: {initial: 0.5s, max: 2s}\n")
    setup.write()
    authorize(setup, "alice", "read")
    return setup


def _outputs_match_store(setup: Setup) -> bool:
    record = _record(setup)
    path = setup.output("alice", "read", "token")
    return (
        record is not None and record.token is not None and path.exists()
        and path.read_text() == record.token.access_token
    )


def test_a_read_only_output_folder_is_reported_and_healed(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon, mount: Mount
) -> None:
    """EROFS on the output folder: failing with the path, tokens still rotate, files heal."""
    setup = _setup(tmp_path, sandbox)
    daemon = start_daemon(setup.config)
    out = setup.output("alice", "read", "token").parent
    wait_for(lambda: refreshed(daemon, str(NAME)) >= 1, 10, "a first refresh")
    mount("ro", out)
    wait_for(lambda: daemon.named("outputs_failed"), 10, "outputs_failed")
    record = _record(setup)
    assert record is not None
    assert record.shown_state(7 * 86400, time.time()) == "failing"
    assert record.state.value == "ok", "an output problem must not change the token's health"
    assert record.output_error is not None and str(out) in record.output_error
    assert "Read-only file system" in record.output_error
    rotations = refreshed(daemon, str(NAME))
    wait_for(lambda: refreshed(daemon, str(NAME)) > rotations, 10, "refreshes to go on")

    _unmount(out)
    wait_for(lambda: _outputs_match_store(setup), 5, "the outputs to heal")
    wait_for(lambda: (r := _record(setup)) is not None and r.output_error is None, 5, "ok")
    assert daemon.stop() == 0


def test_an_output_whose_parent_is_a_file_recovers_when_fixed(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """A file where the output folder should be: a clear error, then healing once removed."""
    setup = _setup(tmp_path, sandbox)
    out = setup.output("alice", "read", "token").parent
    for path in out.iterdir():
        path.unlink()
    out.rmdir()
    out.write_text("in the way")
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("outputs_failed"), 10, "outputs_failed")
    assert f"parent {out} is not a directory" in str(daemon.named("outputs_failed")[0]["error"])
    out.unlink()
    wait_for(lambda: _outputs_match_store(setup), 5, "the outputs to heal")
    assert daemon.stop() == 0


def test_a_full_disk_is_survived(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon, mount: Mount
) -> None:
    """ENOSPC on the output folder, then space freed: outputs come back, no token lost."""
    setup = _setup(tmp_path, sandbox)
    out = setup.output("alice", "read", "token").parent
    daemon = start_daemon(setup.config)
    wait_for(lambda: refreshed(daemon, str(NAME)) >= 1, 10, "a first refresh")
    mount("tmpfs", out, "64k")
    filler = out / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):  # ENOSPC is the point
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    wait_for(lambda: daemon.named("outputs_failed"), 10, "outputs_failed")
    assert "No space left on device" in str(daemon.named("outputs_failed")[-1]["error"])
    filler.unlink()
    wait_for(lambda: _outputs_match_store(setup), 5, "the outputs to come back")
    record = _record(setup)
    assert record is not None and record.token is not None
    assert sandbox.refresh_token_state(record.token.refresh_token) == "live"
    assert daemon.stop() == 0


def test_a_read_only_state_dir_at_start_is_waited_out(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon, mount: Mount
) -> None:
    """The store cannot be written at start: a clear error, retries, then normal service."""
    setup = _setup(tmp_path, sandbox)
    database = setup.state_dir / "tokend.db"
    before = database.read_bytes()
    mount("ro", setup.state_dir)
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("state_unavailable"), 10, "state_unavailable")
    assert "Read-only file system" in str(daemon.named("state_unavailable")[0]["error"])
    assert daemon.process.poll() is None, "the daemon gave up"
    assert database.read_bytes() == before, "the state changed while unwritable"

    _unmount(setup.state_dir)
    wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
    wait_for(lambda: refreshed(daemon, str(NAME)) >= 1, 10, "a refresh")
    assert daemon.stop() == 0
