"""``tokend token``'s fast path: the same state_dir as the full loader, without its imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tokend.config.load import default_config_path, load_config
from tokend.config.quick import quick_outputs, quick_state_dir
from tokend.errors import ConfigError, NotFoundError
from tokend.model import Token, TokenName
from tokend.store.current import NoValidTokenError, current_access_token
from tokend.store.interface import Written
from tokend.store.sqlite import SqliteStateStore

APP = """\
applications:
  payroll:
    client_id: abc
    client_secret: s3cr3t-value
    tokens:
      - user: alice
        scope: read
      - user: alice
        scope: write
      - user: bob
        scope: read
"""


@pytest.mark.parametrize(
    ("head", "environ"),
    [
        ("state_dir: state\n", {}),
        ("state_dir: ../elsewhere/state\n", {}),
        ("state_dir: /var/lib/custom\n", {}),
        ("state_dir: state\n", {"TOKEND_STATE_DIR": "/srv/override"}),
        ("state_dir: state\n", {"TOKEND_STATE_DIR": "relative/override"}),
        ("", {"STATE_DIRECTORY": "/var/lib/tokend-unit:/var/lib/other"}),
        ("", {}),
        ("x-anchor: &a {}\nstate_dir: 'quoted dir'\n", {"TOKEND_STATE_DIR": ""}),
    ],
    ids=["relative", "parent", "absolute", "env-absolute", "env-relative", "systemd",
         "default", "quoted-empty-env"],
)
def test_state_dir_agrees_with_load_config(
    tmp_path: Path, head: str, environ: dict[str, str]
) -> None:
    """`tokend token` reads the same store the daemon writes, whatever the rule used."""
    path = tmp_path / "conf" / "config.yaml"
    path.parent.mkdir()
    path.write_text(head + APP)
    path.chmod(0o600)
    assert quick_state_dir(path, environ=environ) == load_config(path, environ=environ).state_dir


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, "/etc/tokend/config.yaml"), ({"TOKEND_CONFIG": "/x/c.yaml"}, "/x/c.yaml"),
    ({"TOKEND_CONFIG": ""}, "/etc/tokend/config.yaml")])
def test_default_config_path(environ: dict[str, str], expected: str) -> None:
    """--config's default: $TOKEND_CONFIG when set and not empty."""
    assert default_config_path(environ) == Path(expected)


