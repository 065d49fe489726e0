"""The native Ollama adapter against a MockTransport playing /api/chat and /api/embed."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from agents.adapters import OllamaAdapter, VendorCall
from agents.adapters.ollama import chat_request
from schemas.config import VendorConfig
from schemas.errors import (
    BadRequest,
    VendorBadRequest,
    VendorNotFound,
    VendorUnavailable,
    VendorUnsupported,
)
from schemas.formats.anthropic import messages_request_to_openai
from schemas.formats.openai import assemble_chunks
from schemas.usage import Usage

BASE = "http://127.0.0.1:11434"
PNG = "iVBORw0KGgo="
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
BODY = {
    "model": "relay-alias",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Where is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
    ],
    "tools": TOOLS,
    "tool_choice": "auto",
    "temperature": 0.2,
    "top_p": 0.8,
    "max_tokens": 128,
    "seed": 7,
    "stop": "END",
    "response_format": {"type": "json_object"},
    "stream": True,
}
OLLAMA_BODY = {
    "model": "llama3.2-vision",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is this?", "images": [PNG]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "content": "12C", "tool_name": "weather"},
    ],
    "stream": False,
    "options": {"temperature": 0.2, "top_p": 0.8, "seed": 7, "num_predict": 128, "stop": ["END"]},
    "tools": TOOLS,
    "format": "json",
}


def adapter_for(handler) -> OllamaAdapter:
    config = VendorConfig(kind="ollama", base_url=BASE + "/")
    return OllamaAdapter(config, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def call(body: dict | None = None) -> VendorCall:
    return VendorCall(model="llama3.2-vision", body=body or BODY, api_key="")


def recorder(*responses: httpx.Response):
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return seen, handler


def ndjson(*lines: dict, size: int = 11):
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()

    async def gen():
        for i in range(0, len(data), size):
            yield data[i : i + size]

    return gen()


def final(**extra) -> dict:
    return {
        "model": "llama3.2-vision",
        "created_at": "2025-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "total_duration": 5_000_000,
        "prompt_eval_count": 31,
        "eval_count": 9,
        **extra,
    }


async def test_chat_translates_request_and_tool_call_answer():
    answer = final(
        message={
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Bergen"}}}],
        }
    )
    seen, handler = recorder(httpx.Response(200, json=answer))
    result = await adapter_for(handler).chat(call())

    request = seen[0]
    assert str(request.url) == f"{BASE}/api/chat"
    assert "authorization" not in request.headers
    assert json.loads(request.content) == OLLAMA_BODY
    assert result.usage == Usage(input_tokens=31, output_tokens=9)
    choice = result.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [tool_call] = choice["message"]["tool_calls"]
    assert re.fullmatch(r"call_[0-9a-f]{24}", tool_call["id"])
    assert tool_call["function"] == {"name": "weather", "arguments": '{"city": "Bergen"}'}
    assert result.body["object"] == "chat.completion"
    assert result.body["usage"] == {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40}


async def test_chat_text_answer_cut_at_length():
    answer = final(message={"role": "assistant", "content": "Oslo is"}, done_reason="length")
    _, handler = recorder(httpx.Response(200, json=answer))
    result = await adapter_for(handler).chat(
        call({"messages": [{"role": "user", "content": "hi"}]})
    )
    assert result.body["choices"][0]["message"] == {"role": "assistant", "content": "Oslo is"}
    assert result.body["choices"][0]["finish_reason"] == "length"


async def test_stream_turns_ndjson_into_chunks_then_usage():
    def line(content: str, **message) -> dict:
        return {
            "model": "llama3.2-vision",
            "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": content, **message},
            "done": False,
        }

    tool_calls = [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]
    seen, handler = recorder(
        httpx.Response(
            200,
            content=ndjson(
                line("Let"), line(" me check."), line("", tool_calls=tool_calls), final()
            ),
        )
    )
    items = [item async for item in adapter_for(handler).stream(call())]

    assert json.loads(seen[0].content)["stream"] is True
    *chunks, usage = items
    assert usage == Usage(input_tokens=31, output_tokens=9)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["Let", " me check."]
    tool_delta = chunks[3]["choices"][0]["delta"]["tool_calls"][0]
    assert tool_delta["index"] == 0 and tool_delta["id"].startswith("call_")
    assert tool_delta["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    assert len({c["id"] for c in chunks}) == 1
    message = assemble_chunks(chunks)["choices"][0]["message"]
    assert message["content"] == "Let me check."


async def test_parallel_tool_calls_stream_numbered_as_openai_numbers_them():
    """/api/chat numbers no call: the adapter counts them, so the chunks an OpenAI-format
    client's SDK merges by index keep each call its own, two in one line or not."""
    from openai._models import construct_type
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    def line(*cities: str) -> dict:
        calls = [{"function": {"name": "weather", "arguments": {"city": c}}} for c in cities]
        message = {"role": "assistant", "content": "", "tool_calls": calls}
        return {"model": "llama3.2", "message": message, "done": False}

    _, handler = recorder(
        httpx.Response(200, content=ndjson(line("Oslo", "Paris"), line("Rome"), final()))
    )
    *chunks, _ = [item async for item in adapter_for(handler).stream(call())]
    frags = [f for c in chunks for f in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [f["index"] for f in frags] == [0, 1, 2]
    assert len({f["id"] for f in frags}) == 3
    state = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(construct_type(type_=ChatCompletionChunk, value=c))
    said = state.current_completion_snapshot.choices[0].message.tool_calls or []
    assert [json.loads(c.function.arguments)["city"] for c in said] == ["Oslo", "Paris", "Rome"]


async def test_a_raw_next_line_character_in_the_content_stays_in_its_line():
    """Go's encoding/json leaves U+0085 (and U+2028's kin in other servers) raw inside
    strings: NDJSON lines end at "\\n" alone, so the content arrives whole."""
    lines = [
        {"model": "m", "message": {"role": "assistant", "content": "a\u0085b\u2028c"}},
        final(),
    ]
    data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
    _, handler = recorder(httpx.Response(200, content=data))
    *chunks, usage = [item async for item in adapter_for(handler).stream(call())]
    assert usage == Usage(input_tokens=31, output_tokens=9)
    assert chunks[1]["choices"][0]["delta"]["content"] == "a\u0085b\u2028c"


async def test_stream_error_line_raises_before_any_chunk_is_out():
    """An error as the first line is as good as an error status: nothing has reached the
    client, so the dispatcher may still try the next candidate."""
    _, handler = recorder(httpx.Response(200, content=ndjson({"error": "out of memory"})))
    got: list = []
    with pytest.raises(VendorUnavailable, match="ollama: out of memory"):
        async for item in adapter_for(handler).stream(call()):
            got.append(item)
    assert got == []


async def test_stream_error_line_after_content_raises_after_what_was_said():
    said = {"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": False}
    stream = ndjson(said, {"error": "runner crashed"})
    _, handler = recorder(httpx.Response(200, content=stream))
    got: list = []
    with pytest.raises(VendorUnavailable, match="runner crashed"):
        async for item in adapter_for(handler).stream(call()):
            got.append(item)
    assert [c["choices"][0]["delta"] for c in got] == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
    ]


