"""Guessing relay keys from one address gets 429 after a few tries; keys in use there pass."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.stack import DEMO_KEY, Simulator, example_config


async def test_refused_keys_from_one_address_turn_into_429(
    stack_factory: Any, simulator: Simulator
) -> None:
    stack = stack_factory(
        example_config(simulator.url), extra_env={"RELAY_AUTH_REFUSALS_PER_MINUTE": "3"}
    )
    url = f"{stack.url}/v1/models"
    async with httpx.AsyncClient(timeout=30) as http:
        in_use = await http.get(url, headers={"authorization": f"Bearer {DEMO_KEY}"})
        guesses = [
            await http.get(url, headers={"authorization": f"Bearer rk-guess-{i}"}) for i in range(5)
        ]
        valid = await http.get(url, headers={"authorization": f"Bearer {DEMO_KEY}"})
    assert in_use.status_code == 200
    assert [r.status_code for r in guesses] == [401, 401, 401, 429, 429]
    held = guesses[-1]
    assert int(held.headers["retry-after"]) >= 1
    assert held.json()["error"]["type"] == "rate_limit_error"
    assert valid.status_code == 200, "a key in use from the same address is not held back"
