"""Turn an authorization key into a stored token, outputs, and a daemon that knows.

Shared by ``tokend authorize`` and ``tokend demo``: the order is the daemon's
own (lease, store, outputs, hooks), so an authorized token is never only in a
file and never overwritten by a refresh of the token it replaces.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from typing import TextIO

import structlog

from tokend.cli.listen import Listener, listen_address
from tokend.daemon.doorbell import ring
from tokend.engine.metrics import Metrics
from tokend.engine.publish import Publisher
from tokend.engine.refresher import lease_seconds
from tokend.engine.workers import Workers
from tokend.errors import ConfigError, NetworkError, OutputError, TokendError
from tokend.factorial import PROMPT, AsyncFactorial
from tokend.log import SecretMasker
from tokend.model import Config, TokenSpec
from tokend.oauth import protocol as oauth
from tokend.oauth.pkce import Pkce
from tokend.store.interface import StateStore, TokenRecord, Written, wait_for_claim
from tokend.store.lock import owner_id, owner_is_dead
from tokend.timing import Clock

log = structlog.get_logger(__name__)



def authorization_link(config: Config, spec: TokenSpec, *, state: str | None = None,
                       pkce: Pkce | None = None) -> str:
    """The link a person opens to grant ``spec``'s application access for ``spec``'s scope."""
    app = config.applications[spec.name.app]
    return oauth.authorization_link(
        client_id=app.client_id,
        redirect_uri=app.redirect_uri,
        scope=spec.name.scope,
        base_url=app.base_url,
        state=state,
        code_challenge=None if pkce is None else pkce.challenge,
        resource_owner_type="company" if spec.company else None,
    )


LISTEN_PROMPT = ("Authorization required. Follow this link in a browser on this machine; "
                 "it brings the authorization key back to tokend:")


def authorize_token(
    config: Config,
    spec: TokenSpec,
    *,
    key: str | None,
    listen: bool,
    timeout: float,
    out: TextIO,
    read_key: Callable[[], str],
    store: StateStore,
    clock: Clock,
    masker: SecretMasker,
) -> TokenRecord:
    """Get the authorization key and exchange it (:func:`exchange_and_store`): ``key`` as
    given, or after showing the link, from ``read_key`` (a prompt) or with ``listen``
    from the browser's redirect.

    The seed's "store your authorization key" is shown only when a key is asked
    for. The listener is bound before the link is shown, so a quick browser cannot
    arrive before it; the link's random ``state`` is what the listener checks, and
    the browser is answered once the exchange is done, with its outcome. A link
    shown here carries a PKCE challenge whose verifier only this process holds.
    """
    pkce = Pkce.new()

    def exchange(authorization_key: str) -> TokenRecord:
        return exchange_and_store(config, spec, authorization_key, store=store, clock=clock,
                                  masker=masker, code_verifier=pkce.verifier)

    if key is not None:
        # The link came from elsewhere, without our challenge.
        return exchange_and_store(config, spec, key.strip(), store=store, clock=clock,
                                  masker=masker)
    if not listen:
        print(PROMPT, file=out)
        print(authorization_link(config, spec, pkce=pkce), file=out, flush=True)
        return exchange(read_key().strip())
    app = config.applications[spec.name.app]
    address = listen_address(app.redirect_uri)
    if address is None:
        raise ConfigError(
            f"--listen needs an http://127.0.0.1:PORT/... or http://localhost:PORT/... "
            f"redirect_uri; application {app.name!r} has {app.redirect_uri!r}"
        )
    state = secrets.token_urlsafe(24)
    listener = Listener(address, state)
    print(LISTEN_PROMPT, file=out)
    print(authorization_link(config, spec, state=state, pkce=pkce), file=out, flush=True)
    print(f"Waiting up to {timeout:g} s for the browser to come back...", file=out, flush=True)
    return listener.wait(timeout, exchange, describe=lambda error: masker.mask(str(error)))


def exchange_and_store(
    config: Config,
    spec: TokenSpec,
    authorization_key: str,
    *,
    store: StateStore,
    clock: Clock,
    masker: SecretMasker,
    code_verifier: str | None = None,
) -> TokenRecord:
    """Exchange the key (with the PKCE verifier of the link it came from, if any), commit
    the token durably, publish it (outputs, then ``on_refresh``) and tell a running
    daemon; return the stored record.

    All of it under the token's lease, waiting out a refresh in flight elsewhere:
    the daemon's answer for the old refresh token can then neither overwrite the
    new authorization nor mark it ``needs_authorization``. A daemon is told even
    when an output could not be written, so it keeps the committed token fresh
    and retries the outputs; the :class:`OutputError` is raised after that.
    """
    app = config.applications[spec.name.app]
    masker.add(app.client_secret.reveal())
    return asyncio.run(_authorize(config, spec, authorization_key, store=store, clock=clock,
                                  masker=masker, code_verifier=code_verifier))


async def _authorize(
    config: Config,
    spec: TokenSpec,
    authorization_key: str,
    *,
    store: StateStore,
    clock: Clock,
    masker: SecretMasker,
    code_verifier: str | None,
) -> TokenRecord:
    app = config.applications[spec.name.app]
    workers = Workers()
    publisher = Publisher(store=store, workers=workers, masker=masker,
                          hook_base_env=os.environ, metrics=Metrics(process=False))
    try:
        claim = await workers.store(
            wait_for_claim, store, spec.name, owner=owner_id(), lease=lease_seconds(spec),
            holder_is_dead=owner_is_dead, timeout=lease_seconds(spec),
        )
        try:
            sent_at = clock.now()
            try:
                async with AsyncFactorial(access_token="", base_url=app.base_url,
                                          timeout=spec.timeout) as client:
                    async with asyncio.timeout(spec.timeout):
                        token = await client.obtain_access_token(
                            client_id=app.client_id,
                            client_secret=app.client_secret.reveal(),
                            redirect_uri=app.redirect_uri,
                            authorization_key=authorization_key,
                            code_verifier=code_verifier,
                        )
            except TimeoutError:
                raise NetworkError.deadline(spec.timeout) from None
            masker.add(token.access_token, token.refresh_token)
            written = await workers.store(store.commit, spec.name, token,
                                          generation=claim.generation, issued_at=sent_at,
                                          now=clock.now())
            if written is Written.STALE:  # only when our lease ran out under a stalled store
                raise TokendError(f"{spec.name} was changed by another process meanwhile; "
                                  "authorize again")
            published = await publisher.publish(spec, claim.lease, new_token=True)
        finally:
            await workers.store(store.release, claim.lease)
        ring(config.state_dir, [str(spec.name)])
        record = published.record
        assert record is not None  # noqa: S101 -- just committed under our lease
        log.info("token_authorized", token=str(spec.name))
        if not published.ok:
            raise OutputError(f"{spec.name} is authorized and stored, but {record.output_error}")
        await publisher.announce(spec, published)
        return record
    finally:
        workers.close()
