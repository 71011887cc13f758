"""Configs and authorized tokens for the benchmarks, the way an operator would have them.

Two ways to seed, both with tokens the sandbox really issued, so every token
can be refreshed:

* :func:`seed_over_http` (the refresh burst, and everything in ``--quick``):
  the sandbox approves an authorization request and the code is exchanged
  over HTTP with ``AsyncFactorial.obtain_access_token``, the call
  ``tokend authorize`` makes. About 400 exchanges a second.
* :func:`seed_in_process` (10,000 and 100,000 tokens): the same code is
  exchanged by calling the sandbox's OAuth model directly, under its lock,
  because 100,000 exchanges over HTTP would take minutes and measure nothing.

Either way the tokens are committed with ``SqliteStateStore.save_tokens`` (one
group commit) and each token's output file is written with exactly the content
tokend would write, so a daemon's start finds every output already right:
the runs measure a restart of a running installation, not a first start.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tokend.factorial import AsyncFactorial
from tokend.model import OOB, Token, TokenName
from tokend.sandbox import Sandbox
from tokend.store.sqlite import SqliteStateStore

APP = "bench"
CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-client-secret-4Hq9"  # noqa: S105 -- the sandbox's, known to nothing else
SCOPE = "read"
RATE_LIMIT = "100000/min"
CONCURRENCY = 8


class ShiftedClock:
    """The wall clock moved by ``offset`` seconds: lets the sandbox issue tokens in the past."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


def users(count: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{index:06d}" for index in range(count)]


@dataclass(frozen=True)
class Workspace:
    """One config file, its state dir and its output dir, under ``root``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def out_dir(self) -> Path:
        return self.root / "out"

    def output(self, user: str) -> Path:
        return self.out_dir / f"{user}.token"

    def extra_output(self, user: str) -> Path:
        """The output a reload edit adds to the token it changes."""
        return self.out_dir / f"{user}.edited.token"

    def name(self, user: str) -> TokenName:
        return TokenName(APP, user, SCOPE)

    def render(
        self, base_url: str, names: Sequence[str], tweak: str | None = None,
        formats: Sequence[str] = ("token",),
    ) -> str:
        """The config text: one application, one output per token and format (``USER.FORMAT``,
        the token's own file first); ``tweak`` gets a ``refresh_at`` of its own and a second
        output (what a reload edit changes)."""
        lines = [
            f"state_dir: {self.state_dir}",
            "defaults:",
            f"  concurrency: {CONCURRENCY}",
            f"  rate_limit: {RATE_LIMIT}",
            "applications:",
            f"  {APP}:",
            f"    base_url: {base_url}",
            f"    client_id: {CLIENT_ID}",
            f"    client_secret_file: {self.root / 'client.secret'}",
            f"    concurrency: {CONCURRENCY}",
            "    tokens:",
        ]
        for user in names:
            lines.append(f"      - user: {user}")
            lines.append(f"        scope: {SCOPE}")
            if user == tweak:
                lines.append("        refresh_at: 0.7")
            files = [f"{{path: {self.output(user)}}}"] + [
                f"{{path: {self.out_dir / f'{user}.{fmt}'}, format: {fmt}}}"
                for fmt in formats if fmt != "token"
            ]
            if user == tweak:
                files.append(f"{{path: {self.extra_output(user)}}}")
            lines.append(f"        outputs: [{', '.join(files)}]")
        return "\n".join(lines) + "\n"

    def write_config(
        self, base_url: str, names: Sequence[str], tweak: str | None = None,
        formats: Sequence[str] = ("token",),
    ) -> float:
        """Save by rename, as editors do; return ``time.monotonic()`` right before the rename
        (a daemon may notice the new file before the rename returns to us)."""
        self.root.mkdir(parents=True, exist_ok=True)
        secret = self.root / "client.secret"
        if not secret.exists():
            secret.write_text(CLIENT_SECRET + "\n")
            secret.chmod(0o600)
        temp = self.config.with_suffix(".tmp")
        temp.write_text(self.render(base_url, names, tweak, formats))
        renaming = time.monotonic()
        os.rename(temp, self.config)
        return renaming

    def store(self, names: Sequence[str], tokens: Sequence[Token], *, issued_at: float) -> None:
        """Commit the tokens as tokend's own store would hold them, and write their outputs.

        ``issued_at`` is this host's time the tokens count as issued at: tokend schedules
        from it, not from the server's ``created_at``.
        """
        store = SqliteStateStore(self.state_dir)
        try:
            store.save_tokens(
                [(self.name(user), token) for user, token in zip(names, tokens, strict=True)],
                now=issued_at,
            )
        finally:
            store.close()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for user, token in zip(names, tokens, strict=True):
            path = self.output(user)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, token.access_token.encode())
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)


def start_sandbox(clock: ShiftedClock | None = None, *, lifetime: float = 3600.0) -> Sandbox:
    """The sandbox with its rate limit off, so tokend and not the limit is measured; its
    access tokens live ``lifetime`` seconds."""
    return Sandbox(
        access_token_lifetime=lifetime, rate_limit=None, clients={CLIENT_ID: CLIENT_SECRET},
        clock=clock,
    ).start()


def seed_over_http(sandbox: Sandbox, names: Sequence[str], *, concurrency: int = 16) -> list[Token]:
    """Authorize ``names`` and exchange their codes over HTTP, as ``tokend authorize`` does."""
    codes = [
        sandbox.authorize(client_id=CLIENT_ID, redirect_uri=OOB, scope=SCOPE, user=user)
        for user in names
    ]

    async def exchange_all() -> list[Token]:
        slots = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient() as http:
            client = AsyncFactorial(access_token="", base_url=sandbox.url, client=http)

            async def exchange(code: str) -> Token:
                async with slots:
                    return await client.obtain_access_token(
                        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uri=OOB,
                        authorization_key=code,
                    )

            return list(await asyncio.gather(*(exchange(code) for code in codes)))

    return asyncio.run(exchange_all())


def seed_in_process(sandbox: Sandbox, names: Sequence[str]) -> list[Token]:
    """Have the sandbox issue tokens for ``names`` directly (``Sandbox.issue_token``).

    The same OAuth model as over HTTP, minus the round trip, which would make
    seeding 100,000 tokens take minutes.
    """
    tokens = []
    for user in names:
        body = sandbox.issue_token(client_id=CLIENT_ID, user=user, scope=SCOPE)
        tokens.append(Token(
            access_token=body["access_token"], token_type=body["token_type"],
            expires_in=body["expires_in"], refresh_token=body["refresh_token"],
            scope=body["scope"], created_at=body["created_at"],
        ))
    return tokens


def seed(
    workspace: Workspace, sandbox: Sandbox, count: int, *, over_http: bool, due: bool = False,
    clock: ShiftedClock | None = None,
) -> list[str]:
    """A workspace with ``count`` authorized tokens; with ``due``, all due when tokend starts."""
    names = users(count)
    age = 0.0
    if due:
        if clock is None:
            raise ValueError("seeding due tokens needs the sandbox's clock")
        age = 3600.0  # issued an hour ago: past refresh_at, refresh token still live
        clock.offset = -age
    try:
        tokens = (seed_over_http if over_http else seed_in_process)(sandbox, names)
    finally:
        if clock is not None:
            clock.offset = 0.0
    workspace.write_config(sandbox.url, names)
    # The host's issue time is what makes them due, the server's created_at only agrees.
    workspace.store(names, tokens, issued_at=time.time() - age)
    return names
