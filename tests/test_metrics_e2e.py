"""Monitoring end to end: Prometheus scrapes a real daemon running against the sandbox.

Also checks the shipped alert rules: with ``promtool`` when it is installed
(Debian: ``apt-get install prometheus``), and always by their shape.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import Daemon, Setup, StartDaemon, authorize, refreshed, wait_for
from tokend.daemon.metrics_http import MAX_CONNECTIONS
from tokend.engine.hooks import HookResult
from tokend.engine.metrics import Metrics
from tokend.model import TokenName, TokenSpec
from tokend.sandbox import Sandbox

ALERTS = Path(__file__).resolve().parent.parent / "contrib" / "prometheus-alerts.yaml"
METRICS_YAML = 'metrics: {listen: "127.0.0.1:0"}\n'
ALICE = "app/alice/read"
BOB = "app/bob/read"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _port(daemon: Daemon) -> int:
    wait_for(lambda: daemon.named("metrics_listening"), 10, "the metrics listener")
    return int(daemon.named("metrics_listening")[-1]["port"])


def _get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)


def _scrape(port: int) -> Samples:
    text = _get(port, "/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _refreshes(port: int, token: str, result: str = "ok") -> float:
    return _value(_scrape(port), "tokend_refresh_total", token=token, result=result) or 0.0


def _state(port: int, token: str) -> str | None:
    samples = _scrape(port)
    return next((dict(labels)["state"] for (name, labels), value in samples.items()
                 if name == "tokend_token_state" and ("token", token) in labels and value == 1),
                None)


def _running(tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon,
             users: tuple[str, ...] = ("alice",)) -> tuple[Setup, Daemon, int]:
    setup = Setup(tmp_path, sandbox, [(user, "read") for user in users],
                  top_level_yaml=METRICS_YAML)
    setup.write()
    for user in users:
        authorize(setup, user, "read")
    daemon = start_daemon(setup.config)
    port = _port(daemon)
    wait_for(lambda: _get(port, "/readyz").status_code == 200, 10, "/readyz to answer 200")
    return setup, daemon, port


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def test_values_move_and_health_flips_with_a_revoked_token(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """Refreshes count up, the expiry advances, a revoke shows needs_authorization and 503,
    and a new authorization brings 200 back."""
    setup, daemon, port = _running(tmp_path, sandbox, start_daemon)
    assert _get(port, "/readyz").json() == {"status": "ready"}
    first = _scrape(port)
    expiry = _value(first, "tokend_token_expiry_timestamp_seconds", token=ALICE)
    count = _value(first, "tokend_refresh_total", token=ALICE, result="ok")
    assert expiry is not None and count is not None
    assert _value(first, "tokend_token_state", token=ALICE, state="ok") == 1.0
    assert _value(first, "tokend_refresh_token_expiry_timestamp_seconds", token=ALICE)
    assert _value(first, "process_resident_memory_bytes"), "no process metrics"

    wait_for(lambda: _refreshes(port, ALICE) >= count + 2, 10, "two more refreshes")
    later = _scrape(port)
    assert (_value(later, "tokend_token_expiry_timestamp_seconds", token=ALICE) or 0) > expiry
    assert (_value(later, "tokend_refresh_duration_seconds_count") or 0) >= count + 2
    health = _get(port, "/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok", "tokens": []})

    sandbox.revoke_user("alice")
    wait_for(lambda: _state(port, ALICE) == "needs_authorization", 10, "needs_authorization")
    assert _refreshes(port, ALICE, "permanent_error") == 1.0
    health = _get(port, "/healthz")
    assert (health.status_code, health.json()) == (503, {
        "status": "unhealthy", "tokens": [{"name": ALICE, "state": "needs_authorization"}],
    })

    authorize(setup, "alice", "read")  # the CLI tells the daemon with SIGUSR1
    wait_for(lambda: _get(port, "/healthz").status_code == 200, 5, "/healthz 200 again")
    assert _state(port, ALICE) == "ok"
    assert daemon.stop() == 0


def test_reloads_are_counted_and_removed_tokens_disappear(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """A good edit counts ok and drops a removed token's series; a bad edit counts error."""
    setup, daemon, port = _running(tmp_path, sandbox, start_daemon, ("alice", "bob"))
    before = _scrape(port)
    loaded_at = _value(before, "tokend_config_last_reload_success_timestamp_seconds") or 0
    assert _value(before, "tokend_config_reload_total", result="ok") == 0.0
    assert any(BOB in dict(labels).get("token", "") for _, labels in before)

    time.sleep(0.1)  # the success timestamp must be able to move
    setup.tokens = [("alice", "read")]
    setup.config.write_text(setup.render())
    wait_for(lambda: _value(_scrape(port), "tokend_config_reload_total", result="ok") == 1.0,
             5, "a counted good reload")
    good = _scrape(port)
    assert (_value(good, "tokend_config_last_reload_success_timestamp_seconds") or 0) > loaded_at
    assert not any(BOB in dict(labels).get("token", "") for _, labels in good), (
        "the removed token still has series")
    assert _value(good, "tokend_config_last_reload_successful") == 1.0

    setup.config.write_text(setup.render().replace("scope: read", "scope: [admin]"))
    wait_for(lambda: _value(_scrape(port), "tokend_config_reload_total", result="error") == 1.0,
             5, "a counted bad reload")
    bad = _scrape(port)
    assert _value(bad, "tokend_config_last_reload_successful") == 0.0
    assert _value(bad, "tokend_config_last_reload_success_timestamp_seconds") == _value(
        good, "tokend_config_last_reload_success_timestamp_seconds")
    assert daemon.stop() == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_new_listen_address_is_applied_on_reload(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """Moving ``metrics.listen`` moves the listener without a restart (a busy new port keeps
    the old one serving); removing the block stops it."""
    setup, daemon, old_port = _running(tmp_path, sandbox, start_daemon)
    new_port = _free_port()
    setup.top_level_yaml = f'metrics: {{listen: "127.0.0.1:{new_port}"}}\n'
    setup.config.write_text(setup.render())
    wait_for(lambda: _port(daemon) == new_port, 5, "the listener on the new port")
    assert _get(new_port, "/readyz").status_code == 200
    with pytest.raises(httpx.ConnectError):
        _get(old_port, "/readyz")

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        setup.top_level_yaml = f'metrics: {{listen: "127.0.0.1:{busy.getsockname()[1]}"}}\n'
        setup.config.write_text(setup.render())
        wait_for(lambda: daemon.named("metrics_listen_failed"), 5, "metrics_listen_failed")
    assert _get(new_port, "/readyz").status_code == 200, "a busy new port closed the old one"

    setup.top_level_yaml = ""
    setup.config.write_text(setup.render())
    wait_for(lambda: daemon.named("metrics_stopped") and len(daemon.named("metrics_stopped")) == 2,
             5, "the listener to stop")
    with pytest.raises(httpx.ConnectError):
        _get(new_port, "/readyz")
    assert daemon.stop() == 0


def test_clients_holding_connections_do_not_delay_refreshes(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """With more half-sent requests held open than the listener accepts, tokens still refresh
    on time (every ~1.5 s), and the held connections are cut after the head timeout."""
    _, daemon, port = _running(tmp_path, sandbox, start_daemon)
    held: list[socket.socket] = []
    for _ in range(80):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: slow")
        held.append(sock)
    started, count = time.monotonic(), refreshed(daemon, ALICE)
    wait_for(lambda: refreshed(daemon, ALICE) >= count + 2, 4.5, "two refreshes while held")
    elapsed = time.monotonic() - started
    # The listener took 64 (its cap) and answers them 408 after 5 s; it dropped the rest.
    outcomes = []
    for sock in held:
        sock.settimeout(8)
        try:
            outcomes.append(sock.recv(64)[:12])
        except ConnectionResetError:
            outcomes.append(b"reset")
        sock.close()
    assert outcomes.count(b"HTTP/1.1 408") == MAX_CONNECTIONS
    assert set(outcomes) - {b"HTTP/1.1 408"} <= {b"", b"reset"}
    assert elapsed < 4.5
    assert _refreshes(port, ALICE) >= 2
    assert daemon.stop() == 0


def _send_junk(port: int, mebibytes: int) -> bool:
    """Send a request head of ``mebibytes`` MiB; whether the daemon cut the connection."""
    junk = b"a" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        try:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Junk: ")
            for _ in range(mebibytes):
                sock.sendall(junk)
            answer = sock.recv(64)
        except (ConnectionResetError, BrokenPipeError):
            return True
        return answer == b"" or answer.startswith(b"HTTP/1.1 431 ")


def test_a_huge_request_is_cut_off_without_growing_the_daemon(
    tmp_path: Path, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """192 MiB of request heads (48 clients x 4 MiB) are refused, and the daemon's RSS
    grows by less than 8 MiB: what it buffers per client is bounded."""
    _, daemon, port = _running(tmp_path, sandbox, start_daemon)
    for _ in range(16):  # warm up: the allocator's first arenas are not growth
        _send_junk(port, 4)
    _scrape(port)
    rss_before = _rss_kib(daemon.process.pid)
    started = time.monotonic()
    cut = [_send_junk(port, 4) for _ in range(48)]
    elapsed = time.monotonic() - started
    rss_after = _rss_kib(daemon.process.pid)
    assert _get(port, "/metrics").status_code == 200
    growth = rss_after - rss_before
    print(f"RSS {rss_before} KiB -> {rss_after} KiB ({growth:+d} KiB) "
          f"after 48 x 4 MiB heads in {elapsed:.1f} s")
    assert all(cut), f"{cut.count(False)} huge requests were not cut off"
    assert growth < 8192, f"RSS grew by {growth} KiB"
    assert daemon.stop() == 0


# --- the alert rules ----------------------------------------------------------------------


def _exported_names() -> set[str]:
    """Every metric name a daemon exports, read from a live Metrics, not from a list."""
    metrics = Metrics()
    spec = TokenSpec(name=TokenName("a", "b", "read"))
    metrics.observe_token(spec, None)
    metrics.refresh_finished(spec.name, "ok", 0.1)
    metrics.hook_finished(spec.name, "on_refresh", HookResult(("x",), 0, False, ""))
    metrics.rate_limit_waited("a", 0.0)
    return {family.name for family in metrics.registry.collect()} | {
        sample.name for family in metrics.registry.collect() for sample in family.samples
    }


_PROMQL_WORDS = {"time", "max", "min", "sum", "by", "without", "and", "or", "unless", "on",
                 "ignoring", "rate", "increase", "absent", "count", "label_replace"}


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def test_alert_rules_have_the_expected_shape() -> None:
    """Each rule has alert, expr, for, a severity and a summary; each expr names only metrics
    tokend exports."""
    document = yaml.safe_load(ALERTS.read_text())
    assert [group["name"] for group in document["groups"]] == ["tokend"]
    exported = _exported_names()
    rules = _rules()
    assert {rule["alert"] for rule in rules} == {
        "TokendTokenExpiringSoon", "TokendTokenNeedsAuthorization", "TokendRefreshesFailing",
        "TokendConfigReloadFailed", "TokendClientRejected",
    }
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(rule["annotations"])
        bare = re.sub(r'\{[^}]*\}|\b(?:by|without|on|ignoring)\s*\([^)]*\)|"[^"]*"', "",
                      rule["expr"])
        names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare)) - _PROMQL_WORDS
        assert names, rule["alert"]
        assert names <= exported, f"{rule['alert']} uses {names - exported}"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return path


def test_alert_rules_pass_promtool_check() -> None:
    """``promtool check rules`` accepts the shipped file."""
    result = subprocess.run([_promtool(), "check", "rules", str(ALERTS)],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_when_they_should(tmp_path: Path) -> None:
    """``promtool test rules``: each alert fires on a made-up history, and only then."""
    token = {"token": ALICE, "instance": "h:9464", "job": "tokend"}
    series = "{" + ",".join(f'{key}="{value}"' for key, value in token.items()) + "}"
    case: dict[str, Any] = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # Expires at 30 min; under 10 min left from minute 21, firing after 1 min more.
                {"series": f"tokend_token_expiry_timestamp_seconds{series}", "values": "1800x40"},
                {"series": "tokend_token_state" + series[:-1] + ',state="needs_authorization"}',
                 "values": "0x4 1x10"},
                {"series": "tokend_token_state" + series[:-1] + ',state="failing"}',
                 "values": "1x10 0x30"},
                {"series": "tokend_token_state" + series[:-1] + ',state="expired"}',
                 "values": "0x10 1x30"},
                {"series": 'tokend_config_last_reload_successful{instance="h:9464",job="tokend"}',
                 "values": "1x5 0x5"},
            ],
            "alert_rule_test": [
                _expect("TokendTokenExpiringSoon", "20m", None),
                # 30 min - 23 min: the description says "7m 0s".
                _expect("TokendTokenExpiringSoon", "23m", {"severity": "critical", **token},
                        value="7m 0s"),
                _expect("TokendTokenNeedsAuthorization", "4m", None),
                _expect("TokendTokenNeedsAuthorization", "7m", {
                    "severity": "critical", "state": "needs_authorization", **token}),
                _expect("TokendRefreshesFailing", "14m", None),
                _expect("TokendRefreshesFailing", "16m", {"severity": "warning", **token}),
                _expect("TokendConfigReloadFailed", "5m", None),
                _expect("TokendConfigReloadFailed", "8m", {
                    "severity": "warning", "instance": "h:9464", "job": "tokend"}),
            ],
        }],
    }
    # A token that needs a person pages once (needs authorization), not twice.
    stuck = {**token, "token": BOB}
    stuck_series = "{" + ",".join(f'{key}="{value}"' for key, value in stuck.items())
    case["tests"].append({
        "interval": "1m",
        "input_series": [
            {"series": f"tokend_token_expiry_timestamp_seconds{stuck_series}}}",
             "values": "1800x40"},
            {"series": f'tokend_token_state{stuck_series},state="needs_authorization"}}',
             "values": "1x40"},
        ],
        "alert_rule_test": [_expect("TokendTokenExpiringSoon", "25m", None)],
    })
    # Rejected client credentials page once per application, not as "needs authorization".
    rejected = [{**token, "token": user} for user in (ALICE, BOB)]
    case["tests"].append({
        "interval": "1m",
        "input_series": [
            {"series": "tokend_token_state{" + ",".join(
                f'{key}="{value}"' for key, value in labels.items()) + ',state="client_rejected"}',
             "values": "0x2 1x20"}
            for labels in rejected
        ],
        "alert_rule_test": [
            _expect("TokendClientRejected", "2m", None),
            _expect("TokendClientRejected", "5m", {
                "severity": "critical", "application": "app", "instance": "h:9464",
                "job": "tokend"}, value="2"),
            _expect("TokendTokenNeedsAuthorization", "5m", None),
            _expect("TokendTokenExpiringSoon", "5m", None),
        ],
    })
    tests = tmp_path / "alerts.test.yaml"
    tests.write_text(json.dumps(case))
    result = subprocess.run([_promtool(), "test", "rules", str(tests)],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _expect(alert: str, at: str, labels: dict[str, str] | None, value: str = "") -> dict[str, Any]:
    """An alert expected at ``at`` with ``labels`` (``None``: not firing) and its annotations
    rendered from the rules file: promtool compares annotations too."""
    if labels is None:
        return {"eval_time": at, "alertname": alert, "exp_alerts": []}
    rule = next(rule for rule in _rules() if rule["alert"] == alert)

    def render(text: str) -> str:
        text = text.replace("{{ $value | humanizeDuration }}", value)
        text = text.replace("{{ $value }}", value)
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)

    annotations = {key: render(text) for key, text in rule["annotations"].items()}
    return {"eval_time": at, "alertname": alert,
            "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}]}
