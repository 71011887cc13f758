"""``tokend check --online``: does the token endpoint accept each application's client credentials?

The probe must consume nothing: no authorization key, no refresh token, no
new token. So it presents a credential that cannot exist, and the answer tells
whether the client got past authentication: ``invalid_grant`` means the
client id and secret were accepted and only the made-up grant was refused,
``invalid_client`` means they were not.

The made-up grant is an authorization code, not a refresh token. RFC 6749
asks the server to authenticate the client before it looks at either, but
Doorkeeper (whose answers Factorial's match) looks a refresh token up first
(``RefreshTokenRequest`` validates the token, then the client), so an unknown
refresh token answers ``invalid_grant`` whatever the secret. For an
authorization code it checks the client first (``AuthorizationCodeRequest``),
as the sandbox does for both.
"""

from __future__ import annotations

import secrets

import httpx

from tokend.cli.check import CheckReport
from tokend.errors import NetworkError, OAuthError
from tokend.factorial import Factorial
from tokend.model import ApplicationSpec, Config
from tokend.oauth.protocol import authorization_code_request

PROBE_CODE_PREFIX = "tokend-check-"
"""Begins every made-up code, so a server's log shows what sent it."""


def check_online(config: Config, report: CheckReport, *, client: httpx.Client | None = None
                 ) -> None:
    """Probe each application's client credentials in turn; failures become problems.

    One request per application, one after the other: a check never bursts
    against the server's rate limit. ``client`` is for tests.
    """
    for app in config.applications.values():
        where = f"online: application {app.name}"
        url, error = _probe(app, client)
        if error is None:
            report.problems.append(f"{where}: unexpected answer from {url}: it issued a token "
                                   "for an authorization code that cannot exist")
        elif error.error == "invalid_grant":
            report.notes.append(f"{where}: ok, client accepted by {url}")
        elif error.error == "invalid_client":
            report.problems.append(f"{where}: client rejected by {url} ({error}); check its "
                                   "client_id and client secret")
        elif isinstance(error, NetworkError):
            report.problems.append(f"{where}: unreachable: {url}: {error}")
        else:
            report.problems.append(f"{where}: unexpected answer from {url}: {error}")


def _probe(app: ApplicationSpec, client: httpx.Client | None) -> tuple[str, OAuthError | None]:
    """The token endpoint's URL and its refusal of a made-up code (``None``: it gave a token)."""
    fields = {"client_id": app.client_id, "client_secret": app.client_secret.reveal(),
              "redirect_uri": app.redirect_uri}
    code = PROBE_CODE_PREFIX + secrets.token_urlsafe(24)
    url = authorization_code_request(base_url=app.base_url, code=code, **fields).url
    try:
        with Factorial(access_token="", base_url=app.base_url, timeout=app.timeout,
                       client=client) as factorial:
            factorial.obtain_access_token(authorization_key=code, **fields)
    except OAuthError as error:
        return url, error
    return url, None
