"""The verbs of ``tokend``: one handler per command, given the parsed command line.

:mod:`tokend.cli.main` parses the arguments and calls one of these; a handler's
docstring is its verb's help. Each handler imports what it needs when it runs, so
quick verbs start quickly: ``tokend token`` never loads httpx, pydantic or structlog.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokend.log import SecretMasker
    from tokend.model import Config, TokenSpec
    from tokend.store.interface import StateStore

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
SANDBOX_DEFAULT_CLIENT = "demo-client:demo-secret"


class UsageError(Exception):
    """A command line that cannot be carried out as written."""


def _config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return Path(args.config)
    from tokend.config.quick import default_config_path  # not tokend.config.load: no pydantic

    return default_config_path()


def _load(args: argparse.Namespace) -> Config:
    from tokend.config.load import load_config

    return load_config(_config_path(args))


def _masker_and_logging(args: argparse.Namespace, *, level: str | None = None) -> SecretMasker:
    from tokend.log import SecretMasker, configure_logging

    masker = SecretMasker()
    as_json = {"auto": None, "json": True, "console": False}[args.log_format]
    configure_logging(level or args.log_level, masker=masker, json=as_json)
    return masker


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon in the foreground."""
    import asyncio

    from tokend.daemon.lifecycle import Daemon
    from tokend.daemon.memory import keep_large_blocks_mapped

    keep_large_blocks_mapped()
    masker = _masker_and_logging(args)
    return asyncio.run(Daemon(_config_path(args), masker=masker).run())


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the daemon against the built-in sandbox in a temporary folder."""
    from tokend.cli.demo import own_command, run_demo

    masker = _masker_and_logging(args, level=args.log_level if args.verbose else "warning")
    try:
        return run_demo(duration=args.duration, lifetime=args.lifetime, keep=args.keep,
                        command=own_command(), masker=masker, out=sys.stdout)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Serve the local Factorial-compatible OAuth server until stopped (for testing only)."""
    import os

    from tokend.cli.secret_args import SecretInputError, sandbox_clients
    from tokend.model import is_loopback
    from tokend.sandbox import Sandbox
    from tokend.sandbox.http import settings_summary

    if not (args.allow_remote or is_loopback(args.host)):
        raise UsageError(f"--host {args.host} is not a loopback address: anyone who reaches "
                         "the sandbox can use its admin API, which has no authentication; "
                         "pass --allow-remote to listen there anyway (for testing only)")
    try:
        clients = sandbox_clients(args.client or [], args.client_file or [], os.environ)
    except SecretInputError as error:
        raise UsageError(str(error)) from None
    given = bool(clients)
    clients = clients or sandbox_clients([SANDBOX_DEFAULT_CLIENT], [], {})
    sandbox = Sandbox(
        host=args.host, port=args.port, clients=clients,
        access_token_lifetime=args.access_token_lifetime,
        refresh_token_lifetime=args.refresh_token_lifetime, rate_limit=args.rate_limit)
    sandbox.start()
    # Secrets stay off this banner (it may end up in a log): say where each one comes from.
    source = ("the secrets given to --client, --client-file or $TOKEND_SANDBOX_CLIENTS"
              if given else "the test secret shown by `tokend sandbox --help`\n"
              "    (--client-file FILE registers your own instead)")
    print(f"{sandbox.url}\n"
          "tokend sandbox: a local OAuth2 server for testing, not Factorial; "
          "its tokens work nowhere else.\n"
          f"  {'client' if len(clients) == 1 else 'clients'} {', '.join(clients)}, with {source}\n"
          f"  {settings_summary(sandbox.settings())}\n"
          "  for testing only: its admin API (/_sandbox/) has no authentication\n"
          "  open the URL for the endpoints it serves; Ctrl-C stops it", flush=True)
    try:
        sandbox.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return EXIT_OK


def _with_store(args: argparse.Namespace, work: Callable[[Config, StateStore, SecretMasker], int]
                ) -> int:
    """Set up logging, load the config, open the store, run ``work``, close the store."""
    from tokend.store.choose import open_store

    masker = _masker_and_logging(args)
    config = _load(args)
    store = open_store(config.state_dir, config.store)
    try:
        return work(config, store, masker)
    finally:
        store.close()


def _specs(config: Config, names: Sequence[str]) -> list[TokenSpec]:
    """The tokens ``names`` mean (each once, in order), or every configured token."""
    from tokend.model import resolve_token

    return list(dict.fromkeys(resolve_token(config, name) for name in names)) or list(
        config.tokens)


