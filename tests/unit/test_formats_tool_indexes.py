"""Parallel tool calls from servers that do not number them as OpenAI does (Ollama's /v1
sends every call at index 0, older builds no index at all): each call stays its own in
the whole answer, and streamed to Anthropic and Responses clients."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from schemas.formats.openai import (
    ToolCallIndexes,
    assemble_chunks,
    faithful_chunks,
    response_to_chunks,
)
from schemas.formats.responses import ChunksToResponseEvents
from schemas.usage import Usage
from tests.support.anthropic_stream import blocks, client_message

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}


def frag(index: int | None, arguments: str = "", **first: Any) -> dict[str, Any]:
    """A tool-call fragment (``index`` None: none given)."""
    fn: dict[str, Any] = {"arguments": arguments}
    if "name" in first:
        fn["name"] = first.pop("name")
    out: dict[str, Any] = {} if index is None else {"index": index}
    return {**out, **first, "function": fn}


def chunk(*frags: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    delta = {"tool_calls": list(frags)} if frags else {}
    return {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def numbers(*frags: dict[str, Any]) -> list[int]:
    indexes = ToolCallIndexes()
    return [indexes.of(f) for f in frags]


def test_openai_s_own_numbering_is_kept() -> None:
    assert numbers(
        frag(0, "", id="call_a", type="function", name="get_weather"),
        frag(0, '{"city":'),
        frag(0, '"Oslo"}'),
        frag(1, "", id="call_b", type="function", name="get_time"),
        frag(1, "{}"),
    ) == [0, 0, 0, 1, 1]


def test_interleaved_fragments_keep_their_calls() -> None:
    assert numbers(
        frag(0, "", id="call_a", name="get_weather"),
        frag(1, "", id="call_b", name="get_time"),
        frag(0, "{}"),
        frag(1, "{}"),
    ) == [0, 1, 0, 1]


def test_an_index_given_again_with_another_id_is_another_call() -> None:
    """Ollama's /v1: each call whole, all at index 0, each with its own id."""
    assert numbers(
        frag(0, '{"city":"Paris"}', id="call_a", name="get_weather"),
        frag(0, '{"city":"Oslo"}', id="call_b", name="get_time"),
        frag(0, '{"city":"Rome"}', id="call_c", name="get_weather"),
    ) == [0, 1, 2]


def test_fragments_with_no_index_go_on_with_the_last_call() -> None:
    """Older Ollama builds send no index; a fragment with none continues the call the last
    one was part of (not index 0's), and a new id is a new call."""
    assert numbers(
        frag(None, '{"city":"Paris"}', id="call_a", name="get_weather"),
        frag(None, '{"city":"Oslo"}', id="call_b", name="get_time"),
        frag(None, ""),
    ) == [0, 1, 1]
    assert numbers(
        frag(0, "", id="call_a", name="get_weather"),
        frag(1, "", id="call_b", name="get_time"),
        frag(None, "{}"),
    ) == [0, 1, 1]


def test_a_reused_index_s_later_fragments_go_to_the_call_opened_there_last() -> None:
    assert numbers(
        frag(0, "", id="call_a", name="get_weather"),
        frag(0, '{"city":"Paris"}'),
        frag(0, "", id="call_b", name="get_time"),
        frag(0, '{"city":'),
        frag(0, '"Oslo"}'),
    ) == [0, 0, 1, 1, 1]


def test_another_name_at_an_index_is_another_call_even_without_ids() -> None:
    assert numbers(
        frag(0, "{}", name="get_weather"),
        frag(0, "{}", name="get_time"),
    ) == [0, 1]


def test_an_id_or_name_said_again_is_the_same_call() -> None:
    """Fireworks and MiniMax on NVIDIA NIM repeat the id, type and name on every fragment;
    an id said again after another call's goes back to its own call."""
    assert numbers(
        frag(0, "", id="call_a", type="function", name="debug_tool"),
        frag(0, '{"a":', id="call_a", type="function", name="debug_tool"),
        frag(0, "1}", id="call_a", type="function", name="debug_tool"),
    ) == [0, 0, 0]
    assert numbers(
        frag(0, "{}", id="call_a", name="get_weather"),
        frag(0, "{}", id="call_b", name="get_time"),
        frag(0, "", id="call_a"),
    ) == [0, 1, 0]


