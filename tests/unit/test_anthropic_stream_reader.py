"""The Anthropic stream reader (``MessageEventsToChunks``) with blocks it does not know and
blocks given whole at their start: a streamed answer comes out as the whole one does."""

from __future__ import annotations

from typing import Any

from schemas.formats.anthropic import MessageEventsToChunks, messages_response_to_openai
from schemas.formats.openai import assemble_chunks
from tests.support.anthropic_stream import blocks, client_message

START: dict[str, Any] = {
    "type": "message_start",
    "message": {
        "id": "msg_v",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1},
    },
}


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, said: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": said}


def stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def text(index: int, said: str) -> list[dict[str, Any]]:
    return [
        block_start(index, {"type": "text", "text": ""}),
        delta(index, {"type": "text_delta", "text": said}),
        stop(index),
    ]


END = [
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}},
    {"type": "message_stop"},
]


def chunks_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    convert = MessageEventsToChunks(created=1)
    out: list[dict[str, Any]] = []
    for event in events:
        out += [c for c in convert.feed(event["type"], event) if isinstance(c, dict)]
    return out


def test_a_block_skipped_at_its_start_is_skipped_whole() -> None:
    """A server tool's call streams its input as JSON deltas too: they are no call of the
    client's (it would get a nameless tool to run, and stop_reason tool_use)."""
    server_call = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    result = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}
    events = [
        START,
        block_start(0, server_call),
        delta(0, {"type": "input_json_delta", "partial_json": '{"query": "x"}'}),
        stop(0),
        block_start(1, result),
        stop(1),
        *text(2, "answer"),
        *END,
    ]
    chunks = chunks_of(events)
    assert not any(c["choices"][0]["delta"].get("tool_calls") for c in chunks)
    whole = assemble_chunks(chunks)["choices"][0]
    assert whole["finish_reason"] == "stop" and "tool_calls" not in whole["message"]
    message = client_message(chunks)
    assert blocks(message) == [{"type": "text", "text": "answer"}]
    assert message.stop_reason == "end_turn"
    # ...as the whole answer has it.
    body = {
        **START["message"],
        "content": [server_call, result, {"type": "text", "text": "answer"}],
    }
    answer, _ = messages_response_to_openai({**body, "stop_reason": "end_turn"})
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "answer"}


def test_a_tool_call_after_a_skipped_block_keeps_its_own_arguments() -> None:
    server_call = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    call = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    events = [
        START,
        block_start(0, server_call),
        delta(0, {"type": "input_json_delta", "partial_json": '{"query": "x"}'}),
        stop(0),
        block_start(1, call),
        delta(1, {"type": "input_json_delta", "partial_json": '{"city": "Oslo"}'}),
        stop(1),
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {}},
        {"type": "message_stop"},
    ]
    calls = assemble_chunks(chunks_of(events))["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [
        ("toolu_1", '{"city": "Oslo"}')
    ]


def test_a_signature_given_at_the_thinking_block_s_start_is_kept() -> None:
    """A compatible server may give a thinking block whole at its start, signature and
    all: without it the client's next tool-loop turn fails at Anthropic."""
    whole = {"type": "thinking", "thinking": "whole", "signature": "SIGW"}
    events = [START, block_start(0, whole), stop(0), *text(1, "x"), *END]
    chunks = chunks_of(events)
    assert blocks(client_message(chunks)) == [whole, {"type": "text", "text": "x"}]
    message = assemble_chunks(chunks)["choices"][0]["message"]
    assert message["thinking_blocks"] == [whole], "an OpenAI client's to send back too"
