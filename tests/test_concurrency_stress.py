"""Concurrency stress (DESIGN §2a): the daemon and every CLI verb acting on the same tokens at once.

A dozen short-lived tokens of three applications rotate against a sandbox that
answers every refresh late (it rotates first, answers 0.3 s later), while other
processes force refreshes, re-authorize, revoke and re-authorize, and the
config is edited and saved by rename. No fault is injected, so nothing may go
wrong at all. CI churns for 15 s; a soak churns for 2 minutes:
``pytest tests/test_concurrency_stress.py --soak``.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e import CLIENT_ID, CLIENT_SECRET, Daemon, StartDaemon, tokend, wait_for
from tokend.model import TokenName
from tokend.sandbox import Sandbox
from tokend.store.sqlite import SqliteStateStore

OOB = "urn:ietf:wg:oauth:2.0:oob"
# Distinctive secrets, one client per application.
APPS = {
    "payroll": (CLIENT_ID, CLIENT_SECRET),
    "crm": ("crm-client", "crm-client-secret-Hq3v8Lm1"),
    "ledger": ("ledger-client", "ledger-client-secret-Pw5c2Ny7"),
}
TOKENS = [
    TokenName("payroll", "alice", "read"), TokenName("payroll", "alice", "write"),
    TokenName("payroll", "bob", "read"), TokenName("payroll", "carol", "read+write"),
    TokenName("crm", "alice", "read"), TokenName("crm", "dave", "read"),
    TokenName("crm", "erin", "write"), TokenName("crm", "frank", "read+write"),
    TokenName("ledger", "bob", "read"), TokenName("ledger", "bob", "write"),
    TokenName("ledger", "grace", "read"), TokenName("ledger", "heidi", "read+write"),
]
# 6 s tokens refreshed at half their life rotate every 2 to 3 s (issue times are whole
# seconds), and the token the daemon leaves behind when it stops still lives over 2.5 s:
# long enough for `tokend token` to print it even on a busy machine.
LIFETIME = 6
ANSWER_DELAY = 0.3
CHURN_SECONDS = 15.0
SOAK_CHURN_SECONDS = 120.0
CLI_TIMEOUT = 120.0  # authorize and revoke may wait out a lease; a hang must still end


@pytest.fixture
def slow_sandbox() -> Iterator[Sandbox]:
    """Three clients, 6 s access tokens, every refresh rotated at once and answered 0.3 s late."""
    with Sandbox(access_token_lifetime=LIFETIME,
                 clients=dict(APPS.values())) as server:
        server.set_answer_delay(ANSWER_DELAY, grant="refresh_token")
        yield server


def _slug(name: TokenName) -> str:
    return f"{name.app}-{name.user}-{name.scope.replace('+', '-')}"


@dataclass
class Fleet:
    """The config of the twelve tokens, saved by rename as an editor saves it."""

    root: Path
    sandbox: Sandbox
    outputs: dict[TokenName, list[tuple[Path, str]]] = field(default_factory=dict)
    """Every token's outputs in the config last saved: (path, format)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def save(self, edit: int, extras: frozenset[TokenName], hook_timeout: int) -> None:
        """Write config number ``edit``: ``extras`` get one more output, named for the edit."""
        with self._lock:
            outputs = {name: self._outputs(name, edit if name in extras else None)
                       for name in TOKENS}
            lines = [
                f"state_dir: {self.state_dir}",
                "defaults:",
                "  refresh_at: 0.5",
                "  rate_limit: 100/s",  # 12 tokens rotating every 2 to 3 s, and the CLI
                "  retry: {initial: 1s, max: 4s}",
                "applications:",
            ]
            for app, (client_id, secret) in APPS.items():
                secret_file = self.root / f"{app}.secret"
                if not secret_file.exists():
                    secret_file.write_text(secret + "\n")
                    secret_file.chmod(0o600)
                lines += [
                    f"  {app}:", f"    base_url: {self.sandbox.url}",
                    f"    client_id: {client_id}", f"    client_secret_file: {secret_file}",
                    f"    hook_timeout: {hook_timeout}s", "    tokens:",
                ]
                for name in (name for name in TOKENS if name.app == app):
                    lines += [f"      - user: {name.user}", f"        scope: {name.scope}",
                              "        outputs:"]
                    for path, fmt in outputs[name]:
                        lines += [f"          - path: {path}", f"            format: {fmt}"]
            temporary = self.root / f".config.yaml.{edit}"
            temporary.write_text("\n".join(lines) + "\n")
            os.replace(temporary, self.config)
            self.outputs = outputs

    def _outputs(self, name: TokenName, extra: int | None) -> list[tuple[Path, str]]:
        out = self.root / "out"
        paths = [(out / f"{_slug(name)}.{fmt}", fmt) for fmt in ("token", "env", "json")]
        if extra is not None:
            paths.append((out / f"{_slug(name)}.extra{extra}.token", "token"))
        return paths


