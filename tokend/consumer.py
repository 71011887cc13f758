"""For the programs that use the tokens: read the current token, and an auth that follows it.

tokend replaces its output files by rename whenever a token rotates, so a consumer
that read the token once at start-up ends up holding a dead one. :func:`read_token`
is cheap enough to call before every request (a ``stat`` while the file is
unchanged), and :class:`TokenAuth` does exactly that for httpx and for requests,
retrying once when a request was refused because the token rotated under it::

    import httpx
    from tokend.consumer import TokenAuth

    client = httpx.Client(base_url="https://api.factorialhr.com",
                          auth=TokenAuth("/run/tokend/payroll-alice.token"))
    me = client.get("/api/v1/me").json()

This module imports httpx (for :class:`httpx.Auth`) and nothing else the daemon
depends on, so a consumer does not load pydantic, structlog or PyYAML for it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Generator, MutableMapping
from typing import Any, Protocol, TypeVar

import httpx

from tokend.errors import TokenFileError
from tokend.model import DEFAULT_ENV_VARIABLE

_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)")
_Identity = tuple[int, int, int, int]
# One entry per path and variable, replaced when the file changes: a program calling
# read_token per request holds no object of its own, so the cache has to live here.
_CACHE: dict[tuple[str, str | None], tuple[_Identity, str]] = {}


def read_token(path: str | os.PathLike[str], *, variable: str | None = None) -> str:
    """The access token in ``path``, in any of the formats tokend writes.

    * ``token`` (raw): the bare token (surrounding whitespace is ignored);
    * ``env``: ``NAME=VALUE`` lines ending in a newline (``#`` comments and blank
      lines allowed); the token is ``variable``'s value, else the only variable's,
      else ``FACTORIAL_ACCESS_TOKEN``'s;
    * ``json``: an object whose ``access_token`` is the token.

    The token is cached by the file's device, inode, mtime and size: tokend
    replaces the file by rename, which changes its inode, so an unchanged file
    costs one ``stat`` and no read. Raises :class:`TokenFileError` naming the
    path and what is wrong, never the file's content.
    """
    name = os.fspath(path)
    key = (name, variable)
    try:
        info = os.stat(name)
    except OSError as exc:
        raise TokenFileError(f"{name}: cannot read: {exc.strerror}") from None
    cached = _CACHE.get(key)
    if cached is not None and cached[0] == _identity(info):
        return cached[1]
    try:
        with open(name, "rb") as file:
            # The identity of what was read, not of what was stat'ed: a rename in
            # between must not file the new content under the old file's identity.
            identity = _identity(os.fstat(file.fileno()))
            raw = file.read()
    except OSError as exc:
        raise TokenFileError(f"{name}: cannot read: {exc.strerror}") from None
    token = _parse(raw, name, variable)
    _CACHE[key] = (identity, token)
    return token


def _identity(info: os.stat_result) -> _Identity:
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


def _parse(raw: bytes, name: str, variable: str | None) -> str:
    """The token in a file's bytes: JSON if it starts with ``{``, env if it is assignment
    lines ending in a newline (tokend's raw output never ends in one), else raw."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TokenFileError(f"{name}: is not UTF-8 text") from None
    stripped = text.strip()
    if not stripped:
        raise TokenFileError(f"{name}: is empty")
    if stripped.startswith("{"):
        return _from_json(stripped, name)
    lines = [line.strip() for line in stripped.splitlines()]
    assignments = [_ASSIGNMENT.fullmatch(line) for line in lines
                   if line and not line.startswith("#")]
    if text.endswith("\n") and assignments and all(assignments):
        values = {match.group(1): match.group(2) for match in assignments if match}
        return _from_env(values, name, variable)
    if len(stripped.split()) != 1:
        raise TokenFileError(f"{name}: is not a token file (a raw token has no spaces)")
    return stripped


def _from_json(text: str, name: str) -> str:
    try:
        document = json.loads(text)
    except ValueError:
        raise TokenFileError(f"{name}: is not valid JSON") from None
    token = document.get("access_token") if isinstance(document, dict) else None
    if not isinstance(token, str) or not token:
        raise TokenFileError(f"{name}: the JSON object has no access_token")
    return token


def _from_env(values: dict[str, str], name: str, variable: str | None) -> str:
    if variable is None:
        variable = next(iter(values)) if len(values) == 1 else DEFAULT_ENV_VARIABLE
    if variable not in values:
        raise TokenFileError(f"{name}: the env file does not set {variable}")
    if not values[variable]:
        raise TokenFileError(f"{name}: {variable} is empty")
    return values[variable]


class _RequestLike(Protocol):
    """What a requests ``auth=`` callable is given (``requests.PreparedRequest``)."""

    headers: MutableMapping[str, str]


_R = TypeVar("_R", bound=_RequestLike)


class TokenAuth(httpx.Auth):
    """``Authorization: Bearer`` with the token currently in ``path``, read per request.

    Works as ``auth=`` for httpx (sync and async clients) and for requests. When
    the server answers 401 and the file now holds another token (it rotated while
    the request was on its way, and the new token's first use killed the old one),
    the request is sent once more with the new token; an unchanged file means the
    401 is real, and it is returned as is. A request whose body is a stream cannot
    be sent twice: give such requests their body as bytes.
    """

    def __init__(self, path: str | os.PathLike[str], *, variable: str | None = None) -> None:
        self._path = os.fspath(path)
        self._variable = variable

    def _header(self) -> str:
        return f"Bearer {read_token(self._path, variable=self._variable)}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """httpx's flow (its sync and async clients both drive it): send, and on a 401
        send again once if the file's token changed."""
        sent = request.headers["Authorization"] = self._header()
        response = yield request
        if response.status_code == httpx.codes.UNAUTHORIZED:
            fresh = self._header()
            if fresh != sent:
                request.headers["Authorization"] = fresh
                yield request

    def __call__(self, request: _R) -> _R:
        """requests' ``auth=``: set the header, and register the hook that retries a 401."""
        request.headers["Authorization"] = self._header()
        register = getattr(request, "register_hook", None)
        if register is not None:
            register("response", self._retry_rotated)
        return request

    def _retry_rotated(self, response: Any, **kwargs: Any) -> Any:
        """requests' response hook: resend once through the same adapter, as requests'
        digest auth does (the adapter runs no hooks, so a retry is never retried)."""
        if response.status_code != httpx.codes.UNAUTHORIZED:
            return response
        fresh = self._header()
        if fresh == response.request.headers.get("Authorization"):
            return response
        _ = response.content  # read to the end, so the connection can be reused
        response.close()
        retry = response.request.copy()
        retry.headers["Authorization"] = fresh
        again = response.connection.send(retry, **kwargs)
        again.history.append(response)
        again.request = retry
        return again
