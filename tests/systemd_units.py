"""The shipped unit files and systemd-analyze, for the tests of the units and their install."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "systemd" / "tokend.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def analyze(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``systemd-analyze`` (its tests are marked ``needs_analyze``)."""
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, check=False, env=env
    )


def verify_complaints(
    *units: Path, user: bool = False, env: dict[str, str] | None = None
) -> str:
    """What ``systemd-analyze [--user] verify UNIT…`` finds wrong; empty when nothing."""
    result = analyze(*(["--user"] if user else []), "verify", *map(str, units), env=env)
    return result.stderr.strip() or ("" if result.returncode == 0 else f"exit {result.returncode}")


def unit_values(unit: Path, key: str) -> list[str]:
    """The values of every ``key=`` line of ``unit``."""
    return re.findall(rf"^{key}=(.*)$", unit.read_text(), re.MULTILINE)
