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

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return Path(args.config)
    from tokend.config import default_config_path

    return default_config_path()


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
        return run_demo(
            duration=args.duration, lifetime=args.lifetime, masker=masker, out=sys.stdout
        )
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
            raise _usage(f"--client {pair!r} must be ID:SECRET")
        clients[client_id] = secret
    try:
        sandbox = Sandbox(
            host=args.host,
            port=args.port,
            access_token_lifetime=parse_duration(args.access_token_lifetime),
            refresh_token_lifetime=parse_duration(args.refresh_token_lifetime),
            rate_limit=None if args.rate_limit == "off" else parse_rate(args.rate_limit),
            clients=clients,
        )
    except ValueError as error:
        raise _usage(str(error)) from None
    sandbox.start()
    print(sandbox.url, flush=True)
    try:
        sandbox.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return EXIT_OK


def cmd_authorize(args: argparse.Namespace) -> int:
    """Authorize one token: print the link, read the key, store the token."""
    from tokend.authorize import authorization_link, exchange_and_store
    from tokend.clock import SystemClock
    from tokend.config import load_config
    from tokend.model import resolve_token
    from tokend.state import SqliteStateStore

    masker = _masker_and_logging(args)
    config = load_config(_config_path(args))
    spec = resolve_token(config, args.name)
    print("Authorization required. Follow this link and store your authorization key:")
    print(authorization_link(config, spec), flush=True)
    key = args.key
    if key is None:
        if not sys.stdin.isatty():
            raise _usage("no terminal to read the authorization key from; pass --key KEY")
        key = input("Authorization key: ").strip()
    if not key:
        raise _usage("the authorization key is empty")
    store = SqliteStateStore(config.state_dir)
    try:
        token = exchange_and_store(
            config, spec, key, store=store, clock=SystemClock(), masker=masker
        )
    finally:
        store.close()
    print(f"{spec.name} authorized; access token valid until {token.expires_at.isoformat()}")
    return EXIT_OK


class _UsageError(Exception):
    """A command line that cannot be carried out as written."""


def _usage(message: str) -> _UsageError:
    return _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, with an example in every verb's help."""
    parser = argparse.ArgumentParser(
        prog="tokend",
        description="Keep OAuth access tokens for the Factorial HR API fresh, forever.",
    )
    parser.add_argument("--version", action="version", version=f"tokend {__version__}")
    parser.add_argument(
        "--config",
        help="config file (default: $TOKEND_CONFIG, else /etc/tokend/config.yaml)",
    )
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
    demo.add_argument(
        "--lifetime", type=float, default=20.0, help="access-token lifetime in seconds (20)"
    )
    demo.add_argument("--verbose", action="store_true", help="also show the daemon's log")

    sandbox = verb("sandbox", cmd_sandbox, "tokend sandbox --port 8000 --client app:secret")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=0, help="0 picks a free port")
    sandbox.add_argument("--access-token-lifetime", default="1h")
    sandbox.add_argument("--refresh-token-lifetime", default="7d")
    sandbox.add_argument("--rate-limit", default="200/min", help="POST limit, or 'off'")
    sandbox.add_argument(
        "--client", action="append", metavar="ID:SECRET",
        help="register a client (repeatable; default demo-client:demo-secret)",
    )

    authorize = verb("authorize", cmd_authorize, "tokend authorize payroll/alice/read")
    authorize.add_argument("name", help="APP/USER/SCOPE (the scope may be left out if unique)")
    authorize.add_argument("--key", help="the authorization key, instead of a prompt")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokend`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from tokend.errors import ConfigError, NotFoundError, TokendError

    try:
        status: int = args.func(args)
    except _UsageError as error:
        parser.error(str(error))
    except (ConfigError, NotFoundError) as error:
        return _fail(args, error, EXIT_USAGE)
    except TokendError as error:
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
