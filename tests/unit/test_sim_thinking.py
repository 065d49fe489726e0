"""Extended thinking as Anthropic enforces it: what it refuses beside thinking, and an
answer (thinking included) that never outgrows max_tokens."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from simulator import SimConfig, create_app

AV = {"anthropic-version": "2023-06-01"}
TOOL = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
ENABLED = {"type": "enabled", "budget_tokens": 1024}
ASK: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 2048,
    "messages": [{"role": "user", "content": "what is the weather in Paris?"}],
    "thinking": ENABLED,
}


@pytest.fixture
def sim() -> httpx.AsyncClient:
    app = create_app(SimConfig())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ({"tools": [TOOL], "tool_choice": {"type": "any"}}, "tool_choice forces tool use"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "tool", "name": "get_weather"}},
            "tool_choice forces tool use",
        ),
        ({"temperature": 0.2}, "`temperature` may only be set to 1"),
        ({"temperature": 0}, "`temperature` may only be set to 1"),
        ({"top_k": 5}, "`top_k` must be unset"),
        ({"top_p": 0.5}, "`top_p` must be greater than or equal to 0.95"),
        ({"thinking": {"type": "adaptive"}, "temperature": 0.5}, "`temperature`"),
    ],
)
async def test_what_anthropic_refuses_beside_thinking_is_a_400(
    sim: httpx.AsyncClient, extra: dict[str, Any], said: str
) -> None:
    r = await sim.post("/v1/messages", headers=AV, json={**ASK, **extra})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and said in error["message"]
    without = {k: v for k, v in {**ASK, **extra}.items() if k != "thinking"}
    assert (await sim.post("/v1/messages", headers=AV, json=without)).status_code == 200


@pytest.mark.parametrize(
    "extra",
    [
        {"temperature": 1},
        {"top_p": 0.95},
        {"tools": [TOOL], "tool_choice": {"type": "auto"}},
        {"tools": [TOOL], "tool_choice": {"type": "none"}},
    ],
)
async def test_what_goes_with_thinking_is_answered(
    sim: httpx.AsyncClient, extra: dict[str, Any]
) -> None:
    r = await sim.post("/v1/messages", headers=AV, json={**ASK, **extra})
    assert r.status_code == 200 and r.json()["content"][0]["type"] == "thinking"


@pytest.mark.parametrize("max_tokens", [1, 5, 12, 40])
async def test_adaptive_thinking_never_outgrows_max_tokens(
    sim: httpx.AsyncClient, max_tokens: int
) -> None:
    """The thinking counts towards max_tokens; when it fills them it is cut there, and
    there is no answer after it (not even an empty text block)."""
    body = {**ASK, "thinking": {"type": "adaptive"}, "max_tokens": max_tokens}
    whole = (await sim.post("/v1/messages", headers=AV, json=body)).json()
    assert whole["usage"]["output_tokens"] <= max_tokens
    thinking = whole["content"][0]
    assert thinking["type"] == "thinking" and thinking["thinking"]
    if whole["stop_reason"] == "max_tokens" and len(whole["content"]) == 1:
        assert whole["usage"]["output_tokens"] == max_tokens
    assert all(b["type"] != "text" or b["text"] for b in whole["content"])
    raw = await sim.post("/v1/messages", headers=AV, json={**body, "stream": True})
    events = [json.loads(line[6:]) for line in raw.text.splitlines() if line.startswith("data: ")]
    [delta] = [e for e in events if e["type"] == "message_delta"]
    assert delta["usage"]["output_tokens"] == whole["usage"]["output_tokens"]
    assert delta["delta"]["stop_reason"] == whole["stop_reason"]
    starts = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    assert starts == [b["type"] for b in whole["content"]]
    streamed = "".join(
        e["delta"].get("thinking", "")
        for e in events
        if e["type"] == "content_block_delta" and e["index"] == 0
    )
    assert streamed == thinking["thinking"]
