"""Anthropic <-> OpenAI translation end to end: the official SDKs talk to the real gateway
in-process, and a bus runs the real Anthropic or OpenAI adapter (as a worker would, without
its dispatcher or cache) against a mocked vendor, so each test says what the vendor
received and what the client's SDK made of the answer.  Aliases ``claude-*`` go to an
Anthropic vendor, ``mixed-*`` to an Anthropic one and then, should it say it cannot serve
the request (``VendorUnsupported``), an OpenAI one, as a plan of two candidates would; the
rest go to an OpenAI one."""

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
from schemas.config import RelayConfig, VendorConfig, load_config
from schemas.envelope import ReplyEvent, RequestEnvelope
from schemas.errors import RelayError, VendorUnsupported
from schemas.formats.anthropic import anthropic_tool_id
from schemas.usage import Usage
from tests.support.gateway import DEMO_KEY, EXAMPLE, FakeBus, gateway_app

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
        self.hosts: list[str] = []  # which vendor each body went to

    def client(self) -> httpx.AsyncClient:
        async def handle(request: httpx.Request) -> httpx.Response:
            self.bodies.append(json.loads(request.content))
            self.hosts.append(request.url.host)
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
        if env.alias.startswith("mixed"):
            try:
                await self._serve(env, "anthropic")
            except VendorUnsupported:
                await self._serve(env, "openai")
            return
        await self._serve(env, "anthropic" if env.alias.startswith("claude") else "openai")

    async def _serve(self, env: RequestEnvelope, kind: str) -> None:
        adapter: AnthropicAdapter | OpenAIAdapter
        if kind == "anthropic":
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


def _config() -> RelayConfig:
    """The example config and a ``mixed-best`` alias: Claude first, then gpt-4o-mini."""
    raw = load_config(EXAMPLE).model_dump()
    both = [
        *raw["models"]["claude-haiku"]["candidates"],
        *raw["models"]["gpt-4o-mini"]["candidates"],
    ]
    raw["models"]["mixed-best"] = {**raw["models"]["claude-haiku"], "candidates": both}
    return RelayConfig.model_validate(raw)


def _http(vendor: Vendor) -> httpx2.AsyncClient:
    app, _ = gateway_app(config=_config())
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


# -- server-side compaction -------------------------------------------------------------

COMPACTION = {"type": "compaction", "content": "Summary of earlier turns.", "signature": "SIGC"}


async def test_compaction_is_refused_naming_the_edit_whole_streamed_and_sent_back(
    claude: anthropic.AsyncAnthropic, vendor: Vendor
) -> None:
    """Its compaction block has no way back to the client through the relay: the client
    would never see the summary, and pay for a new one each turn.  A 400, never a run
    without it (nor an empty end_turn answer)."""
    managed: Any = {"edits": [{"type": "compact_20260112", "pause_after_compaction": True}]}
    betas: Any = ["compact-2026-01-12"]
    user: Any = [{"role": "user", "content": "hi"}]
    sent_back: Any = [*user, {"role": "assistant", "content": [COMPACTION]}, *user]
    vendor.handler = lambda r: httpx.Response(200, json=anthropic_message([COMPACTION]))
    calls = [
        claude.beta.messages.create(
            model="claude-haiku",
            max_tokens=100,
            messages=m,
            context_management=managed,
            betas=betas,
        )
        for m in (user, sent_back)
    ]
    for made in calls:
        with pytest.raises(anthropic.BadRequestError) as err:
            await made
        said = err.value.body["error"]["message"]  # type: ignore[index]
        assert said.startswith("context_management.edits.0.type: ") and "compact_" in said
    with pytest.raises(anthropic.BadRequestError, match=r"context_management\.edits\.0\.type"):
        async with claude.beta.messages.stream(
            model="claude-haiku",
            max_tokens=100,
            messages=user,
            context_management=managed,
            betas=betas,
        ) as s:
            await s.get_final_message()
    assert not vendor.bodies, "nothing was sent"


# -- thinking in a tool loop another vendor kind answered -------------------------------


def unsigned_tool_loop() -> Any:
    """A tool loop whose last call an OpenAI-format candidate made: no signed thinking."""
    return [
        {"role": "user", "content": "list files"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "call_abc", "name": "Bash", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_abc", "content": "a.txt"}],
        },
    ]


