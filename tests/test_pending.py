"""Pending records: a new token the store could not take is kept durably on this host, and
settled (committed, or dropped once the store moved past it) on the next try."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.test_state import NAME, NOW, make_token
from tokend.engine.pending import PendingCommit, PendingCommits
from tokend.errors import StateError
from tokend.store.interface import StateStore, Written
from tokend.store.sqlite import SqliteStateStore


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    opened = SqliteStateStore(tmp_path / "state")
    opened.save_token(NAME, make_token(1), now=NOW)
    return opened


def test_a_kept_answer_is_a_private_file_that_a_restart_reads_back(tmp_path: Path) -> None:
    """0600 in a 0700 folder of the state directory, and found again by the next daemon."""
    state = tmp_path / "state"
    path = PendingCommits(state).keep(PendingCommit(NAME, make_token(2), 1, NOW + 1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = PendingCommits(state).get(NAME)
    assert again is not None
    same = again == PendingCommit(NAME, make_token(2), 1, NOW + 1)
    assert same, "the record read back differs"


def test_settling_commits_the_kept_token_and_forgets_it(tmp_path: Path,
                                                        store: StateStore) -> None:
    """The next try stores the answer the failed commit held, then the record is gone."""
    pending = PendingCommits(tmp_path / "state")
    pending.keep(PendingCommit(NAME, make_token(2), 1, NOW + 1))
    assert pending.settle(store, NAME, now=NOW + 2) is Written.DONE
    record = store.get(NAME)
    assert record is not None and record.token == make_token(2)
    assert pending.get(NAME) is None
    assert list((tmp_path / "state" / "pending").iterdir()) == []


def test_a_record_the_store_moved_past_is_dropped(tmp_path: Path, store: StateStore) -> None:
    """Another host refreshed meanwhile: its lineage is the stored one, ours is dropped."""
    pending = PendingCommits(tmp_path / "state")
    pending.keep(PendingCommit(NAME, make_token(2), 1, NOW + 1))
    assert store.commit(NAME, make_token(3), generation=1, issued_at=NOW, now=NOW) is (
        Written.DONE)
    assert pending.settle(store, NAME, now=NOW + 2) is Written.STALE
    record = store.get(NAME)
    assert record is not None and record.token == make_token(3)
    assert PendingCommits(tmp_path / "state").get(NAME) is None


def test_a_store_still_down_keeps_the_record(tmp_path: Path, store: StateStore) -> None:
    """A failing commit leaves the record for the try after."""
    pending = PendingCommits(tmp_path / "state")
    pending.keep(PendingCommit(NAME, make_token(2), 1, NOW + 1))
    store.close()
    with pytest.raises(StateError):
        pending.settle(store, NAME, now=NOW + 2)
    assert PendingCommits(tmp_path / "state").get(NAME) is not None
