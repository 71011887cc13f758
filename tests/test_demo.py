"""``tokend demo`` as a newcomer runs it: the real command in a subprocess, its hints followed.

Every demo here runs with ``TMPDIR`` pointing into the test's own folder, so
what a run leaves behind is visible and never lands in the real /tmp.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.e2e import tokend, wait_for

HINT = "In another terminal: "
SCRIPT = Path(sys.executable).parent / "tokend"  # the console script pip installed


@dataclass
class RunningDemo:
    """A ``tokend demo`` subprocess whose stdout goes to a file."""

    process: subprocess.Popen[bytes]
    out: Path
    env: dict[str, str]

    @property
    def text(self) -> str:
        return self.out.read_text()

    @property
    def hint(self) -> str:
        """The command the demo tells the user to run in another terminal."""
        return next(line for line in self.text.splitlines() if line.startswith(HINT))[len(HINT):]

    @property
    def sandbox_url(self) -> str:
        match = re.search(r"sandbox at (http://[\w.]+:\d+)", self.text)
        assert match is not None, self.text
        return match.group(1)

    @property
    def token_names(self) -> list[str]:
        return re.findall(r"^\S+  (\S+) authorized ", self.text, re.MULTILINE)


def demo_env(root: Path, path: str) -> dict[str, str]:
    """The environment of a demo: its own TMPDIR under ``root``, and ``path`` as PATH."""
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp), "PATH": path}


def empty_path(root: Path) -> str:
    """A PATH on which no ``tokend`` can be found, as after the README's Quick start."""
    folder = root / "empty-path"
    folder.mkdir(exist_ok=True)
    return str(folder)


@contextmanager
def running_demo(root: Path, argv: Sequence[str], env: dict[str, str]) -> Iterator[RunningDemo]:
    """Start ``argv`` (a ``tokend demo``), wait until it prints its hint; Ctrl-C it at the end."""
    out = root / "demo.out"
    with out.open("wb") as sink:
        process = subprocess.Popen(list(argv), stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env)
    demo = RunningDemo(process, out, env)
    try:
        wait_for(lambda: HINT in demo.text or process.poll() is not None, 60,
                 "the demo to authorize its tokens")
        assert HINT in demo.text, demo.text
        yield demo
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    """One ``python -m tokend demo`` for the tests that only look at a running demo."""
    root = tmp_path_factory.mktemp("demo")
    env = demo_env(root, empty_path(root))
    with running_demo(root, [sys.executable, "-m", "tokend", "demo"], env) as running:
        yield running


def run_hint(demo: RunningDemo) -> subprocess.CompletedProcess[str]:
    """Run the demo's hint exactly as printed, in the demo's environment (same PATH)."""
    argv = shlex.split(demo.hint)
    found = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=demo.env["PATH"])
    assert found is not None, f"the hint's command {argv[0]!r} is not on PATH"
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                          stdin=subprocess.DEVNULL, env=demo.env)


def test_the_status_hint_works_as_printed_with_python_m(demo: RunningDemo) -> None:
    """Started as ``python -m tokend demo`` with no ``tokend`` on PATH, the printed status
    command runs and lists every demo token."""
    result = run_hint(demo)
    assert result.returncode == 0, result.stderr
    assert demo.token_names
    for name in demo.token_names:
        assert name in result.stdout, name


@pytest.mark.parametrize("on_path", [False, True], ids=["script-off-path", "script-on-path"])
def test_the_status_hint_works_as_printed_from_the_console_script(
    tmp_path: Path, on_path: bool
) -> None:
    """Started as ``.venv/bin/tokend demo`` (the Quick start), the hint runs whether or not
    that folder is on PATH."""
    if not SCRIPT.exists():
        pytest.skip(f"no console script at {SCRIPT} (the package is not installed in a venv)")
    path = str(SCRIPT.parent) if on_path else empty_path(tmp_path)
    with running_demo(tmp_path, [str(SCRIPT), "demo"], demo_env(tmp_path, path)) as running:
        result = run_hint(running)
        assert result.returncode == 0, result.stderr
        assert all(name in result.stdout for name in running.token_names), result.stdout


