"""The sandbox over real HTTP on 127.0.0.1, driven with plain httpx."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tokend.sandbox import Sandbox

OOB = "urn:ietf:wg:oauth:2.0:oob"
CLIENT = {"client_id": "demo-client", "client_secret": "demo-secret"}


class FakeClock:
    """Wall-clock time that moves only when a test says so."""

    def __init__(self) -> None:
        self.time = 1_700_000_000.0

    def now(self) -> float:
        return self.time

    def advance(self, seconds: float) -> None:
        self.time += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sandbox(clock: FakeClock) -> Iterator[Sandbox]:
    with Sandbox(access_token_lifetime=60, refresh_token_lifetime=600, clock=clock) as sb:
        yield sb


@pytest.fixture
def http(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=5) as client:
        yield client


def exchange(http: httpx.Client, code: str, redirect_uri: str = OOB) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    return http.post("/oauth/token", data={**data, **CLIENT})


def refresh(http: httpx.Client, refresh_token: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return http.post("/oauth/token", data={**data, **CLIENT})


def new_token(sandbox: Sandbox, http: httpx.Client, scope: str = "read+write") -> dict[str, Any]:
    code = sandbox.authorize(client_id="demo-client", redirect_uri=OOB, scope=scope)
    response = exchange(http, code)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def me(http: httpx.Client, access_token: str) -> httpx.Response:
    return http.get("/api/v1/me", headers={"Authorization": f"Bearer {access_token}"})


def test_oob_authorize_page_shows_an_exchangeable_code(http: httpx.Client) -> None:
    """A user following the printed link sees the authorization key on the page."""
    params = {"client_id": "demo-client", "redirect_uri": OOB, "response_type": "code"}
    response = http.get("/oauth/authorize", params={**params, "scope": "read write"})
    assert response.status_code == 200
    match = re.search(r'<code id="authorization_code">([^<]+)</code>', response.text)
    assert match is not None
    assert exchange(http, match.group(1)).status_code == 200


def test_authorize_with_http_redirect_sends_code_and_state(http: httpx.Client) -> None:
    """A local listener on the redirect URI receives the code and the state it sent."""
    redirect = "http://127.0.0.1:9/callback"
    query = (f"client_id=demo-client&redirect_uri={redirect}&response_type=code"
             "&scope=read+write&state=xyz")
    response = http.get(f"/oauth/authorize?{query}")
    assert response.status_code == 302
    location = httpx.URL(response.headers["Location"])
    assert str(location.copy_with(query=None)) == redirect
    assert location.params["state"] == "xyz"
    assert exchange(http, location.params["code"], redirect).status_code == 200


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"client_id": "nobody"}, "invalid_client"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "admin"}, "invalid_scope"),
        ({"redirect_uri": "ftp://example"}, "invalid_request"),
    ],
)
def test_authorize_rejects_bad_requests(
    http: httpx.Client, change: dict[str, str], error: str
) -> None:
    """A wrong link shows an error instead of a code."""
    params = {"client_id": "demo-client", "redirect_uri": OOB, "response_type": "code",
              "scope": "read"}
    response = http.get("/oauth/authorize", params={**params, **change})
    assert response.status_code == 400
    assert response.json()["error"] == error


def test_code_exchange_returns_a_complete_token(
    sandbox: Sandbox, http: httpx.Client, clock: FakeClock
) -> None:
    """The exchange answers every Token field, with the scope the user approved."""
    token = new_token(sandbox, http, scope="read")
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 60
    assert token["scope"] == "read"
    assert token["created_at"] == int(clock.now())
    assert token["access_token"] != token["refresh_token"], "tokens must differ"


def test_repeat_exchange_returns_the_same_token(sandbox: Sandbox, http: httpx.Client) -> None:
    """Exchanging a key twice (a retry after a lost answer) gives back the same token."""
    code = sandbox.authorize(client_id="demo-client", redirect_uri=OOB)
    first, second = exchange(http, code).json(), exchange(http, code).json()
    assert first == second, "repeat exchange returned a different token"


def test_code_expires_after_ten_minutes(
    sandbox: Sandbox, http: httpx.Client, clock: FakeClock
) -> None:
    """An authorization key left unused for ten minutes is refused with invalid_grant."""
    code = sandbox.authorize(client_id="demo-client", redirect_uri=OOB)
    clock.advance(601)
    response = exchange(http, code)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_exchange_with_another_redirect_uri_is_invalid_grant(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """The redirect URI at exchange must match the one used to authorize."""
    code = sandbox.authorize(client_id="demo-client", redirect_uri=OOB)
    response = exchange(http, code, "http://127.0.0.1:9/other")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


def test_refresh_rotates_and_old_refresh_dies_on_first_use(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """The old refresh token survives until the new access token is used, then dies."""
    old = new_token(sandbox, http)
    new = refresh(http, old["refresh_token"]).json()
    assert new["access_token"] != old["access_token"], "access token not rotated"
    assert new["refresh_token"] != old["refresh_token"], "refresh token not rotated"
    assert sandbox.refresh_token_state(old["refresh_token"]) == "live"
    assert me(http, new["access_token"]).status_code == 200
    assert sandbox.refresh_token_state(old["refresh_token"]) == "rotated"
    assert sandbox.refresh_token_state(new["refresh_token"]) == "live"
    assert refresh(http, old["refresh_token"]).json()["error"] == "invalid_grant"


def test_refreshing_an_old_refresh_token_again_revokes_the_unused_pair(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """A retried refresh (first answer lost) gets a fresh pair; the lost pair is revoked."""
    old = new_token(sandbox, http)
    lost = refresh(http, old["refresh_token"]).json()
    retried = refresh(http, old["refresh_token"])
    assert retried.status_code == 200
    assert sandbox.refresh_token_state(lost["refresh_token"]) == "revoked"
    assert me(http, lost["access_token"]).status_code == 401
    assert me(http, retried.json()["access_token"]).status_code == 200


def test_expired_refresh_token_is_invalid_grant(
    sandbox: Sandbox, http: httpx.Client, clock: FakeClock
) -> None:
    """A daemon down longer than the refresh token lifetime needs a new authorization."""
    token = new_token(sandbox, http)
    clock.advance(601)
    assert sandbox.refresh_token_state(token["refresh_token"]) == "expired"
    response = refresh(http, token["refresh_token"])
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


def test_access_token_expires_after_its_lifetime(
    sandbox: Sandbox, http: httpx.Client, clock: FakeClock
) -> None:
    """The API refuses an access token once expires_in has passed."""
    token = new_token(sandbox, http)
    clock.advance(59)
    assert me(http, token["access_token"]).status_code == 200
    clock.advance(1)
    assert me(http, token["access_token"]).status_code == 401


def test_me_answers_owner_and_scope_and_refuses_unknown_tokens(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """/api/v1/me tells who the token belongs to; a wrong token gets 401."""
    code = sandbox.authorize(client_id="demo-client", redirect_uri=OOB, scope="write", user="al")
    token = exchange(http, code).json()
    assert me(http, token["access_token"]).json() == {"user": "al", "scope": "write"}
    refused = me(http, "not-a-token")
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_token")
    assert http.get("/api/v1/me").status_code == 401


def test_wrong_client_secret_is_invalid_client(sandbox: Sandbox, http: httpx.Client) -> None:
    """Bad client credentials get 401 invalid_client, in the form or via HTTP Basic."""
    code = sandbox.authorize(client_id="demo-client", redirect_uri=OOB)
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": OOB,
            "client_id": "demo-client", "client_secret": "wrong"}
    response = http.post("/oauth/token", data=data)
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
    basic = http.post("/oauth/token", data={**data, "client_secret": ""},
                      auth=("demo-client", "wrong"))
    assert basic.status_code == 401


def test_http_basic_client_authentication_works(sandbox: Sandbox, http: httpx.Client) -> None:
    """Clients that send credentials in an Authorization header are accepted."""
    code = sandbox.authorize(client_id="demo-client", redirect_uri=OOB)
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": OOB}
    response = http.post("/oauth/token", data=data, auth=("demo-client", "demo-secret"))
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("grant", "error"), [("password", "unsupported_grant_type"), ("", "invalid_request")]
)
def test_bad_grant_type_is_refused(http: httpx.Client, grant: str, error: str) -> None:
    """An unknown or missing grant_type gets 400 with the Doorkeeper error code."""
    response = http.post("/oauth/token", data={"grant_type": grant, **CLIENT})
    assert response.status_code == 400
    assert set(response.json()) == {"error", "error_description"}
    assert response.json()["error"] == error


def test_revoke_kills_the_pair_and_ignores_unknown_tokens(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """Revoking an access token kills its refresh token too; unknown tokens still get 200."""
    token = new_token(sandbox, http)
    response = http.post("/oauth/revoke", data={"token": token["access_token"], **CLIENT})
    assert (response.status_code, response.json()) == (200, {})
    assert sandbox.refresh_token_state(token["refresh_token"]) == "revoked"
    assert me(http, token["access_token"]).status_code == 401
    assert http.post("/oauth/revoke", data={"token": "nope", **CLIENT}).status_code == 200
    bad = http.post("/oauth/revoke", data={"token": "nope", "client_id": "demo-client"})
    assert (bad.status_code, bad.json()["error"]) == (401, "invalid_client")


def test_rate_limit_answers_429_with_retry_after(
    clock: FakeClock,
) -> None:
    """Bursting past the configured rate gets 429 and a Retry-After, until time passes."""
    with Sandbox(rate_limit=2, clock=clock) as sb, httpx.Client(base_url=sb.url) as http:
        statuses = [refresh(http, "x").status_code for _ in range(3)]
        assert statuses == [400, 400, 429]
        limited = refresh(http, "x")
        assert int(limited.headers["Retry-After"]) >= 1
        assert "error" in limited.json()
        clock.advance(1)
        assert refresh(http, "x").status_code == 400
        assert sb.stats()["rate_limited"] == 2


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [({"status": 503}, 503, "temporarily_unavailable"),
     ({"status": 400, "error": "invalid_grant"}, 400, "invalid_grant"),
     ({"status": 429, "retry_after": 0.5}, 429, "too_many_requests")],
)
def test_status_fault_answers_an_oauth_error_body(
    sandbox: Sandbox, http: httpx.Client, kwargs: dict[str, Any], status: int, error: str
) -> None:
    """A status fault looks like the server's own error answer, Retry-After included."""
    sandbox.inject_fault("status", **kwargs)
    response = refresh(http, "x")
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert response.headers.get("Retry-After") == ("0.5" if "retry_after" in kwargs else None)


