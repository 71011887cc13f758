"""Several "hosts" on one PostgreSQL store: each a config with its own state_dir and output
folder, all naming one database, for the end-to-end tests of the shared store."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from tests.e2e import CLIENT_ID, Setup
from tests.postgres import PostgresServer
from tokend.model import Token, TokenName
from tokend.sandbox import Sandbox
from tokend.store.postgres import PostgresStateStore


def shared_hosts(root: Path, sandbox: Sandbox, server: PostgresServer, url: str,
                 tokens: Sequence[tuple[str, str]], *, count: int) -> list[Setup]:
    """``count`` hosts' configs (written) on the database at ``url``."""
    password_file = root / "db.password"
    password_file.write_text(server.password + "\n")
    password_file.chmod(0o600)
    hosts = []
    for index in range(count):
        folder = root / f"host-{index}"
        folder.mkdir()
        setup = Setup(folder, sandbox, tokens, top_level_yaml=(
            f"store: {url}\nstore_password_file: {password_file}\n"))
        setup.write()
        hosts.append(setup)
    return hosts


def seed(server: PostgresServer, url: str, sandbox: Sandbox,
         tokens: Sequence[tuple[str, str]]) -> None:
    """Store a fresh token for each of ``tokens`` as if each had been authorized."""
    store = PostgresStateStore(url, password=server.password)
    try:
        items = []
        for user, scope in tokens:
            body = sandbox.issue_token(client_id=CLIENT_ID, user=user, scope=scope)
            items.append((TokenName("app", user, scope), Token(
                access_token=body["access_token"], token_type=body["token_type"],
                expires_in=body["expires_in"], refresh_token=body["refresh_token"],
                scope=body["scope"], created_at=body["created_at"])))
        store.save_tokens(items, now=time.time())
    finally:
        store.close()


def output(setup: Setup, user: str, scope: str) -> str | None:
    """The bare token output of ``app/USER/SCOPE`` on ``setup``'s host, ``None`` if absent."""
    try:
        return setup.output(user, scope, "token").read_text()
    except FileNotFoundError:
        return None
