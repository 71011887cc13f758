"""The one error tree of tokend.

Every error tokend raises on purpose derives from :class:`TokendError`, so a
caller can catch the whole family in one place (the CLI turns it into a
one-line message and an exit code)::

    TokendError
    ├── ConfigError                 the YAML file or what it points at is wrong
    ├── OAuthError                  the token endpoint did not give us a token
    │   ├── TransientOAuthError     retry later: 408, 429, 5xx, a proxy page,
    │   │   │                       a malformed success body
    │   │   └── NetworkError        timeout, refused or reset connection
    │   └── PermanentOAuthError     a person must act: invalid_grant,
    │                               invalid_client, other 4xx
    ├── StateError                  the state store cannot be opened or written
    │   └── AlreadyRunningError     another daemon holds the state directory
    ├── OutputError                 an output file cannot be written
    ├── NotFoundError               a token name matches nothing (or too much)
    └── TokenFileError              a consumer cannot read a token from a file

Messages never contain a secret: only OAuth error codes, the server's
description, status codes, file paths and key paths.
"""

from __future__ import annotations


class TokendError(Exception):
    """Root of every error tokend raises on purpose."""


class ConfigError(TokendError):
    """The configuration is invalid.

    ``location`` is ``file:line:col`` when the YAML allows it and ``key_path``
    the dotted path of the offending key, so the message points the operator
    at the exact place to fix.
    """

    def __init__(self, message: str, *, location: str = "", key_path: str = "") -> None:
        self.message = message
        self.location = location
        self.key_path = key_path
        prefix = "".join(f"{part}: " for part in (location, key_path) if part)
        super().__init__(f"{prefix}{message}")


class OAuthError(TokendError):
    """The token endpoint answered with an error, or could not be reached.

    ``error`` is the RFC 6749 error code (``invalid_grant`` …) or a code of
    our own for failures without one (``server_error``, ``network_error``,
    ``invalid_response``).
    """

    transient: bool = False

    def __init__(
        self,
        error: str,
        description: str = "",
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.error = error
        self.description = description
        self.status_code = status_code
        self.retry_after = retry_after
        text = error
        if status_code is not None:
            text = f"{text} (HTTP {status_code})"
        if description:
            text = f"{text}: {description}"
        super().__init__(text)


class TransientOAuthError(OAuthError):
    """Worth retrying with backoff; ``retry_after`` is the server's hint in seconds."""

    transient = True


class NetworkError(TransientOAuthError):
    """The server could not be reached or did not answer in time."""

    @classmethod
    def deadline(cls, seconds: float) -> NetworkError:
        """An exchange that did not complete within its total deadline (``timeout``)."""
        return cls("timeout", f"no complete answer within {seconds:g} s")


class PermanentOAuthError(OAuthError):
    """Retrying cannot help: a person must authorize again or fix the credentials."""


class StateError(TokendError):
    """The state store cannot be opened, migrated or written."""


class AlreadyRunningError(StateError):
    """Another tokend daemon already runs on the same state directory."""


class OutputError(TokendError):
    """An output file could not be written safely."""


class NotFoundError(TokendError):
    """A token name given by the operator matches no configured token, or several."""


class TokenFileError(TokendError):
    """A file given to :mod:`tokend.consumer` holds no token it can read (or cannot be read)."""
