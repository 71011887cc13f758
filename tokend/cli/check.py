"""``tokend check``: is this configuration going to work, before the daemon finds out?

:func:`tokend.config.load.load_config` has already validated the file and read
every secret; this adds what only the running machine can tell: can this user
create the state store and write every output, can every hook's executable be
found and run, are the state and the config safe from other users, are the
redirect and base URLs sane, and can each application's rate limit keep up
with its tokens. Paths are checked with ``os.access`` on the nearest existing
folder, as the user running the check, which should be the daemon's user.

``tokend check --online`` also asks each token endpoint whether it accepts the
application's client credentials, and must consume nothing doing so: no
authorization key, no refresh token, no new token. So it presents a credential that
cannot exist: ``invalid_grant`` means the client id and secret were accepted and
only the made-up grant was refused, ``invalid_client`` means they were not. The
made-up grant is an authorization code, not a refresh token: RFC 6749 asks the server
to authenticate the client before it looks at either, but Doorkeeper (whose answers
Factorial's match) looks a refresh token up first (``RefreshTokenRequest``), so an
unknown refresh token answers ``invalid_grant`` whatever the secret; for a code it
checks the client first (``AuthorizationCodeRequest``), as the sandbox does for both.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tokend.config.document import Document, KeyPath, format_key_path, read_document
from tokend.config.exposure import config_exposure
from tokend.engine.metrics import HOOKS
from tokend.errors import ConfigError, NetworkError, OAuthError, StateError
from tokend.factorial import Factorial
from tokend.model import (
    MAX_REFRESH_FRACTION,
    OOB,
    ApplicationSpec,
    Config,
    OutputSpec,
    TokenName,
    TokenSpec,
    is_loopback,
)
from tokend.oauth.protocol import authorization_code_request
from tokend.store import DATABASE_NAME
from tokend.store.lock import PRIVATE_DIR_MODE
from tokend.timing import format_duration

ASSUMED_LIFETIME = 3600.0
"""Access-token lifetime assumed for a token never authorized (the server decides it)."""
_MIN_INTERVAL = 1.0
PROBE_CODE_PREFIX = "tokend-check-"
"""Begins every made-up code of ``--online``, so a server's log shows what sent it."""


@dataclass
class CheckReport:
    """Problems stop the daemon from doing its job; warnings are worth a look."""

    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [*self.notes]
        lines += [f"problem: {text}" for text in self.problems]
        lines += [f"warning: {text}" for text in self.warnings]
        verdict = "OK" if not self.problems else f"{len(self.problems)} problem(s)"
        lines.append(f"check: {verdict}, {len(self.warnings)} warning(s)")
        return "\n".join(lines)


def check_config(
    config: Config, *, lifetimes: Callable[[], Mapping[TokenName, int | None]]
) -> CheckReport:
    """Check everything ``config`` points at; ``lifetimes`` gives stored tokens' ``expires_in``
    (read-only: a check changes nothing in the state directory)."""
    report = CheckReport()
    report.notes.append(f"config {config.source}: {len(config.applications)} application(s), "
                        f"{len(config.tokens)} token(s), state in {config.state_dir}")
    report.warnings += config.warnings
    report.warnings += config_exposure(config.source)
    if (problem := _creatable_dir(config.state_dir)) is not None:
        report.problems.append(f"state_dir {config.state_dir}: {problem}")
    elif (warning := _state_dir_exposure(config.state_dir)) is not None:
        report.warnings.append(warning)
    database = config.state_dir / DATABASE_NAME
    if database.exists() and not os.access(database, os.R_OK | os.W_OK):
        report.problems.append(f"state store {database}: not readable and writable by this user")
    for spec in config.tokens:
        for output in spec.outputs:
            if (problem := _output_problem(output)) is not None:
                report.problems.append(f"{spec.name}: output {output.path}: {problem}")
    report.problems += _hook_problems(config)
    stored = _stored_lifetimes(config, lifetimes, report)
    for app in config.applications.values():
        _check_urls(app, report)
        tokens = [spec for spec in config.tokens if spec.name.app == app.name]
        if not tokens:
            report.warnings.append(f"application {app.name}: has no tokens, so nothing is "
                                   "refreshed for it; add some under tokens: or remove it")
        _check_rate(app, tokens, stored, report)
    return report


