"""Anthropic Messages <-> OpenAI chat translation, both directions, requests and answers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.errors import BadRequest, VendorUnsupported
from schemas.formats.anthropic import (
    ChunksToMessageEvents,
    JsonObjectPrefix,
    MessageEventsToChunks,
    messages_request_to_openai,
    messages_response_to_openai,
    offers_json_answer,
    openai_request_to_messages,
    openai_response_to_messages,
    without_cache_control,
)
from schemas.formats.openai import assemble_chunks
from schemas.usage import Usage

PNG = "iVBORw0KGgo="
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}

# A multi-turn Anthropic request using most of what the format offers.
ANTHROPIC_REQUEST = {
    "model": "claude-alias",
    "max_tokens": 512,
    "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric."}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture, and the weather?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "A cat. Checking weather."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12C, rain"},
                {"type": "text", "text": "Thanks!"},
            ],
        },
    ],
    "tools": [{"name": "weather", "description": "Weather now", "input_schema": WEATHER_SCHEMA}],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "stop_sequences": ["END"],
    "temperature": 0.3,
    "top_p": 0.9,
    "top_k": 40,
    "stream": True,
    "metadata": {"user_id": "u-7"},
}

OPENAI_REQUEST = {
    "model": "claude-alias",
    "max_tokens": 512,
    "messages": [
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "Be brief."},
                {"type": "text", "text": "Use metric."},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture, and the weather?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": "A cat. Checking weather.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
            # thinking rides along (with its signature, in its place) for an Anthropic vendor
            "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "sig"}],
            "anthropic_content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "A cat. Checking weather."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "12C, rain"},
        {"role": "user", "content": "Thanks!"},
    ],
    "temperature": 0.3,
    "top_p": 0.9,
    "top_k": 40,  # an extension: Anthropic and Ollama vendors take it back
    "stream": True,
    "stop": ["END"],
    "user": "u-7",
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather now",
                "parameters": WEATHER_SCHEMA,
            },
        }
    ],
    "tool_choice": "required",
    "parallel_tool_calls": False,
}


# -- client side: Anthropic request in ---------------------------------------------------


def test_messages_request_to_openai_translates_every_part():
    assert messages_request_to_openai(ANTHROPIC_REQUEST) == OPENAI_REQUEST


def test_string_system_and_string_content_stay_strings():
    body = {
        "model": "m",
        "max_tokens": 5,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert messages_request_to_openai(body)["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
    ]


def test_tool_result_blocks_become_tool_messages_and_images_follow():
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_a",
                        "content": [
                            {"type": "text", "text": "line 1"},
                            {"type": "text", "text": "line 2"},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/jpeg",
                                    "data": "QQ==",
                                },
                            },
                        ],
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_b",
                        "content": "ok",
                        "is_error": True,
                    },
                ],
            }
        ],
    }
    neutral = messages_request_to_openai(body)
    image = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QQ=="}}
    assert without_cache_control(neutral)["messages"] == [  # what OpenAI vendors get
        {"role": "tool", "tool_call_id": "toolu_a", "content": "line 1\nline 2"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "Error: ok"},
        {"role": "user", "content": [image]},
    ]
    # ...and an Anthropic vendor the results as they were, the image inside its result
    # (its data carried once in between: screenshots are large).
    assert json.dumps(neutral).count("QQ==") == 1
    back = openai_request_to_messages(neutral, "claude")
    assert back["messages"] == body["messages"]


def test_documents_and_search_results_in_a_tool_result_reach_any_vendor():
    """Text for vendors without such blocks; the blocks themselves for Anthropic."""
    found = {
        "type": "search_result",
        "source": "https://example.com/a",
        "title": "A",
        "content": [{"type": "text", "text": "alpha"}],
        "citations": {"enabled": True},
    }
    note = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "beta"},
    }
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [found, note]}],
            }
        ],
    }
    neutral = messages_request_to_openai(body)
    plain = without_cache_control(neutral)["messages"]
    assert plain == [
        {"role": "tool", "tool_call_id": "t1", "content": "A\nhttps://example.com/a\nalpha\nbeta"}
    ]
    assert openai_request_to_messages(neutral, "claude")["messages"] == body["messages"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "weather"},
            {"type": "function", "function": {"name": "weather"}},
        ),
    ],
)
def test_tool_choice_to_openai(choice, expected):
    body = {**ANTHROPIC_REQUEST, "tool_choice": choice}
    out = messages_request_to_openai(body)
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


@pytest.mark.parametrize("kind", ["auto", "none"])
def test_a_tool_choice_without_tools_is_left_out_for_chat(kind):
    """Chat vendors refuse a tool_choice (or parallel_tool_calls) sent with no tools, where
    Anthropic lets an auto or none choice pass: the relay leaves it out, still checked."""
    body = {k: v for k, v in ANTHROPIC_REQUEST.items() if k != "tools"}
    body["tool_choice"] = {"type": kind, "disable_parallel_tool_use": True}
    out = messages_request_to_openai(body)
    assert "tools" not in out
    assert "tool_choice" not in out and "parallel_tool_calls" not in out
    with pytest.raises(BadRequest):
        messages_request_to_openai({**body, "tool_choice": {"type": "sometimes"}})


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"model": ""}, "model"),
        ({"messages": "hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages.0.content.0.source: a document needs a base64, text, url, file or",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}
                ]
            },
            "messages.0.content.0.source",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0"),
        ({"tools": [{"name": "f", "strict": "yes"}]}, "tools.0.strict: must be true or false"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"system": 5}, "system"),
    ],
)
def test_malformed_requests_raise_bad_request(change, needle):
    body = {k: v for k, v in {**ANTHROPIC_REQUEST, **change}.items() if v is not None}
    with pytest.raises(BadRequest) as err:
        messages_request_to_openai(body)
    assert needle in err.value.message


@pytest.mark.parametrize(
    "field",
    [
        {"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]},
        {"container": "cntr_123"},
        {"inference_geo": "us"},
        {"service_tier": "standard_only"},
    ],
)
def test_a_field_the_relay_does_not_carry_is_refused_not_dropped(field):
    """The request would otherwise run without it (an MCP request without its servers, a
    standard-only request on priority capacity), and the client would never know."""
    (name,) = field
    with pytest.raises(BadRequest) as err:
        messages_request_to_openai({**ANTHROPIC_REQUEST, **field})
    assert err.value.param == name and name in err.value.message


def test_service_tier_auto_and_fields_sent_empty_ask_for_nothing():
    empty: dict[str, Any] = {
        "service_tier": "auto",
        "container": None,
        "mcp_servers": [],
        "inference_geo": None,
    }
    out = messages_request_to_openai({**ANTHROPIC_REQUEST, **empty})
    assert not set(empty) & set(out)


def test_claude_codes_context_management_reaches_anthropic_vendors_only():
    """Claude Code sends it on its own: what to clear from a long context.  Another
    vendor gets the context whole, which changes no answer."""
    managed = {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
    neutral = messages_request_to_openai({**ANTHROPIC_REQUEST, "context_management": managed})
    assert openai_request_to_messages(neutral, "claude")["context_management"] == managed
    assert "context_management" not in without_cache_control(neutral)


def test_openai_response_to_messages_with_text_tools_and_cache_usage():
    body = {
        "id": "chatcmpl-7",
        "object": "chat.completion",
        "model": "gpt-x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
    }
    usage = Usage(
        input_tokens=1000, output_tokens=20, cache_read_tokens=600, cache_write_tokens=100
    )
    assert openai_response_to_messages(body, usage, "claude-alias") == {
        "id": "msg_chatcmpl-7",
        "type": "message",
        "role": "assistant",
        "model": "claude-alias",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 300,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 600,
            "output_tokens": 20,
        },
    }


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_finish_reason_maps_to_stop_reason(finish, stop):
    body = {"id": "c", "choices": [{"message": {"content": "x"}, "finish_reason": finish}]}
    assert openai_response_to_messages(body, Usage(), "m")["stop_reason"] == stop


def test_chunks_to_message_events_text_then_two_tool_calls():
    convert = ChunksToMessageEvents("claude-alias", "msg_1")

    def chunk(delta, finish=None):
        return {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def tool(index, **fields):
        return chunk({"tool_calls": [{"index": index, **fields}]})

    events = []
    for c in [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Checking"}),
        chunk({"content": " both."}),
        tool(0, id="call_a", type="function", function={"name": "weather", "arguments": ""}),
        tool(0, function={"arguments": '{"city":'}),
        tool(0, function={"arguments": '"Oslo"}'}),
        tool(1, id="call_b", type="function", function={"name": "clock", "arguments": "{}"}),
        chunk({}, "tool_calls"),
        {"id": "c", "choices": [], "usage": {"prompt_tokens": 50}},
    ]:
        events += convert.feed(c)
    events += convert.finish(Usage(input_tokens=50, output_tokens=12, cache_read_tokens=30))

    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["id"] == "msg_1" and start["model"] == "claude-alias" and start["content"] == []
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[4][1]["delta"] == {"type": "text_delta", "text": " both."}
    assert events[6][1] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "call_a", "name": "weather", "input": {}},
    }
    assert events[8][1] == {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'},
    }
    assert events[10][1]["index"] == 2
    assert events[10][1]["content_block"]["name"] == "clock"
    assert events[12][1] == {"type": "content_block_stop", "index": 2}
    assert events[13][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {
            "input_tokens": 20,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 30,
            "output_tokens": 12,
        },
    }


def _blocks(events):
    """The content blocks a client rebuilds from the events, tool inputs parsed."""
    blocks: dict[int, dict] = {}
    opened: list[int] = []
    for name, data in events:
        if name == "content_block_start":
            assert data["index"] == len(blocks), "blocks are numbered in order"
            blocks[data["index"]] = {**data["content_block"], "json": ""}
            opened.append(data["index"])
        elif name == "content_block_delta":
            assert opened and data["index"] == opened[-1], "deltas go to the open block"
            blocks[data["index"]]["json"] += data["delta"].get("partial_json", "")
        elif name == "content_block_stop":
            assert data["index"] == opened[-1]
    return [(b["id"], b["name"], json.loads(b["json"])) for b in blocks.values()]


def test_interleaved_tool_call_fragments_still_make_whole_blocks():
    """A vendor may interleave parallel calls' fragments; Anthropic's blocks come one at a
    time, so a call waits until the open one's arguments are whole."""
    convert = ChunksToMessageEvents("m", "msg_3")

    def tool(index, **fields):
        return {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, **fields}]}}]}

    events = []
    for c in [
        tool(0, id="call_a", function={"name": "weather", "arguments": '{"city":'}),
        tool(1, id="call_b", function={"name": "clock", "arguments": '{"tz":'}),
        tool(2, id="call_c", function={"name": "news", "arguments": ""}),
        tool(0, function={"arguments": '"Oslo"}'}),
        tool(2, function={"arguments": '{"topic": "ski"'}),
        tool(1, function={"arguments": '"UTC"}'}),
        tool(2, function={"arguments": "}"}),
    ]:
        events += convert.feed(c)
    assert [name for name, _ in events][:4] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
    ], "the first call streams at once"
    events += convert.finish(Usage(input_tokens=5, output_tokens=9))
    assert _blocks(events) == [
        ("call_a", "weather", {"city": "Oslo"}),
        ("call_b", "clock", {"tz": "UTC"}),
        ("call_c", "news", {"topic": "ski"}),
    ]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_chunks_to_message_events_with_no_chunks_still_frames_a_message():
    events = ChunksToMessageEvents("m", "msg_2").finish(Usage(input_tokens=3))
    assert [name for name, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert events[1][1]["delta"]["stop_reason"] == "end_turn"


# -- vendor side: the neutral request out to Anthropic ----------------------------------


def test_openai_request_to_messages_inverts_the_client_side():
    out = openai_request_to_messages(OPENAI_REQUEST, "claude-sonnet-4-5")
    expected = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 512,
        "system": "Be brief.\n\nUse metric.",
        "messages": [
            ANTHROPIC_REQUEST["messages"][0],
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "A cat. Checking weather."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "weather",
                        "input": {"city": "Oslo"},
                    },
                ],
            },
            ANTHROPIC_REQUEST["messages"][2],
        ],
        "temperature": 0.3,  # and no top_p beside it: Claude 4.5 refuses the pair
        "top_k": 40,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-7"},
        "tools": ANTHROPIC_REQUEST["tools"],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }
    assert out == expected


