"""Scopes as the server defines them: the seed's three values, or any space-separated list of
RFC 6749 scope tokens; in a token name the spaces are written as ``+``."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from tokend.errors import NotFoundError
from tokend.factorial import Factorial
from tokend.model import SCOPES, Config, TokenName, TokenSpec, resolve_token, scope_name
from tokend.oauth import protocol as oauth

OOB = "urn:ietf:wg:oauth:2.0:oob"


@pytest.mark.parametrize(
    ("written", "name"),
    [("read", "read"), ("write", "write"), ("read+write", "read+write"),
     ("read write", "read+write"), ("employees time_off", "employees+time_off"),
     ("employees", "employees"), ("api/v2:read", "api/v2:read"), ("a!#$%&'*,-.~", "a!#$%&'*,-.~")],
)
def test_a_scope_is_named_as_written_with_spaces_as_plus(written: str, name: str) -> None:
    """The token name's SCOPE part is the scope as the config writes it, spaces as ``+``."""
    assert scope_name(written) == name


@pytest.mark.parametrize(
    ("written", "says"),
    [("", "empty"), ("employees  time_off", "in a row"), (" employees", "start or end"),
     ("time_off+", "start or end"), ('emp"loyees', "'\"' (character 4)"),
     ("a\\b", "'\\\\' (character 2)"), ("employees\ttime_off", "'\\t' (character 10)"),
     ("émployés", "'é' (character 1)")],
)
def test_a_bad_scope_says_what_is_wrong_and_where(written: str, says: str) -> None:
    """A scope the server could never grant is refused with the rule and the position."""
    with pytest.raises(ValueError, match="scope") as error:
        scope_name(written)
    assert says in str(error.value)


def test_a_scope_with_a_slash_keeps_the_token_name_readable() -> None:
    """Only the first two slashes of a name separate parts: a scope may hold one."""
    name = TokenName("hr", "alice", scope_name("api/v2 employees"))
    assert str(name) == "hr/alice/api/v2+employees"
    assert TokenName.parse(str(name)) == name


def _config(*names: TokenName) -> Config:
    return Config(source=None, state_dir=None, applications={},  # type: ignore[arg-type]
                  tokens=tuple(TokenSpec(name) for name in names))


def test_a_resource_scope_token_resolves_by_name_or_written_scope() -> None:
    """The CLI finds a resource-scope token by its full name, by ``APP/USER`` when it is
    the only one, and by the scope written with spaces as in the config."""
    wanted = TokenName("hr", "alice", "employees+time_off")
    config = _config(wanted, TokenName("hr", "bob", "api/v2"))
    assert resolve_token(config, "hr/alice/employees+time_off").name == wanted
    assert resolve_token(config, "hr/alice").name == wanted
    assert resolve_token(config, "hr/alice/employees time_off").name == wanted
    assert resolve_token(config, "hr/bob/api/v2").name.scope == "api/v2"


def test_a_bad_scope_in_a_cli_name_is_a_usage_error_naming_the_rule() -> None:
    """``tokend authorize 'hr/alice/bad"scope'`` says the scope is malformed, not just that
    no token has that name."""
    config = _config(TokenName("hr", "alice", "employees"))
    with pytest.raises(NotFoundError, match=r"scope is malformed: .* cannot be in a scope"):
        resolve_token(config, 'hr/alice/bad"scope')


def test_the_link_carries_a_resource_scope_space_separated() -> None:
    """The server reads ``employees+time_off`` on the link as the two scopes."""
    link = oauth.authorization_link(client_id="abc", redirect_uri=OOB,
                                    scope="employees+time_off")
    assert link.endswith("&scope=employees+time_off")
    assert parse_qs(urlsplit(link).query)["scope"] == ["employees time_off"]
    assert "resource_owner_type" not in link


def test_a_company_link_asks_for_a_company_token_and_only_then() -> None:
    """``resource_owner_type=company`` is on the link of a company token, last."""
    link = oauth.authorization_link(client_id="abc", redirect_uri=OOB, scope="employees",
                                    resource_owner_type="company")
    assert link.endswith("&scope=employees&resource_owner_type=company")


def test_a_malformed_scope_never_reaches_a_link() -> None:
    """The link builder applies the same rule as the config."""
    with pytest.raises(ValueError, match="scope"):
        oauth.authorization_link(client_id="abc", redirect_uri=OOB, scope='a"b')


@pytest.mark.parametrize("scope", ["employees", "employees+time_off", "read write"])
def test_the_python_api_keeps_the_seeds_three_scopes(
    scope: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seed's documented contract: ``authorize`` takes read, write or read+write only,
    and anything else is a ValueError naming them."""
    with Factorial(access_token="abc") as client:
        with pytest.raises(ValueError, match=r"read, write, read\+write"):
            client.authorize(client_id="app", redirect_uri=OOB, scope=scope)
        for good in SCOPES:
            client.authorize(client_id="app", redirect_uri=OOB, scope=good)
    assert capsys.readouterr().out.count("&scope=") == len(SCOPES)
