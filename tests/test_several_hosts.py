"""Several hosts on one PostgreSQL store, end to end: real daemons (``tokend run``) with their
own state_dirs and output folders, the real CLI, the sandbox over HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from tests.e2e import StartDaemon, authorize, refreshed, tokend, wait_for
from tests.hosts import (
    CommitWatch,
    Leases,
    no_own_host_reason,
    output,
    own_host,
    seed,
    shared_hosts,
)
from tests.postgres import PostgresServer
from tests.tcp_proxy import TcpProxy
from tokend.engine.refresher import CLAIM_ALLOWANCE, COMMIT_ALLOWANCE
from tokend.engine.tracker import BUSY_RETRY
from tokend.errors import StateError
from tokend.sandbox import Sandbox
from tokend.store.interface import TokenState
from tokend.store.postgres import PostgresStateStore

ALICE = [("alice", "read")]
TIMEOUT = 1.0
"""The request deadline of the takeover test: its lease is this plus the commit's allowance."""


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


def run_seconds(request: pytest.FixtureRequest) -> float:
    return 120.0 if request.config.getoption("--soak") else 20.0


TWELVE = [(f"user{index:02d}", "read") for index in range(12)]


def test_three_hosts_refresh_each_token_once_and_all_hold_every_new_token(  # noqa: PLR0917
    tmp_path: Path, sandbox: Sandbox, postgres_server: PostgresServer, postgres_url: str,
    start_daemon: StartDaemon, request: pytest.FixtureRequest, figures: dict[str, str],
) -> None:
    """Three daemons, twelve tokens living 3 s, 20 s (--soak: 2 min): every refresh is done by
    exactly one daemon (no refresh token is ever sent twice), and every host's outputs follow
    every commit (the lag is reported)."""
    hosts = shared_hosts(tmp_path, sandbox, postgres_server, postgres_url, TWELVE, count=3)
    seed(postgres_server, postgres_url, sandbox, TWELVE)
    watch = CommitWatch(postgres_server, postgres_url, hosts)
    try:
        daemons = [start_daemon(host.config, f"host-{index}") for index, host in enumerate(hosts)]
        wait_for(lambda: all(d.named("daemon_started") for d in daemons), 60, "three daemons")
        watch.poll(run_seconds(request))
        watch.poll(3.0, hear=False)  # the last commits heard reach every host
        for daemon in daemons:
            assert daemon.stop() == 0
    finally:
        watch.close()
    refreshed = [len(daemon.named("token_refreshed")) for daemon in daemons]
    requests = sandbox.stats()["refresh_token"]
    figures["several hosts"] = (
        f"3 daemons, 12 tokens of 3 s, {run_seconds(request):.0f} s: {requests} refreshes "
        f"({'/'.join(map(str, refreshed))} per daemon), {sandbox.reused_refresh_tokens()} "
        f"reused; {watch.commits} commits seen, output lag p50 {watch.percentile(0.5) * 1000:.0f}"
        f" ms, p95 {watch.percentile(0.95) * 1000:.0f} ms, max "
        f"{watch.percentile(1.0) * 1000:.0f} ms over {len(watch.lags)} host outputs, "
        f"{watch.superseded} superseded before shown")
    assert sandbox.reused_refresh_tokens() == 0
    assert sum(refreshed) == requests, "a refresh request was made that no daemon reports"
    assert min(refreshed) > 0, "a daemon never refreshed: the work was not shared"
    assert watch.commits >= len(TWELVE) * 3
    missed = len(watch.pending)
    assert missed == 0, f"{missed} commits never reached a host's outputs"


def test_a_commit_failing_after_the_server_rotated_is_brought_home_by_the_pending_record(
    tmp_path: Path, sandbox: Sandbox, postgres_server: PostgresServer, postgres_url: str,
    start_daemon: StartDaemon,
) -> None:
    """The database dies while a refresh is on the wire: the answer (the only live refresh
    token) is kept in the state directory, committed once the database is back, and the
    lineage goes on without any refresh token sent twice."""
    (host,) = shared_hosts(tmp_path, sandbox, postgres_server, postgres_url, ALICE, count=1)
    seed(postgres_server, postgres_url, sandbox, ALICE)
    daemon = start_daemon(host.config, "host-0")
    wait_for(lambda: refreshed(daemon, "app/alice/read") >= 1, 30, "a first refresh")
    sent = sandbox.stats()["refresh_token"]
    sandbox.set_answer_delay(3.0)
    wait_for(lambda: sandbox.stats()["refresh_token"] > sent, 10, "a refresh on the wire")
    postgres_server.stop()
    try:
        wait_for(lambda: daemon.named("commit_failed_token_kept"), 30,
                 "the answer kept when its commit failed")
        assert list((host.state_dir / "pending").iterdir()), "no pending record on disk"
    finally:
        sandbox.set_answer_delay(0)
        postgres_server.start()
    wait_for(lambda: any(event.get("result") == "done"
                         for event in daemon.named("pending_commit_settled")), 30,
             "the kept token committed")
    wait_for(lambda: refreshed(daemon, "app/alice/read") >= 4, 30, "refreshes going on")
    assert daemon.stop() == 0
    assert sandbox.reused_refresh_tokens() == 0
    assert list((host.state_dir / "pending").iterdir()) == []
    assert [event["error"] for event in daemon.named("store_unreachable")], "not reported"


