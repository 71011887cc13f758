"""Hooks: what they learn about the token, and that no hook can stop or flood the daemon."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tokend.engine.hooks import HookResult, hook_environment, run_hook
from tokend.model import OutputSpec, Token, TokenName, TokenSpec

NAME = TokenName("payroll", "alice", "read")
ACCESS = "access-secret-value"
REFRESH = "refresh-secret-value"


def make_token() -> Token:
    return Token(
        access_token=ACCESS,
        token_type="Bearer",
        expires_in=3600,
        refresh_token=REFRESH,
        scope="read",
        created_at=int(datetime(2026, 11, 29, 3, 21, 56, tzinfo=UTC).timestamp()),
    )


def make_spec(tmp_path: Path) -> TokenSpec:
    outputs = (OutputSpec(tmp_path / "a.token"), OutputSpec(tmp_path / "a.env", format="env"))
    return TokenSpec(name=NAME, outputs=outputs)


def run(argv: list[str], *, timeout: float = 10.0) -> HookResult:
    return asyncio.run(run_hook(argv, env=dict(os.environ), timeout=timeout, name=str(NAME)))


def live_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` still running shortly after the hook returned.

    A killed process closes its files a moment before it becomes a zombie, so
    allow the kernel a short while; zombies waiting for a reaper count as dead.
    """
    deadline = time.monotonic() + 1.0
    while True:
        members = [pid for pid, group, state in _processes() if group == pgid and state != "Z"]
        if not members or time.monotonic() > deadline:
            return members
        time.sleep(0.02)


