"""``python -m bench.ab REV``: this tree's tokend against revision ``REV``'s, in the same run.

The steady state's ratio to the bare loop moves with the machine's load by more
than most changes move it (the same code measured 1.38x and 1.46x hours apart).
Two daemons side by side, this tree's and ``REV``'s (checked out in a temporary
git worktree), each with its own sandbox and the bare loop of
``bench/baseline.py`` beside them, see the same load, so their ratio says
whether a change helped. Each repeat seeds ``--tokens`` tokens of ``--lifetime``
seconds for all three as the steady scenario does, waits one rotation, and
samples every process's CPU and its sandbox's refresh count over ``--seconds``.
It prints one line per repeat and the median of this tree's CPU per refresh
over ``REV``'s. Both revisions must read the store this tree writes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.harness import ROOT, DaemonProcess, cpu_seconds, median
from bench.scenarios import READY_TIMEOUT
from bench.seed import start_sandbox
from bench.steady import REFRESH_AT, Baseline, seed_baseline, seed_tokend

SIDES = ("this", "other", "baseline")


@contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """``rev`` checked out in a temporary worktree of this repository, removed afterwards."""
    git = shutil.which("git")
    if git is None:
        raise SystemExit("bench.ab needs git, to check out the revision to compare with")
    folder = Path(tempfile.mkdtemp(prefix="tokend-ab-")) / "tree"
    added = subprocess.run([git, "worktree", "add", "--detach", "--quiet", str(folder), rev],
                           cwd=ROOT, check=False, capture_output=True, text=True)
    if added.returncode != 0:
        shutil.rmtree(folder.parent, ignore_errors=True)
        raise SystemExit(f"bench.ab: cannot check out {rev!r}: {added.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run([git, "worktree", "remove", "--force", str(folder)], cwd=ROOT,
                       check=False)
        shutil.rmtree(folder.parent, ignore_errors=True)


def compare(other: Path, root: Path, *, tokens: int, lifetime: float,
            seconds: float) -> dict[str, float]:
    """CPU milliseconds per refresh of each side over one window of ``seconds``."""
    with ExitStack() as stack:
        sandboxes = {}
        for side in SIDES:
            sandboxes[side] = start_sandbox(lifetime=lifetime)
            stack.callback(sandboxes[side].stop)
        this = seed_tokend(root / "this", sandboxes["this"], tokens, lifetime)
        that = seed_tokend(root / "other", sandboxes["other"], tokens, lifetime)
        spec = seed_baseline(root / "baseline", sandboxes["baseline"], tokens, lifetime)
        daemons = {
            "this": stack.enter_context(DaemonProcess(this.config, root, "this")),
            "other": stack.enter_context(DaemonProcess(that.config, root, "other", tree=other)),
        }
        baseline = stack.enter_context(Baseline(spec))
        for daemon in daemons.values():
            daemon.wait_ready(READY_TIMEOUT)
        baseline.wait_ready(READY_TIMEOUT)
        pids = {**{side: daemon.pid for side, daemon in daemons.items()},
                "baseline": baseline.process.pid}
        time.sleep(lifetime * REFRESH_AT + 2.0)  # one rotation of warm-up

        def sample() -> dict[str, tuple[float, int]]:
            return {side: (cpu_seconds(pid), int(sandboxes[side].stats()["refresh_token"]))
                    for side, pid in pids.items()}

        first = sample()
        time.sleep(seconds)
        last = sample()
        for daemon in daemons.values():
            daemon.stop()
    result = {}
    for side in SIDES:
        refreshes = last[side][1] - first[side][1]
        if refreshes <= 0:
            raise RuntimeError(f"{side}: no refresh in {seconds:g} s")
        result[side] = (last[side][0] - first[side][0]) / refreshes * 1000
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("rev", help="the revision to compare with (a commit, branch or tag)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=45.0, help="window sampled per repeat")
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--lifetime", type=float, default=8.0, help="access token lifetime")
    args = parser.parse_args()
    ratios = []
    with checkout(args.rev) as other, tempfile.TemporaryDirectory(prefix="tokend-ab-") as work:
        for repeat in range(args.repeats):
            ms = compare(other, Path(work) / str(repeat), tokens=args.tokens,
                         lifetime=args.lifetime, seconds=args.seconds)
            ratios.append(ms["this"] / ms["other"])
            print(f"repeat {repeat + 1}: CPU per refresh this {ms['this']:.3f} ms, "
                  f"{args.rev} {ms['other']:.3f} ms, bare loop {ms['baseline']:.3f} ms; "
                  f"this/{args.rev} {ratios[-1]:.3f}, this/bare {ms['this'] / ms['baseline']:.3f}"
                  f", {args.rev}/bare {ms['other'] / ms['baseline']:.3f}", flush=True)
    print(f"median this/{args.rev}: {median(ratios):.3f} ({len(ratios)} repeats)")


if __name__ == "__main__":
    main()
