"""``tokend check``: what would stop the daemon, found before the daemon finds it."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import httpx
import pytest
import structlog

from tests.e2e import CLIENT_SECRET, Setup, StartDaemon, as_nobody, free_port, tokend, wait_for
from tokend.cli.check import CheckReport, check_config, check_online
from tokend.config.load import load_config
from tokend.model import Config, TokenName
from tokend.sandbox import Sandbox
from tokend.store.lock import make_private_dir


def config(tmp_path: Path, *, outputs: tuple[str, ...] = (), state_dir: str = "state",
           app: str = "", tokens: int = 1) -> Config:
    entries = ""
    for index in range(tokens):
        entries += f"      - user: user{index}\n        scope: read\n"
        if index == 0 and outputs:
            entries += "        outputs:\n" + "".join(f"          - path: {p}\n" for p in outputs)
    path = tmp_path / "config.yaml"
    path.write_text(
        f"state_dir: {state_dir}\n"
        "applications:\n"
        "  app:\n"
        "    client_id: abc\n"
        "    client_secret: s3cr3t-value\n"
        f"{app}"
        f"    tokens:\n{entries}"
    )
    path.chmod(0o600)
    return load_config(path, environ={})


def test_a_good_setup_has_no_problems(tmp_path: Path) -> None:
    """Missing output folders and state dir are fine: tokend creates them."""
    report = check_config(config(tmp_path, outputs=(f"{tmp_path}/new/dir/a.token",)),
                          lifetimes=dict)
    assert report.problems == [] and report.warnings == []
    assert report.render().endswith("check: OK, 0 warning(s)")


def test_an_output_below_a_file_is_a_problem(tmp_path: Path) -> None:
    """A parent that is a regular file can never hold the output."""
    (tmp_path / "blocker").write_text("")
    report = check_config(config(tmp_path, outputs=(f"{tmp_path}/blocker/sub/a.token",)),
                          lifetimes=dict)
    assert len(report.problems) == 1
    assert f"{tmp_path}/blocker exists and is not a directory" in report.problems[0]
    assert "app/user0/read" in report.problems[0]


def test_an_output_that_is_a_directory_or_symlink_is_a_problem(tmp_path: Path) -> None:
    """tokend refuses to replace a directory or a symlink, so check says so first."""
    (tmp_path / "dir.token").mkdir()
    (tmp_path / "link.token").symlink_to(tmp_path / "elsewhere")
    report = check_config(
        config(tmp_path, outputs=(f"{tmp_path}/dir.token", f"{tmp_path}/link.token")),
        lifetimes=dict,
    )
    assert [p.split(": ", 2)[2] for p in report.problems] == [
        "exists and is not a regular file", "is a symlink; tokend refuses to replace it"]


def test_a_state_dir_below_a_file_is_a_problem(tmp_path: Path) -> None:
    """The state store could not be created."""
    (tmp_path / "blocker").write_text("")
    report = check_config(config(tmp_path, state_dir="blocker/state"), lifetimes=dict)
    assert len(report.problems) == 1 and report.problems[0].startswith("state_dir ")


def test_plain_http_to_a_remote_host_is_a_warning(tmp_path: Path) -> None:
    """Codes and tokens over plain http to another machine are worth a second look."""
    app = "    base_url: http://oauth.example.com\n"
    report = check_config(config(tmp_path, app=app), lifetimes=dict)
    assert report.problems == []
    assert len(report.warnings) == 1 and "base_url uses plain http" in report.warnings[0]


def test_a_loopback_redirect_without_port_cannot_be_listened_on(tmp_path: Path) -> None:
    """--listen needs the port in the redirect_uri."""
    app = "    redirect_uri: http://127.0.0.1/callback\n"
    report = check_config(config(tmp_path, app=app), lifetimes=dict)
    assert any("needs one" in warning for warning in report.warnings)


def test_more_refreshes_than_the_rate_limit_allows_is_a_warning(tmp_path: Path) -> None:
    """120 one-hour tokens at 75 % need ~2.7 refreshes a minute; 1/min cannot keep up."""
    cfg = config(tmp_path, app="    rate_limit: 1/min\n", tokens=120)
    report = check_config(cfg, lifetimes=dict)
    assert len(report.warnings) == 1
    assert "about 3 refreshes per minute" in report.warnings[0]
    assert "120 not yet authorized: a 1h lifetime assumed" in report.warnings[0]


def test_the_rate_estimate_uses_stored_lifetimes(tmp_path: Path) -> None:
    """Once authorized, the server's real lifetime replaces the 1 h assumption."""
    cfg = config(tmp_path, app="    rate_limit: 1/min\n", tokens=2)
    assert check_config(cfg, lifetimes=dict).warnings == []
    short = {TokenName("app", f"user{i}", "read"): 30 for i in range(2)}
    (warning,) = check_config(cfg, lifetimes=lambda: short).warnings
    assert "about 5 refreshes per minute" in warning and "assumed" not in warning


