"""The ``tokend`` command: a thin shell over the library.

Each verb imports what it needs when it runs, so quick verbs start quickly.
Errors are one line on stderr (a traceback only with ``--log-level debug``);
exit status 2 means a usage or configuration error, 1 any other failure.
The global options work before and after the command, and the log settings
also come from the environment, so a systemd drop-in needs no ``ExecStart=``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from tokend import __version__

if TYPE_CHECKING:
    from tokend.log import SecretMasker
    from tokend.model import Config, TokenSpec
    from tokend.store.interface import StateStore

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
_NAME_HELP = "APP/USER/SCOPE (the scope may be left out if unique)"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
_FROM_ENVIRONMENT = (("log_level", "TOKEND_LOG_LEVEL", LOG_LEVELS, "info"),
                     ("log_format", "TOKEND_LOG_FORMAT", LOG_FORMATS, "auto"))


def _config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return Path(args.config)
    from tokend.config.quick import quick_config_path  # not tokend.config.load: no pydantic here

    return quick_config_path()


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
    from tokend.sandbox import Sandbox
    from tokend.sandbox.http import settings_summary

    clients = {}
    for pair in args.client or [_SANDBOX_DEFAULT_CLIENT]:
        client_id, sep, secret = pair.partition(":")
        if not sep or not client_id or not secret:
            raise _UsageError(f"--client {pair!r} must be ID:SECRET")
        clients[client_id] = secret
    sandbox = Sandbox(
        host=args.host, port=args.port, clients=clients,
        access_token_lifetime=args.access_token_lifetime,
        refresh_token_lifetime=args.refresh_token_lifetime, rate_limit=args.rate_limit)
    sandbox.start()
    # Secrets stay off this banner (it may end up in a log): say where each one comes from.
    source = ("the secrets given to --client" if args.client else
              "the test secret shown by `tokend sandbox --help`\n"
              "    (--client ID:SECRET registers your own instead)")
    print(f"{sandbox.url}\n"
          "tokend sandbox: a local OAuth2 server for testing, not Factorial; "
          "its tokens work nowhere else.\n"
          f"  {'client' if len(clients) == 1 else 'clients'} {', '.join(clients)}, with {source}\n"
          f"  {settings_summary(sandbox.settings())}\n"
          "  open the URL for the endpoints it serves; Ctrl-C stops it", flush=True)
    try:
        sandbox.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return EXIT_OK


_T = TypeVar("_T")
_SANDBOX_DEFAULT_CLIENT = "demo-client:demo-secret"


def _option_value(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    """An argparse ``type`` from a parser raising ValueError: the usage error then names the
    option (argparse adds it), the value and what is wrong, instead of a traceback."""

    def convert(value: str) -> _T:
        try:
            return parse(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{value!r} {error}") from None

    return convert


def _positive_duration(value: str) -> float:
    import math

    from tokend.timing import parse_duration

    seconds = 0.0 if value.strip().startswith("-") else parse_duration(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def _port(value: str) -> int:
    if not (value.isdigit() and int(value) <= 65535):
        raise ValueError("must be a port number from 0 to 65535 (0 picks a free port)")
    return int(value)


def _rate_or_off(value: str) -> float | None:
    from tokend.timing import parse_rate

    return None if value == "off" else parse_rate(value)


def _with_store(args: argparse.Namespace, work: Callable[[Config, StateStore, SecretMasker], int]
                ) -> int:
    """Set up logging, load the config, open the store, run ``work``, close the store."""
    from tokend.store.sqlite import SqliteStateStore

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
    from tokend.cli.authorize import authorize_token
    from tokend.timing import SystemClock, format_utc

    def checked(key: str) -> str:
        if not key.strip():
            raise _UsageError("the authorization key is empty")
        return key

    def read_key() -> str:
        if not sys.stdin.isatty():
            raise _UsageError("no terminal to read the authorization key from; pass --key=KEY")
        return checked(input("Authorization key: "))

    def work(config: Config, store: StateStore, masker: SecretMasker) -> int:
        (spec,) = _specs(config, [args.name])
        key = None if args.key is None else checked(args.key)
        record = authorize_token(config, spec, key=key, listen=args.listen,
                                 timeout=args.timeout, out=sys.stdout, read_key=read_key,
                                 store=store, clock=SystemClock(), masker=masker)
        until = "?" if record.expires_at is None else format_utc(record.expires_at)
        print(f"{spec.name} authorized; access token valid until {until}")
        return EXIT_OK

    return _with_store(args, work)


def cmd_status(args: argparse.Namespace) -> int:
    """Show every token's state, expiries and last error, and the daemon's health."""
    import time

    from tokend.cli.status import build_report, render_json, render_text, stored_records
    from tokend.cli.status_fallback import invalid_config_report
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
                              stored_records(config.state_dir), now=now)
    print(render_json(report) if args.json else render_text(report, now=now))
    return EXIT_OK if report.healthy else EXIT_FAILURE


def cmd_token(args: argparse.Namespace) -> int:
    """Print the current access token; exit 1 when there is no valid one."""
    import time

    from tokend.config.quick import quick_state_dir
    from tokend.store.quick import current_access_token

    state_dir = quick_state_dir(_config_path(args))
    print(current_access_token(state_dir, args.name, now=time.time()))
    return EXIT_OK


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
    from tokend.cli.check import check_config
    from tokend.cli.status import stored_records

    _masker_and_logging(args)  # opening the store may log, and stdout is for the report
    config = _load(args)
    report = check_config(config, lifetimes=lambda: {
        r.name: r.token.expires_in
        for r in stored_records(config.state_dir) if r.token is not None})
    if args.online:
        from tokend.cli.check_online import check_online

        check_online(config, report)
    print(report.render())
    return EXIT_FAILURE if report.problems else EXIT_OK


class _UsageError(Exception):
    """A command line that cannot be carried out as written."""


def _global_options() -> argparse.ArgumentParser:
    """The options every command takes, before or after its name.

    Their default is SUPPRESS: a command's parser would otherwise write its own
    default over a value given before the command. :func:`main` fills them in.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", default=argparse.SUPPRESS,
        help="config file (default: $TOKEND_CONFIG, else /etc/tokend/config.yaml)")
    common.add_argument(
        "--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS,
        help="log verbosity; debug also shows tracebacks (default: $TOKEND_LOG_LEVEL, else info)")
    common.add_argument(
        "--log-format", default=argparse.SUPPRESS, choices=LOG_FORMATS,
        help="JSON lines or coloured console lines on stderr; auto: JSON unless stderr is a "
             "terminal (default: $TOKEND_LOG_FORMAT, else auto)")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, with an example in every verb's help."""
    common = _global_options()
    parser = argparse.ArgumentParser(
        prog="tokend", parents=[common],
        description="Keep OAuth access tokens for the Factorial HR API fresh, forever.")
    parser.add_argument("--version", action="version", version=f"tokend {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    def verb(name: str, func: Callable[[argparse.Namespace], int], example: str) -> (
        argparse.ArgumentParser
    ):
        doc = (func.__doc__ or "").strip()
        sub = verbs.add_parser(
            name, help=doc, description=doc, epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common],
        )
        sub.set_defaults(func=func)
        return sub

    verb("run", cmd_run, "tokend --config /etc/tokend/config.yaml run")

    demo = verb("demo", cmd_demo, "tokend demo --duration 60")
    demo.add_argument("--duration", type=_option_value(_positive_duration), metavar="DURATION",
                      help="stop after this long, such as 60 (seconds) or 5m")
    demo.add_argument("--lifetime", type=_option_value(_positive_duration), default=20.0,
                      metavar="DURATION", help="access-token lifetime, such as 20 or 1m (20)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the temporary folder (config, secret, state, outputs) at exit")
    demo.add_argument("--verbose", action="store_true", help="also show the daemon's log")

    sandbox = verb("sandbox", cmd_sandbox, "tokend sandbox --port 8000 --client app:secret")
    sandbox.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sandbox.add_argument("--port", type=_option_value(_port), default=0,
                         help="0 picks a free port")
    sandbox.add_argument("--access-token-lifetime", type=_option_value(_positive_duration),
                         default="1h", metavar="DURATION", help="such as 90s, 5m, 1h (1h)")
    sandbox.add_argument("--refresh-token-lifetime", type=_option_value(_positive_duration),
                         default="7d", metavar="DURATION", help="such as 1h, 7d (7d)")
    sandbox.add_argument("--rate-limit", type=_option_value(_rate_or_off), default="200/min",
                         metavar="RATE", help="POST limit such as 200/min, or 'off' (200/min)")
    sandbox.add_argument("--client", action="append", metavar="ID:SECRET",
                         help=f"register clients (default: {_SANDBOX_DEFAULT_CLIENT})")

    authorize = verb("authorize", cmd_authorize, "tokend authorize payroll/alice/read\n"
                     "  tokend authorize payroll/alice --key=-KEY-STARTING-WITH-A-DASH\n"
                     "  tokend authorize payroll/alice/read --listen --timeout 120")
    authorize.add_argument("name", help=_NAME_HELP)
    key_source = authorize.add_mutually_exclusive_group()
    key_source.add_argument("--key", help="the authorization key, instead of a prompt; write "
                            "--key=KEY when it starts with '-'")
    key_source.add_argument("--listen", action="store_true",
                            help="catch the key with a local listener on the http://127.0.0.1:"
                            "PORT or http://localhost:PORT redirect_uri")
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

    check = verb("check", cmd_check, "tokend --config /etc/tokend/config.yaml check --online")
    check.add_argument("--online", action="store_true", help="also ask each application's token "
                       "endpoint whether it accepts the client id and secret (uses no token)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokend`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.config = getattr(args, "config", None)
    for name, variable, allowed, default in _FROM_ENVIRONMENT:
        if not hasattr(args, name):
            given = os.environ.get(variable) or default
            if given.lower() not in allowed:
                parser.error(f"${variable}={given!r} is not one of {', '.join(allowed)}")
            setattr(args, name, given.lower())
    from tokend.errors import ConfigError, NotFoundError, TokendError

    try:
        status: int = args.func(args)
        sys.stdout.flush()  # a reader gone away shows here, not as a warning at exit
    except BrokenPipeError:
        return _reader_gone()
    except (_UsageError, ConfigError, NotFoundError) as error:
        return _fail(args, error, EXIT_USAGE)
    except (TokendError, OSError) as error:
        return _fail(args, error, EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130
    return status


def _reader_gone() -> int:
    """Stop quietly when stdout's reader went away (``tokend status | head -1``), with the
    status a shell reports for Unix tools that SIGPIPE ended: 128 + SIGPIPE."""
    import signal

    # What is still buffered for stdout would fail again when Python flushes it at exit.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def _fail(args: argparse.Namespace, error: BaseException, status: int) -> int:
    if args.log_level == "debug":
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    print(f"tokend: error: {error}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