def _stored_lifetimes(config: Config, lifetimes: Callable[[], Mapping[TokenName, int | None]],
                      report: CheckReport) -> Mapping[TokenName, int | None]:
    """``lifetimes()``; reading them is also the check that the shared store answers."""
    try:
        stored = lifetimes()
    except StateError as exc:
        report.problems.append(str(exc))
        return {}
    if config.store is not None:
        report.notes.append(f"store {config.store.conninfo}: connected, schema up to date, "
                            f"{len(stored)} token(s) stored")
    return stored


def _state_dir_exposure(path: Path) -> str | None:
    """The state holds every refresh token: only the daemon's user may enter it."""
    try:
        info = os.stat(path)
    except OSError:
        return None  # created 0700 when first used
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode) or not mode & 0o077:
        return None
    return (f"state_dir {path} is open to other users (mode {mode:04o}); it holds every "
            f"refresh token and must be {PRIVATE_DIR_MODE:04o}: the daemon tightens it when it "
            f"opens the store, or chmod {PRIVATE_DIR_MODE:o} {path}")


def _hook_problems(config: Config) -> list[str]:
    """Each hook whose executable cannot be started, located in the file like a config error."""
    problems = []
    document: Document | None = None
    index = dict.fromkeys(config.applications, -1)
    for spec in config.tokens:
        index[spec.name.app] += 1
        for hook in HOOKS:
            argv: tuple[str, ...] = getattr(spec, hook)
            if not argv or (problem := _executable_problem(argv[0])) is None:
                continue
            message = f"{spec.name} {hook}: {problem}"
            where: KeyPath = ("applications", spec.name.app, "tokens", index[spec.name.app],
                              hook, 0)
            try:
                document = document or read_document(config.source)
            except ConfigError:
                problems.append(message)  # the file changed since it was loaded
                continue
            problems.append(str(ConfigError(message, location=document.location(where),
                                            key_path=format_key_path(where))))
    return problems


def _executable_problem(command: str) -> str | None:
    """Why the daemon could not start ``command`` (found as ``execvp`` would), or ``None``."""
    if "/" not in command:
        if shutil.which(command) is None:
            return f"{command} was not found on PATH ({os.environ.get('PATH', os.defpath)})"
        return None
    if not os.path.exists(command):
        return f"{command} was not found at that path (no such file)"
    if os.path.isdir(command) or not os.access(command, os.X_OK):
        return f"{command} is not executable by this user (uid {os.geteuid()})"
    return None


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path("/")


def _creatable_dir(path: Path) -> str | None:
    """Why this user cannot use ``path`` as a folder (creating it if needed), or ``None``."""
    existing = _nearest_existing(path)
    if not existing.is_dir():
        return f"{existing} exists and is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        verb = "write in" if existing == path else f"create {path} in"
        return f"this user (uid {os.geteuid()}) cannot {verb} {existing}"
    return None


def _output_problem(output: OutputSpec) -> str | None:
    path = output.path
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        info = None  # a parent that is a file is reported below, by name
    except OSError as exc:
        return f"cannot inspect: {exc.strerror}"
    if info is not None and stat.S_ISLNK(info.st_mode):
        return "is a symlink; tokend refuses to replace it"
    if info is not None and not stat.S_ISREG(info.st_mode):
        return "exists and is not a regular file"
    if (problem := _creatable_dir(path.parent)) is not None:
        return problem
    return _ownership_problem(output)


def _ownership_problem(output: OutputSpec) -> str | None:
    """Only root can give a file away; others may only pick one of their own groups."""
    if os.geteuid() == 0:
        return None
    if output.owner is not None and output.owner != os.geteuid():
        return f"owner uid {output.owner} needs root (this user is uid {os.geteuid()})"
    if output.group is not None and output.group not in {os.getegid(), *os.getgroups()}:
        return f"group gid {output.group} is not one of this user's groups"
    return None


