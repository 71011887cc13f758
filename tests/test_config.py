"""What an operator sees when tokend reads config.yaml: the values it gets, and the errors."""

from __future__ import annotations

import os
import textwrap
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokend.config.load import default_config_path, load_config
from tokend.config.reader import read_yaml
from tokend.errors import ConfigError
from tokend.model import (
    SCOPE_RULE,
    Config,
    MetricsSpec,
    OutputSpec,
    RetryPolicy,
    Secret,
    TokenName,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"
SECRET = "S3CR3T-do-not-show"
APP = f"""\
applications:
  payroll:
    client_id: abc
    client_secret: {SECRET}
    tokens:
      - user: alice
"""
"""A minimal valid file whose token mapping (line 6) later lines can extend at 8 spaces."""


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a scratch directory so messages name ``config.yaml`` exactly as given."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(text: str, environ: Mapping[str, str] | None = None, mode: int = 0o600) -> Config:
    path = Path("config.yaml")
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    path.chmod(mode)
    return load_config(path, environ={} if environ is None else environ)


def error_of(text: str, environ: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(text, environ)
    return str(info.value)


def example_environ(tmp_path: Path) -> dict[str, str]:
    credentials = tmp_path / "credentials"
    credentials.mkdir(exist_ok=True)
    (credentials / "reporting-secret").write_text("reporting-secret-value\n")
    return {"PAYROLL_CLIENT_SECRET": "payroll-secret-value",
            "CREDENTIALS_DIRECTORY": str(credentials)}


# --- the example and the values a valid file produces ------------------------------------


def test_example_config_loads(tmp_path: Path) -> None:
    """The shipped config.example.yaml is valid and yields both documented applications."""
    config = load_config(EXAMPLE, environ=example_environ(tmp_path))
    assert sorted(config.applications) == ["payroll", "reporting"]
    assert [str(token.name) for token in config.tokens] == [
        "payroll/alice/read", "reporting/reports@example.com/read+write"]
    assert config.applications["payroll"].client_secret == Secret("payroll-secret-value"), (
        "payroll secret differs")
    assert config.applications["reporting"].client_secret == Secret("reporting-secret-value"), (
        "reporting secret differs")
    assert config.warnings == ()


def test_example_merge_key_fills_env_output(tmp_path: Path) -> None:
    """The example's ``<<: *env_file`` output gets the shared format and mode."""
    config = load_config(EXAMPLE, environ=example_environ(tmp_path))
    env_output = config.tokens[0].outputs[1]
    assert (env_output.format, env_output.mode) == ("env", 0o640)


def test_minimal_config_gets_documented_defaults() -> None:
    """A file with just an application and a user gets every default the docs promise."""
    config = load(APP)
    app = config.applications["payroll"]
    token = config.tokens[0]
    assert (app.name, app.client_id) == ("payroll", "abc")
    assert app.client_secret == Secret(SECRET), "inline secret differs"
    assert (app.base_url, app.redirect_uri) == ("https://api.factorialhr.com",
                                                "urn:ietf:wg:oauth:2.0:oob")
    assert (app.rate_limit, app.concurrency, app.timeout) == (3.0, 8, 30.0)
    assert token.name == TokenName("payroll", "alice", "read+write")
    assert (token.refresh_at, token.timeout, token.retry) == (0.75, 30.0, RetryPolicy(10.0, 600.0))
    assert (token.refresh_token_lifetime, token.hook_timeout) == (7 * 86400.0, 30.0)
    assert (config.concurrency, config.state_dir, config.source) == (
        8, Path("/var/lib/tokend"), Path("config.yaml"))


def test_every_key_reaches_the_runtime_values() -> None:
    """Each documented key changes the matching runtime field."""
    config = load(f"""\
        state_dir: /srv/tokend
        defaults:
          concurrency: 3
        applications:
          payroll:
            base_url: https://factorial.example.com/
            client_id: abc
            client_secret: {SECRET}
            redirect_uri: http://127.0.0.1:8765/cb
            rate_limit: 60/min
            concurrency: 2
            timeout: 5s
            tokens:
              - user: alice
                scope: write
                refresh_at: 0.5
                timeout: 1m
                retry: {{initial: 2s, max: 1h}}
                refresh_token_lifetime: 2d
                hook_timeout: 90
                on_refresh: [systemctl, restart, payroll.service]
                on_failure: [logger, failed]
                outputs:
                  - {{path: /run/a.env, format: env, variable: TOKEN, mode: "0640"}}
        """)
    app = config.applications["payroll"]
    token = config.tokens[0]
    assert (config.state_dir, config.concurrency) == (Path("/srv/tokend"), 3)
    assert (app.base_url, app.redirect_uri) == ("https://factorial.example.com",
                                                "http://127.0.0.1:8765/cb")
    assert (app.rate_limit, app.concurrency, app.timeout) == (1.0, 2, 5.0)
    assert token.name == TokenName("payroll", "alice", "write")
    assert (token.refresh_at, token.timeout, token.retry) == (0.5, 60.0, RetryPolicy(2.0, 3600.0))
    assert (token.refresh_token_lifetime, token.hook_timeout) == (2 * 86400.0, 90.0)
    assert token.on_refresh == ("systemctl", "restart", "payroll.service")
    assert token.on_failure == ("logger", "failed")
    assert token.outputs == (OutputSpec(Path("/run/a.env"), "env", "TOKEN", 0o640),)


def test_overrides_layer_defaults_then_application_then_token() -> None:
    """A token setting beats its application's, which beats defaults; unset keys inherit."""
    config = load(f"""\
        defaults: {{refresh_at: 0.6, timeout: 40s, hook_timeout: 10s, retry: {{initial: 1s}}}}
        applications:
          payroll:
            client_id: abc
            client_secret: {SECRET}
            timeout: 20s
            retry: {{max: 1m}}
            tokens:
              - user: alice
                timeout: 5s
              - user: bob
                refresh_at: 0.9
                retry: {{initial: 3s}}
        """)
    alice, bob = config.tokens
    assert (alice.refresh_at, alice.timeout, alice.hook_timeout) == (0.6, 5.0, 10.0)
    assert (bob.refresh_at, bob.timeout) == (0.9, 20.0)
    assert (alice.retry, bob.retry) == (RetryPolicy(1.0, 60.0), RetryPolicy(3.0, 60.0))
    assert config.applications["payroll"].timeout == 20.0


def test_application_inherits_concurrency_and_rate_limit_from_defaults() -> None:
    """``defaults.concurrency`` and ``rate_limit`` apply to applications that do not set them."""
    config = load("defaults: {concurrency: 5, rate_limit: 120/min}\n" + APP)
    assert (config.applications["payroll"].concurrency, config.concurrency) == (5, 5)
    assert config.applications["payroll"].rate_limit == 2.0


def test_env_variable_overrides_state_dir() -> None:
    """TOKEND_STATE_DIR beats the file's state_dir."""
    config = load("state_dir: /from/file\n" + APP, {"TOKEND_STATE_DIR": "/from/env"})
    assert config.state_dir == Path("/from/env")


def test_invalid_state_dir_in_file_is_ignored_when_env_overrides() -> None:
    """An override replaces the file's value entirely, so the file's mistake does not matter."""
    config = load("state_dir: [oops]\n" + APP, {"TOKEND_STATE_DIR": "/from/env"})
    assert config.state_dir == Path("/from/env")


def test_relative_state_dir_is_relative_to_the_config_file(workdir: Path) -> None:
    """``state_dir: state`` means the folder next to config.yaml, not the current directory."""
    assert load("state_dir: state\n" + APP).state_dir == workdir / "state"


def test_state_directory_from_systemd_is_the_default() -> None:
    """Without state_dir, the first path of $STATE_DIRECTORY (systemd) is used."""
    config = load(APP, {"STATE_DIRECTORY": "/var/lib/tokend-a:/var/lib/tokend-b"})
    assert config.state_dir == Path("/var/lib/tokend-a")


def test_default_config_path_honours_tokend_config() -> None:
    """--config defaults to $TOKEND_CONFIG, else /etc/tokend/config.yaml."""
    assert default_config_path({"TOKEND_CONFIG": "/x/y.yaml"}) == Path("/x/y.yaml")
    assert default_config_path({}) == Path("/etc/tokend/config.yaml")


def test_client_secret_from_file_drops_trailing_newline(workdir: Path) -> None:
    """``client_secret_file`` (relative to the config file) is read without its final newline."""
    (workdir / "payroll.secret").write_text("from-file\n")
    config = load(APP.replace(f"client_secret: {SECRET}", "client_secret_file: payroll.secret"))
    assert config.applications["payroll"].client_secret == Secret("from-file"), "secret differs"


def test_client_secret_from_environment() -> None:
    """``client_secret_env`` names the variable that holds the secret."""
    config = load(APP.replace(f"client_secret: {SECRET}", "client_secret_env: PAYROLL_SECRET"),
                  {"PAYROLL_SECRET": "from-env"})
    assert config.applications["payroll"].client_secret == Secret("from-env"), "secret differs"


def test_client_secret_from_systemd_credential(workdir: Path) -> None:
    """``client_secret_credential`` reads $CREDENTIALS_DIRECTORY/NAME."""
    (workdir / "creds").mkdir()
    (workdir / "creds" / "payroll").write_text("from-credential\n")
    config = load(APP.replace(f"client_secret: {SECRET}", "client_secret_credential: payroll"),
                  {"CREDENTIALS_DIRECTORY": str(workdir / "creds")})
    assert config.applications["payroll"].client_secret == Secret("from-credential"), (
        "secret differs")


def test_inline_secret_in_world_readable_file_warns() -> None:
    """A readable-by-all file with an inline secret loads, with a chmod warning."""
    config = load(APP, mode=0o644)
    assert config.warnings == ("config.yaml: holds an inline client_secret and is readable by "
                               "other users; chmod 600 it or use client_secret_file",)


def test_inline_secret_in_private_file_does_not_warn() -> None:
    """The same file at mode 0600 loads without a warning."""
    assert load(APP, mode=0o600).warnings == ()


def test_owner_and_group_names_resolve_to_ids() -> None:
    """``owner: root`` and ``group: root`` become uid and gid 0; numbers pass through."""
    config = load(APP + "        outputs:\n"
                  "          - {path: /run/a, owner: root, group: root}\n"
                  "          - {path: /run/b, owner: 0, group: '0'}\n")
    assert [(o.owner, o.group) for o in config.tokens[0].outputs] == [(0, 0), (0, 0)]


def test_mode_written_as_unquoted_octal_is_accepted() -> None:
    """``mode: 0640`` (YAML 1.1 octal) means 0o640, like the quoted form."""
    config = load(APP + "        outputs: [{path: /run/a, mode: 0640}]\n")
    assert config.tokens[0].outputs[0].mode == 0o640


def test_output_paths_are_normalized() -> None:
    """``/run//tokend/./a`` is stored as ``/run/tokend/a``."""
    config = load(APP + "        outputs: [{path: /run//tokend/./a}]\n")
    assert config.tokens[0].outputs[0].path == Path("/run/tokend/a")


def test_anchors_share_output_settings() -> None:
    """Aliases and merge keys work; explicit keys win over merged ones."""
    config = load(APP + "        outputs:\n"
                  "          - &shared {path: /run/a, format: env, mode: '0640'}\n"
                  "          - {<<: *shared, path: /run/b}\n")
    assert [(str(o.path), o.format, o.mode) for o in config.tokens[0].outputs] == [
        ("/run/a", "env", 0o640), ("/run/b", "env", 0o640)]


def test_top_level_x_keys_hold_anchors_and_are_ignored() -> None:
    """``x-anything:`` at the top is a place for anchors, not an unknown key."""
    config = load("x-outputs: &out {format: json}\n" + APP
                  + "        outputs: [{<<: *out, path: /run/a.json}]\n")
    assert config.tokens[0].outputs[0].format == "json"


def test_empty_sections_mean_nothing_configured() -> None:
    """``defaults:`` or ``tokens:`` with every entry commented out is not an error."""
    config = load("defaults:\napplications:\n  payroll:\n    client_id: abc\n"
                  f"    client_secret: {SECRET}\n    tokens:\n")
    assert (config.tokens, list(config.applications)) == ((), ["payroll"])


def test_empty_tokend_state_dir_variable_is_ignored() -> None:
    """``TOKEND_STATE_DIR=`` (empty) leaves the file's value in place."""
    assert load("state_dir: /srv/t\n" + APP, {"TOKEND_STATE_DIR": ""}).state_dir == Path("/srv/t")


def test_metrics_are_off_by_default() -> None:
    """Without a metrics block no listener is configured."""
    assert load(APP).metrics is None


def test_empty_metrics_block_listens_on_the_default_loopback_port() -> None:
    """``metrics: {}`` turns the listener on at 127.0.0.1:9464, loopback only."""
    assert load("metrics: {}\n" + APP).metrics == MetricsSpec("127.0.0.1", 9464, False)


@pytest.mark.parametrize(("listen", "host", "port"), [
    ("127.0.0.1:0", "127.0.0.1", 0), ("localhost:9100", "localhost", 9100),
    ("[::1]:9464", "::1", 9464), ("127.1.2.3:80", "127.1.2.3", 80),
])
def test_metrics_listen_on_any_loopback_address(listen: str, host: str, port: int) -> None:
    """Every loopback form is accepted without allow_remote; port 0 means a free port."""
    config = load(f'metrics: {{listen: "{listen}"}}\n' + APP)
    assert config.metrics == MetricsSpec(host, port, False)


def test_metrics_allow_remote_permits_all_interfaces() -> None:
    """``allow_remote: true`` is the explicit opt-in to serve other hosts."""
    config = load('metrics: {listen: "0.0.0.0:9464", allow_remote: true}\n' + APP)
    assert config.metrics == MetricsSpec("0.0.0.0", 9464, True)
    assert config.metrics.listen == "0.0.0.0:9464"


# --- broken files: the exact message an operator reads ------------------------------------

T = APP  # token-level keys go on line 7 at column 9
BROKEN: list[tuple[str, str, str]] = [
    ("scope", T + "        scope: read\\write\n",
     "config.yaml:7:16: applications.payroll.tokens[0].scope: '\\\\' (character 5) cannot be "
     "in a scope: use read, write, read+write, or scopes separated by single spaces (such as "
     "employees time_off), each of printable ASCII without \" or \\"),
    ("token concurrency", T + "        concurrency: 2\n",
     "config.yaml:7:22: applications.payroll.tokens[0].concurrency: can only be set under "
     "defaults or an application, not per token"),
    ("token rate_limit", T + "        rate_limit: 10/s\n",
     "config.yaml:7:21: applications.payroll.tokens[0].rate_limit: can only be set under "
     "defaults or an application, not per token"),
    ("hook as string", T + "        on_refresh: systemctl restart x\n",
     "config.yaml:7:21: applications.payroll.tokens[0].on_refresh: must be a list of arguments "
     "such as [pkill, -HUP, -x, agent]; no shell runs it"),
    ("empty hook argument", T + '        on_refresh: [systemctl, ""]\n',
     "config.yaml:7:33: applications.payroll.tokens[0].on_refresh[1]: must not be empty"),
    ("numeric hook argument", T + "        on_failure: [sleep, 5]\n",
     "config.yaml:7:29: applications.payroll.tokens[0].on_failure[1]: must be a string, "
     "not a number; quote it"),
    ("refresh_at too high", T + "        refresh_at: 1.5\n",
     "config.yaml:7:21: applications.payroll.tokens[0].refresh_at: must be a fraction of the "
     "token lifetime between 0.1 and 0.95"),
    ("refresh_at percent", T + '        refresh_at: "75%"\n',
     "config.yaml:7:21: applications.payroll.tokens[0].refresh_at: must be a number, not text"),
    ("bad duration", T + "        timeout: soon\n",
     "config.yaml:7:18: applications.payroll.tokens[0].timeout: must be a duration such as "
     "90s, 5m, 1h or 7d"),
    ("zero duration", T + "        hook_timeout: 0\n",
     "config.yaml:7:23: applications.payroll.tokens[0].hook_timeout: must be longer than zero"),
    ("retry max below initial", T + "        retry: {initial: 1m, max: 10s}\n",
     "config.yaml:7:16: applications.payroll.tokens[0].retry: max (10s) must not be shorter "
     "than initial (1m)"),
    ("retry typo", T + "        retry: {initial: 1s, maxx: 2m}\n",
     "config.yaml:7:30: applications.payroll.tokens[0].retry.maxx: unknown key; did you mean "
     "max?"),
    ("token key typo", T + "        scpoe: read\n",
     "config.yaml:7:9: applications.payroll.tokens[0].scpoe: unknown key; did you mean scope?"),
    ("user name", T.replace("user: alice", 'user: "alice smith"'),
     "config.yaml:6:15: applications.payroll.tokens[0].user: user names start with a letter or "
     "digit and hold only letters, digits, . _ @ -"),
    ("missing user", T.replace("user: alice", "scope: read"),
     "config.yaml:6:9: applications.payroll.tokens[0].user: required key is missing"),
    ("relative output", T + "        outputs: [{path: run/a}]\n",
     "config.yaml:7:26: applications.payroll.tokens[0].outputs[0].path: must be an absolute "
     "path (starting with /)"),
    ("missing output path", T + "        outputs: [{format: env}]\n",
     "config.yaml:7:19: applications.payroll.tokens[0].outputs[0].path: required key is missing"),
    ("decimal mode", T + "        outputs: [{path: /x, mode: 640}]\n",
     'config.yaml:7:36: applications.payroll.tokens[0].outputs[0].mode: must be an octal mode '
     'in quotes such as "0640" (YAML reads an unquoted 640 as a decimal number)'),
    ("small decimal mode", T + "        outputs: [{path: /x, mode: 440}]\n",
     'config.yaml:7:36: applications.payroll.tokens[0].outputs[0].mode: must be an octal mode '
     'in quotes such as "0640" (YAML reads an unquoted 640 as a decimal number)'),
    ("setuid mode", T + '        outputs: [{path: /x, mode: "4600"}]\n',
     'config.yaml:7:36: applications.payroll.tokens[0].outputs[0].mode: must be an octal mode '
     'in quotes such as "0640" (YAML reads an unquoted 640 as a decimal number)'),
    ("world-writable mode", T + '        outputs: [{path: /x, mode: "0666"}]\n',
     "config.yaml:7:36: applications.payroll.tokens[0].outputs[0].mode: must not let other "
     "users write the file"),
    ("output format", T + "        outputs: [{path: /x, format: yaml}]\n",
     "config.yaml:7:38: applications.payroll.tokens[0].outputs[0].format: must be one of "
     "token, env, json, template"),
    ("variable name", T + "        outputs: [{path: /x, format: env, variable: 1X}]\n",
     "config.yaml:7:53: applications.payroll.tokens[0].outputs[0].variable: must be an "
     "environment variable name (letters, digits and _, not starting with a digit)"),
    ("variable without env format", T + "        outputs: [{path: /x, variable: TOKEN}]\n",
     "config.yaml:7:30: applications.payroll.tokens[0].outputs[0].variable: only applies to "
     "format: env"),
    ("unknown owner", T + "        outputs: [{path: /x, owner: no-such-user-tokend}]\n",
     "config.yaml:7:37: applications.payroll.tokens[0].outputs[0].owner: unknown user "
     "'no-such-user-tokend'"),
    ("unknown group", T + "        outputs: [{path: /x, group: no-such-group-tokend}]\n",
     "config.yaml:7:37: applications.payroll.tokens[0].outputs[0].group: unknown group "
     "'no-such-group-tokend'"),
    ("outputs as mapping", T + "        outputs: {path: /x}\n",
     "config.yaml:7:18: applications.payroll.tokens[0].outputs: must be a list, not a mapping"),
    ("tokens as mapping", T.replace("      - user: alice", "      user: alice"),
     "config.yaml:6:7: applications.payroll.tokens: must be a list, not a mapping"),
    ("client_id number", T.replace("client_id: abc", "client_id: 12345"),
     "config.yaml:3:16: applications.payroll.client_id: must be a string, not a number; quote it"),
    ("client_id missing", T.replace("    client_id: abc\n", ""),
     "config.yaml:2:3: applications.payroll.client_id: required key is missing"),
    ("no secret", T.replace(f"    client_secret: {SECRET}\n", ""),
     "config.yaml:2:3: applications.payroll: needs a client secret: set one of client_secret, "
     "client_secret_file, client_secret_env, client_secret_credential"),
    ("two secrets", T.replace("    tokens:", "    client_secret_env: PAYROLL\n    tokens:"),
     "config.yaml:5:5: applications.payroll.client_secret_env: conflicts with client_secret: "
     "give the client secret in exactly one way"),
    ("secret env unset", T.replace(f"client_secret: {SECRET}", "client_secret_env: NOPE"),
     "config.yaml:4:24: applications.payroll.client_secret_env: environment variable NOPE is "
     "not set"),
    ("secret file missing", T.replace(f"client_secret: {SECRET}", "client_secret_file: x.secret"),
     "config.yaml:4:25: applications.payroll.client_secret_file: cannot read the secret from "
     "{dir}/x.secret: no such file"),
    ("credentials directory unset",
     T.replace(f"client_secret: {SECRET}", "client_secret_credential: payroll"),
     "config.yaml:4:31: applications.payroll.client_secret_credential: needs "
     "$CREDENTIALS_DIRECTORY, which systemd sets for LoadCredential=; it is not set"),
    ("credential name", T.replace(f"client_secret: {SECRET}", "client_secret_credential: ../x"),
     "config.yaml:4:31: applications.payroll.client_secret_credential: must be a credential "
     "name (a file name, no /)"),
    ("base_url", T.replace("    tokens:", "    base_url: ftp://example.com\n    tokens:"),
     "config.yaml:5:15: applications.payroll.base_url: must be an http(s) URL such as "
     "https://api.factorialhr.com"),
    ("redirect_uri", T.replace("    tokens:", "    redirect_uri: oob\n    tokens:"),
     "config.yaml:5:19: applications.payroll.redirect_uri: must be "
     "urn:ietf:wg:oauth:2.0:oob or an http(s) URL"),
    ("app name", T.replace("  payroll:", "  -payroll:"),
     "config.yaml:2:3: applications.-payroll: application names start with a letter or digit "
     "and hold only letters, digits, . _ -"),
    ("boolean key", T.replace("  payroll:", "  yes:"),
     "config.yaml:2:3: applications.yes: keys must be strings; quote this one"),
    ("app key typo", T.replace("client_id:", "clientid:"),
     "config.yaml:2:3: applications.payroll.client_id: required key is missing\n"
     "config.yaml:3:5: applications.payroll.clientid: unknown key; did you mean client_id?"),
    ("applications as list", "applications: [payroll]\n",
     "config.yaml:1:15: applications: must be a mapping, not a list"),
    ("defaults as number", "defaults: 5\n" + T,
     "config.yaml:1:11: defaults: must be a mapping, not a number"),
    ("zero concurrency", "defaults: {concurrency: 0}\n" + T,
     "config.yaml:1:25: defaults.concurrency: must be between 1 and 1024"),
    ("fractional concurrency", "defaults: {concurrency: 2.5}\n" + T,
     "config.yaml:1:25: defaults.concurrency: must be a whole number, not a decimal number"),
    ("rate without period", "defaults: {rate_limit: 5}\n" + T,
     "config.yaml:1:24: defaults.rate_limit: must be a rate such as 180/min, 50/s or 1000/hour"),
    ("top-level typo", "aplications: {}\n",
     "config.yaml:1:1: aplications: unknown key; did you mean applications?"),
    ("unknown key without hint", "colour: red\n" + T,
     "config.yaml:1:1: colour: unknown key"),
    ("state_dir list", "state_dir: [a]\n" + T,
     "config.yaml:1:12: state_dir: must be a string, not a list"),
    ("state_dir empty", 'state_dir: ""\n' + T,
     "config.yaml:1:12: state_dir: must not be empty"),
    ("client_id empty", T.replace("client_id: abc", "client_id:"),
     "config.yaml:3:15: applications.payroll.client_id: is empty; it must be a string"),
    ("duplicate token", T + "      - user: alice\n",
     "config.yaml:7:9: applications.payroll.tokens[1]: token payroll/alice/read+write is "
     "configured twice; first at config.yaml:6:9 (applications.payroll.tokens[0])"),
    ("duplicate output across apps",
     T + "        outputs: [{path: /run/t}]\n"
     "  other:\n    client_id: x\n    client_secret: y\n    tokens:\n"
     "      - user: bob\n        outputs: [{path: /run/./t}]\n",
     "config.yaml:13:26: applications.other.tokens[0].outputs[0].path: /run/t is also written "
     "by applications.payroll.tokens[0].outputs[0].path (config.yaml:7:26)"),
    ("duplicate yaml key", T.replace("client_id: abc", "client_id: abc\n    client_id: def"),
     "config.yaml:4:5: applications.payroll.client_id: duplicate key (first written on line 3)"),
    ("yaml syntax", T + "        scope: [read\n",
     "config.yaml:7:16: this list has no closing ']'"),
    ("tab indentation", "applications:\n\tpayroll: {}\n",
     "config.yaml:2:1: this line is indented with a tab; YAML indents with spaces only"),
    ("recursive alias", "x-loop: &loop [*loop]\n",
     "config.yaml:1:9: x-loop[0]: an alias refers to a mapping or list that contains it"),
    ("unknown tag", T.replace("client_id: abc", "client_id: !vault abc"),
     "config.yaml:3:16: applications.payroll.client_id: is not a valid !vault value"),
    ("top-level list", "- applications\n",
     "config.yaml:1:1: must be a mapping of settings (state_dir, defaults, applications), "
     "not a list"),
    ("top-level scalar", "applications\n",
     "config.yaml:1:1: must be a mapping of settings (state_dir, defaults, applications), "
     "not a single value"),
    ("empty file", "# nothing yet\n",
     "config.yaml: is empty; it needs at least an applications: mapping"),
    ("metrics on all interfaces", 'metrics: {listen: "0.0.0.0:9464"}\n' + T,
     "config.yaml:1:19: metrics.listen: is not a loopback address, so other hosts could read "
     "the metrics; set metrics.allow_remote: true to allow it"),
    ("metrics on a host name", "metrics:\n  listen: metrics.example.com:9464\n" + T,
     "config.yaml:2:11: metrics.listen: is not a loopback address, so other hosts could read "
     "the metrics; set metrics.allow_remote: true to allow it"),
    ("metrics without port", "metrics: {listen: 127.0.0.1}\n" + T,
     "config.yaml:1:19: metrics.listen: must be HOST:PORT such as 127.0.0.1:9464 ([::1]:9464 "
     "for IPv6)"),
    ("metrics port too big", "metrics: {listen: 127.0.0.1:70000}\n" + T,
     "config.yaml:1:19: metrics.listen: must be HOST:PORT such as 127.0.0.1:9464 ([::1]:9464 "
     "for IPv6)"),
    ("metrics IPv6 without brackets", 'metrics: {listen: "::1:9464"}\n' + T,
     "config.yaml:1:19: metrics.listen: must be HOST:PORT such as 127.0.0.1:9464 ([::1]:9464 "
     "for IPv6)"),
    ("metrics port as number", "metrics: {listen: 9464}\n" + T,
     "config.yaml:1:19: metrics.listen: must be a string, not a number; quote it"),
    ("metrics allow_remote text", 'metrics: {allow_remote: "yes"}\n' + T,
     "config.yaml:1:25: metrics.allow_remote: must be true or false, not text"),
    ("metrics key typo", "metrics: {listn: 127.0.0.1:1}\n" + T,
     "config.yaml:1:11: metrics.listn: unknown key; did you mean listen?"),
]


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in BROKEN],
                         ids=[case[0] for case in BROKEN])