@pytest.mark.parametrize("status", [None, 400, 429])
async def test_a_stream_s_error_line_is_the_vendor_s_failure_before_or_after_content(status):
    """Ollama's streamResponse answers a failure before any line with its own status
    (``open_stream`` classifies it), and writes ``{"error"}`` alone after content: such
    a line is the vendor's failure, whatever else it might carry, and it was refused
    (unbilled), never the client's 400."""
    said = {"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": False}
    error = {"error": "the input length exceeds the context length"}
    if status is not None:
        error["status"] = status
    for lines in ([said, error], [error]):
        _, handler = recorder(httpx.Response(200, content=ndjson(*lines)))
        with pytest.raises(VendorUnavailable, match="exceeds the context length") as err:
            _ = [item async for item in adapter_for(handler).stream(call())]
        assert type(err.value) is VendorUnavailable and err.value.refused


@pytest.mark.parametrize("what", ["tools", "thinking"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_without_a_capability_is_unsupported_not_a_bad_request(what, stream):
    """Ollama's 400 "<model> does not support tools" is this candidate's limit, not the
    client's mistake: the next candidate is tried and this one's health is untouched."""
    error = {"error": f"registry.ollama.ai/library/gemma:2b does not support {what}"}
    _, handler = recorder(httpx.Response(400, json=error))
    adapter = adapter_for(handler)
    with pytest.raises(VendorUnsupported, match=f"does not support {what}") as err:
        if stream:
            _ = [item async for item in adapter.stream(call())]
        else:
            await adapter.chat(call())
    assert err.value.retryable and err.value.status == 400


async def test_any_other_400_stays_the_clients_fault():
    _, handler = recorder(httpx.Response(400, json={"error": "invalid message format"}))
    with pytest.raises(VendorBadRequest) as err:
        await adapter_for(handler).chat(call())
    assert not err.value.retryable


async def test_tool_call_arguments_are_always_an_object_both_ways():
    message = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"function": {"name": "a", "arguments": None}},
            {"function": {"name": "b", "arguments": [1, 2]}},
        ],
    }
    _, handler = recorder(httpx.Response(200, json=final(message=message)))
    answer = (await adapter_for(handler).chat(call())).body
    calls = answer["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == ["{}", "{}"]
    history = {
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "b", "arguments": "[1, 2]"},
                    }
                ],
            }
        ]
    }
    sent = chat_request(history, "m", stream=False)
    assert sent["messages"][0]["tool_calls"][0]["function"]["arguments"] == {}