@dataclass
class Churn:
    """Worker threads launching CLI processes against the fleet; what they saw, counted."""

    fleet: Fleet
    stop: threading.Event = field(default_factory=threading.Event)
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    newest: dict[TokenName, str] = field(default_factory=dict)
    """The sandbox user of each token's last successful authorization."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Authorizations of one token are serialized here, so "the newest" is well defined;
    # refreshes, the daemon and the config edits are not held back by them.
    _token_locks: dict[TokenName, threading.Lock] = field(
        default_factory=lambda: {name: threading.Lock() for name in TOKENS})

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n

    def fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)

    def authorize(self, name: TokenName) -> None:
        """``tokend authorize NAME --key=KEY`` with a key issued to a user unique to this call."""
        with self._lock:
            self.counts["authorizations started"] += 1
            user = f"{name.user}#{self.counts['authorizations started']}"
        key = self.fleet.sandbox.authorize(client_id=APPS[name.app][0], redirect_uri=OOB,
                                           scope=name.scope, user=user)
        result = tokend("authorize", str(name), f"--key={key}", config=self.fleet.config,
                        timeout=CLI_TIMEOUT)
        if result.returncode != 0 or f"{name} authorized;" not in result.stdout:
            self.fail(f"authorize {name}: exit {result.returncode}: {result.stdout}"
                      f"{result.stderr}")
            return
        with self._lock:
            self.newest[name] = user
        self.count("authorizations")

    def refresh(self, rng: random.Random) -> None:
        """``tokend refresh --force`` of one to three tokens."""
        names = rng.sample(TOKENS, rng.randint(1, 3))
        result = tokend("refresh", "--force", *map(str, names), config=self.fleet.config,
                        timeout=CLI_TIMEOUT)
        self.count("refresh commands")
        lines = result.stdout.splitlines()
        not_authorized = 0
        for line in lines:
            if ": refreshed; valid until " in line:
                self.count("CLI refreshes")
            elif line.endswith(": skipped; another process is refreshing it right now"):
                self.count("CLI skipped busy")
            elif ": skipped; not authorized (run `tokend authorize " in line:
                not_authorized += 1  # revoked by another worker a moment ago
            else:
                self.fail(f"refresh {names}: unexpected line {line!r}")
        self.count("CLI skipped not authorized", not_authorized)
        # A named token that is not authorized is the one understood failure (exit 1).
        expected = 1 if not_authorized else 0
        if result.returncode != expected or len(lines) != len(names):
            self.fail(f"refresh {names}: exit {result.returncode}: {result.stdout}"
                      f"{result.stderr}")

    def revoke_and_authorize(self, name: TokenName) -> None:
        """``tokend revoke NAME``, then a fresh authorization of it."""
        result = tokend("revoke", str(name), config=self.fleet.config, timeout=CLI_TIMEOUT)
        if result.returncode != 0 or "revoked at the server and locally" not in result.stdout:
            self.fail(f"revoke {name}: exit {result.returncode}: {result.stdout}{result.stderr}")
        else:
            self.count("revokes")
        self.authorize(name)

    def edit(self, rng: random.Random) -> None:
        """Save a new config by rename: other extra outputs, another hook timeout."""
        with self._lock:
            self.counts["edits"] += 1
            edit = self.counts["edits"]
        extras = frozenset(rng.sample(TOKENS, rng.randint(0, 4)))
        self.fleet.save(edit, extras, hook_timeout=rng.choice((20, 30)))

    def with_token(self, rng: random.Random, work: Callable[[TokenName], None]) -> None:
        """Run ``work`` on a random token no other authorization is working on."""
        for name in rng.sample(TOKENS, len(TOKENS)):
            lock = self._token_locks[name]
            if lock.acquire(blocking=False):
                try:
                    work(name)
                finally:
                    lock.release()
                return

    def run(self, role: str, step: Callable[[random.Random], None], seed: int,
            pause: tuple[float, float]) -> threading.Thread:
        """Repeat ``step`` until ``stop``, in a thread; an exception counts as a failure."""
        def loop() -> None:
            rng = random.Random(f"{seed}-{role}")
            try:
                while not self.stop.is_set():
                    step(rng)
                    self.stop.wait(rng.uniform(*pause))
            except Exception:  # noqa: BLE001 -- reported as a failure of the test
                self.fail(f"{role} crashed: {traceback.format_exc()}")

        thread = threading.Thread(target=loop, name=role, daemon=True)
        thread.start()
        return thread


def _refreshes(daemon: Daemon) -> Counter[str]:
    """``token_refreshed`` lines of the daemon per token, from one read of its log."""
    return Counter(str(event.get("token")) for event in daemon.named("token_refreshed"))


def _settled(daemon: Daemon, before: Counter[str], more: int) -> Callable[[], bool]:
    return lambda: all(_refreshes(daemon)[str(name)] >= before[str(name)] + more
                       for name in TOKENS)


def _printed_tokens(fleet: Fleet, names: Sequence[TokenName]) -> dict[TokenName, str]:
    """What ``tokend token NAME`` prints for each token (all at once: the tokens are short)."""
    def one(name: TokenName) -> str:
        result = tokend("token", str(name), config=fleet.config)
        assert result.returncode == 0, f"tokend token {name}: {result.stderr}"
        return result.stdout.removesuffix("\n")

    with ThreadPoolExecutor(len(names)) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def _user_of(sandbox: Sandbox, name: TokenName, refresh_token: str) -> str:
    """The sandbox user whose authorization ``refresh_token`` descends from.

    Asked by refreshing it once more and showing the new access token to
    ``/api/v1/me``: unlike the stored access token, a refresh token does not lapse
    while the test looks.
    """
    client_id, secret = APPS[name.app]
    answer = httpx.post(f"{sandbox.url}/oauth/token", timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": refresh_token,
        "client_id": client_id, "client_secret": secret,
    })
    if answer.status_code != 200:
        return f"refresh refused: HTTP {answer.status_code}"
    me = httpx.get(f"{sandbox.url}/api/v1/me", timeout=10,
                   headers={"Authorization": f"Bearer {answer.json()['access_token']}"})
    return str(me.json()["user"]) if me.status_code == 200 else f"me: HTTP {me.status_code}"


def _stale_outputs(fleet: Fleet, printed: dict[TokenName, str]) -> list[str]:
    """The outputs of the saved config that do not hold exactly what ``tokend token`` printed."""
    stale = []
    for name, outputs in fleet.outputs.items():
        token = printed[name]
        for path, fmt in outputs:
            try:
                text = path.read_text()
            except FileNotFoundError:
                stale.append(f"{path}: missing")
                continue
            if fmt == "token":
                good = text == token
            elif fmt == "env":
                good = text == f"FACTORIAL_ACCESS_TOKEN={token}\n"
            else:
                good = json.loads(text)["access_token"] == token
            if not good:
                stale.append(f"{path}: holds another token")
    return stale


# Above the suite's 120 s: the soak churns for two minutes. Every wait inside is bounded.
@pytest.mark.timeout(SOAK_CHURN_SECONDS + 180)
def test_the_daemon_and_concurrent_cli_commands_never_step_on_each_other(
    tmp_path: Path, slow_sandbox: Sandbox, start_daemon: StartDaemon,
    request: pytest.FixtureRequest, figures: dict[str, str],
) -> None:
    """While refreshes, re-authorizations, revokes and config edits run alongside the daemon,
    no refresh token is presented twice, every output holds what ``tokend token`` prints,
    every stored token is the newest authorization's, and every token ends ``ok``."""
    soak = bool(request.config.getoption("--soak"))
    churn_seconds = SOAK_CHURN_SECONDS if soak else CHURN_SECONDS
    seed = random.randrange(2**32)
    fleet = Fleet(tmp_path, slow_sandbox)
    churn = Churn(fleet)
    churn.edit(random.Random(f"{seed}-initial"))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(churn.authorize, TOKENS))
    assert churn.failures == [], churn.failures
    daemon = start_daemon(fleet.config)
    wait_for(lambda: daemon.named("daemon_started"), 15, "the daemon to start")

    started = time.monotonic()
    workers = [
        churn.run("refresh-a", churn.refresh, seed, (0.0, 0.3)),
        churn.run("refresh-b", churn.refresh, seed, (0.0, 0.3)),
        churn.run("reauthorize", lambda rng: churn.with_token(rng, churn.authorize), seed,
                  (0.0, 0.5)),
        churn.run("revoke", lambda rng: churn.with_token(rng, churn.revoke_and_authorize),
                  seed, (0.0, 0.5)),
        churn.run("edit", churn.edit, seed, (0.3, 1.0)),
    ]
    churn.stop.wait(churn_seconds)
    churn.stop.set()
    for worker in workers:
        worker.join(CLI_TIMEOUT * 2)
    churned = time.monotonic() - started

    # Settle: one last edit adds an output to every token; once it is loaded, every token
    # is refreshed twice more by the daemon alone.
    reloads = len(daemon.named("config_reloaded"))
    fleet.save(churn.counts["edits"] + 1, frozenset(TOKENS), hook_timeout=30)
    wait_for(lambda: len(daemon.named("config_reloaded")) > reloads, 15, "the last edit's reload")
    wait_for(_settled(daemon, _refreshes(daemon), 2), 30,
             f"every token to be refreshed twice by the daemon after the churn (seed {seed})")
    status = tokend("status", "--json", config=fleet.config)
    assert daemon.stop() == 0

    printed = _printed_tokens(fleet, TOKENS)
    store = SqliteStateStore(fleet.state_dir)
    try:
        records = {name: store.get(name) for name in TOKENS}
    finally:
        store.close()
    stored = {}
    for name, record in records.items():
        assert record is not None and record.token is not None, f"{name} is not stored"
        stored[name] = record.token
    states = {name: slow_sandbox.refresh_token_state(token.refresh_token)
              for name, token in stored.items()}

    events = daemon.events()
    by_daemon = sum(1 for event in events if event.get("event") == "token_refreshed")
    counts = churn.counts
    requests = [code for _at, grant, code in slow_sandbox.token_requests()
                if grant == "refresh_token"]
    reused = slow_sandbox.reused_refresh_tokens()
    figures["concurrency stress"] = (
        f"{churned:.0f} s of churn (seed {seed}): {by_daemon} refreshes by the daemon, "
        f"{counts['CLI refreshes']} by {counts['refresh commands']} `refresh --force` "
        f"({counts['CLI skipped busy']} skipped as busy, {counts['CLI skipped not authorized']} "
        f"as not authorized), {counts['authorizations']} authorizations "
        f"({len(TOKENS)} before the daemon started), "
        f"{counts['revokes']} revokes, {counts['edits'] + 1} edits → "
        f"{len(daemon.named('config_reloaded'))} reloads; {len(requests)} refresh requests, "
        f"{sum(1 for code in requests if code != 200)} refused, "
        f"{reused} refresh tokens presented twice"
    )
    slow_sandbox.set_answer_delay(0)
    lineage = {name: (_user_of(slow_sandbox, name, token.refresh_token), states[name])
               for name, token in stored.items()}

    assert churn.failures == [], f"(seed {seed})\n" + "\n".join(churn.failures)
    assert reused == 0, "a refresh token was presented twice"
    assert [code for code in requests if code != 200] == [], "a refresh was refused"
    assert len(requests) == by_daemon + counts["CLI refreshes"], "a refresh was not committed"
    assert _stale_outputs(fleet, printed) == []
    differing = sorted(str(name) for name, token in stored.items()
                       if printed.get(name) != token.access_token)
    assert differing == [], "`tokend token` does not print the stored token"
    assert lineage == {name: (churn.newest[name], "live") for name in TOKENS}, (
        "a stored token is not the newest authorization's")
    assert {row["name"]: row["state"] for row in json.loads(status.stdout)["tokens"]} == {
        str(name): "ok" for name in TOKENS}
    assert status.returncode == 0, status.stdout
    # A token the churn revoked is not_authorized until re-authorized: the daemon says so.
    revoked = [event for event in events if event.get("event") == "action_required"
               and event.get("state") == "not_authorized"]
    troubles = [event for event in events if event.get("level") in ("warning", "error")
                and event not in revoked]
    assert troubles == [], "the daemon logged trouble"
