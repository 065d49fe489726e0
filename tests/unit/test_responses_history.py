"""A Responses tool loop whose turn interleaves text and function calls (Claude's text
between parallel calls, GPT-5's preambles) sent back: one assistant turn holding every
call, then their tool messages, as OpenAI-format servers demand; an Anthropic vendor
still gets the turn's blocks in their order; errors name the items right."""

from __future__ import annotations

from typing import Any

from agents.adapters.ollama import chat_request
from schemas.errors import BadRequest
from schemas.formats.anthropic import (
    MessageEventsToChunks,
    openai_request_to_messages,
    without_cache_control,
)
from schemas.formats.responses import (
    ChunksToResponseEvents,
    in_responses_words,
    responses_path,
    responses_request_to_openai,
)
from schemas.usage import Usage

USER = {"role": "user", "content": "Weather in Paris and London?"}


def said(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "output_text", "text": text}]}


def fc(call_id: str, name: str) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": "{}"}


def out(call_id: str, output: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


INTERLEAVED = [
    USER,
    said("Checking Paris."),
    fc("call_A", "a"),
    said("And London."),
    fc("call_B", "b"),
    out("call_A", "12C"),
    out("call_B", "9C"),
]
REQUEST = {"model": "m", "input": INTERLEAVED}


def chat_calls(call_ids: list[str]) -> list[dict[str, Any]]:
    return [
        {"id": c, "type": "function", "function": {"name": c[-1].lower(), "arguments": "{}"}}
        for c in call_ids
    ]


def test_text_between_calls_is_said_by_the_one_turn_that_made_both_calls() -> None:
    messages = responses_request_to_openai(REQUEST)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    turn = messages[1]
    assert turn["content"] == [
        {"type": "text", "text": "Checking Paris."},
        {"type": "text", "text": "And London."},
    ]
    assert turn["tool_calls"] == chat_calls(["call_A", "call_B"])
    assert [m["tool_call_id"] for m in messages[2:]] == ["call_A", "call_B"]
    # What an OpenAI-format vendor is sent: the same turns, the extensions left out.
    plain = without_cache_control(responses_request_to_openai(REQUEST))["messages"]
    assert [m["role"] for m in plain] == ["user", "assistant", "tool", "tool"]
    assert "anthropic_content" not in plain[1]
    ollama = chat_request(responses_request_to_openai(REQUEST), "llama", stream=False)
    assert [m["role"] for m in ollama["messages"]] == ["user", "assistant", "tool", "tool"]
    assert len(ollama["messages"][1]["tool_calls"]) == 2


def test_an_anthropic_vendor_still_gets_the_turn_s_blocks_in_their_order() -> None:
    sent = openai_request_to_messages(responses_request_to_openai(REQUEST), "claude-x")
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["messages"][1]["content"] == [
        {"type": "text", "text": "Checking Paris."},
        {"type": "tool_use", "id": "call_A", "name": "a", "input": {}},
        {"type": "text", "text": "And London."},
        {"type": "tool_use", "id": "call_B", "name": "b", "input": {}},
    ]


def test_text_after_a_turn_s_only_call_is_that_turn_s() -> None:
    request = {
        "model": "m",
        "input": [USER, fc("call_A", "a"), said("One moment."), out("call_A", "1")],
    }
    messages = responses_request_to_openai(request)["messages"]
    assert messages[1:] == [
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "One moment."}],
            "tool_calls": chat_calls(["call_A"]),
            "anthropic_content": [
                {"type": "tool_use", "id": "call_A", "name": "a", "input": {}},
                {"type": "text", "text": "One moment."},
            ],
        },
        {"role": "tool", "tool_call_id": "call_A", "content": "1"},
    ]
    empty = {"model": "m", "input": [USER, fc("call_A", "a"), said(""), out("call_A", "1")]}
    turn = responses_request_to_openai(empty)["messages"][1]
    assert turn["content"] is None and "anthropic_content" not in turn


