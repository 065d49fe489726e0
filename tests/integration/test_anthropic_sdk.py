"""The official anthropic SDK against the relay's /v1/messages, served by two kinds of vendor.

``claude-haiku`` goes to the Anthropic vendor (Messages -> neutral OpenAI body -> Messages
again); ``gpt-4o-mini`` goes to the OpenAI vendor (Messages -> chat completions and back).
Every expected answer comes from asking the same simulator directly in its own dialect, so
a test only passes when the relay's two translations lose nothing.  Every request carries
``x-relay-cache: bypass`` and a fresh uuid, so each one reaches a vendor.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest

from schemas.config import Candidate
from tests.integration.conftest import read_ledger
from tests.support.clients import relay_openai
from tests.support.stack import DEMO_KEY, SIM_KEY, Simulator, Stack, example_config

MAX_TOKENS = 1024  # far above the simulator's longest answer (40 words)
WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["location"],
    },
}


@dataclass(frozen=True)
class Route:
    """A relay alias and the vendor model it lands on."""

    alias: str
    vendor: str
    vendor_model: str
    kind: str  # "anthropic" or "openai": the dialect the vendor speaks


ROUTES = {
    "anthropic": Route("claude-haiku", "sim-anthropic", "claude-3-5-haiku-latest", "anthropic"),
    "openai": Route("gpt-4o-mini", "sim-openai", "gpt-4o-mini", "openai"),
}
BOTH = pytest.mark.parametrize("route", list(ROUTES.values()), ids=list(ROUTES))


@dataclass(frozen=True)
class Expected:
    """What the vendor says to a request, in Anthropic terms."""

    text: str
    stop_reason: str
    input_tokens: int
    output_tokens: int
    tool_input: dict[str, Any] | None


@pytest.fixture(scope="module")
def stack(stack_factory: Any, simulator: Simulator) -> Stack:
    """The example config (both aliases above are in it) on a stack of this module's own."""
    return stack_factory(example_config(simulator.url))  # type: ignore[no-any-return]


def client(stack: Stack, trace: str | None = None) -> anthropic.AsyncAnthropic:
    headers = {"x-relay-cache": "bypass"}
    if trace:
        headers["x-relay-trace-id"] = trace
    return anthropic.AsyncAnthropic(
        base_url=stack.url, api_key=DEMO_KEY, default_headers=headers, max_retries=0
    )


def direct_anthropic(sim: Simulator) -> anthropic.AsyncAnthropic:
    # The simulator's Messages API reads its key from x-api-key only.
    return anthropic.AsyncAnthropic(
        base_url=sim.url, api_key=SIM_KEY, default_headers={"x-api-key": SIM_KEY}, max_retries=0
    )


def direct_openai(sim: Simulator) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key=SIM_KEY, max_retries=0)


def ask(topic: str = "say something about") -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{topic} {uuid.uuid4().hex}"}]


async def vendor_answer(
    sim: Simulator,
    route: Route,
    messages: list[dict[str, Any]],
    *,
    system: str | None = None,
    max_tokens: int = MAX_TOKENS,
    tools: list[dict[str, Any]] | None = None,
) -> Expected:
    """The vendor's own answer to a request with plain-text turns, asked directly."""
    if route.kind == "anthropic":
        extra: dict[str, Any] = {}
        if system:
            extra["system"] = system
        if tools:
            extra["tools"] = tools
        m = await direct_anthropic(sim).messages.create(
            model=route.vendor_model, max_tokens=max_tokens, messages=messages, **extra
        )
        return Expected(
            text="".join(b.text for b in m.content if b.type == "text"),
            stop_reason=str(m.stop_reason),
            input_tokens=m.usage.input_tokens,
            output_tokens=m.usage.output_tokens,
            tool_input=next((dict(b.input) for b in m.content if b.type == "tool_use"), None),
        )
    chat = ([{"role": "system", "content": system}] if system else []) + messages
    extra = {}
    if tools:
        extra["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t["description"],
                    "parameters": t["input_schema"],
                },
            }
            for t in tools
        ]
    c = await direct_openai(sim).chat.completions.create(
        model=route.vendor_model, messages=chat, max_tokens=max_tokens, **extra
    )
    choice = c.choices[0]
    calls = choice.message.tool_calls or []
    stop = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
    return Expected(
        text=choice.message.content or "",
        stop_reason=stop[choice.finish_reason],
        input_tokens=c.usage.prompt_tokens,
        output_tokens=c.usage.completion_tokens,
        tool_input=json.loads(calls[0].function.arguments) if calls else None,
    )


