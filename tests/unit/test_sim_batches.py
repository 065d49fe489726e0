"""Vendor batches as the vendors validate them: Anthropic's request ids are strings."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from simulator import SimConfig, create_app

AV = {"anthropic-version": "2023-06-01"}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def app() -> Any:
    return create_app(SimConfig(batch_complete_after_s=60))


@pytest.fixture
def sim(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


@pytest.mark.parametrize("custom_id", [None, 5, True])
async def test_a_message_batch_request_id_must_be_a_string(
    sim: httpx.AsyncClient, custom_id: Any
) -> None:
    params = {"model": "c", "max_tokens": 5, "messages": user("a")}
    body = {"requests": [{"custom_id": custom_id, "params": params}]}
    r = await sim.post("/v1/messages/batches", headers=AV, json=body)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "custom_id" in r.json()["error"]["message"]
    assert (await sim.get("/stats")).json()["batches"] == 0
