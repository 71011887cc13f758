"""Who besides root and the daemon's user could rewrite the config, whose hooks run as tokend.

A config names commands (``on_refresh``, ``on_failure``) that the daemon runs with its
own rights: they can read the store, every token and ``$CREDENTIALS_DIRECTORY``. So
whoever can write the file, or replace it through a folder above it, can run code as
tokend. ``tokend check`` says so, and the daemon at every load (``config_warning``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def config_exposure(source: Path) -> list[str]:
    """A warning for the config file and each folder above it that someone else controls.

    Each must be owned by root or this user and not writable by group or others; a
    sticky folder (``/tmp``) is fine, since others cannot replace there what they do
    not own.
    """
    warnings = []
    real = source.resolve()
    for path in (real, *real.parents):
        try:
            info = os.stat(path)
        except OSError:
            continue
        what = "config file" if path == real else "config folder"
        mode = stat.S_IMODE(info.st_mode)
        consequence = "could rewrite the config, and its hooks run as the daemon's user"
        if info.st_uid not in (0, os.geteuid()):
            warnings.append(f"{what} {path} is owned by uid {info.st_uid}, not root or this "
                            f"user (uid {os.geteuid()}): that user {consequence}")
        elif mode & 0o022 and not (stat.S_ISDIR(info.st_mode) and mode & stat.S_ISVTX):
            who = {0o020: "its group", 0o002: "others"}.get(mode & 0o022, "its group and others")
            warnings.append(f"{what} {path} is writable by {who} (mode {mode:04o}), who "
                            f"{consequence}; chmod go-w {path}")
    return warnings
