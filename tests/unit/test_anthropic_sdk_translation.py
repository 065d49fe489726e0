"""Anthropic <-> OpenAI translation end to end: the official SDKs talk to the real gateway
in-process, and a bus runs the real Anthropic or OpenAI adapter (as a worker would, without
its dispatcher or cache) against a mocked vendor, so each test says what the vendor
received and what the client's SDK made of the answer.  Aliases ``claude-*`` go to an
Anthropic vendor, the rest to an OpenAI one."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from agents.adapters.anthropic import AnthropicAdapter
from agents.adapters.base import VendorCall
from agents.adapters.openai import OpenAIAdapter
from schemas.config import VendorConfig
from schemas.envelope import ReplyEvent, RequestEnvelope
from schemas.errors import RelayError
from schemas.usage import Usage
from tests.support.gateway import DEMO_KEY, FakeBus, gateway_app

Handler = Callable[[httpx.Request], httpx.Response]
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


class Vendor:
    """The mocked vendor: answers with ``handler`` and keeps the bodies it was sent."""

    def __init__(self) -> None:
        self.handler: Handler = lambda request: httpx.Response(500)
        self.bodies: list[dict[str, Any]] = []

    def client(self) -> httpx.AsyncClient:
        async def handle(request: httpx.Request) -> httpx.Response:
            self.bodies.append(json.loads(request.content))
            return self.handler(request)

        return httpx.AsyncClient(transport=httpx.MockTransport(handle))

    @property
    def last(self) -> dict[str, Any]:
        return self.bodies[-1]


class AdapterBus(FakeBus):
    """Publishing runs the vendor adapter the alias names, as a worker would."""

    def __init__(self, vendor: Vendor) -> None:
        super().__init__()
        self.vendor = vendor

    async def _play(self, env: RequestEnvelope) -> None:
        try:
            await self._run(env)
        except RelayError as err:  # the adapter's refusal, as a worker replies it
            error = ReplyEvent(correlation_id=env.correlation_id, kind="error", error=err.to_dict())
            self._waiting[env.correlation_id].put_nowait(error)

    async def _run(self, env: RequestEnvelope) -> None:
        adapter: AnthropicAdapter | OpenAIAdapter
        if env.alias.startswith("claude"):
            config = VendorConfig(kind="anthropic", base_url="http://anthropic", api_key_env="X")
            adapter, model = AnthropicAdapter(config, self.vendor.client()), "claude-sonnet-4-5"
        else:
            config = VendorConfig(kind="openai", base_url="http://openai/v1", api_key_env="X")
            adapter, model = OpenAIAdapter(config, self.vendor.client()), "gpt-4o-mini"
        queue, cid = self._waiting[env.correlation_id], env.correlation_id
        call = VendorCall(model=model, body=env.body, api_key="k")
        if not env.stream:
            result = await adapter.chat(call)
            body = {**result.body, "model": env.alias}
            queue.put_nowait(
                ReplyEvent(correlation_id=cid, kind="final", body=body, usage=result.usage)
            )
            return
        seq, usage = 0, Usage()
        async for item in adapter.stream(call):
            if isinstance(item, Usage):
                usage = item
                continue
            seq += 1
            chunk = {**item, "model": env.alias}
            queue.put_nowait(ReplyEvent(correlation_id=cid, kind="chunk", seq=seq, body=chunk))
        queue.put_nowait(ReplyEvent(correlation_id=cid, kind="final", seq=seq + 1, usage=usage))


@pytest.fixture
def vendor() -> Vendor:
    return Vendor()


def _http(vendor: Vendor) -> httpx2.AsyncClient:
    app, _ = gateway_app()
    app.state.relay.bus = AdapterBus(vendor)
    # Both official SDKs are built on httpx2; the cache is bypassed: each call is fresh.
    transport = httpx2.ASGITransport(app=app)
    headers = {"x-relay-cache": "bypass"}
    return httpx2.AsyncClient(transport=transport, base_url="http://relay", headers=headers)


@pytest.fixture
def claude(vendor: Vendor) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url="http://relay", api_key=DEMO_KEY, http_client=_http(vendor), max_retries=0
    )


@pytest.fixture
def oai(vendor: Vendor) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://relay/v1", api_key=DEMO_KEY, http_client=_http(vendor), max_retries=0
    )


def anthropic_message(content: list[dict[str, Any]], stop: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }


def completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def openai_stream(chunks: list[dict[str, Any]]) -> httpx.Response:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    lines = [f"data: {json.dumps({**head, **c})}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
    headers = {"content-type": "text/event-stream"}
    return httpx.Response(200, content="".join(lines).encode(), headers=headers)


def tool_call_chunks(*arguments: Any) -> list[dict[str, Any]]:
    """A streamed call of tool f whose arguments come as ``arguments``, one per chunk."""
    first = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f"}}
    calls = [first] + [{"index": 0, "function": {"arguments": a}} for a in arguments]
    chunks = [{"choices": [{"index": 0, "delta": {"tool_calls": [c]}}]} for c in calls]
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 5}}
    return [*chunks, end, usage]


# -- tool strict and the tool's own fields ---------------------------------------------


async def test_an_anthropic_client_s_strict_tool_keeps_strict_and_its_own_fields(
    claude: anthropic.AsyncAnthropic, vendor: Vendor
) -> None:
    tool: dict[str, Any] = {
        "name": "f",
        "description": "d",
        "input_schema": SCHEMA,
        "strict": True,
        "input_examples": [{"city": "Oslo"}],
    }
    vendor.handler = lambda r: httpx.Response(
        200, json=anthropic_message([{"type": "text", "text": "hi"}])
    )
    user = [{"role": "user", "content": "x"}]
    await claude.messages.create(model="claude-haiku", max_tokens=64, tools=[tool], messages=user)  # type: ignore[list-item]
    assert vendor.last["tools"] == [tool], "an Anthropic vendor gets the tool as sent"

    vendor.handler = lambda r: httpx.Response(
        200, json=completion({"role": "assistant", "content": "hi"})
    )
    await claude.messages.create(model="gpt-4o-mini", max_tokens=64, tools=[tool], messages=user)  # type: ignore[list-item]
    function = {"name": "f", "description": "d", "parameters": SCHEMA, "strict": True}
    assert vendor.last["tools"] == [{"type": "function", "function": function}], (
        "an OpenAI vendor gets strict as its own, and nothing it does not know"
    )


async def test_an_openai_client_s_strict_function_reaches_claude_strict(
    oai: openai.AsyncOpenAI, vendor: Vendor
) -> None:
    hi = anthropic_message([{"type": "text", "text": "hi"}])
    vendor.handler = lambda r: httpx.Response(200, json=hi)
    tools: Any = [
        {"type": "function", "function": {"name": "f", "strict": True, "parameters": SCHEMA}},
        {"type": "function", "function": {"name": "g", "strict": False, "parameters": SCHEMA}},
    ]
    user: Any = [{"role": "user", "content": "x"}]
    await oai.chat.completions.create(model="claude-haiku", messages=user, tools=tools)
    assert vendor.last["tools"] == [
        {"name": "f", "input_schema": SCHEMA, "strict": True},
        {"name": "g", "input_schema": SCHEMA},  # not strict: Anthropic's default too
    ]


async def test_an_openai_client_s_safety_identifier_is_claude_s_user_id(
    oai: openai.AsyncOpenAI, vendor: Vendor
) -> None:
    hi = anthropic_message([{"type": "text", "text": "hi"}])
    vendor.handler = lambda r: httpx.Response(200, json=hi)
    user: Any = [{"role": "user", "content": "x"}]
    await oai.chat.completions.create(
        model="claude-haiku", messages=user, safety_identifier="user-123"
    )
    assert vendor.last["metadata"] == {"user_id": "user-123"}
    await oai.chat.completions.create(
        model="claude-haiku", messages=user, user="old-name", safety_identifier="user-123"
    )
    assert vendor.last["metadata"] == {"user_id": "old-name"}, "user, when given, as before"


# -- text blocks keep their order ------------------------------------------------------

TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"city": "Oslo"}}
INTERLEAVED = [
    {"type": "text", "text": "First I'll look it up."},
    TOOL_USE,
    {"type": "text", "text": "Done."},
]


async def test_a_whole_answer_keeps_its_text_blocks_apart_and_in_order(
    claude: anthropic.AsyncAnthropic, oai: openai.AsyncOpenAI, vendor: Vendor
) -> None:
    answer = anthropic_message(INTERLEAVED, stop="tool_use")
    vendor.handler = lambda r: httpx.Response(200, json=answer)
    user: Any = [{"role": "user", "content": "x"}]
    message = await claude.messages.create(model="claude-haiku", max_tokens=64, messages=user)
    assert [b.model_dump(exclude_none=True) for b in message.content] == INTERLEAVED
    chat = await oai.chat.completions.create(model="claude-haiku", messages=user)
    said = chat.choices[0].message
    assert said.content == "First I'll look it up.Done.", "OpenAI's one string: joined as streamed"
    assert said.tool_calls and said.tool_calls[0].id == "toolu_1"


async def test_assistant_history_reaches_claude_block_by_block(
    claude: anthropic.AsyncAnthropic, vendor: Vendor
) -> None:
    vendor.handler = lambda r: httpx.Response(
        200, json=anthropic_message([{"type": "text", "text": "ok"}])
    )
    said = [
        {"type": "text", "text": "Step one."},
        {"type": "text", "text": "Step two."},
        TOOL_USE,
        {"type": "text", "text": "After."},
    ]
    messages: Any = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": said},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "12C"}],
        },
    ]
    await claude.messages.create(model="claude-haiku", max_tokens=64, messages=messages)
    assert vendor.last["messages"][1] == {"role": "assistant", "content": said}


# -- tool arguments an OpenAI-format vendor streams -------------------------------------


async def test_malformed_streamed_arguments_become_the_same_empty_input_as_a_whole_answer(
    claude: anthropic.AsyncAnthropic, vendor: Vendor
) -> None:
    """Python-style quotes (small local models): the SDK parses every delta it is sent,
    so none that is no JSON may reach it; the input is {} streamed or not."""
    user: Any = [{"role": "user", "content": "x"}]
    vendor.handler = lambda r: openai_stream(tool_call_chunks("{'city': ", "'Paris'}"))
    async with claude.messages.stream(model="gpt-4o-mini", max_tokens=64, messages=user) as s:
        streamed = await s.get_final_message()
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "f", "arguments": "{'city': 'Paris'}"},
            }
        ],
    }
    vendor.handler = lambda r: httpx.Response(200, json=completion(call, "tool_calls"))
    whole = await claude.messages.create(model="gpt-4o-mini", max_tokens=64, messages=user)
    expected = [{"type": "tool_use", "id": "call_a", "name": "f", "input": {}}]
    for message in (streamed, whole):
        assert [b.model_dump(exclude_none=True) for b in message.content] == expected
        assert message.stop_reason == "tool_use"


async def test_arguments_streamed_as_an_object_arrive_as_its_json(
    claude: anthropic.AsyncAnthropic, vendor: Vendor
) -> None:
    user: Any = [{"role": "user", "content": "x"}]
    vendor.handler = lambda r: openai_stream(tool_call_chunks({"city": "Paris"}))
    async with claude.messages.stream(model="gpt-4o-mini", max_tokens=64, messages=user) as s:
        message = await s.get_final_message()
    assert [b.model_dump(exclude_none=True) for b in message.content] == [
        {"type": "tool_use", "id": "call_a", "name": "f", "input": {"city": "Paris"}}
    ]


async def test_well_formed_streamed_arguments_still_stream_as_they_come(
    claude: anthropic.AsyncAnthropic, vendor: Vendor
) -> None:
    user: Any = [{"role": "user", "content": "x"}]
    vendor.handler = lambda r: openai_stream(tool_call_chunks(" ", '{"ci', 'ty": "Pa', 'ris"}'))
    deltas: list[str] = []
    async with claude.messages.stream(model="gpt-4o-mini", max_tokens=64, messages=user) as s:
        async for event in s:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                deltas.append(event.delta.partial_json)
        message = await s.get_final_message()
    # Space alone is no JSON the SDK can parse: it goes nowhere (the SDK failed on it).
    assert deltas == ['{"ci', 'ty": "Pa', 'ris"}']
    assert message.content[0].model_dump()["input"] == {"city": "Paris"}


# -- parallel tool calls a server numbers its own way -----------------------------------

WEATHER: Any = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
TIME: Any = {"type": "function", "function": {"name": "get_time", "parameters": SCHEMA}}


def ollama_calls() -> list[dict[str, Any]]:
    """Two parallel calls as Ollama's /v1 streams them: each whole, both at index 0."""
    calls = [("call_a", "get_weather", "Paris"), ("call_b", "get_time", "Oslo")]
    chunks = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": name, "arguments": json.dumps({"city": city})},
                            }
                        ]
                    },
                }
            ]
        }
        for call_id, name, city in calls
    ]
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    return [*chunks, end]


