"""``tokend demo``: the whole product working in one command, with no account anywhere.

It starts the built-in sandbox with short-lived tokens, authorizes a few
user/scope pairs the way a person would (link, key, exchange), writes a real
config file into a temporary folder and runs the real daemon on it. The folder
holds a client secret and live tokens, so it is removed when the demo stops
unless asked to keep it.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TextIO
from urllib.parse import quote

import httpx

from tokend.cli.authorize import authorization_link, exchange_and_store
from tokend.config.load import load_config
from tokend.daemon.lifecycle import Daemon
from tokend.log import SecretMasker
from tokend.model import OOB, Token, TokenSpec, scope_name
from tokend.sandbox import Sandbox
from tokend.store.sqlite import SqliteStateStore
from tokend.timing import SystemClock, format_duration

DEMO_CLIENT_ID = "tokend-demo"
DEMO_TOKENS = (("alice", "read"), ("alice", "write"), ("bob", "read+write"),
               ("hr", "employees time_off"))
"""User/scope pairs; the last is a company token with the resource scopes of today's Factorial,
which never expires, so the demo shows it written once and never refreshed."""
_COMPANY = {"hr"}
_SCOPES = ("read", "write", "employees", "time_off")
_CODE = re.compile(r'<code id="authorization_code">([^<]+)</code>')

_CONFIG = """\
# Written by `tokend demo`. Edit it while the demo runs: the daemon follows.
state_dir: {folder}/state
defaults:
  refresh_at: 0.5
  refresh_token_lifetime: {refresh_lifetime}s  # what the demo's sandbox enforces
  retry: {{initial: 1s, max: 10s}}
applications:
  demo:
    base_url: {base_url}
    client_id: {client_id}
    client_secret_file: {folder}/demo.secret
    redirect_uri: {oob}
    tokens:
{tokens}"""

_ENTRY_YAML = """\
      - user: {user}
        scope: {scope}
{owner}        outputs:
          - path: {folder}/out/{user}-{slug}.token
          - path: {folder}/out/{user}-{slug}.env
            format: env
          - path: {folder}/out/{user}-{slug}.json
            format: json
