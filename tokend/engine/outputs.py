"""Write a token's outputs, the files other programs read, and remove them after a revoke.

Each output is rendered by its format (:mod:`tokend.formats`) and replaced
atomically and durably (:mod:`tokend.engine.atomic`). The outputs of one
token are prepared first and renamed together, so they change together.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from tokend import formats
from tokend.engine.atomic import fsync_directory, parent_of, prepare, rename
from tokend.errors import OutputError
from tokend.model import OutputSpec, Token, TokenName


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
            temp = prepare(os.fspath(spec.path), content, spec.mode, spec.owner, spec.group,
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
            rename(temp, target)
        except OutputError as exc:
            failures.append(str(exc))
            continue
        written.append(spec.path)
        folders[parent_of(target)] = target
    for directory, target in folders.items():
        try:
            fsync_directory(directory, target)
        except OutputError as exc:
            failures.append(str(exc))
    if failures:
        raise OutputError(f"{len(failures)} output(s) failed: " + "; ".join(failures))
    return written


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
            fsync_directory(parent_of(path), path)
        except OutputError as exc:
            failures.append(str(exc))
    if failures:
        raise OutputError(f"{len(failures)} output(s) not removed: " + "; ".join(failures))
