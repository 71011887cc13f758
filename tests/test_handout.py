"""`tokend token --format` and `tokend exec`: the live token handed to other programs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.e2e import Setup, authorize, tokend, wait_for
from tokend.sandbox import Sandbox

# Run by `tokend exec`: compares the tokens it was given with the output files, inside
# the child, so no token is ever printed.
CHILD = textwrap.dedent("""
    import json, os, sys
    expected = json.loads(sys.argv[1])
    seen = {variable: os.environ.get(variable) == open(path).read()
            for variable, path in expected.items()}
    print(json.dumps({"match": seen, "pid": os.getpid()}))
""")


def _bob_variable(setup: Setup, variable: str) -> None:
    """Give bob's env output ``variable:``."""
    env = f"{setup.output('bob', 'read', 'env')}\n            format: env\n"
    setup.config.write_text(setup.render().replace(env, f"{env}            variable: {variable}\n"))


@pytest.fixture
def two(tmp_path: Path, hour_sandbox: Sandbox) -> Setup:
    """alice and bob authorized; bob's env output names its variable BOB_TOKEN."""
    setup = Setup(tmp_path, hour_sandbox, [("alice", "read"), ("bob", "read")])
    setup.write()
    _bob_variable(setup, "BOB_TOKEN")
    for user in ("alice", "bob"):
        authorize(setup, user, "read")
    return setup