def test_hosts_killed_a_database_restarted_and_a_black_holed_host_lose_nothing(  # noqa: PLR0917
    tmp_path: Path, sandbox: Sandbox, postgres_server: PostgresServer, postgres_url: str,
    start_daemon: StartDaemon, request: pytest.FixtureRequest, figures: dict[str, str],
) -> None:
    """Three daemons, twelve 3 s tokens, 25 s (--soak: 2 min) of faults: a SIGKILLed daemon
    restarted every few seconds, the database stopped as in a crash and started, one host's
    connection black-holed by a proxy. Nothing lost: every token ends ok, its stored refresh
    token live at the sandbox, and every commit after the faults reaches every host."""
    rng = random.Random(request.node.name)
    with TcpProxy(("127.0.0.1", postgres_server.port)) as proxy:
        proxied = postgres_url.replace(f":{postgres_server.port}/", f":{proxy.port}/")
        hosts = shared_hosts(tmp_path, sandbox, postgres_server, postgres_url, TWELVE, count=3)
        hosts[2].top_level_yaml = hosts[2].top_level_yaml.replace(postgres_url, proxied)
        hosts[2].write()
        seed(postgres_server, postgres_url, sandbox, TWELVE)
        daemons = [start_daemon(host.config, f"host-{index}") for index, host in enumerate(hosts)]
        wait_for(lambda: all(d.named("daemon_started") for d in daemons), 60, "three daemons")
        kills = outages = black_holes = 0
        end = time.monotonic() + (120.0 if request.config.getoption("--soak") else 25.0)
        while time.monotonic() < end:
            time.sleep(rng.uniform(2.0, 4.0))
            fault = rng.choice(["kill", "kill", "database", "black hole"])
            if fault == "kill":
                index = rng.randrange(3)
                daemons[index].kill()
                daemons[index] = start_daemon(hosts[index].config, f"host-{index}")
                kills += 1
            elif fault == "database":
                postgres_server.stop()
                time.sleep(rng.uniform(0.2, 1.5))
                postgres_server.start()
                outages += 1
            else:
                proxy.black_hole()
                time.sleep(rng.uniform(1.0, 5.0))
                proxy.heal()
                proxy.cut()
                black_holes += 1
        settle_by = time.monotonic() + 60
        while (problem := unsettled(postgres_server, postgres_url, sandbox)) and (
                time.monotonic() < settle_by):
            time.sleep(0.5)
        assert problem is None, f"60 s after the faults: {problem}"
        watch = CommitWatch(postgres_server, postgres_url, hosts)
        try:
            watch.poll(6.0)
            # A host that found the token's lease busy while its release's notification was
            # lost (a connection the faults cut) looks again after BUSY_RETRY: allow that.
            watch.poll(BUSY_RETRY + 1.0, hear=False)
        finally:
            watch.close()
        for daemon in daemons:
            daemon.stop()
    missed = len(watch.pending)
    figures["several hosts, faults"] = (
        f"{kills} SIGKILLs, {outages} database restarts, {black_holes} black holes over "
        f"{sandbox.stats()['refresh_token']} refreshes: {sandbox.reused_refresh_tokens()} "
        f"refresh tokens sent twice; after them, {watch.commits} commits reached every host "
        f"(lag p50 {watch.percentile(0.5) * 1000:.0f} ms, p95 "
        f"{watch.percentile(0.95) * 1000:.0f} ms), {missed} did not")
    assert sandbox.reused_refresh_tokens() == 0
    assert missed == 0, f"{missed} commits never reached a host's outputs"
    assert watch.commits > 0


def unsettled(server: PostgresServer, url: str, sandbox: Sandbox,
              tokens: Sequence[tuple[str, str]] = TWELVE) -> str | None:
    """What is not yet right (a token that is not ok, or whose refresh token is not live at
    the sandbox), without a secret; ``None``: all is."""
    store = PostgresStateStore(url, password=server.password)
    try:
        records = store.all()
    except StateError:
        return "the database does not answer"
    finally:
        store.close()
    if len(records) != len(tokens):
        return f"{len(records)} tokens stored"
    for record in records:
        if record.token is None or record.state is not TokenState.OK:
            return f"{record.name} is {record.state}"
        if (state := sandbox.refresh_token_state(record.token.refresh_token)) != "live":
            return f"{record.name}'s stored refresh token is {state} at the sandbox"
    return None


