"""The SQLite state store: durable, private, atomic, and shareable with the CLI."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokend.errors import StateError
from tokend.model import TokenName
from tokend.oauth import Token
from tokend.sqlite_store import SCHEMA_VERSION, SqliteStateStore
from tokend.state import StateStore, TokenState

NAME = TokenName("payroll", "alice", "read")
OTHER = TokenName("payroll", "bob", "write")
NOW = 1_700_000_000.0
ROOT = Path(__file__).resolve().parent.parent


def make_token(serial: int = 1) -> Token:
    return Token(
        access_token=f"access-secret-{serial}",
        token_type="Bearer",
        expires_in=3600,
        refresh_token=f"refresh-secret-{serial}",
        scope="read",
        created_at=int(NOW) + serial,
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(state_dir: Path) -> Iterator[SqliteStateStore]:
    opened = SqliteStateStore(state_dir)
    yield opened
    opened.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_child(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter: a second process on the same store file."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=60,
    )
    return done.stdout.strip()


CLAIM_CHILD = """
import sys
from pathlib import Path
from tokend.model import TokenName
from tokend.sqlite_store import SqliteStateStore
store = SqliteStateStore(Path(sys.argv[1]))
print(store.claim(TokenName.parse(sys.argv[2]), owner=sys.argv[3], now=float(sys.argv[4]),
                  lease=60.0))
"""


def test_saved_token_reads_back_with_ok_state(store: StateStore) -> None:
    """A token saved after a refresh is what `tokend token` reads, marked healthy."""
    store.save_token(NAME, make_token(), now=NOW)
    record = store.get(NAME)
    assert record is not None
    assert record.token == make_token(), "token differs"
    assert record.state is TokenState.OK
    assert (record.refresh_token_issued_at, record.last_refresh_at, record.last_attempt_at) == (
        NOW, NOW, NOW)
    assert (record.consecutive_failures, record.last_error, record.next_attempt_at) == (
        0, None, None)


def test_unknown_token_reads_as_none(store: StateStore) -> None:
    """A token never seen before has no record rather than an empty one."""
    assert store.get(NAME) is None


def test_all_lists_every_record(store: StateStore) -> None:
    """`tokend status` sees every stored token in one call."""
    store.save_tokens([(OTHER, make_token(2)), (NAME, make_token(1))], now=NOW)
    assert [record.name for record in store.all()] == sorted([NAME, OTHER])


def test_files_are_private_even_with_an_open_umask(tmp_path: Path) -> None:
    """Nobody but the daemon's user can read refresh tokens, whatever umask it starts with."""
    state_dir = tmp_path / "state"
    old = os.umask(0)
    try:
        opened = SqliteStateStore(state_dir)
        opened.save_token(NAME, make_token(), now=NOW)
    finally:
        os.umask(old)
    db = state_dir / "tokend.db"
    modes = {p.name: mode(p) for p in (state_dir, db, Path(f"{db}-wal"), Path(f"{db}-shm"))}
    opened.close()
    assert modes == {"state": 0o700, "tokend.db": 0o600, "tokend.db-wal": 0o600,
                     "tokend.db-shm": 0o600}


def test_existing_state_dir_keeps_its_mode(state_dir: Path) -> None:
    """An operator's chosen mode on an existing state directory is not overridden."""
    state_dir.mkdir(mode=0o750)
    state_dir.chmod(0o750)
    SqliteStateStore(state_dir).close()
    assert mode(state_dir) == 0o750


def test_token_survives_close_and_reopen(state_dir: Path) -> None:
    """A restarted daemon finds the token it committed before stopping."""
    first = SqliteStateStore(state_dir)
    first.save_token(NAME, make_token(), now=NOW)
    first.close()
    second = SqliteStateStore(state_dir)
    record = second.get(NAME)
    second.close()
    assert record is not None
    assert record.token == make_token(), "token differs"


