"""Output files: exact formats, atomic and durable replacement, and refusal of unsafe targets."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import NOBODY, as_nobody
from tokend.engine.atomic import write_atomic
from tokend.engine.outputs import remove_outputs, render, write_outputs
from tokend.errors import OutputError
from tokend.formats import PLACEHOLDERS
from tokend.model import OutputSpec, Token, TokenName

ACCESS = "acc.ess-TOKEN_~+/=9"
REFRESH = "refresh-secret-value"
CREATED = int(datetime(2026, 11, 29, 3, 21, 56, tzinfo=UTC).timestamp())
EXPIRES = CREATED + 3600.0
"""The expiry on this host's clock, as the record counts it (here the server's clock agrees)."""
NAME = TokenName("payroll", "alice", "read")

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown or drop privileges")


def make_token(access: str = ACCESS) -> Token:
    return Token(
        access_token=access,
        token_type="Bearer",
        expires_in=3600,
        refresh_token=REFRESH,
        scope="read",
        created_at=CREATED,
    )


def rendered(spec: OutputSpec, token: Token, *, expires_at: float) -> bytes:
    """What ``render`` writes for ``spec``, an hour before ``expires_at``."""
    return render(spec, token, name=NAME, expires_at=expires_at, now=expires_at - 3600)


@pytest.fixture
def umask_077() -> Iterator[None]:
    """A strict umask, to prove modes are set explicitly rather than left to umask."""
    previous = os.umask(0o077)
    yield
    os.umask(previous)


def test_token_format_is_the_bare_access_token(tmp_path: Path) -> None:
    """A program reading the token file gets exactly the token, with no trailing newline."""
    content = rendered(OutputSpec(tmp_path / "t"), make_token(), expires_at=EXPIRES)
    assert content == ACCESS.encode(), "token differs"


def test_env_format_is_one_unquoted_assignment(tmp_path: Path) -> None:
    """The env file is one VAR=token line, as systemd, docker and sh all read it."""
    content = rendered(OutputSpec(tmp_path / "e", format="env"), make_token(), expires_at=EXPIRES)
    assert content == f"FACTORIAL_ACCESS_TOKEN={ACCESS}\n".encode(), "env line differs"


def test_env_format_uses_the_configured_variable(tmp_path: Path) -> None:
    """The operator can choose the variable name the consuming program expects."""
    spec = OutputSpec(tmp_path / "e", format="env", variable="API_TOKEN")
    content = rendered(spec, make_token(), expires_at=EXPIRES)
    assert content.startswith(b"API_TOKEN="), "variable name not used"


def test_json_format_has_sorted_public_fields_and_utc_expiry(tmp_path: Path) -> None:
    """The JSON file holds token, type, scope and the expiry as ISO 8601 UTC, keys sorted."""
    content = rendered(OutputSpec(tmp_path / "j", format="json"), make_token(), expires_at=EXPIRES)
    assert content.endswith(b"\n")
    document = json.loads(content)
    assert list(document) == ["access_token", "expires_at", "scope", "token_type"]
    assert document["expires_at"] == "2026-11-29T04:21:56Z"
    assert document["scope"] == "read"
    assert document["token_type"] == "Bearer"
    assert document["access_token"] == ACCESS, "access token differs"


def test_json_expiry_is_this_hosts_not_the_servers(tmp_path: Path) -> None:
    """A server clock 50 minutes behind does not move the expiry consumers read."""
    host_expiry = CREATED + 3000 + 3600.0
    content = rendered(OutputSpec(tmp_path / "j", format="json"), make_token(),
                     expires_at=host_expiry)
    assert json.loads(content)["expires_at"] == "2026-11-29T05:11:56Z"


@pytest.mark.parametrize("output_format", ["token", "env", "json", "template"])
def test_no_format_contains_the_refresh_token(tmp_path: Path, output_format: str) -> None:
    """Readers of output files can never steal the refresh token and take over the grant."""
    every = " ".join(f"{{{name}}}" for name in PLACEHOLDERS)
    spec = OutputSpec(tmp_path / "o", format=output_format,  # type: ignore[arg-type]
                      template=every if output_format == "template" else "")
    content = rendered(spec, make_token(), expires_at=EXPIRES)
    assert REFRESH.encode() not in content, "refresh token leaked"


UNSAFE_TOKENS = ['ab"c', "ab'c", "a b", "a$b", "a\nb", "a#b", "a\\b", "a`b", "~ab", ""]


@pytest.mark.parametrize("bad", UNSAFE_TOKENS)
def test_env_refuses_a_token_that_cannot_be_written_unquoted(tmp_path: Path, bad: str) -> None:
    """A token that would change meaning in some env-file reader is refused, not mangled."""
    with pytest.raises(OutputError) as caught:
        rendered(OutputSpec(tmp_path / "e", format="env"), make_token(bad), expires_at=EXPIRES)
    assert str(tmp_path / "e") in str(caught.value)


def test_env_refuses_an_invalid_variable_name(tmp_path: Path) -> None:
    """A variable name no shell accepts is reported instead of producing a broken file."""
    with pytest.raises(OutputError, match="not a valid variable name"):
        rendered(OutputSpec(tmp_path / "e", format="env", variable="1-BAD"), make_token(),
               expires_at=EXPIRES)


def test_env_file_sourced_by_sh_gives_back_the_token(tmp_path: Path) -> None:
    """`. file` in a POSIX shell sets the variable to exactly the token."""
    path = tmp_path / "token.env"
    write_atomic(path, rendered(OutputSpec(path, format="env"), make_token(), expires_at=EXPIRES))
    result = subprocess.run(
        ["sh", "-c", '. "$1"; printf %s "$FACTORIAL_ACCESS_TOKEN"', "sh", str(path)],
        capture_output=True,
        check=True,
        text=True,
    )
    assert result.stdout == ACCESS, "sourced token differs"


def test_files_are_private_by_default(tmp_path: Path) -> None:
    """Without a configured mode, only the owner can read the token."""
    path = tmp_path / "t"
    assert write_atomic(path, b"x") is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.usefixtures("umask_077")
def test_configured_mode_is_applied_regardless_of_umask(tmp_path: Path) -> None:
    """A configured mode such as 0644 is what the file gets, even under a strict umask."""
    path = tmp_path / "t"
    write_atomic(path, b"x", mode=0o644)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@as_root
def test_owner_and_group_are_applied(tmp_path: Path) -> None:
    """The file belongs to the configured owner and group, so that service can read it."""
    path = tmp_path / "t"
    write_atomic(path, b"x", mode=0o640, owner=NOBODY, group=NOBODY)
    info = path.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (NOBODY, NOBODY, 0o640)


def test_unchanged_content_is_not_rewritten(tmp_path: Path) -> None:
    """Writing the same token again leaves the file alone: no inotify noise, same inode."""
    path = tmp_path / "t"
    write_atomic(path, b"same")
    before = path.stat()
    assert write_atomic(path, b"same") is False
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_changed_content_replaces_the_file_atomically(tmp_path: Path) -> None:
    """A new token arrives as a new file: a reader holding the old one still sees it whole."""
    path = tmp_path / "t"
    write_atomic(path, b"old-token")
    with path.open("rb") as old:
        before = os.fstat(old.fileno()).st_ino
        assert write_atomic(path, b"new-token-longer") is True
        assert old.read() == b"old-token"
    assert path.read_bytes() == b"new-token-longer"
    assert path.stat().st_ino != before


def test_same_content_with_wrong_mode_is_fixed(tmp_path: Path) -> None:
    """A file whose permissions drifted is rewritten with the configured mode."""
    path = tmp_path / "t"
    write_atomic(path, b"same")
    path.chmod(0o666)
    assert write_atomic(path, b"same", mode=0o600) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("target_exists", [True, False])
def test_symlink_at_target_is_refused(tmp_path: Path, target_exists: bool) -> None:
    """A planted symlink cannot redirect the token elsewhere: the write is refused."""
    victim = tmp_path / "victim"
    if target_exists:
        victim.write_bytes(b"precious")
    link = tmp_path / "out"
    link.symlink_to(victim)
    with pytest.raises(OutputError, match="is a symlink; refusing") as caught:
        write_atomic(link, b"token")
    assert link.is_symlink()
    assert victim.read_bytes() == b"precious" if target_exists else not victim.exists()
    assert "token" not in str(caught.value).replace(str(tmp_path), "")


def test_directory_at_target_is_refused(tmp_path: Path) -> None:
    """A directory at an output path is never replaced, and its content stays."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep").write_bytes(b"keep")
    with pytest.raises(OutputError, match="is a directory"):
        write_atomic(target, b"token")
    assert (target / "keep").read_bytes() == b"keep"


