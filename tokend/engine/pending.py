"""New tokens the server gave that the store could not take, kept on this host until it can.

The server rotates on every refresh: once it answered, the new refresh token is the only
live one. If the commit then fails (the shared database unreachable at that instant),
dropping the answer would lose the token's lineage. So the answer is kept in a pending
record in the state directory (0600, fsynced, one file per token), and the commit is
retried, under the token's lease, before this daemon sends anything for that token
again. A record is discarded once it is committed, or once the store's generation has
moved past the one it was read at (another host refreshed the token meanwhile; its
lineage is the stored one).

Outputs are never written from a pending record: a consumer must not start using a token
whose refresh token lives on one disk only. The outputs keep the last committed token
until the store takes the pending one (or until that token expires, which is what an
outage of the store longer than a token's life costs).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tokend.engine.atomic import write_atomic
from tokend.errors import StateError
from tokend.model import Token, TokenName
from tokend.store.interface import StateStore, Written
from tokend.store.lock import make_private_dir

FOLDER = "pending"


@dataclass(frozen=True, slots=True)
class PendingCommit:
    """A commit that did not land: the token, and the generation it must replace."""

    name: TokenName
    token: Token
    generation: int
    issued_at: float


class PendingCommits:
    """The pending records of one state directory (read once at start, then kept in memory)."""

    def __init__(self, state_dir: Path) -> None:
        self._folder = state_dir / FOLDER
        self._held = _read(self._folder)

    def get(self, name: TokenName) -> PendingCommit | None:
        return self._held.get(name)

    def names(self) -> list[TokenName]:
        return list(self._held)

    def keep(self, kept: PendingCommit) -> Path:
        """Write ``kept`` durably (0600, fsynced file and folder) before anything else."""
        make_private_dir(self._folder)
        path = self._path(kept.name)
        write_atomic(path, _dump(kept), mode=0o600)
        self._held[kept.name] = kept
        return path

    def settle(self, store: StateStore, name: TokenName, *, now: float) -> Written | None:
        """Commit ``name``'s pending record; ``None`` when there is none. ``DONE``: it landed;
        ``STALE``: the store moved past it. Either way the record is gone; a store error
        leaves it for the next try."""
        kept = self._held.get(name)
        if kept is None:
            return None
        written = store.commit(name, kept.token, generation=kept.generation,
                               issued_at=kept.issued_at, now=now)
        self._path(name).unlink(missing_ok=True)
        del self._held[name]
        return written

    def _path(self, name: TokenName) -> Path:
        digest = hashlib.sha256(str(name).encode()).hexdigest()[:24]
        return self._folder / f"{digest}.json"


def pending_since(state_dir: Path) -> dict[TokenName, float]:
    """When the token of each pending record in ``state_dir`` was asked for, for ``tokend
    status``: until it is committed, this host holds the only live refresh token. Read-only;
    no secret leaves this module."""
    return {name: kept.issued_at for name, kept in _read(state_dir / FOLDER).items()}


def _read(folder: Path) -> dict[TokenName, PendingCommit]:
    held = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            kept = _load(path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateError(f"pending record {path} cannot be read: {exc}") from None
        held[kept.name] = kept
    return held


def _dump(kept: PendingCommit) -> bytes:
    return json.dumps({"app": kept.name.app, "user": kept.name.user, "scope": kept.name.scope,
                       "generation": kept.generation, "issued_at": kept.issued_at,
                       "token": asdict(kept.token)}).encode()


def _load(raw: bytes) -> PendingCommit:
    data = json.loads(raw)
    return PendingCommit(TokenName(data["app"], data["user"], data["scope"]),
                         Token(**data["token"]), int(data["generation"]),
                         float(data["issued_at"]))