def test_committed_token_survives_a_process_that_dies(state_dir: Path) -> None:
    """A daemon killed right after a refresh still left the new token on disk."""
    run_child(
        "import os, sys\n"
        "from pathlib import Path\n"
        "from tokend.model import TokenName\n"
        "from tokend.oauth import Token\n"
        "from tokend.sqlite_store import SqliteStateStore\n"
        "store = SqliteStateStore(Path(sys.argv[1]))\n"
        "store.save_token(TokenName.parse(sys.argv[2]), Token('a', 'Bearer', 60, 'r', 'read', 5),"
        " now=1.0)\n"
        "os._exit(0)\n",
        str(state_dir), str(NAME),
    )
    store = SqliteStateStore(state_dir)
    record = store.get(NAME)
    store.close()
    assert record is not None
    assert record.token is not None
    assert record.token.created_at == 5


def test_failure_keeps_the_stored_token(store: StateStore) -> None:
    """A failed refresh never loses the refresh token that may still work next time."""
    store.save_token(NAME, make_token(), now=NOW)
    for attempt in (1, 2):
        store.record_failure(NAME, error="server_error (HTTP 503)", state=TokenState.FAILING,
                             now=NOW + attempt, next_attempt_at=NOW + 100 * attempt)
    record = store.get(NAME)
    assert record is not None
    assert record.token == make_token(), "token differs"
    assert record.state is TokenState.FAILING
    assert record.consecutive_failures == 2
    assert (record.last_error, record.last_attempt_at, record.next_attempt_at) == (
        "server_error (HTTP 503)", NOW + 2, NOW + 200)
    assert record.last_refresh_at == NOW


def test_failure_of_an_unknown_token_creates_its_record(store: StateStore) -> None:
    """A token that failed before it was ever stored still shows up in `tokend status`."""
    store.record_failure(NAME, error="invalid_grant", state=TokenState.NEEDS_AUTHORIZATION,
                         now=NOW, next_attempt_at=None)
    record = store.get(NAME)
    assert record is not None
    assert (record.token, record.state, record.consecutive_failures) == (
        None, TokenState.NEEDS_AUTHORIZATION, 1)


def test_success_after_failures_clears_them(store: StateStore) -> None:
    """Once a refresh works again, status shows a healthy token with no stale error."""
    store.record_failure(NAME, error="network_error", state=TokenState.FAILING, now=NOW,
                         next_attempt_at=NOW + 10)
    store.save_token(NAME, make_token(), now=NOW + 20)
    record = store.get(NAME)
    assert record is not None
    assert (record.state, record.consecutive_failures, record.last_error,
            record.next_attempt_at, record.refresh_token_issued_at) == (
        TokenState.OK, 0, None, None, NOW + 20)


def test_delete_token_forgets_it(store: StateStore) -> None:
    """After `tokend revoke` the token is gone and the name asks for authorization."""
    store.save_token(NAME, make_token(), now=NOW)
    store.delete_token(NAME)
    record = store.get(NAME)
    assert record is not None
    assert (record.token, record.refresh_token_issued_at, record.state) == (
        None, None, TokenState.NOT_AUTHORIZED)


def test_claim_is_exclusive_between_two_connections(state_dir: Path) -> None:
    """Two daemons on one store never refresh the same token at once."""
    first, second = SqliteStateStore(state_dir), SqliteStateStore(state_dir)
    try:
        assert first.claim(NAME, owner="a", now=NOW, lease=60)
        assert not second.claim(NAME, owner="b", now=NOW + 1, lease=60)
        assert second.claim(OTHER, owner="b", now=NOW + 1, lease=60)
    finally:
        first.close()
        second.close()


def test_claim_is_exclusive_across_processes(store: SqliteStateStore, state_dir: Path) -> None:
    """A lease held by this process keeps another process off the token, and vice versa."""
    assert store.claim(NAME, owner="parent", now=NOW, lease=60)
    assert run_child(CLAIM_CHILD, str(state_dir), str(NAME), "child", str(NOW + 1)) == "False"
    assert run_child(CLAIM_CHILD, str(state_dir), str(OTHER), "child", str(NOW + 1)) == "True"
    assert not store.claim(OTHER, owner="parent", now=NOW + 2, lease=60)