def test_broken_config_names_position_key_and_problem(text: str, expected: str,
                                                      workdir: Path) -> None:
    """Each mistake is reported as file:line:col, the key path, and what is wrong."""
    assert error_of(text) == expected.replace("{dir}", str(workdir))


LINE_UP = "the keys of one mapping must line up"
LAYOUT: list[tuple[str, str, str]] = [
    ("key without colon", T.replace(f"client_secret: {SECRET}", f'client_secret "{SECRET}"'),
     "config.yaml:4:5: this line needs a ':' after its key, as in key: value"),
    ("first key without colon", T.replace("client_id: abc", 'client_id "abc"'),
     "config.yaml:3:5: this line needs a ':' after its key, as in key: value"),
    ("list item key without colon", T.replace("- user: alice", "- user alice")
     + "        scope: read\n",
     "config.yaml:6:9: this line needs a ':' after its key, as in key: value"),
    ("first line of the file without colon", "state_dir /srv/tokend\n# the apps\n" + T,
     "config.yaml:1:1: this line needs a ':' after its key, as in key: value"),
    ("first key of the file indented", " state_dir: /srv/tokend\n" + T,
     "config.yaml:1:2: the file's first key is indented by 1 space; top-level keys start at "
     "the beginning of the line"),
    ("key indented by one space", T.replace("    client_secret", " client_secret"),
     "config.yaml:4:2: this key is indented by 1 space and the key above it by 4: the keys of "
     "one mapping must line up"),
    ("no space after colon", T + "        scope:read\n        timeout: 5s\n",
     "config.yaml:7:9: this line needs a space after the ':' of its key, as in key: value"),
    ("no space after colon on the last line", T + "        scope:read\n",
     "config.yaml:7:9: this line needs a space after the ':' of its key, as in key: value"),
    ("key indented one space too many", T.replace("    client_secret", "     client_secret"),
     f"config.yaml:4:6: this key is indented by 5 spaces and the key above it by 4: {LINE_UP}"),
    ("key indented one space too few", T.replace("    client_secret", "   client_secret"),
     f"config.yaml:4:4: this key is indented by 3 spaces and the key above it by 4: {LINE_UP}"),
    ("token key lined up with the dash", T + "      scope: read\n",
     f"config.yaml:7:7: this key is indented by 6 spaces and the key above it by 8: {LINE_UP}"),
    ("token key indented too far", T + "          scope: read\n",
     f"config.yaml:7:11: this key is indented by 10 spaces and the key above it by 8: {LINE_UP}"),
    ("key after a quoted value indented too far",
     T.replace("client_id: abc", 'client_id: "abc"').replace("    client_s", "      client_s"),
     f"config.yaml:4:7: this key is indented by 6 spaces and the key above it by 4: {LINE_UP}"),
    ("list item without a space", T.replace("- user", "-user") + "        scope: read\n",
     "config.yaml:6:7: a list item needs a space after its '-'"),
    ("value holding colon", T + "        scope: read: write\n",
     "config.yaml:7:20: a value that holds ': ' must be put in quotes"),
    ("tab among the spaces of indentation", T.replace("    client_id", "  \tclient_id"),
     "config.yaml:3:3: this line is indented with a tab; YAML indents with spaces only"),
    ("tab after the dash of a list item", T.replace("- user", "-\tuser"),
     "config.yaml:6:8: this line is indented with a tab; YAML indents with spaces only"),
    ("unclosed quote at the end", T.replace("user: alice", 'user: "alice'),
     "config.yaml:6:15: this quoted value has no closing quote"),
    ("unclosed quote mid-file",
     T.replace("client_id: abc", 'client_id: "abc').replace("user: alice", 'user: "alice"'),
     "config.yaml:3:16: this quoted value runs on to line 6: is its closing quote missing?"),
    ("text after closing quote", T.replace("client_id: abc", 'client_id: "abc" def'),
     "config.yaml:3:22: this value goes on after its closing quote; put all of it inside the "
     "quotes"),
    ("comment wrapped without #", T + "        scope: read   # the scope\n          we need\n",
     "config.yaml:8:11: this line holds no key: write key: value, or start it with '#' if it is "
     "a comment"),
    ("text after a list", T + "        on_refresh: [a, b]]\n",
     "config.yaml:7:27: this text follows a complete value; remove it, or quote the whole value"),
    ("unclosed list mid-file", T + "        scope: [read\n        timeout: 5s\n",
     "config.yaml:7:16: this list has no closing ']'"),
    ("unclosed mapping", T + "        retry: {initial: 1s\n",
     "config.yaml:7:16: this mapping has no closing '}'"),
    ("missing comma in list", T + '        on_refresh: ["a" "b"]\n',
     "config.yaml:7:26: a ',' is missing before this item"),
    ("missing comma in mapping", T + '        outputs: [{path: "/x" mode: "0600"}]\n',
     "config.yaml:7:31: a ',' is missing before this item"),
    ("list item where a key belongs", T + "        - scope: read\n",
     "config.yaml:7:9: a list item ('- ') cannot stand where a key is expected; remove the '- ', "
     "or put it under a key that holds a list"),
    ("list item on the line of its key", T + "        scope: - read\n",
     "config.yaml:7:16: a list item ('- ') cannot start on the line of its key; put it on the "
     "next line, indented"),
    ("reserved character", T.replace("user: alice", "user: @alice"),
     "config.yaml:6:15: a value cannot start with '@'; put the value in quotes"),
    ("closing bracket as value", T + "        scope: ]\n",
     "config.yaml:7:16: a value cannot start with ']'; put the value in quotes"),
    ("unknown escape", T.replace("client_id: abc", r'client_id: "a\qb"'),
     "config.yaml:3:18: a backslash in double quotes starts an escape such as \\n; write \\\\ "
     "for a backslash, or use single quotes"),
    ("alias without a name", T + "        scope: *\n",
     "config.yaml:7:16: '*' starts an alias and must be followed by an anchor's name; put the "
     "value in quotes if it is meant literally"),
    ("anchor without a name", T + "        scope: &\n",
     "config.yaml:7:16: '&' starts an anchor and must be followed by a name; put the value in "
     "quotes if it is meant literally"),
    ("text after a block indicator", T + "        scope: |read\n",
     "config.yaml:7:16: '|' and '>' start a block of text and must end their line; put the "
     "value in quotes if it is meant literally"),
    ("undefined alias", T + "        scope: *nope\n",
     "config.yaml:7:16: this alias (*name) refers to no anchor (&name) defined above it"),
    ("duplicate anchor", "x-a: &a {}\nx-b: &a {}\n" + T,
     "config.yaml:2:6: this anchor's name is already used on line 1; give each anchor a name "
     "of its own"),
    ("second document", T + "---\nstate_dir: /x\n",
     "config.yaml:7:1: a second YAML document starts here, but a config file holds one; remove "
     "this '---' or what follows it"),
    ("tokens indented as an application", T.replace("    tokens:", "  tokens:"),
     "config.yaml:5:3: applications.tokens: is an application setting, not an application: "
     "indent it under its application, in line with client_id"),
    ("retry indented as an application", T + "  retry:\n    initial: 5s\n",
     "config.yaml:7:3: applications.retry: is an application setting, not an application: "
     "indent it under its application, in line with client_id"),
    ("tokens at the top level", T.replace("    tokens:\n      - user", "tokens:\n  - user"),
     "config.yaml:5:1: tokens: unknown key here; tokens belongs in an application: check its "
     "indentation"),
    ("token key at application level", T + "    scope: read\n",
     "config.yaml:7:5: applications.payroll.scope: unknown key here; scope belongs in a token "
     "(an item under tokens:): check its indentation"),
    ("applications as a list of mappings",
     "applications:\n  - payroll:\n      client_id: abc\n      client_secret: x\n",
     "config.yaml:2:3: applications: must be a mapping, not a list; remove the '- ' in front of "
     "its keys"),
    ("defaults as a list of mappings", "defaults:\n  - refresh_at: 0.5\n" + T,
     "config.yaml:2:3: defaults: must be a mapping, not a list; remove the '- ' in front of its "
     "keys"),
]


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in LAYOUT],
                         ids=[case[0] for case in LAYOUT])
