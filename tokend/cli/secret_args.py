"""Secrets a command needs, taken from stdin, a file or the environment instead of argv.

Anything on the command line shows in ``ps`` to every local user and lands in
shell history, so ``authorize`` reads its key with ``--key -`` or ``--key-file`` and
``sandbox`` its clients with ``--client-file`` or ``$TOKEND_SANDBOX_CLIENTS``. The
forms that put the secret on the command line keep working. A malformed value is
named by where it came from, never echoed: it may be a secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

SANDBOX_CLIENTS_VARIABLE = "TOKEND_SANDBOX_CLIENTS"


class SecretInputError(ValueError):
    """A secret that cannot be read or is malformed; the message names where it came from."""


def authorization_key(key: str | None, key_file: str | None, stdin: TextIO) -> str | None:
    """The key from ``--key KEY``, ``--key -`` (stdin) or ``--key-file PATH``; ``None`` when
    none was given (the key is then asked for or caught by the listener)."""
    if key_file is not None:
        text, where = _read(key_file, "--key-file"), f"--key-file {key_file}"
    elif key == "-":
        text, where = stdin.read(), "--key - (stdin)"
    elif key is not None:
        text, where = key, "--key"
    else:
        return None
    if not text.strip():
        raise SecretInputError(f"the authorization key from {where} is empty")
    return text.strip()


def sandbox_clients(
    given: Sequence[str], files: Sequence[str], environ: Mapping[str, str]
) -> dict[str, str]:
    """Clients from ``--client ID:SECRET``, each ``--client-file`` (one a line) and
    ``$TOKEND_SANDBOX_CLIENTS`` (separated by white space); empty when none is given."""
    entries = [(f"--client (entry {number})", pair) for number, pair in enumerate(given, 1)]
    for name in files:
        text = _read(name, "--client-file")
        entries += [(f"{name}:{number}", line.strip())
                    for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    variable = environ.get(SANDBOX_CLIENTS_VARIABLE, "")
    entries += [(f"${SANDBOX_CLIENTS_VARIABLE} (entry {number})", pair)
                for number, pair in enumerate(variable.split(), 1)]
    clients = {}
    for where, pair in entries:
        client_id, sep, secret = pair.partition(":")
        if not sep or not client_id or not secret:
            raise SecretInputError(f"{where} must be ID:SECRET")
        clients[client_id] = secret
    return clients


def _read(name: str, option: str) -> str:
    try:
        return Path(name).read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not text"
        raise SecretInputError(f"cannot read {option} {name}: {reason}") from None
