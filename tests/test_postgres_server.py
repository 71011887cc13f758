"""The tests' PostgreSQL server: reachable with its password only, and restartable as a crash."""

from __future__ import annotations

import psycopg
import pytest

from tests.postgres import PostgresServer


def test_the_server_answers_on_loopback_with_its_password(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """Each test gets its own empty database, reached over TCP as a deployment reaches it."""
    with psycopg.connect(postgres_url, password=postgres_server.password) as conn:
        row = conn.execute("SELECT current_database(), count(*) FROM pg_tables "
                           "WHERE schemaname = 'public'").fetchone()
    assert row is not None
    assert row[0] == postgres_url.rsplit("/", 1)[1]
    assert row[1] == 0


def test_a_wrong_password_is_refused(postgres_server: PostgresServer, postgres_url: str) -> None:
    """Host connections need the password: a store that forgot to send it is told so."""
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(postgres_url, password="wrong", connect_timeout=5).close()


def test_the_server_survives_an_immediate_stop_and_start(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """The outage tests stop the server as a crash would and start it again."""
    with psycopg.connect(postgres_url, password=postgres_server.password,
                         autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (1)")
    postgres_server.stop()
    postgres_server.start()
    with psycopg.connect(postgres_url, password=postgres_server.password) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(1,)]