def test_top_p_goes_beside_temperature_only_to_the_models_that_take_both():
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.7, "top_p": 0.9}
    newer = openai_request_to_messages(body, "claude-haiku-4-5")
    assert newer["temperature"] == 0.7 and "top_p" not in newer
    older = openai_request_to_messages(body, "claude-3-5-haiku-latest")
    assert (older["temperature"], older["top_p"]) == (0.7, 0.9)
    alone = openai_request_to_messages({**body, "temperature": None}, "claude-haiku-4-5")
    assert alone["top_p"] == 0.9 and "temperature" not in alone


def test_a_json_answer_with_thinking_is_asked_for_not_forced():
    """Anthropic refuses thinking beside a forced tool choice; and a client that may call
    none of its tools gets the JSON answer forced, never prose."""
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": WEATHER_SCHEMA}}
    body = {
        "messages": [{"role": "user", "content": "json please"}],
        "response_format": fmt,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }
    out = openai_request_to_messages(body, "claude-sonnet-4-5")
    assert out["thinking"] == body["thinking"] and out["tool_choice"] == {"type": "auto"}
    assert [t["name"] for t in out["tools"]] == ["relay_json_answer"]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    none = {**body, "thinking": None, "tools": [tool], "tool_choice": "none"}
    forced = openai_request_to_messages(none, "claude-sonnet-4-5")
    assert forced["tool_choice"] == {"type": "tool", "name": "relay_json_answer"}
    # Thinking, and no tool of the client's may be called: none is offered.
    asked = openai_request_to_messages({**none, "thinking": body["thinking"]}, "claude-sonnet-4-5")
    assert [t["name"] for t in asked["tools"]] == ["relay_json_answer"]
    assert asked["tool_choice"] == {"type": "auto"}
    # Thinking the client turned off is no thinking: the JSON answer stays forced.
    off = openai_request_to_messages(
        {**body, "thinking": {"type": "disabled"}}, "claude-sonnet-4-5"
    )
    assert off["tool_choice"] == {"type": "tool", "name": "relay_json_answer"}


def test_a_json_answer_beside_thinking_reaches_an_anthropic_client_as_text():
    answer = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_1", "name": "relay_json_answer", "input": {"a": 1}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 5, "output_tokens": 3},
    }
    neutral, usage = messages_response_to_openai(answer)
    assert neutral["choices"][0]["message"]["content"] == '{"a": 1}'
    back = openai_response_to_messages(neutral, usage, "claude-alias")
    assert back["content"][1] == {"type": "text", "text": '{"a": 1}'}
    assert back["stop_reason"] == "end_turn"


def _json_mode_message(*content: dict[str, Any]) -> dict[str, Any]:
    thought = {"type": "thinking", "thinking": "They want JSON.", "signature": "sig"}
    return {
        "id": "msg_v",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [thought, *content],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 7},
    }


def _streamed(message: dict[str, Any], *, json_answer: bool) -> list[dict[str, Any]]:
    from tests.support.anthropic_stream import vendor_events

    convert = MessageEventsToChunks(json_answer=json_answer)
    return [
        item
        for name, data in vendor_events(message)
        for item in convert.feed(name, data)
        if isinstance(item, dict)
    ]


