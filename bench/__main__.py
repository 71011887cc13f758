"""``python -m bench``: run the suite, print the table, write ``bench/results.json``.

Run from the repository root. ``--quick`` uses small sizes and one repeat
(under a minute; CI runs it so the suite cannot rot) and writes results only
where ``--output`` says. ``--only`` re-runs some scenarios and merges them
into the existing results. ``--markdown`` prints the README table of a
results file without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cli import cli
from bench.context import FULL, QUICK, Context, Row
from bench.reload import reload
from bench.report import machine, markdown, text_table
from bench.scenarios import Result, idle, refresh_burst, start_and_memory
from bench.seed import ShiftedClock, start_sandbox
from bench.steady import steady

DEFAULT_OUTPUT = Path(__file__).with_name("results.json")


def _single(name: str, run: Callable[[Context], Result]) -> Callable[
    [Context], list[tuple[str, Result]]
]:
    return lambda ctx: [(name, run(ctx))]


SCENARIOS: dict[str, Callable[[Context], list[tuple[str, Result]]]] = {
    "burst": _single("refresh_burst", refresh_burst),
    "steady": _single("steady", steady),
    "idle": _single("idle", idle),
    "start": start_and_memory,  # start and memory come from the same runs
    "reload": _single("reload", reload),
    "cli": _single("cli", cli),
}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--repeats", type=int, help="repeats per scenario (default 3, quick 1)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    parser.add_argument("--output", type=Path, help="results file (default bench/results.json; "
                        "--quick writes none unless given)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--markdown", type=Path, metavar="RESULTS",
                        help="print the README table of RESULTS and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.markdown is not None:
        sys.stdout.write(markdown(json.loads(args.markdown.read_text())))
        return 0
    sizes = QUICK if args.quick else FULL
    if args.repeats:
        sizes = type(sizes)(**{**sizes.__dict__, "repeats": args.repeats})
    chosen = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    output = args.output or (None if args.quick else DEFAULT_OUTPUT)
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    results = _previous(output) if args.only else {}
    run = {"command": command.strip(), "mode": "quick" if args.quick else "full",
           "repeats": sizes.repeats, "sizes": sizes.__dict__, "machine": machine()}
    # A partial re-run keeps the description of the full run it updates.
    for key, value in run.items():
        results.setdefault(key, value)
    scenarios: dict[str, Any] = results.setdefault("scenarios", {})
    workdir = Path(tempfile.mkdtemp(prefix="tokend-bench-"))
    clock = ShiftedClock()
    sandbox = start_sandbox(clock)
    began = time.monotonic()
    try:
        ctx = Context(workdir=workdir, sizes=sizes, sandbox=sandbox, clock=clock)
        for name in chosen:
            for key, (rows, details) in _run(ctx, name):
                scenarios[key] = {"rows": [row.as_dict() for row in rows], "details": details,
                                  "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
                                  "command": run["command"]}
    finally:
        sandbox.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work folder kept: {workdir}", file=sys.stderr)
    results["duration_s"] = round(time.monotonic() - began, 1)
    results["load_after"] = os.getloadavg()[0]
    rows = [Row.from_dict(row) for scenario in scenarios.values() for row in scenario["rows"]]
    print(text_table(rows))
    if output is not None:
        output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"results written to {output}", file=sys.stderr)
    return 0


def _run(ctx: Context, name: str) -> list[tuple[str, Result]]:
    """A scenario that fails reports the failure as its row instead of stopping the suite."""
    try:
        return SCENARIOS[name](ctx)
    except (RuntimeError, OSError, ValueError) as error:
        ctx.say(f"{name} failed: {error}")
        return [(name, ([Row(name, "failed", "", None, note=str(error)[:300])],
                        {"error": str(error)}))]


def _previous(output: Path | None) -> dict[str, Any]:
    if output is None or not output.exists():
        return {}
    loaded: dict[str, Any] = json.loads(output.read_text())
    return loaded


if __name__ == "__main__":
    sys.exit(main())