def test_faults_do_not_touch_token_state(sandbox: Sandbox, http: httpx.Client) -> None:
    """A faulted exchange consumes nothing: the same key works once the fault is over."""
    code = sandbox.authorize(client_id="demo-client", redirect_uri=OOB)
    sandbox.inject_fault("status", count=2, status=502)
    assert [exchange(http, code).status_code for _ in range(3)] == [502, 502, 200]


def test_fault_limited_to_one_grant_spares_the_other(sandbox: Sandbox, http: httpx.Client) -> None:
    """A fault for refresh_token leaves code exchanges alone."""
    sandbox.inject_fault("status", status=500, grant="refresh_token")
    token = new_token(sandbox, http)
    assert refresh(http, token["refresh_token"]).status_code == 500
    assert refresh(http, token["refresh_token"]).status_code == 200


@pytest.mark.parametrize("kind", ["close", "hang"])
def test_connection_faults_close_without_answer(
    sandbox: Sandbox, http: httpx.Client, kind: str
) -> None:
    """A dropped or hung connection reaches the client as a network error, not a reply."""
    sandbox.inject_fault(kind, seconds=0.2)
    with pytest.raises(httpx.TransportError):
        refresh(http, "x")
    assert refresh(http, "x").status_code == 400
    assert sandbox.token_requests()[0][2] == 0