def test_text_before_the_json_answer_is_dropped_streamed_or_not():
    """With thinking on, the JSON answer tool is offered, not forced, and Claude may say
    a sentence before calling it: the answer is the JSON alone, streamed as whole, for
    OpenAI clients (content) and Anthropic ones (the ordered blocks) alike."""
    from tests.support.anthropic_stream import blocks, client_message

    preamble = {"type": "text", "text": "Here is the JSON you asked for."}
    answer_tool = {
        "type": "tool_use",
        "id": "toolu_1",
        "name": "relay_json_answer",
        "input": {"a": 1},
    }
    message = _json_mode_message(preamble, answer_tool)
    whole, usage = messages_response_to_openai(message)
    chunks = _streamed(message, json_answer=True)
    streamed = assemble_chunks(chunks)
    for body in (whole, streamed):
        assert json.loads(body["choices"][0]["message"]["content"]) == {"a": 1}
        reply = openai_response_to_messages(body, usage, "alias")
        assert [b["type"] for b in reply["content"]] == ["thinking", "text"]
        assert json.loads(reply["content"][1]["text"]) == {"a": 1}
    assert [b["type"] for b in blocks(client_message(chunks))] == ["thinking", "text"]


def test_text_in_json_mode_without_the_json_answer_is_sent_in_its_place():
    """The model answered in prose, or called a tool of the client's first: the text held
    back goes out after all, in order."""
    prose = _json_mode_message({"type": "text", "text": "I cannot answer that as JSON."})
    prose["stop_reason"] = "end_turn"
    streamed = assemble_chunks(_streamed(prose, json_answer=True))["choices"][0]["message"]
    assert streamed["content"] == "I cannot answer that as JSON."
    assert [b["type"] for b in streamed["anthropic_content"]] == ["thinking", "text"]

    tool = {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Oslo"}}
    calls = _json_mode_message({"type": "text", "text": "Checking."}, tool)
    streamed = assemble_chunks(_streamed(calls, json_answer=True))["choices"][0]["message"]
    assert streamed["content"] == "Checking."
    assert [b["type"] for b in streamed["anthropic_content"]] == ["thinking", "text", "tool_use"]


def test_text_streams_as_it_comes_when_json_mode_is_off():
    message = _json_mode_message({"type": "text", "text": "Hello."})
    convert = MessageEventsToChunks()
    from tests.support.anthropic_stream import vendor_events

    texts = [
        chunk
        for name, data in vendor_events(message)
        if name == "content_block_delta" and data["delta"]["type"] == "text_delta"
        for chunk in convert.feed(name, data)
    ]
    assert texts, "a text delta is sent with the event that brought it"
    assert not offers_json_answer({"tools": [{"name": "weather"}]})
    asked = openai_request_to_messages(
        {
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_object"},
        },
        "claude",
    )
    assert offers_json_answer(asked)


def test_consecutive_tool_messages_merge_into_one_user_turn():
    body = {
        "messages": [
            {"role": "system", "content": "sys one"},
            {"role": "user", "content": "both please"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "b", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "A"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "B"}]},
            {"role": "system", "content": "sys two"},
        ],
        "max_completion_tokens": 64,
        "max_tokens": 10,
        "stop": "###",
        "temperature": 1.7,
        "tool_choice": {"type": "function", "function": {"name": "a"}},
    }
    out = openai_request_to_messages(body, "claude-haiku")
    assert out["system"] == "sys one\n\nsys two"
    assert out["max_tokens"] == 64
    assert out["stop_sequences"] == ["###"]
    assert out["temperature"] == 1.0
    assert "tool_choice" not in out  # no tools were offered, so nothing to choose
    assert out["messages"] == [
        {"role": "user", "content": "both please"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "c1", "name": "a", "input": {}},
                {"type": "tool_use", "id": "c2", "name": "b", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "A"},
                {"type": "tool_result", "tool_use_id": "c2", "content": "B"},
            ],
        },
    ]


def test_defaults_max_tokens_and_named_tool_choice():
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": OPENAI_REQUEST["tools"],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
    }
    out = openai_request_to_messages(body, "claude-haiku")
    assert out["max_tokens"] == 4096
    assert out["tool_choice"] == {"type": "tool", "name": "weather"}
    assert "system" not in out


@pytest.mark.parametrize(
    "part",
    [
        {"type": "hologram"},
        {"type": "image_url", "image_url": {"url": "ftp://x.test/a.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}},
    ],
)
def test_content_anthropic_cannot_take_is_a_bad_request(part):
    body = {"messages": [{"role": "user", "content": [part]}]}
    with pytest.raises(BadRequest, match=r"messages\.0\.content\.0"):
        openai_request_to_messages(body, "claude-haiku")


def test_messages_response_to_openai_with_cache_usage():
    body = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "...", "signature": "s"},
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 200,
            "cache_read_input_tokens": 1000,
            "output_tokens": 33,
        },
    }
    answer, usage = messages_response_to_openai(body)
    assert usage == Usage(
        input_tokens=1210, output_tokens=33, cache_read_tokens=1000, cache_write_tokens=200
    )
    assert answer["id"] == "msg_01"
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "claude-sonnet-4-5"
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Calling.",
                "tool_calls": [
                    {
                        "id": "toolu_9",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
                "reasoning_content": "...",
                "thinking_blocks": [{"type": "thinking", "thinking": "...", "signature": "s"}],
                "anthropic_content": body["content"],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ]
    assert answer["usage"] == {
        "prompt_tokens": 1210,
        "completion_tokens": 33,
        "total_tokens": 1243,
        "prompt_tokens_details": {"cached_tokens": 1000},
    }


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reason_maps_to_finish_reason(stop, finish):
    body = {"id": "m", "content": [{"type": "text", "text": "x"}], "stop_reason": stop, "usage": {}}
    assert messages_response_to_openai(body)[0]["choices"][0]["finish_reason"] == finish


# A tool-using answer as Anthropic streams it.
STREAM = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_s1",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 25,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 400,
                    "output_tokens": 1,
                },
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Let me"},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": " check."},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_s", "name": "weather", "input": {}},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": "Os'},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": 'lo"}'},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 41},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def test_message_events_to_chunks_streams_text_and_tool_call():
    convert = MessageEventsToChunks(created=99)
    items = [item for event, data in STREAM for item in convert.feed(event, data)]
    *chunks, usage = items
    assert usage == Usage(input_tokens=425, output_tokens=41, cache_read_tokens=400)
    assert all(isinstance(c, dict) for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Let me"},
        {"content": " check."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_s",
                    "type": "function",
                    "function": {"name": "weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Os'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'lo"}'}}]},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert {(c["id"], c["model"], c["created"]) for c in chunks} == {
        ("msg_s1", "claude-sonnet-4-5", 99)
    }

    message = assemble_chunks(chunks)["choices"][0]["message"]
    assert message["content"] == "Let me check."
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}


def test_message_delta_usage_fields_replace_message_start_ones():
    convert = MessageEventsToChunks()
    convert.feed(
        "message_start",
        {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 5}}},
    )
    convert.feed(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens"},
            "usage": {"output_tokens": 9, "input_tokens": 7, "cache_read_input_tokens": None},
        },
    )
    finish, usage = convert.feed("message_stop", {"type": "message_stop"})
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage == Usage(input_tokens=7, output_tokens=9)


def usage_of(start: dict[str, Any], delta: dict[str, Any]) -> Usage:
    """The Usage a stream whose message_start and message_delta say these counts ends with."""
    convert = MessageEventsToChunks()
    message = {"id": "m", "usage": start}
    convert.feed("message_start", {"type": "message_start", "message": message})
    said = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": delta}
    convert.feed("message_delta", said)
    *_, usage = convert.feed("message_stop", {"type": "message_stop"})
    assert isinstance(usage, Usage)
    return usage


