"""Live reload: however the config file is saved, the daemon follows within a second."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from tests.e2e import (
    CLIENT_ID,
    CLIENT_SECRET,
    Daemon,
    Setup,
    StartDaemon,
    authorize,
    wait_for,
)
from tokend.sandbox import Sandbox

APPLIED_WITHIN = 1.0


def _rename_save(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.swp")
    temp.write_text(text)
    os.rename(temp, path)


def _in_place(path: Path, text: str) -> None:
    with path.open("r+") as handle:
        handle.truncate(0)
        handle.write(text)


def _delete_and_recreate(path: Path, text: str) -> None:
    path.unlink()
    time.sleep(0.1)
    path.write_text(text)


def _symlink_swap(path: Path, text: str) -> None:
    """What a Kubernetes ConfigMap volume does: a new folder, then ``..data`` swapped."""
    folder = path.parent
    fresh = folder / f"..{time.monotonic_ns()}"
    fresh.mkdir()
    (fresh / path.name).write_text(text)
    link = folder / "..data_tmp"
    link.symlink_to(fresh.name)
    os.rename(link, folder / "..data")


def _as_configmap(path: Path) -> None:
    """Turn ``path`` into ``..data/NAME`` behind a symlink, as a ConfigMap volume has it."""
    text = path.read_text()
    path.unlink()
    first = path.parent / "..first"
    first.mkdir()
    (first / path.name).write_text(text)
    (path.parent / "..data").symlink_to(first.name)
    path.symlink_to(Path("..data") / path.name)


def _reloads(daemon: Daemon) -> list[dict[str, object]]:
    return daemon.named("config_reloaded")


@pytest.fixture
def slow_sandbox() -> Iterator[Sandbox]:
    """Hour-long tokens: nothing is due during a test, so any refresh is a mistake."""
    with Sandbox(access_token_lifetime=3600, clients={CLIENT_ID: CLIENT_SECRET}) as server:
        yield server


def _running(root: Path, sandbox: Sandbox, start_daemon: StartDaemon,
             *, configmap: bool = False) -> tuple[Setup, Daemon]:
    root.mkdir()
    setup = Setup(root, sandbox, [("alice", "read")])
    setup.write()
    authorize(setup, "alice", "read")
    if configmap:
        _as_configmap(setup.config)
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
    return setup, daemon


def _identities(paths: Iterable[Path]) -> dict[Path, tuple[int, int]]:
    """Each file's inode and mtime: a rewrite (new inode by rename) or a write changes them."""
    return {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in paths}


@pytest.mark.parametrize(
    "save", [_rename_save, _in_place, _delete_and_recreate, _symlink_swap],
    ids=["rename", "in-place", "delete-recreate", "configmap-symlink-swap"],
)
def test_an_edit_is_applied_within_a_second(
    tmp_path: Path, slow_sandbox: Sandbox, start_daemon: StartDaemon,
    save: Callable[[Path, str], None],
) -> None:
    """A new output, however the file is saved, is written from the store within a second."""
    setup, daemon = _running(
        tmp_path / "etc", slow_sandbox, start_daemon, configmap=save is _symlink_swap
    )
    extra = setup.root / "out" / "alice-extra.token"
    setup.extra_outputs_yaml["alice"] = f"          - path: {extra}\n"
    text = setup.render()

    started = time.monotonic()
    save(setup.config, text)
    wait_for(extra.exists, APPLIED_WITHIN, "the new output")
    elapsed = time.monotonic() - started

    assert extra.read_text() == setup.output("alice", "read", "token").read_text()
    assert elapsed <= APPLIED_WITHIN
    assert slow_sandbox.stats()["refresh_token"] == 0, "the reload caused a refresh"
    wait_for(lambda: _reloads(daemon), 2, "config_reloaded")
    assert _reloads(daemon)[-1]["changed"] == 1
    assert daemon.stop() == 0


def test_an_invalid_edit_keeps_the_last_good_config(
    tmp_path: Path, slow_sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """A broken file is reported with its location; a later good edit is applied."""
    setup, daemon = _running(tmp_path / "etc", slow_sandbox, start_daemon)
    _rename_save(setup.config, setup.render().replace("scope: read", "scope: [reed]"))
    wait_for(lambda: daemon.named("config_reload_failed"), 2, "config_reload_failed")
    error = str(daemon.named("config_reload_failed")[0]["error"])
    assert "scope" in error
    assert "must be read, write, read+write, or scopes" in error
    assert daemon.process.poll() is None, "the daemon died on a bad config"

    extra = setup.root / "out" / "alice-extra.token"
    setup.extra_outputs_yaml["alice"] = f"          - path: {extra}\n"
    _rename_save(setup.config, setup.render())
    wait_for(extra.exists, APPLIED_WITHIN, "the good edit")
    assert daemon.stop() == 0


def test_sighup_reloads(tmp_path: Path, slow_sandbox: Sandbox, start_daemon: StartDaemon) -> None:
    """SIGHUP (systemctl reload) re-reads the file even when no watcher saw a change."""
    _setup, daemon = _running(tmp_path / "etc", slow_sandbox, start_daemon)
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: _reloads(daemon), 2, "config_reloaded")
    counts = {key: _reloads(daemon)[-1][key] for key in ("added", "removed", "changed")}
    assert counts == {"added": 0, "removed": 0, "changed": 0}
    assert daemon.stop() == 0