def test_only_a_turn_with_calls_takes_the_text_that_follows() -> None:
    """Text before a turn's calls, a second assistant message with no calls before it,
    and an assistant message after the tool results are their own as before."""
    items = [
        USER,
        said("Hm."),
        said("Checking."),
        fc("call_A", "a"),
        out("call_A", "1"),
        said("12C."),
    ]
    messages = responses_request_to_openai({"model": "m", "input": items})["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "assistant", "tool", "assistant"]
    assert messages[2] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Checking."}],
        "tool_calls": chat_calls(["call_A"]),
    }


def test_a_stream_s_interleaved_items_sent_back_make_one_turn() -> None:
    """The e5 round trip: an Anthropic vendor's stream (text, call, text, call) as the
    Responses events a client gets, its output items sent back with both results."""
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Checking A."}}),
        ("content_block_stop", {"index": 0}),
        ("content_block_start", {"index": 1, "content_block": {"type": "tool_use", "id": "toolu_A", "name": "a", "input": {}}}),
        ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        ("content_block_stop", {"index": 1}),
        ("content_block_start", {"index": 2, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 2, "delta": {"type": "text_delta", "text": "And B."}}),
        ("content_block_stop", {"index": 2}),
        ("content_block_start", {"index": 3, "content_block": {"type": "tool_use", "id": "toolu_B", "name": "b", "input": {}}}),
        ("content_block_delta", {"index": 3, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        ("content_block_stop", {"index": 3}),
        ("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
        ("message_stop", {}),
    ]  # fmt: skip
    chunks = MessageEventsToChunks()
    responses = ChunksToResponseEvents({"model": "claude", "input": "q"}, "resp_1")
    emitted = responses.start()
    for name, data in events:
        for c in chunks.feed(name, data):
            emitted += responses.finish(c) if isinstance(c, Usage) else responses.feed(c)
    output = emitted[-1][1]["response"]["output"]
    assert [o["type"] for o in output] == ["message", "function_call"] * 2
    items = [USER, *output, out("toolu_A", "1"), out("toolu_B", "2")]
    body = responses_request_to_openai({"model": "gpt-4o-mini", "input": items})
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in body["messages"][1]["tool_calls"]] == ["toolu_A", "toolu_B"]
    blocks = openai_request_to_messages(body, "claude-x")["messages"][1]["content"]
    assert [(b["type"], b.get("text") or b.get("id")) for b in blocks] == [
        ("text", "Checking A."),
        ("tool_use", "toolu_A"),
        ("text", "And B."),
        ("tool_use", "toolu_B"),
    ]


def test_an_error_on_a_folded_turn_names_its_calls_and_plain_input_for_the_rest() -> None:
    """A call's field is still its item's; the turn's content is several items' (which
    one is not said), so an error about it names ``input``, never the wrong item."""
    assert responses_path("messages.1.tool_calls.0.id", REQUEST) == "input.2.call_id"
    assert responses_path("messages.1.tool_calls.1.function.arguments", REQUEST) == (
        "input.4.arguments"
    )
    for path in ("messages.1", "messages.1.content", "messages.1.content.1", "messages.1.role"):
        assert responses_path(path, REQUEST) == "input", path
    assert responses_path("messages.0.content", REQUEST) == "input.0.content"
    assert responses_path("messages.3.content", REQUEST) == "input.6.output"
    calls_first = {
        "model": "m",
        "input": [USER, fc("call_A", "a"), said("Hm."), out("call_A", "1")],
    }
    assert responses_path("messages.1.content.0", calls_first) == "input"
    assert responses_path("messages.1.tool_calls.0.id", calls_first) == "input.1.call_id"
    err = BadRequest("messages.1.content.1: too long", param="messages.1.content.1")
    assert (in_responses_words(err, REQUEST).message, err.param) == ("input: too long", "input")
