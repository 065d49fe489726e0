"""The Responses API's translations, checked against the official SDK's own types and its
stream accumulator (the one ``client.responses.stream()`` runs)."""

from __future__ import annotations

from typing import Any

import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from schemas.errors import (
    BadRequest,
    BudgetExceeded,
    ContentFiltered,
    DeadlineExceeded,
    RelayError,
    VendorBadRequest,
    VendorRateLimited,
    VendorUnavailable,
)
from schemas.formats.openai import response_to_chunks
from schemas.formats.responses import (
    ChunksToResponseEvents,
    openai_response_to_responses,
    responses_request_to_openai,
)
from schemas.usage import Usage

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def completion(
    content: str | None = None, calls: list[dict[str, Any]] | None = None, finish: str = "stop"
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_a_string_input_and_instructions_become_system_and_user_turns() -> None:
    body = {
        "model": "gpt-4o-mini",
        "instructions": "Be brief.",
        "input": "Hi",
        "max_output_tokens": 50,
        "temperature": 0.2,
        "stream": True,
    }
    assert responses_request_to_openai(body) == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 50,
        "temperature": 0.2,
        "stream": True,
    }


def test_items_tools_and_formats_map_onto_chat() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "developer", "content": "Use tools."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather here?"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "get_weather",
                "arguments": '{"city":"Oslo"}',
            },
            {
                "type": "function_call",
                "call_id": "c2",
                "name": "get_weather",
                "arguments": '{"city":"Rome"}',
            },
            {"type": "function_call_output", "call_id": "c1", "output": "rain"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "sun"}],
            },
            {"role": "assistant", "content": [{"type": "output_text", "text": "Rain and sun."}]},
        ],
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {
            "format": {
                "type": "json_schema",
                "name": "w",
                "schema": {"type": "object"},
                "strict": True,
            }
        },
        "reasoning": {"effort": "low"},
    }
    out = responses_request_to_openai(body)
    assert out["messages"] == [
        {"role": "developer", "content": "Use tools."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                call("c1", "get_weather", '{"city":"Oslo"}'),
                call("c2", "get_weather", '{"city":"Rome"}'),
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "sun"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Rain and sun."}]},
    ]
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": WEATHER["parameters"],
            },
        }
    ]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
    }
    assert out["reasoning_effort"] == "low"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"model": "m", "input": "hi", "background": True}, "background"),
        ({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0"),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input.0.role"),
        (
            {
                "model": "m",
                "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}],
            },
            "input.0.content.0.file_data",
        ),
        (
            {
                "model": "m",
                "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}],
            },
            "input.0.content.0.image_url",
        ),
        ({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}, "tools.0"),
        ({"model": "m", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format"),
        ({"model": "m", "input": "hi", "text": {"format": "json_object"}}, "text.format"),
        (
            {"model": "m", "input": "hi", "context_management": [{"type": "compaction"}]},
            "context_management",
        ),
        ({"model": "m", "input": "hi", "truncation": "middle"}, "truncation"),
        (
            {"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}},
            "text.format.schema",
        ),
        (
            {
                "model": "m",
                "input": "hi",
                "text": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
            },
            "text.format.name",
        ),
        ({"model": "m", "input": "hi", "reasoning": "high"}, "reasoning"),
        ({"model": "m", "input": "hi", "stream": "false"}, "stream"),
        ({"model": "m", "input": "hi", "metadata": {"n": 1}}, "metadata"),
        (
            {
                "model": "m",
                "input": [
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [{"type": "input_image", "image_url": "https://x/y.png"}],
                    }
                ],
            },
            "input.0.output",
        ),
        ({"model": "m", "input": "hi", "metadata": ["x"]}, "metadata"),
        ({"model": "m", "input": "hi", "top_logprobs": 3}, "top_logprobs"),
        (
            {"model": "m", "input": "hi", "include": ["message.output_text.logprobs"]},
            "top_logprobs",
        ),
        ({"model": "m", "input": "hi", "tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
        ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input.0.call_id"),
        # Settings of the wrong type, as OpenAI refuses them (not a vendor's 400 later, nor
        # a vendor reading them its own way):
        ({"model": "m", "input": "hi", "text": {"verbosity": 5}}, "text.verbosity"),
        ({"model": "m", "input": "hi", "verbosity": "loud"}, "verbosity"),
        ({"model": "m", "input": "hi", "tools": [{**WEATHER, "strict": "yes"}]}, "tools.0.strict"),
        (
            {"model": "m", "input": "hi", "tools": [{**WEATHER, "parameters": 5}]},
            "tools.0.parameters",
        ),
        (
            {"model": "m", "input": "hi", "tools": [{**WEATHER, "description": 7}]},
            "tools.0.description",
        ),
        (
            {
                "model": "m",
                "input": "hi",
                "text": {
                    "format": {"type": "json_schema", "name": "x", "schema": {}, "strict": "y"}
                },
            },
            "text.format.strict",
        ),
        (
            {
                "model": "m",
                "input": "hi",
                "text": {
                    "format": {"type": "json_schema", "name": "x", "schema": {}, "description": 1}
                },
            },
            "text.format.description",
        ),
        ({"model": "m", "input": "hi", "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        (
            {
                "model": "m",
                "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}],
            },
            "input.0.arguments",
        ),
    ],
)
def test_what_the_relay_cannot_take_is_a_400_naming_the_field(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        responses_request_to_openai(body)
    assert refused.value.param == param


def test_an_answer_is_a_response_the_sdk_reads() -> None:
    request = {"model": "gpt-4o-mini", "input": "hi", "tools": [WEATHER], "metadata": {"job": "x"}}
    usage = Usage(input_tokens=12, output_tokens=7, cache_read_tokens=4)
    body = completion("Let me check.", [call("c1", "get_weather", '{"city":"Oslo"}')], "tool_calls")
    response = Response.model_validate(openai_response_to_responses(body, usage, request))
    assert response.status == "completed" and response.model == "gpt-4o-mini"
    assert response.output_text == "Let me check."
    [_, fc] = response.output
    assert fc.type == "function_call" and (fc.call_id, fc.name) == ("c1", "get_weather")
    assert fc.arguments == '{"city":"Oslo"}'
    assert response.usage is not None and response.usage.input_tokens_details.cached_tokens == 4
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 7)
    assert response.metadata == {"job": "x"} and response.tools[0].name == "get_weather"  # type: ignore[union-attr]


def test_a_cut_off_answer_is_incomplete() -> None:
    body = completion("Once upon", finish="length")
    response = Response.model_validate(openai_response_to_responses(body, Usage(), {"model": "m"}))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def stream(request: dict[str, Any], body: dict[str, Any], usage: Usage) -> list[dict[str, Any]]:
    events = ChunksToResponseEvents(request, "resp_test")
    out = events.start()
    for chunk in response_to_chunks(body):
        out += events.feed(chunk)
    out += events.finish(usage)
    assert all(name == data["type"] for name, data in out)
    return [data for _, data in out]


def test_a_stream_is_what_the_sdk_accumulates_into_the_same_response() -> None:
    request = {"model": "gpt-4o-mini", "input": "hi", "tools": [WEATHER]}
    body = completion(
        "Checking both.",
        [
            call("c1", "get_weather", '{"city":"Oslo"}'),
            call("c2", "get_weather", '{"city":"Rome"}'),
        ],
        "tool_calls",
    )
    events = stream(request, body, Usage(input_tokens=5, output_tokens=9))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    state = ResponseStreamState(input_tools=[WEATHER], text_format=omit)  # type: ignore[list-item,var-annotated]
    for data in events:
        state.handle_event(EVENTS.validate_python(data))
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == "Checking both."
    assert [(o.call_id, o.arguments) for o in final.output if o.type == "function_call"] == [
        ("c1", '{"city":"Oslo"}'),
        ("c2", '{"city":"Rome"}'),
    ]
    kinds = [e["type"] for e in events]
    assert (
        kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 3
    )
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "Checking both."
    added = next(e for e in events if e["type"] == "response.output_item.added")
    assert added["item"]["content"] == [], "an item is announced before its parts"


def test_a_cut_off_stream_ends_incomplete_and_an_error_is_an_error_event() -> None:
    events = stream({"model": "m"}, completion("Once upon", finish="length"), Usage())
    assert events[-1]["type"] == "response.incomplete"
    Response.model_validate(events[-1]["response"])
    down = VendorUnavailable("down")
    err = ChunksToResponseEvents({"model": "m"}, "resp_x").error(down)
    assert [EVENTS.validate_python(data).type for _, data in err] == ["error", "response.failed"]
    failed = Response.model_validate(err[1][1]["response"])
    assert failed.status == "failed" and failed.error and failed.error.code == "server_error"


@pytest.mark.parametrize(
    ("err", "failed_code"),
    [
        (BadRequest("messages.1.content: image too large", param="messages"), "invalid_prompt"),
        (VendorBadRequest("openai: HTTP 400: bad", param="tools"), "invalid_prompt"),
        (ContentFiltered("flagged"), "invalid_prompt"),
        (BudgetExceeded("spent"), "rate_limit_exceeded"),
        (VendorRateLimited("slow down"), "rate_limit_exceeded"),
        (VendorUnavailable("down"), "server_error"),
        (DeadlineExceeded("late"), "server_error"),
        (RelayError("boom"), "server_error"),
    ],
)
def test_a_failure_keeps_its_param_and_only_a_server_side_one_is_a_server_error(
    err: RelayError, failed_code: str
) -> None:
    """A client's error that comes after the stream began (a queued request's vendor
    400) is still the client's: the error event names its field, response.failed says
    OpenAI's code for it, not server_error."""
    error, failed = ChunksToResponseEvents({"model": "m"}, "resp_x").error(err)
    event = EVENTS.validate_python(error[1])
    assert (event.code, event.message, event.param) == (err.code, err.message, err.param)
    response = Response.model_validate(failed[1]["response"])
    assert response.error and (response.error.code, response.error.message) == (
        failed_code,
        err.message,
    )


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def frag(index: int, arguments: str, **first: Any) -> dict[str, Any]:
    fn: dict[str, Any] = {"arguments": arguments}
    if "name" in first:
        fn["name"] = first.pop("name")
    return {"tool_calls": [{"index": index, **first, "function": fn}]}


def run(chunks: list[dict[str, Any]], usage: Usage | None = None) -> list[dict[str, Any]]:
    """Events for ``chunks``, each checked by the SDK's types and fed to its accumulator."""
    events = ChunksToResponseEvents({"model": "m", "tools": [WEATHER]}, "resp_t")
    out = events.start()
    for c in chunks:
        out += events.feed(c)
    out += events.finish(usage or Usage())
    state = ResponseStreamState(input_tools=[WEATHER], text_format=omit)  # type: ignore[list-item,var-annotated]
    for _, data in out:
        state.handle_event(EVENTS.validate_python(data))
    return [data for _, data in out]


def test_tool_call_arguments_sent_as_an_object_are_json_text() -> None:
    """Some servers send a call's arguments as an object: streamed or not, the function
    call carries them as JSON text (the object replacing any text before it, as chat's
    assembler takes it), not a TypeError that cuts the stream."""
    events = run(
        [
            chunk(frag(0, "", id="c1", name="get_weather")),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": {"city": "Oslo"}}}]}),
            chunk({}, "tool_calls"),
        ]
    )
    final = Response.model_validate(events[-1]["response"])
    assert [(o.type, getattr(o, "arguments", None)) for o in final.output] == [
        ("function_call", '{"city":"Oslo"}')
    ]
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [e["arguments"] for e in done] == ['{"city":"Oslo"}']
    whole = completion(calls=[{"id": "c1", "function": {"name": "f", "arguments": {"x": 1}}}])
    reply = openai_response_to_responses(whole, Usage(), {"model": "m"})
    assert Response.model_validate(reply).output[0].arguments == '{"x":1}'  # type: ignore[union-attr]


def test_interleaved_tool_call_fragments_each_keep_their_own_item() -> None:
    events = run(
        [
            chunk(frag(0, "", id="c1", name="get_weather")),
            chunk(frag(1, "", id="c2", name="get_weather")),
            chunk(frag(0, '{"city":')),
            chunk(frag(1, '{"city":"Rome"}')),
            chunk(frag(0, '"Oslo"}')),
            chunk({}, "tool_calls"),
        ]
    )
    final = Response.model_validate(events[-1]["response"])
    calls = [(o.call_id, o.arguments) for o in final.output if o.type == "function_call"]
    assert calls == [("c1", '{"city":"Oslo"}'), ("c2", '{"city":"Rome"}')]
    arg_deltas = [
        (e["output_index"], e["delta"])
        for e in events
        if e["type"] == "response.function_call_arguments.delta"
    ]
    assert arg_deltas == [(0, '{"city":'), (1, '{"city":"Rome"}'), (0, '"Oslo"}')]


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
    """A server that opens a call with a fragment that does not name it: the streamed call
    is the vendor's (its name and id), as the whole answer's is, not "" under an id of the
    relay's; and the openai SDK reads the sequence (``run``: its accumulator refuses a
    call whose call_id changes between its added and done events)."""
    rest = '{"city":"Oslo"}'.removeprefix(first["function"]["arguments"])
    events = run(
        [
            chunk({"tool_calls": [first]}),
            chunk(frag(0, rest[:5], id="call_late", name="get_weather")),
            chunk(frag(0, rest[5:])),
            chunk({}, "tool_calls"),
        ]
    )
    final = Response.model_validate(events[-1]["response"])
    calls = [(o.name, o.call_id, o.arguments) for o in final.output if o.type == "function_call"]
    assert calls == [("get_weather", "call_late", '{"city":"Oslo"}')]
    [args_done] = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    [added] = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    [done] = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert args_done["name"] == done["name"] == "get_weather"
    assert added["call_id"] == done["call_id"] == "call_late"
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(deltas) == '{"city":"Oslo"}'
    whole = completion(calls=[call("call_late", "get_weather", '{"city":"Oslo"}')])
    plain = Response.model_validate(openai_response_to_responses(whole, Usage(), {"model": "m"}))
    assert [(o.name, o.call_id) for o in plain.output] == [("get_weather", "call_late")]  # type: ignore[union-attr]


@pytest.mark.parametrize("then", ["text", "end", "error"])
def test_a_call_nothing_ever_names_still_comes_in_its_place(then: str) -> None:
    """Fragments that never name their call are held only until other output (or the
    end) must follow them: the call comes first, as it came, with what it was sent."""
    chunks = [chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})]
    if then == "text":
        chunks.append(chunk({"content": "Done."}))
    events = ChunksToResponseEvents({"model": "m", "tools": [WEATHER]}, "resp_t")
    out = events.start()
    for c in chunks:
        out += events.feed(c)
    if then == "error":
        out += events.error(RelayError("boom"))
    else:
        out += events.finish(Usage())
    state = ResponseStreamState(input_tools=[WEATHER], text_format=omit)  # type: ignore[list-item,var-annotated]
    for _, data in out:
        state.handle_event(EVENTS.validate_python(data))
    output = out[-1][1]["response"]["output"]
    assert [(o["type"], o.get("arguments")) for o in output][:1] == [("function_call", "{}")]
    assert [o["type"] for o in output] == ["function_call"] + (
        ["message"] if then == "text" else []
    )


def test_a_cut_off_answer_marks_its_last_item_incomplete_both_ways() -> None:
    events = run([chunk({"content": "Once upon"}), chunk({}, "length")])
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "incomplete" and final.output[-1].status == "incomplete"
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert done[-1]["item"]["status"] == "incomplete"
    body = completion("Once upon", finish="length")
    plain = Response.model_validate(openai_response_to_responses(body, Usage(), {"model": "m"}))
    assert plain.output[-1].status == "incomplete"


def test_a_stream_cut_off_while_reasoning_marks_the_reasoning_item_incomplete() -> None:
    """A thinking model that spends its whole limit thinking: its reasoning item is the
    one cut off, and its output_item.done says so, as response.incomplete does."""
    events = run([chunk({"reasoning_content": "Let me think about"}), chunk({}, "length")])
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "incomplete"
    [done] = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert (done["type"], done["status"]) == ("reasoning", "incomplete")
    assert (final.output[0].id, final.output[0].status) == (done["id"], "incomplete")


def test_text_and_refusal_are_both_kept_and_a_null_tool_name_is_empty() -> None:
    body = completion("Part of it.")
    body["choices"][0]["message"]["refusal"] = "I can't say the rest."
    body["choices"][0]["message"]["tool_calls"] = [
        {"id": "c1", "type": "function", "function": {"name": None, "arguments": "{}"}}
    ]
    response = Response.model_validate(openai_response_to_responses(body, Usage(), {"model": "m"}))
    kinds = [
        (o.type, o.content[0].type if o.type == "message" else o.name) for o in response.output
    ]
    assert kinds == [("message", "output_text"), ("message", "refusal"), ("function_call", "")]
    events = run([chunk({"content": "Part of it."}), chunk({"refusal": "No."}), chunk({}, "stop")])
    assert [o["content"][0]["type"] for o in events[-1]["response"]["output"]] == [
        "output_text",
        "refusal",
    ]


def test_echoed_nulls_still_make_a_valid_response() -> None:
    request = {"model": "m", "input": "x", "tool_choice": None, "parallel_tool_calls": None}
    body = completion("hi")
    Response.model_validate(openai_response_to_responses(body, Usage(), request))
    assert openai_response_to_responses({"choices": [None]}, Usage(), request)["output"] == []


def test_text_verbosity_is_chat_s_verbosity() -> None:
    body = {"model": "m", "input": "hi", "text": {"verbosity": "low"}}
    assert responses_request_to_openai(body)["verbosity"] == "low"


def test_tool_settings_without_tools_stay_behind_and_chat_s_twins_go_on() -> None:
    """Chat completions refuse tool_choice or parallel_tool_calls without tools, which
    the Responses API allows; service_tier, prompt_cache_key, safety_identifier and
    prompt_cache_retention are chat's too."""
    body = {
        "model": "m",
        "input": "hi",
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "service_tier": "flex",
        "prompt_cache_key": "tenant-42",
        "safety_identifier": "user-7",
        "prompt_cache_retention": "24h",
    }
    out = responses_request_to_openai(body)
    assert "tool_choice" not in out and "parallel_tool_calls" not in out
    assert (out["service_tier"], out["prompt_cache_key"], out["safety_identifier"]) == (
        "flex",
        "tenant-42",
        "user-7",
    )
    assert out["prompt_cache_retention"] == "24h"
    with_tools = responses_request_to_openai({**body, "tools": [WEATHER]})
    assert (with_tools["tool_choice"], with_tools["parallel_tool_calls"]) == ("auto", False)


def test_an_inline_file_is_chat_s_file_part() -> None:
    pdf = "data:application/pdf;base64,JVBERi0x"
    part = {"type": "input_file", "filename": "terms.pdf", "file_data": pdf}
    body = {"model": "m", "input": [{"role": "user", "content": [part]}]}
    assert responses_request_to_openai(body)["messages"][0]["content"] == [
        {"type": "file", "file": {"filename": "terms.pdf", "file_data": pdf}}
    ]


@pytest.mark.parametrize(
    "data", ["data:text/csv;base64,YSxiCjEsMgo=", "data:;base64,YSxi", "data:text/plain,a,b"]
)
def test_an_inline_file_that_is_not_a_pdf_is_a_400_naming_it(data: str) -> None:
    """Chat's file part (and an Anthropic vendor's document) is PDF only: a CSV is the
    client's 400, not sent on as document.pdf."""
    parts = [{"type": "input_text", "text": "sum b"}, {"type": "input_file", "file_data": data}]
    body = {"model": "m", "input": [{"role": "user", "content": parts}]}
    with pytest.raises(BadRequest, match="only PDF files") as refused:
        responses_request_to_openai(body)
    assert refused.value.param == "input.0.content.1.file_data"


THOUGHT = {"type": "thinking", "thinking": "Weather needs the tool.", "signature": "sig-1"}
THINKING_ANSWER = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [
        THOUGHT,
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 30},
}


def test_thinking_is_a_reasoning_item_streamed_or_not_sealed_when_asked() -> None:
    from schemas.formats.anthropic import messages_response_to_openai

    neutral, usage = messages_response_to_openai(THINKING_ANSWER)
    request = {"model": "m", "input": "hi", "tools": [WEATHER]}
    sealed_request = {**request, "include": ["reasoning.encrypted_content"]}
    whole = Response.model_validate(openai_response_to_responses(neutral, usage, sealed_request))
    assert [item.type for item in whole.output] == ["reasoning", "message", "function_call"]
    reasoning = whole.output[0]
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == THOUGHT["thinking"]
    assert reasoning.encrypted_content
    plain = openai_response_to_responses(neutral, usage, request)["output"][0]
    assert "encrypted_content" not in plain, "sealed only when asked for"

    events = stream(sealed_request, neutral, usage)
    state = ResponseStreamState(input_tools=[WEATHER], text_format=omit)  # type: ignore[list-item,var-annotated]
    for data in events:
        state.handle_event(EVENTS.validate_python(data))
    streamed = events[-1]["response"]["output"]
    assert [item["type"] for item in streamed] == ["reasoning", "message", "function_call"]
    assert streamed[0]["summary"][0]["text"] == THOUGHT["thinking"]
    assert streamed[0]["encrypted_content"] == reasoning.encrypted_content


def test_a_sealed_reasoning_item_sent_back_is_the_vendor_s_thinking_again() -> None:
    """A tool loop through the Responses API: the output items go back as input, and
    the turn that called the tool reaches an Anthropic vendor with its signed thinking."""
    from schemas.formats.anthropic import messages_response_to_openai, openai_request_to_messages

    neutral, usage = messages_response_to_openai(THINKING_ANSWER)
    request = {"model": "m", "input": "hi", "include": ["reasoning.encrypted_content"]}
    output = openai_response_to_responses(neutral, usage, request)["output"]
    result = {"type": "function_call_output", "call_id": "toolu_1", "output": "12C"}
    again = {"model": "m", "input": ["hi", *output, result]}
    again["input"][0] = {"role": "user", "content": "hi"}
    turn = openai_request_to_messages(responses_request_to_openai(again), "claude-x")
    blocks = turn["messages"][1]["content"]
    assert [b["type"] for b in blocks] == ["thinking", "text", "tool_use"]
    assert blocks[0] == THOUGHT
    foreign = {**output[0], "encrypted_content": "gAAAA-openai-opaque"}
    dropped = responses_request_to_openai({**again, "input": [again["input"][0], foreign]})
    assert dropped["messages"] == [{"role": "user", "content": "hi"}]


INTERLEAVED = [
    {"type": "thinking", "thinking": "one", "signature": "sig-1"},
    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
    {"type": "thinking", "thinking": "two", "signature": "sig-2"},
    {"type": "text", "text": "And g too."},
    {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {"b": 2}},
]


@pytest.mark.parametrize("streamed", [False, True])
def test_thinking_between_tool_calls_goes_back_in_its_place(streamed: bool) -> None:
    """Interleaved thinking (thinking, a call, thinking, another call): each run of
    thinking is a reasoning item where the model thought it, streamed or not, and the
    output sent back in a tool loop gives the vendor every signed block in its place."""
    from schemas.formats.anthropic import messages_response_to_openai, openai_request_to_messages

    answer = {**THINKING_ANSWER, "content": INTERLEAVED}
    neutral, usage = messages_response_to_openai(answer)
    request = {"model": "m", "input": "hi", "include": ["reasoning.encrypted_content"]}
    if streamed:
        output = stream(request, neutral, usage)[-1]["response"]["output"]
    else:
        output = openai_response_to_responses(neutral, usage, request)["output"]
    kinds = ["reasoning", "function_call", "reasoning", "message", "function_call"]
    assert [item["type"] for item in output] == kinds
    assert [output[n]["summary"][0]["text"] for n in (0, 2)] == ["one", "two"]

    results = [
        {"type": "function_call_output", "call_id": f"toolu_{n}", "output": str(n)} for n in (1, 2)
    ]
    items = [{"role": "user", "content": "hi"}, *output, *results]
    sent = openai_request_to_messages(
        responses_request_to_openai({**request, "input": items}), "claude-x"
    )
    assert sent["messages"][1] == {"role": "assistant", "content": INTERLEAVED}


def test_thinking_sent_back_after_its_turn_s_last_item_still_leads_that_turn() -> None:
    """A reasoning item that follows all its turn said (and precedes the tool results)
    goes back with that turn, first, where Anthropic wants a tool-use turn's thinking."""
    from schemas.formats.anthropic import messages_response_to_openai, openai_request_to_messages

    neutral, usage = messages_response_to_openai(THINKING_ANSWER)
    request = {"model": "m", "input": "hi", "include": ["reasoning.encrypted_content"]}
    reasoning, *said = openai_response_to_responses(neutral, usage, request)["output"]
    result = {"type": "function_call_output", "call_id": "toolu_1", "output": "12C"}
    items = [{"role": "user", "content": "hi"}, *said, reasoning, result]
    sent = openai_request_to_messages(
        responses_request_to_openai({**request, "input": items}), "claude-x"
    )
    assert [b["type"] for b in sent["messages"][1]["content"]] == ["thinking", "text", "tool_use"]


def test_settings_chat_passes_on_are_echoed_as_sent() -> None:
    request = {
        "model": "m",
        "input": "hi",
        "truncation": "auto",
        "service_tier": "flex",
        "prompt_cache_key": "k",
        "safety_identifier": "u",
        "prompt_cache_retention": "in_memory",
    }
    answer = Response.model_validate(
        openai_response_to_responses(completion("hi"), Usage(), request)
    )
    # truncation: the relay never drops input to fit, so it says "disabled" to "auto"
    assert (answer.truncation, answer.service_tier, answer.prompt_cache_key) == (
        "disabled",
        "flex",
        "k",
    )
    assert (answer.safety_identifier, answer.prompt_cache_retention) == ("u", "in_memory")


@pytest.mark.parametrize("streamed", [False, True])
def test_the_service_tier_is_the_one_the_vendor_says_it_used(streamed: bool) -> None:
    """OpenAI's answer names the tier that actually served it, which may differ from the
    one asked for: the Response says that one (response.created, sent before any answer,
    still echoes the request's), and the request's when the vendor names none."""
    request = {"model": "m", "input": "hi", "service_tier": "auto"}
    served = {**completion("hi"), "service_tier": "default"}
    if streamed:
        events = stream(request, served, Usage())
        assert events[0]["response"]["service_tier"] == "auto"
        answer = Response.model_validate(events[-1]["response"])
        unnamed = stream(request, completion("hi"), Usage())[-1]["response"]
    else:
        answer = Response.model_validate(openai_response_to_responses(served, Usage(), request))
        unnamed = openai_response_to_responses(completion("hi"), Usage(), request)
    assert answer.service_tier == "default"
    assert unnamed["service_tier"] == "auto"


def test_a_stream_s_service_tier_is_the_last_one_its_chunks_name() -> None:
    events = ChunksToResponseEvents({"model": "m", "service_tier": "flex"}, "resp_t")
    out = events.start()
    out += events.feed({**chunk({"content": "Hi"}), "service_tier": "flex"})
    out += events.feed({**chunk({}, "stop"), "service_tier": "default"})
    out += events.finish(Usage())
    assert out[-1][1]["response"]["service_tier"] == "default"


@pytest.mark.parametrize(
    "field", ["service_tier", "prompt_cache_key", "safety_identifier", "prompt_cache_retention"]
)
def test_a_setting_chat_passes_on_of_the_wrong_type_is_the_client_s_400(field: str) -> None:
    """Passed on as sent, so a vendor would refuse it later (and another candidate be
    tried): the Responses route refuses it first, naming the field."""
    from gateway.responses_routes import neutral_request

    with pytest.raises(BadRequest) as refused:
        neutral_request({"model": "m", "input": "hi", field: 123})
    assert refused.value.param == field
    assert neutral_request({"model": "m", "input": "hi", field: "24h"})[field] == "24h"


def test_settings_of_their_own_type_go_on_and_null_ones_are_not_set() -> None:
    tool = {**WEATHER, "strict": True, "description": None}
    fmt = {"type": "json_schema", "name": "x", "schema": {}, "strict": False, "description": "d"}
    body = {"model": "m", "input": "hi", "tools": [tool], "text": {"format": fmt}}
    out = responses_request_to_openai({**body, "verbosity": "high", "parallel_tool_calls": True})
    assert out["tools"][0]["function"] == {
        "name": "get_weather",
        "parameters": WEATHER["parameters"],
        "strict": True,
    }
    assert out["response_format"]["json_schema"] == {
        "name": "x",
        "schema": {},
        "strict": False,
        "description": "d",
    }
    assert (out["verbosity"], out["parallel_tool_calls"]) == ("high", True)


# -- errors raised in chat's words, said in the Responses request's --------------------

LOOP = [
    {"role": "user", "content": "weather?"},
    {"type": "reasoning", "id": "rs_1", "summary": []},
    {"role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "x"}]},
    {"type": "function_call", "call_id": "c3", "name": "f", "arguments": "{}"},
    {"role": "user", "content": [{"type": "input_text", "text": "and"}, {"type": "input_image", "image_url": "u"}]},
]  # fmt: skip
# chat: 0 system (instructions), 1 user, 2 assistant + c1 c2, 3 tool, 4 assistant c3, 5 user
LOOP_REQUEST = {"model": "m", "instructions": "be brief", "input": LOOP}


@pytest.mark.parametrize(
    ("chat", "responses"),
    [
        ("messages.0.content", "instructions"),
        ("messages.1.content", "input.0.content"),
        ("messages.2", "input"),  # the message, or one of its calls: not said which
        ("messages.2.content.0", "input.2.content.0"),
        ("messages.2.tool_calls.1.function.arguments", "input.4.arguments"),
        ("messages.2.tool_calls.0.id", "input.3.call_id"),
        ("messages.2.tool_calls.0.type", "input.3"),
        ("messages.2.tool_calls.5", "input"),
        ("messages.3.content.0.text", "input.5.output.0.text"),
        ("messages.3.tool_call_id", "input.5.call_id"),
        ("messages.4", "input.6"),
        ("messages.4.content", "input.6"),
        ("messages.5.content.1.image_url.url", "input.7.content.1.image_url"),
        ("messages.[5].content.[1]", "input.7.content.1"),  # (as OpenAI writes its param)
        ("messages.5.role", "input.7.role"),
        ("messages.9", "input"),
        ("messages", "input"),
        ("reasoning_effort", "reasoning.effort"),
        ("max_tokens", "max_output_tokens"),
        ("max_completion_tokens", "max_output_tokens"),
        ("response_format.json_schema.schema", "text.format.schema"),
        ("response_format", "text.format"),
        ("tools.1.function.parameters", "tools.1.parameters"),
        ("tool_choice.function.name", "tool_choice.name"),
        ("verbosity", "verbosity"),
        ("temperature", "temperature"),
        ("openai", "openai"),
    ],
)
def test_a_field_chat_names_is_the_one_the_responses_request_sent(
    chat: str, responses: str
) -> None:
    from schemas.formats.responses import responses_path

    assert responses_path(chat, LOOP_REQUEST) == responses
    string_input = {"model": "m", "input": "hi", "text": {"verbosity": "low"}}
    assert responses_path("messages.0.content", string_input) == "input"
    assert responses_path("verbosity", string_input) == "text.verbosity"


@pytest.mark.parametrize(
    ("err", "message", "param"),
    [
        (
            BadRequest("reasoning_effort: 'mega' is not one of low", param="reasoning_effort"),
            "reasoning.effort: 'mega' is not one of low",
            "reasoning.effort",
        ),
        (
            BadRequest("messages.5.content.1: an image needs a data: or http(s) URL"),
            "input.7.content.1: an image needs a data: or http(s) URL",
            None,
        ),
        (
            BadRequest("messages: this model needs a message with text in it", param="messages"),
            "input: this model needs a message with text in it",
            "input",
        ),
        (
            VendorBadRequest("openai: HTTP 400: Invalid schema", param="response_format"),
            "openai: HTTP 400: Invalid schema",
            "text.format",
        ),
    ],
)
def test_an_error_in_chat_s_words_reaches_a_responses_client_in_its_own(
    err: RelayError, message: str, param: str | None
) -> None:
    """The worker checks (and vendors refuse) the chat body: a Responses client hears the
    field it sent, whole or streamed."""
    from schemas.formats.responses import in_responses_words

    said = (err.message, err.param)
    assert (in_responses_words(err, LOOP_REQUEST).message, err.param) == (message, param)
    assert in_responses_words(err, LOOP_REQUEST).message == message, "said once"
    again = type(err)(said[0], param=said[1])
    error, failed = ChunksToResponseEvents(LOOP_REQUEST, "resp_x").error(again)
    event = EVENTS.validate_python(error[1])
    assert (event.message, event.param) == (message, param)
    response = Response.model_validate(failed[1]["response"])
    assert response.error and response.error.message == message


def test_a_reasoning_item_sent_back_unsealed_goes_on_as_its_turn_s_reasoning_content() -> None:
    """Another vendor's reasoning (an OpenAI-format one's reasoning_content, Ollama's
    thinking) comes back as a reasoning item with its text the summary; sent back in a
    tool loop, that text goes on as the reasoning_content of the assistant turn it
    belongs to, as a chat client would echo it (an Ollama vendor reads it as the turn's
    thinking; the OpenAI adapter sends no such field)."""
    from schemas.formats.anthropic import messages_response_to_openai

    answer = completion(None, [call("c1", "get_weather", "{}")], "tool_calls")
    answer["choices"][0]["message"]["reasoning_content"] = "I should look it up."
    request = {"model": "m", "input": "weather?", "tools": [WEATHER]}
    output = openai_response_to_responses(answer, Usage(), request)["output"]
    assert [item["type"] for item in output] == ["reasoning", "function_call"]
    result = {"type": "function_call_output", "call_id": "c1", "output": "12C"}
    items = [{"role": "user", "content": "weather?"}, *output, result]
    turn = responses_request_to_openai({**request, "input": items})["messages"][1]
    assert turn["reasoning_content"] == "I should look it up."
    assert turn["tool_calls"][0]["id"] == "c1"
    after = [{"role": "user", "content": "weather?"}, output[1], output[0], result]
    moved = responses_request_to_openai({**request, "input": after})["messages"][1]
    assert moved["reasoning_content"] == "I should look it up.", "after its turn's calls too"
    raw = {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "r"}]}
    with_raw = responses_request_to_openai({**request, "input": [items[0], raw, output[1]]})
    assert with_raw["messages"][1]["reasoning_content"] == "r"
    # A sealed one is an Anthropic vendor's signed thinking, never this text as well.
    neutral, usage = messages_response_to_openai(THINKING_ANSWER)
    sealed_request = {**request, "include": ["reasoning.encrypted_content"]}
    sealed = openai_response_to_responses(neutral, usage, sealed_request)["output"]
    back = [{"role": "user", "content": "weather?"}, *sealed, result]
    sealed_turn = responses_request_to_openai({**sealed_request, "input": back})["messages"][1]
    assert "reasoning_content" not in sealed_turn and sealed_turn["thinking_blocks"]
