"""The ``tokend`` command: a thin shell over the library.

Each verb imports what it needs when it runs, so quick verbs start quickly.
Errors are one line on stderr (a traceback only with ``--log-level debug``);
exit status 2 means a usage or configuration error, 1 any other failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tokend import __version__

if TYPE_CHECKING:
    from tokend.log import SecretMasker
    from tokend.model import Config, TokenSpec
    from tokend.state import StateStore

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
_NAME_HELP = "APP/USER/SCOPE (the scope may be left out if unique)"


def _config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return Path(args.config)
    from tokend.quickconfig import quick_config_path  # not tokend.config: no pydantic here

    return quick_config_path()


def _load(args: argparse.Namespace) -> Config:
    from tokend.config import load_config

    return load_config(_config_path(args))


def _masker_and_logging(args: argparse.Namespace, *, level: str | None = None) -> SecretMasker:
    from tokend.log import SecretMasker, configure_logging

    masker = SecretMasker()
    configure_logging(level or args.log_level, masker=masker)
    return masker


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon in the foreground."""
    import asyncio

    from tokend.daemon import Daemon

    masker = _masker_and_logging(args)
    return asyncio.run(Daemon(_config_path(args), masker=masker).run())


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the daemon against the built-in sandbox in a temporary folder."""
    from tokend.demo import run_demo

    masker = _masker_and_logging(args, level=args.log_level if args.verbose else "warning")
    try:
        return run_demo(duration=args.duration, lifetime=args.lifetime, masker=masker,
                        out=sys.stdout)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Serve the local Factorial-compatible OAuth server until stopped."""
    from tokend.durations import parse_duration, parse_rate
    from tokend.sandbox import Sandbox

    clients = {}
    for pair in args.client or ["demo-client:demo-secret"]:
        client_id, sep, secret = pair.partition(":")
        if not sep or not client_id or not secret:
            raise _UsageError(f"--client {pair!r} must be ID:SECRET")
        clients[client_id] = secret
    try:
        sandbox = Sandbox(
            host=args.host, port=args.port, clients=clients,
            access_token_lifetime=parse_duration(args.access_token_lifetime),
            refresh_token_lifetime=parse_duration(args.refresh_token_lifetime),
            rate_limit=None if args.rate_limit == "off" else parse_rate(args.rate_limit))
    except ValueError as error:
        raise _UsageError(str(error)) from None
    sandbox.start()
    print(sandbox.url, flush=True)
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
    from tokend.sqlite_store import SqliteStateStore

    masker = _masker_and_logging(args)
    config = _load(args)
    store = SqliteStateStore(config.state_dir)
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
    from tokend.authorize import exchange_and_store, obtain_key
    from tokend.clock import SystemClock
    from tokend.outputs import format_utc

    def read_key() -> str:
        if args.key is not None:
            return str(args.key)
        if not sys.stdin.isatty():
            raise _UsageError("no terminal to read the authorization key from; pass --key=KEY")
        return input("Authorization key: ")

    def work(config: Config, store: StateStore, masker: SecretMasker) -> int:
        (spec,) = _specs(config, [args.name])
        key = obtain_key(config, spec, listen=args.listen, timeout=args.timeout,
                         out=sys.stdout, read_key=read_key)
        if not key:
            raise _UsageError("the authorization key is empty")
        record = exchange_and_store(config, spec, key, store=store, clock=SystemClock(),
                                    masker=masker)
        until = "?" if record.expires_at is None else format_utc(record.expires_at)
        print(f"{spec.name} authorized; access token valid until {until}")
        return EXIT_OK

    return _with_store(args, work)


def cmd_status(args: argparse.Namespace) -> int:
    """Show every token's state, expiries and last error, and the daemon's health."""
    import time

    from tokend.status import build_report, render_json, render_text, stored_records

    config = _load(args)
    now = time.time()
    report = build_report(config, _specs(config, args.names), stored_records(config.state_dir),
                          now=now)
    print(render_json(report) if args.json else render_text(report, now=now))
    return EXIT_OK if report.healthy else EXIT_FAILURE


def cmd_token(args: argparse.Namespace) -> int:
    """Print the current access token; exit 1 when there is no valid one."""
    import time

    from tokend.quickconfig import quick_state_dir
    from tokend.quicktoken import current_access_token

    state_dir = quick_state_dir(_config_path(args))
    print(current_access_token(state_dir, args.name, now=time.time()))
    return EXIT_OK


def cmd_refresh(args: argparse.Namespace) -> int:
    """Refresh the due tokens now (all of them with --force), exactly as the daemon does."""
    from tokend.clock import SystemClock
    from tokend.operator import refresh_tokens

    def work(config: Config, store: StateStore, masker: SecretMasker) -> int:
        lines = refresh_tokens(config, _specs(config, args.names), force=args.force,
                               explicit=bool(args.names), store=store, clock=SystemClock(),
                               masker=masker)
        print("\n".join(line.text for line in lines))
        return EXIT_FAILURE if any(line.failed for line in lines) else EXIT_OK

    return _with_store(args, work)