def test_a_lost_database_is_reported_and_leaves_the_outputs_alone(
    tmp_path: Path, hour_sandbox: Sandbox, postgres_server: PostgresServer,
    postgres_url: str, start_daemon: StartDaemon,
) -> None:
    """While the database is down: the log says so, tokend_store_up is 0, /healthz answers 503
    naming the store, the outputs stay as they were; once it is back, all say so again."""
    (host,) = shared_hosts(tmp_path, hour_sandbox, postgres_server, postgres_url, ALICE,
                           count=1)
    host.top_level_yaml += 'metrics: {listen: "127.0.0.1:0"}\n'
    host.write()
    seed(postgres_server, postgres_url, hour_sandbox, ALICE)
    daemon = start_daemon(host.config, "host-0")
    wait_for(lambda: daemon.named("metrics_listening"), 30, "the metrics listener")
    port = int(daemon.named("metrics_listening")[-1]["port"])

    def get(path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)

    wait_for(lambda: get("/healthz").status_code == 200, 30, "a healthy daemon")
    before = output(host, "alice", "read")
    assert "tokend_store_up 1.0" in get("/metrics").text
    postgres_server.stop()
    try:
        wait_for(lambda: daemon.named("store_unreachable"), 30, "the outage logged")
        health = get("/healthz")
        assert (health.status_code, health.json()["store"]) == (503, "unreachable")
        assert "tokend_store_up 0.0" in get("/metrics").text
        kept = output(host, "alice", "read") == before
        assert kept, "the outputs changed in the outage"
    finally:
        postgres_server.start()
    wait_for(lambda: daemon.named("store_reachable"), 30, "the store back")
    assert get("/healthz").status_code == 200
    assert "tokend_store_up 1.0" in get("/metrics").text


def test_a_host_that_never_comes_back_loses_its_lease_when_it_runs_out(  # noqa: PLR0917
    tmp_path: Path, sandbox: Sandbox, postgres_server: PostgresServer, postgres_url: str,
    start_daemon: StartDaemon, figures: dict[str, str],
) -> None:
    """Three daemons, each on a host of its own (its own UTS namespace and host name, so no
    daemon can see another's processes): the one holding the token's lease is SIGKILLed
    mid-refresh. Nobody can prove it dead, so the token waits until the lease runs out on
    the database's clock; then another host refreshes it, no refresh token sent twice."""
    if (reason := no_own_host_reason()) is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the several-hosts takeover test, but: {reason}")
        pytest.skip(reason)
    hosts = shared_hosts(tmp_path, sandbox, postgres_server, postgres_url, ALICE, count=3)
    for host in hosts:  # a lease of timeout + 20 s: the shortest the daemon takes
        host.defaults_yaml += f"  timeout: {TIMEOUT:g}s\n"
        host.write()
    seed(postgres_server, postgres_url, sandbox, ALICE)
    daemons = [start_daemon(host.config, f"host-{index}", prefix=own_host(f"host{index}"))
               for index, host in enumerate(hosts)]
    wait_for(lambda: sum(refreshed(daemon, "app/alice/read") for daemon in daemons) >= 2, 60,
             "the token refreshed")
    # The next refresh request reaches the server and hangs there, unanswered and unprocessed.
    sandbox.inject_fault("hang", seconds=5.0, grant="refresh_token")
    wait_for(lambda: sandbox.stats()["faulted"] >= 1, 10, "a refresh on the wire")
    lease = Leases(postgres_server, postgres_url)
    try:
        owner, epoch, expires_at, killed_at = lease.now()
        holder = int(owner.split(":", 1)[0].removeprefix("host"))
        daemons[holder].kill()
        wait_for(lambda: lease.now()[1] > epoch, 60, "another host's claim")
        taken_at = lease.now()[3]
    finally:
        lease.close()
    survivors = [daemon for index, daemon in enumerate(daemons) if index != holder]
    wait_for(lambda: any(refreshed(daemon, "app/alice/read") for daemon in survivors), 30,
             "the token refreshed by another host")
    wait_for(lambda: unsettled(postgres_server, postgres_url, sandbox, ALICE) is None, 30,
             "the token ok and live")
    waited, lease_left = taken_at - killed_at, expires_at - killed_at
    figures["several hosts, a host gone for good"] = (
        f"holder SIGKILLed mid-refresh with {lease_left:.1f} s of its lease left "
        f"(lease {TIMEOUT + COMMIT_ALLOWANCE + CLAIM_ALLOWANCE:.0f} s): another host "
        f"claimed the token {waited:.1f} s later; {sandbox.reused_refresh_tokens()} refresh "
        "tokens sent twice")
    assert taken_at >= expires_at, "the lease was taken before it ran out"
    assert sandbox.reused_refresh_tokens() == 0