def test_another_id_before_a_call_s_arguments_are_whole_json_goes_on_with_it() -> None:
    """Poolside (and mlx-openai-server before its #216) gives a call another id after
    its first fragment; a vLLM build gave every fragment a new one.  The call is one
    (the new id, said again, finds it), and a call after it with an id of its own, once
    the arguments are whole, is the next even at the same index."""
    indexes = ToolCallIndexes()
    said = [
        frag(0, "", id="call_a", name="get_weather"),
        frag(0, '{"city":', id="call_a2"),
        frag(0, '"Paris"}', id="call_a3"),
        frag(0, "", id="call_b", name="get_time"),
        frag(0, '{"city":"Oslo"}', id="call_b2"),
        frag(1, "", id="call_a2"),
    ]
    assert [indexes.of(f) for f in said] == [0, 0, 0, 1, 1, 0]
    assert [(indexes.call_id(n), indexes.name(n)) for n in (0, 1)] == [
        ("call_a", "get_weather"),
        ("call_b", "get_time"),
    ]


def test_a_name_in_pieces_is_joined_and_a_name_said_again_is_not() -> None:
    """Gemini streams a name in pieces; Fireworks repeats it whole on every fragment."""
    indexes = ToolCallIndexes()
    said = [
        frag(0, "", id="call_a", name="edit_ex"),
        frag(0, "", name="isting_file"),
        frag(0, '{"path":"a"}', id="call_a", name="edit_existing_file"),
        frag(0, "{}", id="call_b", name="get_time"),
        frag(0, "", id="call_b", name="get_time"),
    ]
    assert [indexes.of(f) for f in said] == [0, 0, 0, 1, 1]
    assert [indexes.name(n) for n in (0, 1)] == ["edit_existing_file", "get_time"]


def test_a_call_named_after_its_first_fragment_is_one_call() -> None:
    assert numbers(
        frag(0, ""),
        frag(0, '{"city":', id="call_late", type="function", name="get_weather"),
        frag(0, '"Oslo"}'),
    ) == [0, 0, 0]
    assert numbers(
        frag(0, "", id="call_late"),
        frag(0, '{"city":', name="get_weather"),
    ) == [0, 0]


END = [chunk(finish="tool_calls")]
CALLS = [
    ("call_a", "get_weather", {"city": "Paris"}),
    ("call_b", "get_time", {"city": "Oslo"}),
]
STREAMS = {
    # Ollama 0.20.x /v1 (ollama/ollama#15457): every call whole, each at index 0.
    "whole at index 0": [
        chunk(frag(0, '{"city":"Paris"}', id="call_a", type="function", name="get_weather")),
        chunk(frag(0, '{"city":"Oslo"}', id="call_b", type="function", name="get_time")),
        *END,
    ],
    # Older Ollama builds (ollama/ollama#7881): no index at all.
    "no index": [
        chunk(frag(None, '{"city":"Paris"}', id="call_a", type="function", name="get_weather")),
        chunk(frag(None, '{"city":"Oslo"}', id="call_b", type="function", name="get_time")),
        *END,
    ],
    # Both in one chunk, at index 0.
    "one chunk": [
        chunk(
            frag(0, '{"city":"Paris"}', id="call_a", name="get_weather"),
            frag(0, '{"city":"Oslo"}', id="call_b", name="get_time"),
        ),
        *END,
    ],
    # Arguments in fragments, each call's at index 0.
    "fragments at index 0": [
        chunk(frag(0, "", id="call_a", type="function", name="get_weather")),
        chunk(frag(0, '{"city":')),
        chunk(frag(0, '"Paris"}')),
        chunk(frag(0, "", id="call_b", type="function", name="get_time")),
        chunk(frag(0, '{"city":')),
        chunk(frag(0, '"Oslo"}')),
        *END,
    ],
    # Poolside (poolsideai/pool#9; mlx-openai-server before its #216): a call's first
    # fragment carries one id, its later fragments another.
    "id changed after the first fragment": [
        chunk(frag(0, "", id="call_a", type="function", name="get_weather")),
        chunk(frag(0, '{"city":', id="call_a2")),
        chunk(frag(0, '"Paris"}', id="call_a2")),
        chunk(frag(1, "", id="call_b", type="function", name="get_time")),
        chunk(frag(1, '{"city":"Oslo"}', id="call_b2")),
        *END,
    ],
    # Gemini's OpenAI endpoint (continuedev/continue#5849): a name in pieces.
    "name in pieces": [
        chunk(frag(0, "", id="call_a", type="function", name="get_")),
        chunk(frag(0, "", name="weather")),
        chunk(frag(0, '{"city":"Paris"}')),
        chunk(frag(1, "", id="call_b", type="function", name="get_t")),
        chunk(frag(1, '{"city":', name="ime")),
        chunk(frag(1, '"Oslo"}')),
        *END,
    ],
}


