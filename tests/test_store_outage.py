"""One host on the shared PostgreSQL store through an outage of the database, end to end:
the real daemon (``tokend run``) and CLI, the sandbox over HTTP on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e import StartDaemon, refreshed, wait_for
from tests.hosts import seed, shared_hosts
from tests.postgres import PostgresServer
from tokend.sandbox import Sandbox

FOUR = [(f"user{index}", "read") for index in range(4)]


def test_tokens_due_in_a_store_outage_are_refreshed_as_soon_as_it_is_back(  # noqa: PLR0917
    tmp_path: Path, sandbox: Sandbox, postgres_server: PostgresServer, postgres_url: str,
    start_daemon: StartDaemon, figures: dict[str, str],
) -> None:
    """Four tokens living 3 s; the database is away for 4 s, long enough for every one of
    them to come due and fail on the store. Once the database answers again, each is
    refreshed within seconds, not after the half-minute wait of an unexpected error, so
    tokens this short-lived are not left expired."""
    (host,) = shared_hosts(tmp_path, sandbox, postgres_server, postgres_url, FOUR, count=1)
    seed(postgres_server, postgres_url, sandbox, FOUR)
    daemon = start_daemon(host.config, "host-0")
    names = [f"app/{user}/{scope}" for user, scope in FOUR]
    wait_for(lambda: all(refreshed(daemon, name) >= 1 for name in names), 30,
             "every token refreshed once")
    postgres_server.stop()
    try:
        wait_for(lambda: daemon.named("store_unreachable"), 30, "the outage noticed")
        time.sleep(4.0)
        before = {name: refreshed(daemon, name) for name in names}
    finally:
        postgres_server.start()
    back = time.monotonic()
    wait_for(lambda: all(refreshed(daemon, name) > before[name] for name in names), 10,
             "every token refreshed once the database is back")
    figures["store outage"] = (
        f"4 tokens of 3 s, database away 4 s: all refreshed {time.monotonic() - back:.1f} s "
        f"after it was back; {sandbox.reused_refresh_tokens()} refresh tokens sent twice")
    assert daemon.stop() == 0
    assert sandbox.reused_refresh_tokens() == 0
