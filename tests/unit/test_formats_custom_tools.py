"""Custom tool calls and audio answers through stream assembly and cache replay.

Shapes, as OpenAI sends them (OpenAI's API reference and SDK types for the whole answer:
``ChatCompletionMessageCustomToolCall``, ``ChatCompletionAudio``; the stream's, which the
published chunk schema still lacks, from openai/openai-python#2530,
openai/openai-openapi#576 and #577, Oaklight/llm-rosetta#489's wire capture,
openai/openai-node#1206 and #1991, langchain-ai/langchain#29833):

- a whole answer's custom tool call is ``{"id", "type": "custom", "custom": {"name",
  "input"}}`` beside function calls in ``message.tool_calls``;
- a stream sends it as ``delta.tool_calls`` fragments: the first with index, id, type
  and ``custom: {"name", "input": ""}``, the next ones ``custom: {"input": piece}`` (with
  ``id``, ``type`` and ``function`` null, as captured from the wire);
- ``message.audio`` is ``{"id", "data", "expires_at", "transcript"}``; a stream sends
  ``delta.audio`` fragments: the id with the first transcript piece, more transcript,
  the base64 data in pieces, and ``expires_at`` (possibly alone in the last chunk, with
  no finish_reason).
"""

from __future__ import annotations

import copy
from typing import Any

from openai._models import construct_type
from openai.lib.streaming.chat._completions import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from schemas.formats.functions import answer_as_function_call, chunk_as_function_call
from schemas.formats.openai import (
    answer_chars,
    assemble_chunks,
    faithful_chunks,
    response_to_chunks,
    tool_use_block,
)
from schemas.formats.responses import ChunksToResponseEvents, openai_response_to_responses
from schemas.usage import Usage
from tables.cache import storable

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700, "model": "gpt-5"}
CODE = "print('hi')\nfor i in range(3):\n    print(i)\n"
CUSTOM = {"id": "call_C1", "type": "custom", "custom": {"name": "code_exec", "input": CODE}}
WEATHER = {
    "id": "call_F1",
    "type": "function",
    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
}
GRAMMAR = {"id": "call_C2", "type": "custom", "custom": {"name": "sql", "input": "SELECT 1"}}
AUDIO = {
    "id": "audio_672960c3a3e48190aed70377a7d6c941",
    "data": "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA=" * 700,
    "expires_at": 1730768595,
    "transcript": "Is a golden retriever a good family dog? Yes, very much so.",
}


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    return {**HEAD, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def whole(*messages: dict[str, Any], finish: str = "tool_calls") -> dict[str, Any]:
    """A non-streamed answer with one choice per message."""
    choices = [
        {"index": i, "message": m, "logprobs": None, "finish_reason": finish}
        for i, m in enumerate(messages)
    ]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700,
        "model": "gpt-5",
        "choices": choices,
    }


