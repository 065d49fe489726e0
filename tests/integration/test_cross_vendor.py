"""The openai SDK against the relay, answered by vendors that do not speak OpenAI natively.

Four aliases land on four dialects of the one simulator: Anthropic Messages, native Ollama
(``/api/chat``), Ollama's OpenAI-compatible ``/v1`` and Azure OpenAI (deployment URLs,
``api-key`` header).  The simulator is deterministic, so each expected answer is simply
the vendor asked directly in its own dialect.  Every request carries
``x-relay-cache: bypass`` and a fresh uuid, so each one reaches a vendor.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.integration.conftest import read_ledger
from tests.support.clients import relay_openai
from tests.support.stack import SIM_KEY, Simulator, Stack, example_config

AZURE_API_VERSION = "2024-10-21"
ANTHROPIC_MAX_TOKENS = 4096  # what the relay asks Anthropic for when the client sets none
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["location"],
        },
    },
}
CLOCK_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


@dataclass(frozen=True)
class Route:
    """A relay alias, the vendor serving it and the model (or Azure deployment) asked for."""

    alias: str
    vendor: str
    vendor_model: str
    kind: str  # anthropic, ollama, openai (Ollama's /v1) or azure


ROUTES = {
    "anthropic": Route("claude-haiku", "sim-anthropic", "claude-3-5-haiku-latest", "anthropic"),
    "ollama": Route("llama3", "sim-ollama", "llama3.2", "ollama"),
    "ollama-openai": Route("llama3-compat", "ollama-compat", "llama3.2", "openai"),
    "azure": Route("gpt-4o-azure", "sim-azure", "gpt-4o-mini-prod", "azure"),
}
ALL = pytest.mark.parametrize("route", list(ROUTES.values()), ids=list(ROUTES))


@dataclass(frozen=True)
class Expected:
    """What the vendor says to a request, in OpenAI terms."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tool_args: dict[str, Any] | None


@pytest.fixture(scope="module")
def stack(stack_factory: Any, simulator: Simulator) -> Stack:
    """The example config plus Ollama's /v1, an Azure resource and Ollama embeddings."""
    cfg = example_config(simulator.url)
    cfg["vendors"]["ollama-compat"] = {
        "kind": "openai",
        "base_url": simulator.url + "/v1",
        "api_key_env": "RELAY_SIM_KEY",
    }
    cfg["vendors"]["sim-azure"] = {
        "kind": "azure",
        "base_url": simulator.url,
        "api_key_env": "RELAY_SIM_KEY",
        "api_version": AZURE_API_VERSION,
    }
    for route in ROUTES.values():
        cfg["models"].setdefault(
            route.alias, {"candidates": [{"vendor": route.vendor, "model": route.vendor_model}]}
        )
    cfg["models"]["nomic-embed"] = {
        "kind": "embeddings",
        "candidates": [{"vendor": "sim-ollama", "model": "nomic-embed-text"}],
    }
    return stack_factory(cfg)  # type: ignore[no-any-return]


def ask(topic: str = "say something about") -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{topic} {uuid.uuid4().hex}"}]


async def vendor_answer(
    sim: Simulator,
    route: Route,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
) -> Expected:
    """The vendor's own answer to plain-text ``messages``, asked in its own dialect."""
    if route.kind == "anthropic":
        return await _anthropic_answer(sim, route, messages, tools)
    if route.kind == "ollama":
        return await _ollama_answer(sim, route, messages, tools)
    if route.kind == "azure":
        direct: openai.AsyncOpenAI = openai.AsyncAzureOpenAI(
            azure_endpoint=sim.url, api_version=AZURE_API_VERSION, api_key=SIM_KEY, max_retries=0
        )
    else:
        direct = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key=SIM_KEY, max_retries=0)
    extra = {"tools": tools} if tools else {}
    c = await direct.chat.completions.create(model=route.vendor_model, messages=messages, **extra)
    choice = c.choices[0]
    calls = choice.message.tool_calls or []
    return Expected(
        text=choice.message.content or "",
        finish_reason=choice.finish_reason,
        prompt_tokens=c.usage.prompt_tokens,
        completion_tokens=c.usage.completion_tokens,
        tool_args=json.loads(calls[0].function.arguments) if calls else None,
    )