async def test_token_id_embeddings_are_unsupported_before_sending():
    seen, handler = recorder()
    body = {"input": [[101, 2023, 102]]}
    with pytest.raises(VendorUnsupported, match="`input`"):
        await adapter_for(handler).embed(call(body))
    assert seen == []


async def test_stream_cut_before_done_raises():
    partial = {"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": False}
    _, handler = recorder(httpx.Response(200, content=ndjson(partial)))
    with pytest.raises(VendorUnavailable, match="before done"):
        _ = [item async for item in adapter_for(handler).stream(call())]


async def test_a_model_not_pulled_is_the_candidate_s_fault_and_worth_another():
    error = {"error": "model 'llama9' not found, try pulling it first"}
    _, handler = recorder(httpx.Response(404, json=error))
    with pytest.raises(VendorNotFound) as err:
        await adapter_for(handler).chat(call())
    assert err.value.retryable and err.value.status == 502
    assert err.value.message == "ollama: HTTP 404: model 'llama9' not found, try pulling it first"


async def test_connection_refused_is_vendor_unavailable():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused")

    with pytest.raises(VendorUnavailable, match="could not connect"):
        await adapter_for(handler).chat(call())


async def test_image_by_url_is_refused_before_sending():
    _, handler = recorder()
    part = {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}}
    with pytest.raises(VendorUnsupported, match="data: URLs") as err:
        await adapter_for(handler).chat(call({"messages": [{"role": "user", "content": [part]}]}))
    # A candidate that fetches URLs may take it; last of all the client hears why.
    assert err.value.retryable and err.value.status == 400


async def test_json_schema_response_format_becomes_format_schema():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        "max_completion_tokens": 50,
    }
    seen, handler = recorder(httpx.Response(200, json=final()))
    await adapter_for(handler).chat(call(body))
    sent = json.loads(seen[0].content)
    assert sent["format"] == schema
    assert sent["options"] == {"num_predict": 50}


