"""PKCE (RFC 7636) with S256: proof that whoever exchanges a code is whoever asked for it.

The authorize link carries ``code_challenge`` (the verifier's SHA-256, base64url
without padding) and the exchange the ``code_verifier``, so an authorization code
caught on its way (a program squatting the redirect's port, a proxy's log) is
useless without the verifier, which never leaves this process. Servers without
PKCE ignore both parameters.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass

METHOD = "S256"


def s256(verifier: str) -> str:
    """The S256 challenge of ``verifier``: what the server compares the verifier against."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, repr=False)
class Pkce:
    """A verifier and its challenge; ``repr`` shows neither (the verifier is a secret)."""

    verifier: str

    @classmethod
    def new(cls) -> Pkce:
        """A fresh verifier: 64 characters of the RFC's unreserved alphabet (43 to 128)."""
        return cls(secrets.token_urlsafe(48))

    @property
    def challenge(self) -> str:
        return s256(self.verifier)

    def __repr__(self) -> str:
        return "Pkce(...)"
