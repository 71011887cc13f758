"""``tokend refresh`` and ``tokend revoke``: the daemon's own work, done now by hand.

Both go through the store's claim, exactly like the daemon, so they are safe
while it runs: a token is never refreshed by two processes at once, and a
revoke never races a refresh. Afterwards a running daemon is told (its
doorbell) to re-read the tokens they changed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from tokend.clock import Clock
from tokend.doorbell import ring
from tokend.errors import OAuthError, TokendError
from tokend.factorial import Factorial
from tokend.lock import owner_id, owner_is_dead
from tokend.log import SecretMasker
from tokend.model import Config, TokenSpec
from tokend.outputs import format_utc, remove_outputs
from tokend.refresher import Refresher, RefreshOutcome, lease_seconds
from tokend.schedule import due_at
from tokend.slots import RefreshSlots
from tokend.state import StateStore, Written, wait_for_claim


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
    ring(config.state_dir, [str(outcome.name) for outcome in outcomes])
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
    slots = RefreshSlots(config.concurrency,
                         {name: app.concurrency for name, app in config.applications.items()})
    async with httpx.AsyncClient() as http:
        refresher = Refresher(store=store, http=http, clock=clock, masker=masker,
                              owner=owner_id(), hook_base_env=os.environ)
        try:
            return list(await asyncio.gather(*(
                refresher.refresh(spec, config.applications[spec.name.app], force=force,
                                  slots=slots)
                for spec in specs
            )))
        finally:
            refresher.workers.close()


def _line(outcome: RefreshOutcome, spec: TokenSpec, *, strict: bool, now: float) -> RefreshLine:
    name, record = outcome.name, outcome.record
    error = record.last_error if record is not None else None
    token = record.token if record is not None else None
    due = due_at(record, spec)
    expires_at = record.expires_at if record is not None else None
    if outcome.result == "ok" and not outcome.outputs_ok:
        # The new token is stored, but a consumer reading that file still gets the old one.
        problem = record.output_error if record is not None else None
        text, failed = f"refreshed, but an output failed: {problem}", True
    elif outcome.result == "ok" and expires_at is not None:
        text, failed = f"refreshed; valid until {format_utc(expires_at)}", False
    elif outcome.result == "busy":
        text, failed = "skipped; another process is refreshing it right now", False
    elif outcome.result == "superseded":
        text, failed = "skipped; another process stored a newer token meanwhile", False
    elif outcome.result == "transient_error":
        text, failed = f"failed, will be retried: {error}", True
    elif outcome.result == "permanent_error":
        text, failed = f"needs authorization: {error}", True
    elif token is None:
        text, failed = f"skipped; not authorized (run `tokend authorize {name}`)", strict
    elif due is None:
        text, failed = "skipped; needs authorization (--force tries anyway)", strict
    else:
        text, failed = f"skipped; not due until {format_utc(due) if due > now else 'now'}", False
    return RefreshLine(f"{name}: {text}", failed=failed)



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
    propagates (``local_only`` skips it, for a server that is gone). The lease
    is held throughout, waiting out a refresh or an authorization in flight, so
    neither can bring the token back or lose a newer one.
    """
    app = config.applications[spec.name.app]
    masker.add(app.client_secret.reveal())
    claim = wait_for_claim(store, spec.name, owner=owner_id(), lease=lease_seconds(spec),
                           holder_is_dead=owner_is_dead, timeout=lease_seconds(spec))
    try:
        record = claim.record
        token = record.token if record is not None else None
        revoked_remotely = False
        if token is not None:
            masker.add(token.access_token, token.refresh_token)
            if not local_only:
                _revoke_at_server(spec, config, token.refresh_token)
                revoked_remotely = True
            if store.delete_token(claim.lease, generation=claim.generation) is Written.STALE:
                raise TokendError(f"{spec.name} was changed by another process meanwhile; "
                                  "nothing was deleted here. Run revoke again")
        remove_outputs(spec.outputs)
    finally:
        store.release(claim.lease)
    ring(config.state_dir, [str(spec.name)])
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
