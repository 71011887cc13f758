"""Write the access token to the files other programs read: atomically, durably, safely.

Other programs only ever read these files, often at any moment (a service
restarting, a cron job), so a reader must see the old file or the new file,
never an empty or half-written one. Every write therefore goes to a fresh
temporary file in the target's directory, is fsynced with its final mode and
owner, renamed over the target, and the directory is fsynced so the rename
survives a crash.

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
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from tokend import formats
from tokend.errors import OutputError
from tokend.model import OutputSpec, Token, TokenName

_DIR_MODE = 0o755
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{16}\.tmp")
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def render(spec: OutputSpec, token: Token, *, name: TokenName, expires_at: float | None,
           now: float) -> bytes:
    """The bytes of one output file, by its format's renderer in :mod:`tokend.formats`
    (``tokend token --format`` uses the same); the refresh token never appears in any.

    ``expires_at`` is the expiry on this host's clock (the record's, not the
    server's ``created_at``): consumers compare it with the same clock. ``now`` is
    the moment of writing, from which a template's ``expires_in`` counts. ``None``:
    the token never expires (a company token).
    """
    return _render(spec, _values(token, name, expires_at, now))


def _values(token: Token, name: TokenName, expires_at: float | None, now: float
            ) -> dict[str, str]:
    return formats.placeholders(access_token=token.access_token, token_type=token.token_type,
                                scope=token.scope, expires_at=expires_at, name=str(name),
                                now=now)


def _render(spec: OutputSpec, values: Mapping[str, str]) -> bytes:
    try:
        text = formats.render(spec.format, values, variable=spec.variable,
                              template=spec.template)
    except ValueError as error:
        raise OutputError(f"{spec.path}: {error}") from None
    return text.encode()


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
    temp = _prepare(target, content, mode, owner, group)
    if temp is None:
        return False
    _rename(temp, target)
    _fsync_directory(_parent(target), target)
    return True


def write_outputs(
    outputs: Iterable[OutputSpec], token: Token, *, name: TokenName, expires_at: float | None,
    new_token: bool = False,
) -> list[Path]:
    """Write every output; return the paths (re)written.

    With ``new_token`` (the server just issued ``token``, so no file can hold it yet)
    the files are not read back to see whether they already hold it; they are still
    checked to be safe targets.

    All new files are prepared and fsynced first, then renamed one right after
    the other, so the outputs of one token change together: a consumer that uses
    the new token from one file (which kills the old one at the server) will
    not find the old token in a sibling file a moment later.

    One broken output must not keep the others stale, so every output is tried
    and the failures are reported together in one :class:`OutputError`.
    """
    prepared: list[tuple[str, OutputSpec]] = []
    failures: list[str] = []
    # Now, not when the token was issued: a template's expires_in is what is left at writing.
    values = _values(token, name, expires_at, time.time())
    for spec in outputs:
        try:
            content = _render(spec, values)
            temp = _prepare(os.fspath(spec.path), content, spec.mode, spec.owner, spec.group,
                            compare=not new_token)
        except OutputError as exc:
            failures.append(str(exc))
            continue
        if temp is not None:
            prepared.append((temp, spec))
    written: list[Path] = []
    # One fsync per folder, after the last rename into it.
    folders: dict[str, str] = {}
    for temp, spec in prepared:
        target = os.fspath(spec.path)
        try:
            _rename(temp, target)
        except OutputError as exc:
            failures.append(str(exc))
            continue
        written.append(spec.path)
        folders[_parent(target)] = target
    for directory, target in folders.items():
        try:
            _fsync_directory(directory, target)
        except OutputError as exc:
            failures.append(str(exc))
    if failures:
        raise OutputError(f"{len(failures)} output(s) failed: " + "; ".join(failures))
    return written


def _parent(path: str) -> str:
    """``Path(path).parent``, as a string."""
    return os.path.dirname(path) or "."


def _prepare(
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
    _ensure_directory(path)
    parent = _parent(path)
    temp = f"{parent}/.{os.path.basename(path)}.{secrets.token_hex(8)}.tmp"  # as _TEMP_NAME says
    try:
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


def _rename(temp: str, path: str) -> None:
    try:
        os.rename(temp, path)
    except OSError as exc:
        _unlink_quietly(temp)
        raise OutputError(f"{path}: cannot write: {exc.strerror}") from None


def remove_outputs(outputs: Iterable[OutputSpec]) -> None:
    """Delete the output files of a revoked token, so nothing keeps using a dead token.

    Only regular files are removed: a directory or symlink at an output path is
    not ours and is left alone. Missing files are fine. Failures are reported
    together after every output was tried.
    """
    failures: list[str] = []
    for spec in outputs:
        path = os.fspath(spec.path)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            failures.append(f"{path}: cannot remove: {exc.strerror}")
            continue
        try:
            _fsync_directory(_parent(path), path)
        except OutputError as exc:
            failures.append(str(exc))
    if failures:
        raise OutputError(f"{len(failures)} output(s) not removed: " + "; ".join(failures))


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
        parent = _first_file(Path(_parent(path)))
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
        if stat.S_ISDIR(os.stat(_parent(path)).st_mode):
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


def _fsync_directory(directory: str, path: str) -> None:
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
