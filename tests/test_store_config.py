"""``store:``: the shared PostgreSQL store in the config, its password sourced like a client
secret and never shown, its connection string checked with a located error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_config import APP, error_of, load
from tokend.model import Secret, StoreSpec

URL = "postgresql://tokend@db.example.org:5432/tokend"
PASSWORD = "db-Pa55word-do-not-show"


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a scratch directory, as test_config does, so messages name ``config.yaml``."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def with_store(lines: str) -> str:
    return f"{lines}\n{APP}"


def test_without_store_the_sqlite_store_in_state_dir_is_used() -> None:
    """The embedded store stays the default: nothing to configure."""
    assert load(APP).store is None


@pytest.mark.parametrize("conninfo", [
    URL,
    "postgres://db.example.org/tokend?sslmode=verify-full&application_name=tokend",
    "postgresql://tokend@db1:5432,db2:5432/tokend?target_session_attrs=read-write",
    "postgresql:///tokend",
    "host=db.example.org port=5432 user=tokend dbname=tokend",
    "host=db dbname='tokend store' sslmode=require",
])
def test_a_libpq_url_or_key_value_string_is_accepted(conninfo: str) -> None:
    """Both forms libpq reads are taken as written."""
    config = load(with_store(f'store: "{conninfo}"'))
    assert config.store == StoreSpec(conninfo=conninfo)


@pytest.mark.parametrize("source", ["file", "env", "credential"])
def test_the_store_password_comes_from_where_a_client_secret_can(
    workdir: Path, source: str
) -> None:
    """store_password_file / _env / _credential, read as client secrets are."""
    (workdir / "creds").mkdir()
    (workdir / "creds" / "db").write_text(PASSWORD + "\n")
    (workdir / "db.password").write_text(PASSWORD + "\n")
    given = {"file": "store_password_file: db.password", "env": "store_password_env: DB_PASS",
             "credential": "store_password_credential: db"}[source]
    config = load(with_store(f"store: {URL}\n{given}"),
                  {"DB_PASS": PASSWORD, "CREDENTIALS_DIRECTORY": str(workdir / "creds")})
    assert config.store is not None
    same = config.store.password == Secret(PASSWORD)
    assert same, "the password read differs"


def test_a_missing_password_file_is_a_located_error() -> None:
    """The same message as for a client secret file, at the key that names it."""
    message = error_of(with_store(f"store: {URL}\nstore_password_file: nowhere"))
    assert message.startswith("config.yaml:2:22: store_password_file: cannot read the secret "
                              "from"), message
    assert "no such file" in message


def test_two_password_sources_conflict() -> None:
    """The password is given in one way only, as a client secret is."""
    message = error_of(with_store(f"store: {URL}\nstore_password_env: A\n"
                                  "store_password_file: b"), {"A": "x"})
    assert "config.yaml:3:1: store_password_file: conflicts with store_password_env: give the " \
           "store password in exactly one way" in message


def test_a_store_password_without_a_store_is_an_error() -> None:
    """A password for no store is a leftover or a typo: say so instead of ignoring it."""
    message = error_of(with_store("store_password_env: DB_PASS"), {"DB_PASS": "x"})
    assert "config.yaml:1:1: store_password_env: only applies with store:" in message


@pytest.mark.parametrize(("conninfo", "expected"), [
    (f"postgresql://tokend:{PASSWORD}@db/tokend", "holds a password; give it with "
     "store_password_file"),
    (f"postgresql://db/tokend?password={PASSWORD}", "holds a password"),
    (f"host=db password={PASSWORD}", "holds a password"),
    ("mysql://db/tokend", "must be a postgresql:// URL"),
    ("postgresql://db/tokend?sslmod=require", "unknown connection parameter(s) sslmod"),
    ("host=db dbname", "or libpq key=value pairs"),
    ("postgresql://db:fivefour/tokend", "port that is not a number"),
])
def test_a_bad_connection_string_is_a_located_error_that_never_quotes_it(
    conninfo: str, expected: str
) -> None:
    """Located at store:, saying what is wrong, without the value (it may hold a password)."""
    message = error_of(with_store(f'store: "{conninfo}"'))
    assert message.startswith("config.yaml:1:8: store: "), message
    assert expected in message
    leaked = PASSWORD in message or conninfo in message
    assert not leaked, "the connection string is quoted in the error"
