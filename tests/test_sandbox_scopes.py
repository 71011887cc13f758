"""The sandbox as today's Factorial: resource scopes per client, and company tokens that never
expire (``resource_owner_type=company``), over real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.test_sandbox import OOB, FakeClock, me
from tokend.sandbox import Sandbox

HR = {"client_id": "hr-app", "client_secret": "hr-secret"}
HR_SCOPES = ["employees", "time_off", "payroll"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sandbox(clock: FakeClock) -> Iterator[Sandbox]:
    with Sandbox(access_token_lifetime=60, refresh_token_lifetime=600, clock=clock) as sb:
        sb.add_client(HR["client_id"], HR["client_secret"], scopes=HR_SCOPES)
        yield sb


@pytest.fixture
def http(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=5) as client:
        yield client


def authorize_link(http: httpx.Client, **params: str) -> httpx.Response:
    """What a browser following tokend's authorize link gets."""
    query = {"client_id": HR["client_id"], "redirect_uri": "http://127.0.0.1:9/cb",
             "response_type": "code", **params}
    return http.get("/oauth/authorize", params=query)


def exchange(http: httpx.Client, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 302, response.text
    code = httpx.URL(response.headers["Location"]).params["code"]
    data = {"grant_type": "authorization_code", "code": code,
            "redirect_uri": "http://127.0.0.1:9/cb", **HR}
    answer = http.post("/oauth/token", data=data)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def refresh(http: httpx.Client, refresh_token: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **HR}
    return http.post("/oauth/token", data=data)


def test_resource_scopes_are_granted_and_me_answers_them(http: httpx.Client) -> None:
    """A client given resource scopes gets a token for any of them, space-separated, and
    ``/api/v1/me`` says which scopes the token carries."""
    token = exchange(http, authorize_link(http, scope="employees time_off"))
    assert token["scope"] == "employees time_off"
    assert token["expires_in"] == 60
    assert me(http, token["access_token"]).json() == {"user": "demo",
                                                      "scope": "employees time_off"}


def test_a_scope_outside_the_clients_set_is_invalid_scope(http: httpx.Client) -> None:
    """As Doorkeeper: a scope the application was not given is refused on the link."""
    response = authorize_link(http, scope="employees admin")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_scope")


def test_a_client_without_scopes_refuses_resource_scopes(http: httpx.Client) -> None:
    """The old clients keep the old three scopes and nothing else."""
    response = authorize_link(http, client_id="demo-client", scope="employees")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_scope")


def test_admin_api_adds_a_client_with_scopes(http: httpx.Client) -> None:
    """A sandbox in another process gets a scoped client over HTTP."""
    client = {"client_id": "c3", "client_secret": "s3", "scopes": ["employees"]}
    assert http.post("/_sandbox/clients", json=client).status_code == 200
    code = http.post("/_sandbox/authorize", json={
        "client_id": "c3", "redirect_uri": OOB, "scope": "employees"}).json()["code"]
    token = http.post("/oauth/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": OOB,
        "client_id": "c3", "client_secret": "s3"}).json()
    assert token["scope"] == "employees"
    refused = http.post("/_sandbox/authorize", json={
        "client_id": "c3", "redirect_uri": OOB, "scope": "payroll"})
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_scope")


def test_company_token_answer_has_no_expiry(http: httpx.Client) -> None:
    """``resource_owner_type=company`` on the link gives a token without ``expires_in``."""
    token = exchange(http, authorize_link(http, scope="employees",
                                          resource_owner_type="company"))
    assert sorted(token) == ["access_token", "created_at", "refresh_token", "scope",
                             "token_type"]


def test_company_token_works_long_after_a_user_token_would_expire(
    http: httpx.Client, clock: FakeClock
) -> None:
    """A company token never expires, not even after the refresh tokens' lifetime."""
    token = exchange(http, authorize_link(http, scope="employees",
                                          resource_owner_type="company"))
    clock.advance(30 * 86400)
    answer = me(http, token["access_token"])
    assert answer.status_code == 200
    assert answer.json() == {"user": "demo", "scope": "employees",
                             "resource_owner_type": "company"}


def test_refreshing_a_company_token_is_refused_and_leaves_it_working(
    http: httpx.Client
) -> None:
    """There is nothing to refresh: ``invalid_grant``, and the token still works."""
    token = exchange(http, authorize_link(http, scope="employees",
                                          resource_owner_type="company"))
    refused = refresh(http, token["refresh_token"])
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
    assert me(http, token["access_token"]).status_code == 200


def test_a_revoked_company_token_stops_working(http: httpx.Client) -> None:
    """Company tokens do not expire, but they can be revoked."""
    token = exchange(http, authorize_link(http, scope="employees",
                                          resource_owner_type="company"))
    revoked = http.post("/oauth/revoke", data={"token": token["access_token"], **HR})
    assert revoked.status_code == 200
    assert me(http, token["access_token"]).status_code == 401


def test_an_unknown_resource_owner_type_is_refused(http: httpx.Client) -> None:
    """Only ``user`` (the default) and ``company`` are owners."""
    response = authorize_link(http, scope="employees", resource_owner_type="team")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


def test_python_and_admin_api_issue_company_tokens(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """Tests seed company tokens without a browser, in process or over HTTP."""
    issued = sandbox.issue_token(client_id="hr-app", scope="employees",
                                 resource_owner_type="company")
    assert "expires_in" not in issued
    code = sandbox.authorize(client_id="hr-app", redirect_uri=OOB, scope="time_off",
                             resource_owner_type="company")
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": OOB, **HR}
    assert "expires_in" not in http.post("/oauth/token", data=data).json()
    over_http = http.post("/_sandbox/authorize", json={
        "client_id": "hr-app", "redirect_uri": OOB, "scope": "employees",
        "resource_owner_type": "company"}).json()["code"]
    answer = http.post("/oauth/token", data={**data, "code": over_http}).json()
    assert "expires_in" not in answer


def test_old_scopes_answer_exactly_as_before(http: httpx.Client) -> None:
    """A user token of the old scopes: the same fields and the same scope text as ever."""
    response = authorize_link(http, client_id="demo-client", scope="write read")
    code = httpx.URL(response.headers["Location"]).params["code"]
    token = http.post("/oauth/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": "http://127.0.0.1:9/cb",
        "client_id": "demo-client", "client_secret": "demo-secret"}).json()
    assert sorted(token) == ["access_token", "created_at", "expires_in", "refresh_token",
                             "scope", "token_type"]
    assert token["scope"] == "read write"
    assert me(http, token["access_token"]).json() == {"user": "demo", "scope": "read write"}