def test_expired_lease_can_be_taken_over(store: StateStore) -> None:
    """A daemon that crashed while holding a lease does not block the token forever."""
    assert store.claim(NAME, owner="a", now=NOW, lease=60)
    assert not store.claim(NAME, owner="b", now=NOW + 59, lease=60)
    assert store.claim(NAME, owner="b", now=NOW + 60, lease=60)
    assert not store.claim(NAME, owner="a", now=NOW + 61, lease=60)


def test_owner_can_renew_its_lease(store: StateStore) -> None:
    """The holder of a lease may claim it again to extend it."""
    assert store.claim(NAME, owner="a", now=NOW, lease=60)
    assert store.claim(NAME, owner="a", now=NOW + 50, lease=60)
    assert not store.claim(NAME, owner="b", now=NOW + 100, lease=60)


def test_release_frees_only_the_owners_lease(store: StateStore) -> None:
    """Releasing hands the token over at once, but only its holder can release it."""
    assert store.claim(NAME, owner="a", now=NOW, lease=60)
    store.release(NAME, owner="b")
    assert not store.claim(NAME, owner="b", now=NOW, lease=60)
    store.release(NAME, owner="a")
    assert store.claim(NAME, owner="b", now=NOW, lease=60)


def test_schema_version_is_recorded(store: SqliteStateStore) -> None:
    """A future tokend can tell which schema this store has."""
    with sqlite3.connect(store.path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1


def test_newer_schema_is_refused(state_dir: Path) -> None:
    """Downgrading tokend fails clearly instead of misreading a newer store."""
    SqliteStateStore(state_dir).close()
    raw = sqlite3.connect(state_dir / "tokend.db")
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StateError, match="newer"):
        SqliteStateStore(state_dir)


def test_garbage_file_is_a_state_error(state_dir: Path) -> None:
    """A corrupt or foreign file at the store path gives a clear error naming it."""
    state_dir.mkdir()
    (state_dir / "tokend.db").write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(StateError, match=str(state_dir / "tokend.db")):
        SqliteStateStore(state_dir)


def test_state_dir_that_is_a_file_is_a_state_error(tmp_path: Path) -> None:
    """A state_dir path taken by a regular file gives a StateError, not a traceback."""
    (tmp_path / "state").write_text("")
    with pytest.raises(StateError, match="cannot create"):
        SqliteStateStore(tmp_path / "state")


def test_reopening_keeps_data_and_version(state_dir: Path) -> None:
    """Migrations run once: reopening an up-to-date store changes nothing."""
    for _ in range(3):
        opened = SqliteStateStore(state_dir)
        opened.save_token(NAME, make_token(), now=NOW)
        opened.close()
    raw = sqlite3.connect(state_dir / "tokend.db")
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert raw.execute("SELECT count(*) FROM tokens").fetchone()[0] == 1
    raw.close()


def test_save_tokens_commits_all_together(store: StateStore) -> None:
    """A batch of refreshed tokens is stored by one call."""
    names = [TokenName("app", f"user{i}", "read") for i in range(50)]
    store.save_tokens([(name, make_token(i)) for i, name in enumerate(names)], now=NOW)
    stored = {record.name: record.token for record in store.all()}
    assert stored == {name: make_token(i) for i, name in enumerate(names)}, "tokens differ"