def _processes() -> list[tuple[int, int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat_line.rsplit(")", 1)[1].split()
        found.append((int(entry.name), int(fields[2]), fields[0]))
    return found


def test_hook_sees_tokend_variables_but_never_the_token(tmp_path: Path) -> None:
    """A hook learns which token changed and where it was written, but not the token itself."""
    spec = make_spec(tmp_path)
    token = make_token()
    env = hook_environment(spec, expires_at=token.expires_at, base=dict(os.environ))
    dump = tmp_path / "env.txt"
    result = asyncio.run(
        run_hook(["sh", "-c", 'env > "$0"', str(dump)], env=env, timeout=10, name=str(NAME))
    )
    assert result.ok, result
    text = dump.read_text()
    seen = dict(line.split("=", 1) for line in text.splitlines() if line.startswith("TOKEND_"))
    assert seen == {
        "TOKEND_TOKEN": "payroll/alice/read",
        "TOKEND_APP": "payroll",
        "TOKEND_USER": "alice",
        "TOKEND_SCOPE": "read",
        "TOKEND_EXPIRES_AT": "2026-11-29T04:21:56Z",
        "TOKEND_OUTPUTS": f"{tmp_path / 'a.token'}:{tmp_path / 'a.env'}",
    }
    assert ACCESS not in text, "access token leaked into the hook environment"
    assert REFRESH not in text, "refresh token leaked into the hook environment"


def test_hook_environment_keeps_the_base_and_leaves_unknown_expiry_empty(tmp_path: Path) -> None:
    """A hook still finds PATH and friends; an unknown expiry is an empty variable, not a lie."""
    env = hook_environment(make_spec(tmp_path), expires_at=None, base={"PATH": "/usr/bin"})
    assert env["PATH"] == "/usr/bin"
    assert env["TOKEND_EXPIRES_AT"] == ""


def test_successful_hook_is_ok_and_logged(tmp_path: Path) -> None:
    """A hook that exits 0 is reported as finished, with its output."""
    with capture_logs() as logs:
        result = run(["sh", "-c", "echo reloaded"])
    assert (result.ok, result.returncode, result.output) == (True, 0, "reloaded\n")
    assert [entry["event"] for entry in logs] == ["hook_finished"]
    assert logs[0]["token"] == "payroll/alice/read"


def test_nonzero_exit_is_reported_with_output() -> None:
    """A failing hook shows its exit code and what it printed on stdout and stderr."""
    with capture_logs() as logs:
        result = run(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.ok, result.returncode, result.timed_out) == (False, 7, False)
    assert result.output == "out\nerr\n"
    assert logs[0]["event"] == "hook_failed"
    assert logs[0]["returncode"] == 7


def test_missing_executable_is_reported_not_raised(tmp_path: Path) -> None:
    """A typo in a hook's command is an error result, never a crash of the daemon."""
    missing = str(tmp_path / "no-such-program")
    result = run([missing])
    assert (result.ok, result.returncode) == (False, None)
    assert result.error == f"executable not found: {missing}"


def test_non_executable_file_is_reported_not_raised(tmp_path: Path) -> None:
    """A hook script without the execute bit is reported as permission denied."""
    script = tmp_path / "hook.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    result = run([str(script)])
    assert result.error == f"permission denied: {script}"
    assert not result.ok


def test_hook_gets_no_stdin() -> None:
    """A hook that reads stdin sees end-of-file at once instead of hanging the refresh."""
    result = run(["cat"], timeout=5)
    assert (result.ok, result.output) == (True, "")


def test_timeout_kills_the_hook_and_its_process_group(tmp_path: Path) -> None:
    """A hanging hook and the background job it started are killed soon after the timeout."""
    group_file = tmp_path / "pgid"
    script = f"echo $$ > {group_file}; sleep 60 & wait"
    start = time.monotonic()
    with capture_logs() as logs:
        result = run(["sh", "-c", script], timeout=0.5)
    elapsed = time.monotonic() - start
    assert (result.timed_out, result.returncode, result.ok) == (True, None, False)
    assert elapsed < 0.5 + 3
    assert live_members(int(group_file.read_text())) == []
    assert logs[0]["event"] == "hook_timed_out"


def test_hook_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    """A hook that ignores SIGTERM is killed with SIGKILL after the grace period."""
    group_file = tmp_path / "pgid"
    script = f"trap '' TERM; echo $$ > {group_file}; sleep 60 & wait"
    start = time.monotonic()
    result = run(["sh", "-c", script], timeout=0.5)
    assert time.monotonic() - start < 0.5 + 2 + 3
    assert result.timed_out
    assert live_members(int(group_file.read_text())) == []


def test_background_job_holding_output_is_killed_but_exit_code_kept(tmp_path: Path) -> None:
    """A hook that exits but leaves a job holding its output reports its own exit code."""
    group_file = tmp_path / "pgid"
    result = run(["sh", "-c", f"echo $$ > {group_file}; sleep 60 & exit 3"], timeout=0.5)
    assert (result.timed_out, result.returncode) == (False, 3)
    assert live_members(int(group_file.read_text())) == []


def test_long_output_is_truncated_and_marked() -> None:
    """A hook printing megabytes costs bounded memory and a bounded log line."""
    result = run(["sh", "-c", "yes abcdefghij | head -c 3000000"])
    assert result.ok
    head, marker = result.output[:2000], result.output[2000:]
    assert head == ("abcdefghij\n" * 200)[:2000]
    assert marker == "\n[output truncated]"


def test_output_that_is_not_utf8_is_decoded_with_replacement() -> None:
    """Binary garbage from a hook still yields a readable log line instead of an error."""
    result = run(["printf", "ok\\377"])
    assert result.output == "ok\ufffd"


@pytest.mark.parametrize("argv", [[], [""]])
def test_empty_command_is_an_error_result(argv: list[str]) -> None:
    """An empty hook command is reported as a failure, not raised."""
    result = run(argv)
    assert not result.ok
    assert result.error is not None


def test_process_escaping_the_group_does_not_hang_the_daemon(tmp_path: Path) -> None:
    """A hook whose child left its session and keeps the output open still returns promptly."""
    pid_file = tmp_path / "pid"
    script = f"setsid sleep 60 & echo $! > {pid_file}"
    start = time.monotonic()
    try:
        result = run(["sh", "-c", script], timeout=0.5)
        elapsed = time.monotonic() - start
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert (result.ok, result.returncode) == (True, 0)
    assert elapsed < 0.5 + 3


def test_cancelling_a_running_hook_kills_its_group(tmp_path: Path) -> None:
    """When the daemon shuts down mid-hook, the hook does not outlive it."""
    group_file = tmp_path / "pgid"
    script = f"echo $$ > {group_file}; sleep 60 & wait"

    async def shutdown_during_hook() -> None:
        hook = run_hook(["sh", "-c", script], env=dict(os.environ), timeout=60, name=str(NAME))
        await asyncio.wait_for(hook, 0.5)

    with pytest.raises(TimeoutError):
        asyncio.run(shutdown_during_hook())
    assert live_members(int(group_file.read_text())) == []