@pytest.mark.parametrize("text", ["state_dir: [a]\n", "- a list\n", "state_dir: '  '\n", "{"])
def test_a_broken_file_is_a_config_error_pointing_at_check(tmp_path: Path, text: str) -> None:
    """A file the fast path cannot read says so and sends the operator to `tokend check`."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="tokend check"):
        quick_state_dir(path, environ={})


def _store(tmp_path: Path, *, issued_at: int, skew: int = 0) -> Path:
    """Three tokens issued at ``issued_at`` on this host, the server's clock ``skew`` s off;
    payroll/alice/write is then revoked."""
    state = tmp_path / "state"
    store = SqliteStateStore(state)
    for user, scope in (("alice", "read"), ("alice", "write"), ("bob", "read")):
        token = Token(f"access-{user}-{scope}", "Bearer", 3600, "refresh", scope,
                      issued_at + skew)
        store.save_token(TokenName("payroll", user, scope), token, now=issued_at)
    claim = store.claim(TokenName("payroll", "alice", "write"), owner="test", lease=60.0)
    assert claim is not None
    assert store.delete_token(claim.lease, generation=claim.generation) is Written.DONE
    store.release(claim.lease)
    store.close()
    return state


def test_a_valid_token_is_found_by_its_full_or_unambiguous_name(tmp_path: Path) -> None:
    """APP/USER/SCOPE always works; APP/USER when the user has one token."""
    now = int(time.time())
    state = _store(tmp_path, issued_at=now)
    assert current_access_token(state, "payroll/bob", now=now) == "access-bob-read"
    assert current_access_token(state, "payroll/alice/read", now=now) == "access-alice-read"


def test_an_ambiguous_name_lists_the_candidates(tmp_path: Path) -> None:
    """payroll/alice has two scopes: the error names both."""
    state = _store(tmp_path, issued_at=int(time.time()))
    with pytest.raises(NotFoundError, match="payroll/alice/read, payroll/alice/write"):
        current_access_token(state, "payroll/alice", now=time.time())


@pytest.mark.parametrize(
    ("name", "later", "message"),
    [
        ("payroll/alice/write", 0, "not authorized"),
        ("payroll/carol/read", 0, "no token named"),
        ("payroll/bob/read", 3600, "expired at"),
    ],
    ids=["revoked", "unknown", "expired"],
)
def test_no_valid_token_is_a_clear_error(
    tmp_path: Path, name: str, later: int, message: str
) -> None:
    """Revoked, unknown and expired tokens fail with a message instead of a dead token."""
    now = int(time.time())
    state = _store(tmp_path, issued_at=now)
    with pytest.raises(NoValidTokenError, match=message):
        current_access_token(state, name, now=now + later)


@pytest.mark.parametrize("skew", [-3000, 3000], ids=["server-behind", "server-ahead"])
def test_expiry_counts_from_this_hosts_issue_time(tmp_path: Path, skew: int) -> None:
    """A server clock 50 minutes off neither kills a live token early nor keeps a dead one."""
    now = int(time.time())
    state = _store(tmp_path, issued_at=now, skew=skew)
    assert current_access_token(state, "payroll/bob/read", now=now + 3599) == "access-bob-read"
    with pytest.raises(NoValidTokenError, match="expired at"):
        current_access_token(state, "payroll/bob/read", now=now + 3600)


def test_tokend_token_does_not_import_httpx_pydantic_or_structlog(tmp_path: Path) -> None:
    """`tokend token` runs in $(…) all day: it must start without the heavy libraries."""
    now = int(time.time())
    _store(tmp_path, issued_at=now)
    config = tmp_path / "config.yaml"
    config.write_text("state_dir: state\n" + APP)
    script = textwrap.dedent(f"""
        import json, sys
        from tokend.cli.main import main
        status = main(["--config", {str(config)!r}, "token", "payroll/bob/read"])
        heavy = sorted(m for m in ("httpx", "pydantic", "structlog", "psycopg")
                       if m in sys.modules)
        print(json.dumps({{"status": status, "heavy": heavy}}), file=sys.stderr)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30, check=False, env={**os.environ})
    assert result.stdout == "access-bob-read\n"
    assert json.loads(result.stderr.splitlines()[-1]) == {"status": 0, "heavy": []}



