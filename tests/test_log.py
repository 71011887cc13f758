"""The logging setup: JSON lines off a terminal, and secrets masked wherever they appear."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from tokend.log import MASK, SecretMasker, configure_logging, mask_token_shaped

SECRET = "s3cr3t-Value_0123456789abcdef"


@pytest.fixture(autouse=True)
def _structlog_as_before() -> Iterator[None]:
    """These tests configure structlog for the whole process (one at level warning): later
    tests' ``capture_logs`` would then miss every info event."""
    yield
    structlog.reset_defaults()


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


def test_a_secret_the_renderer_would_escape_is_masked_before_it_is_escaped() -> None:
    """A client secret with a quote, a backslash or a non-ASCII letter is written escaped
    in a JSON line, where the line's own pass would no longer find it whole; it is
    masked in the value, in the event name and inside longer text alike."""
    odd = 'pa"ss\\wörd-0123456789'
    masker = SecretMasker()
    masker.add(odd)
    line = _log_line(masker, detail=odd, text=f"secret={odd} end")
    assert odd not in json.loads(line).values()
    assert odd not in line and json.dumps(odd)[1:-1] not in line
    assert json.loads(line)["detail"] == MASK and json.loads(line)["text"] == f"secret={MASK} end"


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


class _Clock:
    """A settable clock for the masker's expiries."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_rotated_token_stays_masked_until_it_expires_then_is_forgotten() -> None:
    """A token replaced by a refresh is still valid for the rest of its life, so a hook
    that prints it must not put it in the log; once expired it is dropped from memory."""
    clock = _Clock()
    masker = SecretMasker(now=clock)
    masker.add(SECRET)
    masker.retire(SECRET, until=1060.0)
    clock.now = 1059.0
    assert masker.mask(f"old {SECRET}") == f"old {MASK}"
    clock.now = 1060.0
    assert masker.mask(f"old {SECRET}") == f"old {SECRET}"


def test_a_token_retired_without_being_known_is_masked_too() -> None:
    """A process that never saw the old token (it was stored before it started) still masks
    it once told it was replaced."""
    clock = _Clock()
    masker = SecretMasker(now=clock)
    masker.retire(SECRET, until=1060.0)
    assert masker.mask(SECRET) == MASK


def test_retired_tokens_are_capped_dropping_the_soonest_to_expire() -> None:
    """Memory stays bounded however many tokens rotate: past the cap, the retired tokens
    closest to their expiry (the least useful to an attacker) are forgotten first."""
    clock = _Clock()
    masker = SecretMasker(now=clock, max_retired=3)
    olds = [f"{SECRET}-{n}" for n in range(5)]
    for n, old in enumerate(olds):
        masker.add(old)
        masker.retire(old, until=2000.0 - n)  # the later ones expire sooner
    still_masked = [masker.mask(old) == MASK for old in olds]
    assert still_masked == [True, True, True, False, False]


def test_a_token_added_again_is_no_longer_retired() -> None:
    """A secret back in use (the same token published again) is masked until retired anew."""
    clock = _Clock()
    masker = SecretMasker(now=clock)
    masker.retire(SECRET, until=1001.0)
    masker.add(SECRET)
    clock.now = 5000.0
    assert masker.mask(SECRET) == MASK


TOKENS = ["Xk2_9aQ-4bLmZpR7tYvW3cNdE8fGhJ0sUoI1eKqAzB", "0f3a9c4e1b2d8f7a6c5e4d3b2a1f0e9d8c7b6a5f",
          "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVPmB92K27uhbUJU1p1rwW1gFWFOEjXk"]


def test_token_shaped_words_in_foreign_output_are_masked() -> None:
    """Output tokend did not write (a hook's) may hold a token tokend never knew: every
    long word mixing cases or digits goes, inside lines, after "=" or "Bearer"."""
    for token in TOKENS:
        text = f"got {token}\nAuthorization: Bearer {token}\nTOKEN={token};"
        masked = mask_token_shaped(text)
        leaked = any(part in masked for part in token.split(".") if len(part) >= 20)
        assert not leaked, "a token-shaped word was left in the output"
        assert masked.startswith("got ") and "Authorization: Bearer " in masked


def test_ordinary_hook_output_is_left_alone() -> None:
    """Words, identifiers, paths, names and times a hook prints stay readable."""
    text = ("reloaded payroll.service: TOKEND_TOKEN=payroll/alice/read at "
            "2025-01-31T14:05:00Z from /run/tokend/payroll-alice.token; "
            "configuration_reloading_completed OK HTTP/1.1 200")
    assert mask_token_shaped(text) == text
