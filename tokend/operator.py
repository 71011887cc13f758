"""``tokend refresh`` and ``tokend revoke``: the daemon's own work, done now by hand.

Both go through the store's claim, exactly like the daemon, so they are safe
while it runs: a token is never refreshed by two processes at once, and a
revoke never races a refresh. Afterwards the daemon is told (SIGUSR1) to
re-read the store and reschedule.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from tokend.authorize import notify_daemon
from tokend.clock import Clock
from tokend.errors import OAuthError, TokendError
from tokend.factorial import Factorial
from tokend.lock import owner_id, owner_is_dead
from tokend.log import SecretMasker
from tokend.model import Config, TokenSpec
from tokend.outputs import remove_outputs
from tokend.refresher import Refresher, RefreshOutcome
from tokend.schedule import due_at
from tokend.state import StateStore

# How long ``revoke`` waits for an in-flight refresh (someone else's claim) to finish.
REVOKE_CLAIM_WAIT = 30.0
_REVOKE_LEASE = 60.0


@dataclass(frozen=True)
class RefreshLine:
    """One line of ``tokend refresh`` output, and whether it counts as a failure."""

    text: str
    failed: bool


def refresh_tokens(
    config: Config,
    specs: Sequence[TokenSpec],
    *,
    force: bool,
    explicit: bool,
    store: StateStore,
    clock: Clock,
    masker: SecretMasker,
) -> list[RefreshLine]:
    """Refresh the due tokens among ``specs`` (all of them with ``force``) through
    :class:`Refresher`, then tell a running daemon to reschedule.

    A token that is not authorized (or needs authorization, without ``force``)
    is skipped; that counts as a failure only when the operator named it
    (``explicit``).
    """
    for app in config.applications.values():
        masker.add(app.client_secret.reveal())
    outcomes = asyncio.run(_refresh_all(config, specs, force=force, store=store, clock=clock,
                                        masker=masker))
    notify_daemon(config)
    specs_by_name = {spec.name: spec for spec in specs}
    return [_line(outcome, specs_by_name[outcome.name], strict=explicit, now=clock.now())
            for outcome in outcomes]


async def _refresh_all(
    config: Config,
    specs: Sequence[TokenSpec],
    *,
    force: bool,
    store: StateStore,
    clock: Clock,
    masker: SecretMasker,
) -> list[RefreshOutcome]:
    slots = asyncio.Semaphore(config.concurrency)
    async with httpx.AsyncClient() as http:
        refresher = Refresher(store=store, http=http, clock=clock, masker=masker,
                              owner=owner_id(), hook_base_env=os.environ)

        async def one(spec: TokenSpec) -> RefreshOutcome:
            async with slots:
                return await refresher.refresh(spec, config.applications[spec.name.app],
                                               force=force)

        return list(await asyncio.gather(*(one(spec) for spec in specs)))


def _line(outcome: RefreshOutcome, spec: TokenSpec, *, strict: bool, now: float) -> RefreshLine:
    name, record = outcome.name, outcome.record
    error = record.last_error if record is not None else None
    token = record.token if record is not None else None
    due = due_at(record, spec)
    if outcome.result == "ok" and token is not None:
        text, failed = f"refreshed; valid until {_iso(token.expires_at_epoch)}", False
    elif outcome.result == "busy":
        text, failed = "skipped; another process is refreshing it right now", False
    elif outcome.result == "transient_error":
        text, failed = f"failed, will be retried: {error}", True
    elif outcome.result == "permanent_error":
        text, failed = f"needs authorization: {error}", True
    elif token is None:
        text, failed = f"skipped; not authorized (run `tokend authorize {name}`)", strict
    elif due is None:
        text, failed = "skipped; needs authorization (--force tries anyway)", strict
    else:
        text, failed = f"skipped; not due until {_iso(due) if due > now else 'now'}", False
    return RefreshLine(f"{name}: {text}", failed=failed)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def revoke(
    config: Config,
    spec: TokenSpec,
    *,
    local_only: bool,
    store: StateStore,
    clock: Clock,
    masker: SecretMasker,
) -> str:
    """Revoke ``spec``'s token at the server, forget it, remove its outputs; return a summary.

    The server call comes first: if it fails, nothing is deleted and the error
    propagates (``local_only`` skips it, for a server that is gone). The store's
    claim is held throughout so a concurrent refresh cannot bring the token back.
    """
    app = config.applications[spec.name.app]
    masker.add(app.client_secret.reveal())
    owner = owner_id()
    _claim(store, spec, owner=owner, clock=clock)
    try:
        record = store.get(spec.name)
        token = record.token if record is not None else None
        revoked_remotely = False
        if token is not None:
            masker.add(token.access_token, token.refresh_token)
            if not local_only:
                _revoke_at_server(spec, config, token.refresh_token)
                revoked_remotely = True
            store.delete_token(spec.name)
    finally:
        store.release(spec.name, owner=owner)
    remove_outputs(spec.outputs)
    notify_daemon(config)
    if token is None:
        return f"{spec.name}: was not authorized; outputs removed"
    where = "at the server and locally" if revoked_remotely else "locally only (--local-only)"
    return f"{spec.name}: revoked {where}; outputs removed; state is now not_authorized"


def _revoke_at_server(spec: TokenSpec, config: Config, refresh_token: str) -> None:
    app = config.applications[spec.name.app]
    try:
        with Factorial(access_token="", base_url=app.base_url, timeout=spec.timeout) as client:
            client.revoke_token(client_id=app.client_id,
                                client_secret=app.client_secret.reveal(), token=refresh_token)
    except OAuthError as error:
        raise TokendError(
            f"{spec.name}: the server did not revoke the token ({error}); nothing was deleted. "
            "Try again, or pass --local-only to forget it here only"
        ) from None


def _claim(store: StateStore, spec: TokenSpec, *, owner: str, clock: Clock) -> None:
    """Take the token's lease, waiting out a refresh in flight elsewhere."""
    deadline = time.monotonic() + REVOKE_CLAIM_WAIT
    while not store.claim(spec.name, owner=owner, now=clock.now(), lease=_REVOKE_LEASE,
                          holder_is_dead=owner_is_dead):
        if time.monotonic() >= deadline:
            raise TokendError(f"{spec.name} is being refreshed by another process; try again")
        time.sleep(0.2)