def test_zero_input_counts_on_message_delta_keep_message_start_s():
    """Some Anthropic-compatible servers (sglang, proxies) say the input side again on
    message_delta as zeros.  Anthropic's counts there are cumulative, so a 0 after a count
    that was not is no count: the ledger bills the input message_start said (1 300 tokens,
    800 of them cache reads, 100 cache writes), not a free call."""
    start = {
        "input_tokens": 400,
        "cache_read_input_tokens": 800,
        "cache_creation_input_tokens": 100,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 100},
        "output_tokens": 1,
    }
    zeros = {
        "input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 42,
    }
    expected = Usage(
        input_tokens=1300,
        output_tokens=42,
        cache_read_tokens=800,
        cache_write_tokens=100,
        cache_write_1h_tokens=100,
    )
    assert usage_of(start, zeros) == expected
    assert usage_of(start, {"output_tokens": 42}) == expected, "absent: kept"
    # A count that is there replaces message_start's, lower or higher (an estimate first,
    # the true count last), and a 0 after a 0 is 0.
    assert usage_of({"input_tokens": 500}, {"input_tokens": 480, "output_tokens": 3}) == Usage(
        input_tokens=480, output_tokens=3
    )
    assert usage_of({"input_tokens": 0}, {"input_tokens": 0, "output_tokens": 3}) == Usage(
        output_tokens=3
    )
    assert usage_of({"output_tokens": 1}, {"output_tokens": 0}).output_tokens == 0


def test_unknown_events_and_deltas_are_skipped():
    convert = MessageEventsToChunks()
    assert convert.feed("future_event", {"type": "future_event"}) == []
    future = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "future_delta", "future": {"text": "hm"}},
    }
    assert convert.feed("content_block_delta", future) == []


def test_anthropic_to_anthropic_keeps_cache_breakpoints_and_tool_errors():
    cached = {"type": "ephemeral"}
    image = {"type": "base64", "media_type": "image/png", "data": "QQ=="}
    body = {
        "model": "m",
        "max_tokens": 10,
        "tools": [{"name": "t", "input_schema": {"type": "object"}, "cache_control": cached}],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "source": image, "cache_control": cached}],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "tu", "name": "t", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "tu",
                        "content": "failed",
                        "is_error": True,
                        "cache_control": cached,
                    }
                ],
            },
        ],
    }
    neutral = messages_request_to_openai(body)
    back = openai_request_to_messages(neutral, "claude")
    assert back["tools"][0]["cache_control"] == cached
    assert back["messages"][0]["content"][0]["cache_control"] == cached
    [result] = back["messages"][-1]["content"]
    assert (result["is_error"], result["cache_control"]) == (True, cached)

    plain = without_cache_control(neutral)  # what OpenAI-format vendors get
    text = json.dumps(plain)
    assert "cache_control" not in text and "is_error" not in text
    # ...and a failed result says so in its text, the one place they read it.
    assert plain["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "tu",
        "content": "Error: failed",
    }
    assert without_cache_control(plain) is plain


@pytest.mark.parametrize(
    "content",
    [["hi"], [{"type": "image_url", "image_url": "https://example.com/a.png"}], 5],
)
def test_malformed_openai_content_is_a_bad_request_for_anthropic(content):
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    with pytest.raises(BadRequest):
        openai_request_to_messages(body, "claude")


def _events(*pairs):
    conv = MessageEventsToChunks(created=1)
    out = []
    for data in pairs:
        out += conv.feed(data["type"], data)
    return out


def test_a_tool_called_without_input_streams_empty_json_object_arguments():
    chunks = _events(
        {"type": "message_start", "message": {"id": "msg_1", "model": "c", "usage": {}}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "tu", "name": "now", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 3},
        },
        {"type": "message_stop"},
    )
    answer = assemble_chunks([c for c in chunks if isinstance(c, dict)])
    [call] = answer["choices"][0]["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {}
    assert answer["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_input_given_whole_at_the_block_s_start_is_the_call_s_arguments():
    """Anthropic starts a tool block with ``input: {}``; a compatible server may send the
    whole input there and no JSON after it, which must not become ``{}``."""
    chunks = _events(
        {"type": "message_start", "message": {"id": "msg_1", "model": "c", "usage": {}}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {
                "type": "tool_use",
                "id": "tu",
                "name": "weather",
                "input": {"city": "Paris"},
            },
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {}},
        {"type": "message_stop"},
    )
    dicts = [c for c in chunks if isinstance(c, dict)]
    [call] = assemble_chunks(dicts)["choices"][0]["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    opening = next(c for c in dicts if c["choices"][0]["delta"].get("tool_calls"))
    assert opening["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == ""

    convert = MessageEventsToChunks(created=1, json_answer=True)
    answer = {"type": "tool_use", "id": "t", "name": "relay_json_answer", "input": {"a": 1}}
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "m", "usage": {}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": answer}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    chunks = [c for name, data in events for c in convert.feed(name, data) if isinstance(c, dict)]
    assert assemble_chunks(chunks)["choices"][0]["message"]["content"] == '{"a": 1}'


def test_the_matched_stop_sequence_survives_anthropic_to_anthropic():
    message = {
        "id": "msg_1",
        "content": [{"type": "text", "text": "a"}],
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    neutral, usage = messages_response_to_openai(message)
    assert neutral["choices"][0]["finish_reason"] == "stop"
    back = openai_response_to_messages(neutral, usage, "claude")
    assert (back["stop_reason"], back["stop_sequence"]) == ("stop_sequence", "END")

    chunks = _events(
        {"type": "message_start", "message": {"id": "msg_1", "model": "c", "usage": {}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
        },
        {"type": "message_stop"},
    )
    conv = ChunksToMessageEvents("claude", "msg_1")
    for chunk in chunks[:-1]:
        conv.feed(chunk)
    delta = dict(conv.finish(Usage()))
    assert delta["message_delta"]["delta"] == {
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
    }


@pytest.mark.parametrize("reason", ["model_context_window_exceeded", "pause_turn"])
def test_a_stop_reason_finish_reason_cannot_say_reaches_an_anthropic_client_as_sent(reason):
    """OpenAI's finish_reason reads these as "length" and "stop", which would come back
    as max_tokens and end_turn: the vendor's own reason rides along, streamed or not,
    and through the cache (a stream assembled, stored and replayed)."""
    from schemas.formats.openai import response_to_chunks
    from tests.support.anthropic_stream import client_message, through_a_stream

    message = {
        "id": "msg_v",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "partial"}],
        "stop_reason": reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 1},
    }
    neutral, usage = messages_response_to_openai(message)
    finish = {"model_context_window_exceeded": "length", "pause_turn": "stop"}[reason]
    assert neutral["choices"][0]["finish_reason"] == finish  # what OpenAI clients read
    back = openai_response_to_messages(neutral, usage, "claude")
    assert (back["stop_reason"], back["stop_sequence"]) == (reason, None)

    chunks, streamed = through_a_stream(message)
    assert streamed.stop_reason == reason
    stored = assemble_chunks(chunks)
    assert stored["choices"][0]["finish_reason"] == finish
    assert openai_response_to_messages(stored, usage, "claude")["stop_reason"] == reason
    assert client_message(response_to_chunks(stored)).stop_reason == reason


def test_a_stop_reason_another_vendor_sends_on_its_choice_is_not_taken_for_anthropic_s():
    """vLLM puts its own ``stop_reason`` (the stop string or token id) on a choice."""
    body = {
        "id": "x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "a"},
                "finish_reason": "length",
                "stop_reason": 128001,
                "anthropic_stop_reason": "made_up",
            }
        ],
    }
    assert openai_response_to_messages(body, Usage(), "c")["stop_reason"] == "max_tokens"


def test_tool_calls_that_finish_with_stop_read_as_tool_use():
    """OpenAI ends a forced tool choice with finish_reason "stop"."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {
        "id": "x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "stop",
            }
        ],
    }
    assert openai_response_to_messages(body, Usage(), "claude")["stop_reason"] == "tool_use"
    conv = ChunksToMessageEvents("claude", "msg_1")
    conv.feed({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, **call}]}}]})
    conv.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    assert dict(conv.finish(Usage()))["message_delta"]["delta"]["stop_reason"] == "tool_use"


def test_a_streamed_refusal_ends_as_a_refusal():
    conv = ChunksToMessageEvents("claude", "msg_1")
    conv.feed({"choices": [{"index": 0, "delta": {"refusal": "I can't help with that."}}]})
    conv.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    assert dict(conv.finish(Usage()))["message_delta"]["delta"]["stop_reason"] == "refusal"


def test_more_than_one_choice_is_refused_not_ignored():
    """Refused by this candidate only: an OpenAI one later in the plan answers n > 1."""
    body = {"model": "m", "n": 3, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(VendorUnsupported, match="one choice") as err:
        openai_request_to_messages(body, "claude")
    assert err.value.retryable and err.value.status == 400 and err.value.param == "n"


CUSTOM_TOOL = {"type": "custom", "custom": {"name": "code_exec", "description": "runs code"}}


@pytest.mark.parametrize(
    ("asked", "param"),
    [
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"tools": [CUSTOM_TOOL]}, "tools"),
    ],
)
def test_what_only_an_openai_vendor_gives_passes_the_request_on(asked, param):
    """Audio out, web search and custom tools would reach Claude (or Ollama) as nothing,
    or as a nameless tool: this candidate refuses, so an OpenAI one may answer."""
    from agents.adapters.ollama import chat_request

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **asked}
    for translate in (openai_request_to_messages, chat_request):
        kwargs = {"stream": False} if translate is chat_request else {}
        with pytest.raises(VendorUnsupported) as err:
            translate(body, "model", **kwargs)
        assert err.value.param == param and err.value.status == 400
    typeless = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    typeless["tools"] = [{"type": None, "function": {"name": "f", "parameters": {}}}]
    assert openai_request_to_messages(typeless, "claude")["tools"][0]["name"] == "f"


@pytest.mark.parametrize(
    ("asked", "param"), [({"logprobs": True}, "logprobs"), ({"top_logprobs": 3}, "top_logprobs")]
)
def test_logprobs_are_refused_not_ignored(asked, param):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(VendorUnsupported, match=f"{param}: this model does not return"):
        openai_request_to_messages({**body, **asked}, "claude")
    plain = {**body, "logprobs": False, "top_logprobs": 0, "n": 1}
    assert openai_request_to_messages(plain, "claude")["messages"]


@pytest.mark.parametrize("stop", ["\n", ["\n\n", "END"], [" \t"]])
def test_a_whitespace_only_stop_sequence_is_this_candidate_s_refusal(stop: Any) -> None:
    """Anthropic refuses stop sequences of whitespace alone.  Left out, the model would
    run on past every newline the client asked it to stop at, so it is not left out in
    silence: this candidate cannot serve the request (an OpenAI-format one later in the
    plan can), and when none can the client's 400 names ``stop``."""
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(VendorUnsupported, match=r"^stop: .*whitespace") as err:
        openai_request_to_messages({**base, "stop": stop}, "claude")
    assert err.value.retryable and err.value.status == 400 and err.value.param == "stop"
    out = openai_request_to_messages({**base, "stop": ["END", " END\n"]}, "claude")
    assert out["stop_sequences"] == ["END", " END\n"], "text with whitespace around it goes"
    assert "stop_sequences" not in openai_request_to_messages({**base, "stop": [""]}, "claude")


@pytest.mark.parametrize(
    ("field", "value"), [("metadata", "x"), ("stop_sequences", 5), ("stop_sequences", [1])]
)
def test_malformed_messages_fields_are_bad_requests(field, value):
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(BadRequest, match=field):
        messages_request_to_openai({**body, field: value})


@pytest.mark.parametrize(
    ("effort", "max_tokens", "thinking"),
    [
        ("low", 4096, {"type": "enabled", "budget_tokens": 1024}),
        ("medium", 8000, {"type": "enabled", "budget_tokens": 4096}),
        ("high", 8000, {"type": "enabled", "budget_tokens": 7999}),  # inside max_tokens
        ("minimal", 8000, None),
        ("none", 8000, None),
        ("low", 1024, None),  # no room left for Anthropic's smallest budget
    ],
)
def test_reasoning_effort_becomes_a_thinking_budget(effort, max_tokens, thinking):
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "reasoning_effort": effort,
        "max_completion_tokens": max_tokens,
    }
    out = openai_request_to_messages(body, "claude-sonnet-4-5")
    assert out.get("thinking") == thinking
    assert out["max_tokens"] == max_tokens


