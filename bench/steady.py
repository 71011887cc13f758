"""The steady state: tens of short-lived tokens rotating for good, as a user runs tokend.

The burst measures a rare moment (thousands of tokens due at once); this is
the cost paid all day. Each repeat starts two sandboxes issuing access tokens
of ``steady_lifetime`` seconds, one for tokend and one for the bare loop of
``bench/baseline.py`` (``mode: steady``), and runs both side by side, so load
on the machine hits both alike. Every token has three outputs (token, env,
json) and is refreshed at tokend's default ``refresh_at``; the first refreshes
of both sides spread evenly over one refresh interval. After one rotation of
warm-up, the CPU of each process (``/proc/PID/stat``, all threads) and the
refreshes its sandbox answered are sampled at the same moment, and again once
each side has done ``steady_refreshes`` more.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.context import Context, Row
from bench.harness import DaemonProcess, cpu_seconds, median
from bench.scenarios import READY_TIMEOUT, Result
from bench.seed import (
    CLIENT_ID,
    CLIENT_SECRET,
    CONCURRENCY,
    Workspace,
    seed_over_http,
    start_sandbox,
    users,
)
from tokend.engine.schedule import JITTER
from tokend.sandbox import Sandbox
from tokend.store.sqlite import SqliteStateStore

FORMATS = ("token", "env", "json")
REFRESH_AT = 0.75
"""tokend's default ``refresh_at``: the bare loop refreshes at the same point of a lifetime."""
START_SLACK = 2.0
"""The first refreshes fall due from this long after seeding, once both sides have started."""
STALL_LIMIT = 60.0
"""A side whose sandbox answered no refresh for this long is broken, not slow."""


def steady(ctx: Context) -> Result:
    """CPU per refresh of tokend rotating short-lived tokens, against the bare loop's."""
    count, lifetime = ctx.sizes.steady_tokens, ctx.sizes.steady_lifetime
    samples: list[dict[str, Any]] = []
    for repeat in range(ctx.sizes.repeats):
        ctx.say(f"steady state {repeat + 1}/{ctx.sizes.repeats}: {count} tokens of "
                f"{lifetime:g} s, {ctx.sizes.steady_refreshes} refreshes measured")
        samples.append(_steady_once(ctx, ctx.workdir / f"steady-{repeat}"))

    def figure(side: str, key: str) -> float:
        return median([sample[side][key] for sample in samples])

    label = f"{count} tokens of {lifetime:g} s"
    rows = [
        Row("steady state", f"CPU per refresh, {label}", "ms", figure("tokend", "cpu_ms"),
            figure("baseline", "cpu_ms"), limit=1.3, on_ratio=True, target="≤ 1.3x baseline"),
        Row("steady state", f"refreshes per second, {label}", "/s", figure("tokend", "rate"),
            figure("baseline", "rate"), note="reported, no target: both keep the same schedule"),
    ]
    details = {"tokens": count, "lifetime_s": lifetime, "refresh_at": REFRESH_AT,
               "outputs": list(FORMATS), "samples": samples}
    return rows, details


@dataclass(frozen=True)
class _Side:
    """One measured process: its CPU so far, whether it still runs, and its sandbox."""

    cpu: Callable[[], float]
    running: Callable[[], bool]
    tail: Callable[[], str]
    sandbox: Sandbox

    def refreshed(self) -> int:
        return int(self.sandbox.stats()["refresh_token"])

    def sample(self) -> tuple[float, int, float]:
        return self.cpu(), self.refreshed(), time.monotonic()