def test_hang_fault_blocks_no_other_request(sandbox: Sandbox, http: httpx.Client) -> None:
    """While one request hangs, others are answered at once."""
    sandbox.inject_fault("hang", seconds=1)
    outcome: list[str] = []

    def call() -> None:
        try:
            outcome.append(str(refresh(http, "x").status_code))
        except httpx.TransportError:
            outcome.append("no answer")

    hung = threading.Thread(target=call)
    hung.start()
    time.sleep(0.1)
    with httpx.Client(base_url=sandbox.url, timeout=0.5) as other:
        assert refresh(other, "x").status_code == 400
    hung.join()
    assert outcome == ["no answer"]


def test_html_fault_is_a_proxy_error_page(sandbox: Sandbox, http: httpx.Client) -> None:
    """A proxy in front of the API answers 502 with HTML, not JSON."""
    sandbox.inject_fault("html")
    response = refresh(http, "x")
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")


def test_malformed_json_fault_is_a_truncated_200(sandbox: Sandbox, http: httpx.Client) -> None:
    """A 200 whose body does not parse as JSON."""
    sandbox.inject_fault("malformed_json")
    response = refresh(http, "x")
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_missing_fields_fault_lacks_refresh_token_and_expiry(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """A 200 token answer without refresh_token and expires_in."""
    sandbox.inject_fault("missing_fields")
    body = refresh(http, "x").json()
    assert "access_token" in body
    assert "refresh_token" not in body
    assert "expires_in" not in body


def test_unknown_fault_kind_is_refused(sandbox: Sandbox) -> None:
    """A typo in a fault kind fails loudly instead of silently doing nothing."""
    with pytest.raises(ValueError, match="fault kind"):
        sandbox.inject_fault("explode")


def test_stats_count_requests_by_kind(sandbox: Sandbox, http: httpx.Client) -> None:
    """Tests can count token requests per grant and see each one's time and status."""
    token = new_token(sandbox, http)
    refresh(http, token["refresh_token"])
    sandbox.inject_fault("status", status=503)
    refresh(http, "x")
    http.post("/oauth/revoke", data={"token": "x", **CLIENT})
    me(http, "x")
    assert sandbox.stats() == {"authorization_code": 1, "refresh_token": 2, "revoke": 1,
                               "me": 1, "rate_limited": 0, "faulted": 1,
                               "refresh_token_reused": 0}
    log = sandbox.token_requests()
    assert [(grant, status) for _, grant, status in log] == [
        ("authorization_code", 200), ("refresh_token", 200), ("refresh_token", 503)]
    assert log[0][0] <= log[2][0] <= time.monotonic()
    sandbox.reset_stats()
    assert sum(sandbox.stats().values()) == 0
    assert sandbox.token_requests() == []


def test_admin_api_controls_the_sandbox_over_http(http: httpx.Client) -> None:
    """A sandbox in another process can be driven entirely over HTTP."""
    assert http.post("/_sandbox/clients", json={"client_id": "c2", "client_secret": "s2"}) \
        .status_code == 200
    code = http.post("/_sandbox/authorize", json={"client_id": "c2", "redirect_uri": OOB,
                                                   "scope": "read", "user": "bo"}).json()["code"]
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": OOB,
            "client_id": "c2", "client_secret": "s2"}
    token = http.post("/oauth/token", data=data).json()
    state = http.post("/_sandbox/refresh-token-state",
                      json={"refresh_token": token["refresh_token"]}).json()
    assert state == {"state": "live"}
    assert http.post("/_sandbox/faults", json={"kind": "status", "status": 503}).status_code == 200
    assert http.delete("/_sandbox/faults").status_code == 200
    assert refresh(http, "x").status_code == 400
    stats = http.get("/_sandbox/stats").json()
    assert (stats["refresh_token"], stats["faulted"], len(stats["token_requests"])) == (1, 0, 2)
    assert http.post("/_sandbox/stats/reset").status_code == 200
    assert http.get("/_sandbox/stats").json()["authorization_code"] == 0
    assert http.post("/_sandbox/revoke-user", json={"user": "bo"}).json() == {"revoked": 1}
    assert me(http, token["access_token"]).status_code == 401


