"""The daemon scenarios: refresh burst, idle, start and memory.

Each returns table rows plus the raw samples, so ``results.json`` shows every
repeat and the table only the medians.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.context import Context, Row
from bench.harness import DaemonProcess, median, memory_kb, peak_rss_of, wakeups
from bench.seed import (
    CLIENT_ID,
    CLIENT_SECRET,
    CONCURRENCY,
    Workspace,
    seed,
    seed_over_http,
    users,
)

Result = tuple[list[Row], dict[str, Any]]

# What a bare Python daemon with tokend's libraries pays before doing anything.
LIBRARIES = "import asyncio, sqlite3, httpx, pydantic, structlog, yaml, asyncinotify"
READY_TIMEOUT = 180.0
START_LIMITS = {10_000: 2.0, 100_000: 15.0}


def refresh_burst(ctx: Context) -> Result:
    """N tokens all due at start: tokend's CPU per refresh against the bare baseline's."""
    count = ctx.sizes.burst
    samples: list[dict[str, Any]] = []
    for repeat in range(ctx.sizes.repeats):
        ctx.say(f"refresh burst {repeat + 1}/{ctx.sizes.repeats}: {count:,} tokens")
        workspace = Workspace(ctx.workdir / f"burst-{repeat}")
        seed(workspace, ctx.sandbox, count, over_http=True, due=True, clock=ctx.clock)
        baseline_spec = _baseline_spec(ctx, repeat, count)
        # Alternate the order, so neither side always runs on a warmer machine.
        if repeat % 2:
            base = _run_baseline(baseline_spec)
            mine = _burst_tokend(ctx, workspace, count)
        else:
            mine = _burst_tokend(ctx, workspace, count)
            base = _run_baseline(baseline_spec)
        if base["ok"] != count:
            raise RuntimeError(f"baseline refreshed {base['ok']} of {count} tokens")
        samples.append({"tokend": mine, "baseline": base})
    cpu = median([s["tokend"]["cpu_s"] for s in samples]) / count * 1000
    base_cpu = median([s["baseline"]["cpu_s"] for s in samples]) / count * 1000
    wall = median([s["tokend"]["wall_s"] for s in samples])
    base_wall = median([s["baseline"]["wall_s"] for s in samples])
    rows = [
        Row("refresh burst", f"CPU per refresh, N={count:,}", "ms", cpu, base_cpu,
            limit=1.5, on_ratio=True, target="≤ 1.5x baseline"),
        Row("refresh burst", f"wall time of the burst, N={count:,}", "s", wall, base_wall,
            note="reported, no target"),
    ]
    return rows, {"tokens": count, "concurrency": CONCURRENCY, "samples": samples}


def _burst_tokend(ctx: Context, workspace: Workspace, count: int) -> dict[str, Any]:
    """CPU of tokend from READY=1 (refreshes start right after) to the last output written."""
    old = {user: workspace.output(user).read_bytes() for user in users(count)}
    before = ctx.sandbox.stats()["refresh_token"]
    with DaemonProcess(workspace.config, workspace.root, "daemon") as daemon:
        ready = daemon.wait_ready(READY_TIMEOUT)
        start_cpu = ready.cpu if ready.cpu is not None else daemon.cpu()
        pending = set(old)
        deadline = time.monotonic() + 600
        while pending and time.monotonic() < deadline:
            pending = {u for u in pending if workspace.output(u).read_bytes() == old[u]}
            time.sleep(0.02)
        done = time.monotonic()
        if pending:
            raise RuntimeError(f"{len(pending)} outputs not refreshed; log: {daemon.tail()}")
        time.sleep(0.2)  # the last refresh's bookkeeping after its output rename
        cpu = daemon.cpu() - start_cpu
        failed = len(daemon.events("refresh_failed"))
        daemon.stop()
    requests = ctx.sandbox.stats()["refresh_token"] - before
    return {"cpu_s": cpu, "wall_s": done - ready.at, "requests": requests, "failed": failed}


def _baseline_spec(ctx: Context, repeat: int, count: int) -> Path:
    """Tokens of its own for the baseline (refreshing rotates them), also all due."""
    names = users(count, prefix="b")
    ctx.clock.offset = -3600.0
    try:
        tokens = seed_over_http(ctx.sandbox, names)
    finally:
        ctx.clock.offset = 0.0
    root = ctx.workdir / f"baseline-{repeat}"
    root.mkdir(parents=True)
    spec = {
        "url": ctx.sandbox.url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "concurrency": CONCURRENCY, "out_dir": str(root / "out"), "db": str(root / "state.db"),
        "tokens": [[user, token.refresh_token] for user, token in zip(names, tokens, strict=True)],
    }
    path = root / "spec.json"
    path.write_text(json.dumps(spec))
    path.chmod(0o600)
    return path


def _run_baseline(spec: Path) -> dict[str, Any]:
    script = Path(__file__).with_name("baseline.py")
    result = subprocess.run(
        [sys.executable, str(script), str(spec)], capture_output=True, text=True, check=False,
        timeout=600, stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise RuntimeError(f"baseline failed: {result.stderr[-500:]}")
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def idle(ctx: Context) -> Result:
    """N tokens, none due: CPU and wake-ups over a quiet stretch after start."""
    count, seconds = ctx.sizes.idle, ctx.sizes.idle_seconds
    workspace, _names = ctx.seeded(count)
    samples: list[dict[str, Any]] = []
    for repeat in range(ctx.sizes.repeats):
        ctx.say(f"idle {repeat + 1}/{ctx.sizes.repeats}: {count:,} tokens for {seconds:.0f} s")
        ctx.restore(workspace)
        with DaemonProcess(workspace.config, workspace.root, f"idle-{repeat}") as daemon:
            daemon.wait_ready(READY_TIMEOUT)
            time.sleep(2.0)  # let the start's last writes and frees settle
            cpu, woke, began = daemon.cpu(), wakeups(daemon.pid), time.monotonic()
            time.sleep(seconds)
            cpu, elapsed = daemon.cpu() - cpu, time.monotonic() - began
            threads = {name: n - woke.get(name, 0) for name, n in wakeups(daemon.pid).items()}
            daemon.stop()
        per_minute = 60.0 / elapsed
        samples.append({
            "cpu_s_per_min": cpu * per_minute,
            "wakeups_per_min": sum(threads.values()) * per_minute,
            "wakeups_per_min_by_thread": {k: v * per_minute for k, v in threads.items()},
            "seconds": elapsed,
        })
    rows = [
        Row("idle", f"CPU per minute, N={count:,}", "s",
            median([s["cpu_s_per_min"] for s in samples]), limit=0.3, target="≤ 0.3 s/min"),
        Row("idle", f"wake-ups per minute, N={count:,}", "/min",
            median([s["wakeups_per_min"] for s in samples]), limit=5,
            target="≤ 5/min (the scheduler ticks once a minute)",
            note="context switches of all threads"),
    ]
    return rows, {"tokens": count, "samples": samples}


def start_and_memory(ctx: Context) -> list[tuple[str, Result]]:
    """Exec to READY=1, and peak RSS once started, at each size: the same runs feed both."""
    sizes = ctx.sizes.memory
    runs: dict[int, list[dict[str, Any]]] = {}
    errors: dict[int, str] = {}
    for count in sizes:
        workspace, _names = ctx.seeded(count)
        runs[count] = []
        for repeat in range(ctx.sizes.repeats):
            ctx.say(f"start {repeat + 1}/{ctx.sizes.repeats}: {count:,} tokens")
            ctx.restore(workspace)
            try:
                runs[count].append(_start_once(workspace, f"start-{count}-{repeat}"))
            except RuntimeError as error:
                errors[count] = str(error).replace(f"{workspace.root}/", "")[:300]
                break
    probe = [_probe_libraries() for _ in range(ctx.sizes.repeats)]
    lib_start = median([p[0] for p in probe])
    lib_mb = median([p[1] for p in probe])

    def figure(count: int, key: str) -> float | None:
        values = [run[key] for run in runs[count]]
        return median(values) if values and count not in errors else None

    start_rows, memory_rows = [], []
    for count in sizes:
        note = f"failed: {errors[count]}" if count in errors else ""
        limit = START_LIMITS.get(count)
        start_rows.append(Row("start", f"exec to READY=1, N={count:,}", "s",
                              figure(count, "start_s"), lib_start, limit=limit,
                              target=f"≤ {limit:g} s" if limit else "", note=note))
        memory_rows.append(Row("memory", f"peak RSS, N={count:,}", "MB", figure(count, "peak_mb"),
                               lib_mb, limit=120.0 if count == 10_000 else None,
                               target="≤ 120 MB" if count == 10_000 else "", note=note))
    # The slope over the widest span that started; a size that failed is named in its row.
    started = [count for count in sizes if figure(count, "peak_mb") is not None]
    slope, span = None, f"{sizes[0]:,} → {sizes[-1]:,}"
    if len(started) >= 2:
        low, high = started[0], started[-1]
        span = f"{low:,} → {high:,}"
        slope = (figure(high, "peak_mb") or 0.0) - (figure(low, "peak_mb") or 0.0)
        slope = slope * 1000 / (high - low)
    missing = [f"{count:,}" for count in sizes if count not in started]
    memory_rows.append(Row("memory", f"slope {span}", "KB/token", slope, limit=3.0,
                           target="≤ 3 KB/token",
                           note=f"{', '.join(missing)} did not start" if missing else ""))
    details = {"runs": {str(k): v for k, v in runs.items()}, "errors": errors,
               "baseline": {"what": LIBRARIES, "start_s": lib_start, "peak_mb": lib_mb}}
    return [("start", (start_rows, details)), ("memory", (memory_rows, details))]


def _start_once(workspace: Workspace, name: str) -> dict[str, Any]:
    with DaemonProcess(workspace.config, workspace.root, name) as daemon:
        ready = daemon.wait_ready(READY_TIMEOUT)
        time.sleep(1.0)  # the peak is reached during start; RSS after it is the steady state
        peak, rss = memory_kb(daemon.pid)
        cpu = ready.cpu
        daemon.stop()
    return {"start_s": ready.at - daemon.started_at, "cpu_to_ready_s": cpu,
            "peak_mb": peak * 1024 / 1e6, "rss_mb": rss * 1024 / 1e6}


def _probe_libraries() -> tuple[float, float]:
    """(seconds, peak MB) of an interpreter that only imports tokend's libraries."""
    began = time.monotonic()
    peak = peak_rss_of(LIBRARIES)
    return time.monotonic() - began, peak * 1024 / 1e6

