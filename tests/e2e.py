"""Support for end-to-end tests: a config on disk, the real CLI and daemon as subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from tokend.model import TokenName
from tokend.sandbox import Sandbox
from tokend.store.sqlite import SqliteStateStore

CLIENT_ID = "e2e-client"
CLIENT_SECRET = "e2e-client-secret-Zq7x9Kw2"  # distinctive, so a leak is easy to find


@dataclass
class Setup:
    """A config folder with a state dir and an output dir."""

    root: Path
    sandbox: Sandbox
    tokens: Sequence[tuple[str, str]]
    extra_token_yaml: dict[str, str] = field(default_factory=dict)
    extra_outputs_yaml: dict[str, str] = field(default_factory=dict)
    defaults_yaml: str = "  refresh_at: 0.5\n  retry: {initial: 1s, max: 4s}\n"
    top_level_yaml: str = ""
    """More top-level keys (such as a ``metrics:`` block), each line ending in a newline."""

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def output(self, user: str, scope: str, suffix: str) -> Path:
        return self.root / "out" / f"{user}-{scope.replace('+', '-')}.{suffix}"

    def write(self) -> Path:
        """Write the client secret file and the config file; return the config's path."""
        secret = self.root / "client.secret"
        secret.write_text(CLIENT_SECRET + "\n")
        secret.chmod(0o600)
        self.config.write_text(self.render())
        return self.config

    def authorized(self) -> Setup:
        """Write the config and authorize every token through the CLI; return ``self``."""
        self.write()
        for user, scope in self.tokens:
            authorize(self, user, scope)
        return self

    def render(self) -> str:
        """The config file's text for the current settings."""
        entries = ""
        for user, scope in self.tokens:
            entries += (
                f"      - user: {user}\n"
                f"        scope: {scope}\n"
                f"        outputs:\n"
                f"          - path: {self.output(user, scope, 'token')}\n"
                f"          - path: {self.output(user, scope, 'env')}\n"
                f"            format: env\n"
                f"          - path: {self.output(user, scope, 'json')}\n"
                f"            format: json\n"
                f"{self.extra_outputs_yaml.get(user, '')}"
                f"{self.extra_token_yaml.get(user, '')}"
            )
        return (
            f"state_dir: {self.state_dir}\n"
            f"{self.top_level_yaml}"
            f"defaults:\n{self.defaults_yaml}"
            f"applications:\n"
            f"  app:\n"
            f"    base_url: {self.sandbox.url}\n"
            f"    client_id: {CLIENT_ID}\n"
            f"    client_secret_file: {self.root / 'client.secret'}\n"
            f"    tokens:\n{entries}"
        )


def tokend(*args: str, config: Path | None = None, timeout: float = 30.0,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``tokend`` CLI and wait for it."""
    argv = [sys.executable, "-m", "tokend"]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=timeout, check=False,
        stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
    )


def authorize(setup: Setup, user: str, scope: str) -> None:
    """Authorize one token through the CLI with a key the sandbox issued."""
    key = setup.sandbox.authorize(
        client_id=CLIENT_ID, redirect_uri="urn:ietf:wg:oauth:2.0:oob", scope=scope, user=user
    )
    # --key=KEY: a key may start with "-", which argparse would take for an option.
    result = tokend("authorize", f"app/{user}/{scope}", f"--key={key}", config=setup.config)
    assert result.returncode == 0, result.stderr


class Daemon:
    """``tokend run`` as a subprocess, its JSON log lines collected in a file."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None,
                 prefix: Sequence[str] = ()) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(  # prefix: a command that execs the rest (unshare …)
            [*prefix, sys.executable, "-m", "tokend", "--config", str(config), "run"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def events(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.events() if line.get("event") == event]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self._log.close()


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` until it is true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class StartDaemon(Protocol):
    """The ``start_daemon`` fixture."""

    def __call__(
        self, config: Path, name: str = "daemon", env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> Daemon: ...


def refreshed(daemon: Daemon, token: str) -> int:
    """How many times the daemon logged ``token_refreshed`` for ``token``."""
    return sum(1 for event in daemon.named("token_refreshed") if event.get("token") == token)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def key_from_authorization_page(link: str, user: str) -> str:
    """What a person does with an oob link: open it, approve as ``user``, read the key."""
    page = httpx.get(f"{link}&user={quote(user)}", timeout=10.0)
    page.raise_for_status()
    match = re.search(r'<code id="authorization_code">([^<]+)</code>', page.text)
    assert match is not None, "the authorization page shows no key"
    return match.group(1)


def with_app_settings(setup: Setup, yaml: str) -> Path:
    """Write ``setup``'s config with extra application keys (``redirect_uri: …``)."""
    config = setup.write()
    text = setup.render().replace("    client_id:", f"{yaml}    client_id:", 1)
    config.write_text(text)
    return config


def sandbox_with_lifetime(seconds: float) -> Sandbox:
    """A sandbox for the e2e client whose access tokens live ``seconds`` (use with ``with``)."""
    return Sandbox(access_token_lifetime=seconds, clients={CLIENT_ID: CLIENT_SECRET})


def stored_refresh_token(setup: Setup, user: str, scope: str = "read") -> str | None:
    """The refresh token the store holds for ``app/USER/SCOPE``, or ``None`` without one."""
    store = SqliteStateStore(setup.state_dir)
    try:
        record = store.get(TokenName("app", user, scope))
    finally:
        store.close()
    return None if record is None or record.token is None else record.token.refresh_token


NOBODY = 65534


def as_nobody(work: Callable[[], str]) -> str:
    """What ``work()`` returns when run by a forked child that dropped to ``nobody``.

    A fork rather than a new interpreter: the venv's Python may live where
    ``nobody`` cannot reach it. The child's exception fails the caller's test.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child reports through the pipe
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write_end, work().encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child running as nobody failed"
    return answer
