"""tokend.consumer: the token from any of tokend's file formats, and an auth that follows it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.requests_like import Adapter, Request, call
from tokend.consumer import TokenAuth, read_token
from tokend.errors import TokenFileError

OLD = "old-token-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
NEW = "new-token-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"


def _write(path: Path, text: str) -> None:
    """Replace ``path`` as tokend does: a new file renamed over the old one."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.rename(temp, path)


@pytest.mark.parametrize(
    ("content", "variable"),
    [
        (OLD, None),
        (OLD + "\n", None),
        (f"FACTORIAL_ACCESS_TOKEN={OLD}\n", None),
        (f"PAYROLL_TOKEN={OLD}\n", None),
        (f"# written by tokend\nOTHER=x\nFACTORIAL_ACCESS_TOKEN={OLD}\n", None),
        (f"A=x\nB={OLD}\n", "B"),
        (json.dumps({"access_token": OLD, "token_type": "Bearer", "scope": "read",
                     "expires_at": "2026-01-01T00:00:00Z"}) + "\n", None),
    ],
    ids=["raw", "raw-newline", "env", "env-renamed", "env-several", "env-chosen", "json"],
)
def test_every_format_tokend_writes_gives_the_token(
    tmp_path: Path, content: str, variable: str | None
) -> None:
    """The bare token, an env file (any variable) and the JSON document all read the same."""
    path = tmp_path / "token"
    path.write_text(content)
    assert read_token(path, variable=variable) == OLD


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("two words", "not a token"),
        ("A=x\nB=y\n", "FACTORIAL_ACCESS_TOKEN"),
        ("FACTORIAL_ACCESS_TOKEN=\n", "FACTORIAL_ACCESS_TOKEN is empty"),
        ('{"token_type": "Bearer"}', "access_token"),
        ("{not json", "not valid JSON"),
    ],
    ids=["empty", "spaces", "env-without-the-variable", "env-empty", "json-without", "bad-json"],
)
def test_a_file_without_a_token_is_a_clear_error(
    tmp_path: Path, content: str, message: str
) -> None:
    """What is wrong is named, with the path; never the file's content."""
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(TokenFileError, match=message) as caught:
        read_token(path)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """No file: the path and the OS's reason."""
    with pytest.raises(TokenFileError, match="No such file"):
        read_token(tmp_path / "absent")


def test_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    """Same inode, mtime and size: the cached token, so a call per request costs one stat."""
    path = tmp_path / "token"
    path.write_text(OLD)
    assert read_token(path) == OLD
    before = os.stat(path)
    # Overwrite in place and put the mtime back: only a read of the content could notice.
    path.write_text(NEW)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert read_token(path) == OLD
    _write(path, NEW)
    assert read_token(path) == NEW


def _server(handler: Callable[[str], int], seen: list[str]) -> httpx.MockTransport:
    """A server answering ``handler(token)`` for each request's bearer token."""

    def answer(request: httpx.Request) -> httpx.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        seen.append(token)
        return httpx.Response(handler(token))

    return httpx.MockTransport(answer)


def test_httpx_requests_carry_the_current_token(tmp_path: Path) -> None:
    """Every request reads the file: a rotation is picked up by the next request."""
    path = tmp_path / "token"
    path.write_text(OLD)
    seen: list[str] = []
    with httpx.Client(transport=_server(lambda _: 200, seen), auth=TokenAuth(path)) as client:
        client.get("http://api.test/me")
        _write(path, NEW)
        client.get("http://api.test/me")
    assert seen == [OLD, NEW]


def test_a_401_after_a_rotation_is_retried_once_with_the_new_token(tmp_path: Path) -> None:
    """The token rotated under the request: one retry with the file's new token succeeds."""
    path = tmp_path / "token"
    path.write_text(OLD)
    seen: list[str] = []

    def handler(token: str) -> int:
        if token == OLD:
            _write(path, NEW)  # the daemon rotated meanwhile, and the new token killed the old
            return 401
        return 200

    with httpx.Client(transport=_server(handler, seen), auth=TokenAuth(path)) as client:
        response = client.get("http://api.test/me")
    assert response.status_code == 200
    assert seen == [OLD, NEW]


def test_a_401_with_an_unchanged_file_is_not_retried(tmp_path: Path) -> None:
    """Retrying the same token cannot help: the 401 goes back to the caller after one request."""
    path = tmp_path / "token"
    path.write_text(OLD)
    seen: list[str] = []
    with httpx.Client(transport=_server(lambda _: 401, seen), auth=TokenAuth(path)) as client:
        response = client.get("http://api.test/me")
    assert response.status_code == 401
    assert seen == [OLD]


def test_the_async_flow_retries_as_the_sync_one(tmp_path: Path) -> None:
    """httpx.AsyncClient gets the same read-per-request and one retry after a rotation."""
    path = tmp_path / "token"
    path.write_text(OLD)
    seen: list[str] = []

    def handler(token: str) -> int:
        if token == OLD:
            _write(path, NEW)
            return 401
        return 200

    async def main() -> int:
        async with httpx.AsyncClient(transport=_server(handler, seen),
                                     auth=TokenAuth(path)) as client:
            return (await client.get("http://api.test/me")).status_code

    assert asyncio.run(main()) == 200
    assert seen == [OLD, NEW]


def _bearer(request: Request, seen: list[str], handler: Callable[[str], int]) -> int:
    token = request.headers["Authorization"].removeprefix("Bearer ")
    seen.append(token)
    return handler(token)


def test_a_requests_style_call_sets_the_current_token(tmp_path: Path) -> None:
    """As a requests ``auth=`` callable: the Authorization header from the file, per request."""
    path = tmp_path / "token"
    path.write_text(f"FACTORIAL_ACCESS_TOKEN={OLD}\n")
    auth = TokenAuth(path)
    seen: list[str] = []
    adapter = Adapter(lambda request: _bearer(request, seen, lambda _: 200))
    assert call(auth, adapter).status_code == 200
    _write(path, f"FACTORIAL_ACCESS_TOKEN={NEW}\n")
    assert call(auth, adapter).status_code == 200
    assert seen == [OLD, NEW]


def test_a_requests_style_401_after_a_rotation_is_retried_once(tmp_path: Path) -> None:
    """The response hook re-reads the file and resends once when the token changed."""
    path = tmp_path / "token"
    path.write_text(OLD)

    def handler(token: str) -> int:
        if token == OLD:
            _write(path, NEW)
            return 401
        return 200

    seen: list[str] = []
    response = call(TokenAuth(path), Adapter(lambda request: _bearer(request, seen, handler)))
    assert response.status_code == 200
    assert seen == [OLD, NEW]
    assert [r.status_code for r in response.history] == [401]
    assert response.history[0].closed


def test_a_requests_style_401_with_an_unchanged_file_is_returned(tmp_path: Path) -> None:
    """No rotation: the 401 is the answer, and nothing is resent."""
    path = tmp_path / "token"
    path.write_text(OLD)
    seen: list[str] = []
    adapter = Adapter(lambda request: _bearer(request, seen, lambda _: 401))
    assert call(TokenAuth(path), adapter).status_code == 401
    assert seen == [OLD]


def test_importing_the_consumer_loads_none_of_the_daemons_dependencies() -> None:
    """A consumer program installs tokend for this module: it pulls in httpx and nothing else."""
    script = ("import json, sys, tokend.consumer; print(json.dumps(sorted(m for m in "
              "('pydantic', 'structlog', 'yaml', 'prometheus_client', 'asyncinotify', "
              "'sqlite3') if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30, check=True)
    assert json.loads(result.stdout) == []
