"""The vendor simulator speaks each vendor's wire format well enough for the official SDKs."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from simulator import SimConfig, create_app

AV = {"anthropic-version": "2023-06-01"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def raw_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


def sdk_http(app: Any) -> httpx2.AsyncClient:
    # Both official SDKs are built on httpx2 and reject a plain httpx client.
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://sim")


@pytest.fixture
def app() -> Any:
    return create_app(SimConfig(batch_complete_after_s=0))


@pytest.fixture
def sim(app: Any) -> httpx.AsyncClient:
    return raw_client(app)


@pytest.fixture
def oai(app: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://sim/v1", api_key="x", http_client=sdk_http(app), max_retries=0
    )


@pytest.fixture
def claude(app: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url="http://sim", api_key="x", http_client=sdk_http(app), max_retries=0
    )


def sse_data(text: str) -> list[Any]:
    return [
        json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


# ---- OpenAI ---------------------------------------------------------------------------------


async def test_openai_chat_is_deterministic_with_realistic_usage(oai: openai.AsyncOpenAI) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, *user("Hello there, simulator!")]
    first = await oai.chat.completions.create(model="gpt-4o-mini", messages=msgs)
    again = await oai.chat.completions.create(model="gpt-4o-mini", messages=msgs)
    other = await oai.chat.completions.create(model="gpt-4o", messages=msgs)
    text = first.choices[0].message.content
    assert text == again.choices[0].message.content
    assert text != other.choices[0].message.content
    assert first.object == "chat.completion" and first.choices[0].finish_reason == "stop"
    words = text.split()
    assert 8 <= len(words) <= 40
    chars = len("Be brief.") + len("Hello there, simulator!")
    assert first.usage.prompt_tokens == math.ceil(chars / 4) + 3 * 2
    assert first.usage.completion_tokens == len(words)
    assert first.usage.total_tokens == first.usage.prompt_tokens + len(words)


async def test_openai_max_tokens_caps_output(oai: openai.AsyncOpenAI) -> None:
    r = await oai.chat.completions.create(model="m", messages=user("cap me"), max_tokens=3)
    assert len(r.choices[0].message.content.split()) == 3
    assert r.usage.completion_tokens == 3
    assert r.choices[0].finish_reason == "length"


async def test_openai_stream_matches_non_stream(oai: openai.AsyncOpenAI) -> None:
    full = await oai.chat.completions.create(model="m", messages=user("stream please"))
    stream = await oai.chat.completions.create(
        model="m",
        messages=user("stream please"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == full.choices[0].message.content
    assert len(pieces) == full.usage.completion_tokens  # one word per chunk
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == full.usage.total_tokens


async def test_openai_stream_wire_ends_with_done(sim: httpx.AsyncClient) -> None:
    r = await sim.post(
        "/v1/chat/completions", json={"model": "m", "messages": user("x"), "stream": True}
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")
    assert all("usage" not in c for c in sse_data(r.text))  # only with include_usage


async def test_openai_tool_call_and_result_round_trip(oai: openai.AsyncOpenAI) -> None:
    ask = user("What is the weather in Paris?")
    r = await oai.chat.completions.create(model="m", messages=ask, tools=[WEATHER_TOOL])
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "c"}

    stream = await oai.chat.completions.create(
        model="m", messages=ask, tools=[WEATHER_TOOL], stream=True
    )
    chunks = [c async for c in stream]
    head = chunks[0].choices[0].delta.tool_calls[0]
    assert head.id == call.id and head.function.name == "get_weather"
    assert head.function.arguments == ""
    args = "".join(
        tc.function.arguments or ""
        for c in chunks[1:]
        for tc in c.choices[0].delta.tool_calls or []
    )
    assert args == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    follow = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "21C and sunny"},
    ]
    done = await oai.chat.completions.create(model="m", messages=follow, tools=[WEATHER_TOOL])
    assert done.choices[0].message.content == "Tool said: 21C and sunny"

    plain = await oai.chat.completions.create(model="m", messages=user("hi"), tools=[WEATHER_TOOL])
    assert plain.choices[0].message.tool_calls is None


async def test_openai_json_mode_answers_json_streamed_or_not(oai: openai.AsyncOpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    whole = await oai.chat.completions.create(
        model="gpt-4o-mini", messages=user("where to?"), response_format=fmt
    )
    assert json.loads(whole.choices[0].message.content or "") == {"city": "Paris"}
    stream = await oai.chat.completions.create(
        model="gpt-4o-mini", messages=user("where to?"), response_format=fmt, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == whole.choices[0].message.content
    obj = await oai.chat.completions.create(
        model="gpt-4o-mini", messages=user("hello"), response_format={"type": "json_object"}
    )
    assert set(json.loads(obj.choices[0].message.content or "")) == {"answer"}


async def test_a_tool_without_parameters_is_called_with_no_arguments(
    oai: openai.AsyncOpenAI, sim: httpx.AsyncClient
) -> None:
    """OpenAI: omitting ``parameters`` defines a function with an empty parameter list."""
    bare: Any = {"type": "function", "function": {"name": "lookup"}}
    empty: Any = {"type": "function", "function": {"name": "now", "parameters": {}}}
    none: Any = {"type": "function", "function": {"name": "ping", "parameters": None}}
    for tool in (bare, empty, none):
        r = await oai.chat.completions.create(model="m", messages=user("use a tool"), tools=[tool])
        call = r.choices[0].message.tool_calls[0].function
        assert (call.name, json.loads(call.arguments)) == (tool["function"]["name"], {})
    msg = {"model": "c", "max_tokens": 50, "messages": user("use a tool")}
    tools = [{"name": "now", "input_schema": {"type": "object"}}]
    got = await sim.post("/v1/messages", json={**msg, "tools": tools}, headers=AV)
    assert got.json()["content"][0]["input"] == {}


async def test_legacy_completions_one_choice_per_prompt(
    oai: openai.AsyncOpenAI, sim: httpx.AsyncClient
) -> None:
    prompts = ["first prompt", "second prompt", "first prompt"]
    r = await oai.completions.create(model="davinci", prompt=prompts, max_tokens=50)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.choices[0].text == r.choices[2].text != r.choices[1].text
    assert r.usage.prompt_tokens == sum(math.ceil(len(p) / 4) for p in prompts)
    assert r.usage.completion_tokens == sum(len(c.text.split()) for c in r.choices)
    stats = (await sim.get("/stats")).json()
    assert stats["calls"] == {"davinci": 1} and stats["inputs"] == {"davinci": 3}


async def test_embeddings_float_and_base64(oai: openai.AsyncOpenAI, sim: httpx.AsyncClient) -> None:
    sdk = await oai.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    raw = (
        await sim.post(
            "/v1/embeddings", json={"model": "text-embedding-3-small", "input": ["alpha", "beta"]}
        )
    ).json()
    assert raw["object"] == "list" and [d["index"] for d in raw["data"]] == [0, 1]
    for got, want in zip(sdk.data, raw["data"], strict=True):
        assert len(got.embedding) == 16
        assert got.embedding == pytest.approx(want["embedding"], abs=1e-6)
        assert math.isclose(sum(v * v for v in got.embedding), 1.0, rel_tol=1e-4)
    assert sdk.data[0].embedding != sdk.data[1].embedding
    assert raw["usage"] == {"prompt_tokens": 3, "total_tokens": 3}  # ceil(5/4) + ceil(4/4)
    wide = await oai.embeddings.create(model="e", input="alpha", dimensions=64)
    assert len(wide.data[0].embedding) == 64
    stats = (await sim.get("/stats")).json()
    assert stats["inputs"]["text-embedding-3-small"] == 4
    assert stats["calls"]["text-embedding-3-small"] == 2


async def test_openai_prompt_cache_reports_cached_tokens(sim: httpx.AsyncClient) -> None:
    system = {"role": "system", "content": "You are a careful assistant. " * 50}

    async def usage(question: str) -> dict[str, Any]:
        body = {"model": "m", "messages": [system, *user(question)]}
        return (await sim.post("/v1/chat/completions", json=body)).json()["usage"]

    first, second = await usage("one?"), await usage("two?")
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["prompt_tokens_details"]["cached_tokens"] == second["prompt_tokens"] * 3 // 4
    short = {"model": "m", "messages": user("short")}
    for _ in range(2):
        r = (await sim.post("/v1/chat/completions", json=short)).json()
        assert r["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    await sim.post("/sim/config", json={"prompt_cache": False})
    assert (await usage("one?"))["prompt_tokens_details"]["cached_tokens"] == 0


async def test_openai_malformed_bodies_get_400_not_422(sim: httpx.AsyncClient) -> None:
    for body in ({"messages": user("x")}, {"model": "m"}, {"model": "m", "messages": []}):
        r = await sim.post("/v1/chat/completions", json=body)
        assert r.status_code == 400
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = await sim.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert (await sim.post("/v1/embeddings", json={"model": "e", "input": ""})).status_code == 400


async def test_models_lists_per_vendor(sim: httpx.AsyncClient) -> None:
    openai_list = (await sim.get("/v1/models")).json()
    assert openai_list["object"] == "list" and openai_list["data"][0]["object"] == "model"
    claude_list = (await sim.get("/v1/models", headers=AV)).json()
    assert all(m["type"] == "model" for m in claude_list["data"])
    assert claude_list["has_more"] is False


# ---- Azure ----------------------------------------------------------------------------------


async def test_azure_paths_and_api_version(app: Any, sim: httpx.AsyncClient) -> None:
    azure = openai.AsyncAzureOpenAI(
        azure_endpoint="http://sim",
        api_version="2024-10-21",
        api_key="x",
        http_client=sdk_http(app),
        max_retries=0,
    )
    r = await azure.chat.completions.create(model="my-deploy", messages=user("hello azure"))
    assert r.model == "my-deploy" and r.choices[0].message.content
    e = await azure.embeddings.create(model="emb-deploy", input="x")
    assert len(e.data[0].embedding) == 16
    missing = await sim.post(
        "/openai/deployments/my-deploy/chat/completions", json={"messages": user("x")}
    )
    # What Azure answers a dated path without its api-version, files and batches too.
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "404", "message": "Resource not found"}}
    for method, path in (
        ("POST", "/openai/files"),
        ("GET", "/openai/files/file-x"),
        ("DELETE", "/openai/files/file-x"),
        ("POST", "/openai/batches"),
        ("GET", "/openai/batches/batch_x"),
        ("POST", "/openai/batches/batch_x/cancel"),
    ):
        unversioned = await sim.request(method, path, headers={"api-key": "x"})
        assert (unversioned.status_code, unversioned.json()) == (404, missing.json()), path
    versioned = await sim.get("/openai/files/file-x?api-version=2024-10-21")
    assert versioned.status_code == 404 and "No such File" in versioned.json()["error"]["message"]
    stats = (await sim.get("/stats")).json()
    assert stats["by_endpoint"] == {"azure.chat": 1, "azure.embeddings": 1}


async def test_azure_v1_takes_the_plain_openai_client_s_bearer_key() -> None:
    """Azure's v1 API is called with the plain OpenAI client (its key as a bearer token)
    or with the ``api-key`` header; its paths carry no api-version."""
    app = create_app(SimConfig(api_key="k"))
    plain = openai.AsyncOpenAI(
        base_url="http://sim/openai/v1", api_key="k", http_client=sdk_http(app), max_retries=0
    )
    r = await plain.chat.completions.create(model="my-deploy", messages=user("hello v1"))
    assert r.choices[0].message.content
    f = await plain.files.create(file=("input.jsonl", b"{}\n"), purpose="batch")
    assert (await plain.files.delete(f.id)).deleted
    raw = raw_client(app)
    body = {"model": "d", "messages": user("x")}
    by_header = await raw.post("/openai/v1/chat/completions", json=body, headers={"api-key": "k"})
    assert by_header.status_code == 200
    wrong = await raw.post(
        "/openai/v1/chat/completions", json=body, headers={"authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401


@pytest.mark.parametrize("version", ["2024-10-21", "v1"])
async def test_the_azure_adapter_chats_and_batches_on_the_simulator(app: Any, version: str) -> None:
    """Azure's dated paths (deployments, resource-level files and batches) and its v1 API
    (``/openai/v1/…``, deployment in the body), both with the ``api-key`` header."""
    from agents.adapters import AzureOpenAIAdapter, VendorCall
    from schemas.config import VendorConfig

    config = VendorConfig(kind="azure", base_url="http://sim", api_version=version)
    adapter = AzureOpenAIAdapter(config, raw_client(app))
    body = {"model": "alias", "messages": user("hello azure")}
    answer = await adapter.chat(VendorCall(model="my-deploy", body=body, api_key="x"))
    assert answer.body["model"] == "my-deploy" and answer.usage.output_tokens > 0
    batch_id = await adapter.submit_batch([("r1", VendorCall("my-deploy", body, "x"))], "x")
    results = await adapter.poll_batch(batch_id, "x")
    assert results is not None and set(results) == {"r1"}
    line = results["r1"]
    assert not isinstance(line, Exception)
    assert line.body["choices"][0]["message"] == answer.body["choices"][0]["message"]
    stats = (await raw_client(app).get("/stats")).json()
    assert stats["batches"] == 1 and stats["by_endpoint"]["azure.chat"] == 1


async def test_ollama_format_answers_json(sim: httpx.AsyncClient) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    for fmt, keys in (("json", {"answer"}), (schema, {"n"})):
        body = {"model": "llama3.2", "messages": user("count"), "format": fmt, "stream": False}
        text = (await sim.post("/api/chat", json=body)).json()["message"]["content"]
        assert set(json.loads(text)) == keys


# ---- Anthropic ------------------------------------------------------------------------------


async def test_anthropic_message_and_stream(claude: anthropic.AsyncAnthropic) -> None:
    kwargs: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": user("Hello Claude"),
    }
    msg = await claude.messages.create(**kwargs)
    again = await claude.messages.create(**kwargs)
    assert msg.type == "message" and msg.stop_reason == "end_turn"
    assert msg.content[0].type == "text" and msg.content[0].text == again.content[0].text
    chars = len("Be brief.") + len("Hello Claude")
    assert msg.usage.input_tokens == math.ceil(chars / 4) + 3 * 2
    assert msg.usage.output_tokens == len(msg.content[0].text.split())
    async with claude.messages.stream(**kwargs) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == msg.content[0].text
    assert final.usage.output_tokens == msg.usage.output_tokens
    capped = await claude.messages.create(**{**kwargs, "max_tokens": 2})
    assert capped.stop_reason == "max_tokens" and len(capped.content[0].text.split()) == 2


async def test_anthropic_stream_event_order(sim: httpx.AsyncClient) -> None:
    body = {"model": "c", "max_tokens": 3, "messages": user("order"), "stream": True}
    r = await sim.post("/v1/messages", json=body, headers=AV)
    names = [line[7:] for line in r.text.splitlines() if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    data = sse_data(r.text)
    assert [d["type"] for d in data] == names
    assert data[0]["message"]["usage"]["output_tokens"] == 1
    assert data[0]["message"]["content"] == []
    assert data[-2]["delta"]["stop_reason"] == "max_tokens"
    assert data[-2]["usage"]["output_tokens"] == 3


async def test_anthropic_tool_use_and_result(claude: anthropic.AsyncAnthropic) -> None:
    tool = {
        "name": "get_weather",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
    }
    ask = user("weather in Paris?")
    msg = await claude.messages.create(model="c", max_tokens=50, messages=ask, tools=[tool])
    said, block = msg.content
    # As Claude does when it chooses to call a tool: a sentence first, then the call.
    assert said.type == "text" and said.text == "Let me check that."
    assert msg.stop_reason == "tool_use" and block.type == "tool_use"
    assert block.name == "get_weather" and block.input == {"location": "Paris"}
    async with claude.messages.stream(
        model="c", max_tokens=50, messages=ask, tools=[tool]
    ) as stream:
        streamed = await stream.get_final_message()
    assert [b.model_dump() for b in streamed.content] == [b.model_dump() for b in msg.content]
    assert streamed.usage.output_tokens == msg.usage.output_tokens
    forced = await claude.messages.create(
        model="c", max_tokens=50, messages=ask, tools=[tool], tool_choice={"type": "any"}
    )
    assert [b.type for b in forced.content] == ["tool_use"], "a forced call comes at once"
    follow = [
        *ask,
        {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "18 degrees"}],
        },
    ]
    done = await claude.messages.create(model="c", max_tokens=50, messages=follow, tools=[tool])
    assert done.content[0].text == "Tool said: 18 degrees" and done.stop_reason == "end_turn"


async def test_anthropic_prompt_cache_usage(claude: anthropic.AsyncAnthropic) -> None:
    doc = "A long reference document. " * 60
    system = [{"type": "text", "text": doc, "cache_control": {"type": "ephemeral"}}]

    async def usage(question: str) -> Any:
        msg = await claude.messages.create(
            model="c", max_tokens=10, system=system, messages=user(question)
        )
        return msg.usage

    first, second = await usage("first?"), await usage("second?")
    cached = math.ceil(len(doc) / 4)
    total = math.ceil((len(doc) + len("first?")) / 4) + 6
    assert (first.cache_creation_input_tokens, first.cache_read_input_tokens) == (cached, 0)
    assert (second.cache_creation_input_tokens, second.cache_read_input_tokens) == (0, cached)
    assert first.input_tokens == total - cached  # input_tokens excludes cached tokens
    plain = await claude.messages.create(model="c", max_tokens=10, messages=user(doc))
    assert plain.usage.cache_read_input_tokens == plain.usage.cache_creation_input_tokens == 0


async def test_anthropic_short_marked_prefix_is_not_cached(
    claude: anthropic.AsyncAnthropic,
) -> None:
    """The minimum cacheable size applies to the marked prefix, not the whole prompt: a
    short marked system prompt before a long question is processed normally."""
    system = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    for _ in range(2):
        msg = await claude.messages.create(
            model="c", max_tokens=10, system=system, messages=user("x" * 5000)
        )
        assert msg.usage.cache_creation_input_tokens == msg.usage.cache_read_input_tokens == 0


async def test_anthropic_validation_and_count_tokens(sim: httpx.AsyncClient) -> None:
    body = {"model": "c", "max_tokens": 5, "messages": user("count me")}
    no_version = await sim.post("/v1/messages", json=body)
    assert no_version.status_code == 400
    assert no_version.json()["error"]["type"] == "invalid_request_error"
    no_max = await sim.post("/v1/messages", json={**body, "max_tokens": None}, headers=AV)
    assert no_max.status_code == 400 and no_max.json()["type"] == "error"
    count = {"model": "c", "messages": user("count me")}
    counted = await sim.post("/v1/messages/count_tokens", json=count, headers=AV)
    assert counted.json() == {"input_tokens": math.ceil(len("count me") / 4) + 3}
    assert (await sim.get("/stats")).json()["total"] == 0


# ---- Ollama ---------------------------------------------------------------------------------


async def test_ollama_chat_streams_ndjson_by_default(sim: httpx.AsyncClient) -> None:
    body = {"model": "llama3.2", "messages": user("hello llama")}
    r = await sim.post("/api/chat", json=body)
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert all(not x["done"] for x in lines[:-1]) and lines[-1]["done"] is True
    text = "".join(x["message"]["content"] for x in lines)
    whole = (await sim.post("/api/chat", json={**body, "stream": False})).json()
    assert whole["done"] is True and whole["message"]["content"] == text
    assert whole["done_reason"] == "stop"
    assert whole["eval_count"] == len(text.split()) == len(lines) - 1
    assert whole["prompt_eval_count"] == math.ceil(len("hello llama") / 4) + 3
    capped = await sim.post(
        "/api/chat", json={**body, "stream": False, "options": {"num_predict": 2}}
    )
    assert capped.json()["eval_count"] == 2 and capped.json()["done_reason"] == "length"


async def test_ollama_thinks_when_asked(sim: httpx.AsyncClient) -> None:
    body = {"model": "gpt-oss:20b", "messages": user("why?"), "think": "low"}
    whole = (await sim.post("/api/chat", json={**body, "stream": False})).json()
    plain = (await sim.post("/api/chat", json={**body, "stream": False, "think": False})).json()
    assert whole["message"]["thinking"] and "thinking" not in plain["message"]
    assert whole["message"]["content"] == plain["message"]["content"]
    assert whole["eval_count"] > plain["eval_count"], "the thinking is counted as output"
    lines = [json.loads(x) for x in (await sim.post("/api/chat", json=body)).text.splitlines()]
    assert "".join(x["message"].get("thinking", "") for x in lines) == whole["message"]["thinking"]
    assert lines[-1]["eval_count"] == whole["eval_count"]
    bad = await sim.post("/api/chat", json={**body, "think": "extreme"})
    assert bad.status_code == 400 and "invalid think value" in bad.json()["error"]
    # A level is gpt-oss's alone, as Ollama 0.11 and 0.12 hold it; others take true.
    other = {**body, "model": "qwen3", "stream": False}
    refused = await sim.post("/api/chat", json=other)
    assert refused.status_code == 400
    assert refused.json()["error"] == 'think value "low" is not supported for this model'
    on = (await sim.post("/api/chat", json={**other, "think": True})).json()
    assert on["message"]["thinking"]


async def test_ollama_tools_embed_and_tags(sim: httpx.AsyncClient) -> None:
    ask = {"model": "llama3.2", "messages": user("weather?"), "tools": [WEATHER_TOOL]}
    r = (await sim.post("/api/chat", json={**ask, "stream": False})).json()
    call = r["message"]["tool_calls"][0]["function"]
    assert call == {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}
    streamed = [json.loads(x) for x in (await sim.post("/api/chat", json=ask)).text.splitlines()]
    assert streamed[0]["message"]["tool_calls"][0]["function"] == call
    back = [*ask["messages"], r["message"], {"role": "tool", "content": "cloudy"}]
    echoed = await sim.post("/api/chat", json={**ask, "messages": back, "stream": False})
    assert echoed.json()["message"]["content"] == "Tool said: cloudy"
    emb = (
        await sim.post("/api/embed", json={"model": "nomic-embed-text", "input": ["a", "b"]})
    ).json()
    assert len(emb["embeddings"]) == 2 and len(emb["embeddings"][0]) == 16
    assert emb["prompt_eval_count"] == 2
    tags = (await sim.get("/api/tags")).json()
    assert "llama3.2:latest" in [m["name"] for m in tags["models"]]
    assert (await sim.post("/api/chat", json={"messages": []})).json() == {
        "error": "model is required"
    }


# ---- Faults, auth, stats --------------------------------------------------------------------


async def test_forced_faults_in_each_vendor_format(sim: httpx.AsyncClient) -> None:
    chat = {"model": "m", "messages": user("x")}
    r = await sim.post("/v1/chat/completions", json=chat, headers={"x-sim-fail": "500"})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    r = await sim.post("/v1/chat/completions", json=chat, headers={"x-sim-fail": "429"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    msg = {"model": "c", "max_tokens": 5, "messages": user("x")}
    r = await sim.post("/v1/messages", json=msg, headers={**AV, "x-sim-fail": "429"})
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    r = await sim.post("/v1/messages", json={**msg, "model": "c-fail500"}, headers=AV)
    assert r.status_code == 500 and r.json()["error"]["type"] == "api_error"
    r = await sim.post("/api/chat", json={**chat, "model": "llama-fail429"})
    assert r.status_code == 429 and "error" in r.json() and r.headers["retry-after"] == "1"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await sim.post("/v1/chat/completions", json=chat, headers={"x-sim-fail": "timeout"})
    stats = (await sim.get("/stats")).json()
    assert stats["faults"] == {"m": 3, "c-fail500": 1, "c": 1, "llama-fail429": 1}
    assert stats["calls"] == stats["faults"]


async def test_an_overloaded_vendor_opens_a_stream_then_errors_before_any_text(
    sim: httpx.AsyncClient,
) -> None:
    """What Anthropic documents (and OpenAI-compatible servers do): a 200 and the stream's
    opening, then an error event; without a stream, 529 (Anthropic) or 503."""
    msg = {"model": "c-overloaded", "max_tokens": 5, "messages": user("x"), "stream": True}
    r = await sim.post("/v1/messages", json=msg, headers=AV)
    names = [line for line in r.text.splitlines() if line.startswith("event: ")]
    assert r.status_code == 200
    assert names == ["event: message_start", "event: ping", "event: error"]
    assert '"overloaded_error"' in r.text and "text_delta" not in r.text
    r = await sim.post("/v1/messages", json={**msg, "stream": False}, headers=AV)
    assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"
    chat = {"model": "m-overloaded", "messages": user("x"), "stream": True}
    r = await sim.post("/v1/chat/completions", json=chat)
    data = [line for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200 and len(data) == 2 and '"error"' in data[1]
    assert '"role": "assistant"' in data[0] or '"role":"assistant"' in data[0]
    r = await sim.post("/v1/chat/completions", json={**chat, "stream": False})
    assert r.status_code == 503


async def test_live_config_fault_rates(sim: httpx.AsyncClient) -> None:
    chat = {"model": "m", "messages": user("x")}
    assert (await sim.post("/sim/config", json={"error_rate": 1.0})).json()["error_rate"] == 1.0
    r = await sim.post("/v1/chat/completions", json=chat)
    assert r.status_code == 500 and "message" in r.json()["error"]
    await sim.post("/sim/config", json={"error_rate": 0, "rate_429": 1.0})
    r = await sim.post("/v1/embeddings", json={"model": "e", "input": "x"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    await sim.post("/sim/config", json={"rate_429": 0})
    assert (await sim.post("/v1/chat/completions", json=chat)).status_code == 200
    assert (await sim.post("/sim/config", json={"error_rate": 2})).status_code == 400
    too_many = await sim.post("/sim/config", json={"error_rate": 0.8, "rate_429": 0.5})
    assert too_many.status_code == 400 and "cannot add up to more than 1" in too_many.text
    assert (await sim.get("/sim/config")).json()["error_rate"] == 0  # left as it was
    assert (await sim.post("/sim/config", json={"nope": 1})).status_code == 400


async def test_random_faults_are_reproducible_from_the_seed() -> None:
    async def pattern(seed: int) -> list[int]:
        client = raw_client(create_app(SimConfig(error_rate=0.3, rate_429=0.3, seed=seed)))
        body = {"model": "m", "messages": user("x")}
        return [
            (await client.post("/v1/chat/completions", json=body)).status_code for _ in range(30)
        ]

    a, b, c = await pattern(7), await pattern(7), await pattern(8)
    assert a == b != c
    assert {200, 429, 500} == set(a)


async def test_api_key_enforced_in_each_vendor_format() -> None:
    app = create_app(SimConfig(api_key="sekret"))
    sim = raw_client(app)
    chat = {"model": "m", "messages": user("x")}
    bad = {"authorization": "Bearer wrong"}
    r = await sim.post("/v1/chat/completions", json=chat, headers=bad)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    ok = await sim.post(
        "/v1/chat/completions", json=chat, headers={"authorization": "Bearer sekret"}
    )
    assert ok.status_code == 200
    azure = "/openai/deployments/d/chat/completions?api-version=2024-10-21"
    assert (
        await sim.post(azure, json=chat, headers={"authorization": "Bearer sekret"})
    ).status_code == 401
    assert (await sim.post(azure, json=chat, headers={"api-key": "sekret"})).status_code == 200
    msg = {"model": "c", "max_tokens": 5, "messages": user("x")}
    r = await sim.post("/v1/messages", json=msg, headers={**AV, "x-api-key": "wrong"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = await sim.post("/v1/messages", json=msg, headers={**AV, "x-api-key": "sekret"})
    assert r.status_code == 200
    r = await sim.post("/api/chat", json=chat)
    assert r.status_code == 401 and r.json() == {"error": "unauthorized"}
    claude = anthropic.AsyncAnthropic(
        base_url="http://sim", api_key="wrong", http_client=sdk_http(app), max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError):
        await claude.messages.create(model="c", max_tokens=5, messages=user("x"))
    assert (await sim.get("/stats")).json()["calls"] == {"m": 1, "d": 1, "c": 1}


async def test_stats_count_and_reset(sim: httpx.AsyncClient) -> None:
    await sim.post("/v1/chat/completions", json={"model": "a", "messages": user("1")})
    await sim.post("/v1/chat/completions", json={"model": "a", "messages": user("2")})
    await sim.post(
        "/v1/messages", json={"model": "b", "max_tokens": 5, "messages": user("3")}, headers=AV
    )
    stats = (await sim.get("/stats")).json()
    assert stats["calls"] == {"a": 2, "b": 1} and stats["total"] == 3
    assert stats["by_endpoint"] == {"openai.chat": 2, "anthropic.messages": 1}
    assert stats["faults"] == {} and stats["batches"] == 0
    reset = (await sim.post("/stats/reset")).json()
    assert reset["total"] == 0 and reset["calls"] == {}


async def test_latency_delays_the_answer() -> None:
    sim = raw_client(create_app(SimConfig(latency_ms=60, chunk_gap_ms=5)))
    start = time.perf_counter()
    body = {"model": "m", "messages": user("x"), "max_tokens": 4, "stream": True}
    r = await sim.post("/v1/chat/completions", json=body)
    assert time.perf_counter() - start >= 0.06 + 5 * 0.005
    assert len(sse_data(r.text)) == 6
    # The header overrides the configuration: against 3 s configured, a header of 0
    # answers in the chunks' 25 ms and a round trip, under half of the 3 s however busy
    # the machine (a 60 ms latency left a loaded machine no room).
    slow = raw_client(create_app(SimConfig(latency_ms=3000, chunk_gap_ms=5)))
    start = time.perf_counter()
    await slow.post("/v1/chat/completions", json=body, headers={"x-sim-latency-ms": "0"})
    assert time.perf_counter() - start < 1.5


# ---- Batches --------------------------------------------------------------------------------


async def test_openai_batch_lifecycle(oai: openai.AsyncOpenAI, sim: httpx.AsyncClient) -> None:
    await sim.post("/sim/config", json={"batch_complete_after_s": 60})
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": user(f"question {i}")},
        }
        for i, model in enumerate(["gpt-4o-mini", "gpt-4o-mini", "gpt-fail500"])
    ]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    f = await oai.files.create(file=("input.jsonl", data), purpose="batch")
    assert f.purpose == "batch" and f.bytes == len(data)
    batch = await oai.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "validating" and batch.output_file_id is None
    assert (await oai.batches.retrieve(batch.id)).status == "in_progress"
    await sim.post("/sim/config", json={"batch_complete_after_s": 0})
    done = await oai.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert (done.request_counts.total, done.request_counts.completed) == (3, 2)
    out = [json.loads(x) for x in (await oai.files.content(done.output_file_id)).text.splitlines()]
    assert [o["custom_id"] for o in out] == ["req-0", "req-1"]
    body = out[0]["response"]["body"]
    assert out[0]["response"]["status_code"] == 200 and body["object"] == "chat.completion"
    direct = await oai.chat.completions.create(model="gpt-4o-mini", messages=user("question 0"))
    assert body["choices"][0]["message"]["content"] == direct.choices[0].message.content
    errors = (await oai.files.content(done.error_file_id)).text.splitlines()
    assert json.loads(errors[0])["response"]["status_code"] == 500
    stats = (await sim.get("/stats")).json()
    assert stats["batches"] == 1 and stats["by_endpoint"]["batch"] == 3
    assert stats["calls"] == {"gpt-4o-mini": 3, "gpt-fail500": 1}


async def test_a_cancelled_openai_batch_lists_every_request_as_batch_cancelled(
    oai: openai.AsyncOpenAI, sim: httpx.AsyncClient
) -> None:
    await sim.post("/sim/config", json={"batch_complete_after_s": 60})
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": user(f"cancelled {i}")},
        }
        for i in range(2)
    ]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    f = await oai.files.create(file=("input.jsonl", data), purpose="batch")
    batch = await oai.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert (await oai.batches.cancel(batch.id)).status == "cancelling"
    done = await oai.batches.retrieve(batch.id)
    assert done.status == "cancelled" and done.output_file_id is None
    errors = [
        json.loads(x) for x in (await oai.files.content(done.error_file_id)).text.splitlines()
    ]
    assert [(e["custom_id"], e["response"], e["error"]["code"]) for e in errors] == [
        ("req-0", None, "batch_cancelled"),
        ("req-1", None, "batch_cancelled"),
    ]
    assert (await sim.get("/stats")).json()["batches_cancelled"] == 1


async def test_anthropic_batch_lifecycle(
    claude: anthropic.AsyncAnthropic, sim: httpx.AsyncClient
) -> None:
    requests = [
        {"custom_id": "ok", "params": {"model": "c", "max_tokens": 20, "messages": user("a")}},
        {"custom_id": "bad", "params": {"model": "c", "messages": user("b")}},
        {
            "custom_id": "boom",
            "params": {"model": "c-fail500", "max_tokens": 5, "messages": user("c")},
        },
    ]
    await sim.post("/sim/config", json={"batch_complete_after_s": 60})
    batch = await claude.messages.batches.create(requests=requests)
    assert batch.processing_status == "in_progress" and batch.results_url is None
    assert batch.request_counts.processing == 3
    await sim.post("/sim/config", json={"batch_complete_after_s": 0})
    ended = await claude.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.results_url
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (1, 2)
    results = {r.custom_id: r.result async for r in await claude.messages.batches.results(batch.id)}
    assert results["ok"].type == "succeeded" and results["ok"].message.content[0].text
    assert results["bad"].type == "errored"
    assert results["bad"].error.error.type == "invalid_request_error"
    assert results["boom"].error.error.type == "api_error"
    stats = (await sim.get("/stats")).json()
    assert stats["batches"] == 1 and stats["calls"] == {"c": 2, "c-fail500": 1}


async def test_a_cancelled_message_batch_ends_with_every_request_canceled(
    claude: anthropic.AsyncAnthropic, sim: httpx.AsyncClient
) -> None:
    await sim.post("/sim/config", json={"batch_complete_after_s": 60})
    params: Any = {"model": "c", "max_tokens": 20, "messages": user("a")}
    batch = await claude.messages.batches.create(requests=[{"custom_id": "x", "params": params}])
    assert (await claude.messages.batches.cancel(batch.id)).processing_status == "canceling"
    ended = await claude.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.request_counts.canceled == 1
    results = [r.result.type async for r in await claude.messages.batches.results(batch.id)]
    assert results == ["canceled"]
    assert (await sim.get("/stats")).json()["batches_cancelled"] == 1


@pytest.mark.parametrize("kind", ["openai", "azure", "anthropic"])
async def test_an_answered_vendor_batch_is_cleaned_up_through_each_adapter(
    app: Any, kind: str
) -> None:
    """What a batch leaves at the vendor (OpenAI's and Azure's input and output files,
    Anthropic's batch and results) is deleted once read: files count against the
    account's storage, and the simulator keeps nothing it no longer needs."""
    from agents.adapters import BatchCleaner, VendorCall, make_adapter
    from schemas.config import VendorConfig

    config = VendorConfig(kind=kind, base_url="http://sim/v1" if kind == "openai" else "http://sim")  # type: ignore[arg-type]
    adapter = make_adapter(config, raw_client(app))
    assert isinstance(adapter, BatchCleaner)
    body = {"model": "m", "messages": user("clean me"), "max_tokens": 20}
    batch_id = await adapter.submit_batch([("r0", VendorCall("m", body, "x"))], "x")  # type: ignore[union-attr]
    results = await adapter.poll_batch(batch_id, "x")  # type: ignore[union-attr]
    assert results is not None and not isinstance(results["r0"], Exception)
    await adapter.clean_batch(batch_id, "x")
    stats = (await raw_client(app).get("/stats")).json()
    sim = app.state.sim
    if kind == "anthropic":
        assert stats["batches_deleted"] == 1 and batch_id not in sim.batches
    else:  # the input file and the output file (no request failed: no error file)
        assert stats["files_deleted"] == 2 and not sim.files and not sim.file_data


async def test_the_sdks_delete_files_and_message_batches(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    f = await oai.files.create(file=("input.jsonl", b"{}\n"), purpose="batch")
    assert (await oai.files.delete(f.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await oai.files.delete(f.id)
    params: Any = {"model": "c", "max_tokens": 20, "messages": user("a")}
    batch = await claude.messages.batches.create(requests=[{"custom_id": "x", "params": params}])
    assert (await claude.messages.batches.delete(batch.id)).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        await claude.messages.batches.retrieve(batch.id)


async def test_claude_past_the_3_family_refuses_temperature_beside_top_p(
    sim: httpx.AsyncClient,
) -> None:
    msg = {"max_tokens": 5, "messages": user("x"), "temperature": 0.5, "top_p": 0.9}
    r = await sim.post("/v1/messages", json={**msg, "model": "claude-sonnet-4-5"}, headers=AV)
    assert r.status_code == 400 and "cannot both be specified" in r.json()["error"]["message"]
    r = await sim.post("/v1/messages", json={**msg, "model": "claude-3-5-haiku"}, headers=AV)
    assert r.status_code == 200


# ---- Fidelity fixes -------------------------------------------------------------------------


async def test_a_refused_call_writes_no_prompt_cache_entry(sim: httpx.AsyncClient) -> None:
    """Only an answered call caches its prefix: the retry of a refused one (429, 500,
    overloaded) still writes the cache rather than reading it."""
    doc = "A long shared document for the cache. " * 40
    chat = {"model": "m", "messages": [{"role": "system", "content": doc}, *user("q?")]}
    for fail in ("500", "429", "overloaded"):
        body = {**chat, "model": f"m{fail}"}  # (not -overloaded: that name forces it)
        refused = await sim.post("/v1/chat/completions", json=body, headers={"x-sim-fail": fail})
        assert refused.status_code >= 429
        streamed = await sim.post(
            "/v1/chat/completions",
            json={**body, "stream": True},
            headers={"x-sim-fail": "overloaded"},
        )
        assert '"error"' in streamed.text
        first = (await sim.post("/v1/chat/completions", json=body)).json()["usage"]
        again = (await sim.post("/v1/chat/completions", json=body)).json()["usage"]
        assert first["prompt_tokens_details"]["cached_tokens"] == 0, fail
        assert again["prompt_tokens_details"]["cached_tokens"] == again["prompt_tokens"] * 3 // 4

    system = [{"type": "text", "text": doc, "cache_control": {"type": "ephemeral"}}]
    msg: dict[str, Any] = {"model": "c", "max_tokens": 10, "system": system}
    msg["messages"] = user("q?")
    for fail in ("429", "500", "overloaded"):
        body = {**msg, "model": f"c{fail}"}
        r = await sim.post("/v1/messages", json=body, headers={**AV, "x-sim-fail": fail})
        assert r.status_code in (429, 500, 529)
        r = await sim.post(
            "/v1/messages", json={**body, "stream": True}, headers={**AV, "x-sim-fail": fail}
        )
        first = (await sim.post("/v1/messages", json=body, headers=AV)).json()["usage"]
        again = (await sim.post("/v1/messages", json=body, headers=AV)).json()["usage"]
        cached = math.ceil(len(doc) / 4)
        assert (first["cache_creation_input_tokens"], first["cache_read_input_tokens"]) == (
            cached,
            0,
        ), fail
        assert (again["cache_creation_input_tokens"], again["cache_read_input_tokens"]) == (
            0,
            cached,
        )


async def _chat_both_ways(
    sim: httpx.AsyncClient, body: dict[str, Any]
) -> tuple[dict[str, Any], list[Any]]:
    whole = (await sim.post("/v1/chat/completions", json=body)).json()
    streamed = await sim.post(
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    return whole, sse_data(streamed.text)


async def test_max_tokens_caps_json_mode_answers(sim: httpx.AsyncClient) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["city", "n"],
    }
    formats: list[Any] = [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    ]
    for fmt in formats:
        for field in ("max_tokens", "max_completion_tokens"):
            body = {"model": "m", "messages": user("json"), "response_format": fmt, field: 2}
            whole, chunks = await _chat_both_ways(sim, body)
            choice = whole["choices"][0]
            assert whole["usage"]["completion_tokens"] == 2
            assert choice["finish_reason"] == "length"
            assert len(choice["message"]["content"].split(" ")) == 2
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
            assert text == choice["message"]["content"]
            assert chunks[-2]["choices"][0]["finish_reason"] == "length"
            assert chunks[-1]["usage"] == whole["usage"]
    body = {"model": "m", "messages": user("j"), "response_format": formats[0], "max_tokens": 500}
    whole, _ = await _chat_both_ways(sim, body)
    assert whole["choices"][0]["finish_reason"] == "stop"  # a cap it does not reach
    assert json.loads(whole["choices"][0]["message"]["content"])

    fmt = {"model": "llama3.2", "messages": user("json"), "format": "json"}
    capped = {**fmt, "options": {"num_predict": 2}}
    whole = (await sim.post("/api/chat", json={**capped, "stream": False})).json()
    assert (whole["eval_count"], whole["done_reason"]) == (2, "length")
    lines = [json.loads(x) for x in (await sim.post("/api/chat", json=capped)).text.splitlines()]
    assert "".join(x["message"]["content"] for x in lines) == whole["message"]["content"]
    assert (lines[-1]["eval_count"], lines[-1]["done_reason"]) == (2, "length")


async def test_max_tokens_cuts_a_tool_call_short(
    sim: httpx.AsyncClient, claude: anthropic.AsyncAnthropic
) -> None:
    """A call max_tokens cuts: OpenAI sends its arguments as far as they got (finish
    "length"); Anthropic only the values it finished (stop "max_tokens"); Ollama parses
    no tool call out of it (done "length").  Never more tokens than the cap, and the
    stream and the whole answer agree."""
    ask = user("weather in Paris?")
    full = (
        await sim.post(
            "/v1/chat/completions", json={"model": "m", "messages": ask, "tools": [WEATHER_TOOL]}
        )
    ).json()
    whole_args = full["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert full["usage"]["completion_tokens"] > 6
    for cap in (1, 6):
        body = {"model": "m", "messages": ask, "tools": [WEATHER_TOOL], "max_tokens": cap}
        whole, chunks = await _chat_both_ways(sim, body)
        choice = whole["choices"][0]
        args = choice["message"]["tool_calls"][0]["function"]["arguments"]
        assert choice["finish_reason"] == "length"
        assert whole["usage"]["completion_tokens"] == cap
        assert whole_args.startswith(args) and args != whole_args
        streamed = "".join(
            tc["function"].get("arguments") or ""
            for c in chunks[:-1]
            for tc in c["choices"][0]["delta"].get("tool_calls") or []
        )
        assert streamed == args
        assert chunks[-2]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["usage"] == whole["usage"]

    tool: Any = {"name": "get_weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}
    kwargs: dict[str, Any] = {"model": "c", "messages": ask, "tools": [tool]}
    said = await claude.messages.create(max_tokens=2, **kwargs)  # the sentence comes first
    assert said.stop_reason == "max_tokens" and said.usage.output_tokens == 2
    assert [(b.type, getattr(b, "text", None)) for b in said.content] == [("text", "Let me")]
    kwargs["tool_choice"] = {"type": "any"}  # a forced call: no sentence before it
    uncut = await claude.messages.create(max_tokens=100, **kwargs)
    assert uncut.stop_reason == "tool_use" and uncut.usage.output_tokens > 8
    for cap, finished in ((2, {}), (8, {"city": "Paris"})):
        msg = await claude.messages.create(max_tokens=cap, **kwargs)
        assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == cap
        block = msg.content[0]
        assert block.type == "tool_use" and block.input == finished
        async with claude.messages.stream(max_tokens=cap, **kwargs) as stream:
            final = await stream.get_final_message()
        assert final.stop_reason == "max_tokens" and final.usage.output_tokens == cap
        assert final.content[0].type == "tool_use" and final.content[0].input == finished

    native: dict[str, Any] = {"model": "llama3.2", "messages": ask, "tools": [WEATHER_TOOL]}
    native["options"] = {"num_predict": 3}
    whole = (await sim.post("/api/chat", json={**native, "stream": False})).json()
    assert (whole["eval_count"], whole["done_reason"]) == (3, "length")
    assert "tool_calls" not in whole["message"] and whole["message"]["content"] == ""
    lines = [json.loads(x) for x in (await sim.post("/api/chat", json=native)).text.splitlines()]
    assert all("tool_calls" not in x["message"] for x in lines)
    assert (lines[-1]["eval_count"], lines[-1]["done_reason"]) == (3, "length")


async def test_ollama_num_predict_counts_the_thinking(sim: httpx.AsyncClient) -> None:
    body = {"model": "qwen3", "messages": user("why?"), "think": True, "stream": False}
    free = (await sim.post("/api/chat", json=body)).json()
    thought = math.ceil(len(free["message"]["thinking"]) / 4)
    for cap in (thought - 2, thought + 2):
        r = (await sim.post("/api/chat", json={**body, "options": {"num_predict": cap}})).json()
        assert (r["eval_count"], r["done_reason"]) == (cap, "length")
        assert len(r["message"]["content"].split()) == max(cap - thought, 0)


async def _upload(oai: openai.AsyncOpenAI, lines: list[Any]) -> str:
    data = b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )
    return (await oai.files.create(file=("input.jsonl", data), purpose="batch")).id


def _chat_line(custom_id: str, url: str = "/v1/chat/completions") -> dict[str, Any]:
    body = {"model": "gpt-4o-mini", "messages": user(custom_id)}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


async def test_an_openai_batch_with_bad_lines_fails_listing_each(
    oai: openai.AsyncOpenAI, sim: httpx.AsyncClient
) -> None:
    await sim.post("/sim/config", json={"batch_complete_after_s": 60})
    file_id = await _upload(
        oai,
        [
            _chat_line("ok"),
            b"{not json",
            _chat_line("wrong-url", "/v1/embeddings"),
            _chat_line("ok"),
            [1, 2],
            {"method": "POST", "url": "/v1/chat/completions", "body": {}},
        ],
    )
    batch = await oai.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert (await oai.batches.retrieve(batch.id)).status == "validating"
    await sim.post("/sim/config", json={"batch_complete_after_s": 0})
    failed = await oai.batches.retrieve(batch.id)
    assert failed.status == "failed" and failed.failed_at
    assert failed.completed_at is None and failed.output_file_id is None
    assert failed.error_file_id is None and failed.request_counts.total == 0
    assert failed.errors is not None and failed.errors.object == "list"
    listed = [(e.line, e.code, e.param) for e in failed.errors.data or []]
    assert listed == [
        (2, "invalid_json_line", None),
        (3, "url_mismatch", "url"),
        (4, "duplicate_custom_id", "custom_id"),
        (5, "invalid_json_line", None),
        (6, "missing_required_parameter", "custom_id"),
    ]
    assert all(e.message for e in failed.errors.data or [])
    raw = (await sim.get(f"/v1/batches/{batch.id}")).json()
    assert set(raw["errors"]["data"][0]) == {"code", "line", "message", "param"}
    stats = (await sim.get("/stats")).json()
    assert stats["calls"] == {} and stats["batches"] == 1, "a failed batch runs nothing"


async def test_batch_timestamps_hold_between_polls(
    app: Any, sim: httpx.AsyncClient, oai: openai.AsyncOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from simulator import batch_routes

    clock = [1_800_000_000.0]
    monkeypatch.setattr(batch_routes, "time", SimpleNamespace(time=lambda: clock[0]))
    await sim.post("/sim/config", json={"batch_complete_after_s": 5})
    ok = await oai.batches.create(
        input_file_id=await _upload(oai, [_chat_line("a")]),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    bad = await oai.batches.create(
        input_file_id=await _upload(oai, [b"nope"]),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    params = {"model": "c", "max_tokens": 5, "messages": user("a")}
    body = {"requests": [{"custom_id": "a", "params": params}]}
    msgbatch = (await sim.post("/v1/messages/batches", json=body, headers=AV)).json()
    clock[0] += 3
    assert (await oai.batches.retrieve(ok.id)).status == "in_progress"
    seen = []
    for later in (4.0, 100.0, 5000.0):
        clock[0] += later
        done, failed = await oai.batches.retrieve(ok.id), await oai.batches.retrieve(bad.id)
        ended = (await sim.get(f"/v1/messages/batches/{msgbatch['id']}", headers=AV)).json()
        seen.append((done.finalizing_at, done.completed_at, failed.failed_at, ended["ended_at"]))
    at = 1_800_000_005
    assert seen == [(at, at, at, "2027-01-15T08:00:05Z")] * 3
    await sim.post("/sim/config", json={"batch_complete_after_s": 1e6})
    assert (await oai.batches.retrieve(ok.id)).status == "completed", "it stays ended"


async def test_wrongly_typed_fields_are_400s_in_each_vendor_format(
    sim: httpx.AsyncClient,
) -> None:
    chat: dict[str, Any] = {"model": "m", "messages": user("weather?")}
    extras: list[tuple[dict[str, Any], str]] = [
        ({"stream": True, "stream_options": True}, "stream_options"),
        ({"stream": True, "stream_options": []}, "stream_options"),
        ({"stream": "yes"}, "stream"),
        ({"tools": 5}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools"),
        ({"response_format": "json"}, "response_format"),
        (
            {"tool_choice": {"type": "function", "function": "f"}, "tools": [WEATHER_TOOL]},
            "tool_choice.function",
        ),
    ]
    for extra, param in extras:
        r = await sim.post("/v1/chat/completions", json={**chat, **extra})
        assert r.status_code == 400, extra
        error = r.json()["error"]
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error",
            param,
            "invalid_type",
        )
    r = await sim.post(
        "/v1/chat/completions", json={**chat, "stream": True, "stream_options": True}
    )
    assert r.json()["error"]["message"] == (
        "Invalid type for 'stream_options': expected an object, but got a boolean instead."
    )
    # Odd shapes that are still answered, not a 500.
    odd: list[dict[str, Any]] = [
        {"messages": [{"role": "assistant", "content": None, "tool_calls": 5}, *user("x")]},
        {"messages": [{"role": "assistant", "tool_calls": [{"function": None}]}, *user("x")]},
    ]
    for extra in odd:
        assert (await sim.post("/v1/chat/completions", json={**chat, **extra})).status_code == 200
    r = await sim.post("/api/chat", json={"model": "llama3.2", "messages": user("x"), "tools": 5})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)

    msg: dict[str, Any] = {"model": "c", "max_tokens": 5, "messages": user("x")}
    wrong: list[tuple[dict[str, Any], str]] = [
        ({"tools": 5}, "tools"),
        ({"tools": [5]}, "tools.0"),
        ({"tools": [{"name": "f", "input_schema": "x"}]}, "tools.0.input_schema"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"thinking": True}, "thinking"),
        ({"stream": "yes"}, "stream"),
        ({"system": {"a": 1}}, "system"),
        ({"messages": "hi"}, "messages"),
    ]
    for extra, field in wrong:
        r = await sim.post("/v1/messages", json={**msg, **extra}, headers=AV)
        assert r.status_code == 400, extra
        body = r.json()
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"].startswith(f"{field}: Input should be")
        r = await sim.post("/v1/messages/count_tokens", json={**msg, **extra}, headers=AV)
        assert r.status_code == 400
    stats = (await sim.get("/stats")).json()
    assert stats["total"] == 2, "only the answered odd shapes reached the model"


async def test_allowed_tools_honours_its_mode(oai: openai.AsyncOpenAI) -> None:
    other: Any = {"type": "function", "function": {"name": "other"}}
    allowed: Any = [{"type": "function", "function": {"name": "get_weather"}}]

    async def ask(mode: str, text: str) -> Any:
        choice: Any = {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": allowed}}
        r = await oai.chat.completions.create(
            model="m", messages=user(text), tools=[other, WEATHER_TOOL], tool_choice=choice
        )
        return r.choices[0].message.tool_calls

    assert await ask("auto", "hello there") is None
    assert [c.function.name for c in await ask("auto", "weather?")] == ["get_weather"]
    assert [c.function.name for c in await ask("required", "hello there")] == ["get_weather"]


async def test_an_overloaded_legacy_completion_stream_errors_before_any_text(
    sim: httpx.AsyncClient,
) -> None:
    body = {"model": "davinci-overloaded", "prompt": "say something", "stream": True}
    r = await sim.post("/v1/completions", json=body)
    data = sse_data(r.text)
    assert r.status_code == 200 and len(data) == 2
    assert [c["text"] for c in data[0]["choices"]] == [""]
    assert data[1]["error"]["code"] is None and "overloaded" in data[1]["error"]["message"]
    plain = {**body, "model": "davinci"}
    words = (await sim.post("/v1/completions", json={**plain, "stream": False})).json()
    first = words["choices"][0]["text"].split()[0]
    assert first not in r.text


async def _response_start_s(app: Any, path: str, body: dict[str, Any], latency_ms: int) -> float:
    """Seconds from a request until the app sends its response's status and headers."""
    raw = json.dumps(body).encode()
    started, stamps = time.perf_counter(), dict[str, float]()
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        stamps.setdefault(message["type"], time.perf_counter() - started)

    headers = [(b"content-type", b"application/json"), (b"anthropic-version", b"2023-06-01")]
    headers.append((b"x-sim-latency-ms", str(latency_ms).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "server": ("sim", 80),
        "client": ("test", 1),
    }
    await app(scope, receive, send)
    return stamps["http.response.start"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": user("x"), "stream": True}),
        ("/v1/completions", {"model": "m", "prompt": "x", "stream": True}),
        ("/v1/messages", {"model": "c", "max_tokens": 5, "messages": user("x"), "stream": True}),
        ("/api/chat", {"model": "llama3.2", "messages": user("x")}),
        ("/v1/chat/completions", {"model": "m", "messages": user("x")}),
    ],
)
async def test_latency_passes_before_the_response_starts(
    app: Any, path: str, body: dict[str, Any]
) -> None:
    """A stream's status and headers wait out the latency too, as a slow vendor's do."""
    assert await _response_start_s(app, path, body, 150) >= 0.15
    assert await _response_start_s(app, path, body, 0) < 0.15


async def test_azure_streams_open_with_the_prompt_filter_chunk(
    app: Any, sim: httpx.AsyncClient
) -> None:
    from agents.adapters import AzureOpenAIAdapter, VendorCall
    from schemas.config import VendorConfig

    path = "/openai/deployments/dep/chat/completions?api-version=2024-10-21"
    body = {"messages": user("hello azure"), "stream": True}
    data = sse_data((await sim.post(path, json=body)).text)
    assert data[0]["choices"] == [] and data[0]["id"] == "" and data[0]["object"] == ""
    [verdict] = data[0]["prompt_filter_results"]
    assert verdict["prompt_index"] == 0
    assert verdict["content_filter_results"]["hate"] == {"filtered": False, "severity": "safe"}
    assert data[1]["choices"][0]["delta"]["role"] == "assistant"
    legacy = "/openai/deployments/dep/completions?api-version=2024-10-21"
    lines = sse_data((await sim.post(legacy, json={"prompt": ["a", "b"], "stream": True})).text)
    assert [r["prompt_index"] for r in lines[0]["prompt_filter_results"]] == [0, 1]
    plain = sse_data((await sim.post("/v1/chat/completions", json={**body, "model": "m"})).text)
    assert all("prompt_filter_results" not in c for c in plain)

    whole = (await sim.post(path, json={**body, "stream": False})).json()
    want = whole["choices"][0]["message"]["content"]
    azure = openai.AsyncAzureOpenAI(
        azure_endpoint="http://sim",
        api_version="2024-10-21",
        api_key="x",
        http_client=sdk_http(app),
        max_retries=0,
    )
    stream = await azure.chat.completions.create(
        model="dep", messages=user("hello azure"), stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == want
    config = VendorConfig(kind="azure", base_url="http://sim", api_version="2024-10-21")
    adapter = AzureOpenAIAdapter(config, raw_client(app))
    call = VendorCall(
        model="dep", body={"model": "a", "messages": user("hello azure")}, api_key="x"
    )
    chunks = [c async for c in adapter.stream(call) if isinstance(c, dict)]
    assert all(c["choices"] for c in chunks), "the adapter skips the choices-less chunk"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == want


async def test_count_tokens_refuses_what_the_endpoint_refuses(
    app: Any, sim: httpx.AsyncClient
) -> None:
    from agents.adapters import AnthropicAdapter, VendorCall
    from schemas.config import VendorConfig

    count = {"model": "c", "messages": user("count me")}
    for field, value in (("max_tokens", 5), ("stream", False), ("temperature", 0.5)):
        r = await sim.post("/v1/messages/count_tokens", json={**count, field: value}, headers=AV)
        assert r.status_code == 400
        error = r.json()["error"]
        assert error == {
            "type": "invalid_request_error",
            "message": f"{field}: Extra inputs are not permitted",
        }
    allowed = {
        **count,
        "system": "Be brief.",
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "cache_control": {"type": "ephemeral"},
        "mcp_servers": [],
    }
    r = await sim.post("/v1/messages/count_tokens", json=allowed, headers=AV)
    assert r.status_code == 200 and r.json()["input_tokens"] > 0
    # The relay's adapter keeps only what the endpoint takes (an OpenAI body's max_tokens...).
    adapter = AnthropicAdapter(
        VendorConfig(kind="anthropic", base_url="http://sim"), raw_client(app)
    )
    body = {"model": "a", "messages": user("count me"), "max_tokens": 5, "temperature": 0.2}
    assert await adapter.count_tokens(VendorCall("c", body, "x")) == math.ceil(8 / 4) + 3


async def test_ollama_streams_unless_stream_is_exactly_false(sim: httpx.AsyncClient) -> None:
    body = {"model": "llama3.2", "messages": user("hello")}
    for stream in (None, True, "yes"):
        r = await sim.post("/api/chat", json={**body, "stream": stream})
        assert r.headers["content-type"].startswith("application/x-ndjson"), stream
        assert len(r.text.splitlines()) > 1
    r = await sim.post("/api/chat", json={**body, "stream": False})
    assert r.headers["content-type"].startswith("application/json") and r.json()["done"]


async def test_stream_options_need_stream(sim: httpx.AsyncClient) -> None:
    chat = {"model": "m", "messages": user("x"), "stream_options": {"include_usage": True}}
    for stream in ({}, {"stream": False}):
        r = await sim.post("/v1/chat/completions", json={**chat, **stream})
        assert r.status_code == 400
        assert r.json()["error"] == {
            "message": "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "type": "invalid_request_error",
            "param": "stream_options",
            "code": None,
        }
    ok = await sim.post("/v1/chat/completions", json={**chat, "stream_options": None})
    assert ok.status_code == 200
    r = await sim.post("/v1/completions", json={"model": "m", "prompt": "x", **chat})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"
    assert (await sim.get("/stats")).json()["total"] == 1


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]}),
        (
            "/v1/messages",
            {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        ),
        (
            "/api/chat",
            {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": False},
        ),
    ],
)
@pytest.mark.parametrize("fault", ["500", "429"])
async def test_a_fault_comes_after_the_latency_too(path: str, body: Any, fault: str) -> None:
    """A slow vendor is slow to fail as well: retries and deadlines see that."""
    client = raw_client(create_app(SimConfig(latency_ms=150)))
    started = time.monotonic()
    r = await client.post(path, json=body, headers={**AV, "x-sim-fail": fault})
    assert r.status_code == int(fault)
    assert time.monotonic() - started >= 0.15


@pytest.mark.parametrize("latency", ["nan", "inf", "-inf"])
async def test_a_latency_header_that_is_not_a_finite_number_is_ignored(latency: str) -> None:
    client = raw_client(create_app(SimConfig()))
    body = {"model": "m", "messages": user("x")}
    r = await asyncio.wait_for(
        client.post("/v1/chat/completions", json=body, headers={"x-sim-latency-ms": latency}), 5
    )
    assert r.status_code == 200


def test_relay_simulator_refuses_fault_rates_adding_up_to_more_than_one() -> None:
    """The simulator's own rule, said as a bad parameter before anything starts."""
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["simulator", "--error-rate", "0.8", "--rate-429", "0.5"])
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "cannot add up to more than 1" in said
