"""Tool calls as vendors give them: Claude's sentence before the calls it chooses to make,
parallel calls when a prompt asks for several tools, and the tools' cost in input tokens."""

from __future__ import annotations

import json
import math
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

AV = {"anthropic-version": "2023-06-01"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
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
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["utc", "local"]}}},
    },
}
TOOLS = [WEATHER, CLOCK]
CLAUDE_TOOLS = [
    {"name": t["function"]["name"], "input_schema": t["function"]["parameters"]} for t in TOOLS
]
BOTH = "call get_weather and get_time for Paris"


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _http(app: Any) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://sim")


@pytest.fixture
def oai(app: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://sim/v1", api_key="x", http_client=_http(app))


@pytest.fixture
def claude(app: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url="http://sim", api_key="x", http_client=_http(app))


@pytest.mark.parametrize("prompt", [BOTH, "use both tools for Paris"])
async def test_openai_calls_the_tools_a_prompt_asks_for_in_parallel(
    oai: openai.AsyncOpenAI, prompt: str
) -> None:
    whole = await oai.chat.completions.create(model="m", messages=user(prompt), tools=TOOLS)  # type: ignore[arg-type]
    calls = whole.choices[0].message.tool_calls or []
    assert whole.choices[0].finish_reason == "tool_calls"
    assert whole.choices[0].message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "utc"}),
    ]
    assert len({c.id for c in calls}) == 2
    stream = await oai.chat.completions.create(
        model="m",
        messages=user(prompt),
        tools=TOOLS,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    got: dict[int, dict[str, str]] = {}
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            for frag in choice.delta.tool_calls or []:
                call = got.setdefault(frag.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += frag.id or ""
                call["name"] += (frag.function and frag.function.name) or ""
                call["arguments"] += (frag.function and frag.function.arguments) or ""
    assert list(got) == [0, 1]
    assert [(g["id"], g["name"], g["arguments"]) for g in got.values()] == [
        (c.id, c.function.name, c.function.arguments)  # type: ignore[union-attr]
        for c in calls
    ]
    assert usage == whole.usage
    one = await oai.chat.completions.create(
        model="m",
        messages=user(prompt),
        tools=TOOLS,  # type: ignore[arg-type]
        parallel_tool_calls=False,
    )
    assert [c.function.name for c in one.choices[0].message.tool_calls or []] == ["get_weather"]  # type: ignore[union-attr]


async def test_claude_writes_a_sentence_then_its_parallel_calls(
    claude: anthropic.AsyncAnthropic,
) -> None:
    ask: Any = {"model": "c", "max_tokens": 200, "messages": user(BOTH), "tools": CLAUDE_TOOLS}
    msg = await claude.messages.create(**ask)
    assert msg.stop_reason == "tool_use"
    assert [b.type for b in msg.content] == ["text", "tool_use", "tool_use"]
    assert msg.content[0].text == "Let me check that."  # type: ignore[union-attr]
    assert [(b.name, b.input) for b in msg.content[1:]] == [  # type: ignore[union-attr]
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "utc"}),
    ]
    async with claude.messages.stream(**ask) as stream:
        final = await stream.get_final_message()
    assert final.model_dump(exclude={"id"}) == msg.model_dump(exclude={"id"})
    one = await claude.messages.create(
        **ask, tool_choice={"type": "auto", "disable_parallel_tool_use": True}
    )
    assert [b.type for b in one.content] == ["text", "tool_use"]
    forced = await claude.messages.create(**ask, tool_choice={"type": "any"})
    assert [b.type for b in forced.content] == ["tool_use", "tool_use"], "no sentence when forced"
    told = await claude.messages.create(**{**ask, "messages": user("use both tools for Paris")})
    assert [b.type for b in told.content] == ["tool_use", "tool_use"], "nor when told to use them"


async def test_ollama_calls_the_tools_a_prompt_asks_for(sim: httpx.AsyncClient) -> None:
    body = {"model": "llama3.2", "messages": user(BOTH), "tools": TOOLS, "stream": False}
    whole = (await sim.post("/api/chat", json=body)).json()
    calls = [c["function"]["name"] for c in whole["message"]["tool_calls"]]
    assert calls == ["get_weather", "get_time"]


async def test_the_tools_count_towards_the_input_tokens(
    sim: httpx.AsyncClient, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    """OpenAI (and Ollama) count the tool definitions; Anthropic those and the tool-use
    system prompt it adds (346 tokens, 313 when the choice forces a call), in Messages and
    in count_tokens alike."""
    bare = await oai.chat.completions.create(model="m", messages=user("hi"))
    tooled = await oai.chat.completions.create(model="m", messages=user("hi"), tools=TOOLS)  # type: ignore[arg-type]
    schema = math.ceil(len(json.dumps(TOOLS, separators=(",", ":"))) / 4)
    assert tooled.usage.prompt_tokens == bare.usage.prompt_tokens + schema  # type: ignore[union-attr]
    native = {"model": "llama3.2", "messages": user("hi"), "stream": False}
    plain = (await sim.post("/api/chat", json=native)).json()["prompt_eval_count"]
    with_tools = (await sim.post("/api/chat", json={**native, "tools": TOOLS})).json()
    assert with_tools["prompt_eval_count"] == plain + schema

    ask: Any = {"model": "c", "messages": user("hi")}
    tools = math.ceil(len(json.dumps(CLAUDE_TOOLS, separators=(",", ":"))) / 4)
    for extra, system in (
        ({}, None),
        ({"tools": CLAUDE_TOOLS}, 346),
        ({"tools": CLAUDE_TOOLS, "tool_choice": {"type": "none"}}, 346),
        ({"tools": CLAUDE_TOOLS, "tool_choice": {"type": "any"}}, 313),
    ):
        msg = await claude.messages.create(max_tokens=50, **ask, **extra)
        counted = await claude.messages.count_tokens(**ask, **extra)
        assert counted.input_tokens == msg.usage.input_tokens
        base = math.ceil(len("hi") / 4) + 3
        assert msg.usage.input_tokens == base + (0 if system is None else tools + system)
