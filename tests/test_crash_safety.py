"""Crash safety: SIGKILL at random moments while tokens rotate loses no token.

CI runs 50 kills; a soak is ``pytest tests/test_crash_safety.py --kills 1000``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.e2e import Setup, StartDaemon, refreshed, wait_for
from tokend.model import TokenName
from tokend.sandbox import Sandbox
from tokend.store.interface import TokenState
from tokend.store.sqlite import SqliteStateStore

TOKENS = [("alice", "read"), ("alice", "write"), ("bob", "read"), ("carol", "read+write")]


def test_sigkill_at_random_moments_loses_no_token(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon,
    request: pytest.FixtureRequest, figures: dict[str, str],
) -> None:
    """After many SIGKILLs and restarts every token still refreshes with a live refresh token."""
    kills = int(request.config.getoption("--kills"))
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    setup = Setup(tmp_path, sandbox, TOKENS).authorized()

    for run in range(kills):
        daemon = start_daemon(setup.config, f"run{run}")
        time.sleep(rng.uniform(0.2, 1.5))
        daemon.kill()

    final = start_daemon(setup.config, "final")
    names = [f"app/{user}/{scope}" for user, scope in TOKENS]
    wait_for(lambda: all(refreshed(final, name) >= 2 for name in names), 30,
             f"every token to refresh after {kills} kills (seed {seed})")
    assert final.stop() == 0

    store = SqliteStateStore(setup.state_dir)
    records = {f"app/{user}/{scope}": store.get(TokenName("app", user, scope))
               for user, scope in TOKENS}
    store.close()
    lost = [
        name for name, record in records.items()
        if record is None or record.token is None or record.state is not TokenState.OK
        or sandbox.refresh_token_state(record.token.refresh_token) != "live"
    ]
    rotations = sandbox.stats()["refresh_token"]
    figures["crash safety"] = (
        f"{kills} SIGKILLs survived, {len(lost)} of {len(TOKENS)} tokens lost, "
        f"{rotations} rotations (seed {seed})"
    )
    assert lost == [], f"tokens lost after {kills} kills (seed {seed}): {lost}"
    assert not final.named("needs_authorization")