def test_explicit_thinking_wins_and_a_bad_effort_is_a_clear_400():
    thinking = {"type": "enabled", "budget_tokens": 2000}
    body = {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "high"}
    assert openai_request_to_messages({**body, "thinking": thinking}, "m")["thinking"] == thinking
    with pytest.raises(BadRequest, match="reasoning_effort: 'extreme' is not one of") as err:
        openai_request_to_messages({**body, "reasoning_effort": "extreme"}, "m")
    assert err.value.param == "reasoning_effort"


def test_with_no_max_tokens_given_the_answer_gets_room_beside_the_thinking():
    body = {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "high"}
    out = openai_request_to_messages(body, "m")
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert out["max_tokens"] == 16384 + 4096
    plain = openai_request_to_messages({**body, "reasoning_effort": "minimal"}, "m")
    assert "thinking" not in plain and plain["max_tokens"] == 4096


def test_effort_thinking_is_left_off_a_tool_loop_whose_call_lost_its_signed_block():
    """A Responses client sends a tool call back without the thinking before it; Anthropic
    refuses such a turn with thinking on, so the effort's thinking is left off.  With the
    block echoed back (a chat client), thinking stays on."""
    call = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    turns: list[dict[str, Any]] = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
    ]
    body = {"messages": turns, "reasoning_effort": "low", "max_tokens": 4096}
    assert "thinking" not in openai_request_to_messages(body, "m")
    signed = {"type": "thinking", "thinking": "call f", "signature": "sig"}
    turns[1] = {**turns[1], "thinking_blocks": [signed]}
    out = openai_request_to_messages(body, "m")
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert out["messages"][1]["content"][0] == signed


def test_effort_thinking_goes_without_sampling_knobs_and_not_beside_a_forced_tool():
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "reasoning_effort": "low",
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 4096,
    }
    out = openai_request_to_messages(body, "m")
    assert out["thinking"]["budget_tokens"] == 1024
    assert "temperature" not in out and "top_p" not in out
    forced = openai_request_to_messages({**body, "tools": [tool], "tool_choice": "required"}, "m")
    assert "thinking" not in forced and forced["tool_choice"]["type"] == "any"
    assert forced["temperature"] == 0.2, "no thinking: the knobs go as given"


def test_an_assistant_refusal_part_in_the_history_is_its_text():
    body = {
        "messages": [
            {"role": "user", "content": "do it"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
            {"role": "user", "content": "why?"},
        ]
    }
    out = openai_request_to_messages(body, "m")
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "I can't."}],
    }
    with pytest.raises(BadRequest, match="only text parts"):
        openai_request_to_messages({"messages": [{"role": "system", "content": [5]}]}, "m")


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_json_mode_asks_an_anthropic_model_to_answer_through_a_tool():
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}}
    body = {"messages": [{"role": "user", "content": "where?"}], "response_format": fmt}
    out = openai_request_to_messages(body, "m")
    assert out["tools"] == [
        {
            "name": "relay_json_answer",
            "description": "Give your answer as JSON matching this schema.",
            "input_schema": SCHEMA,
        }
    ]
    assert out["tool_choice"] == {"type": "tool", "name": "relay_json_answer"}
    plain = openai_request_to_messages({**body, "response_format": {"type": "json_object"}}, "m")
    assert plain["tools"][0]["input_schema"] == {"type": "object"}
    text = openai_request_to_messages({**body, "response_format": {"type": "text"}}, "m")
    assert "tools" not in text and "tool_choice" not in text
    with pytest.raises(BadRequest, match=r"json_schema\.schema"):
        openai_request_to_messages({**body, "response_format": {"type": "json_schema"}}, "m")