def calls(*tool_calls: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": list(tool_calls)}


def voice(audio: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "audio": audio}


def custom_stream(index: int, call: dict[str, Any], pieces: list[str]) -> list[dict[str, Any]]:
    """A custom call's fragments as OpenAI streams them."""
    custom = call["custom"]
    first = {"index": index, "id": call["id"], "type": "custom"}
    frags = [first | {"custom": {"name": custom["name"], "input": ""}}]
    frags += [
        {"index": index, "id": None, "type": None, "function": None, "custom": {"input": p}}
        for p in pieces
    ]
    assert "".join(pieces) == custom["input"]
    return [{"tool_calls": [f]} for f in frags]


def sdk_whole(body: dict[str, Any]) -> Any:
    """A whole answer as the ``openai`` SDK reads it."""
    return construct_type(type_=ChatCompletion, value=body)


def sdk_snapshot(chunks: list[dict[str, Any]]) -> Any:
    """What the ``openai`` SDK's stream helper makes of the chunks (its accumulation)."""
    state = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(construct_type(type_=ChatCompletionChunk, value=c))
    return state.current_completion_snapshot


def round_trip(body: dict[str, Any]) -> dict[str, Any]:
    chunks = response_to_chunks(body)
    assert faithful_chunks(chunks)
    return assemble_chunks(chunks)


# -- custom tool calls ---------------------------------------------------------------


def test_a_streamed_custom_call_assembles_to_what_openai_answers_whole() -> None:
    chunks = [chunk({"role": "assistant", "content": None})]
    chunks += [chunk(d) for d in custom_stream(0, CUSTOM, [CODE[:6], CODE[6:17], CODE[17:]])]
    chunks.append(chunk({}, "tool_calls"))

    assert assemble_chunks(chunks) == whole(calls(CUSTOM))
    assert faithful_chunks(chunks)
    call = sdk_whole(assemble_chunks(chunks)).choices[0].message.tool_calls[0]
    assert (call.type, call.id, call.custom.name, call.custom.input) == (
        "custom",
        "call_C1",
        "code_exec",
        CODE,
    )


def test_the_reviewers_custom_stream_assembles_whole() -> None:
    """/tmp/review_sdk/synth.py's stream: input "" on the first fragment, then pieces."""
    chunks = [
        chunk({"role": "assistant", "content": None}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_C1",
                        "type": "custom",
                        "custom": {"name": "code_exec", "input": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "custom": {"input": "print("}}]}),
        chunk({"tool_calls": [{"index": 0, "custom": {"input": "'hi')"}}]}),
        chunk({}, "tool_calls"),
    ]
    call = {
        "id": "call_C1",
        "type": "custom",
        "custom": {"name": "code_exec", "input": "print('hi')"},
    }
    assert assemble_chunks(chunks) == whole(calls(call))


def test_parallel_custom_and_function_calls_interleaved_assemble_whole() -> None:
    custom = custom_stream(0, CUSTOM, [CODE[:5], CODE[5:20], CODE[20:]])
    grammar = custom_stream(2, GRAMMAR, ["SELECT", " 1"])
    weather = [
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_F1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": ' "Oslo"}'}}]},
    ]
    # Fragments of the three calls interleave; each keeps to its own index.
    order = [custom[0], weather[0], grammar[0], custom[1], weather[1], grammar[1]]
    order += [custom[2], grammar[2], weather[2], custom[3]]
    chunks = [chunk({"role": "assistant", "content": None}), *map(chunk, order)]
    chunks.append(chunk({}, "tool_calls"))

    assert assemble_chunks(chunks) == whole(calls(CUSTOM, WEATHER, GRAMMAR))
    assert faithful_chunks(chunks)


def test_two_choices_of_custom_and_function_calls_assemble_apart() -> None:
    chunks = [chunk({"role": "assistant", "content": None}, index=i) for i in (0, 1)]
    for a, b in zip(
        custom_stream(0, CUSTOM, [CODE[:9], CODE[9:]]),
        [*custom_stream(0, GRAMMAR, ["SEL", "ECT 1"])],
        strict=True,
    ):
        chunks += [chunk(a, index=0), chunk(b, index=1)]
    chunks += [
        chunk({"tool_calls": [{**WEATHER, "index": 1}]}, index=1),
        chunk({}, "tool_calls", index=0),
        chunk({}, "tool_calls", index=1),
    ]
    assert assemble_chunks(chunks) == whole(calls(CUSTOM), calls(GRAMMAR, WEATHER))


def test_a_whole_answer_of_custom_calls_replays_and_assembles_back() -> None:
    body = whole(
        calls(CUSTOM, WEATHER, GRAMMAR),
        {"role": "assistant", "content": "Running it.", "tool_calls": [GRAMMAR]},
    )
    assert round_trip(body) == body

    deltas = [c["choices"][0]["delta"] for c in response_to_chunks(body)]
    assert deltas[0] == {"role": "assistant", "content": None}
    assert deltas[1] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_C1",
                "type": "custom",
                "custom": {"name": "code_exec", "input": ""},
            }
        ]
    }
    assert deltas[2] == {"tool_calls": [{"index": 0, "custom": {"input": CODE}}]}
    assert not any("function" in f for d in deltas[1:3] for f in d["tool_calls"])


