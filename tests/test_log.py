"""The logging setup: JSON lines off a terminal, and secrets masked wherever they appear."""

from __future__ import annotations

import io
import json

import structlog

from tokend.log import MASK, SecretMasker, configure_logging

SECRET = "s3cr3t-Value_0123456789abcdef"


def _log_line(masker: SecretMasker, **fields: object) -> str:
    stream = io.StringIO()
    configure_logging("info", masker=masker, stream=stream, json=True)
    structlog.get_logger("test").info("something_happened", **fields)
    return stream.getvalue()


def test_a_registered_secret_is_masked_in_a_plain_field() -> None:
    """A secret passed straight into a log field is replaced by the mask."""
    masker = SecretMasker()
    masker.add(SECRET)
    line = _log_line(masker, detail=SECRET)
    assert SECRET not in line
    assert json.loads(line)["detail"] == MASK


def test_a_secret_inside_text_paths_and_nested_values_is_masked() -> None:
    """Secrets glued into URLs, paths, lists and dicts are masked too."""
    masker = SecretMasker()
    masker.add(SECRET)
    line = _log_line(
        masker,
        url=f"https://x/?refresh_token={SECRET}&a=1",
        path=f"/run/{SECRET}.json",
        nested={"list": [f"Bearer {SECRET}"]},
    )
    assert SECRET not in line
    assert line.count(MASK) == 3


def test_a_padded_secret_after_a_separator_is_masked() -> None:
    """A base64 secret ending in ``=`` padding, written as the last part of a path, is
    masked although fewer than eight of its characters come before the padding."""
    padded = "Ab3dEf7=="
    masker = SecretMasker()
    masker.add(padded)
    line = _log_line(masker, path=f"/run/tokens/{padded}", dotted=f"x.{padded}")
    assert padded not in line
    assert line.count(MASK) == 2


def test_a_secret_in_an_exception_is_masked() -> None:
    """An exception whose message carries a secret is rendered without it."""
    masker = SecretMasker()
    masker.add(SECRET)
    stream = io.StringIO()
    configure_logging("info", masker=masker, stream=stream, json=True)
    def fail() -> None:
        raise RuntimeError(f"boom {SECRET}")

    try:
        fail()
    except RuntimeError:
        structlog.get_logger("test").exception("crashed")
    assert SECRET not in stream.getvalue()
    assert "boom" in stream.getvalue()


def test_discarded_secrets_are_no_longer_masked() -> None:
    """Rotated tokens leave the masker, so it does not grow forever."""
    masker = SecretMasker()
    masker.add(SECRET)
    masker.discard(SECRET)
    assert masker.mask(SECRET) == SECRET


def test_text_without_secrets_is_unchanged() -> None:
    """Ordinary words, paths and numbers pass through untouched."""
    masker = SecretMasker()
    masker.add(SECRET)
    text = "token payroll/alice/read written to /run/tokend/payroll-alice.token at 12:00"
    assert masker.mask(text) == text


def test_log_level_filters_lower_levels() -> None:
    """At level warning, info events are not written."""
    stream = io.StringIO()
    configure_logging("warning", masker=SecretMasker(), stream=stream, json=True)
    structlog.get_logger("test").info("quiet")
    structlog.get_logger("test").warning("loud")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["loud"]
    assert lines[0]["level"] == "warning"
    assert "timestamp" in lines[0]