def text_of(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def assert_event_order(names: list[str], *, ping: bool) -> None:
    """message_start, content_block_start, (ping), deltas, block stop, message_delta/stop."""
    head = ["message_start", "content_block_start", *(["ping"] if ping else [])]
    tail = ["content_block_stop", "message_delta", "message_stop"]
    assert names[: len(head)] == head, names
    assert names[-len(tail) :] == tail, names
    middle = names[len(head) : -len(tail)]
    assert len(middle) > 2 and set(middle) == {"content_block_delta"}, names


# -- answers ----------------------------------------------------------------------------


@BOTH
async def test_message_matches_the_vendor_and_the_ledger(
    stack: Stack, simulator: Simulator, route: Route
):
    trace = uuid.uuid4().hex
    messages = ask()
    got = await client(stack, trace).messages.create(
        model=route.alias, max_tokens=MAX_TOKENS, messages=messages
    )
    want = await vendor_answer(simulator, route, messages)

    assert (got.type, got.role, got.model) == ("message", "assistant", route.alias)
    assert got.id.startswith("msg_")
    assert [b.type for b in got.content] == ["text"]
    assert text_of(got) == want.text
    assert got.stop_reason == want.stop_reason == "end_turn"
    assert got.usage.input_tokens == want.input_tokens
    assert got.usage.output_tokens == want.output_tokens
    assert not got.usage.cache_read_input_tokens and not got.usage.cache_creation_input_tokens

    [event] = await read_ledger(stack, {trace})
    assert (event.alias, event.vendor, event.vendor_model) == (
        route.alias,
        route.vendor,
        route.vendor_model,
    )
    assert event.status == "ok" and event.endpoint == "chat"
    assert event.usage.input_tokens == want.input_tokens
    assert event.usage.output_tokens == want.output_tokens


@BOTH
async def test_max_tokens_cut_reads_as_max_tokens(stack: Stack, simulator: Simulator, route: Route):
    messages = ask()
    got = await client(stack).messages.create(model=route.alias, max_tokens=3, messages=messages)
    want = await vendor_answer(simulator, route, messages, max_tokens=3)
    assert text_of(got) == want.text and len(want.text.split()) == 3
    assert got.stop_reason == want.stop_reason == "max_tokens"
    assert got.usage.output_tokens == want.output_tokens == 3


@BOTH
async def test_system_prompt_and_multi_turn(stack: Stack, simulator: Simulator, route: Route):
    system = f"You are a terse assistant for case {uuid.uuid4().hex}."
    messages = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Cobalt."},
        {"role": "user", "content": f"And another one, please {uuid.uuid4().hex}."},
    ]
    got = await client(stack).messages.create(
        model=route.alias, max_tokens=MAX_TOKENS, system=system, messages=messages
    )
    want = await vendor_answer(simulator, route, messages, system=system)
    # The answer is derived from every turn, system included: any lost turn changes it.
    without_system = await vendor_answer(simulator, route, messages)
    assert text_of(got) == want.text != without_system.text
    assert got.usage.input_tokens == want.input_tokens > without_system.input_tokens
    assert got.usage.output_tokens == want.output_tokens


# -- streaming --------------------------------------------------------------------------


@BOTH
async def test_stream_events_come_in_anthropic_order(
    stack: Stack, simulator: Simulator, route: Route
):
    messages = ask()
    stream = await client(stack).messages.create(
        model=route.alias, max_tokens=MAX_TOKENS, messages=messages, stream=True
    )
    events = [e async for e in stream]
    want = await vendor_answer(simulator, route, messages)

    assert_event_order([e.type for e in events], ping=False)  # the SDK drops pings
    start, block_start, *_ = events
    assert start.message.role == "assistant" and start.message.model == route.alias
    assert block_start.index == 0 and block_start.content_block.type == "text"
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert all(d.index == 0 and d.delta.type == "text_delta" for d in deltas)
    assert "".join(d.delta.text for d in deltas) == want.text
    message_delta = events[-2]
    assert message_delta.delta.stop_reason == "end_turn"
    assert message_delta.usage.output_tokens == want.output_tokens
    assert message_delta.usage.input_tokens == want.input_tokens