def test_layout_mistake_points_at_the_line_to_fix(text: str, expected: str) -> None:
    """A YAML slip (colon, indentation, quote, bracket) is named in plain words on its own line."""
    assert error_of(text) == expected


def test_tab_inside_a_line_is_named_without_libyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyYAML alone (no libyaml installed) refuses a tab before a colon: the message says so."""
    monkeypatch.delattr(yaml, "CSafeLoader")
    assert error_of(T.replace("client_id: abc", "client_id\t: abc")) == (
        "config.yaml:3:14: a tab cannot stand here; use spaces")


def test_an_error_in_an_anchor_names_where_the_anchor_is_written() -> None:
    """A mapping that merges an anchor written in one of its own keys: a mistake inside the
    anchor is named by the key path written in the file, not by a path through the merge."""
    message = error_of("x-outputs:\n  shared: &shared {format: env, mode: !octal 640}\n"
                       "  <<: *shared\n" + T)
    assert message == "config.yaml:2:39: x-outputs.shared.mode: is not a valid !octal value"


def test_all_errors_are_listed_first_one_first() -> None:
    """Several mistakes come back together, one per line, in file order."""
    message = error_of(T + "        scope: [admin]\n        timeout: soon\n")
    assert message.splitlines() == [
        f"config.yaml:7:16: applications.payroll.tokens[0].scope: must be {SCOPE_RULE}",
        "config.yaml:8:18: applications.payroll.tokens[0].timeout: must be a duration such as "
        "90s, 5m, 1h or 7d",
    ]


def test_error_carries_location_and_key_path_separately() -> None:
    """Callers (the CLI, the reload logic) can read location and key path as fields."""
    with pytest.raises(ConfigError) as info:
        load(T + "        scope: [admin]\n")
    assert (info.value.location, info.value.key_path) == (
        "config.yaml:7:16", "applications.payroll.tokens[0].scope")


def test_env_override_error_names_the_variable() -> None:
    """A bad TOKEND_STATE_DIR is blamed on the variable, not on a line of the file."""
    message = error_of(T, {"TOKEND_STATE_DIR": " "})
    assert message == "$TOKEND_STATE_DIR: state_dir: must not be empty"


def test_missing_file() -> None:
    """A config path that does not exist says so."""
    with pytest.raises(ConfigError, match=r"^nope\.yaml: no such file$"):
        load_config(Path("nope.yaml"), environ={})


def test_directory_instead_of_file(workdir: Path) -> None:
    """Pointing --config at a directory is a clear error, not a traceback."""
    (workdir / "conf.d").mkdir()
    with pytest.raises(ConfigError, match=r"^conf\.d: is a directory, not a config file$"):
        load_config(Path("conf.d"), environ={})


def test_non_utf8_file_points_at_the_bad_byte(workdir: Path) -> None:
    """A Latin-1 byte in the file is reported at its line and column."""
    (workdir / "config.yaml").write_bytes(b"applications:\n  caf\xe9: {}\n")
    with pytest.raises(ConfigError, match=r"^config\.yaml:2:6: is not UTF-8 text$"):
        load_config(Path("config.yaml"), environ={})


def test_control_character_is_a_syntax_error(workdir: Path) -> None:
    """A NUL byte in the file is located, not a crash inside the YAML reader."""
    (workdir / "config.yaml").write_bytes(b"applications:\n  a\x00: {}\n")
    with pytest.raises(ConfigError, match=r"^config\.yaml:2:4: YAML syntax error"):
        load_config(Path("config.yaml"), environ={})


def test_unreadable_secret_file_is_named(workdir: Path) -> None:
    """An empty secret file is an error naming the key and the file, never its content."""
    (workdir / "empty.secret").write_text("\n")
    message = error_of(T.replace(f"client_secret: {SECRET}", "client_secret_file: empty.secret"))
    assert message == (f"config.yaml:4:25: applications.payroll.client_secret_file: cannot read "
                       f"the secret from {workdir}/empty.secret: is empty")


SECRET_LEAKS = [
    T.replace(f"client_secret: {SECRET}", f"client_secret: [{SECRET}]"),
    T.replace(f"client_secret: {SECRET}", f"client_secret: !!int {SECRET}"),
    T.replace(f"client_secret: {SECRET}", f'client_secret: "{SECRET}'),
    T.replace(f"client_secret: {SECRET}", f"client_secret: {{{SECRET}: 1}}"),
    T.replace(f"client_secret: {SECRET}", f"client_secret: !vault {SECRET}"),
    T.replace(f"client_secret: {SECRET}", f"client_secret: {SECRET}: x"),
    T.replace("client_id: abc", f"client_id: [{SECRET}]"),
    T + "        scope: [admin]\n",
    T.replace("    tokens:", "    client_secret_env: X\n    tokens:"),
    T.replace("    tokens:", f"    client_secret: {SECRET}\n    tokens:"),
]


@pytest.mark.parametrize("text", SECRET_LEAKS)
def test_secrets_never_appear_in_errors(text: str) -> None:
    """Whatever is wrong around a client secret, the message never quotes it."""
    message = error_of(text)
    assert SECRET not in message, "the error message shows the client secret"


def test_secret_from_file_never_appears_in_errors(workdir: Path) -> None:
    """A secret read from a file stays out of messages about other mistakes."""
    (workdir / "s").write_text(SECRET)
    message = error_of(T.replace(f"client_secret: {SECRET}", "client_secret_file: s")
                       + "        scope: [admin]\n")
    assert SECRET not in message, "the error message shows the client secret"


# --- whatever the input, the only failure is a ConfigError --------------------------------

KEYS = ["state_dir", "defaults", "applications", "payroll", "tokens", "user", "scope", "outputs",
        "path", "format", "mode", "owner", "group", "variable", "client_id", "client_secret",
        "client_secret_file", "client_secret_env", "client_secret_credential", "retry", "initial",
        "max", "timeout", "refresh_at", "concurrency", "rate_limit", "on_refresh", "base_url",
        "redirect_uri", "<<", "x-a"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                    st.text(max_size=12), st.sampled_from(["/x", "read", "0640", "1s", "root",
                                                           "env", "http://h", "9/min"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=5)), inner, max_size=5)),
    max_leaves=25)


def fuzz(max_examples: int) -> settings:
    """Hypothesis settings for loader fuzzing: files in the per-test directory are rewritten."""
    return settings(max_examples=max_examples, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def outcome(text: str | bytes) -> None:
    path = Path("config.yaml")
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load_config(path, environ={"CREDENTIALS_DIRECTORY": "/nonexistent"})
    except ConfigError as error:
        message = str(error)
    else:
        return
    assert SECRET not in message, "the error message shows the client secret"


@fuzz(max_examples=200)
@given(st.text(alphabet=st.sampled_from(list("ab:- \n\t[]{}&*!<>'\"#|%@,?0x")), max_size=80))
def test_random_text_only_raises_config_error(text: str) -> None:
    """Any text, YAML or not, loads or fails with a ConfigError."""
    outcome(text)


@fuzz(max_examples=200)
@given(st.binary(max_size=60))
def test_random_bytes_only_raise_config_error(data: bytes) -> None:
    """Arbitrary bytes (non-UTF-8, control characters) fail with a ConfigError."""
    outcome(data)


@fuzz(max_examples=300)
@given(VALUES)
def test_random_documents_only_raise_config_error(document: Any) -> None:
    """Any YAML data with plausible keys loads or fails with a ConfigError."""
    outcome(yaml.safe_dump(document))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@fuzz(max_examples=300)
@given(st.data())
def test_mutated_valid_config_only_raises_config_error(data: st.DataObject) -> None:
    """Replacing or deleting any part of a valid config never crashes the loader."""
    document = yaml.safe_load(EXAMPLE.read_text())
    document["applications"]["payroll"]["client_secret"] = SECRET
    del document["applications"]["payroll"]["client_secret_env"]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(document)[1:]))
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(VALUES)
        elif isinstance(parent, dict):
            del parent[path[-1]]
    outcome(yaml.safe_dump(document))


def test_environment_is_not_read_implicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``environ`` given, os.environ's TOKEND_STATE_DIR has no effect."""
    monkeypatch.setenv("TOKEND_STATE_DIR", "/from/os")
    assert load(APP, {}).state_dir == Path("/var/lib/tokend")