def test_the_json_answer_tool_call_comes_back_as_the_answer_streamed_or_not():
    call = {
        "type": "tool_use",
        "id": "toolu_1",
        "name": "relay_json_answer",
        "input": {"city": "Oslo"},
    }
    message = {
        "id": "msg_1",
        "model": "m",
        "content": [call],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 5, "output_tokens": 7},
    }
    answer, _ = messages_response_to_openai(message)
    choice = answer["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": '{"city": "Oslo"}'}
    assert choice["finish_reason"] == "stop"

    convert = MessageEventsToChunks(created=1)
    start = {**call, "input": {}}
    events = [
        ("message_start", {"type": "message_start", "message": {**message, "content": []}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": start}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "input_json_delta", "partial_json": '{"city": '}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                           "usage": {"output_tokens": 7}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    chunks = [c for name, data in events for c in convert.feed(name, data) if isinstance(c, dict)]
    whole = assemble_chunks(chunks)["choices"][0]
    assert whole["message"]["content"] == '{"city": "Oslo"}'
    assert "tool_calls" not in whole["message"] and whole["finish_reason"] == "stop"


def test_cache_breakpoints_on_assistant_blocks_and_tool_results_survive_the_round_trip():
    cc = {"type": "ephemeral"}
    call = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    request = {
        "model": "claude",
        "max_tokens": 64,
        "messages": [
            {"role": "user", "content": "look it up"},
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "ok", "cache_control": cc}, call],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "doc", "cache_control": cc}],
                    }
                ],
            },
        ],
    }
    back = openai_request_to_messages(messages_request_to_openai(request), "claude")
    assert back["messages"][1]["content"][0] == {"type": "text", "text": "ok", "cache_control": cc}
    result = back["messages"][2]["content"][0]
    assert result["content"] == [{"type": "text", "text": "doc", "cache_control": cc}]
    plain = without_cache_control(messages_request_to_openai(request))
    assert "anthropic_content" not in plain["messages"][1]
    assert plain["messages"][2]["content"] == [{"type": "text", "text": "doc"}]


def test_a_pdf_document_travels_as_an_openai_file_part_and_back():
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}
    doc = {"type": "document", "source": pdf, "title": "terms.pdf", "citations": {"enabled": True}}
    request = {
        "model": "claude",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": [doc, {"type": "text", "text": "summarise"}]}],
    }
    neutral = messages_request_to_openai(request)
    part = neutral["messages"][0]["content"][0]
    assert without_cache_control(neutral)["messages"][0]["content"][0] == {
        "type": "file",
        "file": {"filename": "terms.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"},
    }
    assert "JVBERi0x" not in str(part["anthropic_document"]), "the data rides once"
    back = openai_request_to_messages(neutral, "claude")
    assert back["messages"][0]["content"][0] == doc, "title and citations kept"
    # A file by id only OpenAI holds: an OpenAI candidate may read it, this one cannot.
    by_id = {"type": "file", "file": {"file_id": "file-abc"}}
    with pytest.raises(VendorUnsupported, match="needs the file inline"):
        openai_request_to_messages({"messages": [{"role": "user", "content": [by_id]}]}, "c")
    nothing = {"type": "file", "file": {"filename": "a.pdf"}}  # no vendor reads this
    with pytest.raises(BadRequest, match="needs the file inline"):
        openai_request_to_messages({"messages": [{"role": "user", "content": [nothing]}]}, "c")


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "Write a haiku about rain."}],
        [
            {"role": "developer", "content": "Write a haiku about rain."},
            {"role": "user", "content": ""},
        ],
    ],
)
def test_system_text_alone_is_asked_as_the_one_user_turn(messages):
    """Anthropic refuses ``messages: []``; OpenAI answers the system text (a chat of a
    system message alone, Responses' instructions with no input)."""
    out = openai_request_to_messages({"messages": messages}, "c")
    assert out["messages"] == [{"role": "user", "content": "Write a haiku about rain."}]
    assert "system" not in out


def test_cached_system_text_alone_keeps_its_breakpoint_in_the_turn():
    part = {"type": "text", "text": "Long rules.", "cache_control": {"type": "ephemeral"}}
    out = openai_request_to_messages({"messages": [{"role": "system", "content": [part]}]}, "c")
    assert out["messages"] == [{"role": "user", "content": [part]}] and "system" not in out


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": ""}],
        [{"role": "system", "content": " "}, {"role": "user", "content": []}],
    ],
)
def test_no_text_at_all_is_left_to_an_openai_candidate(messages):
    with pytest.raises(VendorUnsupported, match="needs a message with text") as err:
        openai_request_to_messages({"messages": messages}, "c")
    assert err.value.param == "messages"


@pytest.mark.parametrize("given", ["image/jpg", "image/JPG", "image/jpeg"])
def test_a_jpg_image_reaches_anthropic_as_the_jpeg_it_takes(given):
    part = {"type": "image_url", "image_url": {"url": f"data:{given};base64,/9j/4AAQ"}}
    body = {"messages": [{"role": "user", "content": [part]}]}
    source = openai_request_to_messages(body, "c")["messages"][0]["content"][0]["source"]
    assert source == {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}


def test_audio_in_is_this_candidate_s_refusal_so_an_openai_one_is_tried_next():
    audio = {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}}
    content = [{"type": "text", "text": "transcribe"}, audio]
    with pytest.raises(VendorUnsupported, match=r"messages\.0\.content\.1: .*audio") as err:
        openai_request_to_messages({"messages": [{"role": "user", "content": content}]}, "c")
    assert err.value.final_for_candidate and err.value.status == 400


def test_a_text_document_is_text_to_openai_vendors_and_a_document_to_anthropic_ones():
    text_doc = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "The sky is blue."},
        "title": "facts",
        "context": "from the encyclopedia",
        "citations": {"enabled": True},
        "cache_control": {"type": "ephemeral"},
    }
    request = {
        "model": "c",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": [text_doc]}],
    }
    neutral = messages_request_to_openai(request)
    assert without_cache_control(neutral)["messages"][0]["content"] == [
        {"type": "text", "text": "The sky is blue."}
    ]
    assert openai_request_to_messages(neutral, "claude")["messages"][0]["content"] == [text_doc]


@pytest.mark.parametrize(
    "source",
    [
        {"type": "url", "url": "https://example.com/terms.pdf"},
        {"type": "file", "file_id": "file_011"},
        {"type": "content", "content": [{"type": "text", "text": "chunk one"}]},
    ],
)
def test_a_document_only_anthropic_can_read_reaches_anthropic_and_is_refused_elsewhere(source):
    """Refused by an OpenAI-format candidate only (``VendorUnsupported``): an Anthropic
    candidate later in the plan still gets it; with none, the client hears a 400."""
    doc = {"type": "document", "source": source}
    request = {"model": "c", "max_tokens": 64, "messages": [{"role": "user", "content": [doc]}]}
    neutral = messages_request_to_openai(request)
    assert openai_request_to_messages(neutral, "claude")["messages"][0]["content"] == [doc]
    with pytest.raises(VendorUnsupported, match="reaches Anthropic vendors only") as err:
        without_cache_control(neutral)
    assert err.value.retryable and err.value.status == 400


