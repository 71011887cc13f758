"""Several hosts on one PostgreSQL store, end to end: real daemons (``tokend run``) with their
own state_dirs and output folders, the real CLI, the sandbox over HTTP on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

from tests.e2e import StartDaemon, authorize, tokend, wait_for
from tests.hosts import output, shared_hosts
from tests.postgres import PostgresServer
from tokend.sandbox import Sandbox

ALICE = [("alice", "read")]


def test_a_token_written_on_one_host_reaches_every_hosts_outputs(
    tmp_path: Path, hour_sandbox: Sandbox, postgres_server: PostgresServer,
    postgres_url: str, start_daemon: StartDaemon,
) -> None:
    """Authorize, refresh and revoke on host 0: the daemon of host 1 writes, rewrites and then
    removes its own outputs, told by the database, with no command run on host 1."""
    first, second = shared_hosts(tmp_path, hour_sandbox, postgres_server, postgres_url,
                                 ALICE, count=2)
    daemons = [start_daemon(first.config, "host-0"), start_daemon(second.config, "host-1")]
    wait_for(lambda: all(d.named("daemon_started") for d in daemons), 30, "both daemons")
    authorize(first, "alice", "read")
    wait_for(lambda: output(second, "alice", "read") is not None, 10,
             "host 1's output after the authorization on host 0")
    authorized = output(second, "alice", "read")
    done = tokend("refresh", "--force", "app/alice/read", config=first.config)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_for(lambda: output(second, "alice", "read") not in (None, authorized), 10,
             "host 1's output after the refresh on host 0")
    same = output(second, "alice", "read") == output(first, "alice", "read")
    assert same, "the two hosts' outputs differ"
    done = tokend("revoke", "app/alice/read", config=first.config)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_for(lambda: output(second, "alice", "read") is None, 10,
             "host 1's output to be removed after the revoke on host 0")
    assert hour_sandbox.reused_refresh_tokens() == 0
