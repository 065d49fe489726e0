"""The relay's adapters and format translation against the simulator's answer shapes.

Answers real vendors give and the simulator now gives too: Claude's sentence before the
tool calls it chooses to make, parallel tool calls, and an answer a stop sequence ended.
Each goes through the vendor's adapter (in-process, over ``httpx.ASGITransport``) and, for
an Anthropic client, through ``schemas.formats.anthropic`` back into a Message, whole and
streamed, and is checked against what the vendor itself said.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from agents.adapters import (
    AnthropicAdapter,
    OllamaAdapter,
    OpenAIAdapter,
    VendorCall,
    VendorResult,
)
from schemas.config import VendorConfig
from schemas.formats.anthropic import (
    ChunksToMessageEvents,
    messages_request_to_openai,
    openai_response_to_messages,
)
from schemas.formats.openai import assemble_chunks
from schemas.usage import Usage

AV = {"anthropic-version": "2023-06-01"}
CLAUDE, GPT, LLAMA = "claude-sonnet-4-5", "gpt-4o-mini", "llama3.2"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zone": {"enum": ["utc", "local"]}},
            "required": ["city", "zone"],
        },
    },
}
TWO_CALLS = "call get_weather and get_time for Paris"


def anthropic_tool(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool["function"]
    return {"name": fn["name"], "description": fn["description"], "input_schema": fn["parameters"]}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def adapter(kind: str, sim: httpx.AsyncClient) -> Any:
    if kind == "anthropic":
        return AnthropicAdapter(VendorConfig(kind="anthropic", base_url="http://sim"), sim)
    if kind == "ollama":
        return OllamaAdapter(VendorConfig(kind="ollama", base_url="http://sim"), sim)
    return OpenAIAdapter(VendorConfig(kind="openai", base_url="http://sim/v1"), sim)


async def whole_and_streamed(vendor: Any, call: VendorCall) -> list[tuple[dict[str, Any], Usage]]:
    """The adapter's answer to ``call``, whole, then streamed and assembled."""
    whole: VendorResult = await vendor.chat(call)
    items = [item async for item in vendor.stream(call)]
    *chunks, usage = items
    assert isinstance(usage, Usage) and all(isinstance(c, dict) for c in chunks)
    return [(whole.body, whole.usage), (assemble_chunks(chunks), usage)]