async def test_embed_answers_as_openai_list():
    answer = {
        "model": "nomic-embed-text",
        "embeddings": [[0.1, 0.2], [0.3, 0.4]],
        "total_duration": 1000,
        "prompt_eval_count": 8,
    }
    seen, handler = recorder(httpx.Response(200, json=answer))
    body = {"model": "embed-alias", "input": ["a", "b"], "dimensions": 2}
    vc = VendorCall(model="nomic-embed-text", body=body, api_key="")

    result = await adapter_for(handler).embed(vc)

    assert str(seen[0].url) == f"{BASE}/api/embed"
    assert json.loads(seen[0].content) == {
        "model": "nomic-embed-text",
        "input": ["a", "b"],
        "truncate": False,  # too long is a 400, as at OpenAI, not a vector of its start
        "dimensions": 2,
    }
    assert result.usage == Usage(input_tokens=8)
    assert result.body == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
            {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]},
        ],
        "model": "nomic-embed-text",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }


@pytest.mark.parametrize(
    "answer",
    [
        {"model": "m"},  # a proxy's 200
        {"model": "m", "created_at": "x", "message": {"role": "assistant", "content": ""}},
        {"model": "m", "done": True, "done_reason": "load"},  # the model loaded, no message
    ],
    ids=["nothing", "not-done", "load"],
)
async def test_a_chat_200_that_is_no_answer_is_the_vendor_s_failure(answer):
    """Never an empty answer to cache and count as the vendor's success."""
    _, handler = recorder(httpx.Response(200, json=answer))
    with pytest.raises(VendorUnavailable, match="HTTP 200 without an answer"):
        await adapter_for(handler).chat(call())


@pytest.mark.parametrize(
    ("answer", "given"),
    [
        ({"model": "m"}, ["a", "b"]),
        ({"model": "m", "embeddings": [[0.1]]}, ["a", "b"]),
        ({"model": "m", "embeddings": "no"}, "a"),
    ],
)
async def test_an_embed_200_without_a_vector_per_input_is_the_vendor_s_failure(answer, given):
    _, handler = recorder(httpx.Response(200, json=answer))
    vc = VendorCall(model="nomic", body={"input": given}, api_key="")
    with pytest.raises(VendorUnavailable, match="without an embedding for each input"):
        await adapter_for(handler).embed(vc)


async def test_embeddings_without_a_count_are_metered_at_an_estimate_not_free():
    """An /api/embed that says no prompt_eval_count (Ollama's first) is estimated, as chat
    and the OpenAI adapter's embeddings are."""
    _, handler = recorder(httpx.Response(200, json={"model": "m", "embeddings": [[0.1, 0.2]]}))
    text = "some fairly long text " * 50
    vc = VendorCall(model="nomic", body={"input": text}, api_key="")
    result = await adapter_for(handler).embed(vc)
    assert result.usage.input_tokens == len(text) // 4 + 1
    assert result.body["usage"]["prompt_tokens"] == result.usage.input_tokens


@pytest.mark.parametrize(
    "content", [["hi"], [{"type": "image_url", "image_url": "data:image/png;base64,QQ=="}], 7]
)
def test_malformed_content_is_a_bad_request(content):
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    with pytest.raises(BadRequest):
        chat_request(body, "llama3", stream=False)


