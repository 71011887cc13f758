"""``tokend status`` when the config file is invalid: still the tokens, the daemon, and where."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import Setup, StartDaemon, tokend, wait_for
from tokend.sandbox import Sandbox


def _break_scope(setup: Setup) -> str:
    """Save the config with ``scope: [readwrite]`` for bob; return where the error is."""
    lines = setup.render().replace("scope: write", "scope: [readwrite]").splitlines(keepends=True)
    setup.config.write_text("".join(lines))
    row = next(i for i, line in enumerate(lines) if "scope: [readwrite]" in line)
    return f"{setup.config}:{row + 1}:{lines[row].index('[readwrite]') + 1}"


def _expires_at(setup: Setup, user: str, scope: str) -> str:
    expires: str = json.loads(setup.output(user, scope, "json").read_text())["expires_at"]
    return expires


def test_status_with_an_invalid_config_shows_the_running_daemons_tokens(
    tmp_path: Path, hour_sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """A reload failed on a bad scope: status prints the tokens of the config the daemon
    still runs, says the file is invalid and where, and exits 1 (text and JSON)."""
    setup = Setup(tmp_path, hour_sandbox, [("alice", "read"), ("bob", "write")]).authorized()
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
    where = _break_scope(setup)
    wait_for(lambda: daemon.named("config_reload_failed"), 10, "the reload to fail")

    result = tokend("status", "--json", config=setup.config)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert [(row["name"], row["state"]) for row in report["tokens"]] == [
        ("app/alice/read", "ok"), ("app/bob/write", "ok")]
    assert report["tokens"][0]["expires_at"] == _expires_at(setup, "alice", "read")
    assert report["tokens"][0]["next_refresh_at"] is not None
    assert report["daemon"]["running"] is True
    assert report["daemon"]["last_reload_ok"] is False
    config = report["config"]
    assert config["path"] == str(setup.config)
    assert config["valid"] is False and config["tokens"] is None
    assert config["tokens_from"] == "daemon"
    assert config["error"].startswith(f"{where}: ")
    assert "must be read, write, read+write, or scopes" in config["error"]

    text = tokend("status", config=setup.config)
    assert text.returncode == 1, text.stderr
    assert "app/alice/read" in text.stdout and "app/bob/write" in text.stdout
    assert f"config: INVALID, {where}: " in text.stdout
    assert "tokens shown: those of the daemon's last good config" in text.stdout

    only = json.loads(tokend("status", "--json", "app/bob", config=setup.config).stdout)
    assert [row["name"] for row in only["tokens"]] == ["app/bob/write"]

    assert daemon.stop() == 0
    stopped = tokend("status", "--json", config=setup.config)
    assert stopped.returncode == 1
    after = json.loads(stopped.stdout)
    assert after["daemon"]["running"] is False
    assert after["config"]["tokens_from"] == "daemon", "the last daemon's view outlives it"
    assert [row["state"] for row in after["tokens"]] == ["ok", "ok"]


def test_status_with_an_invalid_config_and_no_daemon_ever_shows_the_store(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """Without any daemon's view the stored tokens are listed, what only the config could
    tell (refresh-token expiry, next refresh) is null, and the error is located."""
    setup = Setup(tmp_path, hour_sandbox, [("alice", "read"), ("bob", "write")]).authorized()
    where = _break_scope(setup)
    result = tokend("status", "--json", config=setup.config)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert [(row["name"], row["state"]) for row in report["tokens"]] == [
        ("app/alice/read", "ok"), ("app/bob/write", "ok")]
    alice = report["tokens"][0]
    assert alice["expires_at"] == _expires_at(setup, "alice", "read")
    assert alice["refresh_token_expires_at"] is None and alice["next_refresh_at"] is None
    assert report["daemon"]["running"] is False
    assert report["config"]["valid"] is False
    assert report["config"]["tokens_from"] == "store"
    assert report["config"]["error"].startswith(f"{where}: ")
    text = tokend("status", config=setup.config)
    assert text.returncode == 1
    assert f"config: INVALID, {where}: " in text.stdout
    assert "tokens shown: those in the store" in text.stdout


def test_status_of_a_valid_config_says_so_in_json(tmp_path: Path, hour_sandbox: Sandbox) -> None:
    """The new config keys have their all-is-well values when the file loads."""
    setup = Setup(tmp_path, hour_sandbox, [("alice", "read")]).authorized()
    result = tokend("status", "--json", config=setup.config)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)["config"]
    assert config == {"path": str(setup.config), "tokens": 1, "valid": True,
                      "tokens_from": "config", "error": None}


def test_status_of_a_config_file_that_cannot_be_read_stays_a_usage_error(
    tmp_path: Path, hour_sandbox: Sandbox
) -> None:
    """A wrong --config path is the operator's typo, not a broken file: exit 2, stderr."""
    result = tokend("status", "--json", config=tmp_path / "nope.yaml")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "nope.yaml: no such file" in result.stderr


def test_status_of_a_config_too_broken_to_find_the_state_dir_is_still_json(
    tmp_path: Path,
) -> None:
    """Not even state_dir can be read: the JSON still parses, says the daemon is unknown
    (null) rather than not running, and locates the error."""
    config = tmp_path / "config.yaml"
    config.write_text("state_dir: [1\n")
    result = tokend("status", "--json", config=config)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["tokens"] == [] and report["daemon"] is None
    assert report["config"]["valid"] is False and report["config"]["tokens_from"] is None
    assert report["config"]["error"].startswith(f"{config}:")
    text = tokend("status", config=config)
    assert text.returncode == 1 and "daemon: unknown" in text.stdout


def test_status_json_names_the_config_by_its_absolute_path(
    tmp_path: Path, hour_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--config config.yaml` typed in its folder: a monitor reading the JSON elsewhere
    still knows which file it was."""
    setup = Setup(tmp_path, hour_sandbox, [("bob", "write")]).authorized()
    monkeypatch.chdir(tmp_path)
    result = tokend("status", "--json", config=Path("config.yaml"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["config"]["path"] == str(setup.config)
    _break_scope(setup)
    invalid = tokend("status", "--json", config=Path("config.yaml"))
    assert json.loads(invalid.stdout)["config"]["path"] == str(setup.config)


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("refresh",)])
def test_output_into_a_pipe_closed_early_stops_quietly_with_141(
    tmp_path: Path, hour_sandbox: Sandbox, args: tuple[str, ...]
) -> None:
    """`tokend status | head -1`: the reader went away, so tokend stops like other Unix
    tools, without an error message, exit 141 (128 + SIGPIPE)."""
    setup = Setup(tmp_path, hour_sandbox, [("alice", "read")]).authorized()
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before tokend writes a byte
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tokend", "--config", str(setup.config), *args],
            stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE, text=True,
            timeout=30, check=False, env={**os.environ, "TOKEND_LOG_LEVEL": "warning"})
    finally:
        os.close(write_end)
    assert result.returncode == 128 + signal.SIGPIPE, result.stderr
    assert result.stderr == ""
