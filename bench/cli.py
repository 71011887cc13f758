"""The CLI scenario: how long ``tokend token NAME`` and ``tokend status`` take to answer.

Scripts call ``tokend token`` every time they need a token, so its cost is
the interpreter's start plus whatever tokend imports: it is compared with
``python -c pass`` timed in the same loop, alternating, so load on the
machine hits all three alike. ``-X importtime`` shows whether ``token``
pulled in the heavy libraries it should leave alone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.context import Context, Row
from bench.harness import median, wall_time
from bench.scenarios import Result

HEAVY = ("httpx", "pydantic", "structlog")
ROOT = Path(__file__).resolve().parent.parent
SMALL = 10


def _tokend() -> list[str]:
    """What the ``tokend`` console script runs, started from the repository root.

    Not the script itself: an editable install made before ``tokend/__init__.py``
    existed resolves ``tokend`` as a namespace package from anywhere but the root.
    """
    return [sys.executable, "-c", "import sys; from tokend.cli.main import main; sys.exit(main())"]


def available(config: Path, verb: str) -> bool:
    result = subprocess.run(
        [*_tokend(), "--config", str(config), verb, "--help"], capture_output=True, check=False,
        stdin=subprocess.DEVNULL, cwd=ROOT,
    )
    return result.returncode == 0


def heavy_imports(config: Path, name: str) -> list[str]:
    """Which of httpx, pydantic, structlog ``tokend token`` imports."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tokend", "--config", str(config), "token",
         name],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, cwd=ROOT,
    )
    loaded = {line.rsplit("|", 1)[-1].strip().split(".")[0]
              for line in result.stderr.splitlines() if line.startswith("import time:")}
    return sorted(loaded.intersection(HEAVY))


def cli(ctx: Context) -> Result:
    """Wall time of ``token`` and ``status`` at a small config and at the idle size."""
    rows: list[Row] = []
    details: dict[str, Any] = {}
    for count in sorted({SMALL, ctx.sizes.idle}):
        workspace, names = ctx.seeded(count)
        ctx.restore(workspace)
        name = str(workspace.name(names[0]))
        verbs = {"token": [*_tokend(), "--config", str(workspace.config), "token", name],
                 "status": [*_tokend(), "--config", str(workspace.config), "status"]}
        missing = [verb for verb in verbs if not available(workspace.config, verb)]
        bare: list[float] = []
        times: dict[str, list[float]] = {verb: [] for verb in verbs if verb not in missing}
        ctx.say(f"cli: {ctx.sizes.cli_runs} runs each with {count:,} tokens")
        for _ in range(ctx.sizes.cli_runs):
            bare.append(wall_time([sys.executable, "-c", "pass"], cwd=ROOT))
            for verb, argv in verbs.items():
                if verb in times:
                    times[verb].append(wall_time(argv, cwd=ROOT))
        heavy = heavy_imports(workspace.config, name) if "token" in times else None
        base = median(bare)
        for verb in verbs:
            note = "not available (the verb does not exist yet)" if verb in missing else ""
            if verb == "token" and heavy is not None:
                note = "imports " + (", ".join(heavy) if heavy else "none of httpx, pydantic, "
                                     "structlog")
            rows.append(Row(
                "CLI", f"tokend {verb}, N={count:,}", "ms",
                median(times[verb]) * 1000 if verb in times else None, base * 1000,
                limit=3.0 if verb == "token" else None, on_ratio=True,
                target="≤ 3x python -c pass" if verb == "token" else "", note=note,
            ))
        details[str(count)] = {"python_c_pass_s": bare, **{f"{v}_s": t for v, t in times.items()},
                               "missing": missing, "heavy_imports": heavy}
    return rows, details