def test_os_environ_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``environ``, the process environment supplies overrides."""
    monkeypatch.setenv("TOKEND_STATE_DIR", "/from/os")
    Path("config.yaml").write_text(APP)
    os.chmod("config.yaml", 0o600)
    assert load_config(Path("config.yaml")).state_dir == Path("/from/os")


# --- large files, alias bombs, and the reader agreeing with PyYAML ------------------------


def big_config(tokens: int, *, last_scope: str = "read") -> str:
    """An application with ``tokens`` users, each output merged from one shared anchor."""
    lines = ["x-output: &out {format: env, mode: '0640'}", *APP.splitlines()[:-1]]
    for index in range(tokens):
        scope = last_scope if index == tokens - 1 else "read"
        lines += [f"      - user: u{index:06d}", f"        scope: {scope}",
                  f"        outputs: [{{<<: *out, path: /run/t/u{index:06d}}}]"]
    return "\n".join(lines) + "\n"


def test_a_file_with_thirty_thousand_tokens_loads() -> None:
    """Large installations fit: 30,000 tokens sharing an anchor are not mistaken for a bomb."""
    config = load(big_config(30_000))
    assert len(config.tokens) == 30_000
    assert config.tokens[-1].outputs == (OutputSpec(Path("/run/t/u029999"), "env", mode=0o640),)


def test_an_error_in_a_large_file_is_located_exactly() -> None:
    """The last of 30,000 tokens has a bad scope: the message points at its line."""
    message = error_of(big_config(30_000, last_scope="[admin]"))
    line = 5 + 3 * 30_000  # 5 lines before the first token, 3 lines per token
    assert message == (f"config.yaml:{line}:16: applications.payroll.tokens[29999].scope: "
                       f"must be {SCOPE_RULE}")


def test_an_alias_bomb_is_refused() -> None:
    """A small file whose aliases expand to a billion values fails fast instead of eating memory."""
    lines = ["x-0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"x-{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]"
              for level in range(1, 10)]
    message = error_of("\n".join(lines) + "\n" + APP)
    # x-5 is the first line whose aliases (9 x 66,430 values) pass the limit.
    assert message == ("config.yaml:6:6: x-5: its aliases expand to more than 100,000 values, "
                       "which tokend refuses (aliases that repeat other aliases grow "
                       "exponentially)")


def test_an_alias_bomb_in_a_block_list_names_the_list_that_holds_the_aliases() -> None:
    """The message names the key written in the file, not a path through the expansion."""
    lines = ["x-0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"x-{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]"
              for level in range(1, 5)]
    message = error_of("\n".join(lines) + "\n" + APP + "        on_refresh:\n"
                       + "          - *a4\n" * 9)
    assert message.startswith("config.yaml:13:11: applications.payroll.tokens[0].on_refresh: its "
                              "aliases expand to more than 100,000 values"), message


SCALARS_TEXT = ["x", "read", "1", "440", "0640", "'440'", '"0640"', "yes", "~", "1.5", "0x1F",
                "1_0", "1:30", "2001-12-14", "!!str 5", "!!binary aGk="]
ODD_TEXT = ["!vault x", "<<", "=", "*missing", "[k]: 1", "1: 1"]
"""What the reader refuses: rare, so most documents are read."""


@st.composite
def flow_documents(draw: st.DrawFn) -> str:
    """Flow-style YAML mixing anchors, aliases and merge keys, now and then something odd."""
    anchors: dict[str, str] = {}  # name -> "map", "seq" or "scalar"
    names = iter(range(1_000_000))

    def node(depth: int) -> str:
        kinds = ["scalar", "alias", "seq", "map", "map"] if depth < 4 else ["scalar", "alias"]
        kind = draw(st.sampled_from(kinds))
        if kind == "alias" and anchors:
            return "*" + draw(st.sampled_from(sorted(anchors)))
        if draw(st.integers(0, 150)) == 0:
            return draw(st.sampled_from(ODD_TEXT))
        name = f"a{next(names)}" if draw(st.integers(0, 2)) == 0 else ""
        if name and draw(st.integers(0, 20)) == 0:
            anchors[name] = kind  # named before its content: an alias inside is recursive
        if kind == "seq":
            text = "[" + ", ".join(node(depth + 1) for _ in range(draw(st.integers(0, 3)))) + "]"
        elif kind == "map":
            text = mapping(depth + 1)
        else:
            kind, text = "scalar", draw(st.sampled_from(SCALARS_TEXT))
        if name:
            anchors[name] = kind
            return f"&{name} {text}"
        return text

    def merge(depth: int) -> str:
        maps = sorted(name for name, kind in anchors.items() if kind == "map")
        if not maps or draw(st.booleans()):
            return mapping(depth + 1)
        picked = draw(st.lists(st.sampled_from(maps), min_size=1, max_size=3))
        aliases = [f"*{name}" for name in picked]
        return aliases[0] if len(aliases) == 1 else "[" + ", ".join(aliases) + "]"

    def mapping(depth: int) -> str:
        keys = draw(st.lists(st.sampled_from(["a", "b", "mode", "path", "'q'", "<<", "'<<'"]),
                             unique=True, max_size=4))
        keys += ["<<"] * draw(st.integers(0, 1)) if "<<" in keys else []
        entries = [f"{key}: {merge(depth) if key == '<<' else node(depth)}" for key in keys]
        return "{" + ", ".join(entries) + "}"

    return mapping(0)


class Reference:
    """What YAML 1.1 means, walked from PyYAML's node tree: slow, plain, and obviously right.

    Merge keys as the spec says (keys written in a mapping win over merged ones,
    earlier sources over later ones), positions as each node was written: an
    alias's value where its anchor is, merged keys where their source has them.
    """

    def __init__(self, text: str) -> None:
        self.values: dict[tuple[Any, ...], tuple[int, int]] = {}
        self.keys: dict[tuple[Any, ...], tuple[int, int]] = {}
        self.plain: dict[tuple[Any, ...], str] = {}
        self._loader = yaml.SafeLoader(text)
        root = self._loader.get_single_node()
        assert root is not None
        self.data = self._walk(root, ())

    @staticmethod
    def _mark(node: yaml.Node) -> tuple[int, int]:
        return (node.start_mark.line + 1, node.start_mark.column + 1)

    def _walk(self, node: yaml.Node, path: tuple[Any, ...]) -> Any:
        self.values[path] = self._mark(node)
        if isinstance(node, yaml.ScalarNode):
            value = self._loader.construct_object(node)
            if not node.style and not isinstance(value, str):
                self.plain[path] = node.value
            return value
        if isinstance(node, yaml.SequenceNode):
            return [self._walk(item, (*path, index)) for index, item in enumerate(node.value)]
        assert isinstance(node, yaml.MappingNode)
        return self._mapping(node, path)

    def _mapping(self, node: yaml.MappingNode, path: tuple[Any, ...]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [
                    value_node]
                for source in sources:
                    assert isinstance(source, yaml.MappingNode)
                    for key, value in self._mapping(source, path).items():
                        merged.setdefault(key, value)
        result = {}
        for key_node, value_node in node.value:
            if key_node.tag != "tag:yaml.org,2002:merge":
                key = self._loader.construct_object(key_node)
                self.keys[(*path, key)] = self._mark(key_node)
                result[key] = self._walk(value_node, (*path, key))
        return {**{key: value for key, value in merged.items() if key not in result}, **result}


def reads_alike(text: str) -> None:
    """What the reader makes of ``text``, and where it says each value is, is what YAML means."""
    try:
        found = read_yaml(text, "config.yaml", positions=True)
    except ConfigError:
        return  # refused: duplicate keys, keys that are not text, recursion, unknown tags
    expected = Reference(text)
    assert repr(found.data) == repr(expected.data)  # in the same order, NaN included
    assert found.plain == expected.plain
    assert (found.values, found.keys) == (expected.values, expected.keys)
    assert repr(read_yaml(text, "config.yaml").data) == repr(expected.data)


@fuzz(max_examples=500)
@given(flow_documents())
def test_reader_reads_anchors_and_merges_as_yaml_means_them(text: str) -> None:
    """Anchors, aliases and merge keys give the values, and positions, YAML means."""
    reads_alike(text)


@fuzz(max_examples=200)
@given(st.lists(VALUES, min_size=1, max_size=3), st.lists(st.integers(0, 2), max_size=6))
def test_reader_reads_block_style_as_yaml_means_it(parts: list[Any], shared: list[int]) -> None:
    """Block-style files, with anchors where values are shared, read as YAML means them."""
    document = {f"k{index}": parts[index % len(parts)] for index in [*range(len(parts)), *shared]}
    reads_alike(yaml.safe_dump(document))


def test_the_reader_reads_the_example_as_yaml_means_it() -> None:
    """The shipped example (anchors, merge keys) reads to the values YAML means."""
    reads_alike(EXAMPLE.read_text())
    assert read_yaml(EXAMPLE.read_text(), str(EXAMPLE)).data == yaml.safe_load(EXAMPLE.read_text())


def test_a_large_config_costs_little_memory_to_load_and_to_keep(workdir: Path) -> None:
    """Tokens are validated and built one at a time, each model dropped once its spec exists,
    so a load's peak stays near what the loaded config keeps (at 100,000 tokens, holding every
    model and spec at once set the daemon's peak memory); what a config keeps for its next
    reload (the file's text, where tokens start) is a small part of it."""
    count = 3000
    items = "".join(f"      - user: u{index:05d}\n        scope: read\n"
                    f"        outputs: [{{path: {workdir}/out/u{index:05d}.token}}]\n"
                    for index in range(count))
    path = workdir / "config.yaml"
    path.write_text(T.split("    tokens:")[0] + "    tokens:\n" + items)
    path.chmod(0o600)
    tracemalloc.start()
    try:
        config = load_config(path, environ={})
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(config.tokens) == count
    transient = (peak - kept) / count
    assert transient < 600, f"{transient:.0f} bytes a token above what the config keeps"
    assert kept / count < 900, f"the config keeps {kept / count:.0f} bytes a token"
