"""The benchmark suite's quick mode, so it cannot rot: every scenario runs and reports figures.

Nothing here judges speed; the full run (``python -m bench``) and the README's
Performance section do that on a quiet machine.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("refresh_burst", "steady", "idle", "start", "memory", "reload", "cli")


@pytest.mark.timeout(120)
def test_quick_benchmark_reports_a_figure_for_every_scenario(tmp_path: Path) -> None:
    """`python -m bench --quick` runs every scenario and fills every row with a number, so a
    broken scenario shows up in CI instead of at the next full run (it takes about 25 s)."""
    output = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(output.read_text())
    assert results["mode"] == "quick"
    assert sorted(results["scenarios"]) == sorted(SCENARIOS)
    empty = [
        f"{row['scenario']}: {row['measure']} ({row['note']})"
        for scenario in results["scenarios"].values()
        for row in scenario["rows"]
        if not isinstance(row["value"], int | float) or not math.isfinite(row["value"])
    ]
    assert not empty, f"rows without a figure: {empty}"


@pytest.mark.timeout(90)
def test_ab_compares_this_tree_with_a_revision_in_the_same_run() -> None:
    """`python -m bench.ab REV` runs this tree's daemon and REV's (here the same commit)
    beside the bare loop and reports both; a revision git cannot find is a clear error."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.ab", "HEAD", "--repeats", "1", "--seconds", "3",
         "--tokens", "6", "--lifetime", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=80, check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "repeat 1: CPU per refresh this " in result.stdout, result.stdout
    ratio = float(result.stdout.rsplit("median this/HEAD: ", 1)[1].split()[0])
    assert 0.2 < ratio < 5, f"the same code measured {ratio}x itself: {result.stdout}"
    missing = subprocess.run(
        [sys.executable, "-m", "bench.ab", "no-such-revision-anywhere"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
        stdin=subprocess.DEVNULL,
    )
    assert missing.returncode != 0
    assert "cannot check out 'no-such-revision-anywhere'" in missing.stderr