"""


def write_demo_config(
    folder: Path, base_url: str, client_secret: str, *, refresh_lifetime: int
) -> Path:
    """Write the demo's secret file and config file into ``folder``.

    ``refresh_lifetime`` must be the sandbox's, or ``status`` would show refresh
    tokens outliving what the server allows.
    """
    secret_file = folder / "demo.secret"
    secret_file.touch(mode=0o600)
    secret_file.write_text(client_secret)
    tokens = "".join(
        _ENTRY_YAML.format(folder=folder, user=user, scope=scope,
                           slug=scope_name(scope).replace("+", "-"),
                           owner="        resource_owner_type: company\n" if user in _COMPANY
                           else "")
        for user, scope in DEMO_TOKENS
    )
    path = folder / "config.yaml"
    path.write_text(
        _CONFIG.format(folder=folder, base_url=base_url, client_id=DEMO_CLIENT_ID, tokens=tokens,
                       refresh_lifetime=refresh_lifetime, oob=OOB)
    )
    path.chmod(0o600)
    return path


def _authorization_key_from_browser(link: str, user: str) -> str:
    """Do what a person does: open the link, approve, read the key off the page."""
    page = httpx.get(f"{link}&user={quote(user)}", timeout=10.0)
    page.raise_for_status()
    match = _CODE.search(page.text)
    if match is None:
        raise RuntimeError("the sandbox's authorization page shows no key")
    return match.group(1)


async def _run_daemon(daemon: Daemon, duration: float | None) -> int:
    task = asyncio.create_task(daemon.run())
    if duration is None:
        return await task
    done, _pending = await asyncio.wait({task}, timeout=duration)
    if not done:
        daemon.request_stop()
    return await task


def run_demo(
    *, duration: float | None, lifetime: float, keep: bool, command: str, masker: SecretMasker,
    out: TextIO,
) -> int:
    """Run the demo until Ctrl-C, SIGTERM or ``duration`` seconds; return the exit status.

    ``command`` is how the user runs this tokend from a shell (``own_command()``).
    """
    client_secret = secrets.token_urlsafe(24)
    masker.add(client_secret)
    refresh_lifetime = math.ceil(max(3600.0, lifetime * 100))
    with _sigterm_stops_like_ctrl_c(), _demo_folder(keep, out) as folder, Sandbox(
        access_token_lifetime=lifetime,
        refresh_token_lifetime=refresh_lifetime,
        clients={},
    ) as sandbox:
        sandbox.add_client(DEMO_CLIENT_ID, client_secret, scopes=_SCOPES)
        config_path = write_demo_config(folder, sandbox.url, client_secret,
                                        refresh_lifetime=refresh_lifetime)
        config = load_config(config_path)
        (outputs,) = {output.path.parent for spec in config.tokens for output in spec.outputs}
        print(f"tokend demo: sandbox at {sandbox.url} (a local test server, not Factorial)\n"
              f"  config:  {config_path}\n  outputs: {outputs}/\n"
              f"  {'kept' if keep else 'removed'} when the demo stops"
              f"{'' if keep else ' (--keep keeps them)'}", file=out)
        store = SqliteStateStore(config.state_dir)
        try:
            for spec in config.tokens:
                key = _authorization_key_from_browser(
                    authorization_link(config, spec), spec.name.user
                )
                record = exchange_and_store(
                    config, spec, key, store=store, clock=SystemClock(), masker=masker
                )
                assert record.token is not None  # noqa: S101 -- just stored
                _print_line(out, spec, record.token, "authorized")
        finally:
            store.close()
        settings = sandbox.settings()
        print(f"Access tokens live {format_duration(settings['access_token_lifetime'])}, "
              f"refresh tokens {format_duration(settings['refresh_token_lifetime'])}; "
              "watch them rotate (Ctrl-C stops).", file=out)
        print(f"In another terminal: {command} --config {shlex.quote(str(config_path))} status",
              file=out, flush=True)

        def on_refreshed(spec: TokenSpec, token: Token) -> None:
            _print_line(out, spec, token, "refreshed")

        daemon = Daemon(config_path, masker=masker, on_refreshed=on_refreshed)
        status = asyncio.run(_run_daemon(daemon, duration))
        signal.signal(signal.SIGTERM, _interrupt)  # closing the loop reset it to the default
        return status


def own_command() -> str:
    """How to run the tokend that is running now from a shell, for hints to copy.

    ``tokend`` only when PATH finds this very script: after the Quick start
    (``.venv/bin/tokend demo``) it is not on PATH, so the script's absolute path;
    under ``python -m tokend`` that same interpreter with ``-m tokend``.
    """
    script = Path(sys.argv[0])
    if script.suffix == ".py" or not script.is_file():
        return f"{shlex.quote(sys.executable)} -m tokend"
    found = shutil.which("tokend")
    if found is not None and Path(found).resolve() == script.resolve():
        return "tokend"
    return shlex.quote(os.path.abspath(script))


@contextmanager
def _demo_folder(keep: bool, out: TextIO) -> Iterator[Path]:
    """A private temporary folder, removed at the end (also on Ctrl-C or an error) unless
    ``keep``; then say where it is and how to remove it."""
    folder = Path(tempfile.mkdtemp(prefix="tokend-demo-"))
    try:
        yield folder
    finally:
        if keep:
            print(f"tokend demo: stopped; config, state and outputs stay in {folder}\n"
                  f"  remove them with: rm -r {shlex.quote(str(folder))}", file=out, flush=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
            print(f"tokend demo: stopped; removed {folder}", file=out, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_stops_like_ctrl_c() -> Iterator[None]:
    """``kill`` outside the daemon's run (which handles it itself) would end the process
    without cleanup and leave the folder with its secret behind."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _print_line(out: TextIO, spec: TokenSpec, token: Token, verb: str) -> None:
    now = datetime.now().strftime("%H:%M:%S")
    expires_at = token.expires_at
    until = ("(does not expire)" if expires_at is None
             else f"until {expires_at.astimezone().strftime('%H:%M:%S')}")
    paths = ", ".join(output.path.name for output in spec.outputs)
    print(f"{now}  {spec.name} {verb} {until} -> {paths}", file=out, flush=True)
