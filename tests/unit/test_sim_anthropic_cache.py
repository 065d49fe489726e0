"""Anthropic's prompt cache in the simulator, in its order (tools, then system, then
messages): a tool's ``cache_control`` is a breakpoint, the tools are part of every later
key, and the longest cached prefix is read while the rest up to the last breakpoint is
written.  A stream's ``message_delta`` says the input side of the usage again, as the API
does, and the relay's adapter reads the same usage from a stream as from a whole answer."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx

from agents.adapters import AnthropicAdapter, VendorCall
from schemas.config import VendorConfig
from schemas.usage import Usage

AV = {"anthropic-version": "2023-06-01"}
EPHEMERAL = {"type": "ephemeral"}
BIG = {
    "type": "object",
    "properties": {f"p{i}": {"type": "string", "description": "x" * 40} for i in range(60)},
}
DOC = "A long reference document for the cache. " * 40
TOOL_SYSTEM = 346  # Anthropic's tool-use system prompt, the model left to choose


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def tools_tokens(tools: list[dict[str, Any]]) -> int:
    return math.ceil(len(json.dumps(tools, separators=(",", ":"))) / 4) + TOOL_SYSTEM


async def usage(sim: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    asked = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": user("hi"), **body}
    r = await sim.post("/v1/messages", headers=AV, json=asked)
    assert r.status_code == 200, r.text
    got: dict[str, Any] = r.json()["usage"]
    return got


def written_read(u: dict[str, Any]) -> tuple[int, int]:
    return u["cache_creation_input_tokens"], u["cache_read_input_tokens"]


async def test_a_breakpoint_on_a_tool_caches_the_tools(sim: httpx.AsyncClient) -> None:
    tools = [{"name": "w", "input_schema": BIG, "cache_control": EPHEMERAL}]
    cached = tools_tokens(tools)
    first, second = await usage(sim, tools=tools), await usage(sim, tools=tools)
    assert written_read(first) == (cached, 0)
    assert first["cache_creation"] == {
        "ephemeral_5m_input_tokens": cached,
        "ephemeral_1h_input_tokens": 0,
    }
    assert written_read(second) == (0, cached)
    assert first["input_tokens"] == second["input_tokens"] == 1 + 3, "'hi', one message"
    # Another question after the same tools still reads them.
    third = await usage(sim, tools=tools, messages=user("something else entirely"))
    assert written_read(third) == (0, cached)


async def test_changed_tools_invalidate_the_system_prompt_cached_after_them(
    sim: httpx.AsyncClient,
) -> None:
    system = [{"type": "text", "text": DOC, "cache_control": EPHEMERAL}]
    before = [{"name": "w", "input_schema": {"type": "object"}}]
    first = await usage(sim, tools=before, system=system)
    assert written_read(first) == (tools_tokens(before) + math.ceil(len(DOC) / 4), 0)
    again = await usage(sim, tools=before, system=system)
    assert written_read(again) == (0, first["cache_creation_input_tokens"])
    after = [{"name": "other", "input_schema": {"type": "object"}}]
    changed = await usage(sim, tools=after, system=system)
    assert changed["cache_read_input_tokens"] == 0, "the tools are part of the key"
    assert changed["cache_creation_input_tokens"] == tools_tokens(after) + math.ceil(len(DOC) / 4)


async def test_the_longest_cached_prefix_is_read_and_the_rest_written(
    sim: httpx.AsyncClient,
) -> None:
    """Tools cached by their own breakpoint are read when the system prompt after them
    changed; only the new system prompt is written."""
    tools = [{"name": "w", "input_schema": BIG, "cache_control": EPHEMERAL}]
    await usage(sim, tools=tools)
    system = [{"type": "text", "text": DOC, "cache_control": EPHEMERAL}]
    both = await usage(sim, tools=tools, system=system)
    assert written_read(both) == (math.ceil(len(DOC) / 4), tools_tokens(tools))


async def test_message_delta_says_the_cumulative_usage(sim: httpx.AsyncClient) -> None:
    system = [{"type": "text", "text": DOC, "cache_control": EPHEMERAL}]
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 50,
        "system": system,
        "messages": user("hi"),
        "stream": True,
    }
    for _ in range(2):  # a write, then a read
        r = await sim.post("/v1/messages", headers=AV, json=body)
        events = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: ")]
        [start] = [e["message"]["usage"] for e in events if e["type"] == "message_start"]
        [delta] = [e["usage"] for e in events if e["type"] == "message_delta"]
        whole = (await sim.post("/v1/messages", headers=AV, json={**body, "stream": False})).json()
        assert set(delta) == {
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "output_tokens",
        }
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            assert delta[key] == start[key]
        assert delta["output_tokens"] == whole["usage"]["output_tokens"] > start["output_tokens"]
    assert delta["cache_read_input_tokens"] == math.ceil(len(DOC) / 4)


async def test_the_relay_reads_the_cache_counts_of_a_stream(sim: httpx.AsyncClient) -> None:
    """The adapter's merge of message_start and message_delta (later counts replace
    earlier ones) gives what a whole answer would: the write, then the read."""
    adapter = AnthropicAdapter(VendorConfig(kind="anthropic", base_url="http://sim"), sim)
    system = [{"type": "text", "text": DOC, "cache_control": EPHEMERAL}]
    body = {"messages": [{"role": "system", "content": system}, *user("hi")], "max_tokens": 50}
    call = VendorCall("claude-sonnet-4-5", body, "x")
    cached = math.ceil(len(DOC) / 4)
    wrote = [item async for item in adapter.stream(call)][-1]
    read = [item async for item in adapter.stream(call)][-1]
    whole = (await adapter.chat(call)).usage  # a read too, by now
    assert isinstance(wrote, Usage) and isinstance(read, Usage)
    assert (wrote.cache_write_tokens, wrote.cache_read_tokens) == (cached, 0)
    assert read == whole and (read.cache_write_tokens, read.cache_read_tokens) == (0, cached)
    assert wrote.input_tokens == read.input_tokens == whole.input_tokens