def test_parent_that_is_a_file_gives_a_clear_error(tmp_path: Path) -> None:
    """An output under a regular file names that file as the problem."""
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OutputError, match=f"parent {blocker} is not a directory"):
        write_atomic(blocker / "sub" / "t", b"token")


@pytest.mark.usefixtures("umask_077")
def test_missing_parents_are_created_0755(tmp_path: Path) -> None:
    """Missing directories are created world-traversable, whatever the daemon's umask."""
    path = tmp_path / "a" / "b" / "t"
    write_atomic(path, b"token")
    assert path.read_bytes() == b"token"
    for directory in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A root-owned 0755 directory that an unprivileged user can reach but not write."""
    directory = Path(tempfile.mkdtemp(prefix="tokend-outputs-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


def _error_as_nobody(path: Path) -> str:
    """The OutputError message of ``write_atomic(path)`` run as ``nobody``."""

    def write() -> str:
        try:
            write_atomic(path, b"token")
        except OutputError as exc:
            return str(exc)
        return "written"

    return as_nobody(write)


@as_root
def test_unwritable_directory_gives_a_clear_error(shared_dir: Path) -> None:
    """Without write permission the error names the directory and says why."""
    message = _error_as_nobody(shared_dir / "t")
    assert message == (
        f"{shared_dir / 't'}: cannot create a file in {shared_dir}: Permission denied"
    )
    assert os.listdir(shared_dir) == []


def test_write_outputs_writes_the_rest_when_one_fails(tmp_path: Path) -> None:
    """One broken output does not keep the other files stale; the error names the broken one."""
    broken = tmp_path / "dir"
    broken.mkdir()
    good = tmp_path / "good"
    specs = [OutputSpec(broken), OutputSpec(good, format="json")]
    with pytest.raises(OutputError, match=f"1 output\\(s\\) failed: {broken} is a directory"):
        write_outputs(specs, make_token(), name=NAME, expires_at=EXPIRES)
    assert json.loads(good.read_bytes())["scope"] == "read"
    assert json.loads(good.read_bytes())["expires_at"] == "2026-11-29T04:21:56Z"


def test_a_template_output_is_written_with_its_placeholders_filled(tmp_path: Path) -> None:
    """format: template writes its text with the token's values, like any output (0600)."""
    path = tmp_path / "api.header"
    template = "Authorization: Bearer {access_token}\n# {name} until {expires_at}\n"
    spec = OutputSpec(path, format="template", template=template)
    assert write_outputs([spec], make_token(), name=NAME, expires_at=EXPIRES) == [path]
    same = path.read_text() == (f"Authorization: Bearer {ACCESS}\n"
                                "# payroll/alice/read until 2026-11-29T04:21:56Z\n")
    assert same, "the template output differs"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_templates_expires_in_counts_from_the_write(tmp_path: Path) -> None:
    """expires_in is the time left when the file is written, not when the token came."""
    path = tmp_path / "left"
    spec = OutputSpec(path, format="template", template="{expires_in}")
    left = 1000.0
    write_outputs([spec], make_token(), name=NAME, expires_at=time.time() + left)
    assert left - 5 <= int(path.read_text()) <= left


