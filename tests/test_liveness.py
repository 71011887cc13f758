"""Lease holders count as dead only when their death is proven (DESIGN §2a)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokend.store.lock import owner_id, owner_is_dead

ROOT = Path(__file__).resolve().parents[1]
OTHER_BOOT = "00000000-0000-4000-8000-000000000000"

# Prints its owner_id(), then lives until its stdin closes.
HOLDER = (
    "import sys; from tokend.store.lock import owner_id; "
    "print(owner_id(), flush=True); sys.stdin.read()"
)
# Judges the owner given as argv[1] from wherever it is started; argv[2] is that owner's pid.
JUDGE = (
    "import os, sys; from tokend.store.lock import owner_is_dead; "
    "print(os.path.exists(f'/proc/{sys.argv[2]}'), owner_is_dead(sys.argv[1]))"
)


class Holder:
    """A live child process that could hold a lease, and the owner string it calls itself."""

    def __init__(self, prefix: list[str] | None = None) -> None:
        self.process = subprocess.Popen(
            [*(prefix or []), sys.executable, "-c", HOLDER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        assert self.process.stdout is not None
        self.owner = self.process.stdout.readline().strip()

    def kill(self) -> None:
        """SIGKILL it and reap it, as systemd reaps a killed daemon."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """Let it end (closing its stdin) and close its pipes."""
        self.process.communicate(timeout=10)


def _fields(owner: str) -> list[str]:
    """``[host, boot, pidns, pid, start]``: the documented form, parsed from the right."""
    return owner.rsplit(":", 4)


def _with(owner: str, index: int, value: str) -> str:
    fields = _fields(owner)
    fields[index] = value
    return ":".join(fields)


@pytest.fixture
def holder() -> Iterator[Holder]:
    child = Holder()
    yield child
    child.stop()


@pytest.fixture
def dead_owner(holder: Holder) -> str:
    """The owner string of a child that was SIGKILLed and reaped."""
    holder.kill()
    return holder.owner


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to unshare namespaces and drop to another user")


def test_owner_id_names_host_boot_namespace_pid_and_start() -> None:
    """The owner string holds every fact liveness is judged on, in the documented order."""
    host, boot, pidns, pid, start = _fields(owner_id())
    assert host == os.uname().nodename
    assert boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert f"pid:[{pidns}]" == os.readlink("/proc/self/ns/pid")
    assert pid == str(os.getpid())
    assert start.isdigit()


def test_sigkilled_holder_is_dead(dead_owner: str) -> None:
    """A holder whose pid no process has any more is proven dead."""
    assert owner_is_dead(dead_owner)


def test_live_holder_is_alive(holder: Holder) -> None:
    """A running holder is alive."""
    assert not owner_is_dead(holder.owner)


def test_reused_pid_is_dead(holder: Holder) -> None:
    """A live process under the holder's pid that started at another time is someone else."""
    start = int(_fields(holder.owner)[4])
    assert owner_is_dead(_with(holder.owner, 4, str(start + 1)))


def test_holder_of_another_boot_is_alive(dead_owner: str) -> None:
    """Pids and start times of another boot say nothing about this one."""
    assert not owner_is_dead(_with(dead_owner, 1, OTHER_BOOT))


def test_holder_of_another_pid_namespace_is_alive(dead_owner: str) -> None:
    """A pid of another pid namespace names some other process here."""
    assert not owner_is_dead(_with(dead_owner, 2, "1"))


def test_holder_on_another_host_is_alive(dead_owner: str) -> None:
    """A holder on another host (a shared store) is covered by its lease alone."""
    assert not owner_is_dead(_with(dead_owner, 0, "elsewhere"))


def test_holder_named_in_the_old_format_is_alive(dead_owner: str) -> None:
    """An owner written as ``host:pid:start`` by an older tokend names no boot or namespace."""
    host, _, _, pid, start = _fields(dead_owner)
    assert not owner_is_dead(f"{host}:{pid}:{start}")


@pytest.mark.parametrize("owner", ["", "test", "someone-else", "a:b:c:d:e", "h:-:-:1:-"])
def test_unparseable_owner_is_alive(owner: str) -> None:
    """An owner string that is not an owner_id() proves nothing."""
    assert not owner_is_dead(owner)


def test_holder_hidden_by_hidepid_is_alive(holder: Holder) -> None:
    """Under ProtectProc=invisible a root process is invisible to the daemon's user: alive.

    The judge runs as nobody in its own mount namespace, with a fresh /proc
    mounted ``hidepid=invisible``, as systemd's ``ProtectProc=invisible`` does.
    """
    _needs_root()
    pid = _fields(holder.owner)[3]
    script = (
        "mount -t proc -o hidepid=invisible proc /proc && exec setpriv "
        "--reuid=nobody --regid=nogroup --clear-groups \"$@\""
    )
    judged = subprocess.run(
        ["unshare", "--mount", "--fork", "sh", "-c", script, "sh",
         sys.executable, "-c", JUDGE, holder.owner, pid],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    if judged.returncode != 0:
        pytest.skip(f"cannot mount /proc with hidepid=invisible as nobody: {judged.stderr.strip()}")
    assert judged.stdout.split() == ["False", "False"]  # not visible, and not judged dead


def test_live_holder_in_a_real_other_pid_namespace_is_alive() -> None:
    """A holder running in a container's pid namespace is alive; its pid means another here."""
    _needs_root()
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    holder = Holder(["unshare", "--pid", "--fork", "--mount-proc"])
    try:
        if not holder.owner:
            pytest.skip("the kernel refused a new pid namespace")
        assert _fields(holder.owner)[3] == "1"
        assert not owner_is_dead(holder.owner)
    finally:
        holder.stop()


def test_proc_of_another_pid_namespace_judges_nobody() -> None:
    """Where /proc belongs to a parent pid namespace, its entries describe strangers: no verdict.

    The judge lives in a new pid namespace but sees the parent's /proc, so
    ``/proc/1`` there is the parent's init, not the judge itself.
    """
    _needs_root()
    script = (
        "import os, re; from tokend.store.lock import owner_is_dead; "
        "host = os.uname().nodename; "
        "start = open('/proc/self/stat').read().rpartition(')')[2].split()[19]; "
        "boot = open('/proc/sys/kernel/random/boot_id').read().strip(); "
        "ns = re.findall('[0-9]+', os.readlink('/proc/self/ns/pid'))[0]; "
        "print(os.getpid(), owner_is_dead(f'{host}:{boot}:{ns}:{os.getpid()}:{start}'))"
    )
    judged = subprocess.run(
        ["unshare", "--pid", "--fork", sys.executable, "-c", script],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    if judged.returncode != 0:
        pytest.skip(f"cannot unshare a pid namespace: {judged.stderr.strip()}")
    assert judged.stdout.split() == ["1", "False"]  # the judge itself, alive, is not judged dead
