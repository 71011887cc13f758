"""``tokend check``: is this configuration going to work, before the daemon finds out?

:func:`tokend.config.load_config` has already validated the file and read
every secret; this adds what only the running machine can tell: can this user
create the state store and write every output, are the redirect and base URLs
sane, and can each application's rate limit keep up with its tokens. Paths
are checked with ``os.access`` on the nearest existing folder, as the user
running the check, which should be the daemon's user.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tokend.durations import format_duration
from tokend.model import ApplicationSpec, Config, OutputSpec, TokenName, TokenSpec
from tokend.schedule import MAX_REFRESH_FRACTION

OOB = "urn:ietf:wg:oauth:2.0:oob"
ASSUMED_LIFETIME = 3600.0
"""Access-token lifetime assumed for a token never authorized (the server decides it)."""
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_MIN_INTERVAL = 1.0


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


def check_config(config: Config, *, lifetimes: dict[TokenName, int]) -> CheckReport:
    """Check everything ``config`` points at; ``lifetimes`` are stored tokens' ``expires_in``."""
    report = CheckReport()
    report.notes.append(f"config {config.source}: {len(config.applications)} application(s), "
                        f"{len(config.tokens)} token(s), state in {config.state_dir}")
    report.warnings += config.warnings
    if (problem := _creatable_dir(config.state_dir)) is not None:
        report.problems.append(f"state_dir {config.state_dir}: {problem}")
    database = config.state_dir / "tokend.db"
    if database.exists() and not os.access(database, os.R_OK | os.W_OK):
        report.problems.append(f"state store {database}: not readable and writable by this user")
    for spec in config.tokens:
        for output in spec.outputs:
            if (problem := _output_problem(output)) is not None:
                report.problems.append(f"{spec.name}: output {output.path}: {problem}")
    for app in config.applications.values():
        _check_urls(app, report)
        tokens = [spec for spec in config.tokens if spec.name.app == app.name]
        _check_rate(app, tokens, lifetimes, report)
    return report


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
        loopback = parts.hostname in _LOOPBACK
        if parts.scheme == "http" and not loopback:
            report.warnings.append(f"{where}: {key} uses plain http to {parts.hostname}: "
                                   "codes and tokens would cross the network unencrypted")
        if key == "redirect_uri" and loopback and parts.port is None:
            report.warnings.append(f"{where}: redirect_uri has no port; "
                                   "`tokend authorize --listen` needs one")


def _check_rate(
    app: ApplicationSpec,
    tokens: Iterable[TokenSpec],
    lifetimes: dict[TokenName, int],
    report: CheckReport,
) -> None:
    """Each token refreshes every ``refresh_at * lifetime`` seconds; their sum must fit."""
    per_minute = 0.0
    assumed = 0
    for spec in tokens:
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
