"""Extended thinking from an Anthropic vendor to an Anthropic client, through the neutral
(OpenAI-shaped) body and chunks: blocks, signatures and order survive, streamed or not,
cached or not, and vendors that do not know them never see them."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.formats.anthropic import (
    MessageEventsToChunks,
    messages_request_to_openai,
    messages_response_to_openai,
    openai_request_to_messages,
    openai_response_to_messages,
    thinking_effort,
    without_cache_control,
)
from schemas.formats.openai import assemble_chunks, response_to_chunks
from schemas.usage import Usage
from tests.support.anthropic_stream import blocks, client_message, through_a_stream, vendor_events

THOUGHT = {
    "type": "thinking",
    "thinking": "The user wants the weather. Call the tool.",
    "signature": "sig-1",
}
REDACTED = {"type": "redacted_thinking", "data": "EnCrYpTeD"}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}
VENDOR_MESSAGE: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [THOUGHT, REDACTED, {"type": "text", "text": "Checking."}, TOOL_USE],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 30},
}


def test_a_streamed_answer_keeps_its_thinking_blocks_and_signatures() -> None:
    to_chunks = MessageEventsToChunks(created=1)
    chunks: list[dict[str, Any]] = []
    for name, data in vendor_events(VENDOR_MESSAGE):
        chunks += [c for c in to_chunks.feed(name, data) if isinstance(c, dict)]
    assert blocks(client_message(chunks)) == VENDOR_MESSAGE["content"]
    # cached as a whole answer and replayed: the same blocks again
    assembled = assemble_chunks(chunks)
    assert assembled["choices"][0]["message"]["thinking_blocks"] == [THOUGHT, REDACTED]
    assert blocks(client_message(response_to_chunks(assembled))) == VENDOR_MESSAGE["content"]
    plain = openai_response_to_messages(assembled, Usage(), "claude-alias")
    assert plain["content"] == VENDOR_MESSAGE["content"]


def test_a_whole_answer_keeps_them_and_openai_clients_get_reasoning_content() -> None:
    neutral, _ = messages_response_to_openai(VENDOR_MESSAGE)
    message = neutral["choices"][0]["message"]
    assert message["reasoning_content"] == THOUGHT["thinking"]
    assert (
        openai_response_to_messages(neutral, Usage(), "a")["content"] == VENDOR_MESSAGE["content"]
    )
    assert blocks(client_message(response_to_chunks(neutral))) == VENDOR_MESSAGE["content"]


def test_the_request_carries_thinking_to_anthropic_and_only_there() -> None:
    request = {
        "model": "claude-alias",
        "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [THOUGHT, TOOL_USE]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "12C"}],
            },
        ],
    }
    neutral = messages_request_to_openai(request)
    vendor = openai_request_to_messages(neutral, "claude-x")
    assert vendor["thinking"] == request["thinking"]
    assert vendor["messages"][1]["content"] == [THOUGHT, TOOL_USE]  # signature intact, first
    plain = without_cache_control(neutral)
    assert "thinking" not in plain
    assert all("thinking_blocks" not in m for m in plain["messages"])
    assert "thinking_blocks" in neutral["messages"][1], "the original is left alone"


THOUGHT_B = {"type": "thinking", "thinking": "Now the second city.", "signature": "sig-2"}
TOOL_B = {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}}
OMITTED = {"type": "thinking", "thinking": "", "signature": "sig-omitted"}


def test_thinking_between_tool_calls_keeps_its_place_every_way() -> None:
    content = [THOUGHT, TOOL_USE, THOUGHT_B, TOOL_B]
    message = {**VENDOR_MESSAGE, "content": content}
    chunks, streamed = through_a_stream(message)
    assert blocks(streamed) == content
    assembled = assemble_chunks(chunks)
    assert openai_response_to_messages(assembled, Usage(), "a")["content"] == content
    assert blocks(client_message(response_to_chunks(assembled))) == content
    neutral, _ = messages_response_to_openai(message)
    assert openai_response_to_messages(neutral, Usage(), "a")["content"] == content
    history = messages_request_to_openai(
        {
            "model": "m",
            "max_tokens": 4096,
            "messages": [
                {"role": "user", "content": "Oslo and Rome?"},
                {"role": "assistant", "content": content},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12C"},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "25C"},
                    ],
                },
            ],
        }
    )
    assert openai_request_to_messages(history, "claude-x")["messages"][1]["content"] == content


def test_omitted_thinking_keeps_its_signed_block() -> None:
    message = {**VENDOR_MESSAGE, "content": [OMITTED, TOOL_USE]}
    chunks, streamed = through_a_stream(message)
    assert blocks(streamed) == [OMITTED, TOOL_USE]
    assembled = assemble_chunks(chunks)
    assert assembled["choices"][0]["message"]["thinking_blocks"] == [OMITTED]
    assert blocks(client_message(response_to_chunks(assembled))) == [OMITTED, TOOL_USE]


def test_other_vendors_reasoning_is_not_made_into_thinking_blocks() -> None:
    chunks = [
        {
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "reasoning_content": "Let me think"}}
            ]
        },
        {"choices": [{"index": 0, "delta": {"content": "Answer"}, "finish_reason": "stop"}]},
    ]
    assert blocks(client_message(chunks)) == [{"type": "text", "text": "Answer"}]
    message = assemble_chunks(chunks)["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me think"  # for OpenAI clients
    assert "thinking_blocks" not in message and "anthropic_content" not in message
    assert openai_response_to_messages(assemble_chunks(chunks), Usage(), "a")["content"] == [
        {"type": "text", "text": "Answer"}
    ]


def test_an_echoed_message_reaches_an_openai_vendor_without_any_thinking() -> None:
    neutral, _ = messages_response_to_openai({**VENDOR_MESSAGE, "content": [THOUGHT, TOOL_USE]})
    echoed = {
        **neutral["choices"][0]["message"],
        "thinking_signature": "sig-1",  # what the openai SDK folds into a streamed message
        "redacted_thinking": "x",
    }
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}, echoed]}
    sent = without_cache_control(body)["messages"][1]
    assert set(sent) == {"role", "content", "tool_calls"}


def test_a_message_the_openai_sdk_folded_from_a_stream_sends_its_signed_thinking_back() -> None:
    """``chat.completions.stream()`` folds the thinking deltas into one message (no
    ``thinking_blocks``); echoed in a tool loop, its signed thinking still goes back first,
    as Anthropic requires of a turn that thought before calling a tool."""
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    neutral, _ = messages_response_to_openai(
        {**VENDOR_MESSAGE, "content": [THOUGHT, {"type": "text", "text": "Checking."}, TOOL_USE]}
    )
    state = ChatCompletionStreamState()
    for chunk in response_to_chunks({**neutral, "object": "chat.completion"}):
        state.handle_chunk(
            ChatCompletionChunk.model_validate({**chunk, "object": "chat.completion.chunk"})
        )
    folded = state.get_final_completion().choices[0].message.model_dump(exclude_none=True)
    folded.pop("parsed", None)
    assert "thinking_blocks" not in folded and folded["thinking_signature"] == "sig-1"
    result = {"role": "tool", "tool_call_id": "toolu_1", "content": "12C"}
    body = {"messages": [{"role": "user", "content": "weather?"}, folded, result]}
    sent = openai_request_to_messages(body, "claude-x")["messages"][1]["content"]
    assert [b["type"] for b in sent] == ["thinking", "text", "tool_use"]
    assert sent[0] == THOUGHT


def test_unsigned_reasoning_in_an_echoed_message_is_no_thinking_block() -> None:
    echoed = {"role": "assistant", "content": "Hi", "reasoning_content": "hmm"}
    body = {"messages": [{"role": "user", "content": "q"}, echoed]}
    sent = openai_request_to_messages(body, "claude-x")["messages"][1]["content"]
    assert [b["type"] for b in sent] == ["text"]


async def test_a_streamed_json_answer_with_thinking_is_the_json_alone() -> None:
    """JSON mode with thinking on: Claude may write a sentence before it calls the JSON
    answer tool; the Anthropic adapter's stream leaves it out, as its whole answer does."""
    import json

    import httpx

    from agents.adapters import AnthropicAdapter, VendorCall
    from schemas.config import VendorConfig

    answer = {"type": "tool_use", "id": "toolu_1", "name": "relay_json_answer", "input": {"a": 1}}
    message = {
        **VENDOR_MESSAGE,
        "content": [THOUGHT, {"type": "text", "text": "Here is your JSON."}, answer],
    }
    text = "".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in vendor_events(message)
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    adapter = AnthropicAdapter(
        VendorConfig(kind="anthropic", base_url="http://anthropic.test"),
        httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )
    body = {
        "messages": [{"role": "user", "content": "json please"}],
        "response_format": {"type": "json_object"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }
    call = VendorCall(model="claude-x", body=body, api_key="k")
    chunks = [item async for item in adapter.stream(call) if isinstance(item, dict)]
    streamed = assemble_chunks(chunks)["choices"][0]["message"]
    assert json.loads(streamed["content"]) == {"a": 1}
    assert streamed["reasoning_content"] == THOUGHT["thinking"]


def _to_other_vendors(**fields: Any) -> dict[str, Any]:
    """An Anthropic client's request as an OpenAI-format vendor gets it."""
    request = {"model": "a", "max_tokens": 32000, "messages": [{"role": "user", "content": "q"}]}
    return without_cache_control(messages_request_to_openai({**request, **fields}))


@pytest.mark.parametrize(
    ("thinking", "output_config", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, None, "low"),
        ({"type": "enabled", "budget_tokens": 2048}, None, "low"),
        ({"type": "enabled", "budget_tokens": 4096}, None, "medium"),
        ({"type": "enabled", "budget_tokens": 8192}, None, "medium"),
        ({"type": "enabled", "budget_tokens": 16384}, None, "high"),
        ({"type": "enabled", "budget_tokens": 31999}, None, "high"),  # Claude Code's: no xhigh
        ({"type": "enabled", "budget_tokens": 4096}, {"effort": "high"}, "medium"),
        ({"type": "adaptive"}, {"effort": "low"}, "low"),
        ({"type": "adaptive"}, {"effort": "max"}, "high"),
        ({"type": "adaptive"}, None, "high"),  # Anthropic's default effort
        ({"type": "disabled"}, None, None),  # OpenAI's models before gpt-5.1 refuse "none"
        (None, {"effort": "low"}, None),  # effort alone asks for no reasoning
    ],
)
def test_thinking_reaches_openai_format_vendors_as_reasoning_effort(
    thinking, output_config, effort
) -> None:
    fields = {"thinking": thinking, "output_config": output_config}
    body = _to_other_vendors(**{k: v for k, v in fields.items() if v is not None})
    assert body.get("reasoning_effort") == effort
    assert "thinking" not in body and "output_config" not in body


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_an_effort_through_a_thinking_budget_comes_back_the_same(effort) -> None:
    """reasoning_effort -> Anthropic's budget (an OpenAI client, Claude serving) and that
    budget -> reasoning_effort (an Anthropic client, another vendor) agree."""
    body = {"messages": [{"role": "user", "content": "q"}], "reasoning_effort": effort}
    thinking = openai_request_to_messages(body, "claude-x")["thinking"]
    assert thinking_effort({"thinking": thinking}) == effort


def test_a_body_s_own_reasoning_effort_wins_over_its_thinking() -> None:
    body = {
        "messages": [{"role": "user", "content": "q"}],
        "reasoning_effort": "minimal",
        "thinking": {"type": "enabled", "budget_tokens": 20000},
    }
    assert without_cache_control(body)["reasoning_effort"] == "minimal"