def _check_urls(app: ApplicationSpec, report: CheckReport) -> None:
    where = f"application {app.name}"
    for key, url in (("base_url", app.base_url), ("redirect_uri", app.redirect_uri)):
        if key == "redirect_uri" and url == OOB:
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            report.problems.append(f"{where}: {key} {url!r} is not an http(s) URL"
                                   + (f" nor {OOB}" if key == "redirect_uri" else ""))
            continue
        loopback = is_loopback(parts.hostname)
        if parts.scheme == "http" and not loopback:
            report.warnings.append(f"{where}: {key} uses plain http to {parts.hostname}: "
                                   "codes and tokens would cross the network unencrypted")
        if key == "redirect_uri" and loopback and parts.port is None:
            report.warnings.append(f"{where}: redirect_uri has no port; "
                                   "`tokend authorize --listen` needs one")


def _check_rate(
    app: ApplicationSpec,
    tokens: Iterable[TokenSpec],
    lifetimes: Mapping[TokenName, int | None],
    report: CheckReport,
) -> None:
    """Each token refreshes every ``refresh_at * lifetime`` seconds; their sum must fit.

    A company token, or any stored without a lifetime, never expires: it needs none."""
    per_minute = 0.0
    assumed = 0
    for spec in tokens:
        if spec.company or (spec.name in lifetimes and lifetimes[spec.name] is None):
            continue
        lifetime = lifetimes.get(spec.name)
        if lifetime is None:
            lifetime, assumed = int(ASSUMED_LIFETIME), assumed + 1
        fraction = min(max(spec.refresh_at, 0.0), MAX_REFRESH_FRACTION)
        per_minute += 60.0 / max(fraction * lifetime, _MIN_INTERVAL)
    allowed = app.rate_limit * 60.0
    if per_minute > allowed:
        note = (f" ({assumed} not yet authorized: a {format_duration(ASSUMED_LIFETIME)} "
                "lifetime assumed)" if assumed else "")
        report.warnings.append(
            f"application {app.name}: its tokens need about {per_minute:.0f} refreshes per "
            f"minute{note}, more than its rate_limit of {allowed:g}/min allows; "
            "tokens would refresh late"
        )


def check_online(config: Config, report: CheckReport, *, client: httpx.Client | None = None
                 ) -> None:
    """Probe each application's client credentials in turn; failures become problems.

    One request per application, one after the other: a check never bursts
    against the server's rate limit. ``client`` is for tests.
    """
    for app in config.applications.values():
        where = f"online: application {app.name}"
        url, error = _probe(app, client)
        if error is None:
            report.problems.append(f"{where}: unexpected answer from {url}: it issued a token "
                                   "for an authorization code that cannot exist")
        elif error.error == "invalid_grant":
            report.notes.append(f"{where}: ok, client accepted by {url}")
        elif error.error == "invalid_client":
            report.problems.append(f"{where}: client rejected by {url} ({error}); check its "
                                   "client_id and client secret")
        elif isinstance(error, NetworkError):
            report.problems.append(f"{where}: unreachable: {url}: {error}")
        else:
            report.problems.append(f"{where}: unexpected answer from {url}: {error}")


def _probe(app: ApplicationSpec, client: httpx.Client | None) -> tuple[str, OAuthError | None]:
    """The token endpoint's URL and its refusal of a made-up code (``None``: it gave a token)."""
    fields = {"client_id": app.client_id, "client_secret": app.client_secret.reveal(),
              "redirect_uri": app.redirect_uri}
    code = PROBE_CODE_PREFIX + secrets.token_urlsafe(24)
    url = authorization_code_request(base_url=app.base_url, code=code, **fields).url
    try:
        with Factorial(access_token="", base_url=app.base_url, timeout=app.timeout,
                       client=client) as factorial:
            factorial.obtain_access_token(authorization_key=code, **fields)
    except OAuthError as error:
        return url, error
    return url, None
