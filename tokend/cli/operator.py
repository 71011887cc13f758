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

from tokend.daemon.doorbell import ring
from tokend.engine.landing import RefreshOutcome
from tokend.engine.outputs import remove_outputs
from tokend.engine.publish import settle_files
from tokend.engine.refresher import Refresher, lease_seconds
from tokend.engine.schedule import due_at
from tokend.engine.slots import RefreshSlots
from tokend.errors import NotFoundError, OAuthError, OutputError, TokendError
from tokend.factorial import Factorial
from tokend.log import SecretMasker
from tokend.model import Config, TokenName, TokenSpec, resolve_token
from tokend.store.interface import (
    Lease,
    PublishedFiles,
    StateStore,
    TokenState,
    Written,
    wait_for_claim,
)
from tokend.store.lock import owner_id, owner_is_dead
from tokend.timing import Clock, format_utc


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
    elif outcome.result == "permanent_error" and record is not None \
            and record.state == TokenState.CLIENT_REJECTED:
        text, failed = (f"client credentials rejected: {error}; correct application "
                        f"{name.app}'s client_id or secret"), True
    elif outcome.result == "permanent_error":
        text, failed = f"needs authorization: {error}", True
    elif token is None:
        text, failed = f"skipped; not authorized (run `tokend authorize {name}`)", strict
    elif token.expires_in is None:
        text, failed = "skipped; it does not expire, so it is never refreshed", False
    elif due is None:
        text, failed = "skipped; needs authorization (--force tries anyway)", strict
    else:
        text, failed = f"skipped; not due until {format_utc(due) if due > now else 'now'}", False
    return RefreshLine(f"{name}: {text}", failed=failed)


def revoke_target(config: Config, store: StateStore, text: str) -> TokenSpec:
    """The token ``text`` names: a configured one, or a stored one the config no longer
    names (``APP/USER/SCOPE`` in full), so it can be revoked or forgotten by name."""
    try:
        return resolve_token(config, text)
    except NotFoundError as unknown:
        try:
            name = TokenName.parse(text)
        except ValueError:
            raise unknown from None
        record = store.get(name)
        if record is None or (record.token is None and not record.outputs):
            raise unknown from None
        app = config.applications.get(name.app)
        return TokenSpec(name=name) if app is None else TokenSpec(name=name, timeout=app.timeout)


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
    neither can bring the token back or lose a newer one. A token the config no
    longer names is revoked with its application's credentials; without them
    (the application is gone too) only ``local_only`` can forget it.
    """
    app = config.applications.get(spec.name.app)
    if app is None and not local_only:
        raise TokendError(
            f"{spec.name}: application {spec.name.app!r} is not in the config, so tokend has "
            "no client credentials to revoke the token at the server; nothing was done. Run "
            f"`tokend revoke --local-only {spec.name}` to forget it here (it dies at the server "
            "when its refresh token expires)")
    if app is not None:
        masker.add(app.client_secret.reveal())
    configured = any(other.name == spec.name for other in config.tokens)
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
        problem = _remove_files(config, spec, claim.lease, store)
    finally:
        store.release(claim.lease)
    ring(config.state_dir, [str(spec.name)])
    if problem is not None:
        raise OutputError(f"{spec.name}: the token is forgotten, but {problem}")
    if token is None:
        return f"{spec.name}: was not authorized; outputs removed"
    where = "at the server and locally" if revoked_remotely else "locally only (--local-only)"
    after = "state is now not_authorized" if configured else "no longer stored"
    return f"{spec.name}: revoked {where}; outputs removed; {after}"


def _remove_files(config: Config, spec: TokenSpec, lease: Lease, store: StateStore) -> str | None:
    """Remove every file ``spec``'s token was written to, as the publish path does; return
    what could not be removed. Files another configured token writes now are its own."""
    record = store.get(spec.name)
    if record is None:
        remove_outputs(spec.outputs)
        return None
    in_use = {output.path for other in config.tokens if other.name != spec.name
              for output in other.outputs}
    files = settle_files(spec.outputs, record, in_use=in_use, name=str(spec.name))
    if files.error != record.output_error:
        store.set_output_problem(lease, error=files.error)
    if files.held != record.outputs:
        store.record_published([PublishedFiles(lease, files.held, record.unconfigured_at)])
    return files.error


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
