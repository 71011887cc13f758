"""``tokend status`` on the host holding a pending record (a refreshed token the store did not
take yet, kept in ``state_dir/pending/``): it says so for that token, and shows no secret."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.e2e import Setup, tokend
from tokend.engine.pending import PendingCommit, PendingCommits
from tokend.model import Token, TokenName
from tokend.sandbox import Sandbox

ACCESS, REFRESH = "pending-access-Xq81Lm", "pending-refresh-Vb27Kp"


def test_status_names_the_token_whose_only_live_refresh_token_is_kept_here(
    tmp_path: Path, hour_sandbox: Sandbox,
) -> None:
    setup = Setup(tmp_path, hour_sandbox, [("alice", "read"), ("bob", "read")]).authorized()
    kept_at = time.time() - 120
    PendingCommits(setup.state_dir).keep(PendingCommit(
        TokenName("app", "alice", "read"),
        Token(ACCESS, "Bearer", 3600, REFRESH, "read", int(kept_at)), 1, kept_at))
    text = tokend("status", config=setup.config)
    shown = tokend("status", "--json", config=setup.config)
    leaked = any(secret in out for secret in (ACCESS, REFRESH)
                 for out in (text.stdout, text.stderr, shown.stdout, shown.stderr))
    assert not leaked, "status showed a secret of the pending record"
    assert shown.returncode == text.returncode, shown.stderr
    rows = {row["name"]: row for row in json.loads(shown.stdout)["tokens"]}
    assert rows["app/bob/read"]["pending_since"] is None
    since = rows["app/alice/read"]["pending_since"]
    assert since is not None and since.startswith(time.strftime("%Y-%m-%dT", time.gmtime()))
    notes = notes_below(text.stdout.splitlines())
    assert any("pending" in note and "2m ago" in note for note in notes["app/alice/read"]), \
        text.stdout
    assert not any("pending" in note for note in notes["app/bob/read"]), text.stdout


def notes_below(lines: list[str]) -> dict[str, list[str]]:
    """The indented lines under each token's row of the status table."""
    notes: dict[str, list[str]] = {}
    row = None
    for line in lines:
        if line.startswith("app/"):
            row = line.split()[0]
            notes[row] = []
        elif row is not None and line.startswith("  "):
            notes[row].append(line)
        else:
            row = None
    return notes