@BOTH
async def test_stream_on_the_wire_pings_after_the_first_block_start(stack: Stack, route: Route):
    body = {"model": route.alias, "max_tokens": MAX_TOKENS, "messages": ask(), "stream": True}
    headers = {"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01", "x-relay-cache": "bypass"}
    names: list[str] = []
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream("POST", f"{stack.url}/v1/messages", json=body, headers=headers) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                names.append(line.removeprefix("event: "))
    assert_event_order(names, ping=True)


@BOTH
async def test_stream_final_message_equals_the_non_stream_answer(stack: Stack, route: Route):
    messages = ask()
    whole = await client(stack).messages.create(
        model=route.alias, max_tokens=MAX_TOKENS, messages=messages
    )
    async with client(stack).messages.stream(
        model=route.alias, max_tokens=MAX_TOKENS, messages=messages
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) > 2, "streamed in several pieces, not one"
    assert "".join(pieces) == text_of(final) == text_of(whole)
    assert final.stop_reason == whole.stop_reason == "end_turn"
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.model == route.alias


# -- auth and errors ----------------------------------------------------------------------


async def test_x_api_key_and_bearer_are_both_accepted(stack: Stack):
    body = {"model": "claude-haiku", "max_tokens": MAX_TOKENS, "messages": ask()}
    common = {"anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(timeout=30) as http:
        by_x_api_key = await http.post(
            f"{stack.url}/v1/messages", json=body, headers={**common, "x-api-key": DEMO_KEY}
        )
        by_bearer = await http.post(
            f"{stack.url}/v1/messages",
            json=body,
            headers={**common, "authorization": f"Bearer {DEMO_KEY}"},
        )
    assert by_x_api_key.status_code == by_bearer.status_code == 200
    assert by_x_api_key.json()["type"] == by_bearer.json()["type"] == "message"
    assert by_x_api_key.json()["content"] == by_bearer.json()["content"]


async def test_bad_key_is_an_authentication_error_in_anthropic_shape(stack: Stack):
    bad = anthropic.AsyncAnthropic(base_url=stack.url, api_key="rk-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        await bad.messages.create(model="claude-haiku", max_tokens=MAX_TOKENS, messages=ask())
    assert info.value.status_code == 401
    body = info.value.body
    assert isinstance(body, dict) and set(body) == {"type", "error"}
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error" and body["error"]["message"]

    r = httpx.post(
        f"{stack.url}/v1/messages",
        headers={"x-api-key": "rk-nope", "anthropic-version": "2023-06-01"},
        json={"model": "claude-haiku", "max_tokens": 16, "messages": ask()},
    )
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


async def test_missing_max_tokens_is_400_invalid_request(stack: Stack):
    r = httpx.post(
        f"{stack.url}/v1/messages",
        headers={"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01"},
        json={"model": "claude-haiku", "messages": ask()},
    )
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


async def test_unknown_model_is_404_not_found(stack: Stack):
    with pytest.raises(anthropic.NotFoundError) as info:
        await client(stack).messages.create(model="claude-99", max_tokens=16, messages=ask())
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "claude-99" in body["error"]["message"]


async def test_count_tokens_is_positive_and_grows_with_the_prompt(stack: Stack):
    c = client(stack)
    short = await c.messages.count_tokens(model="claude-haiku", messages=ask("hi"))
    long = await c.messages.count_tokens(
        model="claude-haiku",
        system="Answer in French.",
        messages=ask("tell me a long story about harbours and lanterns " * 10),
        tools=[WEATHER_TOOL],
    )
    assert short.input_tokens > 0
    assert long.input_tokens > short.input_tokens


async def test_count_tokens_is_the_vendor_s_own_count_when_it_can_count(
    stack: Stack, simulator: Simulator
):
    """An alias on an Anthropic vendor gets the vendor's count, through the pipeline:
    metered at no cost and cached like any answer.  An alias on an OpenAI vendor (no such
    endpoint) gets an estimate, and no vendor is called."""
    trace = uuid.uuid4().hex
    messages: Any = ask("count these words")
    params: Any = {"system": "Answer in French.", "messages": messages, "tools": [WEATHER_TOOL]}
    before = simulator.stats()["by_endpoint"].get("anthropic.count_tokens", 0)
    relayed = await client(stack, trace).messages.count_tokens(model="claude-haiku", **params)
    direct = await direct_anthropic(simulator).messages.count_tokens(
        model=ROUTES["anthropic"].vendor_model, **params
    )
    assert relayed.input_tokens == direct.input_tokens
    assert simulator.stats()["by_endpoint"]["anthropic.count_tokens"] == before + 2
    [line] = await read_ledger(stack, {trace})
    assert (line.status, line.vendor, line.cost, line.usage.input_tokens) == (
        "ok",
        ROUTES["anthropic"].vendor,
        0.0,
        0,
    )

    cached = anthropic.AsyncAnthropic(base_url=stack.url, api_key=DEMO_KEY, max_retries=0)
    first = await cached.messages.with_raw_response.count_tokens(model="claude-haiku", **params)
    again = await cached.messages.with_raw_response.count_tokens(model="claude-haiku", **params)
    assert first.headers["x-relay-cache"] == "miss"
    assert again.headers["x-relay-cache"].startswith("hit-")
    assert (await again.parse()).input_tokens == direct.input_tokens

    calls = simulator.stats()["by_endpoint"]["anthropic.count_tokens"]
    estimated = await client(stack).messages.count_tokens(model="gpt-4o-mini", **params)
    assert estimated.input_tokens > 0
    assert simulator.stats()["by_endpoint"]["anthropic.count_tokens"] == calls


# -- tools ------------------------------------------------------------------------------


@BOTH
async def test_tool_use_round_trip(stack: Stack, simulator: Simulator, route: Route):
    question = ask("what is the weather in Paris right now?")
    c = client(stack)
    first = await c.messages.create(
        model=route.alias, max_tokens=MAX_TOKENS, messages=question, tools=[WEATHER_TOOL]
    )
    want = await vendor_answer(simulator, route, question, tools=[WEATHER_TOOL])

    assert first.stop_reason == want.stop_reason == "tool_use"
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.id
    assert call.input == want.tool_input == {"location": "Paris"}
    assert first.usage.output_tokens == want.output_tokens

    answer = await c.messages.create(
        model=route.alias,
        max_tokens=MAX_TOKENS,
        tools=[WEATHER_TOOL],
        messages=[
            *question,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"}
                ],
            },
        ],
    )
    assert answer.stop_reason == "end_turn"
    assert text_of(answer) == "Tool said: 18C and sunny"