def test_status_shows_the_refresh_token_lifetime_the_demo_sandbox_enforces(
    demo: RunningDemo,
) -> None:
    """What ``status`` says about each refresh token's death is what the sandbox does."""
    settings = httpx.get(f"{demo.sandbox_url}/_sandbox/settings", timeout=5).json()
    config = Path(shlex.split(demo.hint)[shlex.split(demo.hint).index("--config") + 1])
    result = tokend("status", "--json", config=config)
    tokens = json.loads(result.stdout)["tokens"]
    assert tokens
    for token in (token for token in tokens if not token["does_not_expire"]):
        expires_at = datetime.fromisoformat(token["expires_at"]).timestamp()
        refresh_dies_at = datetime.fromisoformat(token["refresh_token_expires_at"]).timestamp()
        # Both count from the same issue time: access lifetime + the gap = refresh lifetime.
        shown = refresh_dies_at - expires_at + settings["access_token_lifetime"]
        assert abs(shown - settings["refresh_token_lifetime"]) <= 2, (token["name"], shown)


def test_the_demo_shows_a_company_token_that_never_expires(demo: RunningDemo) -> None:
    """Beside the rotating user tokens, a company token with resource scopes: authorized
    once, said not to expire, and ``status`` calls it ok without an expiry."""
    company = "demo/hr/employees+time_off"
    assert demo.token_names[-1] == company
    assert f"  {company} authorized (does not expire) -> " in demo.text
    assert f" {company} refreshed " not in demo.text
    config = Path(shlex.split(demo.hint)[shlex.split(demo.hint).index("--config") + 1])
    rows = {row["name"]: row for row in json.loads(
        tokend("status", "--json", config=config).stdout)["tokens"]}
    assert (rows[company]["state"], rows[company]["does_not_expire"]) == ("ok", True)


def test_the_demo_names_its_output_files_where_they_are(demo: RunningDemo) -> None:
    """Every output file a token line names exists in the folder the demo says holds them."""
    match = re.search(r"outputs: (\S+)", demo.text)
    assert match is not None, demo.text
    folder = Path(match.group(1))
    named = [name for line in demo.text.splitlines() if " authorized " in line
             for name in line.split(" -> ", 1)[1].split(", ")]
    assert len(named) == 3 * len(demo.token_names)
    missing = [name for name in named if not (folder / name).is_file()]
    assert not missing, f"not in {folder}: {missing}"


@pytest.mark.parametrize(
    ("argv", "option"),
    [(["--duration", "-5"], "--duration"), (["--duration", "0"], "--duration"),
     (["--lifetime", "0", "--duration", "3"], "--lifetime"),
     (["--lifetime", "-1", "--duration", "3"], "--lifetime"),
     (["--lifetime", "soon", "--duration", "3"], "--lifetime")],
)
def test_a_bad_duration_or_lifetime_is_a_usage_error_naming_the_option(
    tmp_path: Path, argv: list[str], option: str
) -> None:
    """Exit 2 with a message naming the option and the value; no demo starts."""
    result = tokend("demo", *argv, timeout=60, env=demo_env(tmp_path, os.environ["PATH"]))
    assert result.returncode == 2, result.stdout
    last_line = result.stderr.strip().splitlines()[-1]
    assert option in last_line and argv[argv.index(option) + 1] in last_line, result.stderr
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm", "duration"])
def test_the_demo_removes_its_folder_when_it_stops(tmp_path: Path, stop: str) -> None:
    """Config, secret and store live only as long as the demo, however it is stopped."""
    env = demo_env(tmp_path, os.environ["PATH"])
    argv = [sys.executable, "-m", "tokend", "demo", *(["--duration", "2"] * (stop == "duration"))]
    with running_demo(tmp_path, argv, env) as running:
        if stop != "duration":
            running.process.send_signal(signal.SIGINT if stop == "ctrl-c" else signal.SIGTERM)
        assert running.process.wait(30) == 0, running.text
    left = list((tmp_path / "tmp").iterdir())
    assert not left, f"left behind: {left}"


def test_keep_leaves_the_folder_and_says_how_to_remove_it(tmp_path: Path) -> None:
    """With --keep the folder stays, and the command the demo prints removes it."""
    env = demo_env(tmp_path, os.environ["PATH"])
    result = subprocess.run(
        [sys.executable, "-m", "tokend", "demo", "--keep", "--duration", "2"],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
        env=env)
    assert result.returncode == 0, result.stderr
    (kept,) = (tmp_path / "tmp").iterdir()
    assert (kept / "config.yaml").is_file()
    match = re.search(r"remove (?:it|them) with: (.+)$", result.stdout, re.MULTILINE)
    assert match is not None, result.stdout
    assert str(kept) in match.group(1)
    subprocess.run(shlex.split(match.group(1)), check=True, timeout=30, env=env)
    assert not kept.exists()
