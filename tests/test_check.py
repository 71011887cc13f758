"""``tokend check``: what would stop the daemon, found before the daemon finds it."""

from __future__ import annotations

from pathlib import Path

from tokend.check import check_config
from tokend.config import load_config
from tokend.model import Config, TokenName


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
                          lifetimes={})
    assert report.problems == [] and report.warnings == []
    assert report.render().endswith("check: OK, 0 warning(s)")


def test_an_output_below_a_file_is_a_problem(tmp_path: Path) -> None:
    """A parent that is a regular file can never hold the output."""
    (tmp_path / "blocker").write_text("")
    report = check_config(config(tmp_path, outputs=(f"{tmp_path}/blocker/sub/a.token",)),
                          lifetimes={})
    assert len(report.problems) == 1
    assert f"{tmp_path}/blocker exists and is not a directory" in report.problems[0]
    assert "app/user0/read" in report.problems[0]


def test_an_output_that_is_a_directory_or_symlink_is_a_problem(tmp_path: Path) -> None:
    """tokend refuses to replace a directory or a symlink, so check says so first."""
    (tmp_path / "dir.token").mkdir()
    (tmp_path / "link.token").symlink_to(tmp_path / "elsewhere")
    report = check_config(
        config(tmp_path, outputs=(f"{tmp_path}/dir.token", f"{tmp_path}/link.token")),
        lifetimes={},
    )
    assert [p.split(": ", 2)[2] for p in report.problems] == [
        "exists and is not a regular file", "is a symlink; tokend refuses to replace it"]


def test_a_state_dir_below_a_file_is_a_problem(tmp_path: Path) -> None:
    """The state store could not be created."""
    (tmp_path / "blocker").write_text("")
    report = check_config(config(tmp_path, state_dir="blocker/state"), lifetimes={})
    assert len(report.problems) == 1 and report.problems[0].startswith("state_dir ")


def test_plain_http_to_a_remote_host_is_a_warning(tmp_path: Path) -> None:
    """Codes and tokens over plain http to another machine are worth a second look."""
    app = "    base_url: http://oauth.example.com\n"
    report = check_config(config(tmp_path, app=app), lifetimes={})
    assert report.problems == []
    assert len(report.warnings) == 1 and "base_url uses plain http" in report.warnings[0]


def test_a_loopback_redirect_without_port_cannot_be_listened_on(tmp_path: Path) -> None:
    """--listen needs the port in the redirect_uri."""
    app = "    redirect_uri: http://127.0.0.1/callback\n"
    report = check_config(config(tmp_path, app=app), lifetimes={})
    assert any("needs one" in warning for warning in report.warnings)


def test_more_refreshes_than_the_rate_limit_allows_is_a_warning(tmp_path: Path) -> None:
    """120 one-hour tokens at 75 % need ~2.7 refreshes a minute; 1/min cannot keep up."""
    cfg = config(tmp_path, app="    rate_limit: 1/min\n", tokens=120)
    report = check_config(cfg, lifetimes={})
    assert len(report.warnings) == 1
    assert "about 3 refreshes per minute" in report.warnings[0]
    assert "120 not yet authorized: a 1h lifetime assumed" in report.warnings[0]


def test_the_rate_estimate_uses_stored_lifetimes(tmp_path: Path) -> None:
    """Once authorized, the server's real lifetime replaces the 1 h assumption."""
    cfg = config(tmp_path, app="    rate_limit: 1/min\n", tokens=2)
    assert check_config(cfg, lifetimes={}).warnings == []
    short = {TokenName("app", f"user{i}", "read"): 30 for i in range(2)}
    (warning,) = check_config(cfg, lifetimes=short).warnings
    assert "about 5 refreshes per minute" in warning and "assumed" not in warning