@pytest.mark.parametrize(
    ("path", "payload"),
    [("/_sandbox/faults", {"kind": "explode"}),
     ("/_sandbox/authorize", {"client_id": "nobody", "redirect_uri": OOB}),
     ("/_sandbox/clients", {"client_id": "x"}),
     ("/_sandbox/clock-offset", {"seconds": "soon"}),
     ("/_sandbox/answer-delay", {"seconds": -1}),
     ("/_sandbox/answer-delay", {"seconds": 1, "grant": "password"}),
     ("/_sandbox/faults", [1, 2])],
)
def test_admin_api_refuses_bad_input_with_400(
    http: httpx.Client, path: str, payload: Any
) -> None:
    """A malformed admin call says what is wrong instead of failing later."""
    response = http.post(path, json=payload)
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_request", "invalid_client")


def test_revoke_user_limited_to_one_client(sandbox: Sandbox, http: httpx.Client) -> None:
    """Revoking a user for one client leaves the user's tokens at other clients alive."""
    token = new_token(sandbox, http)
    assert sandbox.revoke_user("demo", client_id="other-client") == 0
    assert me(http, token["access_token"]).status_code == 200
    assert sandbox.revoke_user("demo") == 1


def test_stop_is_prompt_while_a_request_hangs() -> None:
    """Stopping the sandbox does not wait for a hang fault's minute to pass."""
    sb = Sandbox().start()
    sb.inject_fault("hang", seconds=60)
    client = httpx.Client(base_url=sb.url, timeout=30)
    errors: list[Exception] = []

    def call() -> None:
        try:
            refresh(client, "x")
        except httpx.TransportError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.2)
    started = time.monotonic()
    sb.stop()
    caller.join(timeout=5)
    client.close()
    assert time.monotonic() - started < 2
    assert not caller.is_alive()
    assert len(errors) == 1