async def test_an_openai_client_hears_each_parallel_call_of_an_ollama_stream(
    oai: openai.AsyncOpenAI, vendor: Vendor
) -> None:
    """The openai SDK merges fragments by index: two calls at index 0 reach it as two
    calls, numbered 0 and 1, as a replay of the cached answer numbers them."""
    vendor.handler = lambda r: openai_stream(ollama_calls())
    user: Any = [{"role": "user", "content": "x"}]
    async with oai.chat.completions.stream(
        model="gpt-4o-mini", messages=user, tools=[WEATHER, TIME]
    ) as s:
        completion = await s.get_final_completion()
    calls = completion.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        ("call_a", "get_weather", '{"city": "Paris"}'),
        ("call_b", "get_time", '{"city": "Oslo"}'),
    ]


async def test_a_legacy_function_call_client_hears_the_first_call_alone(
    oai: openai.AsyncOpenAI, vendor: Vendor
) -> None:
    """A server that ignores ``parallel_tool_calls: false`` and gives both calls index 0:
    the legacy client's ``function_call`` is the first call, not the two joined."""
    vendor.handler = lambda r: openai_stream(ollama_calls())
    user: Any = [{"role": "user", "content": "x"}]
    functions: Any = [WEATHER["function"], TIME["function"]]
    stream = await oai.chat.completions.create(
        model="gpt-4o-mini", messages=user, functions=functions, stream=True
    )
    name, arguments, finish = "", "", None
    async for chunk in stream:
        for choice in chunk.choices:
            said = choice.delta.function_call
            name += (said.name or "") if said else ""
            arguments += (said.arguments or "") if said else ""
            finish = choice.finish_reason or finish
    assert (name, arguments, finish) == ("get_weather", '{"city": "Paris"}', "function_call")


# -- an Anthropic client's stop_sequences ----------------------------------------------


async def test_a_whitespace_stop_sequence_no_candidate_takes_is_named_as_sent(
    claude: anthropic.AsyncAnthropic, vendor: Vendor
) -> None:
    """Anthropic refuses a stop sequence of whitespace alone; with no candidate to serve
    it, the Anthropic client's 400 names its own field (its error body has no param)."""
    user: Any = [{"role": "user", "content": "x"}]
    with pytest.raises(anthropic.BadRequestError) as err:
        await claude.messages.create(
            model="claude-haiku", max_tokens=64, messages=user, stop_sequences=["\n"]
        )
    said = err.value.body["error"]["message"]  # type: ignore[index]
    assert said.startswith("stop_sequences: ") and "whitespace" in said
    assert not vendor.bodies, "nothing was sent"
