"""``tokend token`` and ``tokend exec``: the current token in a chosen format, or in the
environment of a command that replaces tokend.

Both run inside other programs (``$(…)``, a service's ``ExecStart=``, a credential
helper) many times a minute, so both keep to the fast path: the token straight from
the store with sqlite3 (:func:`tokend.store.current.current_token`), the config
read only for what a format needs (:mod:`tokend.config.quick`), the text from the
renderer the output files use (:mod:`tokend.formats`). Neither imports httpx, pydantic
or structlog.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tokend.config.quick import (
    QuickOutput,
    names_a_shared_store,
    quick_outputs,
    quick_state_dir,
)
from tokend.errors import ConfigError, OutputError
from tokend.formats import placeholders, render
from tokend.names import DEFAULT_ENV_VARIABLE
from tokend.store.current import (
    NoValidTokenError,
    Stored,
    UsableToken,
    current_token,
    usable_token,
)

EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127
"""A command that cannot be run: the statuses ``env``, ``sudo`` and the shells use."""


def token_text(config: Path, name: str, kind: str, *, now: float) -> str:
    """The current token of ``name`` in the format ``kind``, ending with a newline.

    ``env`` uses the variable of the token's first env output, ``template`` the
    template of its first template output (a token without one is a usage error).
    """
    found = _current(config, name, now=now)
    full = found.name
    outputs = quick_outputs(config, [full])[full] if kind in ("env", "template") else []
    template = ""
    if kind == "template":
        templates = [output.template for output in outputs if output.kind == "template"]
        if not templates:
            raise ConfigError(f"{full} has no output with format: template in {config}")
        template = templates[0]
    values = placeholders(access_token=found.access_token,
                          token_type=found.token_type, scope=found.scope,
                          expires_at=found.expires_at, name=full, now=now)
    try:
        text = render(kind, values, variable=_variable(outputs), template=template)
    except ValueError as error:
        if kind == "template":
            raise ConfigError(f"{config}: the template of {full}: {error}; run "
                              "`tokend check`") from None
        raise OutputError(f"{full} cannot be shown as {kind}: {error}") from None
    return text if text.endswith("\n") else text + "\n"


def exec_environment(config: Path, names: Sequence[str], *, now: float) -> dict[str, str]:
    """The variables ``tokend exec`` adds: each token under its env output's ``variable:``
    (else ``FACTORIAL_ACCESS_TOKEN``); two tokens under one name are a config error."""
    tokens = {found.name: found.access_token
              for found in (_current(config, name, now=now) for name in names)}
    outputs = quick_outputs(config, list(tokens))
    environment: dict[str, str] = {}
    owners: dict[str, str] = {}
    for name, access_token in tokens.items():
        variable = _variable(outputs[name])
        if variable in owners:
            raise ConfigError(
                f"{owners[variable]} and {name} would both be {variable} in the command's "
                "environment; give their env outputs distinct `variable:` names")
        owners[variable] = name
        environment[variable] = access_token
    return environment


def _current(config: Path, name: str, *, now: float) -> UsableToken:
    """The usable token ``name`` names, from the SQLite file in the state directory, or from
    the shared PostgreSQL store when the config names one."""
    if not names_a_shared_store(config):
        return current_token(quick_state_dir(config), name, now=now)
    # The whole config (for the store's password) and psycopg are loaded only here.
    from tokend.config.load import load_config  # noqa: PLC0415 -- see above
    from tokend.model import resolve_token  # noqa: PLC0415 -- see above
    from tokend.store.choose import open_store  # noqa: PLC0415 -- see above

    loaded = load_config(config)
    spec = resolve_token(loaded, name)
    store = open_store(loaded.state_dir, loaded.store)
    try:
        record = store.get(spec.name)
    finally:
        store.close()
    if record is None:
        raise NoValidTokenError(f"{spec.name} is not authorized; run `tokend authorize "
                                f"{spec.name}`")
    return usable_token(Stored.of_record(record), now=now)


def _variable(outputs: Sequence[QuickOutput]) -> str:
    return next((output.variable for output in outputs if output.kind == "env"),
                DEFAULT_ENV_VARIABLE)


def replace_with(command: Sequence[str], environment: Mapping[str, str]) -> int:
    """Become ``command`` (same pid: its exit status, signals and stdio are the caller's);
    returns only when it cannot be run, with the status a shell would give."""
    import signal  # noqa: PLC0415 -- exec only: `tokend token` shares this module

    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec:
    # in `tokend exec … -- producer | head`, the producer would get write errors instead
    # of the quiet SIGPIPE every Unix tool expects when head exits.
    for number in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(number, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], list(command), dict(environment))  # noqa: S606 -- the operator's argv, no shell
    except OSError as error:
        print(f"tokend: error: cannot run {command[0]!r}: {error.strerror}", file=sys.stderr)
        return EXIT_NOT_FOUND if isinstance(error, FileNotFoundError) else EXIT_CANNOT_RUN
