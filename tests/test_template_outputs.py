"""Template outputs written by the daemon: the right text for every new token."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.e2e import Setup, StartDaemon, tokend, wait_for
from tokend.sandbox import Sandbox

SNIPPET = """\
factorial:
  token: "{access_token}"
  token_type: {token_type}
  scope: {scope}
  expires_at: "{expires_at}"
  expires_in: {expires_in}
  name: {name}
  app: {app}
  user: {user}
  braces: "{{literal}}"
"""
ROTATIONS = 3


def test_template_outputs_follow_every_rotation(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon, figures: dict[str, str],
) -> None:
    """An inline header template and a YAML template_file hold the current token and its
    facts after each refresh; `tokend token --format template` prints the first of them."""
    (tmp_path / "snippet.tmpl").write_text(SNIPPET)
    setup = Setup(tmp_path, sandbox, [("alice", "read")])
    setup.extra_outputs_yaml["alice"] = (
        f"          - path: {setup.output('alice', 'read', 'header')}\n"
        "            format: template\n"
        '            template: "Authorization: Bearer {access_token}\\n"\n'
        f"          - path: {setup.output('alice', 'read', 'yaml')}\n"
        "            format: template\n"
        "            template_file: snippet.tmpl\n"
        '            mode: "0640"\n')
    setup.authorized()
    daemon = start_daemon(setup.config)
    tokens: set[str] = set()
    right: list[bool] = []  # per token seen; never the tokens themselves, which must not print

    def check_current() -> bool:
        token = setup.output("alice", "read", "token").read_text()
        files = [setup.output("alice", "read", suffix) for suffix in ("json", "header", "yaml")]
        raw_json, header, raw_yaml = (file.read_text() for file in files)
        document, snippet = json.loads(raw_json), yaml.safe_load(raw_yaml)["factorial"]
        if token in tokens or {document["access_token"], snippet["token"]} != {token}:
            return False  # not rotated yet, or read while the files were being replaced
        tokens.add(token)
        expires_in = snippet.pop("expires_in")
        right.append(
            header == f"Authorization: Bearer {token}\n"
            and snippet == {"token": token, "token_type": "Bearer", "scope": "read",
                            "expires_at": document["expires_at"], "name": "app/alice/read",
                            "app": "app", "user": "alice", "braces": "{literal}"}
            and 0 <= expires_in <= sandbox.settings()["access_token_lifetime"])
        return len(tokens) > ROTATIONS

    wait_for(check_current, 60, f"{ROTATIONS} rotations of the template outputs")
    header = setup.output("alice", "read", "header")

    def shown_as_written() -> bool:
        before = header.read_text()
        shown = tokend("token", "app/alice", "--format", "template", config=setup.config)
        return shown.stdout == before == header.read_text()  # else it rotated meanwhile: again

    wait_for(shown_as_written, 30, "tokend token --format template to print the header output")
    assert daemon.stop() == 0
    figures["template outputs"] = f"{len(right)} tokens checked, {sum(right)} right"
    assert all(right), "a template output did not match its token"
    assert oct(setup.output("alice", "read", "yaml").stat().st_mode & 0o777) == "0o640"