def test_more_than_one_choice_is_refused_not_ignored():
    """This candidate's refusal: an OpenAI-format one may answer both."""
    body = {"model": "m", "n": 2, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(VendorUnsupported, match="one choice"):
        chat_request(body, "llama3", stream=False)
    with pytest.raises(VendorUnsupported, match="logprobs"):
        chat_request({**body, "n": 1, "logprobs": True}, "llama3", stream=False)


@pytest.mark.parametrize(
    "part",
    [
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    ],
)  # fmt: skip
async def test_a_part_only_other_vendors_read_passes_the_request_on_before_sending(part):
    """A PDF or audio, which /api/chat has no slot for: the next candidate (OpenAI,
    Anthropic) may read it, so this one refuses without failing the request."""
    seen, handler = recorder()
    body = {"messages": [{"role": "user", "content": [part, {"type": "text", "text": "Sum up"}]}]}
    with pytest.raises(VendorUnsupported, match=part["type"]) as err:
        await adapter_for(handler).chat(call(body))
    assert err.value.retryable and err.value.status == 400
    assert seen == []
    nonsense = {"messages": [{"role": "user", "content": [{"type": "hologram"}]}]}
    with pytest.raises(BadRequest, match="hologram"):  # no vendor reads it: the client's
        chat_request(nonsense, "llama3", stream=False)


@pytest.mark.parametrize(
    ("effort", "think"),
    [("low", "low"), ("high", "high"), ("xhigh", "high"), ("minimal", False), ("none", False)],
)
def test_reasoning_effort_becomes_think(effort, think):
    """A level goes to gpt-oss alone: Ollama 0.11 and 0.12 refuse one for other models,
    which are told true (on) instead."""
    body = {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": effort}
    out = chat_request(body, "gpt-oss:20b", stream=False)
    assert out["think"] == think and "reasoning_effort" not in out
    other = chat_request(body, "qwen3", stream=False)["think"]
    assert other is (think is not False)
    assert "think" not in chat_request({"messages": body["messages"]}, "qwen3", stream=False)
    with pytest.raises(BadRequest, match="reasoning_effort: 'extreme'") as err:
        chat_request({**body, "reasoning_effort": "extreme"}, "qwen3", stream=False)
    assert err.value.param == "reasoning_effort"


@pytest.mark.parametrize(
    ("thinking", "think"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, "low"),
        ({"type": "enabled", "budget_tokens": 4096}, "medium"),
        ({"type": "enabled", "budget_tokens": 30000}, "high"),
        ({"type": "adaptive"}, "high"),
        ({"type": "disabled"}, False),
    ],
)
def test_an_anthropic_client_s_thinking_becomes_think(thinking, think):
    request = {"model": "a", "max_tokens": 32000, "thinking": thinking}
    neutral = messages_request_to_openai(
        {**request, "messages": [{"role": "user", "content": "q"}]}
    )
    out = chat_request(neutral, "gpt-oss:120b", stream=False)
    assert out["think"] == think and "thinking" not in out and "reasoning_effort" not in out
    low = {**neutral, "output_config": {"effort": "low"}}
    effort = chat_request(low, "gpt-oss:120b", stream=False)
    assert effort["think"] == ("low" if thinking["type"] == "adaptive" else think)
    assert chat_request(neutral, "qwen3", stream=False)["think"] is (think is not False)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_think_level_a_model_refuses_passes_the_request_on(stream):
    """Ollama 0.11 and 0.12 refuse a level for any model but gpt-oss: should a gpt-oss
    by name be another model after all, that candidate cannot serve it, another may."""
    refused = {"error": 'think value "high" is not supported for this model'}
    seen, handler = recorder(httpx.Response(400, json=refused))
    body = {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "high"}
    named = VendorCall(model="my-gpt-oss-finetune", body=body, api_key="")
    with pytest.raises(VendorUnsupported, match="not supported for this model") as err:
        if stream:
            _ = [item async for item in adapter_for(handler).stream(named)]
        else:
            await adapter_for(handler).chat(named)
    assert err.value.retryable and json.loads(seen[0].content)["think"] == "high"


# An Anthropic client's request with thinking on: the relay makes it ``think`` (a level
# for gpt-oss, true for every other model).
THINKING = messages_request_to_openai(
    {
        "model": "a",
        "max_tokens": 2000,
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
)
DOES_NOT_THINK = {"error": '"gemma3:1b" does not support thinking'}


async def ask(adapter: OllamaAdapter, vc: VendorCall, stream: bool) -> str:
    if stream:
        *chunks, _ = [item async for item in adapter.stream(vc)]
        return assemble_chunks(chunks)["choices"][0]["message"]["content"]
    return (await adapter.chat(vc)).body["choices"][0]["message"]["content"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "refusal"),
    [
        ("gemma3:1b", DOES_NOT_THINK),
        ("my-gpt-oss-finetune", {"error": 'think value "low" is not supported for this model'}),
    ],
    ids=["no-thinking", "no-level"],
)
async def test_the_think_the_relay_added_is_struck_when_the_model_refuses_it(
    stream, model, refusal
):
    """An Anthropic client's thinking becomes ``think``; a local model that does not think
    (or takes no level) refuses it with a 400, and the same request goes once more
    without it, answered by the model as it would have been: not passed on to a paid
    candidate, nor the client's 400."""
    said = {"role": "assistant", "content": "Hello"}
    answer = (
        httpx.Response(200, content=ndjson({"message": said, "done": False}, final()))
        if stream
        else httpx.Response(200, json=final(message=said))
    )
    seen, handler = recorder(httpx.Response(400, json=refusal), answer)
    assert await ask(adapter_for(handler), VendorCall(model, THINKING, ""), stream) == "Hello"
    first, second = (json.loads(r.content) for r in seen)
    assert first["think"] in (True, "low") and "think" not in second
    assert {**second, "think": first["think"]} == first


async def test_a_thinking_model_s_other_refusal_is_not_read_as_a_refused_think():
    """Ollama's 400s quote the model's name, and tags hold the word (``qwen3:4b-thinking``):
    its refusal of tools is not a refused ``think``, so no second call goes out for it."""
    refusal = {"error": '"qwen3:4b-thinking-2507" does not support tools'}
    seen, handler = recorder(httpx.Response(400, json=refusal))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    asked = {**THINKING, "tools": tools}
    with pytest.raises(VendorUnsupported, match="does not support tools"):
        await adapter_for(handler).chat(VendorCall("qwen3:4b-thinking-2507", asked, ""))
    assert len(seen) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_clients_own_reasoning_effort_refused_passes_the_request_on(stream):
    """reasoning_effort the client sent itself is its choice: never struck, the model
    that cannot think passes the request to the next candidate (which may)."""
    seen, handler = recorder(httpx.Response(400, json=DOES_NOT_THINK))
    asked = {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "low"}
    with pytest.raises(VendorUnsupported, match="does not support thinking"):
        await ask(adapter_for(handler), VendorCall("gemma3:1b", asked, ""), stream)
    assert len(seen) == 1


def test_an_echoed_answer_s_reasoning_goes_back_as_its_thinking():
    body = {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "add them"},
            {"role": "user", "content": "and 3+3?"},
        ]
    }
    messages = chat_request(body, "qwen3", stream=False)["messages"]
    assert messages[1] == {"role": "assistant", "content": "4", "thinking": "add them"}
    assert "thinking" not in messages[0] and "reasoning_content" not in messages[1]


