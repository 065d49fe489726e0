"""The simulator refuses the Messages requests Anthropic refuses, with its 400: a forced
tool that is not offered (or no tools at all), a field it does not know, a turn of a role
it does not take, tool turns that do not pair up.  The relay's own requests, whatever
they carry, still pass: what it translates wrongly fails here as it would at Anthropic."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agents.adapters import AnthropicAdapter, VendorCall
from schemas.config import VendorConfig

AV = {"anthropic-version": "2023-06-01"}
WEATHER = {"name": "get_weather", "input_schema": {"type": "object"}}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def ask(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": user("hi"), **extra}


async def refused(sim: httpx.AsyncClient, body: dict[str, Any]) -> str:
    r = await sim.post("/v1/messages", headers=AV, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    message: str = error["message"]
    return message


async def test_a_forced_tool_that_is_not_offered_is_refused(sim: httpx.AsyncClient) -> None:
    """Not a call of some other tool: a translation that garbled the name must fail."""
    forced = {"type": "tool", "name": "lookup_stock"}
    said = await refused(sim, ask(tools=[WEATHER], tool_choice=forced))
    assert said.startswith("tool_choice") and "lookup_stock" in said
    said = await refused(sim, ask(tools=[WEATHER], tool_choice={"type": "tool"}))
    assert said == "tool_choice.tool.name: Field required"
    said = await refused(sim, ask(tools=[WEATHER], tool_choice={"type": "required"}))
    assert said.startswith("tool_choice") and "'auto', 'any', 'tool', 'none'" in said
    r = await sim.post(
        "/v1/messages",
        headers=AV,
        json=ask(tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"}),
    )
    assert r.status_code == 200 and r.json()["content"][0]["name"] == "get_weather"
    assert (await sim.get("/stats")).json()["total"] == 1, "only the answered call counts"


@pytest.mark.parametrize("kind", ["any", "tool"])
async def test_forcing_a_tool_with_no_tools_is_refused(sim: httpx.AsyncClient, kind: str) -> None:
    choice = {"type": kind, "name": "get_weather"} if kind == "tool" else {"type": kind}
    said = await refused(sim, ask(tool_choice=choice))
    assert said.startswith("tool_choice") and "providing tools" in said
    # Leaving the call to the model, or ruling calls out, needs no tools.
    for choice in ({"type": "auto"}, {"type": "none"}):
        r = await sim.post("/v1/messages", headers=AV, json=ask(tool_choice=choice))
        assert r.status_code == 200


async def test_count_tokens_checks_the_tool_choice_too(sim: httpx.AsyncClient) -> None:
    body = {"model": "c", "messages": user("hi"), "tool_choice": {"type": "any"}}
    r = await sim.post("/v1/messages/count_tokens", headers=AV, json=body)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("tool_choice")


@pytest.mark.parametrize("field", ["reasoning_effort", "n", "max_completion_tokens", "stop"])
async def test_a_field_messages_does_not_know_is_refused(
    sim: httpx.AsyncClient, field: str
) -> None:
    said = await refused(sim, ask(**{field: 1}))
    assert said == f"{field}: Extra inputs are not permitted"


async def test_every_documented_field_is_taken(sim: httpx.AsyncClient) -> None:
    """Generous on purpose: what Anthropic documents (betas included) is no extra input."""
    body = ask(
        system="Be brief.",
        metadata={"user_id": "u"},
        stop_sequences=["zzz"],
        stream=False,
        temperature=0.5,
        top_k=5,
        tools=[WEATHER],
        tool_choice={"type": "auto"},
        service_tier="auto",
        container=None,
        mcp_servers=[],
        context_management={"edits": []},
        output_config={"effort": "low"},
        cache_control={"type": "ephemeral"},
        inference_geo="us",
    )
    r = await sim.post("/v1/messages", headers=AV, json=body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("role", ["system", "tool", "developer", None])
async def test_a_turn_of_a_role_anthropic_does_not_take_is_refused(
    sim: httpx.AsyncClient, role: str | None
) -> None:
    turns = [*user("hi"), {"role": role, "content": "be brief"}, *user("again")]
    said = await refused(sim, ask(messages=turns))
    assert said == "messages.1.role: Input should be 'user' or 'assistant'"


def _call(call_id: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": "get_weather", "input": {}}


def _result(call_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "content": "18C"}


async def test_tool_turns_must_pair_up(sim: httpx.AsyncClient) -> None:
    asked = user("what is the weather in Paris?")
    unanswered = [*asked, {"role": "assistant", "content": [_call("toolu_1")]}, *user("well?")]
    said = await refused(sim, ask(tools=[WEATHER], messages=unanswered))
    assert said.startswith("messages.1: `tool_use` ids were found without `tool_result`")
    assert "toolu_1" in said
    stray = [
        *asked,
        {"role": "assistant", "content": [_call("toolu_1")]},
        {"role": "user", "content": [_result("toolu_1"), _result("toolu_2")]},
    ]
    said = await refused(sim, ask(tools=[WEATHER], messages=stray))
    assert said.startswith("messages.2.content.1: unexpected `tool_use_id`")
    odd = [
        *asked,
        {"role": "assistant", "content": [_call("call.1")]},
        {"role": "user", "content": [_result("call.1")]},
    ]
    said = await refused(sim, ask(tools=[WEATHER], messages=odd))
    assert said.startswith("messages.1.content.0.tool_use.id: String should match pattern")
    paired = [*stray[:2], {"role": "user", "content": [_result("toolu_1")]}]
    r = await sim.post("/v1/messages", headers=AV, json=ask(tools=[WEATHER], messages=paired))
    assert r.status_code == 200 and r.json()["content"][0]["text"] == "Tool said: 18C"
    # A prefilled call that ends the conversation is not answered yet: no refusal.
    prefill = [*asked, {"role": "assistant", "content": [_call("toolu_1")]}]
    r = await sim.post("/v1/messages", headers=AV, json=ask(tools=[WEATHER], messages=prefill))
    assert r.status_code == 200


async def test_a_batch_request_anthropic_would_refuse_errors_alone(sim: httpx.AsyncClient) -> None:
    requests = [
        {"custom_id": "ok", "params": ask()},
        {"custom_id": "extra", "params": ask(n=2)},
        {"custom_id": "forced", "params": ask(tool_choice={"type": "any"})},
    ]
    await sim.post("/sim/config", json={"batch_complete_after_s": 0})
    made = await sim.post("/v1/messages/batches", headers=AV, json={"requests": requests})
    url = f"/v1/messages/batches/{made.json()['id']}"
    counts = (await sim.get(url, headers=AV)).json()["request_counts"]
    assert (counts["succeeded"], counts["errored"]) == (1, 2)


OPENAI_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.mark.parametrize(
    "extra",
    [
        {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        {"tool_choice": "required", "parallel_tool_calls": False},
        {"tool_choice": "none"},
        {
            "tool_choice": {
                "type": "allowed_tools",
                "allowed_tools": {"mode": "required", "tools": [OPENAI_TOOL]},
            }
        },
        {"response_format": {"type": "json_object"}},
        {"temperature": 0.3, "top_k": 4, "stop": ["zzz"], "user": "u1", "max_tokens": 50},
        {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048},
        {"reasoning_effort": "low"},
    ],
)
async def test_the_relay_s_translated_requests_pass(
    sim: httpx.AsyncClient, extra: dict[str, Any]
) -> None:
    """What the relay's Anthropic adapter sends for an OpenAI body (tool choices, JSON
    mode's answer tool, sampling knobs, thinking, the end user) is a request Anthropic
    takes, a conversation with a tool turn included."""
    adapter = AnthropicAdapter(VendorConfig(kind="anthropic", base_url="http://sim"), sim)
    first = {"messages": user("weather in Paris?"), "tools": [OPENAI_TOOL], **extra}
    answer = await adapter.chat(VendorCall("claude-haiku-4-5", first, "x"))
    message = answer.body["choices"][0]["message"]
    forced = extra.get("tool_choice") not in (None, "none")
    assert bool(message.get("tool_calls")) or not forced, "a forced tool is called"
    for call in message.get("tool_calls") or []:
        reply = {"role": "tool", "tool_call_id": call["id"], "content": "18C"}
        body = {**first, "messages": [*first["messages"], message, reply]}
        if isinstance(body.get("tool_choice"), dict) or body.get("tool_choice") == "required":
            body["tool_choice"] = "auto"
        again = await adapter.chat(VendorCall("claude-haiku-4-5", body, "x"))
        assert again.body["choices"][0]["message"]["content"]
