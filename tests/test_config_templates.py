"""`format: template` in config.yaml: the template an output gets, and the located errors."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from tokend.config.load import load_config
from tokend.config.reread import reread
from tokend.errors import ConfigError

HEAD = """\
applications:
  payroll:
    client_id: abc
    client_secret: s3cr3t
    tokens:
      - user: alice
        outputs:
"""
"""A file whose token's ``outputs:`` list (line 7) later lines extend at 10 spaces."""
WHERE = "applications.payroll.tokens[0].outputs[0]"


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a scratch directory so messages name ``config.yaml`` exactly as given."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _load(outputs: str) -> Path:
    path = Path("config.yaml")
    path.write_text(HEAD + textwrap.indent(textwrap.dedent(outputs), " " * 10))
    path.chmod(0o600)
    return path


def _error(outputs: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_load(outputs), environ={})
    return str(info.value)


def test_an_inline_template_is_the_outputs_text() -> None:
    """The template's text reaches the output's spec as written."""
    config = load_config(_load("""\
        - path: /run/a.header
          format: template
          template: "Authorization: Bearer {access_token}\\n"
    """), environ={})
    (output,) = config.tokens[0].outputs
    assert (output.format, output.template) == ("template", "Authorization: Bearer "
                                                            "{access_token}\n")


def test_a_template_file_is_read_relative_to_the_config(workdir: Path) -> None:
    """template_file, like client_secret_file, is relative to the config file's folder."""
    (workdir / "templates").mkdir()
    (workdir / "templates" / "netrc.tmpl").write_text("machine x login {user} password "
                                                      "{access_token}\n")
    config = load_config(_load("""\
        - path: /run/a.netrc
          format: template
          template_file: templates/netrc.tmpl
    """), environ={})
    assert config.tokens[0].outputs[0].template == ("machine x login {user} password "
                                                    "{access_token}\n")


@pytest.mark.parametrize(("outputs", "message"), [
    ('- {path: /x, format: template, template: "Bearer {token}"}\n',
     f"config.yaml:8:52: {WHERE}.template: unknown placeholder {{token}} at character 8; "
     "placeholders are access_token, token_type, scope, expires_at, expires_in, name, app, user"),
    ('- {path: /x, format: template, template: "{refresh_token}"}\n',
     f"config.yaml:8:52: {WHERE}.template: unknown placeholder {{refresh_token}} at character 1;"
     " tokend never writes the refresh token or a secret"),
    ('- {path: /x, format: template, template: "a } b"}\n',
     f"config.yaml:8:52: {WHERE}.template: stray '}}' at character 3 (write '}}}}' for a "
     "brace)"),
    ('- {path: /x, format: template, template: "{user"}\n',
     f"config.yaml:8:52: {WHERE}.template: '{{' at character 1 is not closed (write '{{{{' for "
     "a brace)"),
    ("- {path: /x, format: template}\n",
     f"config.yaml:8:13: {WHERE}: format: template needs template (the text) or template_file "
     "(a file holding it)"),
    ('- {path: /x, format: template, template: "{user}", template_file: t.tmpl}\n',
     f"config.yaml:8:62: {WHERE}.template_file: conflicts with template: give the template in "
     "exactly one way"),
    ("- {path: /x, format: template, template_file: missing.tmpl}\n",
     f"config.yaml:8:57: {WHERE}.template_file: cannot read the template from "
     "DIR/missing.tmpl: no such file"),
    ('- {path: /x, template: "{user}"}\n',
     f"config.yaml:8:24: {WHERE}.template: only applies to format: template"),
    ('- {path: /x, format: template, template: ""}\n',
     f"config.yaml:8:52: {WHERE}.template: must not be empty"),
], ids=["unknown", "refresh-token", "stray-brace", "unclosed", "neither", "both", "unreadable",
        "not-a-template-output", "empty"])
def test_a_bad_template_is_a_located_config_error(
    workdir: Path, outputs: str, message: str
) -> None:
    """Each mistake names the file, line, column and key, and what is wrong."""
    first = _error(outputs).splitlines()[0]
    assert first == message.replace("DIR", str(workdir)), first


def test_an_unknown_placeholder_in_a_template_file_names_the_file(workdir: Path) -> None:
    """The error points at template_file and says which file holds the mistake."""
    (workdir / "bad.tmpl").write_text("token={token}\n")
    message = _error("- {path: /x, format: template, template_file: bad.tmpl}\n")
    assert message.endswith(f"config.yaml:8:57: {WHERE}.template_file: bad.tmpl: unknown "
                            "placeholder {token} at character 7; placeholders are access_token, "
                            "token_type, scope, expires_at, expires_in, name, app, user"), message


def test_a_reload_reads_an_edited_template_file_again(workdir: Path) -> None:
    """A reload whose config text did not change still sees the template file's new text."""
    template = workdir / "a.tmpl"
    template.write_text("one {user}\n")
    path = _load("- {path: /x, format: template, template_file: a.tmpl}\n"
                 "- {path: /y}\n")
    first = load_config(path, environ={})
    template.write_text("two {user}\n")
    os.utime(template, (time.time() + 5, time.time() + 5))
    again = reread(path, path.read_text(), 0o600, {}, first)
    assert again is None or again.tokens[0].outputs[0].template == "two {user}\n"
    assert load_config(path, environ={}, previous=first).tokens[0].outputs[0].template == (
        "two {user}\n")