async def test_thinking_comes_back_as_reasoning_content_streamed_or_not():
    thought = {"role": "assistant", "content": "4", "thinking": "add two and two"}
    _, handler = recorder(httpx.Response(200, json=final(message=thought)))
    result = await adapter_for(handler).chat(call({"messages": [], "reasoning_effort": "low"}))
    message = result.body["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == ("4", "add two and two")

    def line(**message) -> dict:
        return {"message": {"role": "assistant", "content": "", **message}, "done": False}

    _, handler = recorder(
        httpx.Response(
            200,
            content=ndjson(
                line(thinking="add two"), line(thinking=" and two"), line(content="4"), final()
            ),
        )
    )
    *chunks, _ = [item async for item in adapter_for(handler).stream(call())]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[1:3] == [{"reasoning_content": "add two"}, {"reasoning_content": " and two"}]
    message = assemble_chunks(chunks)["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == ("4", "add two and two")


def test_tool_choice_none_leaves_the_tools_out_and_a_refusal_part_is_text():
    body = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        ],
        "tools": TOOLS,
        "tool_choice": "none",
    }
    out = chat_request(body, "llama3.2", stream=False)
    assert "tools" not in out and out["messages"][1]["content"] == "No."
    assert chat_request({**body, "tool_choice": "auto"}, "l", stream=False)["tools"] == TOOLS


