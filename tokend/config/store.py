"""``store:``, the shared PostgreSQL store's connection string, checked without a driver.

libpq takes a URL (``postgresql://user@host:5432/db?sslmode=verify-full``) or key/value
pairs (``host=db user=tokend dbname=tokend``). Both are checked here, so a typo is a
located config error rather than a connection failure at start, and psycopg is needed
only by a daemon that uses the store. A password written into the string is refused:
it belongs in ``store_password_file`` (or ``_env``/``_credential``), like a client
secret, where it is never logged. No message quotes the value, which may hold one.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

SCHEMES = ("postgresql", "postgres")
PASSWORD_HINT = (
    "holds a password; give it with store_password_file, store_password_env "  # noqa: S105
    "or store_password_credential instead, so it never shows in a log")
# key = value, the value bare or single-quoted with backslash escapes (libpq's rules).
_PAIR = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']+)\s*")
_KEYS = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "channel_binding",
    "connect_timeout", "client_encoding", "options", "application_name",
    "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
    "keepalives_count", "tcp_user_timeout", "replication", "gssencmode", "sslmode",
    "requiressl", "sslcompression", "sslcert", "sslkey", "sslpassword", "sslcertmode",
    "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version",
    "ssl_max_protocol_version", "krbsrvname", "gsslib", "gssdelegation", "service",
    "target_session_attrs", "load_balance_hosts", "require_auth",
})


def check_store(value: str) -> str:
    """``value`` if libpq could read it as a PostgreSQL connection string without a password;
    a ``ValueError`` saying what is wrong otherwise."""
    keys = _url_keys(value) if "://" in value else _pair_keys(value)
    unknown = sorted(keys - _KEYS)
    if unknown:
        raise ValueError(f"has unknown connection parameter(s) {', '.join(unknown)}; see "
                         "libpq's connection parameters")
    if "password" in keys or "sslpassword" in keys:
        raise ValueError(PASSWORD_HINT)
    return value


def _url_keys(value: str) -> set[str]:
    parts = urlsplit(value)
    if parts.scheme not in SCHEMES:
        raise ValueError("must be a postgresql:// URL (postgresql://USER@HOST:PORT/DATABASE) "
                         "or libpq key=value pairs")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if ":" in userinfo:
        raise ValueError(PASSWORD_HINT)
    for host in hosts.split(","):
        port = host.rsplit("]", 1)[-1].partition(":")[2]
        if port and not port.isdigit():
            raise ValueError("has a port that is not a number")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    try:
        return {key for key, _ in parse_qsl(parts.query, strict_parsing=bool(parts.query))}
    except ValueError:
        raise ValueError("has a malformed ?query; write it as ?key=value&key=value") from None


def _pair_keys(value: str) -> set[str]:
    keys: set[str] = set()
    position = 0
    while position < len(value):
        found = _PAIR.match(value, position)
        if found is None:
            raise ValueError("must be a postgresql:// URL (postgresql://USER@HOST:PORT/DATABASE) "
                             "or libpq key=value pairs such as 'host=db user=tokend "
                             "dbname=tokend'")
        keys.add(found.group(1))
        position = found.end()
    if not keys:
        raise ValueError("is empty")
    return keys
