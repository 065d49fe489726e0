"""`relay hash-key` hashes only keys a client can present as they are: the gateway strips
the header's whitespace and reads it as Latin-1, so any other key's line admits no one."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app


@pytest.mark.parametrize(
    ("given", "says"),
    [
        (" rk-x", "whitespace around it"),
        ("rk-x\n", "whitespace around it"),
        ("rk-é", "'é', which a request header cannot carry"),
        ("rk-\x07x", "'\\x07', which a request header cannot carry"),
    ],
)
def test_a_key_no_client_could_present_as_hashed_is_refused(given: str, says: str) -> None:
    result = CliRunner().invoke(app, ["hash-key", given])
    said = " ".join(result.output.replace("│", " ").split())  # out of rich's box
    assert result.exit_code == 2, result.output
    assert says in said and "relay key:" not in said