def as_events_message(chunks: list[Any], usage: Usage, model: str) -> dict[str, Any]:
    """Chunks as an Anthropic client hears them (``ChunksToMessageEvents``), the events
    folded back into the Message they describe."""
    convert = ChunksToMessageEvents(model, "msg_test")
    events = [e for c in chunks for e in convert.feed(c)] + convert.finish(usage)
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop"
    message: dict[str, Any] = {}
    partial: dict[int, str] = {}
    for name, data in events:
        if name == "message_start":
            message = {**data["message"], "content": []}
        elif name == "content_block_start":
            assert data["index"] == len(message["content"]), "blocks open in order"
            message["content"].append(dict(data["content_block"]))
        elif name == "content_block_delta":
            block, delta = message["content"][data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                partial[data["index"]] = partial.get(data["index"], "") + delta["partial_json"]
        elif name == "content_block_stop" and data["index"] in partial:
            message["content"][data["index"]]["input"] = json.loads(partial[data["index"]])
        elif name == "message_delta":
            message |= data["delta"]
    return message


async def anthropic_client_answers(
    vendor: Any, body: dict[str, Any], model: str
) -> list[dict[str, Any]]:
    """What an Anthropic client gets for Messages request ``body`` served by ``vendor``:
    the whole Message, then the streamed one."""
    neutral = messages_request_to_openai(body)
    call = VendorCall(model=model, body=neutral, api_key="x")
    whole = await vendor.chat(call)
    *chunks, usage = [item async for item in vendor.stream(call)]
    return [
        openai_response_to_messages(whole.body, whole.usage, body["model"]),
        as_events_message(chunks, usage, body["model"]),
    ]


def calls_of(body: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    message = body["choices"][0]["message"]
    return [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in message.get("tool_calls") or []
    ]


def blocks_of(message: dict[str, Any], *, ids: bool = True) -> list[tuple[str, Any]]:
    """Each block's type and text (thinking: and signature), or its call (id, name, input;
    without the id if not ``ids``)."""
    out: list[tuple[str, Any]] = []
    for b in message["content"]:
        if b["type"] == "text":
            out.append((b["type"], b["text"]))
        elif b["type"] == "thinking":
            out.append((b["type"], (b["thinking"], b["signature"])))
        else:
            call = (b["id"], b["name"], b["input"]) if ids else (b["name"], b["input"])
            out.append((b["type"], call))
    return out


# ---- an OpenAI client, an Anthropic vendor ---------------------------------------------------


async def test_claudes_sentence_before_a_tool_call_reaches_an_openai_client(
    sim: httpx.AsyncClient,
) -> None:
    """Claude writes a text block, then the tool_use block (at index 1): the OpenAI answer
    carries both, the text as content and the call as tool_calls[0], whole and streamed."""
    direct = await sim.post(
        "/v1/messages",
        headers=AV,
        json={
            "model": CLAUDE,
            "max_tokens": 200,
            "messages": user("what is the weather in Paris?"),
            "tools": [anthropic_tool(WEATHER)],
        },
    )
    said, block = direct.json()["content"]
    assert (said["type"], block["type"]) == ("text", "tool_use")
    body = {"model": "alias", "messages": user("what is the weather in Paris?"), "tools": [WEATHER]}
    call = VendorCall(model=CLAUDE, body=body, api_key="x")
    for answer, usage in await whole_and_streamed(adapter("anthropic", sim), call):
        choice = answer["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] == said["text"]
        assert calls_of(answer) == [(block["id"], block["name"], block["input"])]
        want = direct.json()["usage"]
        assert (usage.input_tokens, usage.output_tokens) == (
            want["input_tokens"],
            want["output_tokens"],
        )


async def test_parallel_tool_calls_from_claude_reach_an_openai_client(
    sim: httpx.AsyncClient,
) -> None:
    """Two tool_use blocks after Claude's sentence (blocks 1 and 2) are tool_calls 0 and 1,
    ids and arguments intact, whole and streamed."""
    direct = await sim.post(
        "/v1/messages",
        headers=AV,
        json={
            "model": CLAUDE,
            "max_tokens": 200,
            "messages": user(TWO_CALLS),
            "tools": [anthropic_tool(WEATHER), anthropic_tool(CLOCK)],
        },
    )
    blocks = direct.json()["content"]
    assert [b["type"] for b in blocks] == ["text", "tool_use", "tool_use"]
    want = [(b["id"], b["name"], b["input"]) for b in blocks[1:]]
    body = {"model": "alias", "messages": user(TWO_CALLS), "tools": [WEATHER, CLOCK]}
    call = VendorCall(model=CLAUDE, body=body, api_key="x")
    for answer, _ in await whole_and_streamed(adapter("anthropic", sim), call):
        assert answer["choices"][0]["finish_reason"] == "tool_calls"
        assert answer["choices"][0]["message"]["content"] == blocks[0]["text"]
        assert calls_of(answer) == want


async def test_one_call_at_a_time_reaches_claude(sim: httpx.AsyncClient) -> None:
    """``parallel_tool_calls: false`` is Anthropic's ``disable_parallel_tool_use``: the
    prompt that gets two calls gets one."""
    body = {
        "messages": user(TWO_CALLS),
        "tools": [WEATHER, CLOCK],
        "parallel_tool_calls": False,
    }
    call = VendorCall(model=CLAUDE, body=body, api_key="x")
    for answer, _ in await whole_and_streamed(adapter("anthropic", sim), call):
        assert [name for _, name, _ in calls_of(answer)] == ["get_weather"]


async def test_claude_counts_the_tokens_a_tool_call_is_billed_for(sim: httpx.AsyncClient) -> None:
    """The adapter's ``count_tokens`` sends what ``chat`` sends that counts (the tools,
    their choice): its count is the input the call is billed, tools included."""
    vendor = adapter("anthropic", sim)
    for tools, choice in (([WEATHER, CLOCK], "auto"), ([WEATHER], "required"), ([], None)):
        body: dict[str, Any] = {"messages": user("what is the weather in Paris?")}
        if tools:
            body |= {"tools": tools, "tool_choice": choice}
        call = VendorCall(model=CLAUDE, body=body, api_key="x")
        counted, answer = await vendor.count_tokens(call), await vendor.chat(call)
        assert counted == answer.usage.input_tokens
        if not tools:
            assert counted < 20, "tools cost far more than the question"


@pytest.mark.parametrize(
    "extra",
    [
        {"reasoning_effort": "low", "temperature": 0.3, "top_k": 5},
        {"reasoning_effort": "low", "tools": [WEATHER], "tool_choice": "required"},
        {"reasoning_effort": "low", "response_format": {"type": "json_object"}},
        {"thinking": {"type": "enabled", "budget_tokens": 1024}, "tools": [WEATHER]}
        | {"response_format": {"type": "json_object"}},
    ],
    ids=["sampling", "forced-tool", "json-mode", "json-mode-beside-thinking"],
)
async def test_what_claude_refuses_beside_thinking_is_never_sent(
    sim: httpx.AsyncClient, extra: dict[str, Any]
) -> None:
    """Anthropic refuses sampling knobs, and a forced tool choice, beside thinking: the
    relay leaves them off when it turned thinking on for ``reasoning_effort``, and offers
    the JSON answer tool beside the client's own thinking rather than forcing it."""
    body = {"messages": user("what is the weather in Paris?"), "max_tokens": 4096, **extra}
    call = VendorCall(model=CLAUDE, body=body, api_key="x")
    for answer, usage in await whole_and_streamed(adapter("anthropic", sim), call):
        assert answer["choices"][0]["finish_reason"] in ("stop", "tool_calls")
        assert usage.output_tokens <= 4096


async def test_a_stop_sequence_from_claude_is_finish_stop_for_an_openai_client(
    sim: httpx.AsyncClient,
) -> None:
    """Claude's ``stop_reason: stop_sequence`` is OpenAI's ``finish_reason: stop``, the
    text cut where Claude cut it; the sequence rides along for an Anthropic client."""
    plain = await adapter("anthropic", sim).chat(
        VendorCall(model=CLAUDE, body={"messages": user("tell me a story")}, api_key="x")
    )
    text = plain.body["choices"][0]["message"]["content"]
    sequence = text.split()[3].rstrip(".")
    body = {"messages": user("tell me a story"), "stop": [sequence]}
    call = VendorCall(model=CLAUDE, body=body, api_key="x")
    for answer, usage in await whole_and_streamed(adapter("anthropic", sim), call):
        choice = answer["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert choice["message"]["content"] == text[: text.index(sequence)]
        assert choice.get("stop_sequence") == sequence
        assert 0 < usage.output_tokens < plain.usage.output_tokens


# ---- an Anthropic client, either vendor ------------------------------------------------------


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_parallel_tool_calls_reach_an_anthropic_client_from_either_vendor(
    sim: httpx.AsyncClient, kind: str
) -> None:
    """Two calls come back as two tool_use blocks, in order, with the vendor's ids and
    arguments, whole and streamed; Claude's sentence stays the first block."""
    model = CLAUDE if kind == "anthropic" else GPT
    body = {
        "model": "alias",
        "max_tokens": 300,
        "messages": user(TWO_CALLS),
        "tools": [anthropic_tool(WEATHER), anthropic_tool(CLOCK)],
    }
    # OpenAI's call ids ("call_...") are not Anthropic's: the relay gives its own.
    ids = kind == "anthropic"
    if kind == "anthropic":
        direct = (await sim.post("/v1/messages", headers=AV, json={**body, "model": model})).json()
        want = blocks_of(direct)
        assert [t for t, _ in want] == ["text", "tool_use", "tool_use"]
    else:
        neutral = {"model": model, "messages": user(TWO_CALLS), "tools": [WEATHER, CLOCK]}
        direct = (await sim.post("/v1/chat/completions", json=neutral)).json()
        want = [("tool_use", (name, args)) for _, name, args in calls_of(direct)]
        assert len(want) == 2
    for message in await anthropic_client_answers(adapter(kind, sim), body, model):
        assert message["stop_reason"] == "tool_use"
        assert blocks_of(message, ids=ids) == want


async def test_thinking_then_parallel_calls_reach_an_anthropic_client_in_order(
    sim: httpx.AsyncClient,
) -> None:
    """With thinking on Claude calls straight after its (signed) thinking: the client gets
    the thinking block and both calls, in order, whole and streamed."""
    body = {
        "model": "alias",
        "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": user(TWO_CALLS),
        "tools": [anthropic_tool(WEATHER), anthropic_tool(CLOCK)],
    }
    direct = (await sim.post("/v1/messages", headers=AV, json={**body, "model": CLAUDE})).json()
    want = blocks_of(direct)
    assert [t for t, _ in want] == ["thinking", "tool_use", "tool_use"]
    for message in await anthropic_client_answers(adapter("anthropic", sim), body, CLAUDE):
        assert message["stop_reason"] == "tool_use" and blocks_of(message) == want


async def test_a_stop_sequence_reaches_an_anthropic_client_from_claude_as_itself(
    sim: httpx.AsyncClient,
) -> None:
    """``stop_sequences`` through the relay's neutral body to Claude and back: the client
    hears ``stop_reason: stop_sequence`` and which sequence, whole and streamed."""
    ask = {"model": CLAUDE, "max_tokens": 300, "messages": user("tell me a story")}
    plain = (await sim.post("/v1/messages", headers=AV, json=ask)).json()
    text = plain["content"][0]["text"]
    sequence = text.split()[2].rstrip(".")
    body = {**ask, "model": "alias", "stop_sequences": ["never-said", sequence]}
    direct = (await sim.post("/v1/messages", headers=AV, json={**body, "model": CLAUDE})).json()
    assert (direct["stop_reason"], direct["stop_sequence"]) == ("stop_sequence", sequence)
    for message in await anthropic_client_answers(adapter("anthropic", sim), body, CLAUDE):
        assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", sequence)
        assert blocks_of(message) == [("text", text[: text.index(sequence)])]


async def test_a_stop_sequence_served_by_openai_ends_the_text_there(
    sim: httpx.AsyncClient,
) -> None:
    """An OpenAI vendor stops at the client's sequence too; it says only "stop", not
    which sequence, so the client hears ``end_turn``."""
    plain = await sim.post("/v1/chat/completions", json={"model": GPT, "messages": user("hi")})
    text = plain.json()["choices"][0]["message"]["content"]
    sequence = text.split()[3].rstrip(".")
    body = {
        "model": "alias",
        "max_tokens": 300,
        "messages": user("hi"),
        "stop_sequences": [sequence],
    }
    for message in await anthropic_client_answers(adapter("openai", sim), body, GPT):
        assert blocks_of(message) == [("text", text[: text.index(sequence)])]
        assert (message["stop_reason"], message["stop_sequence"]) == ("end_turn", None)


# ---- OpenAI clients of OpenAI-format and Ollama vendors --------------------------------------


@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_parallel_calls_and_stops_from_openai_and_ollama_vendors(
    sim: httpx.AsyncClient, kind: str
) -> None:
    """Parallel calls keep their order and arguments (Ollama's carry the simulator's own ids, as Ollama 0.12 sends them); a
    stop sequence ends the text there with finish "stop"."""
    model = GPT if kind == "openai" else LLAMA
    vendor = adapter(kind, sim)
    body = {"messages": user(TWO_CALLS), "tools": [WEATHER, CLOCK]}
    for answer, _ in await whole_and_streamed(vendor, VendorCall(model, body, "x")):
        assert answer["choices"][0]["finish_reason"] == "tool_calls"
        assert [(name, args) for _, name, args in calls_of(answer)] == [
            ("get_weather", {"city": "Paris"}),
            ("get_time", {"city": "Paris", "zone": "utc"}),
        ]
        ids = [call_id for call_id, _, _ in calls_of(answer)]
        assert all(ids) and len(set(ids)) == 2
    plain = await vendor.chat(VendorCall(model, {"messages": user("hi")}, "x"))
    text = plain.body["choices"][0]["message"]["content"]
    sequence = text.split()[3].rstrip(".")
    stopped = VendorCall(model, {"messages": user("hi"), "stop": sequence}, "x")
    for answer, _ in await whole_and_streamed(vendor, stopped):
        assert answer["choices"][0]["finish_reason"] == "stop"
        assert answer["choices"][0]["message"]["content"] == text[: text.index(sequence)]