@BOTH
async def test_streamed_tool_use_assembles_its_input(
    stack: Stack, simulator: Simulator, route: Route
):
    question = ask("use the tool for the weather in Paris")
    async with client(stack).messages.stream(
        model=route.alias, max_tokens=MAX_TOKENS, messages=question, tools=[WEATHER_TOOL]
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    want = await vendor_answer(simulator, route, question, tools=[WEATHER_TOOL])
    assert "input_json" in kinds, "the arguments arrive as input_json_delta events"
    assert final.stop_reason == "tool_use"
    [call] = final.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.id
    assert call.input == want.tool_input == {"location": "Paris"}


# -- prompt caching -----------------------------------------------------------------------


async def test_cache_control_tokens_reach_the_answer_and_the_ledger(
    stack: Stack, simulator: Simulator
):
    """A cache_control block sent twice: written on the first call, read on the second."""
    route = ROUTES["anthropic"]
    notes = f"Case {uuid.uuid4().hex}. " + "The harbour lanterns are lit at dusk. " * 40
    system = [{"type": "text", "text": notes, "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "user", "content": "Summarise the notes in one line."}]
    traces = [uuid.uuid4().hex, uuid.uuid4().hex]
    first = await client(stack, traces[0]).messages.create(
        model=route.alias, max_tokens=MAX_TOKENS, system=system, messages=messages
    )
    second = await client(stack, traces[1]).messages.create(
        model=route.alias, max_tokens=MAX_TOKENS, system=system, messages=messages
    )
    # A third, direct call reads the same prefix: the vendor's own account of the cache.
    want = await direct_anthropic(simulator).messages.create(
        model=route.vendor_model, max_tokens=MAX_TOKENS, system=system, messages=messages
    )
    assert first.usage.cache_creation_input_tokens, (
        "the relay must hand cache_control on to the Anthropic vendor"
    )
    cached = want.usage.cache_read_input_tokens
    assert cached and first.usage.cache_creation_input_tokens == cached
    assert not first.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens == cached
    assert not second.usage.cache_creation_input_tokens
    assert first.usage.input_tokens == second.usage.input_tokens == want.usage.input_tokens
    assert text_of(first) == text_of(second) == text_of(want)

    events = {e.trace_id: e for e in await read_ledger(stack, set(traces))}
    all_prompt = want.usage.input_tokens + cached  # the ledger counts cached tokens too
    wrote, read = events[traces[0]].usage, events[traces[1]].usage
    assert (wrote.input_tokens, wrote.cache_write_tokens, wrote.cache_read_tokens) == (
        all_prompt,
        cached,
        0,
    )
    assert (read.input_tokens, read.cache_write_tokens, read.cache_read_tokens) == (
        all_prompt,
        0,
        cached,
    )
    assert wrote.output_tokens == read.output_tokens == want.usage.output_tokens


async def test_a_one_hour_cache_write_is_priced_as_one(stack: Stack):
    """Written to Anthropic's one-hour cache, the prefix costs twice the input price, not
    the five-minute cache's 1.25x; the client hears how the write split."""
    from tables.prices import cost_of

    route = ROUTES["anthropic"]
    notes = f"Case {uuid.uuid4().hex}. " + "The ferry leaves at noon. " * 60
    hour = {"type": "ephemeral", "ttl": "1h"}
    system: Any = [{"type": "text", "text": notes, "cache_control": hour}]
    trace = uuid.uuid4().hex
    got = await client(stack, trace).messages.create(
        model=route.alias,
        max_tokens=MAX_TOKENS,
        system=system,
        messages=[{"role": "user", "content": "Summarise."}],
    )
    written = got.usage.cache_creation_input_tokens
    assert written and got.usage.cache_creation
    assert got.usage.cache_creation.ephemeral_1h_input_tokens == written
    [line] = await read_ledger(stack, {trace})
    assert line.usage.cache_write_1h_tokens == written
    price = example_config(stack.url)["models"][route.alias]["candidates"][0]
    cand = Candidate(**{k: v for k, v in price.items() if k in Candidate.model_fields})
    assert line.cost == pytest.approx(cost_of(cand, line.usage))
    five_minutes = line.usage.model_copy(update={"cache_write_1h_tokens": 0})
    assert line.cost > cost_of(cand, five_minutes)


async def test_models_list_and_retrieve_in_anthropic_shape(stack: Stack):
    first = await client(stack).models.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    assert all(m.type == "model" and m.display_name == m.id for m in first.data)
    rest = await client(stack).models.list(limit=1000, after_id=first.last_id)
    every = [m.id for m in first.data] + [m.id for m in rest.data]
    assert {"gpt-4o-mini", "claude-haiku"} <= set(every) and len(set(every)) == len(every)
    assert not rest.has_more
    one = await client(stack).models.retrieve("claude-haiku")
    assert (one.id, one.type) == ("claude-haiku", "model")
    with pytest.raises(anthropic.NotFoundError) as info:
        await client(stack).models.retrieve("claude-nonexistent")
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


# -- extended thinking --------------------------------------------------------------------

THINKING: Any = {"type": "enabled", "budget_tokens": 1024}


async def test_thinking_reaches_an_anthropic_client_whole_streamed_or_not(
    stack: Stack, simulator: Simulator
):
    question = ask("think first, then say something about")
    route = ROUTES["anthropic"]
    got = await client(stack).messages.create(
        model=route.alias,
        max_tokens=2048,
        messages=question,
        thinking=THINKING,  # type: ignore[arg-type]
    )
    want = await direct_anthropic(simulator).messages.create(
        model=route.vendor_model,
        max_tokens=2048,
        messages=question,
        thinking=THINKING,  # type: ignore[arg-type]
    )
    assert [b.type for b in got.content] == ["thinking", "text"]
    assert got.content[0].model_dump() == want.content[0].model_dump()  # signature included
    assert got.usage.output_tokens == want.usage.output_tokens

    async with client(stack).messages.stream(
        model=route.alias,
        max_tokens=2048,
        messages=question,
        thinking=THINKING,  # type: ignore[arg-type]
    ) as stream:
        kinds = {event.type async for event in stream}
        final = await stream.get_final_message()
    assert {"thinking", "signature"} <= kinds
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in got.content]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_tool_loop_with_thinking_sends_the_signed_block_back(stack: Stack, stream: bool):
    """The vendor (as Anthropic does) refuses a tool-use turn sent back without its
    thinking block and signature: the loop only closes if the relay kept both."""
    question = ask("what is the weather in Paris right now?")
    c, alias = client(stack), ROUTES["anthropic"].alias
    params: Any = {
        "model": alias,
        "max_tokens": 2048,
        "tools": [WEATHER_TOOL],
        "thinking": THINKING,
    }
    first: Any
    if stream:
        async with c.messages.stream(messages=question, **params) as s:
            first = await s.get_final_message()
    else:
        first = await c.messages.create(messages=question, **params)
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    call = first.content[1]
    assert call.type == "tool_use"
    result: Any = {"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"}
    answer = await c.messages.create(
        messages=[
            *question,
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [result]},
        ],  # type: ignore[misc]
        **params,
    )
    assert text_of(answer) == "Tool said: 18C and sunny"
    with pytest.raises(anthropic.BadRequestError, match="thinking"):
        await c.messages.create(
            messages=[
                *question,
                {"role": "assistant", "content": [call]},  # the thinking block left out
                {"role": "user", "content": [result]},
            ],  # type: ignore[misc]
            **params,
        )


async def test_a_cached_answer_with_thinking_replays_it_streamed_or_not(stack: Stack):
    """Asked whole first, then streamed: the stream is the cached answer's replay, with
    the thinking block (and its signature) where it was."""
    cached = anthropic.AsyncAnthropic(base_url=stack.url, api_key=DEMO_KEY, max_retries=0)
    params: Any = {
        "model": ROUTES["anthropic"].alias,
        "max_tokens": 2048,
        "messages": ask("think, then say something about"),
        "thinking": THINKING,
    }
    first = await cached.messages.with_raw_response.create(**params)
    assert first.headers["x-relay-cache"] == "miss"
    async with cached.messages.stream(**params) as stream:
        replayed = await stream.get_final_message()
        hit = stream.response.headers["x-relay-cache"]
    assert hit.startswith("hit")
    original = await first.parse()
    assert [b.model_dump() for b in replayed.content] == [b.model_dump() for b in original.content]
    assert [b.type for b in replayed.content] == ["thinking", "text"]


async def test_an_openai_client_can_ask_an_anthropic_vendor_to_think(stack: Stack):
    """``thinking`` in the body (the openai SDK's ``extra_body``), as LiteLLM takes it: the
    text comes back as ``reasoning_content``, and the message, echoed back as it came,
    carries the signed block through a tool-use loop."""
    sdk = relay_openai(stack)
    tool: Any = {
        "type": "function",
        "function": {
            "name": WEATHER_TOOL["name"],
            "description": WEATHER_TOOL["description"],
            "parameters": WEATHER_TOOL["input_schema"],
        },
    }
    question: Any = [
        {"role": "user", "content": f"what is the weather in Paris? {uuid.uuid4().hex}"}
    ]
    params: Any = {
        "model": ROUTES["anthropic"].alias,
        "max_tokens": 2048,
        "tools": [tool],
        "extra_body": {"thinking": THINKING},
    }
    first = await sdk.chat.completions.create(messages=question, **params)
    message = first.choices[0].message
    assert (message.model_extra or {}).get("reasoning_content"), "the thinking text"
    [call] = message.tool_calls or []
    echoed = message.model_dump(exclude_none=True)
    result = {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}
    answer = await sdk.chat.completions.create(messages=[*question, echoed, result], **params)
    assert answer.choices[0].message.content == "Tool said: 18C and sunny"


async def test_reasoning_effort_asks_an_anthropic_vendor_to_think(stack: Stack):
    """OpenAI's ``reasoning_effort`` becomes a thinking budget for an Anthropic vendor, and
    the thinking comes back as ``reasoning_content``, streamed or not."""
    sdk = relay_openai(stack)
    params: Any = {
        "model": ROUTES["anthropic"].alias,
        "messages": [{"role": "user", "content": f"why is the sky blue? {uuid.uuid4().hex}"}],
        "max_completion_tokens": 4096,
        "reasoning_effort": "low",
    }
    answer = await sdk.chat.completions.create(**params)
    reasoning = (answer.choices[0].message.model_extra or {}).get("reasoning_content")
    assert reasoning and answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    streamed = ""
    async for chunk in await sdk.chat.completions.create(**params, stream=True):
        for choice in chunk.choices:
            streamed += (choice.delta.model_extra or {}).get("reasoning_content") or ""
    assert streamed == reasoning, "the same thinking, deterministic per prompt"
    plain = await sdk.chat.completions.create(**{**params, "reasoning_effort": "minimal"})
    assert not (plain.choices[0].message.model_extra or {}).get("reasoning_content")
    with pytest.raises(openai.BadRequestError, match="reasoning_effort"):
        await sdk.chat.completions.create(**{**params, "reasoning_effort": "extreme"})


@pytest.mark.parametrize("route", ["anthropic", "openai"])
async def test_a_pdf_document_reaches_either_vendor(stack: Stack, simulator: Simulator, route: str):
    """A document block goes to an Anthropic vendor as itself and to an OpenAI vendor as
    a file part; either answers the question beside it."""
    pdf = base64.b64encode(b"%PDF-1.4 relay station terms").decode()
    content: Any = [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": pdf},
        },
        {"type": "text", "text": f"summarise this {uuid.uuid4().hex}"},
    ]
    before = simulator.stats()["calls"].get(ROUTES[route].vendor_model, 0)
    got = await client(stack).messages.create(
        model=ROUTES[route].alias,
        max_tokens=MAX_TOKENS,
        messages=[{"role": "user", "content": content}],
    )
    assert got.content and got.content[0].type == "text" and got.content[0].text
    assert simulator.stats()["calls"][ROUTES[route].vendor_model] == before + 1


