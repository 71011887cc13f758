"""One file replaced atomically and durably, the way every file tokend writes is replaced.

Other programs read these files at any moment (a service restarting, a cron
job), so a reader must see the old file or the new file, never an empty or
half-written one. Every write therefore goes to a fresh temporary file in the
target's directory, is fsynced with its final mode and owner, renamed over the
target, and the directory is fsynced so the rename survives a crash.

Safety rules, decided once here:

* A symlink at the target is refused. ``rename`` would replace the link itself
  rather than follow it, so a planted link could not redirect the write anyway,
  but silently replacing a link the operator may have made on purpose hides a
  misconfiguration; an explicit error does not.
* A directory (or any other non-regular file) at the target is refused.
* The temporary file is created with ``O_EXCL | O_NOFOLLOW``, so a link planted
  at a guessed temporary name cannot redirect it either.

Errors carry the path and the OS reason, never the file's content. Paths are
handled as strings inside: a refresh writes a few files several times a second,
and building ``pathlib`` objects for each step was a good part of its cost.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from tokend.errors import OutputError

_DIR_MODE = 0o755
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{16}\.tmp")
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def write_atomic(
    path: Path,
    content: bytes,
    *,
    mode: int = 0o600,
    owner: int | None = None,
    group: int | None = None,
) -> bool:
    """Replace ``path`` with ``content`` atomically; ``False`` when it already is exactly that.

    "Exactly" includes mode, and owner/group when given: a file whose content is
    right but whose permissions are wrong is rewritten, which fixes them atomically.
    Skipping identical writes keeps inotify watchers of the file quiet.
    """
    target = os.fspath(path)
    temp = prepare(target, content, mode, owner, group)
    if temp is None:
        return False
    rename(temp, target)
    fsync_directory(parent_of(target), target)
    return True


def parent_of(path: str) -> str:
    """``Path(path).parent``, as a string."""
    return os.path.dirname(path) or "."


def prepare(
    path: str, content: bytes, mode: int, owner: int | None, group: int | None,
    *, compare: bool = True,
) -> str | None:
    """A fsynced temporary file beside ``path`` holding ``content`` with its final mode and
    owner, or ``None`` when ``path`` already is exactly that (looked at with ``compare``)."""
    if compare:
        if _is_unchanged(path, content, mode, owner, group):
            return None
    else:
        _inspect_target(path)
    parent = parent_of(path)
    temp = f"{parent}/.{os.path.basename(path)}.{secrets.token_hex(8)}.tmp"  # as _TEMP_NAME says
    try:
        try:
            fd = os.open(temp, _TEMP_FLAGS, 0o600)
        except (FileNotFoundError, NotADirectoryError):
            # The folder is missing (or is not one): made here, or refused with a clear
            # message. Looked at only then: it is there at almost every write.
            _ensure_directory(path)
            fd = os.open(temp, _TEMP_FLAGS, 0o600)
    except OSError as exc:
        reason = exc.strerror
        raise OutputError(f"{path}: cannot create a file in {parent}: {reason}") from None
    try:
        try:
            _write_all(fd, content)
            if owner is not None or group is not None:
                # chown clears set-id bits, so it must come before chmod.
                os.fchown(fd, -1 if owner is None else owner, -1 if group is None else group)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        _unlink_quietly(temp)
        raise OutputError(f"{path}: cannot write: {exc.strerror}") from None
    except BaseException:
        _unlink_quietly(temp)
        raise
    return temp


def rename(temp: str, path: str) -> None:
    try:
        os.rename(temp, path)
    except OSError as exc:
        _unlink_quietly(temp)
        raise OutputError(f"{path}: cannot write: {exc.strerror}") from None


def _is_unchanged(
    path: str, content: bytes, mode: int, owner: int | None, group: int | None
) -> bool:
    """Whether ``path`` already holds ``content`` with this metadata; refuses unsafe targets."""
    info = _inspect_target(path)
    if info is None or info.st_size != len(content) or stat.S_IMODE(info.st_mode) != mode:
        return False
    if (owner is not None and info.st_uid != owner) or (group is not None and info.st_gid != group):
        return False
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return False  # vanished or became a link meanwhile: rewriting is the safe answer
    try:
        existing = os.read(fd, len(content) + 1)
    except OSError:
        return False
    finally:
        os.close(fd)
    return existing == content


def _inspect_target(path: str) -> os.stat_result | None:
    """The target's own status (links not followed), ``None`` when missing."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        parent = _first_file(Path(parent_of(path)))
        raise OutputError(f"{path}: parent {parent} is not a directory") from None
    except OSError as exc:
        raise OutputError(f"{path}: cannot inspect: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise OutputError(f"{path} is a symlink; refusing to follow or replace it")
    if stat.S_ISDIR(info.st_mode):
        raise OutputError(f"{path} is a directory; refusing to replace it")
    if not stat.S_ISREG(info.st_mode):
        raise OutputError(f"{path} is not a regular file; refusing to replace it")
    return info


def _ensure_directory(path: str) -> None:
    """Create the missing parents of ``path`` as 0755 (set explicitly: umask would change it)."""
    try:
        if stat.S_ISDIR(os.stat(parent_of(path)).st_mode):
            return
    except OSError:
        pass  # looked at again below, where each case gets its message
    missing: list[Path] = []
    current = Path(path).parent
    while True:
        try:
            info = os.stat(current)
        except FileNotFoundError:
            missing.append(current)
            current = current.parent
            continue
        except NotADirectoryError:
            info = None
        except OSError as exc:
            raise OutputError(f"{path}: cannot inspect {current}: {exc.strerror}") from None
        if info is None or not stat.S_ISDIR(info.st_mode):
            raise OutputError(f"{path}: parent {_first_file(current)} is not a directory")
        break
    for created in reversed(missing):
        try:
            os.mkdir(created, _DIR_MODE)
            os.chmod(created, _DIR_MODE)
        except FileExistsError:
            if not created.is_dir():
                raise OutputError(f"{path}: parent {created} is not a directory") from None
        except OSError as exc:
            raise OutputError(f"{path}: cannot create {created}: {exc.strerror}") from None


def _first_file(directory: Path) -> Path:
    """The ancestor of ``directory`` that exists but is not a directory."""
    for candidate in reversed((directory, *directory.parents)):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return directory


def _write_all(fd: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]


def fsync_directory(directory: str, path: str) -> None:
    """Make a rename or unlink in ``directory`` survive a crash."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputError(f"{path}: cannot sync directory {directory}: {exc.strerror}") from None
    try:
        os.fsync(fd)
    except OSError as exc:
        raise OutputError(f"{path}: cannot sync directory {directory}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        return


def remove_temp_files(paths: Iterable[Path]) -> None:
    """Delete the temporary files left beside ``paths`` by a write that never finished (ours,
    cut short by an emergency exit, or a crashed one's), if they are this user's.

    One listing per folder, whatever the number of outputs in it; never raises.
    """
    names: dict[Path, set[str]] = {}
    for path in paths:
        names.setdefault(path.parent, set()).add(path.name)
    for folder, wanted in names.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            match = _TEMP_NAME.fullmatch(entry.name)
            try:
                if (match and match["name"] in wanted and entry.is_file(follow_symlinks=False)
                        and entry.stat(follow_symlinks=False).st_uid == os.geteuid()):
                    os.unlink(entry.path)
            except OSError:
                continue