@pytest.mark.parametrize("verb", [
    ["token", "payroll/bob/read"],
    ["token", "payroll/bob", "--format", "env"],  # reads the whole file
    ["exec", "payroll/bob", "--", "true"],
], ids=["token", "env", "exec"])
def test_the_fast_path_builds_none_of_the_models_classes(tmp_path: Path, verb: list[str]) -> None:
    """Each start of `tokend token` or `exec` would otherwise build every dataclass of the
    model and the store's contract, and import dataclasses (with inspect), for one row."""
    now = int(time.time())
    _store(tmp_path, issued_at=now)
    config = tmp_path / "config.yaml"
    config.write_text("state_dir: state\n" + APP)
    script = textwrap.dedent(f"""
        import json, os, sys
        def report(*_args):
            loaded = sorted(m for m in ("dataclasses", "tokend.model", "tokend.store.interface")
                            if m in sys.modules)
            print(json.dumps(loaded), file=sys.stderr)
            os._exit(0)
        os.execvpe = report
        from tokend.cli.main import main
        status = main(["--config", {str(config)!r}, *{verb!r}])
        report()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30, check=False, env={**os.environ})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stderr.splitlines()[-1]) == []


@pytest.mark.parametrize(
    "head",
    [
        "x-dir: &dir from-anchor\nstate_dir: *dir\n",
        "x-base: &base {state_dir: from-merge}\n<<: *base\n",
        "defaults:\n  concurrency: 2\n  retry: {initial: 1s}\nmetrics: {}\nstate_dir: late\n",
        "'state_dir': quoted-key\n",
        "state_dir: !!str 123\n",
        "state_dir: ~\n",
    ],
    ids=["alias", "merge-key", "after-nested-blocks", "quoted-key", "tagged", "null"],
)
def test_state_dir_written_any_way_agrees_with_load_config(tmp_path: Path, head: str) -> None:
    """Anchors, merge keys, quoting and tags lead `tokend token` to the daemon's store too."""
    path = tmp_path / "config.yaml"
    path.write_text(head + APP)
    path.chmod(0o600)
    environ = {"STATE_DIRECTORY": "/var/lib/from-systemd"}
    assert quick_state_dir(path, environ=environ) == load_config(path, environ=environ).state_dir


def test_only_the_top_of_the_file_is_read(tmp_path: Path) -> None:
    """`tokend token` stops at state_dir: a large file costs it no more than a small one."""
    path = tmp_path / "config.yaml"
    path.write_text("state_dir: state\napplications: [never, closed\n")
    assert quick_state_dir(path, environ={}) == tmp_path / "state"


def test_an_unknown_name_lists_the_stored_tokens(tmp_path: Path) -> None:
    """A typo is answered with every name the store holds, to pick the right one."""
    state = _store(tmp_path, issued_at=int(time.time()))
    with pytest.raises(NoValidTokenError, match=r"stored tokens: payroll/alice/read, "
                                                r"payroll/alice/write, payroll/bob/read$"):
        current_access_token(state, "payroll/carol", now=time.time())


@pytest.mark.parametrize(("name", "error", "message"), [
    ("payroll", NotFoundError,
     "say which one: payroll/alice/read, payroll/alice/write, payroll/bob/read"),
    ("payroll/bob/read/extra", NoValidTokenError, "no token named"),
    ("other/bob/read", NoValidTokenError, "no token named"),
])
def test_names_of_other_shapes_are_refused_clearly(
    tmp_path: Path, name: str, error: type[Exception], message: str
) -> None:
    """An application alone, too many parts or another application never returns a token."""
    state = _store(tmp_path, issued_at=int(time.time()))
    with pytest.raises(error, match=message):
        current_access_token(state, name, now=time.time())


OUTPUTS = """\
x-env: &env {format: env, mode: "0640"}
applications:
  payroll:
    client_id: abc
    client_secret: s3cr3t-value
    tokens:
      - user: alice
        outputs:
          - {<<: *env, path: /run/a.env, variable: ALICE_TOKEN}
          - {path: /run/a.tmpl, format: template, template_file: a.tmpl}
          - {path: /run/a.json, format: json}
      - user: alice
        scope: read
        outputs: [{path: /run/b, format: template, template: "Bearer {access_token}"}]
      - user: bob
        scope: write
"""


def test_a_tokens_outputs_agree_with_load_config(tmp_path: Path) -> None:
    """`tokend token --format` and `exec` see the format, variable and template the daemon
    writes: defaults, merge keys and template files included."""
    path = tmp_path / "config.yaml"
    path.write_text(OUTPUTS)
    path.chmod(0o600)
    (tmp_path / "a.tmpl").write_text("{user}: {access_token}\n")
    config = load_config(path, environ={})
    names = [str(spec.name) for spec in config.tokens] + ["payroll/carol/read"]
    quick = quick_outputs(path, names)
    for spec in config.tokens:
        assert [(o.kind, o.variable, o.template) for o in quick[str(spec.name)]] == [
            (o.format, o.variable, o.template) for o in spec.outputs], spec.name
    assert quick["payroll/carol/read"] == []