def test_an_sdk_reading_a_replayed_custom_call_gets_its_name_and_input() -> None:
    """What the reviewer's stream replay lacked: the SDK's snapshot of the stream."""
    message = sdk_snapshot(response_to_chunks(whole(calls(CUSTOM, WEATHER)))).choices[0].message
    custom, function = message.tool_calls
    assert (custom.type, custom.id) == ("custom", "call_C1")
    assert custom.custom == {"name": "code_exec", "input": CODE}  # the SDK keeps it a dict
    assert (function.function.name, function.function.arguments) == ("weather", '{"city": "Oslo"}')
    assert message.content is None


def test_an_empty_custom_echo_on_function_fragments_is_no_custom_call() -> None:
    """Some servers echo ``custom: {}`` on every function fragment."""
    chunks = [
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_F1",
                        "type": "function",
                        "custom": {},
                        "function": {"name": "weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "custom": {}, "function": {"arguments": '{"city": "Oslo"}'}}
                ]
            }
        ),
        chunk({}, "tool_calls"),
    ]
    assert assemble_chunks(chunks)["choices"][0]["message"]["tool_calls"] == [WEATHER]
    assert faithful_chunks(chunks)


def test_a_custom_call_whose_stream_never_names_its_type_is_still_custom() -> None:
    chunks = [
        chunk({"tool_calls": [{"index": 0, "id": "call_C1", "custom": {"name": "code_exec"}}]}),
        chunk({"tool_calls": [{"index": 0, "custom": {"input": CODE}}]}),
        chunk({}, "tool_calls"),
    ]
    assert assemble_chunks(chunks)["choices"][0]["message"]["tool_calls"] == [CUSTOM]
    assert faithful_chunks(chunks)


def test_custom_input_counts_as_answer() -> None:
    frags = custom_stream(0, CUSTOM, [CODE])
    assert sum(answer_chars(chunk(d)) for d in frags) == len(CODE)


# -- audio ---------------------------------------------------------------------------


def audio_stream(
    audio: dict[str, Any], index: int = 0, finish: bool = True
) -> list[dict[str, Any]]:
    """An audio answer's chunks as OpenAI streams them (openai-node#1206, langchain#29833)."""
    words = audio["transcript"].split(" ")
    data = audio["data"]
    out = [chunk({"role": "assistant", "content": None, "refusal": None}, index=index)]
    out.append(chunk({"audio": {"id": audio["id"], "transcript": words[0]}}, index=index))
    out += [chunk({"audio": {"transcript": " " + w}}, index=index) for w in words[1:]]
    out += [
        chunk({"audio": {"data": data[i : i + 1000]}}, index=index)
        for i in range(0, len(data), 1000)
    ]
    out.append(chunk({"audio": {"expires_at": audio["expires_at"]}}, index=index))
    if finish:
        out.append(chunk({}, "stop", index=index))
    return out


def test_a_streamed_audio_answer_assembles_to_what_openai_answers_whole() -> None:
    chunks = audio_stream(AUDIO)
    assert assemble_chunks(chunks) == whole(voice(AUDIO), finish="stop")
    assert faithful_chunks(chunks)
    message = sdk_whole(assemble_chunks(chunks)).choices[0].message
    assert message.content is None and message.audio.transcript == AUDIO["transcript"]
    assert message.audio.data == AUDIO["data"] and message.audio.expires_at == AUDIO["expires_at"]


def test_an_audio_stream_ending_on_its_expiry_without_a_finish_reason_stops() -> None:
    """gpt-4o-audio-preview may end on an ``expires_at``-only chunk (openai-node#1206)."""
    chunks = audio_stream(AUDIO, finish=False)
    assert assemble_chunks(chunks) == whole(voice(AUDIO), finish="stop")