def test_a_named_or_allowed_tool_choice_offers_only_those_tools():
    """Ollama has no tool_choice: the tools offered say what may be called."""
    clock = {"type": "function", "function": {"name": "clock", "parameters": {}}}
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": [*TOOLS, clock]}
    named = {"type": "function", "function": {"name": "clock"}}
    out = chat_request({**body, "tool_choice": named}, "l", stream=False)
    assert out["tools"] == [clock]
    allowed = {
        "type": "allowed_tools",
        "allowed_tools": {
            "mode": "auto",
            "tools": [{"type": "function", "function": {"name": "weather"}}],
        },
    }
    assert chat_request({**body, "tool_choice": allowed}, "l", stream=False)["tools"] == TOOLS
    required = chat_request({**body, "tool_choice": "required"}, "l", stream=False)
    assert required["tools"] == [*TOOLS, clock]


async def test_embeddings_come_as_base64_float32_when_asked():
    import base64
    import struct

    answer = {"model": "nomic", "embeddings": [[0.5, -1.25]], "prompt_eval_count": 2}
    _, handler = recorder(httpx.Response(200, json=answer), httpx.Response(200, json=answer))
    adapter = adapter_for(handler)
    body = {"input": "hi", "encoding_format": "base64"}
    result = await adapter.embed(VendorCall(model="nomic", body=body, api_key=""))
    raw = base64.b64decode(result.body["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (0.5, -1.25)
    plain = await adapter.embed(VendorCall(model="nomic", body={"input": "hi"}, api_key=""))
    assert plain.body["data"][0]["embedding"] == [0.5, -1.25]


async def test_usage_counts_cached_prompt_tokens_and_is_never_free() -> None:
    """prompt_eval_cached_count is the part of prompt_eval_count read from Ollama's
    cache; an Ollama that leaves the prompt count out (older ones, on a cached prompt)
    gets an estimate, not zero."""
    cached = final(prompt_eval_count=1000, prompt_eval_cached_count=960)
    _, handler = recorder(httpx.Response(200, json=cached))
    usage = (await adapter_for(handler).chat(call())).usage
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (1000, 960, 9)
    missing = final()
    del missing["prompt_eval_count"]
    _, handler = recorder(httpx.Response(200, json=missing))
    usage = (await adapter_for(handler).chat(call())).usage
    assert usage.input_tokens > 0 and usage.output_tokens == 9


async def test_a_pdf_goes_on_to_the_next_candidate_and_leaves_ollama_healthy() -> None:
    import time

    from gateway.anthropic_routes import neutral_request
    from schemas.config import Candidate
    from tests.support.envelopes import request_envelope
    from tests.unit.test_dispatch import real_vendors

    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
    dispatch, seen = real_vendors(
        ollama=httpx.Response(200, json=final()), backup=httpx.Response(200, json=answer)
    )
    plan = [Candidate(vendor="ollama", model="llama3.2"), Candidate(vendor="backup", model="m")]
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}
    content = [{"type": "document", "source": pdf}, {"type": "text", "text": "Summarise"}]
    body = neutral_request(
        {"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": content}]}
    )
    env = request_envelope(deadline_ms=int((time.time() + 5) * 1000), body=body)
    out = await dispatch.run(env, plan, None)
    assert out.error is None and out.candidate == plan[1]
    assert seen[0].error_code == "vendor_unsupported"  # which health does not count

    # With nobody else to ask, the client hears why, as a 400.
    out = await dispatch.run(env, plan[:1], None)
    assert out.error is not None and (out.error.status, out.error.type) == (
        400,
        "invalid_request_error",
    )
    assert "'file'" in out.error.message
