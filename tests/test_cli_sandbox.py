"""``tokend sandbox``: the local OAuth server as a command, for testing other programs offline."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx

from tokend.factorial import Factorial

OOB = "urn:ietf:wg:oauth:2.0:oob"


def test_the_sandbox_command_serves_the_whole_flow_until_interrupted() -> None:
    """It prints its URL first, serves link -> key -> token -> refresh, and stops on Ctrl-C."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tokend", "sandbox", "--client", "app-1:s3cret-value",
         "--access-token-lifetime", "90s", "--rate-limit", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        link = Factorial.obtain_authorization_link(
            client_id="app-1", redirect_uri=OOB, scope="read", base_url=url
        )
        page = httpx.get(link, timeout=5).text
        match = re.search(r'<code id="authorization_code">([^<]+)</code>', page)
        assert match is not None
        with Factorial(access_token="", base_url=url) as client:
            token = client.obtain_access_token(
                client_id="app-1", client_secret="s3cret-value", redirect_uri=OOB,
                authorization_key=match.group(1),
            )
            assert token.expires_in == 90
            fresh = client.refresh_access_token(
                client_id="app-1", client_secret="s3cret-value",
                refresh_token=token.refresh_token,
            )
        assert fresh.access_token != token.access_token
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0


def test_a_malformed_client_is_a_usage_error() -> None:
    """--client must be ID:SECRET; anything else exits 2 with one line."""
    result = subprocess.run(
        [sys.executable, "-m", "tokend", "sandbox", "--client", "no-secret"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert "ID:SECRET" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