def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke a token at the server, forget it and remove its outputs."""
    from tokend.clock import SystemClock
    from tokend.operator import revoke, revoke_target

    def work(config: Config, store: StateStore, masker: SecretMasker) -> int:
        spec = revoke_target(config, store, args.name)
        print(revoke(config, spec, local_only=args.local_only, store=store, clock=SystemClock(),
                     masker=masker))
        return EXIT_OK

    return _with_store(args, work)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config and what it points at: secrets, folders, URLs, rate limits."""
    from tokend.check import check_config
    from tokend.status import stored_records

    config = _load(args)
    records = stored_records(config.state_dir)
    lifetimes = {r.name: r.token.expires_in for r in records if r.token is not None}
    report = check_config(config, lifetimes=lifetimes)
    print(report.render())
    return EXIT_FAILURE if report.problems else EXIT_OK


class _UsageError(Exception):
    """A command line that cannot be carried out as written."""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, with an example in every verb's help."""
    parser = argparse.ArgumentParser(
        prog="tokend",
        description="Keep OAuth access tokens for the Factorial HR API fresh, forever.")
    parser.add_argument("--version", action="version", version=f"tokend {__version__}")
    parser.add_argument(
        "--config", help="config file (default: $TOKEND_CONFIG, else /etc/tokend/config.yaml)")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="log verbosity; debug also shows tracebacks (default: info)",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    def verb(name: str, func: Callable[[argparse.Namespace], int], example: str) -> (
        argparse.ArgumentParser
    ):
        doc = (func.__doc__ or "").strip()
        sub = verbs.add_parser(
            name, help=doc, description=doc, epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(func=func)
        return sub

    verb("run", cmd_run, "tokend --config /etc/tokend/config.yaml run")

    demo = verb("demo", cmd_demo, "tokend demo --duration 60")
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument("--lifetime", type=float, default=20.0,
                      help="access-token lifetime in seconds (20)")
    demo.add_argument("--verbose", action="store_true", help="also show the daemon's log")

    sandbox = verb("sandbox", cmd_sandbox, "tokend sandbox --port 8000 --client app:secret")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=0, help="0 picks a free port")
    sandbox.add_argument("--access-token-lifetime", default="1h")
    sandbox.add_argument("--refresh-token-lifetime", default="7d")
    sandbox.add_argument("--rate-limit", default="200/min", help="POST limit, or 'off'")
    sandbox.add_argument("--client", action="append", metavar="ID:SECRET",
                         help="register a client (repeatable; default demo-client:demo-secret)")

    authorize = verb("authorize", cmd_authorize, "tokend authorize payroll/alice/read\n"
                     "  tokend authorize payroll/alice --key=-KEY-STARTING-WITH-A-DASH\n"
                     "  tokend authorize payroll/alice/read --listen --timeout 120")
    authorize.add_argument("name", help=_NAME_HELP)
    authorize.add_argument("--key", help="the authorization key, instead of a prompt; write "
                           "--key=KEY when it starts with '-'")
    authorize.add_argument("--listen", action="store_true",
                           help="catch the key with a local listener on the http://127.0.0.1:PORT"
                           " or http://localhost:PORT redirect_uri")
    authorize.add_argument("--timeout", type=float, default=300.0,
                           help="with --listen, give up after this many seconds (300)")

    status = verb("status", cmd_status, "tokend status --json payroll/alice")
    status.add_argument("names", nargs="*", metavar="NAME", help="only these tokens")
    status.add_argument("--json", action="store_true", help="one JSON object (see README)")

    token = verb("token", cmd_token,
                 'curl -H "Authorization: Bearer $(tokend token payroll/alice)" ...')
    token.add_argument("name", help=_NAME_HELP)

    refresh = verb("refresh", cmd_refresh, "tokend refresh --force payroll/alice/read")
    refresh.add_argument("names", nargs="*", metavar="NAME", help="only these tokens")
    refresh.add_argument("--force", action="store_true", help="refresh even if not due yet")

    revoke = verb("revoke", cmd_revoke, "tokend revoke payroll/alice/read")
    revoke.add_argument("name", help=_NAME_HELP)
    revoke.add_argument("--local-only", action="store_true",
                        help="do not call the server (it is gone); only forget the token here")

    verb("check", cmd_check, "tokend --config /etc/tokend/config.yaml check")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokend`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from tokend.errors import ConfigError, NotFoundError, TokendError

    try:
        status: int = args.func(args)
    except (_UsageError, ConfigError, NotFoundError) as error:
        return _fail(args, error, EXIT_USAGE)
    except (TokendError, OSError) as error:
        return _fail(args, error, EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130
    return status


def _fail(args: argparse.Namespace, error: BaseException, status: int) -> int:
    if args.log_level == "debug":
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    print(f"tokend: error: {error}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