def test_write_outputs_returns_only_rewritten_paths(tmp_path: Path) -> None:
    """The caller learns which files changed, so it can log exactly those."""
    first, second = tmp_path / "a", tmp_path / "b"
    write_outputs([OutputSpec(first)], make_token(), name=NAME, expires_at=EXPIRES)
    written = write_outputs([OutputSpec(first), OutputSpec(second)], make_token(),
                            name=NAME, expires_at=EXPIRES)
    assert written == [second]


def test_no_temporary_file_left_after_success(tmp_path: Path) -> None:
    """A successful write leaves only the output file in its directory."""
    write_atomic(tmp_path / "t", b"token")
    assert os.listdir(tmp_path) == ["t"]


def test_no_temporary_file_left_after_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails midway leaves the old file and no debris."""
    (tmp_path / "t").write_bytes(b"old")

    def failing_rename(src: object, dst: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OutputError, match="cannot write: Input/output error"):
        write_atomic(tmp_path / "t", b"new")
    assert os.listdir(tmp_path) == ["t"]
    assert (tmp_path / "t").read_bytes() == b"old"


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    """While the token is rewritten again and again, every read is one whole version."""
    path = tmp_path / "t"
    versions = (b"short", b"L" * 20000)
    write_atomic(path, versions[0])
    done = threading.Event()

    def writer() -> None:
        try:
            for index in range(500):
                write_atomic(path, versions[index % 2])
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    torn = 0
    while not done.is_set():
        torn += path.read_bytes() not in versions
        reads += 1
    thread.join()
    assert torn == 0, f"{torn} of {reads} reads saw a partial file"
    assert reads > 0


def test_remove_outputs_deletes_files_only(tmp_path: Path) -> None:
    """Revoking removes the token files, ignores missing ones and leaves directories alone."""
    token_file = tmp_path / "t"
    token_file.write_bytes(b"token")
    directory = tmp_path / "d"
    directory.mkdir()
    missing = tmp_path / "missing"
    remove_outputs([OutputSpec(token_file), OutputSpec(missing), OutputSpec(directory)])
    assert not token_file.exists()
    assert directory.is_dir()


def test_a_new_tokens_files_are_written_without_reading_the_old_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token the server just issued cannot be in any file yet, so a refresh writes its
    outputs without opening the old files to compare them; a symlink is still refused."""
    path = tmp_path / "t"
    write_outputs([OutputSpec(path)], make_token("a" * 40), name=NAME, expires_at=EXPIRES)
    opened: list[str] = []
    real_open = os.open

    def recording_open(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fspath(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    new = make_token("b" * 40)  # as long as the old one: only reading it back could tell
    written = write_outputs([OutputSpec(path)], new, name=NAME, expires_at=EXPIRES,
                            new_token=True)
    monkeypatch.setattr(os, "open", real_open)
    holds_new = path.read_bytes() == new.access_token.encode()
    assert written == [path] and holds_new
    assert str(path) not in opened, "the old file was read back to compare"

    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(OutputError, match="symlink"):
        write_outputs([OutputSpec(link)], make_token("c" * 40), name=NAME, expires_at=EXPIRES,
                      new_token=True)