def test_exec_gives_the_command_the_live_tokens(two: Setup) -> None:
    """Each token under its env output's variable (else FACTORIAL_ACCESS_TOKEN), in the
    process tokend became."""
    expected = {"FACTORIAL_ACCESS_TOKEN": str(two.output("alice", "read", "token")),
                "BOB_TOKEN": str(two.output("bob", "read", "token"))}
    result = tokend("exec", "app/alice", "app/bob/read", "--", sys.executable, "-c", CHILD,
                    json.dumps(expected), config=two.config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["match"] == {"FACTORIAL_ACCESS_TOKEN": True,
                                                  "BOB_TOKEN": True}


def test_exec_passes_the_exit_status_and_stdio_through(two: Setup) -> None:
    """The command's stdin, stdout and exit status are the caller's."""
    result = subprocess.run(
        [sys.executable, "-m", "tokend", "--config", str(two.config), "exec", "app/alice", "--",
         "sh", "-c", "tr a-z A-Z; exit 7"],
        input="from stdin\n", capture_output=True, text=True, timeout=30, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (7, "FROM STDIN\n", "")


def test_a_signal_to_tokend_exec_reaches_the_command(two: Setup, tmp_path: Path) -> None:
    """tokend replaced itself: the pid a supervisor knows is the command's, and so are its
    signals."""
    ready = tmp_path / "ready"
    child = textwrap.dedent(f"""
        import os, signal, sys
        signal.signal(signal.SIGUSR1, lambda *_: os._exit(42))
        open({str(ready)!r}, "w").write(str(os.getpid()))
        signal.pause()
    """)
    process = subprocess.Popen(
        [sys.executable, "-m", "tokend", "--config", str(two.config), "exec", "app/alice", "--",
         sys.executable, "-c", child], stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: ready.exists() and ready.read_text(), 30, "the command to start")
        assert int(ready.read_text()) == process.pid
        process.send_signal(signal.SIGUSR1)
        assert process.wait(30) == 42
    finally:
        process.kill()
        process.wait()


def test_the_command_does_not_inherit_pythons_ignored_sigpipe(two: Setup) -> None:
    """`tokend exec … -- yes | head` ends: SIGPIPE is back to its default in the command."""
    result = tokend("exec", "app/alice", "--", "cat", "/proc/self/status", config=two.config)
    ignored = next(line.split()[1] for line in result.stdout.splitlines()
                   if line.startswith("SigIgn:"))
    assert int(ignored, 16) & (1 << (signal.SIGPIPE - 1)) == 0


def test_exec_without_a_valid_token_does_not_run_the_command(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A token never authorized, or expired: one line on stderr, exit 1, nothing run."""
    setup = Setup(tmp_path, sandbox, [("alice", "read"), ("bob", "read")])
    setup.write()
    Setup(tmp_path, sandbox, [("alice", "read")]).authorized()
    setup.write()
    ran = tmp_path / "ran"
    missing = tokend("exec", "app/alice", "app/bob/read", "--", "touch", str(ran),
                     config=setup.config)
    assert (missing.returncode, missing.stdout, ran.exists()) == (1, "", False)
    assert "no token named 'app/bob/read'" in missing.stderr
    assert len(missing.stderr.splitlines()) == 1
    time.sleep(sandbox.settings()["access_token_lifetime"] + 0.5)
    expired = tokend("exec", "app/alice", "--", "touch", str(ran), config=setup.config)
    assert (expired.returncode, expired.stdout, ran.exists()) == (1, "", False)
    assert "the access token of app/alice/read expired at" in expired.stderr


def test_two_tokens_under_one_variable_are_refused(two: Setup, tmp_path: Path) -> None:
    """Both would be FACTORIAL_ACCESS_TOKEN: the error names them and the way out."""
    two.config.write_text(two.render())
    ran = tmp_path / "ran"
    result = tokend("exec", "app/alice", "app/bob", "--", "touch", str(ran), config=two.config)
    assert (result.returncode, ran.exists()) == (2, False)
    assert ("app/alice/read and app/bob/read would both be FACTORIAL_ACCESS_TOKEN"
            in result.stderr)
    assert "distinct `variable:` names" in result.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["app/alice", "true"], "put -- between the token names and the command"),
    (["--", "true"], "name at least one token"),
    (["app/alice", "--"], "name a command after --"),
    (["app/alice", "--log-level", "debug", "--", "true"], "--log-level: tokend's options go "
                                                          "before the token names"),
])
def test_exec_usage_errors(two: Setup, argv: list[str], message: str) -> None:
    """A command line exec cannot split into names and a command: exit 2, saying how."""
    result = tokend("exec", *argv, config=two.config)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_missing_command_exits_127(two: Setup) -> None:
    """As env and the shells: 127 when the command is not found, with its name."""
    result = tokend("exec", "app/alice", "--", "no-such-command-here", config=two.config)
    assert result.returncode == 127
    assert "cannot run 'no-such-command-here'" in result.stderr


def test_token_formats_match_the_output_files(two: Setup) -> None:
    """--format token, json, env: what the daemon writes to those outputs, byte for byte;
    header: the Authorization line; env uses the output's variable."""
    same = {}
    for user in ("alice", "bob"):
        for kind, suffix in (("token", "token"), ("json", "json"), ("env", "env")):
            shown = tokend("token", f"app/{user}", "--format", kind, config=two.config)
            written = two.output(user, "read", suffix).read_text()
            same[user, kind] = shown.stdout == written + ("\n" if kind == "token" else "")
    token = two.output("alice", "read", "token").read_text()
    header = tokend("token", "app/alice", "--format", "header", config=two.config).stdout
    assert all(same.values()), [key for key, ok in same.items() if not ok]
    header_right = header == f"Authorization: Bearer {token}\n"
    bob_named = two.output("bob", "read", "env").read_text().startswith("BOB_TOKEN=")
    assert header_right, "the header line differs"
    assert bob_named, "bob's env output does not use its variable"


def test_template_format_needs_a_template_output(two: Setup) -> None:
    """A token without a template output cannot be shown as one: exit 2, naming the token."""
    result = tokend("token", "app/alice", "--format", "template", config=two.config)
    assert (result.returncode, result.stdout) == (2, "")
    assert "app/alice/read has no output with format: template" in result.stderr


@pytest.mark.parametrize("verb", [
    ["token", "app/alice", "--format", "env"],
    ["exec", "app/alice", "app/bob", "--", "true"],
])
def test_token_formats_and_exec_load_no_heavy_library(two: Setup, verb: list[str]) -> None:
    """Both stay on `tokend token`'s fast path: no httpx, pydantic or structlog."""
    script = textwrap.dedent(f"""
        import json, os, sys
        def report(*_args):
            heavy = sorted(m for m in ("httpx", "pydantic", "structlog") if m in sys.modules)
            print(json.dumps(heavy), file=sys.stderr)
            os._exit(0)
        os.execvpe = report
        from tokend.cli.main import main
        status = main(["--config", {str(two.config)!r}, *{verb!r}])
        report()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30, check=False, env={**os.environ})
    assert json.loads(result.stderr.splitlines()[-1]) == []