def test_unchanged_tokens_are_neither_refreshed_nor_rewritten(
    tmp_path: Path, slow_sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """Adding a token leaves the others' files and schedule alone."""
    setup, daemon = _running(tmp_path / "etc", slow_sandbox, start_daemon)
    outputs = [setup.output("alice", "read", suffix) for suffix in ("token", "env", "json")]
    before = _identities(outputs)
    requests_before = len(slow_sandbox.token_requests())

    setup.tokens = [("alice", "read"), ("bob", "write")]
    _rename_save(setup.config, setup.render())
    wait_for(lambda: _reloads(daemon), 2, "config_reloaded")

    assert _reloads(daemon)[-1]["added"] == 1
    after = _identities(outputs)
    assert after == before, "unchanged outputs were rewritten"
    assert len(slow_sandbox.token_requests()) == requests_before, "the reload sent requests"
    assert daemon.stop() == 0


def test_a_deleted_output_heals_on_reload(
    tmp_path: Path, slow_sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """An output someone deleted comes back from the store at the next reload, no refresh."""
    setup, daemon = _running(tmp_path / "etc", slow_sandbox, start_daemon)
    token_file = setup.output("alice", "read", "token")
    expected = token_file.read_text()
    token_file.unlink()
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(token_file.exists, 2, "the output to heal")
    healed = token_file.read_text() == expected
    assert healed, "the healed output does not hold the stored token"
    assert slow_sandbox.stats()["refresh_token"] == 0
    assert daemon.stop() == 0


def test_an_edit_of_one_token_leaves_the_other_tokens_files_alone(
    tmp_path: Path, slow_sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """Only the edited token is published: another token's files are not even looked at,
    so one deleted by hand stays deleted until an explicit heal (SIGHUP, SIGUSR1)."""
    setup = Setup(tmp_path, slow_sandbox, [("bob", "read"), ("alice", "read")]).authorized()
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
    bob_token = setup.output("bob", "read", "token")
    bob_others = [setup.output("bob", "read", suffix) for suffix in ("env", "json")]
    before = _identities(bob_others)
    bob_token.unlink()

    extra = setup.root / "out" / "alice-extra.token"
    setup.extra_outputs_yaml["alice"] = f"          - path: {extra}\n"
    _rename_save(setup.config, setup.render())
    wait_for(extra.exists, 5, "alice's new output")
    wait_for(lambda: _reloads(daemon), 5, "config_reloaded")

    assert _reloads(daemon)[-1]["changed"] == 1
    assert not bob_token.exists(), "the reload published a token it did not change"
    after = _identities(bob_others)
    assert after == before, "the reload rewrote a token it did not change"
    assert slow_sandbox.stats()["refresh_token"] == 0, "the reload caused a refresh"
    assert daemon.stop() == 0


def test_an_output_change_heals_every_output_of_that_token(
    tmp_path: Path, slow_sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """A token whose outputs changed is published whole: a file of it deleted by hand is back."""
    setup, daemon = _running(tmp_path / "etc", slow_sandbox, start_daemon)
    token_file = setup.output("alice", "read", "token")
    expected = token_file.read_text()
    token_file.unlink()

    extra = setup.root / "out" / "alice-extra.token"
    setup.extra_outputs_yaml["alice"] = f"          - path: {extra}\n"
    _rename_save(setup.config, setup.render())
    wait_for(lambda: extra.exists() and token_file.exists(), 5, "alice's outputs")

    healed = token_file.read_text() == expected and extra.read_text() == expected
    assert healed, "an output does not hold the stored token"
    assert slow_sandbox.stats()["refresh_token"] == 0, "the reload caused a refresh"
    assert daemon.stop() == 0


def test_sigusr1_heals_every_output(
    tmp_path: Path, slow_sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """SIGUSR1 re-reads every token and writes back any output that went missing, no refresh."""
    setup = Setup(tmp_path, slow_sandbox, [("alice", "read"), ("bob", "read")]).authorized()
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
    deleted = [setup.output("alice", "read", "token"), setup.output("bob", "read", "json")]
    expected = [path.read_text() for path in deleted]
    for path in deleted:
        path.unlink()

    daemon.process.send_signal(signal.SIGUSR1)
    wait_for(lambda: all(path.exists() for path in deleted), 5, "the outputs to heal")

    assert [path.read_text() for path in deleted] == expected
    assert slow_sandbox.stats()["refresh_token"] == 0, "the heal caused a refresh"
    assert daemon.stop() == 0
