"""A wrong client secret is the application's problem, not every user's: ``client_rejected``.

The server answers ``invalid_client`` when it refuses the application's own
credentials; the refresh token was never looked at, so it stays usable. tokend
says so (status, ``/healthz``, metrics), never asks anyone to authorize again,
and tries again by itself once the credentials change.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.e2e import (
    CLIENT_ID,
    CLIENT_SECRET,
    Setup,
    StartDaemon,
    refreshed,
    stored_refresh_token,
    tokend,
    wait_for,
)
from tests.test_metrics_e2e import METRICS_YAML, _get, _port, _state
from tests.test_refresher import NAME, OLD, _refresh
from tokend.daemon.lifecycle import Daemon
from tokend.log import SecretMasker
from tokend.model import TokenSpec
from tokend.sandbox import Sandbox
from tokend.store.interface import TokenState

ALICE = "app/alice/read"



def _with_wrong_secret(tmp_path: Path, sandbox: Sandbox) -> Setup:
    """alice authorized with the right secret, then the secret file replaced by a wrong one."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")], top_level_yaml=METRICS_YAML)
    setup.authorized()
    (tmp_path / "client.secret").write_text("not-the-secret\n")
    return setup


def _status(setup: Setup) -> dict[str, object]:
    rows = json.loads(tokend("status", "--json", config=setup.config).stdout)["tokens"]
    row: dict[str, object] = rows[0]
    return row


def test_a_wrong_client_secret_is_client_rejected_and_a_fixed_one_recovers_on_reload(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """Wrong secret: client_rejected everywhere, one request, the token kept. Fixed secret and a
    reload: ok again, without anyone authorizing."""
    setup = _with_wrong_secret(tmp_path, sandbox)
    refresh_token = stored_refresh_token(setup, "alice")
    assert refresh_token is not None
    daemon = start_daemon(setup.config)
    port = _port(daemon)
    wait_for(lambda: _status(setup)["state"] == "client_rejected", 15, "client_rejected")
    time.sleep(2.0)  # more than one of its refresh cycles: no retry at the server meanwhile
    assert sandbox.stats()["refresh_token"] == 1, "it kept sending the rejected credentials"
    assert sandbox.refresh_token_state(refresh_token) == "live", "the refresh token was spent"

    row = _status(setup)
    action = str(row["action"])
    assert CLIENT_ID in action and "client_secret_file" in action and "authorize" not in action
    assert "invalid_client" in str(row["last_error"])
    text = tokend("status", config=setup.config)
    assert text.returncode == 1 and "client_rejected" in text.stdout
    assert "authorize" not in text.stdout
    health = _get(port, "/healthz")
    assert health.status_code == 503
    assert health.json()["tokens"] == [{"name": ALICE, "state": "client_rejected"}]
    assert _state(port, ALICE) == "client_rejected"
    assert not daemon.named("needs_authorization")

    (tmp_path / "client.secret").write_text(CLIENT_SECRET + "\n")
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: refreshed(daemon, ALICE) >= 1, 10, "a refresh with the fixed secret")
    wait_for(lambda: _status(setup)["state"] == "ok", 10, "the token to be ok again")
    assert _state(port, ALICE) == "ok"
    assert daemon.stop() == 0


def test_a_fixed_secret_file_is_noticed_without_a_reload(tmp_path: Path, sandbox: Sandbox) -> None:
    """Nobody reloads: the daemon re-reads the credentials of a rejected application by itself."""
    setup = _with_wrong_secret(tmp_path, sandbox)
    daemon = Daemon(setup.config, masker=SecretMasker(), credentials_recheck=0.3)
    errors: list[BaseException] = []

    def fix_the_secret(stop: Callable[[], None]) -> None:
        try:
            wait_for(lambda: _status(setup)["state"] == "client_rejected", 15, "client_rejected")
            (tmp_path / "client.secret").write_text(CLIENT_SECRET + "\n")
            wait_for(lambda: _status(setup)["state"] == "ok", 10,
                     "the daemon to notice the fixed secret by itself")
        except BaseException as error:  # noqa: BLE001 -- raised again in the test's thread
            errors.append(error)
        finally:
            stop()

    async def run() -> int:
        loop = asyncio.get_running_loop()
        checker = threading.Thread(
            target=fix_the_secret, args=(lambda: loop.call_soon_threadsafe(daemon.request_stop),))
        checker.start()
        try:
            return await daemon.run()
        finally:
            await asyncio.to_thread(checker.join, 30)

    assert asyncio.run(run()) == 0
    if errors:
        raise errors[0]
    assert sandbox.stats()["refresh_token"] >= 2


def test_invalid_client_keeps_the_token_and_retries_slowly_by_itself(tmp_path: Path) -> None:
    """The refresher files invalid_client under the application, not under the user."""
    marker = tmp_path / "failed"
    spec = TokenSpec(name=NAME, on_failure=("touch", str(marker)))
    outcome, store, _requests = _refresh(
        tmp_path,
        lambda r: httpx.Response(401, json={"error": "invalid_client", "error_description": "x"}),
        spec=spec,
    )
    record = store.get(NAME)
    assert outcome.result == "permanent_error"
    assert record is not None and record.state is TokenState.CLIENT_REJECTED
    assert record.token is not None and record.token.refresh_token == OLD.refresh_token
    assert record.next_attempt_at is not None
    assert record.next_attempt_at - (OLD.created_at + 3000.0) >= 7 * 60, "retried too soon"
    assert marker.exists(), "on_failure did not run"


def test_a_forced_refresh_with_a_wrong_secret_names_the_credentials_not_authorize(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """``tokend refresh --force`` answered ``invalid_client`` points at the application's
    client credentials, not at ``tokend authorize``, and exits 1."""
    setup = _with_wrong_secret(tmp_path, sandbox)
    result = tokend("refresh", "--force", ALICE, config=setup.config)
    assert result.returncode == 1, result.stdout
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"{ALICE}: client credentials rejected"), line
    assert "authoriz" not in line, line
    assert "not-the-secret" not in result.stdout + result.stderr
