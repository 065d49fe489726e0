"""`relay hash-key`: a key given is hashed, none given makes one, an empty one is refused."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app
from schemas.config import hash_key


@pytest.mark.parametrize("given", ["", "   ", "\t"])
def test_an_empty_key_is_refused_not_replaced_by_a_new_one(given: str) -> None:
    """`relay hash-key "$KEY"` with KEY unset: a random key's line pasted into the config
    would admit nobody the user meant."""
    result = CliRunner().invoke(app, ["hash-key", given])
    assert result.exit_code == 2, result.output
    assert "the key is empty" in result.output and "relay key:" not in result.output


def test_a_given_key_is_hashed_and_none_makes_one() -> None:
    given = CliRunner().invoke(app, ["hash-key", "rk-mine"])
    assert given.exit_code == 0
    assert f"sha256: {hash_key('rk-mine')}" in given.output
    made = CliRunner().invoke(app, ["hash-key"])
    assert made.exit_code == 0 and "relay key: rk-" in made.output