def whole_calls(chunks: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    message = assemble_chunks(chunks)["choices"][0]["message"]
    return [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in message["tool_calls"]
    ]


def responses_calls(chunks: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    """The function calls of the finished Response, the events read by the openai SDK's
    accumulator on the way."""
    events = ChunksToResponseEvents({"model": "m", "tools": [WEATHER, TIME]}, "resp_t")
    out = events.start()
    for c in chunks:
        out += events.feed(c)
    out += events.finish(Usage())
    state = ResponseStreamState(input_tools=[WEATHER, TIME], text_format=omit)  # type: ignore[list-item,var-annotated]
    for _, data in out:
        state.handle_event(EVENTS.validate_python(data))
    output = out[-1][1]["response"]["output"]
    return [(o["call_id"], o["name"], json.loads(o["arguments"])) for o in output]


@pytest.mark.parametrize("shape", STREAMS)
def test_each_parallel_call_stays_its_own_whole_and_streamed(shape: str) -> None:
    """Two calls the vendor made are two calls: in the whole answer (cached, and served
    to non-streamed waiters and replays), to an Anthropic client (what the anthropic
    SDK makes of the events) and to a Responses client."""
    chunks = STREAMS[shape]
    assert whole_calls(chunks) == CALLS
    assert faithful_chunks(chunks), "the whole answer is the stream's: it may be cached"
    assert translated_calls(chunks) == (CALLS, CALLS)
    replayed = response_to_chunks(assemble_chunks(chunks))
    assert whole_calls(replayed) == CALLS, "a replay of the cached answer says the same"


def translated_calls(chunks: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """The calls an Anthropic client and a Responses client are told."""
    anthropic = [(b["id"], b["name"], b["input"]) for b in blocks(client_message(chunks))]
    return anthropic, responses_calls(chunks)


def test_an_anthropic_vendor_s_calls_come_numbered_as_openai_numbers_them() -> None:
    """An Anthropic vendor's tool_use blocks reach OpenAI-format clients numbered from 0,
    whatever their block index (text first, the JSON answer tool left out)."""
    from openai._models import construct_type
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    from schemas.formats.anthropic import JSON_ANSWER_TOOL, MessageEventsToChunks
    from tests.support.anthropic_stream import vendor_events

    content = [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_j", "name": JSON_ANSWER_TOOL, "input": {"a": 1}},
        {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {"city": "Oslo"}},
    ]
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": content,
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    convert = MessageEventsToChunks(json_answer=True)
    items = [c for name, data in vendor_events(message) for c in convert.feed(name, data)]
    chunks = [c for c in items if isinstance(c, dict)]
    frags = [f for c in chunks for ch in c["choices"] for f in ch["delta"].get("tool_calls", [])]
    assert sorted({(f["index"], f.get("id")) for f in frags if f.get("id")}) == [
        (0, "toolu_a"),
        (1, "toolu_b"),
    ]
    state = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(construct_type(type_=ChatCompletionChunk, value={"id": "c", **c}))
    said = state.current_completion_snapshot.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in said] == [
        ("toolu_a", "get_weather", {"city": "Paris"}),
        ("toolu_b", "get_time", {"city": "Oslo"}),
    ]