def _steady_once(ctx: Context, root: Path) -> dict[str, Any]:
    sizes = ctx.sizes
    mine = start_sandbox(lifetime=sizes.steady_lifetime)
    theirs = start_sandbox(lifetime=sizes.steady_lifetime)
    try:
        workspace = seed_tokend(root / "tokend", mine, sizes.steady_tokens,
                                 sizes.steady_lifetime)
        spec = seed_baseline(root / "baseline", theirs, sizes.steady_tokens,
                              sizes.steady_lifetime)
        # The log and the notify socket go beside the workspace, not into the config's
        # folder: tokend watches that folder, and a user's log goes to the journal.
        with DaemonProcess(workspace.config, root, "steady") as daemon, \
                Baseline(spec) as baseline:
            daemon.wait_ready(READY_TIMEOUT)
            baseline.wait_ready(READY_TIMEOUT)
            sides = {
                "tokend": _Side(daemon.cpu, lambda: daemon.process.poll() is None,
                                daemon.tail, mine),
                "baseline": _Side(baseline.cpu, baseline.running, baseline.tail, theirs),
            }
            _wait_until(sides, {name: sizes.steady_tokens for name in sides})  # one rotation
            first = {name: side.sample() for name, side in sides.items()}
            _wait_until(sides, {name: first[name][1] + sizes.steady_refreshes for name in sides})
            last = {name: side.sample() for name, side in sides.items()}
            failed = len(daemon.events("refresh_failed"))
            daemon.stop()
        refused = sum(status != 200 for _at, grant, status in mine.token_requests()
                      if grant == "refresh_token")
        if failed or refused:
            raise RuntimeError(f"tokend: {failed} refresh(es) failed, {refused} refused")
    finally:
        mine.stop()
        theirs.stop()
    result: dict[str, Any] = {}
    for name in sides:
        cpu = last[name][0] - first[name][0]
        refreshes = last[name][1] - first[name][1]
        seconds = last[name][2] - first[name][2]
        result[name] = {"cpu_s": cpu, "refreshes": refreshes, "seconds": seconds,
                        "cpu_ms": cpu / refreshes * 1000, "rate": refreshes / seconds}
    return result


def _wait_until(sides: dict[str, _Side], targets: dict[str, int]) -> None:
    """Until every side's sandbox has answered its target count of refreshes."""
    progress = {name: (-1, time.monotonic()) for name in sides}
    while True:
        behind = False
        for name, side in sides.items():
            if not side.running():
                raise RuntimeError(f"{name} exited during the steady state: {side.tail()}")
            done = side.refreshed()
            if done < targets[name]:
                behind = True
                seen, since = progress[name]
                if done != seen:
                    progress[name] = (done, time.monotonic())
                elif time.monotonic() - since > STALL_LIMIT:
                    raise RuntimeError(f"{name} refreshed nothing for {STALL_LIMIT:g} s")
        if not behind:
            return
        time.sleep(0.05)


def _first_refreshes(count: int, lifetime: float) -> list[float]:
    """When each token counts as issued, so that the first refreshes spread over one interval."""
    interval = REFRESH_AT * lifetime
    start = time.time() + START_SLACK - interval
    return [start + interval * index / count for index in range(count)]


def seed_tokend(root: Path, sandbox: Sandbox, count: int, lifetime: float) -> Workspace:
    workspace = Workspace(root)
    names = users(count)
    tokens = seed_over_http(sandbox, names)
    workspace.write_config(sandbox.url, names, formats=FORMATS)
    store = SqliteStateStore(workspace.state_dir)
    try:
        for user, token, issued_at in zip(names, tokens, _first_refreshes(count, lifetime),
                                          strict=True):
            store.save_token(workspace.name(user), token, now=issued_at)
    finally:
        store.close()
    return workspace


def seed_baseline(root: Path, sandbox: Sandbox, count: int, lifetime: float) -> Path:
    names = users(count, prefix="b")
    tokens = seed_over_http(sandbox, names)
    root.mkdir(parents=True)
    spec = {
        "mode": "steady", "url": sandbox.url, "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET, "concurrency": CONCURRENCY,
        "out_dir": str(root / "out"), "db": str(root / "state.db"),
        "formats": list(FORMATS), "refresh_at": REFRESH_AT, "jitter": JITTER,
        "lifetime": lifetime, "delay": START_SLACK,
        "tokens": [[user, token.refresh_token] for user, token in zip(names, tokens, strict=True)],
    }
    path = root / "spec.json"
    path.write_text(json.dumps(spec))
    path.chmod(0o600)
    return path


class Baseline:
    """``bench/baseline.py`` in steady mode, as a child process stopped on leaving."""

    def __init__(self, spec: Path) -> None:
        self._errors = (spec.parent / "baseline.err").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("baseline.py")), str(spec)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._errors,
        )
        self._stderr = spec.parent / "baseline.err"

    def wait_ready(self, timeout: float) -> None:
        assert self.process.stdout is not None  # noqa: S101 -- opened as a pipe above
        readable, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = os.read(self.process.stdout.fileno(), 64) if readable else b""
        if not line.startswith(b"ready"):
            raise RuntimeError(f"the baseline did not start: {self.tail()}")

    def running(self) -> bool:
        return self.process.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def tail(self) -> str:
        self._errors.flush()
        return self._stderr.read_text(errors="replace")[-300:]

    def __enter__(self) -> Baseline:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._errors.close()
