"""What only the PostgreSQL store has: one migration for many daemons, a password that never
shows, deadlines on a black-holed connection, NOTIFY of every token write, and a server that
restarts under it. The contract it shares with SQLite is tested in test_state.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.postgres import PostgresServer
from tests.tcp_proxy import TcpProxy
from tests.test_state import NAME, NOW, make_token
from tokend.errors import StateError
from tokend.model import TokenName
from tokend.store.interface import PublishedFiles, TokenRecord, Written
from tokend.store.postgres import PostgresStateStore
from tokend.store.postgres_connection import Deadlines
from tokend.store.postgres_schema import CHANNEL, SCHEMA_VERSION
from tokend.store.sqlite import BUSY_TIMEOUT


def open_store(server: PostgresServer, url: str) -> PostgresStateStore:
    return PostgresStateStore(url, password=server.password)


@pytest.fixture
def store(postgres_server: PostgresServer, postgres_url: str) -> Iterator[PostgresStateStore]:
    opened = open_store(postgres_server, postgres_url)
    yield opened
    opened.close()


def raw(server: PostgresServer, url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, password=server.password, autocommit=True)


def test_daemons_starting_at_once_migrate_once(postgres_server: PostgresServer) -> None:
    """Eight daemons opening a new database together all start, and the schema is made once."""
    url = postgres_server.url(postgres_server.new_database())
    errors: list[str] = []
    start = threading.Barrier(8)

    def open_and_close() -> None:
        start.wait()
        try:
            open_store(postgres_server, url).close()
        except StateError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=open_and_close) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with raw(postgres_server, url) as conn:
        versions = conn.execute("SELECT version FROM tokend_schema").fetchall()
    assert versions == [(SCHEMA_VERSION,)]


def test_a_newer_schema_is_refused(postgres_server: PostgresServer, postgres_url: str) -> None:
    """A daemon of an older tokend does not misread a store a newer one migrated."""
    open_store(postgres_server, postgres_url).close()
    with raw(postgres_server, postgres_url) as conn:
        conn.execute("INSERT INTO tokend_schema VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StateError, match="newer"):
        open_store(postgres_server, postgres_url)


def test_a_connection_error_never_shows_the_password(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """A refused login names the database, not the password that was tried."""
    password = "hunter2-" + postgres_server.password
    with pytest.raises(StateError) as caught:
        PostgresStateStore(postgres_url, password=password)
    message = str(caught.value)
    leaked = password in message
    assert not leaked, "the password is in the error"
    assert f"127.0.0.1:{postgres_server.port}" in message
    assert "password" in message, "the error does not say what went wrong"


def test_every_call_has_a_deadline_within_the_commit_budget() -> None:
    """The refresher keeps BUSY_TIMEOUT of each lease for the commit: a store call that could
    take longer would let a lease end under a commit."""
    assert Deadlines().call <= BUSY_TIMEOUT


def test_a_black_holed_connection_fails_the_call_instead_of_hanging(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """A peer that acknowledges and never answers cannot hang the daemon: the call fails."""
    with TcpProxy(("127.0.0.1", postgres_server.port)) as proxy:
        url = postgres_url.replace(f":{postgres_server.port}/", f":{proxy.port}/")
        store = open_store(postgres_server, url)
        try:
            store.save_token(NAME, make_token(), now=NOW)
            proxy.black_hole()
            started = time.monotonic()
            with pytest.raises(StateError, match="cannot read"):
                store.get(NAME)
            waited = time.monotonic() - started
            proxy.heal()
            proxy.cut()
            assert waited < Deadlines().call + 5, f"the call hung for {waited:.1f} s"
            record = wait_for_answer(store)
            assert record is not None and record.token == make_token()
        finally:
            store.close()


def wait_for_answer(store: PostgresStateStore) -> TokenRecord | None:
    """``store.get(NAME)`` once the store answers again (calls fail while it reconnects)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return store.get(NAME)
        except StateError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_every_token_write_is_announced_without_a_secret(
    postgres_server: PostgresServer, postgres_url: str, store: PostgresStateStore
) -> None:
    """Other hosts hear of each committed write (name and generation), never of a refused one,
    and the announcement holds no token."""
    with raw(postgres_server, postgres_url) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        store.save_token(NAME, make_token(1), now=NOW)
        store.commit(NAME, make_token(2), generation=1, issued_at=NOW, now=NOW)
        store.commit(NAME, make_token(3), generation=1, issued_at=NOW, now=NOW)  # stale
        claim = store.claim(NAME, owner="a", lease=60)
        assert claim is not None
        store.delete_token(claim.lease, generation=2)
        heard = [note.payload for note in listener.notifies(timeout=1.0, stop_after=4)]
    leaked = any("secret" in payload for payload in heard)
    assert not leaked, "a token is in a notification"
    assert [json.loads(payload) for payload in heard] == [
        {"app": NAME.app, "user": NAME.user, "scope": NAME.scope, "generation": generation}
        for generation in (1, 2, 3)]


