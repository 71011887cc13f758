"""``python -m bench.config_load``: what reading config.yaml costs, whole and after an edit.

The config is the bench's own (:meth:`bench.seed.Workspace.render`: one
application, one output per token), saved by rename as the reload scenario
saves it; each edit gives one token a ``refresh_at`` of its own and takes it
from the token edited before (two tokens change, as in the reload scenario).
Both loads run in this process, alternately, on the same files: a full
``load_config`` and one given the previous config, which must return the same
config. Nothing of the daemon runs: this is the config layer's share of a reload.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.harness import median, percentile
from bench.seed import Workspace, users
from tokend.config.load import load_config
from tokend.model import Config


def measure(count: int, edits: int, root: Path) -> dict[str, float]:
    """Milliseconds: full loads (median) and loads with ``previous`` (median, p95)."""
    workspace = Workspace(root)
    names = users(count)
    workspace.write_config("http://127.0.0.1:9", names)
    previous: Config = load_config(workspace.config, environ={})
    full: list[float] = []
    reread: list[float] = []
    for edit in range(edits):
        workspace.write_config("http://127.0.0.1:9", names, tweak=names[edit * 7919 % count])
        started = time.perf_counter()
        config = load_config(workspace.config, environ={}, previous=previous)
        reread.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        whole = load_config(workspace.config, environ={})
        full.append((time.perf_counter() - started) * 1000)
        if config != whole:
            raise RuntimeError(f"edit {edit + 1}: the load with previous differs from a full one")
        previous = config
    return {"full_ms": median(full), "reread_ms": median(reread),
            "reread_p95_ms": percentile(reread, 0.95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="10000,100000",
                        help="comma-separated sizes (default 10000,100000)")
    parser.add_argument("--edits", type=int, default=20, help="edits per size (default 20)")
    args = parser.parse_args()
    print("tokens   full load (median)   with previous (median / p95)")
    for count in (int(size) for size in args.tokens.split(",")):
        with tempfile.TemporaryDirectory(prefix="tokend-config-load-") as root:
            found = measure(count, args.edits, Path(root))
        print(f"{count:>7,}   {found['full_ms']:>10.1f} ms        "
              f"{found['reread_ms']:>8.1f} ms / {found['reread_p95_ms']:.1f} ms")


if __name__ == "__main__":
    main()
