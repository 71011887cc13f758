"""Load: thousands of tokens due at once never push the server past its rate limit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import CLIENT_ID, CLIENT_SECRET, StartDaemon, wait_for
from tokend.model import Token, TokenName
from tokend.sandbox import Sandbox
from tokend.store.interface import TokenState
from tokend.store.sqlite import SqliteStateStore

LIFETIME = 600
# Seeded access tokens have this long left: the burst must be done before.
LEFT = 120


def _config(root: Path, sandbox: Sandbox, users: list[str], rate: int) -> Path:
    secret = root / "client.secret"
    secret.write_text(CLIENT_SECRET)
    secret.chmod(0o600)
    lines = [
        f"state_dir: {root / 'state'}",
        "defaults:",
        f"  rate_limit: {rate}/s",
        "  concurrency: 16",
        "applications:",
        "  app:",
        f"    base_url: {sandbox.url}",
        f"    client_id: {CLIENT_ID}",
        f"    client_secret_file: {secret}",
        "    tokens:",
    ]
    for user in users:
        lines += [
            f"      - user: {user}",
            "        scope: read",
            "        outputs:",
            f"          - path: {root / 'out' / user}.token",
        ]
    config = root / "config.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def _seed_overdue(root: Path, sandbox: Sandbox, users: list[str]) -> float:
    """Store real sandbox tokens as if issued long ago, so all are due when tokend starts.

    Expiry and due time count from the host's issue time, so that is what is moved back
    (the server's created_at with it, as a server would have said); returns when seeding began.
    """
    seeded_at = time.time()
    issued_at = seeded_at - (LIFETIME - LEFT)
    store = SqliteStateStore(root / "state")
    items = []
    for user in users:
        body = sandbox.issue_token(client_id=CLIENT_ID, user=user, scope="read")
        token = Token(
            access_token=body["access_token"], token_type=body["token_type"],
            expires_in=body["expires_in"], refresh_token=body["refresh_token"],
            scope=body["scope"], created_at=body["created_at"] - (LIFETIME - LEFT),
        )
        items.append((TokenName("app", user, "read"), token))
    store.save_tokens(items, now=issued_at)
    store.close()
    return seeded_at


@pytest.fixture
def limited_sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    rate = 50 if request.config.getoption("--soak") else 200
    with Sandbox(
        access_token_lifetime=LIFETIME, rate_limit=rate, clients={CLIENT_ID: CLIENT_SECRET}
    ) as server:
        yield server


def test_a_burst_of_due_tokens_respects_the_rate_limit(
    tmp_path: Path, limited_sandbox: Sandbox, start_daemon: StartDaemon,
    request: pytest.FixtureRequest, figures: dict[str, str],
) -> None:
    """5,000 tokens due at once: zero 429s, evenly spread, every one refreshed in time."""
    soak = bool(request.config.getoption("--soak"))
    count, rate = (5000, 50) if soak else (5000, 200)
    users = [f"u{i:05d}" for i in range(count)]
    config = _config(tmp_path, limited_sandbox, users, rate)
    seeded_at = _seed_overdue(tmp_path, limited_sandbox, users)
    started = time.monotonic()
    old_tokens_expire = started + LEFT - 1
    daemon = start_daemon(config)
    wait_for(lambda: limited_sandbox.stats()["refresh_token"] >= count,
             count / rate * 2 + 30, f"{count} refreshes")
    elapsed = time.monotonic() - started
    time.sleep(1.0)
    assert daemon.stop() == 0

    stats = limited_sandbox.stats()
    requests = limited_sandbox.token_requests()
    times = sorted(t for t, grant, _ in requests if grant == "refresh_token")
    busiest = max(
        sum(1 for other in times[i:i + rate + 5] if other - start < 1.0)
        for i, start in enumerate(times)
    )
    store = SqliteStateStore(tmp_path / "state")
    records = store.all()
    store.close()
    refreshed = sum(
        1 for r in records
        if r.state is TokenState.OK and r.token is not None and r.token.created_at >= seeded_at - 1
        and r.issued_at is not None and r.issued_at >= seeded_at
    )
    figures["load"] = (
        f"{count} tokens due at once, limit {rate}/s: {stats['rate_limited']} 429s, "
        f"busiest second {busiest} requests, all refreshed in {elapsed:.1f} s"
    )
    assert stats["rate_limited"] == 0
    assert stats["refresh_token"] == count, "a token was refreshed twice"
    # Slots are exactly 1/rate apart; event-loop latency between a slot and its send
    # may bunch a few requests, never more than the server's one-second burst.
    assert busiest <= rate * 1.05 + 1
    assert refreshed == count
    assert times[-1] < old_tokens_expire, "a token lapsed before its refresh"
