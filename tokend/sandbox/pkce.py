"""PKCE (RFC 7636) as a server checks it: the code's challenge against the exchange's verifier.

A code issued for a ``code_challenge`` is exchanged only with the matching
``code_verifier`` (else ``invalid_grant``, and the code stays usable for its
rightful holder); a code issued without one ignores a verifier, as servers that
do not know PKCE do. ``S256`` and ``plain`` are the RFC's methods; ``plain`` is
the default when the method is left out.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from tokend.oauth.pkce import s256
from tokend.sandbox.replies import refuse

METHODS = ("S256", "plain")


@dataclass(frozen=True)
class Challenge:
    """What the authorization request committed to."""

    value: str
    method: str

    @classmethod
    def of(cls, query: Mapping[str, str]) -> Challenge | None:
        """The authorization request's challenge, ``None`` without one; a bad one is refused."""
        value = query.get("code_challenge", "")
        if not value:
            return None
        method = query.get("code_challenge_method") or "plain"
        if method not in METHODS:
            raise refuse(400, "invalid_request",
                         f"code_challenge_method must be one of {', '.join(METHODS)}.")
        return cls(value, method)

    def verifies(self, form: Mapping[str, str]) -> bool:
        """Whether the exchange's ``code_verifier`` answers this challenge."""
        verifier = form.get("code_verifier", "")
        if not verifier:
            return False
        answer = s256(verifier) if self.method == "S256" else verifier
        return hmac.compare_digest(answer.encode(), self.value.encode())