def test_the_reviewers_audio_stream_assembles_whole() -> None:
    """/tmp/review_sdk/synth.py's stream: every audio field on the first fragment."""
    chunks = [
        chunk({"role": "assistant", "content": None}),
        chunk(
            {
                "audio": {
                    "id": "audio_1",
                    "transcript": "Hello ",
                    "data": "UklGRiQA",
                    "expires_at": 1999999999,
                }
            }
        ),
        chunk({"audio": {"transcript": "there", "data": "AABXQVZF"}}),
        chunk({}, "stop"),
    ]
    audio = {
        "id": "audio_1",
        "data": "UklGRiQAAABXQVZF",
        "expires_at": 1999999999,
        "transcript": "Hello there",
    }
    assert assemble_chunks(chunks) == whole(voice(audio), finish="stop")


def test_a_whole_audio_answer_replays_in_pieces_and_assembles_back() -> None:
    body = whole(voice(AUDIO), finish="stop")
    assert round_trip(body) == body

    deltas = [c["choices"][0]["delta"] for c in response_to_chunks(body)]
    audio = [d["audio"] for d in deltas if "audio" in d]
    assert audio[0] == {"id": AUDIO["id"], "transcript": "Is"}
    assert audio[-1] == {"expires_at": AUDIO["expires_at"]}
    assert len([a for a in audio if "data" in a]) > 1  # ~40 kB of base64: more than a piece
    assert "".join(a.get("transcript", "") for a in audio) == AUDIO["transcript"]


def test_an_sdk_reading_a_replayed_audio_answer_gets_all_of_it() -> None:
    message = (
        sdk_snapshot(response_to_chunks(whole(voice(AUDIO), finish="stop"))).choices[0].message
    )
    assert message.content is None
    assert message.audio.model_dump() == AUDIO


def test_two_audio_choices_assemble_and_replay_apart() -> None:
    other = {**AUDIO, "id": "audio_2", "transcript": "Another voice.", "data": "AAAA" * 10}
    first, second = audio_stream(AUDIO, 0), audio_stream(other, 1)
    mixed = [c for pair in zip(first, second, strict=False) for c in pair]
    mixed += first[len(second) :] + second[len(first) :]
    body = whole(voice(AUDIO), voice(other), finish="stop")
    assert assemble_chunks(mixed) == body
    assert round_trip(body) == body


def test_an_audio_transcript_counts_as_answer() -> None:
    assert sum(answer_chars(c) for c in audio_stream(AUDIO)) == len(AUDIO["transcript"])


# -- what assembly cannot make whole is not cached -----------------------------------


def test_what_assembly_keeps_whole_may_be_cached() -> None:
    chunks = [chunk(d) for d in custom_stream(0, CUSTOM, [CODE])] + audio_stream(AUDIO)
    token = {"index": 0, "delta": {"content": "x", "token_id": 17}, "finish_reason": None}
    chunks.append({**HEAD, "choices": [token]})  # a number of a vendor's own: the chunk's
    assert faithful_chunks(chunks)
    assert storable(None, chunks)


def test_a_stream_assembly_would_shorten_is_not_cached() -> None:
    tool = {
        "index": 0,
        "id": "call_X",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
    }
    lossy = {
        "a call of a type the relay does not know": {
            "tool_calls": [{"index": 0, "id": "c", "type": "mcp_call", "mcp_call": {"name": "x"}}]
        },
        "a call's field of a vendor's own": {
            "tool_calls": [tool | {"extra_content": {"google": {"thought_signature": "sig"}}}]
        },
        "a function's field beyond name and arguments": {
            "tool_calls": [tool | {"function": {"name": "f", "parsed": {}}}]
        },
        "a function call saying a custom tool's input": {
            "tool_calls": [tool | {"custom": {"input": "x"}}]
        },
        "an audio field of its own": {"audio": {"id": "audio_1", "format": "wav"}},
        "a delta field of a vendor's own": {
            "images": [{"type": "image_url", "image_url": {"url": "data:"}}]
        },
    }
    for why, delta in lossy.items():
        chunks = [chunk({"role": "assistant", "content": None}), chunk(delta), chunk({}, "stop")]
        assert not faithful_chunks(chunks), why
        assert not storable(assemble_chunks(chunks), chunks), why
        assert storable(assemble_chunks(chunks)), why  # the whole body, alone, replays