async def _anthropic_answer(
    sim: Simulator, route: Route, messages: list[dict[str, Any]], tools: Any
) -> Expected:
    direct = anthropic.AsyncAnthropic(
        base_url=sim.url, api_key=SIM_KEY, default_headers={"x-api-key": SIM_KEY}, max_retries=0
    )
    extra: dict[str, Any] = {}
    system = [m["content"] for m in messages if m["role"] == "system"]
    if system:
        extra["system"] = "\n\n".join(system)
    if tools:
        extra["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"]["description"],
                "input_schema": t["function"]["parameters"],
            }
            for t in tools
        ]
    m = await direct.messages.create(
        model=route.vendor_model,
        max_tokens=ANTHROPIC_MAX_TOKENS,
        messages=[m for m in messages if m["role"] != "system"],  # type: ignore[misc]
        **extra,
    )
    finish = {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
    u = m.usage
    return Expected(
        text="".join(b.text for b in m.content if b.type == "text"),
        finish_reason=finish[str(m.stop_reason)],
        prompt_tokens=u.input_tokens
        + (u.cache_read_input_tokens or 0)
        + (u.cache_creation_input_tokens or 0),
        completion_tokens=u.output_tokens,
        tool_args=next((dict(b.input) for b in m.content if b.type == "tool_use"), None),
    )


async def _ollama_answer(
    sim: Simulator, route: Route, messages: list[dict[str, Any]], tools: Any
) -> Expected:
    body: dict[str, Any] = {"model": route.vendor_model, "messages": messages, "stream": False}
    if tools:
        body["tools"] = tools
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(
            f"{sim.url}/api/chat", json=body, headers={"authorization": f"Bearer {SIM_KEY}"}
        )
    r.raise_for_status()
    data = r.json()
    calls = data["message"].get("tool_calls") or []
    finish = "tool_calls" if calls else {"stop": "stop", "length": "length"}[data["done_reason"]]
    return Expected(
        text=data["message"]["content"],
        finish_reason=finish,
        prompt_tokens=data["prompt_eval_count"],
        completion_tokens=data["eval_count"],
        tool_args=calls[0]["function"]["arguments"] if calls else None,
    )


async def assert_ledger(stack: Stack, trace: str, route: Route, want: Expected) -> None:
    [event] = await read_ledger(stack, {trace})
    assert (event.alias, event.vendor, event.vendor_model) == (
        route.alias,
        route.vendor,
        route.vendor_model,
    )
    assert event.status == "ok" and not event.cache_hit
    assert event.usage.input_tokens == want.prompt_tokens
    assert event.usage.output_tokens == want.completion_tokens


# -- plain answers ------------------------------------------------------------------------


@ALL
async def test_chat_matches_the_vendor_and_the_ledger(
    stack: Stack, simulator: Simulator, route: Route
):
    trace = uuid.uuid4().hex
    messages = [{"role": "system", "content": "Be brief."}, *ask()]
    got = await relay_openai(stack, trace).chat.completions.create(
        model=route.alias, messages=messages
    )
    want = await vendor_answer(simulator, route, messages)

    assert got.object == "chat.completion" and got.model == route.alias
    choice = got.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == want.text
    assert choice.finish_reason == want.finish_reason == "stop"
    assert not choice.message.tool_calls
    assert got.usage.prompt_tokens == want.prompt_tokens
    assert got.usage.completion_tokens == want.completion_tokens
    assert got.usage.total_tokens == want.prompt_tokens + want.completion_tokens
    await assert_ledger(stack, trace, route, want)


@ALL
async def test_stream_matches_the_vendor_and_the_ledger(
    stack: Stack, simulator: Simulator, route: Route
):
    trace = uuid.uuid4().hex
    messages = ask()
    stream = await relay_openai(stack, trace).chat.completions.create(
        model=route.alias,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finishes, usage = [], [], None
    async for chunk in stream:
        assert chunk.model == route.alias
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finishes.append(choice.finish_reason)
        if chunk.usage:
            usage = chunk.usage
    want = await vendor_answer(simulator, route, messages)

    assert "".join(parts) == want.text
    assert len([p for p in parts if p]) > 2, "streamed in several chunks, not one"
    assert [f for f in finishes if f] == ["stop"] and finishes[-1] == "stop"
    assert usage is not None
    assert usage.prompt_tokens == want.prompt_tokens
    assert usage.completion_tokens == want.completion_tokens
    await assert_ledger(stack, trace, route, want)


# -- tools ------------------------------------------------------------------------------


@ALL
async def test_tool_call_round_trip(stack: Stack, simulator: Simulator, route: Route):
    question = ask("what is the weather in Paris?")
    c = relay_openai(stack)
    first = await c.chat.completions.create(
        model=route.alias, messages=question, tools=[WEATHER_TOOL]
    )
    want = await vendor_answer(simulator, route, question, tools=[WEATHER_TOOL])

    choice = first.choices[0]
    assert choice.finish_reason == want.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments, str), "arguments are a JSON string"
    assert json.loads(call.function.arguments) == want.tool_args == {"location": "Paris"}
    assert first.usage.completion_tokens == want.completion_tokens

    answer = await c.chat.completions.create(
        model=route.alias,
        tools=[WEATHER_TOOL],
        messages=[
            *question,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": call.function.arguments,
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
        ],
    )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == "Tool said: 18C and sunny"


@ALL
async def test_streamed_tool_call_arguments_assemble_into_json(
    stack: Stack, simulator: Simulator, route: Route
):
    question = ask("use the tool: weather in Paris")
    stream = await relay_openai(stack).chat.completions.create(
        model=route.alias, messages=question, tools=[WEATHER_TOOL], stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for frag in choice.delta.tool_calls or []:
                call = calls.setdefault(frag.index, {"id": "", "name": "", "arguments": ""})
                call["id"] = frag.id or call["id"]
                if frag.function:
                    call["name"] = frag.function.name or call["name"]
                    call["arguments"] += frag.function.arguments or ""
    want = await vendor_answer(simulator, route, question, tools=[WEATHER_TOOL])

    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"] and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == want.tool_args == {"location": "Paris"}


@ALL
async def test_parallel_tool_calls_come_back_whole_and_streamed(
    stack: Stack, simulator: Simulator, route: Route
):
    """A prompt asking for two tools gets both calls, in order, from every vendor: Claude
    says a sentence first (its text block, then tool_use blocks 1 and 2), which is the
    answer's content beside the calls; the input counts the tools too."""
    question = ask("what are the weather and the time? call get_weather and get_time for Paris")
    tools = [WEATHER_TOOL, CLOCK_TOOL]
    want = await vendor_answer(simulator, route, question, tools=tools)
    c = relay_openai(stack)
    whole = await c.chat.completions.create(model=route.alias, messages=question, tools=tools)  # type: ignore[arg-type]
    choice = whole.choices[0]
    assert choice.finish_reason == want.finish_reason == "tool_calls"
    assert (choice.message.content or "") == want.text
    assert bool(want.text) == (route.kind == "anthropic")
    calls = [(t.id, t.function.name, t.function.arguments) for t in choice.message.tool_calls or []]  # type: ignore[union-attr]
    assert [(name, json.loads(args)) for _, name, args in calls] == [
        ("get_weather", {"location": "Paris"}),
        ("get_time", {"location": "Paris"}),
    ]
    assert all(call_id for call_id, _, _ in calls) and len({i for i, _, _ in calls}) == 2
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (
        want.prompt_tokens,
        want.completion_tokens,
    )

    stream = await c.chat.completions.create(
        model=route.alias,
        messages=question,
        tools=tools,  # type: ignore[arg-type]
        stream=True,
    )
    text, streamed, finish = "", dict[int, dict[str, str]](), None
    async for chunk in stream:
        for part in chunk.choices:
            finish = part.finish_reason or finish
            text += part.delta.content or ""
            for frag in part.delta.tool_calls or []:
                call = streamed.setdefault(frag.index, {"id": "", "name": "", "arguments": ""})
                call["id"] = frag.id or call["id"]
                if frag.function:
                    call["name"] += frag.function.name or ""
                    call["arguments"] += frag.function.arguments or ""
    assert (finish, text) == ("tool_calls", want.text)
    assert list(streamed) == [0, 1]
    got = [(s["name"], json.loads(s["arguments"])) for s in streamed.values()]
    assert got == [(name, json.loads(args)) for _, name, args in calls]
    assert all(s["id"] for s in streamed.values())


@ALL
async def test_a_stop_sequence_ends_the_answer_before_it(
    stack: Stack, simulator: Simulator, route: Route
):
    """The client's ``stop`` reaches every vendor in its own terms (Anthropic's
    ``stop_sequences``, Ollama's ``options.stop``): the answer ends just before the
    sequence, with finish "stop", whole and streamed."""
    question = ask("tell me about the sea")
    plain = await vendor_answer(simulator, route, question)
    sequence = plain.text.split()[3].strip(".")
    before = plain.text[: plain.text.index(sequence)]
    c = relay_openai(stack)
    whole = await c.chat.completions.create(model=route.alias, messages=question, stop=[sequence])
    assert whole.choices[0].message.content == before
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens < plain.completion_tokens
    stream = await c.chat.completions.create(
        model=route.alias, messages=question, stop=[sequence], stream=True
    )
    text, finish = "", None
    async for chunk in stream:
        for part in chunk.choices:
            text += part.delta.content or ""
            finish = part.finish_reason or finish
    assert (text, finish) == (before, "stop")


@pytest.mark.parametrize(
    "route", [ROUTES["anthropic"], ROUTES["ollama"]], ids=["anthropic", "ollama"]
)
async def test_deprecated_function_calling_is_served_by_any_vendor(
    stack: Stack, simulator: Simulator, route: Route
):
    """An old client's ``functions`` reaches Claude and Ollama as tools, and its answer
    comes back as ``function_call``, streamed or not, as OpenAI itself would send it."""
    question = ask("what is the weather in Paris?")
    c = relay_openai(stack)
    functions = [WEATHER_TOOL["function"]]
    first = await c.chat.completions.create(
        model=route.alias,
        messages=question,
        functions=functions,  # type: ignore[arg-type]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "function_call" and not choice.message.tool_calls
    call = choice.message.function_call
    assert call is not None and call.name == "get_weather"
    assert json.loads(call.arguments) == {"location": "Paris"}

    stream = await c.chat.completions.create(
        model=route.alias,
        messages=question,
        functions=functions,
        stream=True,  # type: ignore[arg-type]
    )
    name, arguments, finish = "", "", None
    async for chunk in stream:
        for part in chunk.choices:
            finish = part.finish_reason or finish
            assert not part.delta.tool_calls
            if part.delta.function_call:
                name += part.delta.function_call.name or ""
                arguments += part.delta.function_call.arguments or ""
    assert (name, finish) == ("get_weather", "function_call")
    assert json.loads(arguments) == {"location": "Paris"}

    answer = await c.chat.completions.create(
        model=route.alias,
        functions=functions,  # type: ignore[arg-type]
        messages=[
            *question,
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": call.name, "arguments": call.arguments},
            },
            {"role": "function", "name": "get_weather", "content": "18C and sunny"},
        ],
    )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == "Tool said: 18C and sunny"


# -- embeddings and prompt caching ------------------------------------------------------


async def test_ollama_embeddings_equal_the_direct_vectors(stack: Stack, simulator: Simulator):
    trace = uuid.uuid4().hex
    inputs = [f"hello {uuid.uuid4().hex}", f"world {uuid.uuid4().hex}"]
    got = await relay_openai(stack, trace).embeddings.create(model="nomic-embed", input=inputs)
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(
            f"{simulator.url}/api/embed",
            json={"model": "nomic-embed-text", "input": inputs},
            headers={"authorization": f"Bearer {SIM_KEY}"},
        )
    want = r.raise_for_status().json()

    assert [d.index for d in got.data] == [0, 1]
    # The SDK asks for base64 (float32, as OpenAI sends it); as floats, the same vectors.
    for vector, direct in zip([d.embedding for d in got.data], want["embeddings"], strict=True):
        assert vector == pytest.approx(direct, rel=1e-6, abs=1e-7)
    floats = await relay_openai(stack).embeddings.create(
        model="nomic-embed", input=inputs, encoding_format="float"
    )
    assert [d.embedding for d in floats.data] == want["embeddings"]
    assert got.usage.prompt_tokens == want["prompt_eval_count"]
    [event] = await read_ledger(stack, {trace})
    assert (event.endpoint, event.vendor, event.vendor_model) == (
        "embeddings",
        "sim-ollama",
        "nomic-embed-text",
    )
    assert event.usage.input_tokens == want["prompt_eval_count"]


async def test_openai_cached_tokens_reach_the_answer_and_the_ledger(
    stack: Stack, simulator: Simulator
):
    """The same long prompt twice: the vendor reports cached tokens on the second call."""
    body = f"Case {uuid.uuid4().hex}. " + "The harbour lanterns are lit at dusk. " * 40
    messages = [{"role": "user", "content": body}]
    assert len(body) >= 1024, "the vendor caches prompts of 1024 characters or more"
    traces = [uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex]
    first = await relay_openai(stack, traces[0]).chat.completions.create(
        model="gpt-4o-mini", messages=messages
    )
    second = await relay_openai(stack, traces[1]).chat.completions.create(
        model="gpt-4o-mini", messages=messages
    )
    stream = await relay_openai(stack, traces[2]).chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed = [c.usage async for c in stream if c.usage]
    want = await openai.AsyncOpenAI(
        base_url=f"{simulator.url}/v1", api_key=SIM_KEY, max_retries=0
    ).chat.completions.create(model="gpt-4o-mini", messages=messages)
    cached = want.usage.prompt_tokens_details.cached_tokens

    assert cached and cached > 0
    details = first.usage.prompt_tokens_details
    assert details is None or not details.cached_tokens
    assert second.usage.prompt_tokens_details.cached_tokens == cached
    assert second.usage.prompt_tokens == want.usage.prompt_tokens
    [stream_usage] = streamed
    assert stream_usage.prompt_tokens_details.cached_tokens == cached

    events = {e.trace_id: e for e in await read_ledger(stack, set(traces))}
    assert events[traces[0]].usage.cache_read_tokens == 0
    assert events[traces[1]].usage.cache_read_tokens == cached
    assert events[traces[2]].usage.cache_read_tokens == cached
    assert events[traces[1]].usage.input_tokens == want.usage.prompt_tokens


async def test_reasoning_effort_makes_an_ollama_model_think(stack: Stack, simulator: Simulator):
    """``reasoning_effort`` becomes Ollama's ``think``; the thinking comes back as
    ``reasoning_content`` (streamed or not) and its tokens are metered as the vendor
    counted them."""
    route = ROUTES["ollama"]
    trace = uuid.uuid4().hex
    messages = ask("think about")
    got = await relay_openai(stack, trace).chat.completions.create(
        model=route.alias, messages=messages, reasoning_effort="high"
    )
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(
            f"{simulator.url}/api/chat",
            json={
                "model": route.vendor_model,
                "messages": messages,
                "stream": False,
                "think": True,  # a level is gpt-oss's alone: llama3.2 is told true
            },
            headers={"authorization": f"Bearer {SIM_KEY}"},
        )
    direct = r.json()
    message = got.choices[0].message
    assert (message.model_extra or {}).get("reasoning_content") == direct["message"]["thinking"]
    assert message.content == direct["message"]["content"]
    assert got.usage is not None and got.usage.completion_tokens == direct["eval_count"]
    [event] = await read_ledger(stack, {trace})
    assert event.usage.output_tokens == direct["eval_count"]

    streamed = ""
    stream = await relay_openai(stack).chat.completions.create(
        model=route.alias, messages=messages, reasoning_effort="high", stream=True
    )
    async for chunk in stream:
        for choice in chunk.choices:
            streamed += (choice.delta.model_extra or {}).get("reasoning_content") or ""
    assert streamed == direct["message"]["thinking"]


@pytest.mark.parametrize("stream", [False, True])
async def test_json_mode_on_an_anthropic_vendor_answers_json(stack: Stack, stream: bool):
    """``response_format`` reaches an Anthropic model as a tool it must answer through;
    the client gets the JSON as the message content, as from OpenAI."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    }
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "trip", "schema": schema}}
    params: Any = {
        "model": ROUTES["anthropic"].alias,
        "messages": ask("plan a trip"),
        "response_format": fmt,
    }
    if stream:
        text, finish = "", None
        async for chunk in await relay_openai(stack).chat.completions.create(**params, stream=True):
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
                assert not choice.delta.tool_calls
    else:
        got = await relay_openai(stack).chat.completions.create(**params)
        text, finish = got.choices[0].message.content or "", got.choices[0].finish_reason
        assert not got.choices[0].message.tool_calls
    assert json.loads(text) == {"city": "Paris", "days": 1}
    assert finish == "stop"
