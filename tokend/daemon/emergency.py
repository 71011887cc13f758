"""Exit at once (a second Ctrl-C), leaving neither running hooks nor half-written files.

The store is consistent at every commit, so nothing there needs finishing. But
hooks lead their own sessions, so they would outlive the daemon, and an output
write cut short leaves its temporary file beside the output; both are cleaned
up first, in far less than a second, without waiting for anything.
"""

from __future__ import annotations

import os
from typing import NoReturn

from tokend.engine.atomic import remove_temp_files
from tokend.engine.hooks import HookGroups
from tokend.model import Config


def exit_now(hooks: HookGroups | None, config: Config | None) -> NoReturn:
    """Kill the running hooks' process groups, remove our temporary files, exit 1."""
    try:
        if hooks is not None:
            hooks.kill_all()
        if config is not None:
            remove_temp_files(output.path for spec in config.tokens for output in spec.outputs)
    finally:
        os._exit(1)
