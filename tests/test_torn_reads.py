"""No torn reads: a reader process never sees an empty, partial or mixed output file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import CLIENT_ID, CLIENT_SECRET, Setup, StartDaemon, wait_for
from tokend.sandbox import Sandbox

USERS = [f"user{i}" for i in range(16)]

# A separate process, as a consumer would be: it reads every output in a tight
# loop and judges each read on its own. Sandbox tokens are 43 URL-safe characters.
READER = r"""
import json, os, re, sys
os.nice(19)  # a busy consumer, but the daemon under test keeps its share of the CPU
paths, stop = sys.argv[1:-1], sys.argv[-1]
token = re.compile(r"[A-Za-z0-9_-]{43}")
template = re.compile(r"Bearer [A-Za-z0-9_-]{43} until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n")
reads = bad = 0
problems = []
while not os.path.exists(stop):
    for path in paths:
        try:
            with open(path, "rb") as handle:
                data = handle.read().decode()
        except FileNotFoundError:
            continue
        reads += 1
        ok = False
        if path.endswith(".token"):
            ok = bool(token.fullmatch(data))
        elif path.endswith(".env"):
            name, _, value = data.partition("=")
            ok = name == "FACTORIAL_ACCESS_TOKEN" and value.endswith("\n") \
                and bool(token.fullmatch(value[:-1]))
        elif path.endswith(".tmpl"):
            ok = bool(template.fullmatch(data))
        elif path.endswith(".json"):
            try:
                document = json.loads(data)
                ok = set(document) == {"access_token", "token_type", "scope", "expires_at"} \
                    and bool(token.fullmatch(document["access_token"]))
            except ValueError:
                ok = False
        if not ok:
            bad += 1
            problems.append(f"{path}: {len(data)} bytes")
print(json.dumps({"reads": reads, "bad": bad, "problems": problems[:5]}))
"""


@pytest.fixture
def fast_sandbox() -> Iterator[Sandbox]:
    """Tokens living 2 s: with refresh_at 0.5, each rotates about every second."""
    with Sandbox(access_token_lifetime=2, clients={CLIENT_ID: CLIENT_SECRET}) as server:
        yield server


def test_readers_never_see_a_torn_output(
    tmp_path: Path, fast_sandbox: Sandbox, start_daemon: StartDaemon,
    request: pytest.FixtureRequest, figures: dict[str, str],
) -> None:
    """Hundreds of rotations, every read complete and valid in all four formats."""
    wanted = 2000 if request.config.getoption("--soak") else 200
    tokens = [(user, "read") for user in USERS]
    # 16 tokens rotating every second need more than the default 180/min.
    setup = Setup(tmp_path, fast_sandbox, tokens,
                  defaults_yaml="  refresh_at: 0.5\n  rate_limit: 100/s\n")
    setup.extra_outputs_yaml = {user: (
        f"          - path: {setup.output(user, scope, 'tmpl')}\n"
        "            format: template\n"
        "            template: \"Bearer {access_token} until {expires_at}\\n\"\n")
        for user, scope in tokens}
    setup.authorized()
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("daemon_started"), 10, "the daemon to start")
    before = fast_sandbox.stats()["refresh_token"]

    paths = [
        str(setup.output(user, scope, suffix))
        for user, scope in tokens for suffix in ("token", "env", "json", "tmpl")
    ]
    stop = tmp_path / "stop-reading"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, *paths, str(stop)], stdout=subprocess.PIPE, text=True
    )
    wait_for(lambda: fast_sandbox.stats()["refresh_token"] - before >= wanted,
             wanted / 2, f"{wanted} rotations")
    stop.touch()
    stdout, _stderr = reader.communicate(timeout=30)
    assert daemon.stop() == 0

    result = json.loads(stdout)
    rotations = fast_sandbox.stats()["refresh_token"] - before
    figures["no torn reads"] = (
        f"{result['reads']} reads, {result['bad']} bad, during {rotations} rotations"
    )
    assert result["bad"] == 0, result["problems"]
    assert rotations >= wanted
    assert result["reads"] >= 10_000
