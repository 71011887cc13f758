"""The formats a token is handed out in, and the rules of a template."""

from __future__ import annotations

import json

import pytest

from tokend.formats import PLACEHOLDERS, placeholders, render, template_parts

ACCESS = "tok-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef"
EXPIRES = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def _values(now: float = EXPIRES - 3600) -> dict[str, str]:
    return placeholders(access_token=ACCESS, token_type="Bearer", scope="read",
                        expires_at=EXPIRES, name="payroll/alice/read", now=now)


def test_a_template_shows_every_placeholder() -> None:
    """Each placeholder becomes its value; the expiry in the one UTC form, expires_in in s."""
    template = " ".join(f"{name}={{{name}}}" for name in PLACEHOLDERS) + "\n"
    text = render("template", _values(), template=template)
    shown = dict(pair.split("=", 1) for pair in text.split())
    assert shown.pop("access_token") == ACCESS, "the access token is not shown"
    assert shown == {"token_type": "Bearer", "scope": "read",
                     "expires_at": "2027-01-15T08:00:00Z", "expires_in": "3600",
                     "name": "payroll/alice/read", "app": "payroll", "user": "alice"}


def test_expires_in_counts_from_the_moment_of_writing() -> None:
    """Written 10 minutes later, the same token has 10 minutes less; never below zero."""
    assert render("template", _values(EXPIRES - 600), template="{expires_in}") == "600"
    assert render("template", _values(EXPIRES + 5), template="{expires_in}") == "0"


def test_doubled_braces_are_literal_braces() -> None:
    """``{{`` and ``}}`` write one brace, so a template can hold JSON or YAML flow maps."""
    text = render("template", _values(), template='{{"user": "{user}"}}')
    assert json.loads(text) == {"user": "alice"}


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Bearer {token}", r"unknown placeholder \{token\} at character 8; placeholders are "
                           "access_token, token_type, scope, expires_at, expires_in, name, app, "
                           "user"),
        ("{refresh_token}", "at character 1; tokend never writes the refresh token or a secret"),
        ("{client_secret}", "never writes the refresh token or a secret"),
        ("{access_token.__class__}", "unknown placeholder at character 1"),
        ("{access_token:>50}", "unknown placeholder at character 1"),
        ("{access_token!r}", "unknown placeholder at character 1"),
        ("{}", "unknown placeholder at character 1"),
        ("x{tok-3fA9/xyz=}", "unknown placeholder at character 2; placeholders are"),
        ("a } b", "stray '}' at character 3"),
        ("a { b", "'{' at character 3 is not closed"),
        ("{user {app}", "'{' at character 1 is not closed"),
    ],
    ids=["unknown", "refresh-token", "secret", "attribute", "format-spec", "conversion",
         "empty", "not-a-name-not-quoted", "stray-close", "unclosed", "nested"],
)
def test_a_bad_template_names_the_problem_and_where(template: str, message: str) -> None:
    """Unknown placeholders and stray braces are refused with their position in the template."""
    with pytest.raises(ValueError, match=message):
        template_parts(template)


def test_the_header_format_is_an_authorization_line() -> None:
    """``header`` is what ``curl -H @file`` and ``-H "$(…)"`` take."""
    assert render("header", _values()) == f"Authorization: Bearer {ACCESS}\n"


def test_json_and_env_and_token_formats() -> None:
    """The fixed formats keep their shapes: bare token, one env line, a JSON object."""
    assert render("token", _values()) == ACCESS
    assert render("env", _values(), variable="API") == f"API={ACCESS}\n"
    assert json.loads(render("json", _values())) == {
        "access_token": ACCESS, "token_type": "Bearer", "scope": "read",
        "expires_at": "2027-01-15T08:00:00Z"}


def test_an_unknown_format_lists_the_formats() -> None:
    """A misspelt format names the ones there are."""
    with pytest.raises(ValueError, match="formats: token, env, json, header, template"):
        render("yaml", _values())
