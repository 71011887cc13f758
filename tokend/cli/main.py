"""The ``tokend`` command line: the parser, and the dispatch to a verb's handler.

The handlers live in :mod:`tokend.cli.commands` and import what they need when they
run, so quick verbs start quickly. Errors are one line on stderr (a traceback only
with ``--log-level debug``); exit status 2 means a usage or configuration error, 1 any
other failure. The global options work before and after the command, and the log
settings also come from the environment, so a systemd drop-in needs no ``ExecStart=``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from tokend import __version__
from tokend.cli.commands import (
    EXIT_FAILURE,
    EXIT_USAGE,
    SANDBOX_DEFAULT_CLIENT,
    UsageError,
    cmd_authorize,
    cmd_check,
    cmd_demo,
    cmd_exec,
    cmd_refresh,
    cmd_revoke,
    cmd_run,
    cmd_sandbox,
    cmd_status,
    cmd_token,
)
from tokend.errors import ConfigError, NotFoundError, TokendError
from tokend.timing import parse_positive_duration, parse_rate

_NAME_HELP = "APP/USER/SCOPE (the scope may be left out if unique)"
TOKEN_FORMATS = ("token", "json", "env", "header", "template")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
_FROM_ENVIRONMENT = (("log_level", "TOKEND_LOG_LEVEL", LOG_LEVELS, "info"),
                     ("log_format", "TOKEND_LOG_FORMAT", LOG_FORMATS, "auto"))
_T = TypeVar("_T")


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
    # "-5m" reads as a duration too short, not as one written wrong.
    return parse_positive_duration("0" if value.strip().startswith("-") else value)


def _port(value: str) -> int:
    from tokend.model import is_port  # noqa: PLC0415 -- the model's classes: not for `token`

    if not is_port(value):
        raise ValueError("must be a port number from 0 to 65535 (0 picks a free port)")
    return int(value)


def _rate_or_off(value: str) -> float | None:
    return None if value == "off" else parse_rate(value)


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

    sandbox = verb("sandbox", cmd_sandbox, "tokend sandbox --port 8000 --client-file clients.txt")
    sandbox.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sandbox.add_argument("--allow-remote", action="store_true", help="allow a --host other "
                         "hosts can reach (its admin API has no authentication)")
    sandbox.add_argument("--port", type=_option_value(_port), default=0,
                         help="0 picks a free port")
    sandbox.add_argument("--access-token-lifetime", type=_option_value(_positive_duration),
                         default="1h", metavar="DURATION", help="such as 90s, 5m, 1h (1h)")
    sandbox.add_argument("--refresh-token-lifetime", type=_option_value(_positive_duration),
                         default="7d", metavar="DURATION", help="such as 1h, 7d (7d)")
    sandbox.add_argument("--rate-limit", type=_option_value(_rate_or_off), default="200/min",
                         metavar="RATE", help="POST limit such as 200/min, or 'off' (200/min)")
    sandbox.add_argument("--client", action="append", metavar="ID:SECRET",
                         help=f"register clients (default: {SANDBOX_DEFAULT_CLIENT})")
    sandbox.add_argument("--client-file", action="append", metavar="PATH",
                         help="register the clients in PATH, one ID:SECRET a line (kept out of "
                         "ps, as is $TOKEND_SANDBOX_CLIENTS: ID:SECRET entries)")

    authorize = verb("authorize", cmd_authorize, "tokend authorize payroll/alice/read\n"
                     "  tokend authorize payroll/alice --key-file /run/keys/alice\n"
                     "  printf %s \"$KEY\" | tokend authorize payroll/alice --key -\n"
                     "  tokend authorize payroll/alice/read --listen --timeout 120")
    authorize.add_argument("name", help=_NAME_HELP)
    key_source = authorize.add_mutually_exclusive_group()
    key_source.add_argument("--key", help="the authorization key, instead of a prompt: - reads "
                            "it from stdin; --key=KEY (visible in ps) when it starts with '-'")
    key_source.add_argument("--key-file", metavar="PATH", help="read the authorization key from "
                            "PATH")
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
    token.add_argument("--format", choices=TOKEN_FORMATS, default="token",
                       help="token (the bare token), json, env or template as the token's "
                            "outputs write them, header (Authorization: Bearer ...)")

    run_with = verb("exec", cmd_exec, "tokend exec payroll/alice -- ./sync --all\n"
                    "  tokend exec payroll/alice payroll/bob -- ./compare")
    run_with.add_argument("argv", nargs=argparse.REMAINDER, metavar="NAME... -- COMMAND ...",
                          help="the tokens (each as FACTORIAL_ACCESS_TOKEN, or its env output's "
                               "variable:), then -- and the command")

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
    try:
        status: int = args.func(args)
        sys.stdout.flush()  # a reader gone away shows here, not as a warning at exit
    except BrokenPipeError:
        return _reader_gone()
    except (UsageError, ConfigError, NotFoundError) as error:
        return _fail(args, error, EXIT_USAGE)
    except (TokendError, OSError) as error:
        return _fail(args, error, EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130
    return status


def _reader_gone() -> int:
    """Stop quietly when stdout's reader went away (``tokend status | head -1``), with the
    status a shell reports for Unix tools that SIGPIPE ended: 128 + SIGPIPE."""
    import signal  # noqa: PLC0415 -- only when a reader went away; `tokend token` never needs it

    # What is still buffered for stdout would fail again when Python flushes it at exit.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def _fail(args: argparse.Namespace, error: BaseException, status: int) -> int:
    if args.log_level == "debug":
        import traceback  # noqa: PLC0415 -- only for --log-level debug

        traceback.print_exception(error, file=sys.stderr)
    print(f"tokend: error: {error}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