def test_a_call_of_an_unknown_type_replays_whole_from_a_stored_body() -> None:
    odd = {"id": "c1", "type": "mcp_call", "mcp_call": {"name": "x", "arguments": "{}"}}
    body = whole(calls(odd))
    frags = [
        f
        for c in response_to_chunks(body)
        for f in c["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert frags == [{"index": 0, **odd}]
    assert assemble_chunks(response_to_chunks(body)) == body


def test_a_vendors_own_message_field_rides_a_replay_whole() -> None:
    context = {"citations": [{"content": "doc", "title": "t"}], "intent": "q"}
    body = whole({"role": "assistant", "content": "Hi", "context": context}, finish="stop")
    chunks = response_to_chunks(body)
    assert {"context": context} in [c["choices"][0]["delta"] for c in chunks]
    assert sdk_snapshot(chunks).choices[0].message.to_dict()["context"] == context


# -- a legacy function_call answer ---------------------------------------------------


def test_a_legacy_function_call_answer_assembles_and_replays_whole() -> None:
    fc = {"name": "weather", "arguments": '{"city": "Oslo"}'}
    chunks = [
        chunk(
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "weather", "arguments": ""},
            }
        ),
        chunk({"function_call": {"arguments": '{"city":'}}),
        chunk({"function_call": {"arguments": ' "Oslo"}'}}),
        chunk({}, "function_call"),
    ]
    body = whole(
        {"role": "assistant", "content": None, "function_call": fc}, finish="function_call"
    )
    assert assemble_chunks(chunks) == body
    assert faithful_chunks(chunks)
    assert round_trip(body) == body


# -- other formats, which have no custom tools ---------------------------------------


def test_a_legacy_client_gets_a_custom_call_as_its_function_call() -> None:
    """A client in ``functions`` declared none; a call it did not ask for keeps its name
    and its input (as the arguments) rather than becoming a nameless call."""
    answer = answer_as_function_call(whole(calls(CUSTOM)))
    assert answer["choices"][0]["message"]["function_call"] == {
        "name": "code_exec",
        "arguments": CODE,
    }
    streamed = [
        chunk_as_function_call(chunk(d))["choices"][0]["delta"]["function_call"]
        for d in custom_stream(0, CUSTOM, [CODE[:4], CODE[4:]])
    ]
    assert streamed == [
        {"name": "code_exec", "arguments": ""},
        {"arguments": CODE[:4]},
        {"arguments": CODE[4:]},
    ]


def test_an_anthropic_block_of_a_custom_call_keeps_its_name_and_input() -> None:
    assert tool_use_block(CUSTOM) == {
        "type": "tool_use",
        "id": "call_C1",
        "name": "code_exec",
        "input": {"input": CODE},
    }
    assert tool_use_block(WEATHER)["input"] == {"city": "Oslo"}


def test_a_responses_client_gets_a_custom_call_as_a_function_call_item() -> None:
    request = {"model": "gpt-5", "input": "hi"}
    reply = openai_response_to_responses(whole(calls(CUSTOM)), Usage(), request)
    (item,) = reply["output"]
    assert (item["type"], item["call_id"], item["name"], item["arguments"]) == (
        "function_call",
        "call_C1",
        "code_exec",
        CODE,
    )

    events = ChunksToResponseEvents(request, "resp_1")
    for c in response_to_chunks(whole(calls(CUSTOM))):
        events.feed(copy.deepcopy(c))
    done = events.finish(Usage())[-1][1]["response"]
    assert [(i["name"], i["arguments"]) for i in done["output"]] == [("code_exec", CODE)]
