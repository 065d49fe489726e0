"""`relay hash-key`: a key given is hashed, none given makes one, an empty or short one is
refused."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import MIN_KEY_CHARS, app
from schemas.config import hash_key
from schemas.settings import Settings

DEMO_KEY = Settings.model_fields["demo_key"].default


@pytest.mark.parametrize("given", ["", "   ", "\t"])
def test_an_empty_key_is_refused_not_replaced_by_a_new_one(given: str) -> None:
    """`relay hash-key "$KEY"` with KEY unset: a random key's line pasted into the config
    would admit nobody the user meant."""
    result = CliRunner().invoke(app, ["hash-key", given])
    assert result.exit_code == 2, result.output
    assert "the key is empty" in result.output and "relay key:" not in result.output


MINE = "rk-mine-0123456789abcdef"


def test_a_given_key_is_hashed_and_none_makes_one() -> None:
    given = CliRunner().invoke(app, ["hash-key", MINE])
    assert given.exit_code == 0
    assert f"sha256: {hash_key(MINE)}" in given.output
    made = CliRunner().invoke(app, ["hash-key"])
    assert made.exit_code == 0 and "relay key: rk-" in made.output
    key = made.output.split("relay key: ")[1].split()[0]
    assert len(key) >= MIN_KEY_CHARS and f"sha256: {hash_key(key)}" in made.output


@pytest.mark.parametrize("given", ["abc", "rk-mine", "rk-0123456789abcdef"])
def test_a_key_too_short_to_store_as_a_plain_hash_is_refused(given: str) -> None:
    """A short key's SHA-256 is in precomputed tables: a leaked config gives it away."""
    result = CliRunner().invoke(app, ["hash-key", given])
    said = " ".join(result.output.replace("│", " ").split())  # out of rich's box
    assert result.exit_code == 2, result.output
    assert f"the key is {len(given)} characters, too short" in said
    assert f"at least {MIN_KEY_CHARS}" in said and "relay key:" not in said


def test_the_demo_key_is_long_enough() -> None:
    """The key the demo config admits and `relay up` prints can be hashed again."""
    result = CliRunner().invoke(app, ["hash-key", DEMO_KEY])
    assert result.exit_code == 0 and f"sha256: {hash_key(DEMO_KEY)}" in result.output