def hooked(tmp_path: Path, hooks: str) -> tuple[Config, str]:
    """A config whose one token has ``hooks`` (YAML lines); also its text, to find positions."""
    path = tmp_path / "config.yaml"
    text = ("state_dir: state\n"
            "applications:\n"
            "  app:\n"
            "    client_id: abc\n"
            "    client_secret: s3cr3t-value\n"
            "    tokens:\n"
            "      - user: user0\n"
            "        scope: read\n"
            f"{hooks}")
    path.write_text(text)
    path.chmod(0o600)
    return load_config(path, environ={}), text


def position(config: Config, text: str, needle: str) -> str:
    """``file:line:col`` of the first ``needle`` in the config text."""
    line = next(i for i, row in enumerate(text.splitlines(), 1) if needle in row)
    column = text.splitlines()[line - 1].index(needle) + 1
    return f"{config.source}:{line}:{column}"


def test_a_hook_executable_missing_from_path_is_a_located_problem(tmp_path: Path) -> None:
    """``on_refresh: [nosuchcmd]`` would fail at every refresh; check says where it is written."""
    cfg, text = hooked(tmp_path, "        on_refresh: [nosuchcmd-tokend-test, --flag]\n")
    (problem,) = check_config(cfg, lifetimes=dict).problems
    assert problem.startswith(position(cfg, text, "nosuchcmd") + ": ")
    assert "applications.app.tokens[0].on_refresh[0]" in problem
    assert "app/user0/read" in problem
    assert "nosuchcmd-tokend-test" in problem and "not found on PATH" in problem


def test_a_missing_or_not_executable_hook_path_is_a_problem(tmp_path: Path) -> None:
    """An on_failure hook given by path is checked at that path, on every hook key."""
    script = tmp_path / "notify.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    hooks = ("        on_refresh:\n"
             f"          - {script}\n"
             "        on_failure:\n"
             f"          - {tmp_path}/missing/notify.sh\n")
    cfg, text = hooked(tmp_path, hooks)
    first, second = check_config(cfg, lifetimes=dict).problems
    assert first.startswith(position(cfg, text, str(script)) + ": ")
    assert "on_refresh[0]" in first and "is not executable" in first
    assert second.startswith(position(cfg, text, f"{tmp_path}/missing") + ": ")
    assert "on_failure[0]" in second and "no such file" in second


def test_hooks_that_can_run_are_not_problems(tmp_path: Path) -> None:
    """An executable on PATH or at an absolute path passes, arguments and all."""
    script = tmp_path / "notify.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    cfg, _ = hooked(tmp_path, f"        on_refresh: [sh, -c, 'exit 0']\n"
                              f"        on_failure: [{script}, failed]\n")
    assert check_config(cfg, lifetimes=dict).problems == []


def test_a_state_dir_open_to_others_is_a_warning(tmp_path: Path) -> None:
    """The README promises 0700: a 0777 state_dir lets anyone replace the store."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state").chmod(0o777)
    report = check_config(config(tmp_path), lifetimes=dict)
    assert report.problems == []
    (warning,) = report.warnings
    assert f"state_dir {tmp_path / 'state'}" in warning and "0777" in warning
    assert "0700" in warning


def test_a_config_file_others_can_write_is_a_warning(tmp_path: Path) -> None:
    """Whoever can edit the config can run commands as the daemon's user through hooks."""
    cfg = config(tmp_path)
    cfg.source.chmod(0o666)
    (warning,) = check_config(cfg, lifetimes=dict).warnings
    assert f"{cfg.source}" in warning and "0666" in warning and "hooks" in warning


