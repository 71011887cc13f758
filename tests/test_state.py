"""The SQLite state store: durable, private, atomic, shareable with the CLI, and one owner per
token (generations, fenced leases on the store's own clock, output health apart)."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.stores import LeaseClock, OpenStore
from tokend.errors import StateError
from tokend.model import Token, TokenName
from tokend.store.current import NoValidTokenError, current_access_token
from tokend.store.interface import (
    Claim,
    Lease,
    PublishedFiles,
    StateStore,
    TokenRecord,
    TokenState,
    Written,
)
from tokend.store.sqlite import SqliteStateStore
from tokend.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

NAME = TokenName("payroll", "alice", "read")
OTHER = TokenName("payroll", "bob", "write")
NOW = 1_700_000_000.0
LIFETIME = 7 * 86400.0
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
def store(open_store: OpenStore) -> StateStore:
    """A store of each kind (tests/stores.py): the contract tests run against both."""
    return open_store()


@pytest.fixture
def sqlite_store(state_dir: Path) -> Iterator[SqliteStateStore]:
    """The SQLite store, for what only it has (a file, pragmas, ``tokend token``'s reader)."""
    opened = SqliteStateStore(state_dir)
    yield opened
    opened.close()


@pytest.fixture
def clock() -> LeaseClock:
    return LeaseClock()


@pytest.fixture
def timed(open_store: OpenStore, clock: LeaseClock) -> StateStore:
    """A store whose leases run on ``clock``, so a test can let one run out at once."""
    return open_store(clock=clock)


def claimed(
    store: StateStore, name: TokenName = NAME, *, owner: str = "a", lease: float = 60.0
) -> Claim:
    claim = store.claim(name, owner=owner, lease=lease)
    assert claim is not None, f"{owner} could not claim {name}"
    return claim


def fail(
    store: StateStore, lease: Lease, generation: int, *, state: TokenState = TokenState.FAILING,
    error: str = "server_error (HTTP 503)", now: float = NOW + 5,
    next_attempt_at: float | None = NOW + 60,
) -> Written:
    return store.record_failure(lease, generation=generation, error=error, state=state, now=now,
                                next_attempt_at=next_attempt_at)


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
from tokend.store.sqlite import SqliteStateStore
store = SqliteStateStore(Path(sys.argv[1]))
print(store.claim(TokenName.parse(sys.argv[2]), owner=sys.argv[3], lease=60.0) is not None)
"""


def test_saved_token_reads_back_with_ok_state(store: StateStore) -> None:
    """A token saved after a refresh is what `tokend token` reads, marked healthy."""
    store.save_token(NAME, make_token(), now=NOW)
    record = store.get(NAME)
    assert record is not None
    assert record.token == make_token(), "token differs"
    assert record.state is TokenState.OK
    assert (record.issued_at, record.last_refresh_at, record.last_attempt_at) == (NOW, NOW, NOW)
    assert (record.consecutive_failures, record.last_error, record.next_attempt_at) == (
        0, None, None)
    assert (record.generation, record.output_error) == (1, None)


def test_unknown_token_reads_as_none(store: StateStore) -> None:
    """A token never seen before has no record rather than an empty one."""
    assert store.get(NAME) is None


def test_all_lists_every_record(store: StateStore) -> None:
    """`tokend status` sees every stored token in one call."""
    store.save_tokens([(OTHER, make_token(2)), (NAME, make_token(1))], now=NOW)
    assert [record.name for record in store.all()] == sorted([NAME, OTHER])


def test_records_hold_what_every_token_repeats_once(store: StateStore) -> None:
    """The daemon holds a record of every token: their application, scope and token type are
    one string each for all of them (the config's too), and a row's equal times one object."""
    names = [TokenName("payroll", f"user{index}", "read") for index in range(3)]
    store.save_tokens([(name, make_token(index)) for index, name in enumerate(names)], now=NOW)
    records = store.all()
    tokens = [record.token for record in records if record.token is not None]
    assert len(tokens) == len(records) == 3
    repeated = [[record.name.app for record in records], [record.name.scope for record in records],
                [token.token_type for token in tokens], [token.scope for token in tokens]]
    assert [len({id(value) for value in values}) for values in repeated] == [1, 1, 1, 1]
    assert records[0].name.scope is sys.intern("read")
    assert all(record.last_attempt_at is record.issued_at is record.last_refresh_at
               for record in records)


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


def test_existing_state_dir_is_tightened_to_0700(state_dir: Path) -> None:
    """It holds every refresh token: a looser existing state directory is made 0700 (README)."""
    state_dir.mkdir(mode=0o750)
    state_dir.chmod(0o750)
    SqliteStateStore(state_dir).close()
    assert mode(state_dir) == 0o700


def test_token_survives_close_and_reopen(open_store: OpenStore) -> None:
    """A restarted daemon finds the token it committed before stopping."""
    first = open_store()
    first.save_token(NAME, make_token(), now=NOW)
    first.close()
    second = open_store()
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
        "from tokend.oauth.protocol import Token\n"
        "from tokend.store.sqlite import SqliteStateStore\n"
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
    claim = claimed(store)
    for attempt in (1, 2):
        assert fail(store, claim.lease, claim.generation, now=NOW + attempt,
                    next_attempt_at=NOW + 100 * attempt) is Written.DONE
    record = store.get(NAME)
    assert record is not None
    assert record.token == make_token(), "token differs"
    assert record.generation == 1, "a failure record is no token write"
    assert record.state is TokenState.FAILING
    assert record.consecutive_failures == 2
    assert (record.last_error, record.last_attempt_at, record.next_attempt_at) == (
        "server_error (HTTP 503)", NOW + 2, NOW + 200)
    assert record.last_refresh_at == NOW


def test_failure_of_an_unknown_token_creates_its_record(store: StateStore) -> None:
    """A token that failed before it was ever stored still shows up in `tokend status`."""
    claim = claimed(store)
    assert claim.record is None
    assert fail(store, claim.lease, claim.generation, state=TokenState.NEEDS_AUTHORIZATION,
                error="invalid_grant", next_attempt_at=None) is Written.DONE
    record = store.get(NAME)
    assert record is not None
    assert (record.token, record.state, record.consecutive_failures) == (
        None, TokenState.NEEDS_AUTHORIZATION, 1)


def test_success_after_failures_clears_them(store: StateStore) -> None:
    """Once a refresh works again, status shows a healthy token with no stale error."""
    claim = claimed(store)
    assert fail(store, claim.lease, claim.generation, error="network_error", now=NOW,
                next_attempt_at=NOW + 10) is Written.DONE
    assert store.commit(NAME, make_token(), generation=claim.generation, issued_at=NOW + 20,
                        now=NOW + 21) is Written.DONE
    record = store.get(NAME)
    assert record is not None
    assert (record.state, record.consecutive_failures, record.last_error,
            record.next_attempt_at, record.issued_at) == (TokenState.OK, 0, None, None, NOW + 20)


def test_delete_token_forgets_it(store: StateStore) -> None:
    """After `tokend revoke` the token is gone and the name asks for authorization."""
    store.save_token(NAME, make_token(), now=NOW)
    claim = claimed(store)
    assert store.delete_token(claim.lease, generation=claim.generation) is Written.DONE
    record = store.get(NAME)
    assert record is not None
    assert (record.token, record.issued_at, record.state, record.generation) == (
        None, None, TokenState.NOT_AUTHORIZED, 2)


def test_claim_is_exclusive_between_two_connections(open_store: OpenStore) -> None:
    """Two daemons on one store never refresh the same token at once."""
    first, second = open_store(), open_store()
    try:
        assert first.claim(NAME, owner="a", lease=60) is not None
        assert second.claim(NAME, owner="b", lease=60) is None
        assert second.claim(OTHER, owner="b", lease=60) is not None
    finally:
        first.close()
        second.close()


def test_claim_is_exclusive_across_processes(sqlite_store: SqliteStateStore,
                                            state_dir: Path) -> None:
    """A lease held by this process keeps another process off the token, and vice versa."""
    store = sqlite_store
    assert store.claim(NAME, owner="parent", lease=60) is not None
    assert run_child(CLAIM_CHILD, str(state_dir), str(NAME), "child") == "False"
    assert run_child(CLAIM_CHILD, str(state_dir), str(OTHER), "child") == "True"
    assert store.claim(OTHER, owner="parent", lease=60) is None


def test_expired_lease_can_be_taken_over(timed: StateStore, clock: LeaseClock) -> None:
    """A daemon that crashed while holding a lease does not block the token forever."""
    start = clock.now
    claimed(timed, owner="a")
    clock.now = start + 59
    assert timed.claim(NAME, owner="b", lease=60) is None
    clock.now = start + 60
    claimed(timed, owner="b")
    clock.now = start + 61
    assert timed.claim(NAME, owner="a", lease=60) is None


def test_owner_can_renew_its_lease(timed: StateStore, clock: LeaseClock) -> None:
    """The holder of a lease may claim it again to extend it."""
    start = clock.now
    claimed(timed, owner="a")
    clock.now = start + 50
    claimed(timed, owner="a")
    clock.now = start + 100
    assert timed.claim(NAME, owner="b", lease=60) is None


def test_release_frees_only_the_owners_lease(store: StateStore) -> None:
    """Releasing hands the token over at once, but only its holder can release it."""
    held = claimed(store, owner="a")
    assert store.release(dataclasses.replace(held.lease, owner="b")) is Written.STALE
    assert store.claim(NAME, owner="b", lease=60) is None
    assert store.release(held.lease) is Written.DONE
    claimed(store, owner="b")


def test_schema_version_is_recorded(sqlite_store: SqliteStateStore) -> None:
    """A future tokend can tell which schema this store has."""
    with sqlite3.connect(sqlite_store.path) as raw:
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


def test_save_tokens_is_all_or_nothing(sqlite_store: SqliteStateStore) -> None:
    """If one token of a batch cannot be written, none is, and no secret leaks in the error."""
    store = sqlite_store
    with sqlite3.connect(store.path) as raw:
        raw.execute("CREATE TRIGGER fail BEFORE INSERT ON tokens WHEN NEW.user = 'bob' "
                    "BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
    with pytest.raises(StateError) as caught:
        store.save_tokens([(NAME, make_token(1)), (OTHER, make_token(2))], now=NOW)
    assert store.get(NAME) is None
    message = str(caught.value)
    assert "secret" not in message, "a token leaked into the error"
    assert "disk trouble" in message


def test_closed_store_raises_state_error(open_store: OpenStore) -> None:
    """Using a store after close fails with tokend's own error."""
    closed = open_store()
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

    written: list[Written] = []

    def work(name: TokenName) -> None:
        claim = claimed(store, name, owner=f"thread-{name.user}")
        for i in range(20):
            written.append(store.commit(name, make_token(i), generation=i, issued_at=NOW + i,
                                        now=NOW + i))
            written.append(fail(store, claim.lease, i + 1, error="x", next_attempt_at=None))

    threads = [threading.Thread(target=work, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert written == [Written.DONE] * 8 * 20 * 2
    assert [record.consecutive_failures for record in store.all()] == [1] * 8
    assert [record.generation for record in store.all()] == [20] * 8


def test_reading_100k_tokens_returns_every_record(store: StateStore) -> None:
    """`tokend status` over a very large deployment sees every token (speed: bench/)."""
    token = make_token()
    store.save_tokens([(TokenName("app", f"u{i:06d}", "read"), token) for i in range(100_000)],
                      now=NOW)
    records = store.all()
    assert len(records) == 100_000
    assert len({record.name for record in records}) == 100_000


def test_an_output_problem_shows_failing_and_clearing_it_restores_ok(store: StateStore) -> None:
    """An output problem shows as failing with its message, and clears without a refresh."""
    store.save_token(NAME, make_token(1), now=NOW)
    claim = claimed(store)
    problem = "/run/x: Read-only file system"
    assert store.set_output_problem(claim.lease, error=problem) is Written.DONE
    failing = store.get(NAME)
    assert failing is not None
    assert failing.output_error == problem
    assert failing.shown_state(LIFETIME, NOW + 10) == "failing"
    assert (failing.state, failing.last_error, failing.consecutive_failures) == (
        TokenState.OK, None, 0)
    assert store.set_output_problem(claim.lease, error=None) is Written.DONE
    healed = store.get(NAME)
    assert healed is not None and healed.token == make_token(1)
    assert (healed.state, healed.output_error) == (TokenState.OK, None)
    assert healed.shown_state(LIFETIME, NOW + 10) == "ok"


def test_a_problem_of_an_unauthorized_token_changes_nothing(store: StateStore) -> None:
    """Only a stored token can have an output problem; a never-authorized one stays absent."""
    claim = claimed(store)
    store.set_output_problem(claim.lease, error="x")
    assert store.get(NAME) is None


def test_a_dead_holder_no_longer_blocks_a_claim(open_store: OpenStore) -> None:
    """A SIGKILLed daemon's lease is taken over at once when its death is known."""
    first, second = open_store(), open_store()
    asked: list[str] = []

    def dead(owner: str) -> bool:
        asked.append(owner)
        return True

    try:
        old = claimed(first, owner="dead-one")
        assert second.claim(NAME, owner="next", lease=60.0) is None
        taken = second.claim(NAME, owner="next", lease=60.0, holder_is_dead=dead)
        assert taken is not None and taken.lease.epoch > old.lease.epoch
        assert asked == ["dead-one"]
        assert fail(first, old.lease, old.generation) is Written.STALE
    finally:
        first.close()
        second.close()


def test_leases_leave_the_store_fully_durable(sqlite_store: SqliteStateStore) -> None:
    """Claims skip the fsync, but token commits after them are synchronous=FULL again."""
    store = sqlite_store
    claim = claimed(store, owner="me", lease=5.0)
    assert store.set_output_problem(claim.lease, error=None) is Written.DONE
    assert store.release(claim.lease) is Written.DONE
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


# --- generations: every token write is a compare-and-swap ---------------------------------


def test_commit_bumps_the_generation(store: StateStore) -> None:
    """A committed refresh is stored, healthy, and one generation further."""
    store.save_token(NAME, make_token(1), now=NOW)
    assert store.commit(NAME, make_token(2), generation=1, issued_at=NOW + 10,
                        now=NOW + 11) is Written.DONE
    record = store.get(NAME)
    assert record is not None
    assert record.token == make_token(2), "token differs"
    assert (record.generation, record.state, record.issued_at, record.last_refresh_at) == (
        2, TokenState.OK, NOW + 10, NOW + 11)


def test_commit_keeps_the_issue_time_in_whole_seconds(store: StateStore) -> None:
    """Rounded down, so every expiry a consumer sees is the same second and never late."""
    assert store.commit(NAME, make_token(1), generation=0, issued_at=NOW + 0.9,
                        now=NOW + 1) is Written.DONE
    record = store.get(NAME)
    assert record is not None and (record.issued_at, record.expires_at) == (NOW, NOW + 3600)


def test_a_commit_with_a_stale_generation_changes_nothing(store: StateStore) -> None:
    """A writer that lost the race is told so, and the winner's token stays."""
    store.save_token(NAME, make_token(1), now=NOW)
    assert store.commit(NAME, make_token(2), generation=1, issued_at=NOW, now=NOW) is Written.DONE
    before = store.get(NAME)
    assert store.commit(NAME, make_token(3), generation=1, issued_at=NOW + 5,
                        now=NOW + 5) is Written.STALE
    assert store.get(NAME) == before


def test_commit_with_generation_0_inserts_a_new_token(store: StateStore) -> None:
    """The first authorization of a token creates its record, at generation 1."""
    assert store.commit(NAME, make_token(1), generation=0, issued_at=NOW, now=NOW + 1) is (
        Written.DONE)
    record = store.get(NAME)
    assert record is not None
    assert record.token == make_token(1), "token differs"
    assert (record.generation, record.state, record.issued_at) == (1, TokenState.OK, NOW)
    assert store.commit(NAME, make_token(2), generation=0, issued_at=NOW, now=NOW) is (
        Written.STALE), "a second first authorization overwrote the first"


def test_a_seeding_write_bumps_the_generation_too(store: StateStore) -> None:
    """Even the unfenced seeding write moves the generation, so a racing commit is refused."""
    store.save_token(NAME, make_token(1), now=NOW)
    store.save_token(NAME, make_token(2), now=NOW)
    record = store.get(NAME)
    assert record is not None and record.generation == 2
    assert store.commit(NAME, make_token(3), generation=1, issued_at=NOW, now=NOW) is (
        Written.STALE)


def test_a_commit_after_a_revoke_needs_the_post_delete_generation(store: StateStore) -> None:
    """A refresh answer that arrives after `tokend revoke` cannot bring the token back."""
    store.save_token(NAME, make_token(1), now=NOW)
    claim = claimed(store)
    assert store.delete_token(claim.lease, generation=1) is Written.DONE
    for stale in (0, 1):
        assert store.commit(NAME, make_token(2), generation=stale, issued_at=NOW,
                            now=NOW) is Written.STALE
    record = store.get(NAME)
    assert record is not None and (record.token, record.generation) == (None, 2)
    assert store.commit(NAME, make_token(3), generation=2, issued_at=NOW, now=NOW) is (
        Written.DONE)
    record = store.get(NAME)
    assert record is not None and (record.token, record.generation) == (make_token(3), 3)


# --- leases: on the store's own clock, with an epoch ----------------------------------------


def test_a_claim_carries_the_record_and_its_generation(store: StateStore) -> None:
    """The claimant gets the record as it stood when its lease began, and whose lease it is."""
    store.save_token(NAME, make_token(1), now=NOW)
    claim = claimed(store, owner="me", lease=42.0)
    assert claim.record == store.get(NAME)
    assert claim.generation == 1
    assert (claim.lease.name, claim.lease.owner, claim.lease.valid_for) == (NAME, "me", 42.0)
    fresh = claimed(store, OTHER)
    assert (fresh.record, fresh.generation) == (None, 0)


def test_every_claim_gets_a_larger_epoch(timed: StateStore, clock: LeaseClock) -> None:
    """Renewed, released, or taken over: each new lease outranks every earlier one."""
    epochs = [claimed(timed, owner="a").lease.epoch, claimed(timed, owner="a").lease.epoch]
    released = claimed(timed, owner="a")
    epochs.append(released.lease.epoch)
    assert timed.release(released.lease) is Written.DONE
    epochs.append(claimed(timed, owner="b").lease.epoch)
    clock.now += 61
    epochs.append(claimed(timed, owner="c").lease.epoch)
    assert epochs == sorted(set(epochs)), f"epochs did not grow: {epochs}"


def test_a_second_owner_is_refused_while_the_lease_lives(
    timed: StateStore, clock: LeaseClock
) -> None:
    """Up to the last instant of its lease, the holder keeps the token to itself."""
    claim = claimed(timed, owner="a")
    clock.now += 59.999
    assert timed.claim(NAME, owner="b", lease=60) is None
    assert timed.set_output_problem(claim.lease, error=None) is Written.DONE


def test_a_released_token_is_free_at_once(timed: StateStore) -> None:
    """Releasing hands the token to the next claimant without waiting for the lease to end."""
    claim = claimed(timed, owner="a", lease=3600)
    assert timed.release(claim.lease) is Written.DONE
    taken = claimed(timed, owner="b")
    assert taken.lease.epoch > claim.lease.epoch


def test_a_lease_of_another_boot_is_over(state_dir: Path, clock: LeaseClock) -> None:
    """After a reboot the boot clock starts again: leases of the boot before have ended."""
    before = SqliteStateStore(state_dir, lease_clock=clock, clock_id="boot-1")
    after = SqliteStateStore(state_dir, lease_clock=LeaseClock(5.0), clock_id="boot-2")
    try:
        old = claimed(before, owner="a", lease=3600)
        new = after.claim(NAME, owner="b", lease=60)
        assert new is not None and new.lease.epoch > old.lease.epoch
        assert after.claim(NAME, owner="c", lease=60) is None, "the new boot's lease is held"
    finally:
        before.close()
        after.close()


@pytest.mark.parametrize("jump", [7 * 86400.0, -7 * 86400.0], ids=["forward", "backward"])
def test_a_wall_clock_jump_moves_no_lease(
    store: StateStore, monkeypatch: pytest.MonkeyPatch, jump: float
) -> None:
    """`date -s` or an NTP step neither ends a lease early nor lets it outlive its time."""
    claim = claimed(store, owner="a")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + jump)
    assert store.claim(NAME, owner="b", lease=60) is None
    assert store.set_output_problem(claim.lease, error=None) is Written.DONE
    assert store.release(claim.lease) is Written.DONE


def test_two_connections_agree_on_leases_and_epochs(open_store: OpenStore,
                                                   clock: LeaseClock) -> None:
    """Two store objects on one store see one lease table: the same holder, the same epochs."""
    first, second = open_store(clock=clock), open_store(clock=clock)
    try:
        first.save_token(NAME, make_token(), now=NOW)
        held = claimed(first, owner="a")
        assert second.claim(NAME, owner="b", lease=60) is None
        assert second.release(held.lease) is Written.DONE
        taken = claimed(second, owner="b")
        assert taken.lease.epoch == held.lease.epoch + 1
        assert taken.record == first.get(NAME)
        assert fail(first, held.lease, held.generation) is Written.STALE
        assert fail(first, taken.lease, taken.generation) is Written.DONE
    finally:
        first.close()
        second.close()


# --- fencing: an old lease cannot undo its successor's work ----------------------------------

FencedWrite = Callable[[StateStore, Lease, int], Written]
FENCED: dict[str, FencedWrite] = {
    "record_failure": fail,
    "set_output_problem": lambda store, lease, generation: store.set_output_problem(
        lease, error="/run/x: Read-only file system"),
    "delete_token": lambda store, lease, generation: store.delete_token(
        lease, generation=generation),
    "record_published": lambda store, lease, generation: store.record_published(
        [PublishedFiles(lease, ("/run/x.token",), NOW)])[0],
    "release": lambda store, lease, generation: store.release(lease),
}


@pytest.mark.parametrize("successor", ["b", "a"], ids=["other-owner", "same-owner"])
@pytest.mark.parametrize("write", sorted(FENCED))
def test_a_write_under_an_old_epoch_changes_nothing(
    timed: StateStore, clock: LeaseClock, write: str, successor: str
) -> None:
    """A holder whose lease ran out and was taken over is refused, and the successor keeps it,
    even when the successor has the same owner id (the same daemon's next refresh)."""
    timed.save_token(NAME, make_token(), now=NOW)
    old = claimed(timed, owner="a")
    clock.now += 61
    claimed(timed, owner=successor)
    before = timed.get(NAME)
    assert FENCED[write](timed, old.lease, old.generation) is Written.STALE
    assert timed.get(NAME) == before
    assert timed.claim(NAME, owner="c", lease=60) is None, "the successor's lease was ended"


@pytest.mark.parametrize("write", sorted(set(FENCED) - {"release"}))
def test_an_expired_lease_writes_nothing_even_before_a_takeover(
    timed: StateStore, clock: LeaseClock, write: str
) -> None:
    """Once its lease has ended, a holder's failure, problem or delete is refused at once."""
    timed.save_token(NAME, make_token(), now=NOW)
    old = claimed(timed, owner="a")
    clock.now += 60
    before = timed.get(NAME)
    assert FENCED[write](timed, old.lease, old.generation) is Written.STALE
    assert timed.get(NAME) == before


def test_record_failure_with_a_stale_generation_is_refused(store: StateStore) -> None:
    """An error about a refresh token that has since been replaced never marks the new one."""
    store.save_token(NAME, make_token(1), now=NOW)
    claim = claimed(store)
    assert store.commit(NAME, make_token(2), generation=1, issued_at=NOW, now=NOW) is (
        Written.DONE)
    before = store.get(NAME)
    assert fail(store, claim.lease, claim.generation, state=TokenState.NEEDS_AUTHORIZATION,
                error="invalid_grant", next_attempt_at=None) is Written.STALE
    assert store.get(NAME) == before


def test_commit_lands_after_the_lease_ran_out(timed: StateStore, clock: LeaseClock) -> None:
    """The server's answer holds the only live refresh token: a late holder still stores it."""
    timed.save_token(NAME, make_token(1), now=NOW)
    late = claimed(timed, owner="a")
    clock.now += 61
    claimed(timed, owner="b")
    assert timed.commit(NAME, make_token(2), generation=late.generation, issued_at=NOW + 1,
                        now=NOW + 2) is Written.DONE
    record = timed.get(NAME)
    assert record is not None
    assert (record.token, record.generation) == (make_token(2), 2)


def test_commit_is_refused_when_another_commit_came_first(
    timed: StateStore, clock: LeaseClock
) -> None:
    """Of two holders that read the same generation, only the first commit lands."""
    timed.save_token(NAME, make_token(1), now=NOW)
    late = claimed(timed, owner="a")
    clock.now += 61
    successor = claimed(timed, owner="b")
    assert timed.commit(NAME, make_token(2), generation=successor.generation, issued_at=NOW,
                        now=NOW) is Written.DONE
    assert timed.commit(NAME, make_token(3), generation=late.generation, issued_at=NOW,
                        now=NOW) is Written.STALE
    record = timed.get(NAME)
    assert record is not None and record.token == make_token(2), "the second commit landed"


def test_a_stalled_holder_and_its_successor_keep_the_live_refresh_token(
    timed: StateStore, clock: LeaseClock
) -> None:
    """The partition story: the stalled holder's commit lands, its failure record and release
    are refused, and the successor's invalid_grant (it sent the dead token) changes nothing."""
    timed.save_token(NAME, make_token(1), now=NOW)
    stalled = claimed(timed, owner="a")
    clock.now += 61
    successor = claimed(timed, owner="b")
    assert timed.commit(NAME, make_token(2), generation=stalled.generation, issued_at=NOW + 1,
                        now=NOW + 2) is Written.DONE
    assert fail(timed, stalled.lease, stalled.generation) is Written.STALE
    assert timed.release(stalled.lease) is Written.STALE
    assert timed.commit(NAME, make_token(3), generation=successor.generation, issued_at=NOW,
                        now=NOW) is Written.STALE
    assert fail(timed, successor.lease, successor.generation, error="invalid_grant",
                state=TokenState.NEEDS_AUTHORIZATION, next_attempt_at=None) is Written.STALE
    record = timed.get(NAME)
    assert record is not None
    assert (record.token, record.state, record.last_error) == (make_token(2), TokenState.OK, None)


# --- output health is apart from token health -------------------------------------------------


def test_an_output_problem_leaves_the_token_health_alone(store: StateStore) -> None:
    """Marking outputs broken changes only output_error: state, error, backoff all stay."""
    store.save_token(NAME, make_token(), now=NOW)
    claim = claimed(store)
    assert fail(store, claim.lease, claim.generation) is Written.DONE
    before = store.get(NAME)
    assert before is not None
    assert store.set_output_problem(claim.lease, error="/run/x: gone") is Written.DONE
    assert store.get(NAME) == dataclasses.replace(before, output_error="/run/x: gone")


def test_an_output_problem_never_hides_needs_authorization(store: StateStore) -> None:
    """A token the server refused keeps saying so through an output problem and its repair."""
    store.save_token(NAME, make_token(), now=NOW)
    claim = claimed(store)
    assert fail(store, claim.lease, claim.generation, state=TokenState.NEEDS_AUTHORIZATION,
                error="invalid_grant", next_attempt_at=None) is Written.DONE
    for problem in ("/run/x: Read-only file system", None):
        assert store.set_output_problem(claim.lease, error=problem) is Written.DONE
        record = store.get(NAME)
        assert record is not None
        assert (record.state, record.last_error, record.output_error) == (
            TokenState.NEEDS_AUTHORIZATION, "invalid_grant", problem)
        assert record.shown_state(LIFETIME, NOW + 10) == "needs_authorization"


def shown(
    state: TokenState, *, output_error: str | None = None, with_token: bool = True,
    created_at: int = int(NOW),
) -> TokenRecord:
    token = Token("a", "Bearer", 3600, "r", "read", created_at)
    return TokenRecord(
        name=NAME, token=token if with_token else None, issued_at=NOW if with_token else None,
        state=state, last_attempt_at=None, last_refresh_at=None, last_error=None,
        consecutive_failures=0, next_attempt_at=None, generation=1, output_error=output_error,
    )


OK, FAILING, REFUSED = TokenState.OK, TokenState.FAILING, TokenState.NEEDS_AUTHORIZATION


@pytest.mark.parametrize(
    ("record", "lifetime", "later", "expected"),
    [
        (shown(OK), LIFETIME, 10, "ok"),
        (shown(OK, output_error="x"), LIFETIME, 10, "failing"),
        (shown(FAILING, output_error="x"), LIFETIME, 10, "failing"),
        (shown(REFUSED, output_error="x"), LIFETIME, 10, "needs_authorization"),
        (shown(REFUSED, with_token=False), LIFETIME, 10, "needs_authorization"),
        (shown(TokenState.NOT_AUTHORIZED, with_token=False, output_error="x"), LIFETIME, 10,
         "not_authorized"),
        (shown(OK, with_token=False), LIFETIME, 10, "not_authorized"),
        (shown(OK), LIFETIME, 3600, "expired"),
        (shown(FAILING), LIFETIME, 3600, "expired"),
        (shown(OK, output_error="x"), LIFETIME, 3600, "expired"),
        (shown(REFUSED), LIFETIME, 3600, "needs_authorization"),
        (shown(OK), 60.0, 61, "expired"),
        (shown(OK, created_at=int(NOW) - 3000), LIFETIME, 1000, "ok"),
        (shown(OK, created_at=int(NOW) + 3000), LIFETIME, 3600, "expired"),
    ],
    ids=["ok", "ok-outputs-broken", "failing-outputs-broken", "refused-outputs-broken",
         "refused-no-token", "revoked-outputs-broken", "no-token", "access-expired",
         "failing-expired", "outputs-broken-and-expired", "refused-expired",
         "refresh-token-expired", "server-clock-behind", "server-clock-ahead"],
)
def test_shown_state_is_the_one_rule(
    record: TokenRecord, lifetime: float, later: float, expected: str
) -> None:
    """What status, metrics and /healthz call a token: output trouble shows as failing only on
    an ok token, a lapsed ok or failing token is expired, lapse counts on this host's clock."""
    assert record.shown_state(lifetime, NOW + later) == expected


def test_expiry_counts_from_issued_at_on_this_host() -> None:
    """Access and refresh token expiry count from when this host sent the request."""
    record = shown(OK, created_at=int(NOW) - 3000)
    assert (record.expires_at, record.refresh_token_expires_at(LIFETIME)) == (
        NOW + 3600, NOW + LIFETIME)
    revoked = shown(TokenState.NOT_AUTHORIZED, with_token=False)
    assert (revoked.expires_at, revoked.refresh_token_expires_at(LIFETIME)) == (None, None)


# --- claim_many ---------------------------------------------------------------------------------


def test_claim_many_claims_the_free_tokens_and_leaves_busy_ones_out(store: StateStore) -> None:
    """A rescan claims every free token in one call; one held elsewhere is left out, not awaited."""
    third = TokenName("payroll", "carol", "read")
    store.save_tokens([(NAME, make_token(1)), (OTHER, make_token(2))], now=NOW)
    busy = claimed(store, OTHER, owner="elsewhere")
    claims = store.claim_many([NAME, OTHER, third], owner="me", lease=60)
    assert [(claim.lease.name, claim.lease.owner) for claim in claims] == [
        (NAME, "me"), (third, "me")]
    assert [claim.record for claim in claims] == [store.get(NAME), None]
    assert store.claim(NAME, owner="elsewhere", lease=60) is None, "a batch lease is not held"
    assert store.set_output_problem(busy.lease, error=None) is Written.DONE
    assert store.claim_many([], owner="me", lease=60) == []


# --- migration from schema version 1 ------------------------------------------------------------

V1_SCHEMA = (
    """CREATE TABLE tokens (app TEXT NOT NULL, user TEXT NOT NULL, scope TEXT NOT NULL,
        access_token TEXT, token_type TEXT, expires_in INTEGER, refresh_token TEXT,
        granted_scope TEXT, created_at INTEGER, refresh_token_issued_at REAL,
        state TEXT NOT NULL, last_attempt_at REAL, last_refresh_at REAL, last_error TEXT,
        consecutive_failures INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL,
        PRIMARY KEY (app, user, scope)) WITHOUT ROWID""",
    """CREATE TABLE leases (app TEXT NOT NULL, user TEXT NOT NULL, scope TEXT NOT NULL,
        owner TEXT NOT NULL, expires_at REAL NOT NULL,
        PRIMARY KEY (app, user, scope)) WITHOUT ROWID""",
)
V1_OK = TokenName("payroll", "alice", "read")
V1_REFUSED = TokenName("payroll", "bob", "read")
V1_OUTPUTS = TokenName("payroll", "carol", "read")
V1_NEVER = TokenName("payroll", "dave", "read")
V1_ISSUED = NOW + 7.0
V1_SKEW = 3000
"""The server's created_at is 50 minutes behind the host's clock in the version-1 rows."""


def v1_token(user: str) -> Token:
    return Token(f"access-{user}", "Bearer", 3600, f"refresh-{user}", "read",
                 int(V1_ISSUED) - V1_SKEW)


@pytest.fixture
def v1_store(state_dir: Path) -> Path:
    """A version-1 store file as tokend 1 left it: four tokens and a lease."""
    state_dir.mkdir(mode=0o700)
    raw = sqlite3.connect(state_dir / "tokend.db")
    for statement in V1_SCHEMA:
        raw.execute(statement)
    rows = [
        (V1_OK, "ok", None, 0),
        (V1_REFUSED, "needs_authorization", "invalid_grant: the refresh token is revoked", 1),
        (V1_OUTPUTS, "failing", "outputs: /run/x: Read-only file system", 0),
    ]
    for name, state, error, failures in rows:
        token = v1_token(name.user)
        raw.execute(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name.app, name.user, name.scope, token.access_token, token.token_type,
             token.expires_in, token.refresh_token, token.scope, token.created_at, V1_ISSUED,
             state, V1_ISSUED, V1_ISSUED, error, failures, None),
        )
    raw.execute("INSERT INTO tokens (app, user, scope, state, last_attempt_at, last_error, "
                "consecutive_failures) VALUES (?, ?, ?, 'needs_authorization', ?, "
                "'invalid_client', 1)", (V1_NEVER.app, V1_NEVER.user, V1_NEVER.scope, NOW))
    raw.execute("INSERT INTO leases VALUES (?, ?, ?, 'old-daemon', ?)",
                (V1_OK.app, V1_OK.user, V1_OK.scope, time.time() + 3600))
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    return state_dir


def migrated(state_dir: Path) -> dict[TokenName, TokenRecord]:
    opened = SqliteStateStore(state_dir)
    try:
        return {record.name: record for record in opened.all()}
    finally:
        opened.close()


def test_a_version_1_store_is_upgraded_in_place_without_loss(v1_store: Path) -> None:
    """An upgrade keeps every token, at generation 1, and records the schema version once."""
    records = migrated(v1_store)
    assert SCHEMA_VERSION == 3
    with sqlite3.connect(v1_store / "tokend.db") as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 3
    assert sorted(records) == [V1_OK, V1_REFUSED, V1_OUTPUTS, V1_NEVER]
    for name in (V1_OK, V1_REFUSED, V1_OUTPUTS):
        assert records[name].token == v1_token(name.user), f"{name}: token differs"
        assert records[name].generation == 1
    assert (records[V1_NEVER].token, records[V1_NEVER].generation) == (None, 0)
    assert migrated(v1_store) == records, "opening again changed the store"


def test_migration_takes_issued_at_from_the_old_column(v1_store: Path) -> None:
    """The old refresh_token_issued_at was this host's clock: expiry now counts from it."""
    record = migrated(v1_store)[V1_OK]
    assert (record.issued_at, record.expires_at, record.state) == (
        V1_ISSUED, V1_ISSUED + 3600, TokenState.OK)
    assert (record.last_refresh_at, record.last_error, record.output_error) == (
        V1_ISSUED, None, None)


def test_migration_moves_an_output_problem_to_output_health(v1_store: Path) -> None:
    """Version 1 marked broken outputs as a failing token; now the token is ok, its files not."""
    record = migrated(v1_store)[V1_OUTPUTS]
    assert (record.state, record.last_error, record.output_error) == (
        TokenState.OK, None, "/run/x: Read-only file system")
    assert record.shown_state(LIFETIME, V1_ISSUED + 10) == "failing"


def test_migration_keeps_needs_authorization_and_its_error(v1_store: Path) -> None:
    """A token the server refused still asks for a person after the upgrade, with its reason."""
    records = migrated(v1_store)
    refused, never = records[V1_REFUSED], records[V1_NEVER]
    assert (refused.state, refused.last_error, refused.consecutive_failures,
            refused.output_error) == (
        TokenState.NEEDS_AUTHORIZATION, "invalid_grant: the refresh token is revoked", 1, None)
    assert (never.state, never.last_error) == (TokenState.NEEDS_AUTHORIZATION, "invalid_client")


def test_migration_drops_the_old_wall_clock_leases(v1_store: Path) -> None:
    """Version-1 leases counted wall-clock seconds; after the upgrade nobody holds a token."""
    opened = SqliteStateStore(v1_store)
    try:
        claim = opened.claim(V1_OK, owner="new-daemon", lease=60)
        assert claim is not None and claim.lease.epoch == 1
        assert claim.record is not None and claim.record.generation == 1
    finally:
        opened.close()


def test_tokend_token_reads_a_migrated_store(v1_store: Path) -> None:
    """`tokend token` reads the upgraded store, its expiry counted from issued_at."""
    migrated(v1_store)
    # created_at + expires_in is already past here; issued_at + expires_in is not.
    assert current_access_token(v1_store, "payroll/alice/read", now=V1_ISSUED + 1000) == (
        "access-alice")
    with pytest.raises(NoValidTokenError, match="expired at"):
        current_access_token(v1_store, "payroll/alice/read", now=V1_ISSUED + 3600)


# --- which files hold a token, and whether it is still configured ------------------------------


def test_the_files_a_token_was_written_to_are_remembered_across_a_reopen(
    open_store: OpenStore,
) -> None:
    """The publish path's record of files and of leaving the config survives a restart."""
    store = open_store()
    store.save_token(NAME, make_token(), now=NOW)
    claim = claimed(store)
    marks = [PublishedFiles(claim.lease, ("/run/a.env", "/run/a.token"), NOW + 5)]
    assert store.record_published(marks) == [Written.DONE]
    generation = claim.generation
    store.close()
    reopened = open_store()
    try:
        record = reopened.get(NAME)
    finally:
        reopened.close()
    assert record is not None and record.token == make_token()
    assert (record.outputs, record.unconfigured_at) == (("/run/a.env", "/run/a.token"), NOW + 5)
    assert (record.state, record.generation) == (TokenState.OK, generation), "a token write"


def test_a_client_rejected_token_shows_so_even_after_it_lapsed(store: StateStore) -> None:
    """Rejected credentials are what must be fixed: they win over expired, like a refusal."""
    store.save_token(NAME, make_token(), now=NOW)
    claim = claimed(store)
    assert fail(store, claim.lease, claim.generation, state=TokenState.CLIENT_REJECTED) is (
        Written.DONE)
    record = store.get(NAME)
    assert record is not None and record.token == make_token()
    assert record.shown_state(LIFETIME, NOW + 10) == "client_rejected"
    assert record.shown_state(LIFETIME, NOW + 2 * LIFETIME) == "client_rejected"


def test_tokend_token_reads_a_version_2_store_not_yet_migrated(v1_store: Path) -> None:
    """After an upgrade, ``tokend token`` (read-only, it never migrates) works before the
    daemon restarts: a version-2 store has no unconfigured tokens to refuse."""
    raw = sqlite3.connect(v1_store / "tokend.db")
    for statement in MIGRATIONS[1]:
        raw.execute(statement)
    raw.execute("PRAGMA user_version = 2")
    raw.commit()
    raw.close()
    token = current_access_token(v1_store, str(V1_OK), now=V1_ISSUED + 10)
    assert token == v1_token(V1_OK.user).access_token


def test_tokend_token_refuses_a_token_removed_from_the_config(sqlite_store: SqliteStateStore,
                                                               state_dir: Path) -> None:
    """Nobody refreshes an unconfigured token, so it is not handed out."""
    store = sqlite_store
    store.save_token(NAME, make_token(), now=NOW)
    claim = claimed(store)
    store.record_published([PublishedFiles(claim.lease, (), NOW + 1)])
    with pytest.raises(NoValidTokenError, match="no longer in the config"):
        current_access_token(state_dir, str(NAME), now=NOW + 10)


OPEN_CHILD = """
import sys
from pathlib import Path
from tokend.store.sqlite import SqliteStateStore
SqliteStateStore(Path(sys.argv[1])).close()
"""


def test_processes_creating_the_store_at_once_all_open_it(tmp_path: Path) -> None:
    """Several `tokend authorize` run at once on a new state dir: none fails with "locked"."""
    failures = []
    for trial in range(20):
        state = tmp_path / f"state-{trial}"
        children = [subprocess.Popen([sys.executable, "-c", OPEN_CHILD, str(state)], cwd=ROOT,
                                     stderr=subprocess.PIPE, text=True) for _ in range(6)]
        for child in children:
            _out, err = child.communicate(timeout=60)
            if child.returncode:
                failures.append(err.strip().splitlines()[-1])
    assert failures == []
