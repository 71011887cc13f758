"""One daemon per state directory, its mode, and who holds a claim on a token.

:func:`make_private_dir` keeps the state directory 0700. ``StateDirLock`` is
an exclusive ``flock`` that names its holder.
:func:`owner_id` names the process behind a token lease, and
:func:`owner_is_dead` lets a new claimant take over the lease of a holder that
is positively gone (a SIGKILLed daemon) instead of waiting for it to expire.
Liveness is proven, not presumed (DESIGN §2a): a holder we cannot see, because
``ProtectProc=`` hides it, it lives in another pid namespace or on another
host, is alive until its lease ends.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import stat
from pathlib import Path
from types import TracebackType

import structlog

from tokend.errors import AlreadyRunningError, StateError

log = structlog.get_logger(__name__)

LOCK_NAME = "tokend.pid"
PRIVATE_DIR_MODE = 0o700
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

# HOST may itself hold colons; the four fields after it never do.
_OWNER = re.compile(
    r"(?P<host>.*):(?P<boot>[0-9a-f-]{36}):(?P<pidns>[0-9]+):(?P<pid>[1-9][0-9]{0,8}):(?P<start>[0-9]+)",
    re.DOTALL,
)
_UNKNOWN = "-"


class StateDirLock:
    """Hold ``STATE_DIR/tokend.pid`` locked for the life of the daemon.

    The file holds the daemon's pid, so a second daemon can say who is in the
    way and ``tokend status`` can name it (a pid means nothing in another pid
    namespace, so nothing signals it: the CLI rings the doorbell instead).
    The kernel drops the lock when the process dies, so a crash never leaves
    a stale lock behind.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock now, so it owns what lives in the state directory."""
        return self._fd is not None

    def __enter__(self) -> StateDirLock:
        try:
            make_private_dir(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as error:
            raise StateError(f"cannot use state directory {self.path.parent}: "
                             f"{error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunningError(
                f"another tokend (pid {holder}) is already running on {self.path.parent}"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as error:
            os.close(fd)
            raise StateError(f"cannot write {self.path}: {error.strerror}") from None
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def make_private_dir(path: Path) -> None:
    """Create the state directory ``path`` 0700, or tighten an existing one that is looser.

    It holds every refresh token, so only the daemon's user may enter it: a
    folder others can write lets them swap the store, one they can read lists
    what is in it. A folder made by hand under a 022 umask is 0755, so the mode
    is enforced every time the state is opened, not only at creation, and the
    change is logged. One we may not chmod (another user owns it) is logged and
    used as it is: refusing would stop refreshes that work today.
    """
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
    except FileExistsError:
        pass
    else:
        path.chmod(PRIVATE_DIR_MODE)  # mkdir's mode is filtered by the umask
        return
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode) or not mode & 0o077:
        return  # not a folder: opening the store in it fails and says so
    fields = {"path": str(path), "mode": f"{mode:04o}"}
    try:
        path.chmod(PRIVATE_DIR_MODE)
    except PermissionError:
        log.warning("state_dir_open", **fields, uid=os.geteuid(), owner=info.st_uid,
                    error="only its owner can tighten it to 0700")
        return
    log.warning("state_dir_tightened", **fields, now=f"{PRIVATE_DIR_MODE:04o}")


def make_private_file(path: Path) -> None:
    """Create the file ``path`` 0600 before SQLite opens it, so it is never readable by others."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def narrow_sidecar_modes(path: Path) -> None:
    """Keep ``-wal``/``-shm`` no more open than the database (SQLite copies its mode; belt)."""
    try:
        wanted = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    for suffix in ("-wal", "-shm"):
        sidecar = path.with_name(path.name + suffix)
        try:
            mode = stat.S_IMODE(sidecar.stat().st_mode)
            if mode & ~wanted:
                sidecar.chmod(mode & wanted)
        except OSError:
            continue  # absent, or not ours to change: SQLite already matched the db's mode


def boot_id() -> str | None:
    """This boot's id from the kernel, or ``None`` when ``/proc`` cannot tell: a lease or an
    owner of another boot has ended."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return None


def running_daemon_pid(state_dir: Path) -> int | None:
    """The pid of the daemon holding ``state_dir``, or ``None`` when none runs."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def owner_id() -> str:
    """Who holds a claim: ``HOST:BOOT:PIDNS:PID:START``, one process across machines and time.

    ``BOOT`` is the kernel's boot id (``/proc/sys/kernel/random/boot_id``),
    ``PIDNS`` the inode of our pid namespace (``pid:[4026531836]`` gives
    ``4026531836``), ``PID`` our pid in it and ``START`` our start time in
    clock ticks since boot, which tells a reused pid apart. For example
    ``web1:0e6f0f5e-4d1c-4c5e-9d1a-5b8e1c2f3a4b:4026531836:4242:981234``.
    Parse from the right: only ``HOST`` may contain colons. A field that
    cannot be read is ``-``, and such an owner is never judged dead.
    """
    pid = os.getpid()
    view = _local_view()
    boot, pidns = view if view is not None else (_UNKNOWN, _UNKNOWN)
    start = (_start_time(pid) if view is not None else None) or _UNKNOWN
    return f"{socket.gethostname()}:{boot}:{pidns}:{pid}:{start}"


def owner_is_dead(owner: str) -> bool:
    """Whether the process named by an :func:`owner_id` has positively ended.

    Only a holder on this host, this boot and this pid namespace can be judged,
    and only two facts prove it gone: no process has its pid, or the process
    with its pid started at another time (the pid was reused). Anything else
    (another user's process we may not signal or see, an owner from elsewhere,
    an old or unreadable owner string) counts as alive: its lease covers it.
    """
    match = _OWNER.fullmatch(owner)
    view = _local_view()
    if match is None or view is None:
        return False
    if (match["host"], match["boot"], match["pidns"]) != (socket.gethostname(), *view):
        return False
    pid = int(match["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # It exists under another user: only its start time can show the pid was reused.
    current = _start_time(pid)
    return current is not None and current != match["start"]


def _local_view() -> tuple[str, str] | None:
    """This boot's id and our pid namespace's inode, or ``None`` when ``/proc`` cannot vouch.

    ``/proc`` must belong to our own pid namespace: one mounted from another
    (a container started without its own ``/proc``) numbers other processes,
    so its ``/proc/PID`` would describe a stranger.
    """
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return None
        namespace = re.fullmatch(r"pid:\[([0-9]+)\]", os.readlink("/proc/self/ns/pid"))
    except OSError:
        return None
    boot = boot_id()
    if namespace is None or boot is None or not re.fullmatch(r"[0-9a-f-]{36}", boot):
        return None
    return boot, namespace[1]


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or ``None`` when we cannot see it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields resume after the last ")".
    return stat.rpartition(")")[2].split()[19]
