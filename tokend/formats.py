"""The shapes a token is handed out in: one renderer per format, for the output files and
for ``tokend token``/``tokend exec`` alike, and the rules of ``format: template``.

The outputs (:mod:`tokend.engine.outputs`) and the command line render through the same
function, so a file and ``tokend token --format`` can never disagree. This module stays
light (no pydantic or httpx): ``tokend token`` renders with it on its fast path. No
format can show the refresh token or a secret: they are not among the values
(:func:`placeholders`) a renderer is given.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from tokend.names import DEFAULT_ENV_VARIABLE, ENV_VARIABLE
from tokend.timing import format_utc

PLACEHOLDERS = ("access_token", "token_type", "scope", "expires_at", "expires_in", "name",
                "app", "user")
"""What a template may show; ``expires_at`` is ISO 8601 UTC, ``expires_in`` whole seconds."""
_NEVER = ("refresh_token", "client_secret", "client_id")
# One unquoted line must mean the same to systemd's EnvironmentFile=, docker's
# --env-file (which keeps quotes literally) and a POSIX shell's ``. file``, so
# only characters that none of them treat specially are allowed.
_ENV_SAFE_VALUE = re.compile(r"[A-Za-z0-9._~+/=-]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")


def placeholders(*, access_token: str, token_type: str, scope: str, expires_at: float | None,
                 name: str, now: float) -> dict[str, str]:
    """The values every format draws from, for the token ``name`` (``APP/USER/SCOPE``).

    ``scope`` is the scope the server granted; ``expires_at`` is the expiry on this
    host's clock, and ``expires_in`` counts from ``now``, the moment of writing. A token
    that never expires (``None``, a company token) has both empty (JSON: ``null``).
    """
    app, user, _ = name.split("/", 2)
    return {"access_token": access_token, "token_type": token_type, "scope": scope,
            "expires_at": "" if expires_at is None else format_utc(expires_at),
            "expires_in": "" if expires_at is None else str(max(0, int(expires_at - now))),
            "name": name, "app": app, "user": user}


def render(kind: str, values: Mapping[str, str], *, variable: str = DEFAULT_ENV_VARIABLE,
           template: str = "") -> str:
    """The text of the format ``kind``: ``token``, ``env``, ``json``, ``header``, ``template``.

    ``variable`` is the env format's variable, ``template`` the template format's text.
    Raises ``ValueError`` saying what cannot be rendered (never the token).
    """
    renderer = _RENDERERS.get(kind)
    if renderer is None:
        raise ValueError(f"unknown format {kind!r}; formats: {', '.join(_RENDERERS)}")
    return renderer(values, variable, template)


def _token(values: Mapping[str, str], _variable: str, _template: str) -> str:
    return values["access_token"]


def _env(values: Mapping[str, str], variable: str, _template: str) -> str:
    if not ENV_VARIABLE.fullmatch(variable):
        raise ValueError(f"{variable!r} is not a valid variable name")
    token = values["access_token"]
    # A leading "~" would be tilde-expanded by a shell in an assignment.
    if not _ENV_SAFE_VALUE.fullmatch(token) or token.startswith("~"):
        raise ValueError("the access token contains characters that cannot be written "
                         "unquoted to an env file")
    return f"{variable}={token}\n"


def _json(values: Mapping[str, str], _variable: str, _template: str) -> str:
    import json  # noqa: PLC0415 -- a tenth of `tokend token`'s imports, for this format only

    document: dict[str, str | None] = {
        key: values[key] for key in ("access_token", "token_type", "scope", "expires_at")}
    document["expires_at"] = document["expires_at"] or None  # never expires: null
    return json.dumps(document, sort_keys=True) + "\n"


def _header(values: Mapping[str, str], _variable: str, _template: str) -> str:
    return f"Authorization: Bearer {values['access_token']}\n"


def _template(values: Mapping[str, str], _variable: str, template: str) -> str:
    return "".join(literal + (values[field] if field else "")
                   for literal, field in template_parts(template))


_RENDERERS: dict[str, Callable[[Mapping[str, str], str, str], str]] = {
    "token": _token, "env": _env, "json": _json, "header": _header, "template": _template}


def template_parts(template: str) -> list[tuple[str, str]]:
    """``template`` as (literal text, placeholder or ``""``) pairs.

    ``{name}`` is a placeholder, ``{{`` and ``}}`` a literal brace. Raises
    ``ValueError`` naming the first unknown placeholder or stray brace and its
    character position (from 1), so a config error points inside the template.
    Placeholders are plain names: no attribute access, index or format spec, which
    is what keeps a template from reaching anything but :data:`PLACEHOLDERS`.
    """
    parts: list[tuple[str, str]] = []
    literal: list[str] = []
    at = 0
    while at < len(template):
        char = template[at]
        if char in "{}" and template.startswith(char * 2, at):
            literal.append(char)
            at += 2
            continue
        if char == "}":
            raise ValueError(f"stray '}}' at character {at + 1} (write '}}}}' for a brace)")
        if char == "{":
            end = template.find("}", at)
            field = template[at + 1:end]
            if end < 0 or "{" in field:
                raise ValueError(f"'{{' at character {at + 1} is not closed (write '{{{{' for "
                                 "a brace)")
            if field not in PLACEHOLDERS:
                raise ValueError(_unknown(field, at))
            parts.append(("".join(literal), field))
            literal = []
            at = end + 1
            continue
        literal.append(char)
        at += 1
    parts.append(("".join(literal), ""))
    return parts


def _unknown(field: str, at: int) -> str:
    why = ("tokend never writes the refresh token or a secret" if field.strip() in _NEVER
           else f"placeholders are {', '.join(PLACEHOLDERS)}")
    # Only a name is quoted: whatever else sits between braces might be a pasted secret.
    shown = f" {{{field}}}" if _NAME.fullmatch(field) else ""
    return f"unknown placeholder{shown} at character {at + 1}; {why}"
