"""The reload scenario: an operator saves the config (by rename) under a running daemon.

Each edit gives one token a ``refresh_at`` and a second output of its own
(and takes the previous edit's back). Latency runs from the rename to the
new output on disk, and to the ``READY=1`` that follows ``RELOADING=1`` on
the notify socket: the reload systemd would see as applied. ``RELOADING=1``
carries the daemon's ``MONOTONIC_USEC``, but its arrival time is used, on
the same clock as the rename, to split the latency into noticing the edit
and applying it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.context import Context, Row
from bench.harness import DaemonProcess, is_ready, is_reloading, median, percentile
from bench.scenarios import READY_TIMEOUT, Result

EDIT_TIMEOUT = 60.0
POLL = 0.001


def reload(ctx: Context) -> Result:
    """``reload_edits`` edits, each changing one token's settings and outputs (and undoing
    the last)."""
    count, edits = ctx.sizes.reload_tokens, ctx.sizes.reload_edits
    workspace, names = ctx.seeded(count)
    ctx.restore(workspace)
    ctx.say(f"reload: {edits} edits with {count:,} tokens")
    samples: list[dict[str, Any]] = []
    try:
        with DaemonProcess(workspace.config, workspace.root, "reload") as daemon:
            daemon.wait_ready(READY_TIMEOUT)
            time.sleep(1.0)  # the config watcher starts with the daemon's loop
            for edit in range(edits):
                added = workspace.extra_output(names[edit])
                added.unlink(missing_ok=True)  # left by an earlier run of this workspace
                renamed = workspace.write_config(ctx.sandbox.url, names, tweak=names[edit])
                written = _appears(added, EDIT_TIMEOUT)
                if written is None:
                    raise RuntimeError(f"edit {edit + 1}: no {added.name}; log: {daemon.tail()}")
                reloading = daemon.notify.wait(is_reloading, after=renamed, timeout=EDIT_TIMEOUT)
                if reloading is None:
                    raise RuntimeError(f"edit {edit + 1}: no RELOADING=1; log: {daemon.tail()}")
                ready = daemon.notify.wait(is_ready, after=reloading.at, timeout=EDIT_TIMEOUT)
                if ready is None:
                    raise RuntimeError(f"edit {edit + 1}: no READY=1 after RELOADING=1")
                status = ready.fields.get("STATUS", "")
                if status.startswith("reload failed"):
                    raise RuntimeError(f"edit {edit + 1}: {status}")
                samples.append({
                    "output_s": written - renamed,
                    "latency_s": ready.at - renamed,
                    "notice_s": reloading.at - renamed,
                    "apply_s": ready.at - reloading.at,
                })
                time.sleep(0.3)  # separate edits, as a person's saves are
            daemon.stop()
    finally:
        workspace.write_config(ctx.sandbox.url, names)
    latency_ms = [s["latency_s"] * 1000 for s in samples]
    output_ms = [s["output_s"] * 1000 for s in samples]
    rows = [
        Row("reload", f"rename → new output on disk, p50, N={count:,}", "ms",
            median(output_ms), limit=100.0, target="≤ 100 ms"),
        Row("reload", f"rename → new output on disk, p95, N={count:,}", "ms",
            percentile(output_ms, 0.95), limit=250.0, target="≤ 250 ms"),
        Row("reload", f"rename → READY=1, p50, N={count:,}", "ms", median(latency_ms),
            limit=100.0, target="≤ 100 ms"),
        Row("reload", f"rename → READY=1, p95, N={count:,}", "ms", percentile(latency_ms, 0.95),
            limit=250.0, target="≤ 250 ms"),
        Row("reload", "of which: rename → RELOADING=1, median", "ms",
            median([s["notice_s"] * 1000 for s in samples]), note="noticing the edit"),
        Row("reload", "of which: RELOADING=1 → READY=1, median", "ms",
            median([s["apply_s"] * 1000 for s in samples]), note="loading and applying"),
    ]
    return rows, {"tokens": count, "edits": edits, "samples": samples}


def _appears(path: Path, timeout: float) -> float | None:
    """``time.monotonic()`` once ``path`` exists (polled every millisecond), or ``None``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return time.monotonic()
        time.sleep(POLL)
    return None
