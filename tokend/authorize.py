"""Turn an authorization key into a stored token, outputs, and a daemon that knows.

Shared by ``tokend authorize`` and ``tokend demo``: the order is the daemon's
own (store, outputs, hooks), so an authorized token is never only in a file.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import Callable
from typing import TextIO

import structlog

from tokend.clock import Clock
from tokend.errors import ConfigError
from tokend.factorial import PROMPT, Factorial
from tokend.hooks import hook_environment, run_hook
from tokend.listen import Listener, listen_address
from tokend.lock import running_daemon_pid
from tokend.log import SecretMasker
from tokend.model import Config, TokenSpec
from tokend.oauth import Token
from tokend.outputs import write_outputs
from tokend.state import StateStore

log = structlog.get_logger(__name__)



def authorization_link(config: Config, spec: TokenSpec, *, state: str | None = None) -> str:
    """The link a person opens to grant ``spec``'s application access for ``spec``'s scope."""
    app = config.applications[spec.name.app]
    return Factorial.obtain_authorization_link(
        client_id=app.client_id,
        redirect_uri=app.redirect_uri,
        scope=spec.name.scope,
        base_url=app.base_url,
        state=state,
    )


def obtain_key(
    config: Config,
    spec: TokenSpec,
    *,
    listen: bool,
    timeout: float,
    out: TextIO,
    read_key: Callable[[], str],
) -> str:
    """Show the link and get the authorization key: from ``read_key`` (the ``--key``
    argument or a prompt), or with ``listen`` from the browser's redirect.

    The listener is bound before the link is shown, so a quick browser cannot
    arrive before it; the link's random ``state`` is what the listener checks.
    """
    listener = None
    state = None
    if listen:
        app = config.applications[spec.name.app]
        address = listen_address(app.redirect_uri)
        if address is None:
            raise ConfigError(
                f"--listen needs an http://127.0.0.1:PORT/... or http://localhost:PORT/... "
                f"redirect_uri; application {app.name!r} has {app.redirect_uri!r}"
            )
        state = secrets.token_urlsafe(24)
        listener = Listener(address, state)
    print(PROMPT, file=out)
    print(authorization_link(config, spec, state=state), file=out, flush=True)
    if listener is None:
        return read_key().strip()
    print(f"Waiting up to {timeout:g} s for the browser to come back...", file=out, flush=True)
    return listener.wait(timeout)


def exchange_and_store(
    config: Config,
    spec: TokenSpec,
    authorization_key: str,
    *,
    store: StateStore,
    clock: Clock,
    masker: SecretMasker,
) -> Token:
    """Exchange the key, commit the token durably, write the outputs, run ``on_refresh``,
    and tell a running daemon to pick the token up."""
    app = config.applications[spec.name.app]
    masker.add(app.client_secret.reveal())
    with Factorial(access_token="", base_url=app.base_url, timeout=spec.timeout) as client:
        token = client.obtain_access_token(
            client_id=app.client_id,
            client_secret=app.client_secret.reveal(),
            redirect_uri=app.redirect_uri,
            authorization_key=authorization_key,
        )
    masker.add(token.access_token, token.refresh_token)
    store.save_token(spec.name, token, now=clock.now())
    write_outputs(spec.outputs, token)
    if spec.on_refresh:
        env = hook_environment(
            spec, expires_at=token.expires_at, base=masker.without_secrets(os.environ)
        )
        asyncio.run(
            run_hook(spec.on_refresh, env=env, timeout=spec.hook_timeout, name=str(spec.name))
        )
    notify_daemon(config)
    log.info("token_authorized", token=str(spec.name), expires_at=token.expires_at.isoformat())
    return token


def notify_daemon(config: Config) -> bool:
    """Ask a daemon running on the same state to re-read the store (SIGUSR1)."""
    pid = running_daemon_pid(config.state_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return False
    return True