def cmd_authorize(args: argparse.Namespace) -> int:
    """Authorize one token: print the link, get the key, store the token, write its outputs."""
    from tokend.cli.authorize import authorize_token
    from tokend.cli.secret_args import SecretInputError, authorization_key
    from tokend.timing import SystemClock, format_utc

    def read_key() -> str:
        if not sys.stdin.isatty():
            raise UsageError("no terminal to read the authorization key from; pass --key - "
                             "(stdin) or --key-file PATH")
        typed = input("Authorization key: ")
        if not typed.strip():
            raise UsageError("the authorization key is empty")
        return typed

    try:
        key = authorization_key(args.key, args.key_file, sys.stdin)
    except SecretInputError as error:
        raise UsageError(str(error)) from None

    def work(config: Config, store: StateStore, masker: SecretMasker) -> int:
        (spec,) = _specs(config, [args.name])
        record = authorize_token(config, spec, key=key, listen=args.listen,
                                 timeout=args.timeout, out=sys.stdout, read_key=read_key,
                                 store=store, clock=SystemClock(), masker=masker)
        if record.token is not None and record.token.expires_in is None:
            print(f"{spec.name} authorized; the access token does not expire")
        else:
            until = "?" if record.expires_at is None else format_utc(record.expires_at)
            print(f"{spec.name} authorized; access token valid until {until}")
        return EXIT_OK

    return _with_store(args, work)


def cmd_status(args: argparse.Namespace) -> int:
    """Show every token's state, expiries and last error, and the daemon's health."""
    import time

    from tokend.cli.records import stored_records
    from tokend.cli.status import build_report, invalid_config_report, render_json, render_text
    from tokend.config.load import load_config
    from tokend.errors import ConfigError

    path = _config_path(args)
    now = time.time()
    try:
        config = load_config(path)
    except ConfigError as error:
        # Exactly when a reload failed the operator needs the rest of the picture.
        report = invalid_config_report(path, error, lambda known: _specs(known, args.names),
                                       now=now)
    else:
        report = build_report(config, _specs(config, args.names),
                              stored_records(config.state_dir, config.store), now=now)
    print(render_json(report) if args.json else render_text(report, now=now))
    return EXIT_OK if report.healthy else EXIT_FAILURE


def cmd_token(args: argparse.Namespace) -> int:
    """Print the current access token (or --format json, env, header, template); exit 1 when
    there is no valid one."""
    import time

    from tokend.cli.handout import token_text

    sys.stdout.write(token_text(_config_path(args), args.name, args.format, now=time.time()))
    return EXIT_OK


def cmd_exec(args: argparse.Namespace) -> int:
    """Run a command with the current token(s) in its environment, in tokend's place (its exit
    status, signals and output are the command's); exit 1 without running it when a token is
    missing or expired."""
    import os
    import time

    from tokend.cli.handout import exec_environment, replace_with

    if "--" not in args.argv:
        raise UsageError("put -- between the token names and the command: "
                         "tokend exec NAME [NAME...] -- COMMAND [ARGS...]")
    split = args.argv.index("--")
    names, command = args.argv[:split], args.argv[split + 1:]
    if not names or not command:
        raise UsageError(f"name {'a command after --' if names else 'at least one token'}: "
                         "tokend exec NAME [NAME...] -- COMMAND [ARGS...]")
    options = [name for name in names if name.startswith("-")]
    if options:
        raise UsageError(f"{options[0]}: tokend's options go before the token names")
    environment = exec_environment(_config_path(args), names, now=time.time())
    return replace_with(command, {**os.environ, **environment})


def cmd_refresh(args: argparse.Namespace) -> int:
    """Refresh the due tokens now (all of them with --force), exactly as the daemon does."""
    from tokend.cli.operator import refresh_tokens
    from tokend.timing import SystemClock

    def work(config: Config, store: StateStore, masker: SecretMasker) -> int:
        lines = refresh_tokens(config, _specs(config, args.names), force=args.force,
                               explicit=bool(args.names), store=store, clock=SystemClock(),
                               masker=masker)
        print("\n".join(line.text for line in lines))
        return EXIT_FAILURE if any(line.failed for line in lines) else EXIT_OK

    return _with_store(args, work)


def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke a token at the server, forget it and remove its outputs."""
    from tokend.cli.operator import revoke, revoke_target
    from tokend.timing import SystemClock

    def work(config: Config, store: StateStore, masker: SecretMasker) -> int:
        spec = revoke_target(config, store, args.name)
        print(revoke(config, spec, local_only=args.local_only, store=store, clock=SystemClock(),
                     masker=masker))
        return EXIT_OK

    return _with_store(args, work)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config and what it points at: secrets, folders, hooks, URLs, rate limits."""
    from tokend.cli.check import check_config, check_online
    from tokend.cli.records import stored_records

    _masker_and_logging(args)  # opening the store may log, and stdout is for the report
    config = _load(args)
    report = check_config(config, lifetimes=lambda: {
        r.name: r.token.expires_in
        for r in stored_records(config.state_dir, config.store) if r.token is not None})
    if args.online:
        check_online(config, report)
    print(report.render())
    return EXIT_FAILURE if report.problems else EXIT_OK
