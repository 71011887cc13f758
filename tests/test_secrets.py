"""Secrets: after a busy end-to-end run, no token or client secret is anywhere it should not be."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.e2e import (
    CLIENT_SECRET,
    Setup,
    StartDaemon,
    authorize,
    refreshed,
    tokend,
    wait_for,
)
from tokend.log import MASK
from tokend.sandbox import Sandbox

HOOK = "        on_refresh: [sh, -c, 'env > {dump}/refresh-env-$$']\n" \
       "        on_failure: [sh, -c, 'env > {dump}/failure-env-$$']\n"
# Right after each rotation: print the new token and the one it replaced (still valid).
PRINTING_HOOK = ("        on_refresh: [sh, -c, 'env > {dump}/refresh-env-$$; cat {token}; echo; "
                 "cat {previous} 2>/dev/null; echo; cp {token} {previous}']\n"
                 "        on_failure: [sh, -c, 'env > {dump}/failure-env-$$']\n")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_no_secret_leaks_anywhere(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon, figures: dict[str, str]
) -> None:
    """Logs, CLI output, hook environments and tokend's own files hold no secret."""
    dump = tmp_path / "hook-env"
    dump.mkdir()
    hooks = HOOK.format(dump=dump)
    setup = Setup(tmp_path, sandbox, [("alice", "read"), ("bob", "read")],
                  {"bob": hooks})
    token_file, previous = setup.output("alice", "read", "token"), tmp_path / "out" / "previous"
    setup.extra_token_yaml["alice"] = PRINTING_HOOK.format(
        dump=dump, token=token_file, previous=previous)
    setup.write()
    cli: list[subprocess.CompletedProcess[str]] = []
    authorize(setup, "alice", "read")
    authorize(setup, "bob", "read")
    daemon = start_daemon(setup.config, env={"TOKEND_TEST_SECRET_ENV": CLIENT_SECRET})

    wait_for(lambda: refreshed(daemon, "app/alice/read") >= 2, 10, "rotations")
    wait_for(lambda: sum(1 for e in daemon.named("hook_finished")
                         if e.get("token") == "app/alice/read") >= 2, 10,
             "the printing hook to run after two rotations")
    for kind in ("malformed_json", "drop", "html"):
        sandbox.inject_fault(kind, grant="refresh_token")
    sandbox.inject_fault("status", status=400, error="invalid_client", grant="refresh_token")
    wait_for(lambda: daemon.named("client_rejected"), 15, "a permanent failure")
    sandbox.revoke_user("bob")
    good = setup.config.read_text()
    setup.config.write_text(good.replace("scope: read", "scope: [nope]", 1))
    wait_for(lambda: daemon.named("config_reload_failed"), 5, "a failed reload")
    setup.config.write_text(good)
    for args in (("status",), ("status", "--json"), ("check",), ("refresh", "--force"),
                 ("--log-level", "debug", "status"), ("token", "app/nobody")):
        cli.append(tokend(*args, config=setup.config))
    assert daemon.stop() == 0

    secrets = set(sandbox.issued_secrets()) | {CLIENT_SECRET}
    texts: dict[str, str] = {
        f"cli {' '.join(map(str, result.args[3:]))}": result.stdout + result.stderr
        for result in cli
    }
    searched = 0
    for path in tmp_path.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        relative = path.relative_to(tmp_path)
        if relative.parts[0] == "out" or path.name.startswith("tokend.db") \
                or path.name == "client.secret":
            continue  # outputs and the store hold tokens by design
        texts[str(relative)] = path.read_text(errors="replace")
        searched += 1
    leaks = [
        where for where, text in texts.items() for secret in secrets if secret in text
    ]
    lines = sum(text.count("\n") for text in texts.values())
    figures["secrets"] = (
        f"{len(secrets)} secrets searched in {lines} lines of {len(texts)} logs, "
        f"CLI outputs, hook environments and files: {len(leaks)} found"
    )
    assert leaks == [], f"secrets found in: {sorted(set(leaks))}"
    printed = [e["output"] for e in daemon.named("hook_finished")
               if e.get("token") == "app/alice/read"]
    assert sum(output.count(MASK) for output in printed) >= 3, "the hook printed no token"
    assert any(dump.iterdir()), "no hook ran, so hook environments were not checked"
    assert searched > 0

    assert _mode(setup.state_dir) == 0o700
    assert _mode(setup.state_dir / "tokend.db") == 0o600
    for suffix in ("token", "env", "json"):
        assert _mode(setup.output("alice", "read", suffix)) == 0o600


def test_a_readable_config_with_an_inline_secret_is_warned_about(tmp_path: Path) -> None:
    """An inline client_secret in a file others can read draws a warning at load."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "applications:\n  app:\n    client_id: x\n    client_secret: inline-Secret-99\n"
        "    tokens: []\n"
    )
    os.chmod(config, 0o644)
    result = tokend("check", config=config)
    assert "readable by other users" in result.stdout + result.stderr
    assert "inline-Secret-99" not in result.stdout + result.stderr


def test_a_config_others_can_write_is_warned_about_at_load_and_the_daemon_runs(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """Hooks run with the daemon's rights, so whoever can write the config can run code as
    tokend: the daemon says so at load (naming the file and the fix) and keeps working."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")]).authorized()
    setup.config.chmod(0o666)
    daemon = start_daemon(setup.config)
    wait_for(lambda: refreshed(daemon, "app/alice/read") >= 1, 15, "a refresh")
    warnings = [event["message"] for event in daemon.named("config_warning")]
    assert daemon.stop() == 0
    assert any(str(setup.config) in message and "writable by" in message
               and "chmod go-w" in message for message in warnings), warnings