def test_save_tokens_is_all_or_nothing(store: SqliteStateStore) -> None:
    """If one token of a batch cannot be written, none is, and no secret leaks in the error."""
    with sqlite3.connect(store.path) as raw:
        raw.execute("CREATE TRIGGER fail BEFORE INSERT ON tokens WHEN NEW.user = 'bob' "
                    "BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
    with pytest.raises(StateError) as caught:
        store.save_tokens([(NAME, make_token(1)), (OTHER, make_token(2))], now=NOW)
    assert store.get(NAME) is None
    message = str(caught.value)
    assert "secret" not in message, "a token leaked into the error"
    assert "disk trouble" in message


def test_closed_store_raises_state_error(state_dir: Path) -> None:
    """Using a store after close fails with tokend's own error."""
    closed = SqliteStateStore(state_dir)
    closed.close()
    with pytest.raises(StateError):
        closed.save_token(NAME, make_token(), now=NOW)


def test_opening_does_not_wait_for_a_writer(state_dir: Path) -> None:
    """`tokend status` opens and reads while the daemon is in the middle of a write."""
    SqliteStateStore(state_dir).close()
    writer = sqlite3.connect(state_dir / "tokend.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        reader = SqliteStateStore(state_dir, busy_timeout=5.0)
        assert reader.all() == []
        reader.close()
        assert time.monotonic() - started < 2.0
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_store_is_safe_from_several_threads(store: StateStore) -> None:
    """Calls arriving via asyncio.to_thread from several threads do not corrupt each other."""
    names = [TokenName("app", f"user{i}", "read") for i in range(8)]

    def work(name: TokenName) -> None:
        for i in range(20):
            store.save_token(name, make_token(i), now=NOW + i)
            store.record_failure(name, error="x", state=TokenState.FAILING, now=NOW,
                                 next_attempt_at=None)

    threads = [threading.Thread(target=work, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [record.consecutive_failures for record in store.all()] == [1] * 8


def test_reading_100k_tokens_returns_every_record(store: StateStore) -> None:
    """`tokend status` over a very large deployment sees every token (speed: bench/)."""
    token = make_token()
    store.save_tokens([(TokenName("app", f"u{i:06d}", "read"), token) for i in range(100_000)],
                      now=NOW)
    records = store.all()
    assert len(records) == 100_000
    assert len({record.name for record in records}) == 100_000


def test_a_problem_marks_the_token_failing_and_clearing_it_restores_ok(
    store: StateStore,
) -> None:
    """An output problem shows as failing with its message, and clears without a refresh."""
    store.save_token(NAME, make_token(1), now=1000.0)
    store.set_problem(NAME, error="outputs: /run/x: Read-only file system")
    failing = store.get(NAME)
    assert failing is not None
    assert failing.state is TokenState.FAILING
    assert failing.last_error == "outputs: /run/x: Read-only file system"
    assert failing.consecutive_failures == 0
    store.set_problem(NAME, error=None)
    healed = store.get(NAME)
    assert healed is not None and healed.token == make_token(1)
    assert healed.state is TokenState.OK
    assert healed.last_error is None


def test_a_problem_of_an_unauthorized_token_changes_nothing(store: StateStore) -> None:
    """Only a stored token can have an output problem; a never-authorized one stays absent."""
    store.set_problem(NAME, error="x")
    assert store.get(NAME) is None


def test_a_dead_holder_no_longer_blocks_a_claim(state_dir: Path) -> None:
    """A SIGKILLed daemon's lease is taken over at once when its death is known."""
    first, second = SqliteStateStore(state_dir), SqliteStateStore(state_dir)
    try:
        assert first.claim(NAME, owner="dead-one", now=100.0, lease=60.0)
        assert not second.claim(NAME, owner="next", now=101.0, lease=60.0)
        assert second.claim(
            NAME, owner="next", now=101.0, lease=60.0,
            holder_is_dead=lambda owner: owner == "dead-one",
        )
    finally:
        first.close()
        second.close()


def test_leases_leave_the_store_fully_durable(store: SqliteStateStore) -> None:
    """Claims skip the fsync, but token commits after them are synchronous=FULL again."""
    assert store.claim(NAME, owner="me", now=1.0, lease=5.0)
    store.release(NAME, owner="me")
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
