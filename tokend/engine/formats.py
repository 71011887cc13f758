"""What each output format holds: the bytes of one output file for one token.

The refresh token never appears in any format; an env file holds one unquoted
line that systemd, docker and a shell all read alike.
"""

from __future__ import annotations

import json
import re

from tokend.errors import OutputError
from tokend.model import OutputSpec, Token
from tokend.timing import format_utc

# One unquoted line must mean the same to systemd's EnvironmentFile=, docker's
# --env-file (which keeps quotes literally) and a POSIX shell's ``. file``, so
# only characters that none of them treat specially are allowed.
_ENV_SAFE_VALUE = re.compile(r"[A-Za-z0-9._~+/=-]+")
_ENV_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def render(spec: OutputSpec, token: Token, *, expires_at: float) -> bytes:
    """The bytes of one output file; the refresh token never appears in any format.

    ``expires_at`` is the expiry on this host's clock (the record's, not the
    server's ``created_at``): consumers compare it with the same clock.
    """
    if spec.format == "token":
        return token.access_token.encode()
    if spec.format == "env":
        return _render_env(spec, token)
    if spec.format == "json":
        document = {
            "access_token": token.access_token,
            "token_type": token.token_type,
            "scope": token.scope,
            "expires_at": format_utc(expires_at),
        }
        return (json.dumps(document, sort_keys=True) + "\n").encode()
    raise OutputError(f"{spec.path}: unknown output format {spec.format!r}")


def _render_env(spec: OutputSpec, token: Token) -> bytes:
    if not _ENV_VARIABLE.fullmatch(spec.variable):
        raise OutputError(f"{spec.path}: {spec.variable!r} is not a valid variable name")
    value = token.access_token
    # A leading "~" would be tilde-expanded by a shell in an assignment.
    if not _ENV_SAFE_VALUE.fullmatch(value) or value.startswith("~"):
        raise OutputError(
            f"{spec.path}: the access token contains characters that cannot be written "
            "unquoted to an env file"
        )
    return f"{spec.variable}={value}\n".encode()