def test_stopped_sandbox_drops_keep_alive_connections() -> None:
    """After stop() a client's pooled connection gets no answer from a dead server."""
    sb = Sandbox().start()
    with httpx.Client(base_url=sb.url, timeout=2) as client:
        assert refresh(client, "x").status_code == 400
        sb.stop()
        with pytest.raises(httpx.TransportError):
            refresh(client, "x")


def test_burst_of_posts_is_served_quickly(sandbox: Sandbox, http: httpx.Client) -> None:
    """A thousand token requests over keep-alive take well under the test budget."""
    started = time.monotonic()
    statuses = {refresh(http, "x").status_code for _ in range(1000)}
    assert statuses == {400}
    assert time.monotonic() - started < 5
    assert sandbox.stats()["refresh_token"] == 1000


def test_a_delayed_answer_still_rotates(sandbox: Sandbox, http: httpx.Client) -> None:
    """A "delay" fault does the refresh at once but answers late, like a slow server."""
    token = new_token(sandbox, http)
    sandbox.inject_fault("delay", seconds=0.5, grant="refresh_token")
    started = time.monotonic()
    response = refresh(http, token["refresh_token"])
    assert time.monotonic() - started >= 0.5
    assert response.status_code == 200
    assert sandbox.refresh_token_state(response.json()["refresh_token"]) == "live"