def test_json_mode_beside_client_tools_makes_the_model_call_one_or_answer_json():
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [tool],
        "response_format": {"type": "json_object"},
    }
    out = openai_request_to_messages(body, "m")
    assert [t["name"] for t in out["tools"]] == ["f", "relay_json_answer"]
    assert out["tool_choice"] == {"type": "any"}, "no prose before the JSON in a stream"
    one_at_a_time = openai_request_to_messages({**body, "parallel_tool_calls": False}, "m")
    assert one_at_a_time["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_structured_output_becomes_a_json_schema_format_and_effort_rides_along():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    request = {
        "model": "claude",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "x"}],
        "output_config": {"format": {"type": "json_schema", "schema": schema}, "effort": "low"},
    }
    neutral = messages_request_to_openai(request)
    assert neutral["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }
    assert neutral["output_config"] == {"effort": "low"}
    to_claude = openai_request_to_messages(neutral, "claude-x")
    assert to_claude["output_config"] == {"effort": "low"}
    assert to_claude["tool_choice"] == {"type": "tool", "name": "relay_json_answer"}
    assert "output_config" not in without_cache_control(neutral), "other vendors go without"
    older = {**request, "output_config": None, "output_format": request["output_config"]["format"]}
    assert messages_request_to_openai(older)["response_format"] == neutral["response_format"]


@pytest.mark.parametrize(
    "config",
    ["low", {"format": {"type": "json_object"}}, {"format": {"type": "json_schema"}}],
)
def test_a_malformed_output_config_is_a_400_naming_it(config):
    request = {"model": "c", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(BadRequest, match="output_config"):
        messages_request_to_openai({**request, "output_config": config})


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        {"type": "computer_20250124", "name": "computer", "display_width_px": 1024,
         "display_height_px": 768},
        {"type": "memory_20250818", "name": "memory"},
    ],
)  # fmt: skip
def test_anthropic_s_client_tools_reach_anthropic_vendors_as_sent_and_are_refused_elsewhere(
    tool,
):
    request = {
        "model": "c",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "list the files"}],
        "tools": [tool],
        "tool_choice": {"type": "tool", "name": tool["name"]},
    }
    neutral = messages_request_to_openai(request)
    to_claude = openai_request_to_messages(neutral, "claude")
    assert to_claude["tools"] == [tool]
    assert to_claude["tool_choice"] == {"type": "tool", "name": tool["name"]}
    refusal = f"{tool['type']} tool reaches Anthropic vendors only"
    with pytest.raises(VendorUnsupported, match=refusal) as err:
        without_cache_control(neutral)
    assert err.value.retryable and err.value.param == "tools"


def test_one_hour_cache_writes_are_read_apart_and_told_back() -> None:
    from schemas.formats.anthropic import _anthropic_usage, _usage_from_anthropic

    vendor = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 0,
        "output_tokens": 5,
        "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 1000},
    }
    usage = _usage_from_anthropic(vendor)
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (3000, 1000)
    assert _anthropic_usage(usage) == vendor


def test_an_anthropic_vendor_s_opening_usage_reaches_an_anthropic_client_s_message_start():
    """Some clients take input and cache counts from message_start alone: an Anthropic
    vendor's own reach them there; an OpenAI client's chunks never show the extension."""
    from schemas.formats.anthropic import without_start_usage

    vendor = MessageEventsToChunks()
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 25, "cache_read_input_tokens": 2000,
                      "cache_creation_input_tokens": 100, "output_tokens": 1},
        },
    }  # fmt: skip
    [opening] = vendor.feed("message_start", start)
    assert isinstance(opening, dict)
    events = ChunksToMessageEvents("claude-alias", "msg_x").feed(opening)
    assert events[0][1]["message"]["usage"] == start["message"]["usage"]
    plain = without_start_usage(opening)
    assert "anthropic_start_usage" not in plain and plain["choices"] == opening["choices"]
    other = ChunksToMessageEvents("claude-alias", "msg_y").feed(plain)  # an OpenAI vendor's
    assert other[0][1]["message"]["usage"] == {"input_tokens": 0, "output_tokens": 0}


def test_openai_allowed_tools_narrow_the_tools_claude_gets():
    def fn(name: str) -> dict[str, Any]:
        return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}

    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [fn("a"), fn("b"), fn("c")],
        "tool_choice": {
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "required",
                "tools": [{"type": "function", "function": {"name": "b"}}],
            },
        },
    }
    out = openai_request_to_messages(body, "claude-sonnet-4-5")
    assert [t["name"] for t in out["tools"]] == ["b"] and out["tool_choice"] == {"type": "any"}
    auto = {
        **body,
        "tool_choice": {**body["tool_choice"], "allowed_tools": {"mode": "auto", "tools": []}},
    }
    assert "tools" not in openai_request_to_messages(auto, "claude-sonnet-4-5")
    named = openai_request_to_messages({**body, "tool_choice": fn("c")}, "claude-sonnet-4-5")
    assert named["tool_choice"] == {"type": "tool", "name": "c"}
    odd = openai_request_to_messages({**body, "tool_choice": {"type": "new"}}, "claude-sonnet-4-5")
    assert "tool_choice" not in odd, "a choice it cannot say is Anthropic's default, auto"


def test_a_long_run_of_one_role_becomes_one_turn_at_the_cost_of_its_length():
    """80 000 user messages in a row (2.6 MB) took a worker 16 s when each merge copied
    the turn so far; one pass builds the turn."""
    import time

    body = {"messages": [{"role": "user", "content": f"m{i}"} for i in range(80_000)]}
    started = time.perf_counter()
    [turn] = openai_request_to_messages(body, "claude-sonnet-4-5")["messages"]
    assert time.perf_counter() - started < 5.0
    assert len(turn["content"]) == 80_000 and turn["content"][-1]["text"] == "m79999"


# -- a tool's strict and own fields; text blocks in order; streamed arguments ------------


def test_a_custom_tool_s_own_fields_reach_anthropic_vendors_and_strict_every_vendor():
    tool = {
        "name": "weather",
        "description": "Weather now",
        "input_schema": WEATHER_SCHEMA,
        "strict": True,
        "input_examples": [{"city": "Oslo"}],
        "defer_loading": True,
        "cache_control": {"type": "ephemeral"},
    }
    request = {"model": "c", "max_tokens": 64, "messages": [{"role": "user", "content": "x"}]}
    neutral = messages_request_to_openai({**request, "tools": [tool]})
    assert openai_request_to_messages(neutral, "claude")["tools"] == [tool]
    function = {"name": "weather", "description": "Weather now", "parameters": WEATHER_SCHEMA}
    assert without_cache_control(neutral)["tools"] == [
        {"type": "function", "function": {**function, "strict": True}}
    ]
    plain = {k: v for k, v in tool.items() if k not in ("strict", "input_examples")}
    neutral = messages_request_to_openai({**request, "tools": [{**plain, "strict": False}]})
    assert openai_request_to_messages(neutral, "claude")["tools"] == [plain]


def test_tool_fields_a_body_carries_itself_never_remake_the_tool():
    """The extension is the client's own fields only: a body that says a type (a server
    tool, billed per use), a name or a schema in it does not change the tool."""
    forged: dict[str, Any] = {
        "type": "web_search_20250305",
        "name": "web_search",
        "input_schema": {},
        "input_examples": [{"city": "Oslo"}],
    }
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [
            {
                "type": "function",
                "function": {"name": "weather", "parameters": WEATHER_SCHEMA},
                "anthropic_tool_fields": forged,
            }
        ],
    }
    assert openai_request_to_messages(body, "claude")["tools"] == [
        {"name": "weather", "input_schema": WEATHER_SCHEMA, "input_examples": [{"city": "Oslo"}]}
    ]
    forged["max_uses"] = 99  # a server tool's field: never on a tool of the client's
    assert "max_uses" not in openai_request_to_messages(body, "claude")["tools"][0]


def test_a_tool_field_the_relay_does_not_carry_is_a_400_naming_it():
    request = {"model": "c", "max_tokens": 64, "messages": [{"role": "user", "content": "x"}]}
    tool = {"name": "weather", "input_schema": WEATHER_SCHEMA, "max_uses": 3}
    with pytest.raises(BadRequest, match=r"tools\.0\.max_uses"):
        messages_request_to_openai({**request, "tools": [tool]})


@pytest.mark.parametrize(
    "message",
    [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "see",
                    "anthropic_document": {
                        "type": "container_upload",
                        "file_id": "f",
                        "source": None,
                    },
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "c1",
            "content": "ok",
            "anthropic_result": [{"type": "container_upload", "file_id": "f"}],
        },
    ],
)
def test_extension_fields_a_body_carries_itself_bring_no_block_the_ingress_would_refuse(message):
    """An OpenAI-format body may carry the relay's own extension fields: what they hold
    reaches an Anthropic vendor only if it is a block the Messages ingress lets in."""
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]}  # fmt: skip
    body = {"messages": [{"role": "user", "content": "x"}, call, message]}
    with pytest.raises(BadRequest, match=r"not supported|must be a document"):
        openai_request_to_messages(body, "claude")