@BOTH
async def test_structured_output_parses_from_either_vendor(stack: Stack, route: Route):
    """``messages.parse(output_format=Model)`` (``output_config.format``) gets JSON that
    fits the model: from an Anthropic vendor (through the relay's JSON-answer tool, which
    any Claude model takes) and from an OpenAI one (as ``response_format``)."""
    import pydantic

    class Trip(pydantic.BaseModel):
        city: str
        days: int

    got = await client(stack).messages.parse(
        model=route.alias, max_tokens=MAX_TOKENS, messages=ask("plan a trip"), output_format=Trip
    )
    assert isinstance(got.parsed_output, Trip)
    assert got.stop_reason == "end_turn" and [b.type for b in got.content] == ["text"]


async def test_a_document_by_url_reaches_an_anthropic_vendor_and_is_a_400_elsewhere(stack: Stack):
    """Anthropic reads documents by URL; an OpenAI vendor has no such part, and the
    client hears so from the relay rather than from a vendor that was paid to refuse."""
    content: Any = [
        {
            "type": "document",
            "source": {"type": "url", "url": "https://example.com/terms.pdf"},
            "citations": {"enabled": True},
        },
        {"type": "text", "text": f"summarise this {uuid.uuid4().hex}"},
    ]
    messages: Any = [{"role": "user", "content": content}]
    got = await client(stack).messages.create(
        model=ROUTES["anthropic"].alias, max_tokens=MAX_TOKENS, messages=messages
    )
    assert got.content and got.content[0].type == "text"
    with pytest.raises(anthropic.BadRequestError, match="reaches Anthropic vendors only"):
        await client(stack).messages.create(
            model=ROUTES["openai"].alias, max_tokens=MAX_TOKENS, messages=messages
        )
