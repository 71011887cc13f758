"""Global options: after the command as well as before it, and from the environment."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import Setup, sandbox_with_lifetime, tokend
from tokend.cli.main import build_parser, main
from tokend.sandbox import Sandbox


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """Hour-long access tokens: every token stays ``ok`` while a test runs slowly."""
    with sandbox_with_lifetime(3600) as server:
        yield server


def _lines(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_config_is_accepted_after_the_command(tmp_path: Path, sandbox: Sandbox) -> None:
    """`tokend check --config PATH`, as config.example.yaml suggests, checks that file."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    setup.write()
    result = tokend("check", "--config", str(setup.config))
    assert result.returncode == 0, result.stderr
    status = tokend("status", "--json", "--config", str(setup.config))
    assert json.loads(status.stdout)["config"]["path"] == str(setup.config)


def test_log_level_after_the_command_takes_effect(tmp_path: Path, sandbox: Sandbox) -> None:
    """`tokend refresh --log-level warning` is not a usage error, and it quiets info lines;
    given before the command it is not undone by the command's own default."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")]).authorized()
    after = tokend("refresh", "--log-level", "debug", config=setup.config)
    assert after.returncode == 0, after.stderr
    status = tokend("status", "--log-level", "debug", config=setup.config)
    assert status.returncode == 0, status.stderr
    before = tokend("--log-level", "warning", "refresh", "--force", config=setup.config)
    assert before.returncode == 0, before.stderr
    assert not [line for line in _lines(before.stderr) if line["level"] == "info"]


def test_the_value_after_the_command_wins() -> None:
    """Given twice, the later one counts, as with any repeated option."""
    args = build_parser().parse_args(["--config", "a.yaml", "status", "--config", "b.yaml"])
    assert args.config == "b.yaml"
    kept = build_parser().parse_args(["--config", "a.yaml", "--log-level", "debug", "status"])
    assert (kept.config, kept.log_level) == ("a.yaml", "debug")


def test_log_level_and_format_come_from_the_environment(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """TOKEND_LOG_LEVEL and TOKEND_LOG_FORMAT set what a systemd drop-in needs; an option
    on the command line still beats them."""
    setup = Setup(tmp_path, sandbox, [("alice", "read")]).authorized()
    default = tokend("refresh", "--force", config=setup.config)
    assert any(line["level"] == "info" for line in _lines(default.stderr)), default.stderr
    quiet = tokend("refresh", "--force", config=setup.config,
                   env={"TOKEND_LOG_LEVEL": "warning"})
    assert quiet.returncode == 0, quiet.stderr
    assert not [line for line in _lines(quiet.stderr) if line["level"] == "info"]
    loud = tokend("refresh", "--force", "--log-level", "info", config=setup.config,
                  env={"TOKEND_LOG_LEVEL": "warning"})
    assert any(line["level"] == "info" for line in _lines(loud.stderr)), loud.stderr
    debug = tokend("refresh", "--force", config=setup.config, env={"TOKEND_LOG_LEVEL": "debug"})
    assert any(line["level"] == "debug" for line in _lines(debug.stderr)), debug.stderr
    console = tokend("refresh", "--force", config=setup.config,
                     env={"TOKEND_LOG_FORMAT": "console"})
    assert console.stderr and not _lines(console.stderr), "console lines are not JSON"
    assert "token_refreshed" in console.stderr
    json_again = tokend("refresh", "--force", "--log-format", "json", config=setup.config,
                        env={"TOKEND_LOG_FORMAT": "console"})
    assert any(line["event"] == "token_refreshed" for line in _lines(json_again.stderr))


@pytest.mark.parametrize(("variable", "value"), [("TOKEND_LOG_LEVEL", "loud"),
                                                 ("TOKEND_LOG_FORMAT", "xml")])
def test_a_bad_value_in_the_environment_is_a_usage_error_naming_it(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 and one line that names the variable and its allowed values."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exited:
        main(["check"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"${variable}" in err and repr(value) in err


def test_help_names_the_environment_variables() -> None:
    """`tokend -h` and every `tokend COMMAND -h` say where the defaults come from."""
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices
    assert isinstance(verbs, dict)
    for help_text in [parser.format_help(), *(sub.format_help() for sub in verbs.values())]:
        flat = " ".join(help_text.split())
        for variable in ("$TOKEND_CONFIG", "$TOKEND_LOG_LEVEL", "$TOKEND_LOG_FORMAT"):
            assert variable in flat, variable