INTERLEAVED_ANSWER = [
    {"type": "text", "text": "First I'll look it up."},
    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
    {"type": "text", "text": "Done."},
]


@pytest.mark.parametrize(
    "content",
    [
        INTERLEAVED_ANSWER,
        [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
    ],
)
def test_an_answer_s_text_blocks_stay_apart_and_in_order_whole_or_cached(content):
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 30},
    }
    neutral, usage = messages_response_to_openai(message)
    said = neutral["choices"][0]["message"]
    # OpenAI's one string joins them with nothing between, as a stream's deltas join.
    assert said["content"] == "".join(b.get("text", "") for b in content)
    assert openai_response_to_messages(neutral, usage, "claude")["content"] == content
    if len(content) == 3:  # streamed and cached: the same blocks from the cache
        from tests.support.anthropic_stream import through_a_stream

        chunks, _ = through_a_stream(message)
        assembled = assemble_chunks(chunks)
        assert openai_response_to_messages(assembled, usage, "claude")["content"] == content


def test_one_text_before_tool_calls_needs_no_blocks_of_its_own():
    content = INTERLEAVED_ANSWER[:2]
    message = {"content": content, "stop_reason": "tool_use", "usage": {}}
    neutral, usage = messages_response_to_openai(message)
    assert "anthropic_content" not in neutral["choices"][0]["message"]
    assert openai_response_to_messages(neutral, usage, "claude")["content"] == content
    history = messages_request_to_openai(
        {"model": "c", "max_tokens": 9, "messages": [{"role": "assistant", "content": content}]}
    )
    assert "anthropic_content" not in history["messages"][0]


def test_an_assistant_turn_s_text_blocks_reach_anthropic_as_they_were_and_openai_joined():
    content = [
        {"type": "text", "text": "Step one."},
        {"type": "text", "text": "Step two."},
        *INTERLEAVED_ANSWER[1:],
    ]
    neutral = messages_request_to_openai(
        {"model": "c", "max_tokens": 9, "messages": [{"role": "assistant", "content": content}]}
    )
    assert openai_request_to_messages(neutral, "claude")["messages"][0]["content"] == content
    plain = without_cache_control(neutral)["messages"][0]
    assert plain["content"] == "Step one.Step two.Done." and "anthropic_content" not in plain


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"a": [1, -2.5e-3, 0, {"b": None}], "c": True, "d": False},
        {'q"\\': "\u00e9\n\t\u2028", "e": 1e21, "f": [[], {}], "g": 12345678901234567890},
    ],
)
def test_every_prefix_of_a_json_object_begins_one(value):
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
        for end in range(len(text)):
            check = JsonObjectPrefix()
            assert check.feed(text[:end]) and not check.whole, text[:end]
        check = JsonObjectPrefix()
        assert all(check.feed(piece) for piece in text) and check.whole


@pytest.mark.parametrize(
    "text",
    [
        "{'city': 'Paris'}",
        "[1]",
        '"text"',
        "null",
        '{"a": 1}}',
        '{"a": 1} {"b": 2}',
        '{"a": 01}',
        '{"a": 1.}',
        '{"a": -}',
        '{"a": tru}',
        '{"a": 1,}',
        '{"a" 1}',
        '{"a": "\\x"}',
        '{"a": "\\u12"}',
        '{"a": "line\nbreak"}',
        '{"a": [1,]}',
        '{"a": NaN}',
    ],
)
def test_what_is_no_json_object_is_found_out_as_it_comes(text):
    check = JsonObjectPrefix()
    assert not all(check.feed(piece) for piece in text)
    assert not check.feed("}") and not check.whole, "broken stays broken"


def test_a_call_whose_arguments_break_lets_the_next_call_stream():
    """Its block gets nothing more (the client's input is what parsed before), and the
    next call need not wait for arguments that can never be whole."""
    from tests.support.anthropic_stream import blocks, client_message

    convert = ChunksToMessageEvents("m", "msg_4")

    def tool(index, **fields):
        return {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, **fields}]}}]}

    chunks = [
        tool(0, id="call_a", function={"name": "weather", "arguments": '{"city": '}),
        tool(0, function={"arguments": "'Oslo'}"}),
        tool(1, id="call_b", function={"name": "clock", "arguments": {"tz": "UTC"}}),
        tool(0, function={"arguments": "}"}),
    ]
    events = [event for c in chunks for event in convert.feed(c)]
    names = [name for name, _ in events]
    assert names.count("content_block_start") == 2, "call_b did not wait for the end"
    events += convert.finish(Usage(input_tokens=5, output_tokens=9))
    partial = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"]
    assert partial == ['{"city": ', '{"tz": "UTC"}']
    assert blocks(client_message(chunks)) == [
        {"type": "tool_use", "id": "call_a", "name": "weather", "input": {}},
        {"type": "tool_use", "id": "call_b", "name": "clock", "input": {"tz": "UTC"}},
    ], "what the anthropic SDK makes of it"


@pytest.mark.parametrize(
    "first",
    [
        {"index": 0, "function": {"arguments": ""}},  # a bare fragment, then id and name
        {"index": 0, "function": {"arguments": '{"ci'}},  # some arguments, then the rest
        {"index": 0, "id": "call_late", "function": {"arguments": ""}},  # the id, then the name
    ],
)
def test_a_call_named_after_its_first_fragment_streams_under_its_name_and_id(
    first: dict[str, Any],
) -> None:
    """A server that opens a call with a fragment that does not name it: the tool_use
    block (whose start says its id and name once and for all) waits for the fragment
    that does, so an Anthropic client gets the vendor's name and id, as the whole answer
    has them, not "" under an id of the relay's."""
    from tests.support.anthropic_stream import blocks, client_message

    def tool(**fields: Any) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, **fields}]}}]}

    rest = '{"city":"Oslo"}'.removeprefix(first["function"]["arguments"])
    chunks = [
        {"choices": [{"index": 0, "delta": {"tool_calls": [first]}}]},
        tool(
            id="call_late", type="function", function={"name": "get_weather", "arguments": rest[:5]}
        ),
        tool(function={"arguments": rest[5:]}),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    expected = {
        "type": "tool_use",
        "id": "call_late",
        "name": "get_weather",
        "input": {"city": "Oslo"},
    }
    assert blocks(client_message(chunks)) == [expected]
    whole = assemble_chunks(chunks)["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["name"]) for c in whole] == [("call_late", "get_weather")]
    convert = ChunksToMessageEvents("m", "msg_5")
    events = [event for c in chunks[:2] for event in convert.feed(c)]
    assert [name for name, _ in events][-2:] == ["ping", "content_block_delta"], (
        "the block opens, with the arguments so far, on the fragment that names it"
    )


@pytest.mark.parametrize("then", ["text", "end"])
def test_a_call_nothing_names_still_comes_in_its_place(then: str) -> None:
    """A call held for want of a name waits only until other output (or the end) must go
    out: it comes first, as it came, with its arguments; a named call behind it waits
    for it, so the blocks keep the order the calls began in."""
    from tests.support.anthropic_stream import blocks, client_message

    def tool(index: int, **fields: Any) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, **fields}]}}]}

    chunks = [
        tool(0, function={"arguments": '{"city":"Oslo"}'}),
        tool(1, id="call_b", function={"name": "clock", "arguments": "{}"}),
    ]
    if then == "text":
        chunks.append({"choices": [{"index": 0, "delta": {"content": "Done."}}]})
    got = blocks(client_message(chunks))
    assert [(b["type"], b.get("name"), b.get("input")) for b in got] == [
        ("tool_use", "", {"city": "Oslo"}),
        ("tool_use", "clock", {}),
    ] + ([("text", None, None)] if then == "text" else [])
    assert got[0]["id"].startswith("toolu_") and got[1]["id"] == "call_b"
