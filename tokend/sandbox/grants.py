"""What an authorization grants in the sandbox: which scopes, to which kind of owner, and the
refusal of a grant that is not (or no longer) valid.

Factorial's applications either know the seed library's ``read``/``write`` or carry
resource scopes of their own (``employees time_off``), and an admin may authorize a
**company** token (``resource_owner_type=company``) that never expires. The rules are
kept here so the OAuth model reads as the token lifecycle only.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokend.sandbox.replies import Refusal, refuse

# What a client registered without scopes may ask for (the seed library's scopes), as named.
_OLD_NAMES = {frozenset({"read"}): "read", frozenset({"write"}): "write",
              frozenset({"read", "write"}): "read write"}
OWNER_TYPES = ("user", "company")


def allowed_scopes(scopes: Iterable[str] | None) -> frozenset[str] | None:
    """A client's scopes as given to ``add_client``; ``None`` keeps the seed's scopes."""
    if scopes is None:
        return None
    if isinstance(scopes, str):
        raise ValueError("scopes must be a list of scope names, not one string")  # noqa: TRY004 -- the admin API answers ValueError with 400
    allowed = frozenset(scopes)
    if not allowed or not all(isinstance(s, str) and s and s.isprintable() and " " not in s
                              for s in allowed):
        raise ValueError("scopes must be non-empty scope names without spaces")
    return allowed


def granted_scope(requested: str, allowed: frozenset[str] | None) -> str:
    """The scope a token carries, as the server says it; refuse what the client may not have.

    Clients send ``read+write`` form-decoded or not, so ``+`` separates like a space. A
    client without scopes of its own answers the seed's scopes in one fixed order
    (``read write``), as it always has; a scoped client answers the requested scopes in
    the order asked, once each.
    """
    names = requested.replace("+", " ").split()
    if allowed is None:
        canonical = _OLD_NAMES.get(frozenset(names))
        if canonical is not None:
            return canonical
    elif names and allowed.issuperset(names):
        return " ".join(dict.fromkeys(names))
    raise refuse(400, "invalid_scope", "The requested scope is invalid, unknown, or malformed.")


def is_company(resource_owner_type: str) -> bool:
    """Whether an authorization is for the company (an empty value means a user)."""
    if resource_owner_type not in ("", *OWNER_TYPES):
        raise refuse(400, "invalid_request", "The resource_owner_type must be user or company.")
    return resource_owner_type == "company"


def invalid_grant() -> Refusal:
    """Doorkeeper's one answer for a code or refresh token it will not honour, whatever why."""
    return refuse(
        400, "invalid_grant", "The provided authorization grant is invalid, expired, revoked, "
        "does not match the redirection URI used in the authorization request, or was "
        "issued to another client.",
    )
