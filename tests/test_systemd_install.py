"""Installing around the units: the user service as the README installs it, and the
contrib .path unit that restarts a consumer when tokend writes its token."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import struct
import sys
from pathlib import Path

from tests.e2e import Setup, tokend
from tests.systemd_units import ROOT, needs_analyze, unit_values, verify_complaints
from tokend.sandbox import Sandbox

USER_UNIT = ROOT / "systemd" / "user" / "tokend.service"
CONTRIB = ROOT / "contrib"


@needs_analyze
def test_the_example_path_unit_verifies_and_watches_an_example_output() -> None:
    """contrib's .path/.service pair (the way to restart a consumer, which a hook running as
    tokend may not do) is valid, and watches a file config.example.yaml writes."""
    path_unit = CONTRIB / "payroll-token.path"
    service = CONTRIB / "payroll-token.service"
    assert verify_complaints(path_unit, service) == ""
    watched = unit_values(path_unit, "PathChanged")
    example = (ROOT / "config.example.yaml").read_text()
    assert watched
    assert all(re.search(rf"path: {re.escape(path)}\s", example) for path in watched), watched


# systemd's inotify mask for PathChanged= (src/core/path.c): IN_ATTRIB, IN_CLOSE_WRITE,
# IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF.
PATH_CHANGED_MASK = 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800


def test_a_refresh_fires_a_path_changed_watch_on_the_output(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A .path unit triggers on an event of the watch on the file itself; tokend's
    rename over the file must raise one, or the consumer is never restarted."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")]).authorized()
    output = setup.output("alice", "read", "env")
    libc = ctypes.CDLL(None, use_errno=True)
    inotify = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert inotify >= 0, os.strerror(ctypes.get_errno())
    try:
        watch = libc.inotify_add_watch(inotify, bytes(output), PATH_CHANGED_MASK)
        assert watch >= 0, os.strerror(ctypes.get_errno())
        result = tokend("refresh", "--force", config=setup.config)
        assert result.returncode == 0, result.stderr
        try:
            events = os.read(inotify, 65536)
        except BlockingIOError:
            events = b""
    finally:
        os.close(inotify)
    watches = []
    while events:
        wd, _mask, _cookie, length = struct.unpack_from("iIII", events)
        watches.append(wd)
        events = events[16 + length:]
    assert watch in watches


def readme_user_install() -> str:
    """The shell block of the README's user-service section."""
    section = (ROOT / "README.md").read_text().split("### A user service for one person")[1]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the README's user-service section has no shell block"
    return match.group(1)


def readme_user_venv() -> str:
    """The venv the README's user install creates, as written there (``~/…``)."""
    commands = readme_user_install()
    assert "pip install --user" not in commands, (
        "pip install --user is refused on an externally managed Python (PEP 668)")
    match = re.search(r"python3 -m venv (\S+)", commands)
    assert match is not None, "the README's user install creates no venv"
    venv = match.group(1)
    assert f"{venv}/bin/pip install" in commands, "the README installs tokend outside its venv"
    return venv


def test_the_user_unit_runs_the_tokend_the_readme_installs() -> None:
    """The user unit's ExecStart= is the executable the README's install puts in the venv."""
    executable = unit_values(USER_UNIT, "ExecStart")[0].split()[0]
    assert executable.replace("%h/", "~/", 1) == f"{readme_user_venv()}/bin/tokend"


@needs_analyze
def test_the_user_unit_verifies_after_the_readme_install(tmp_path: Path) -> None:
    """In a home where tokend sits where the README installs it, the user unit installed as
    the README says verifies cleanly with ``systemd-analyze --user``."""
    home = tmp_path / "home"
    executable = home / readme_user_venv().removeprefix("~/") / "bin" / "tokend"
    executable.parent.mkdir(parents=True)
    executable.symlink_to(Path(sys.executable).parent / "tokend")
    unit = home / ".config" / "systemd" / "user" / "tokend.service"
    unit.parent.mkdir(parents=True)
    shutil.copyfile(USER_UNIT, unit)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    environ = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    assert verify_complaints(unit, user=True, env=environ) == ""
