"""A second SIGINT stops the daemon at once, and takes its hooks and temporary files along."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.e2e import NOBODY, Setup, StartDaemon, wait_for
from tokend.engine.atomic import remove_temp_files
from tokend.sandbox import Sandbox


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (zombies awaiting a reaper do not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # it ended while we looked
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def test_a_second_sigint_kills_the_running_hooks_and_leaves_no_temp_file(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """Ctrl-C twice while an on_refresh hook sleeps: the daemon exits at once, the hook's
    process group (it runs in its own session) is gone with it, and no ``.tmp`` file of
    ours is left in the output folders."""
    pid_file, armed = tmp_path / "hook.pid", tmp_path / "armed"
    hook = (f"        on_refresh: [sh, -c, 'test -e {armed} || exit 0; echo $$ > {pid_file}; "
            "sleep 120 & sleep 120']\n        hook_timeout: 5m\n")
    setup = Setup(tmp_path, sandbox, [("alice", "read")], {"alice": hook}).authorized()
    armed.touch()  # from now on the hook sleeps: only the daemon runs it
    daemon = start_daemon(setup.config)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 20,
             "the daemon's on_refresh hook to start")
    pgid = int(pid_file.read_text())
    assert _group_alive(pgid)
    # What a write of the token's output cut short by the exit leaves behind.
    token = setup.output("alice", "read", "token")
    (token.parent / f".{token.name}.0123456789abcdef.tmp").write_text("half a token")
    daemon.process.send_signal(signal.SIGINT)
    # Two signals sent at once may arrive as one: the second goes once the first was seen.
    wait_for(lambda: daemon.named("daemon_stopping"), 10, "the first SIGINT to be seen")
    daemon.process.send_signal(signal.SIGINT)
    assert daemon.process.wait(10) != 0
    daemon.stop()
    try:
        wait_for(lambda: not _group_alive(pgid), 10, "the hook's process group to end")
    finally:
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
    leftovers = [path.name for path in (tmp_path / "out").iterdir()
                 if path.name.endswith(".tmp")]
    assert leftovers == []


def test_only_our_temporary_files_beside_our_outputs_are_removed(tmp_path: Path) -> None:
    """The cleanup takes the temporary files a write of one of our outputs leaves, and
    nothing else: not another file's, not one shaped otherwise, not another user's."""
    output = tmp_path / "app.token"
    output.write_text("the token")
    ours = tmp_path / ".app.token.0123456789abcdef.tmp"
    kept = [tmp_path / ".other.token.0123456789abcdef.tmp", tmp_path / ".app.token.tmp",
            tmp_path / "app.token.0123456789abcdef.tmp", tmp_path / ".app.token.notahex.tmp"]
    theirs = tmp_path / ".app.token.fedcba9876543210.tmp"
    for path in (ours, *kept, theirs):
        path.write_text("x")
    os.chown(theirs, NOBODY, NOBODY)
    remove_temp_files([output, tmp_path / "missing" / "x.token"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (output, *kept, theirs))
