"""The table: on the terminal after a run, and as Markdown for the README's Performance section."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

from bench.context import Row


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        model = platform.processor()
    return {
        "cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "date": time.strftime("%Y-%m-%d"), "load_before": os.getloadavg()[0],
    }


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2 if abs(value) >= 1 else 3
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".strip()


def _verdict(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: ""}[met]


def cells(row: dict[str, Any]) -> list[str]:
    """scenario, measure, tokend, baseline, ratio, target, met, note."""
    ratio = row["ratio"]
    return [
        row["scenario"], row["measure"], _number(row["value"], row["unit"]),
        _number(row["baseline"], row["unit"]), f"{ratio:.2f}x" if ratio is not None else "—",
        row["target"], _verdict(row["met"]), row["note"],
    ]


HEADER = ["scenario", "measure", "tokend", "baseline", "ratio", "target", "met", "note"]


def text_table(rows: list[Row]) -> str:
    """Aligned columns for the terminal."""
    lines = [HEADER, *[cells(row.as_dict()) for row in rows]]
    lines = [[cell.replace("**", "") for cell in line] for line in lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def markdown(results: dict[str, Any]) -> str:
    """The README's Performance table, with the run's date, machine and command."""
    info = results["machine"]
    out = [
        f"Measured {info['date']} on {info['cores']} cores ({info['cpu']}), "
        f"Python {info['python']}, {info['system']}; median of {results['repeats']} "
        f"repeat(s); load average {info['load_before']:.1f} before and "
        f"{results.get('load_after', 0.0):.1f} after; command: `{results['command']}`.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for scenario in results["scenarios"].values():
        for row in scenario.get("rows", []):
            out.append("| " + " | ".join(cells(row)) + " |")
    return "\n".join(out) + "\n"