def test_the_store_works_again_after_the_server_restarts(
    postgres_server: PostgresServer, store: PostgresStateStore
) -> None:
    """A database crash costs at most failed calls while it is down, never a stuck store."""
    store.save_token(NAME, make_token(), now=NOW)
    postgres_server.stop()
    try:
        with pytest.raises(StateError):
            store.get(NAME)
    finally:
        postgres_server.start()
    record = wait_for_answer(store)
    assert record is not None and record.token == make_token()


def test_each_host_keeps_its_own_files_and_their_health(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """Which files hold a token, their health and whether the config names it are each host's
    own: another host's files are never taken for outputs this host moved away from."""
    first = PostgresStateStore(postgres_url, password=postgres_server.password, host="a")
    second = PostgresStateStore(postgres_url, password=postgres_server.password, host="b")
    try:
        first.save_token(NAME, make_token(), now=NOW)
        for store, path in ((first, "/a/x.token"), (second, "/b/x.token")):
            claim = store.claim(NAME, owner="me", lease=60)
            assert claim is not None
            assert store.record_published([PublishedFiles(claim.lease, (path,), None)]) == [
                Written.DONE]
            if store is first:
                assert store.set_output_problem(claim.lease, error="/a: full") is Written.DONE
            store.release(claim.lease)
        mine, theirs = first.get(NAME), second.get(NAME)
        assert mine is not None and theirs is not None
        assert (mine.outputs, mine.output_error) == (("/a/x.token",), "/a: full")
        assert (theirs.outputs, theirs.output_error) == (("/b/x.token",), None)
        assert mine.generation == theirs.generation
    finally:
        first.close()
        second.close()


def test_a_long_outage_is_not_followed_by_a_long_wait(
    postgres_server: PostgresServer, store: PostgresStateStore
) -> None:
    """The pool's reconnect backoff doubles without bound: after 16 s down it would wait
    another 15 s. The store gives that backoff up early and connects when asked."""
    store.ping()
    postgres_server.stop()
    try:
        down_until = time.monotonic() + 16
        while time.monotonic() < down_until:
            with pytest.raises(StateError):
                store.ping()
            time.sleep(1)
    finally:
        postgres_server.start()
    back = time.monotonic()
    assert wait_for_answer(store) is None  # the test's token was never stored
    waited = time.monotonic() - back
    assert waited < 5, f"the store answered {waited:.1f} s after the database was back"


def test_hosts_taking_and_ending_many_leases_at_once_never_deadlock(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """Two hosts starting together claim and release the same tokens in batches, each in its
    own order (a set's order differs between processes): the database must never have to
    abort one as a deadlock, which would leave every lease of that batch held."""
    names = [TokenName("app", f"user{index:02d}", "read") for index in range(40)]
    seeding = open_store(postgres_server, postgres_url)
    seeding.save_tokens([(name, make_token()) for name in names], now=NOW)
    seeding.close()
    errors: list[str] = []
    start = threading.Barrier(2)

    def churn(owner: str, order: list[TokenName]) -> None:
        host = open_store(postgres_server, postgres_url)
        try:
            start.wait()
            for _ in range(15):
                claims = host.claim_many(order, owner=owner, lease=30.0)
                host.release_many([claim.lease for claim in claims])
        except StateError as exc:
            errors.append(str(exc).split("\n")[0])
        finally:
            host.close()

    threads = [threading.Thread(target=churn, args=("host-a", names)),
               threading.Thread(target=churn, args=("host-b", names[::-1]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
