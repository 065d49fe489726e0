"""Ollama answers only for the models it has pulled, and refuses what a model cannot do
with the 400 the relay reads as "try the next candidate"."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from agents.adapters import OllamaAdapter, VendorCall
from schemas.config import VendorConfig
from schemas.errors import VendorNotFound, VendorUnavailable, VendorUnsupported
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


# ---- the simulator as close to Ollama as the relay's tests need ------------------------


async def test_a_model_that_can_think_thinks_unasked(sim: httpx.AsyncClient) -> None:
    """Ollama turns thinking on when ``think`` is not sent, for a model that can think: an
    Anthropic client without thinking, given a small max_tokens, gets the budget spent on
    thinking and an empty answer cut at its length.  llama3.2 (which cannot think at
    Ollama, and thinks here only to show reasoning_effort) and a config's own model
    names think only when asked."""
    for model in ("qwen3", "gpt-oss:20b"):
        body = {"model": model, "messages": user("why?"), "stream": False}
        assert (await sim.post("/api/chat", json=body)).json()["message"]["thinking"]
        off = (await sim.post("/api/chat", json={**body, "think": False})).json()
        assert "thinking" not in off["message"]
    for model in ("llama3.2", "my-local-model"):
        body = {"model": model, "messages": user("why?"), "stream": False}
        assert "thinking" not in (await sim.post("/api/chat", json=body)).json()["message"]

    adapter = OllamaAdapter(VendorConfig(kind="ollama", base_url="http://sim"), sim)
    asked = {"model": "claude", "max_tokens": 5, "messages": user("why is the sky blue?")}
    call = VendorCall("qwen3", messages_request_to_openai(asked), "")
    choice = (await adapter.chat(call)).body["choices"][0]
    assert choice["message"]["reasoning_content"] and not choice["message"]["content"]
    assert choice["finish_reason"] == "length"


async def test_string_tool_arguments_and_a_string_stop_are_refused_as_ollama_refuses_them(
    sim: httpx.AsyncClient,
) -> None:
    """Ollama binds a tool call's arguments to an object (a string fails the request's
    binding, a 400) and reads ``options.stop`` as an array (a string fails as the model
    is scheduled, which handleScheduleError answers with a 500); the adapter sends
    neither, so its requests are answered."""
    history = [
        *user("weather in Oslo?"),
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
        },
        {"role": "tool", "content": "12C"},
    ]
    body = {"model": "llama3.2", "messages": history, "tools": [TOOL], "stream": False}
    r = await sim.post("/api/chat", json=body)
    assert r.status_code == 400 and "cannot unmarshal string" in r.json()["error"]
    plain = {"model": "llama3.2", "messages": user("hi"), "stream": False}
    r = await sim.post("/api/chat", json={**plain, "options": {"stop": "END"}})
    assert (r.status_code, r.json()) == (500, {"error": 'option "stop" must be of type array'})
    r = await sim.post("/api/chat", json={**plain, "options": {"stop": [5]}})
    assert r.status_code == 500 and "array of strings" in r.json()["error"]

    adapter = OllamaAdapter(VendorConfig(kind="ollama", base_url="http://sim"), sim)
    openai_history = [
        history[0],
        {
            **history[1],
            "tool_calls": [{"id": "call_1", "type": "function", **history[1]["tool_calls"][0]}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
    ]
    asked = {"messages": openai_history, "tools": [TOOL], "stop": "END"}
    answer = await adapter.chat(VendorCall("llama3.2", asked, ""))
    assert answer.body["choices"][0]["message"]["content"]


async def test_tool_calls_carry_ollama_s_ids_which_reach_the_client(
    sim: httpx.AsyncClient,
) -> None:
    body = {"model": "llama3.2", "messages": user("the weather?"), "tools": [TOOL]}
    whole = (await sim.post("/api/chat", json={**body, "stream": False})).json()
    [said] = whole["message"]["tool_calls"]
    assert re.fullmatch(r"call_[0-9a-z]{8}", said["id"])
    adapter = OllamaAdapter(VendorConfig(kind="ollama", base_url="http://sim"), sim)
    call = VendorCall("llama3.2", {"messages": body["messages"], "tools": [TOOL]}, "")
    [got] = (await adapter.chat(call)).body["choices"][0]["message"]["tool_calls"]
    *chunks, _ = [item async for item in adapter.stream(call)]
    [streamed] = assemble_chunks(chunks)["choices"][0]["message"]["tool_calls"]
    assert got["id"] == streamed["id"] == said["id"]


async def test_a_runner_that_dies_mid_stream_ends_it_with_an_error_line() -> None:
    """``x-sim-fail: midstream``: one line of the answer, then Ollama's ``{"error"}``
    line; the relay passes on what was said and fails the stream as the vendor's
    refusal (unbilled).  Not streamed, the same failure is a 500."""
    app = create_app(SimConfig())
    sim = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://sim",
        headers={"x-sim-fail": "midstream"},
    )
    body = {"model": "llama3.2", "messages": user("hello")}
    lines = [json.loads(x) for x in (await sim.post("/api/chat", json=body)).text.splitlines()]
    assert lines[0]["message"]["content"] and lines[0]["done"] is False
    assert lines[1:] == [{"error": "llama runner process has terminated: exit status 2"}]
    adapter = OllamaAdapter(VendorConfig(kind="ollama", base_url="http://sim"), sim)
    call = VendorCall("llama3.2", {"messages": body["messages"]}, "")
    got: list[Any] = []
    with pytest.raises(VendorUnavailable, match="runner process has terminated") as err:
        async for item in adapter.stream(call):
            got.append(item)
    assert err.value.refused and got[1]["choices"][0]["delta"]["content"]
    with pytest.raises(VendorUnavailable, match="runner process has terminated"):
        await adapter.chat(call)
    assert (await sim.get("/stats")).json()["faults"] == {"llama3.2": 3}
