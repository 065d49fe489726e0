"""Ollama answers only for the models it has pulled, and refuses what a model cannot do
with the 400 the relay reads as "try the next candidate"."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from agents.adapters import OllamaAdapter, VendorCall
from schemas.config import VendorConfig
from schemas.errors import VendorNotFound, VendorUnsupported
from schemas.formats.anthropic import messages_request_to_openai
from schemas.formats.openai import assemble_chunks
from simulator import SimConfig, create_app

TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def sim() -> httpx.AsyncClient:
    app = create_app(SimConfig())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


async def test_a_model_not_pulled_is_a_404(sim: httpx.AsyncClient) -> None:
    chat = {"model": "llama3-unpulled", "messages": user("hi"), "stream": False}
    r = await sim.post("/api/chat", json=chat)
    assert (r.status_code, r.json()) == (
        404,
        {"error": 'model "llama3-unpulled" not found, try pulling it first'},
    )
    embed = await sim.post("/api/embed", json={"model": "nomic-unpulled", "input": "x"})
    assert embed.status_code == 404
    for pulled in ("llama3.2", "llama3.2:latest", "qwen2.5:7b", "llama3.2-fail500", "mistral"):
        r = await sim.post("/api/chat", json={**chat, "model": pulled})
        assert r.status_code == (500 if "fail" in pulled else 200), pulled
    assert (await sim.get("/stats")).json()["calls"] == {
        "llama3.2": 1,
        "llama3.2:latest": 1,
        "qwen2.5:7b": 1,
        "llama3.2-fail500": 1,
        "mistral": 1,
    }
    adapter = OllamaAdapter(VendorConfig(kind="ollama", base_url="http://sim"), sim)
    with pytest.raises(VendorNotFound):
        await adapter.chat(VendorCall("llama3-unpulled", {"messages": user("hi")}, ""))


@pytest.mark.parametrize(
    ("model", "extra", "said"),
    [
        ("gemma3:1b", {"tools": [TOOL]}, '"gemma3:1b" does not support tools'),
        ("gemma3:1b", {"think": True}, '"gemma3:1b" does not support thinking'),
        ("nomic-embed-text", {}, '"nomic-embed-text" does not support chat'),
    ],
)
async def test_what_a_model_cannot_do_is_a_400_the_relay_passes_on(
    sim: httpx.AsyncClient, model: str, extra: dict[str, Any], said: str
) -> None:
    body = {"model": model, "messages": user("what is the weather?"), "stream": False, **extra}
    r = await sim.post("/api/chat", json=body)
    assert (r.status_code, r.json()) == (400, {"error": said})
    adapter = OllamaAdapter(VendorConfig(kind="ollama", base_url="http://sim"), sim)
    neutral: dict[str, Any] = {"messages": user("what is the weather?")}
    if "tools" in extra:
        neutral["tools"] = extra["tools"]
    if "think" in extra:
        neutral["reasoning_effort"] = "high"
    call = VendorCall(model, neutral, "")
    with pytest.raises(VendorUnsupported, match="does not support"):
        await adapter.chat(call)
    with pytest.raises(VendorUnsupported, match="does not support"):
        _ = [item async for item in adapter.stream(call)]
    plain = await sim.post("/api/chat", json={**body, "model": "llama3.2"})
    assert plain.status_code == 200


@pytest.mark.parametrize("stream", [False, True])
async def test_an_anthropic_client_s_thinking_on_a_model_that_does_not_think_is_answered(
    stream: bool,
) -> None:
    """Claude Code with thinking on, routed to a local model without it: the ``think``
    the relay made of it is refused, and the request goes again without it, answered."""
    sent: list[dict[str, Any]] = []

    async def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))

    app = create_app(SimConfig())
    sim = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://sim",
        event_hooks={"request": [record]},
    )
    asked = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 2000,
        "messages": user("hello there"),
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    call = VendorCall("gemma3:1b", messages_request_to_openai(asked), "")
    adapter = OllamaAdapter(VendorConfig(kind="ollama", base_url="http://sim"), sim)
    if stream:
        *chunks, _ = [item async for item in adapter.stream(call)]
        message = assemble_chunks(chunks)["choices"][0]["message"]
    else:
        message = (await adapter.chat(call)).body["choices"][0]["message"]
    assert message["content"] and not message.get("reasoning_content")
    assert [body.get("think") for body in sent] == [True, None]