def test_a_dropped_answer_leaves_the_old_refresh_token_usable(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """A "drop" fault rotates but never answers; retrying with the old token still works."""
    token = new_token(sandbox, http)
    sandbox.inject_fault("drop", grant="refresh_token")
    with pytest.raises(httpx.TransportError):
        refresh(http, token["refresh_token"])
    retry = refresh(http, token["refresh_token"])
    assert retry.status_code == 200
    assert sandbox.token_requests()[-2][2] == 0, "the dropped request was logged as answered"


def test_issue_token_gives_a_working_pair_without_http(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """issue_token seeds tokens in bulk; the pair refreshes like an exchanged one."""
    token = sandbox.issue_token(client_id="demo-client", user="zoe", scope="read")
    assert me(http, token["access_token"]).json()["user"] == "zoe"
    assert refresh(http, token["refresh_token"]).status_code == 200
    assert sandbox.stats()["authorization_code"] == 0


def test_issued_secrets_lists_every_token(sandbox: Sandbox, http: httpx.Client) -> None:
    """Leak hunts need every token the server ever handed out, rotated ones included."""
    first = new_token(sandbox, http)
    second = refresh(http, first["refresh_token"]).json()
    issued = set(sandbox.issued_secrets())
    wanted = {first["access_token"], first["refresh_token"],
              second["access_token"], second["refresh_token"]}
    assert wanted <= issued
    assert len(issued) == 4


def test_clock_offset_shifts_the_reported_created_at(clock: FakeClock) -> None:
    """A server whose clock is 50 minutes off says so in created_at, on exchange and refresh."""
    with Sandbox(clock=clock, clock_offset=-3000) as sb, \
            httpx.Client(base_url=sb.url, timeout=5) as http:
        token = new_token(sb, http)
        assert token["created_at"] == int(clock.now() - 3000)
        sb.set_clock_offset(3000.5)
        clock.advance(10)
        refreshed = refresh(http, token["refresh_token"]).json()
        assert refreshed["created_at"] == int(clock.now() + 3000.5)


def test_clock_offset_leaves_real_expiry_alone(
    sandbox: Sandbox, http: httpx.Client, clock: FakeClock
) -> None:
    """Tokens die on the server's real clock, however far off the created_at it reports."""
    sandbox.set_clock_offset(-3000)
    token = new_token(sandbox, http)
    clock.advance(59)
    assert me(http, token["access_token"]).status_code == 200
    clock.advance(1)
    assert me(http, token["access_token"]).status_code == 401
    assert sandbox.refresh_token_state(token["refresh_token"]) == "live"
    clock.advance(540)
    assert sandbox.refresh_token_state(token["refresh_token"]) == "expired"


def test_answer_delay_rotates_at_once_and_answers_late(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """A client that gives up on a slow answer leaves the server with a rotated pair."""
    token = new_token(sandbox, http)
    sandbox.set_answer_delay(5)
    with httpx.Client(base_url=sandbox.url, timeout=0.3) as impatient, \
            pytest.raises(httpx.ReadTimeout):
        refresh(impatient, token["refresh_token"])
    assert len(sandbox.issued_secrets()) == 4, "the refresh did not rotate before answering"
    assert sandbox.token_requests()[-1][1:] == ("refresh_token", 200)


def test_answer_delay_lasts_until_turned_off(sandbox: Sandbox, http: httpx.Client) -> None:
    """Unlike a "delay" fault, the answer delay holds every request until set back to 0."""
    token = new_token(sandbox, http)
    sandbox.set_answer_delay(0.5)
    for _ in range(2):
        started = time.monotonic()
        token = refresh(http, token["refresh_token"]).json()
        assert time.monotonic() - started >= 0.5
    sandbox.set_answer_delay(0)
    started = time.monotonic()
    assert refresh(http, token["refresh_token"]).status_code == 200
    assert time.monotonic() - started < 0.5


def test_answer_delay_for_one_grant_spares_the_other(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """A delay for refresh_token leaves code exchanges answered at once."""
    sandbox.set_answer_delay(5, grant="refresh_token")
    code = sandbox.authorize(client_id="demo-client", redirect_uri=OOB)
    with httpx.Client(base_url=sandbox.url, timeout=1) as impatient:
        token = exchange(impatient, code).json()
        with pytest.raises(httpx.ReadTimeout):
            refresh(impatient, token["refresh_token"])


def test_faults_take_precedence_over_the_answer_delay(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """A request a fault catches gets the fault's answer, not the delayed one."""
    sandbox.set_answer_delay(5)
    sandbox.inject_fault("status", status=503)
    with httpx.Client(base_url=sandbox.url, timeout=1) as impatient:
        assert refresh(impatient, "x").status_code == 503


def test_rotating_refreshes_reuse_no_refresh_token(sandbox: Sandbox, http: httpx.Client) -> None:
    """A client that always sends the newest refresh token, or an unknown one, reuses none."""
    token = new_token(sandbox, http)
    for _ in range(3):
        token = refresh(http, token["refresh_token"]).json()
        assert me(http, token["access_token"]).status_code == 200
    assert [refresh(http, "x").status_code for _ in range(2)] == [400, 400]
    assert sandbox.reused_refresh_tokens() == 0


def test_reused_refresh_token_counts_whether_accepted_or_refused(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """Each request sending a refresh token again counts: accepted, refused or faulted."""
    old = new_token(sandbox, http)
    first = refresh(http, old["refresh_token"]).json()
    assert sandbox.reused_refresh_tokens() == 0
    retried = refresh(http, old["refresh_token"])
    assert retried.status_code == 200
    assert me(http, retried.json()["access_token"]).status_code == 200
    assert refresh(http, old["refresh_token"]).json()["error"] == "invalid_grant"
    sandbox.inject_fault("status", status=503)
    assert refresh(http, old["refresh_token"]).status_code == 503
    assert refresh(http, first["refresh_token"]).status_code == 400, "a revoked pair"
    assert sandbox.reused_refresh_tokens() == 3
    assert sandbox.stats()["refresh_token_reused"] == 3


def test_admin_api_sets_clock_offset_answer_delay_and_shows_reuse(
    sandbox: Sandbox, http: httpx.Client, clock: FakeClock
) -> None:
    """The new controls work from another process too; stats/reset clears the reuse count."""
    assert http.post("/_sandbox/clock-offset", json={"seconds": 3000}).status_code == 200
    token = new_token(sandbox, http)
    assert token["created_at"] == int(clock.now() + 3000)
    delay = {"seconds": 0.3, "grant": "refresh_token"}
    assert http.post("/_sandbox/answer-delay", json=delay).status_code == 200
    started = time.monotonic()
    for _ in range(2):
        assert refresh(http, token["refresh_token"]).status_code == 200
    assert time.monotonic() - started >= 0.6
    assert http.get("/_sandbox/stats").json()["refresh_token_reused"] == 1
    assert http.post("/_sandbox/stats/reset").status_code == 200
    assert sandbox.reused_refresh_tokens() == 0


def test_settings_say_what_the_sandbox_enforces_and_no_secret(http: httpx.Client) -> None:
    """GET /_sandbox/settings: the lifetimes it was started with and client ids, so a test
    can compare what a client shows with what the server really does."""
    settings = http.get("/_sandbox/settings").json()
    assert settings == {"access_token_lifetime": 60, "refresh_token_lifetime": 600.0,
                        "rate_limit": None, "clients": ["demo-client"]}
    leaked = CLIENT["client_secret"] in json.dumps(settings)
    assert not leaked, "the settings show a client secret"