def test_a_config_folder_others_control_is_a_warning(tmp_path: Path) -> None:
    """A writable folder lets others replace the file; another user owning one can too."""
    folder = tmp_path / "etc"
    folder.mkdir()
    cfg = config(folder)
    folder.chmod(0o777)
    (open_folder,) = check_config(cfg, lifetimes=dict).warnings
    assert f"{folder}" in open_folder and "0777" in open_folder
    folder.chmod(0o755)
    os.chown(folder, 4242, -1)
    (foreign,) = check_config(cfg, lifetimes=dict).warnings
    assert f"{folder}" in foreign and "uid 4242" in foreign


def test_a_sticky_shared_folder_above_the_config_is_fine(tmp_path: Path) -> None:
    """In a root-owned 1777 folder (like /tmp) others cannot replace what they do not own."""
    shared = tmp_path / "shared"
    shared.mkdir()
    cfg = config(shared)
    shared.chmod(0o1777)
    assert check_config(cfg, lifetimes=dict).warnings == []


def test_an_application_without_tokens_is_a_warning(tmp_path: Path) -> None:
    """An application that refreshes nothing is likely a mistake; the warning names it."""
    path = tmp_path / "config.yaml"
    path.write_text("state_dir: state\napplications:\n  idle:\n    client_id: abc\n"
                    "    client_secret: s3cr3t-value\n  app:\n    client_id: abc\n"
                    "    client_secret: s3cr3t-value\n    tokens: [{user: alice, scope: read}]\n")
    path.chmod(0o600)
    (warning,) = check_config(load_config(path, environ={}), lifetimes=dict).warnings
    assert warning.startswith("application idle: ") and "no tokens" in warning


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_daemon_tightens_an_open_state_dir_and_says_so(
    sandbox: Sandbox, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    """The README says 0700; a 0755 state_dir left by hand is tightened at start, in the log."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    setup.write()
    setup.state_dir.mkdir()
    setup.state_dir.chmod(0o755)
    daemon = start_daemon(setup.config)
    wait_for(lambda: daemon.named("state_dir_tightened"), 20, "state_dir_tightened in the log")
    (event,) = daemon.named("state_dir_tightened")
    assert (event["path"], event["mode"], event["now"]) == (str(setup.state_dir), "0755", "0700")
    assert mode_of(setup.state_dir) == 0o700
    assert daemon.stop() == 0


def test_a_command_that_writes_the_state_tightens_its_folder(sandbox: Sandbox,
                                                              tmp_path: Path) -> None:
    """``tokend authorize`` writes the store: a 0777 state_dir becomes 0700, and it says so."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    setup.write()
    setup.state_dir.mkdir()
    setup.state_dir.chmod(0o777)
    key = sandbox.authorize(client_id="e2e-client", redirect_uri="urn:ietf:wg:oauth:2.0:oob",
                            scope="read", user="alice")
    result = tokend("authorize", "app/alice/read", f"--key={key}", config=setup.config)
    assert result.returncode == 0, result.stderr
    assert mode_of(setup.state_dir) == 0o700
    assert "state_dir_tightened" in result.stderr




@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges to nobody")
def test_a_state_dir_that_is_not_ours_to_tighten_is_used_and_logged() -> None:
    """A 0777 folder owned by root, opened by the daemon's user: no crash, a warning instead.

    A forked child drops to ``nobody`` (the venv's Python may be out of its reach).
    """
    shared = Path(tempfile.mkdtemp(prefix="tokend-check-"))
    shared.chmod(0o755)
    state = shared / "state"
    state.mkdir()
    state.chmod(0o777)

    def tighten() -> str:
        with structlog.testing.capture_logs() as logs:
            make_private_dir(state)
        return json.dumps(logs)

    try:
        logs = json.loads(as_nobody(tighten))
        assert [(e["event"], e["mode"], e["owner"]) for e in logs] == [
            ("state_dir_open", "0777", 0)]
        assert mode_of(state) == 0o777
    finally:
        shutil.rmtree(shared)


def test_check_warns_about_an_open_state_dir_that_holds_a_store(sandbox: Sandbox,
                                                                 tmp_path: Path) -> None:
    """check looks at the folder before it reads the store, so the warning is not lost."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")]).authorized()
    setup.state_dir.chmod(0o755)
    result = tokend("check", config=setup.config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"warning: state_dir {setup.state_dir} is open to other users (mode 0755)" in (
        result.stdout), result.stdout


def add_application(setup: Setup, name: str, secret: str, base_url: str) -> None:
    """Append a second application with its own secret file to ``setup``'s config."""
    secret_file = setup.root / f"{name}.secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    with setup.config.open("a") as config:
        config.write(f"  {name}:\n    base_url: {base_url}\n    client_id: e2e-client\n"
                     f"    client_secret_file: {secret_file}\n"
                     "    tokens: [{user: bob, scope: read}]\n")


def test_check_online_proves_the_client_credentials_without_using_a_token(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A right secret is ``ok``; the probe issues no token and sends no refresh token."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")]).authorized()
    issued = len(sandbox.issued_secrets())
    sandbox.reset_stats()
    result = tokend("check", "--online", config=setup.config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (f"online: application app: ok, client accepted by {sandbox.url}/oauth/token"
            in result.stdout), result.stdout
    assert len(sandbox.issued_secrets()) == issued
    assert [(grant, status) for _, grant, status in sandbox.token_requests()] == [
        ("authorization_code", 400)]


def test_check_online_names_the_application_whose_secret_is_wrong(sandbox: Sandbox,
                                                                  tmp_path: Path) -> None:
    """One application right, one wrong: exit 1, each reported, no secret printed."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    setup.write()
    wrong = "wrong-secret-Hq3v8Lp1"
    add_application(setup, "payroll", wrong, sandbox.url)
    result = tokend("check", "--online", config=setup.config)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert f"online: application app: ok, client accepted by {sandbox.url}/oauth/token" in lines
    rejected = [line for line in lines if line.startswith("problem: online: application payroll")]
    assert len(rejected) == 1 and "client rejected" in rejected[0], result.stdout
    assert "invalid_client" in rejected[0]
    leaked = any(secret in result.stdout + result.stderr for secret in (wrong, CLIENT_SECRET))
    assert not leaked, "a client secret was printed"


def test_check_online_reports_an_unreachable_server_by_url(sandbox: Sandbox,
                                                           tmp_path: Path) -> None:
    """A network error is not a rejected secret: it says unreachable and names the URL."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    setup.write()
    nowhere = f"http://127.0.0.1:{free_port()}"
    add_application(setup, "payroll", CLIENT_SECRET, nowhere)
    result = tokend("check", "--online", config=setup.config)
    assert result.returncode == 1, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "application payroll" in line]
    assert line.startswith(f"problem: online: application payroll: unreachable: "
                           f"{nowhere}/oauth/token: "), line
    assert CLIENT_SECRET not in result.stdout + result.stderr


def test_check_online_is_not_fooled_by_a_server_that_looks_up_refresh_tokens_first(
    tmp_path: Path,
) -> None:
    """Doorkeeper (Factorial's OAuth server) finds the refresh token before it checks the
    client, so an unknown refresh token answers invalid_grant whatever the secret. It checks
    the client first for an authorization code, so the probe must use one."""
    def doorkeeper(request: httpx.Request) -> httpx.Response:
        form = dict(httpx.QueryParams(request.content.decode()))
        client_ok = form.get("client_secret") == "the-right-secret"
        if form.get("grant_type") == "authorization_code" and not client_ok:
            return httpx.Response(401, json={"error": "invalid_client"})
        return httpx.Response(400, json={"error": "invalid_grant"})

    cfg = config(tmp_path)  # client_secret: s3cr3t-value, not the right one
    report = CheckReport()
    with httpx.Client(transport=httpx.MockTransport(doorkeeper)) as client:
        check_online(cfg, report, client=client)
    (problem,) = report.problems
    assert problem.startswith("online: application app: client rejected by "
                              "https://api.factorialhr.com/oauth/token"), problem
