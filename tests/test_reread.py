"""A reload with ``previous``: the very objects for what did not change, what a full load gives."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokend.config.load import load_config
from tokend.config.schema import Settings, Token
from tokend.errors import ConfigError
from tokend.model import Config

HEAD = """\
x-env: &env {format: env, mode: "0640"}
x-retry: &retry {initial: 2s}
defaults:
  refresh_at: 0.7
applications:
  payroll:
    client_id: abc
    client_secret_file: payroll.secret
    retry: {initial: 5s}
    tokens:
"""
OTHER = """\
  reporting:
    client_id: def
    client_secret_file: reporting.secret
    tokens:
      - user: carol
        outputs: [{<<: *env, path: /run/t/carol.env}]
"""


def token(index: int, *extra: str) -> list[str]:
    """One token of payroll: user ``uNNNN`` with one output, and ``extra`` lines of its own."""
    return [f"      - user: u{index:04d}", "        scope: read", *extra,
            f"        outputs: [{{path: /run/t/u{index:04d}}}]"]


def config_text(count: int, extra: Mapping[int, list[str]] | None = None) -> str:
    """payroll with ``count`` tokens (``extra`` lines for some), and reporting with one."""
    lines = [line for index in range(count) for line in token(index, *(extra or {}).get(index, []))]
    return HEAD + "\n".join(lines) + "\n" + OTHER


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch directory holding config.yaml and both client secrets."""
    monkeypatch.chdir(tmp_path)
    for app in ("payroll", "reporting"):
        (tmp_path / f"{app}.secret").write_text(f"{app}-secret\n")
    return tmp_path


def write(text: str) -> Path:
    path = Path("config.yaml")
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def outcome(path: Path, previous: Config | None = None) -> Config | str:
    """The config loaded from ``path`` (with ``previous``), or the error's full message."""
    try:
        return load_config(path, environ={}, previous=previous)
    except ConfigError as error:
        return str(error)


def same_objects(new: Config, old: Config) -> list[int]:
    """Indexes of the tokens of ``new`` that are ``old``'s very objects."""
    before = {id(spec) for spec in old.tokens}
    return [index for index, spec in enumerate(new.tokens) if id(spec) in before]


def test_an_edited_token_is_new_and_every_other_one_is_the_previous_object() -> None:
    """One token's edit: only that token is a new object; the result is a full load's."""
    previous = load_config(write(config_text(200)), environ={})
    path = write(config_text(200, {57: ["        refresh_at: 0.5"]}))
    config = load_config(path, environ={}, previous=previous)
    assert config == load_config(path, environ={})
    assert same_objects(config, previous) == [index for index in range(201) if index != 57]
    assert config.tokens[57].refresh_at == 0.5
    assert config.applications["payroll"] is previous.applications["payroll"]


def test_an_added_and_a_removed_token_leave_the_others_untouched() -> None:
    """Tokens added or removed in the middle: every other token is the previous object."""
    previous = load_config(write(config_text(50)), environ={})
    text = config_text(50).replace("\n".join(token(20)) + "\n", "")
    text = text.replace("\n".join(token(30)) + "\n",
                        "\n".join(token(30)) + "\n" + "\n".join(token(999)) + "\n")
    config = load_config(write(text), environ={}, previous=previous)
    assert config == load_config(Path("config.yaml"), environ={})
    kept = {spec.name for spec in previous.tokens} - {previous.tokens[20].name}
    assert {spec.name for spec in config.tokens if any(spec is old for old in previous.tokens)} \
        == kept
    assert [str(spec.name) for spec in config.tokens].count("payroll/u0999/read") == 1


def test_a_reload_validates_only_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """With one token edited, pydantic sees that token alone, never the whole file."""
    previous = load_config(write(config_text(100)), environ={})
    validated: list[Any] = []

    def whole_file(*args: Any, **kwargs: Any) -> Settings:
        raise AssertionError("a one-token reload validated the whole file")

    def one_token(value: Any, *args: Any, **kwargs: Any) -> Token:
        validated.append(value)
        return Token(**value)

    monkeypatch.setattr(Settings, "model_validate", whole_file)
    monkeypatch.setattr(Token, "model_validate", one_token)
    config = load_config(write(config_text(100, {42: ["        timeout: 5s"]})), environ={},
                         previous=previous)
    assert config.tokens[42].timeout == 5.0
    assert [item["user"] for item in validated] == ["u0042"]


def test_a_reload_reads_client_secrets_again(workdir: Path) -> None:
    """A rotated secret file is read by the next reload even when config.yaml is unchanged."""
    previous = load_config(write(config_text(10)), environ={})
    (workdir / "payroll.secret").write_text("rotated\n")
    config = load_config(Path("config.yaml"), environ={}, previous=previous)
    assert config.applications["payroll"].client_secret.reveal() == "rotated", "secret differs"
    assert config.applications["reporting"] is previous.applications["reporting"]
    assert config.tokens == previous.tokens
    assert same_objects(config, previous) == list(range(11))


ERRORS = {
    "bad scope": (13, ["        scope: [admin]"]),
    "token twice": (13, ["      - user: u0012", "        scope: read"]),
    "output twice": (13, ["        outputs: [{path: /run/t/u0012}]"]),
    "unclosed quote": (13, ['        hook_timeout: "5s']),
    "alias to nothing": (13, ["        retry: *nope"]),
    "less indented key": (13, ["    scope: read"]),
    "tab": (13, ["\tscope: read"]),
}