async def test_thinking_after_an_unsigned_tool_call_is_served_by_the_openai_candidate(
    claude: anthropic.AsyncAnthropic, vendor: Vendor
) -> None:
    vendor.handler = lambda r: httpx.Response(
        200, json=completion({"role": "assistant", "content": "One file: a.txt"})
    )
    tools: Any = [{"name": "Bash", "input_schema": {"type": "object"}}]
    thinking: Any = {"type": "enabled", "budget_tokens": 2000}
    message = await claude.messages.create(
        model="mixed-best",
        max_tokens=8000,
        messages=unsigned_tool_loop(),
        tools=tools,
        thinking=thinking,
    )
    assert message.content[0].model_dump()["text"] == "One file: a.txt"
    assert vendor.hosts == ["openai"], "Claude, which would refuse it, was never sent it"
    # With no candidate but Claude, the client hears why.
    with pytest.raises(anthropic.BadRequestError) as err:
        await claude.messages.create(
            model="claude-haiku",
            max_tokens=8000,
            messages=unsigned_tool_loop(),
            tools=tools,
            thinking=thinking,
        )
    assert "signed thinking block" in err.value.body["error"]["message"]  # type: ignore[index]
    assert vendor.hosts == ["openai"]


# -- tool-call ids an OpenAI-format server made -----------------------------------------

KIMI_CALL = {
    "id": "functions.Bash:0",
    "type": "function",
    "function": {"name": "Bash", "arguments": "{}"},
}


async def test_an_openai_client_s_kimi_ids_reach_claude_mapped_and_its_own_come_back(
    oai: openai.AsyncOpenAI, vendor: Vendor
) -> None:
    """Claude refuses ``functions.Bash:0``: it gets the id mapped, call and result alike;
    the client keeps its own, and the ids of Claude's calls reach it as Claude said them,
    to come back unchanged."""
    mapped = anthropic_tool_id("functions.Bash:0")
    call = {"type": "tool_use", "id": "toolu_2", "name": "Bash", "input": {"cmd": "ls"}}
    vendor.handler = lambda r: httpx.Response(200, json=anthropic_message([call], stop="tool_use"))
    messages: Any = [
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": None, "tool_calls": [KIMI_CALL]},
        {"role": "tool", "tool_call_id": "functions.Bash:0", "content": "a.txt"},
    ]
    tools: Any = [
        {"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"}}}
    ]
    chat = await oai.chat.completions.create(model="claude-haiku", messages=messages, tools=tools)
    assert vendor.last["messages"][1]["content"][0]["id"] == mapped
    assert vendor.last["messages"][2]["content"][0]["tool_use_id"] == mapped
    said = chat.choices[0].message
    assert said.tool_calls and said.tool_calls[0].id == "toolu_2"
    # Its next turn: both calls go back, and pair as before.
    messages += [
        said.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": "toolu_2", "content": "b.txt"},
    ]
    vendor.handler = lambda r: httpx.Response(
        200, json=anthropic_message([{"type": "text", "text": "ok"}])
    )
    await oai.chat.completions.create(model="claude-haiku", messages=messages, tools=tools)
    assert [
        b["id"] for t in vendor.last["messages"] if t["role"] == "assistant" for b in t["content"]
    ] == [
        mapped,
        "toolu_2",
    ]


async def test_an_anthropic_client_keeps_a_kimi_id_and_each_vendor_gets_it_its_way(
    claude: anthropic.AsyncAnthropic, vendor: Vendor
) -> None:
    tools: Any = [{"name": "Bash", "input_schema": {"type": "object"}}]
    user: Any = [{"role": "user", "content": "list files"}]
    made = {"role": "assistant", "content": None, "tool_calls": [KIMI_CALL]}
    vendor.handler = lambda r: httpx.Response(200, json=completion(made, "tool_calls"))
    message = await claude.messages.create(
        model="gpt-4o-mini", max_tokens=64, messages=user, tools=tools
    )
    assert message.content[0].model_dump()["id"] == "functions.Bash:0", "the vendor's id, as said"
    loop: Any = [
        *user,
        {
            "role": "assistant",
            "content": [b.model_dump(exclude_none=True) for b in message.content],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "functions.Bash:0", "content": "a"}],
        },
    ]
    vendor.handler = lambda r: httpx.Response(
        200, json=completion({"role": "assistant", "content": "ok"})
    )
    await claude.messages.create(model="gpt-4o-mini", max_tokens=64, messages=loop, tools=tools)
    assert vendor.last["messages"][1]["tool_calls"][0]["id"] == "functions.Bash:0"
    assert vendor.last["messages"][2]["tool_call_id"] == "functions.Bash:0"
    vendor.handler = lambda r: httpx.Response(
        200, json=anthropic_message([{"type": "text", "text": "ok"}])
    )
    await claude.messages.create(model="claude-haiku", max_tokens=64, messages=loop, tools=tools)
    mapped = anthropic_tool_id("functions.Bash:0")
    assert vendor.last["messages"][1]["content"][0]["id"] == mapped
    assert vendor.last["messages"][2]["content"][0]["tool_use_id"] == mapped
