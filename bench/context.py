"""What every scenario shares: the sizes of this run, the sandbox, seeded workspaces, rows.

Seeding 100,000 tokens takes a while, so each large workspace is seeded once
per run and its state dir kept as a pristine copy; every repeat starts from
that copy, so no run sees what an earlier one left behind.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.seed import ShiftedClock, Workspace, seed
from tokend.sandbox import Sandbox


@dataclass(frozen=True)
class Sizes:
    """How big and how often: the full suite, or the quick one CI runs."""

    burst: int
    idle: int
    idle_seconds: float
    memory: tuple[int, ...]
    reload_tokens: int
    reload_edits: int
    cli_runs: int
    repeats: int
    steady_tokens: int
    steady_lifetime: float
    """Seconds an access token of the steady state lives."""
    steady_refreshes: int
    """Refreshes measured per side, after one rotation of warm-up."""


FULL = Sizes(burst=2000, idle=10_000, idle_seconds=60.0, memory=(1000, 10_000, 100_000),
             reload_tokens=10_000, reload_edits=20, cli_runs=20, repeats=3,
             steady_tokens=40, steady_lifetime=8.0, steady_refreshes=300)
QUICK = Sizes(burst=40, idle=200, idle_seconds=3.0, memory=(100, 300, 1000),
              reload_tokens=200, reload_edits=3, cli_runs=3, repeats=1,
              steady_tokens=10, steady_lifetime=2.0, steady_refreshes=30)


@dataclass(frozen=True)
class Row:
    """One figure of the table: tokend's value, the same run's baseline, and the target.

    ``limit`` applies to the ratio when ``on_ratio`` is set, else to the value;
    a row without a limit reports a figure without judging it.
    """

    scenario: str
    measure: str
    unit: str
    value: float | None
    baseline: float | None = None
    limit: float | None = None
    on_ratio: bool = False
    target: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        if self.limit is None:
            return None
        measured = self.ratio if self.on_ratio else self.value
        return measured is not None and measured <= self.limit

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        return cls(**{key: value for key, value in data.items() if key not in ("ratio", "met")})

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "measure": self.measure, "unit": self.unit,
            "value": self.value, "baseline": self.baseline, "limit": self.limit,
            "on_ratio": self.on_ratio, "target": self.target, "note": self.note,
            "ratio": self.ratio, "met": self.met,
        }


@dataclass
class Context:
    """The run: its folder, its sizes, the one sandbox every scenario talks to."""

    workdir: Path
    sizes: Sizes
    sandbox: Sandbox
    clock: ShiftedClock
    _seeded: dict[int, tuple[Workspace, list[str]]] = field(default_factory=dict)

    def say(self, message: str) -> None:
        """Progress on stderr: the table on stdout stays clean."""
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def seeded(self, count: int) -> tuple[Workspace, list[str]]:
        """A workspace of ``count`` tokens, none due for the next 45 minutes."""
        if count not in self._seeded:
            self.say(f"seeding {count:,} tokens")
            workspace = Workspace(self.workdir / f"tokens-{count}")
            names = seed(workspace, self.sandbox, count, over_http=False)
            shutil.copytree(workspace.state_dir, workspace.root / "state.pristine")
            self._seeded[count] = (workspace, names)
        return self._seeded[count]

    def restore(self, workspace: Workspace) -> None:
        """Put the pristine state back, as if no daemon had run on it."""
        shutil.rmtree(workspace.state_dir)
        shutil.copytree(workspace.root / "state.pristine", workspace.state_dir)