@pytest.mark.parametrize("edit", ERRORS.values(), ids=list(ERRORS))
def test_a_reload_locates_errors_as_a_full_load_does(edit: tuple[int, list[str]]) -> None:
    """A mistake in an edited token reads exactly as a full load words and places it."""
    previous = load_config(write(config_text(30)), environ={})
    path = write(config_text(30, {edit[0]: edit[1]}))
    message = outcome(path, previous)
    assert isinstance(message, str), "the broken file loaded"
    assert message == outcome(path)


LINES = [
    "        scope: write", "        scope: admin", "        refresh_at: 0.5", "        mode: 640",
    "        outputs: [{path: /run/t/same}]", "        outputs: [{<<: *env, path: /run/t/e}]",
    "        on_refresh: [true]", "      - user: extra", "      - user: u0003", "        # note",
    "", "# a comment", "    rate_limit: 10/s", "  other:", "        retry: &r {initial: 1s}",
    "        retry: *r", '        hook_timeout: "9s', "        timeout: [", "\tscope: read",
    "          - nested", "        owner: root", "        user: again",
]
"""Lines an edit may insert: mostly mistakes, a few harmless."""
HARMLESS = ["token", "move", "value", "comment"]
SLIPS = ["delete", "insert", "duplicate", "indent", "outdent", "type", "erase"]
VALUES = {"scope: read": ["scope: write", "scope: read+write"], "refresh_at: 0.7": ["timeout: 9s"]}


def _harmless(draw: st.DrawFn, lines: list[str], kind: str, at: int) -> None:
    """A token added, moved or changed, or a comment or blank line, at line ``at``."""
    items = [index for index, line in enumerate(lines) if line.startswith("      - ")]
    if kind == "token" and items:
        lines[draw(st.sampled_from(items)):0] = token(draw(st.integers(100, 110)))
    elif kind == "move" and len(items) > 1:
        start = draw(st.sampled_from(items[:-1]))
        end = next(item for item in items if item > start)
        moved = lines[start:end]
        del lines[start:end]
        target = draw(st.sampled_from([index for index, line in enumerate(lines)
                                       if line.startswith("      - ")]))
        lines[target:target] = moved
    elif kind == "value" and lines[at].strip() in VALUES:
        line = lines[at].strip()
        lines[at] = lines[at].replace(line, draw(st.sampled_from(VALUES[line])))
    elif kind == "comment":
        lines.insert(at, draw(st.sampled_from(["", "        # note", "# note"])))


def _slip(draw: st.DrawFn, lines: list[str], kind: str, at: int) -> None:
    """Line ``at`` deleted, inserted, duplicated, indented differently, or a character of it
    typed or erased."""
    column = draw(st.integers(0, len(lines[at])))
    if kind == "type":
        typed = draw(st.sampled_from(list(" :-#'\"[]{}&*!|>\n\tx0")))
        lines[at] = lines[at][:column] + typed + lines[at][column:]
    elif kind == "erase":
        lines[at] = lines[at][:column] + lines[at][column + 1:]
    elif kind == "delete":
        del lines[at]
    elif kind == "insert":
        lines.insert(at, draw(st.sampled_from(LINES)))
    elif kind == "duplicate":
        lines.insert(at, lines[draw(st.integers(0, len(lines) - 1))])
    elif kind == "indent":
        lines[at] = "  " + lines[at]
    elif lines[at].startswith("  "):
        lines[at] = lines[at][2:]


@st.composite
def edits(draw: st.DrawFn, text: str) -> str:
    """``text`` after an edit or two, harmless ones three times as likely as slips."""
    lines = text.split("\n")
    for _ in range(draw(st.integers(1, 2))):
        at = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from([*HARMLESS * 3, *SLIPS]))
        (_harmless if kind in HARMLESS else _slip)(draw, lines, kind, at)
    return "\n".join(lines)


@settings(max_examples=150, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_a_reload_after_any_edit_gives_what_a_full_load_gives(data: st.DataObject) -> None:
    """Edit after edit, a load with ``previous`` equals a full load, errors included, and keeps
    the previous object for every token that did not change."""
    text = config_text(12, {5: ["        retry: *retry"]})
    previous = load_config(write(text), environ={})
    for _ in range(data.draw(st.integers(1, 4))):
        text = data.draw(edits(text))
        path = write(text)
        found, expected = outcome(path, previous), outcome(path)
        assert found == expected
        if isinstance(found, Config):
            before = {spec.name: spec for spec in previous.tokens}
            assert all(spec is before[spec.name] for spec in found.tokens
                       if before.get(spec.name) == spec)
            previous = found


def test_a_config_built_by_hand_as_previous_is_a_full_load() -> None:
    """``previous`` from elsewhere (no reread state) still gives a full load's result."""
    text = textwrap.dedent("""\
        applications:
          payroll: {client_id: abc, client_secret_file: payroll.secret, tokens: [{user: a}]}
        """)
    loaded = load_config(write(text), environ={})
    stranger = Config(source=loaded.source, state_dir=loaded.state_dir,
                      applications=loaded.applications, tokens=loaded.tokens)
    config = load_config(Path("config.yaml"), environ={}, previous=stranger)
    assert config == loaded
    assert config.tokens[0] is loaded.tokens[0]
