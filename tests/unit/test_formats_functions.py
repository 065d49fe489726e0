"""The deprecated function calling, carried as tools and answered as a function call."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.errors import BadRequest
from schemas.formats.anthropic import openai_request_to_messages
from schemas.formats.functions import (
    answer_as_function_call,
    chunk_as_function_call,
    functions_to_tools,
    is_legacy,
)

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def legacy(**extra: object) -> dict[str, object]:
    return {
        "model": "m",
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            },
            {"role": "function", "name": "get_weather", "content": "12C"},
        ],
        "functions": [WEATHER],
        **extra,
    }


def test_functions_become_tools_and_the_history_pairs_calls_with_results() -> None:
    body = functions_to_tools(legacy(function_call={"name": "get_weather"}))
    assert "functions" not in body and "function_call" not in body
    assert body["tools"] == [{"type": "function", "function": WEATHER}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    _, call, result = body["messages"]
    [tool_call] = call["tool_calls"]
    assert "function_call" not in call
    assert tool_call["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert result == {"role": "tool", "tool_call_id": tool_call["id"], "content": "12C"}


@pytest.mark.parametrize(("given", "choice"), [("none", "none"), ("auto", "auto"), (None, None)])
def test_function_call_modes_become_tool_choice(given: object, choice: object) -> None:
    body = functions_to_tools(legacy(**({"function_call": given} if given else {})))
    assert body.get("tool_choice") == choice


@pytest.mark.parametrize("given", [None, "auto", {"name": "get_weather"}])
def test_the_model_is_asked_for_one_call_at_a_time_as_the_answer_holds_one(
    given: object,
) -> None:
    """``message.function_call`` holds one call: a second one, made and billed, would be
    dropped and missing from the history the client sends back."""
    body = functions_to_tools(legacy(**({"function_call": given} if given else {})))
    assert body["parallel_tool_calls"] is False
    claude = openai_request_to_messages(body, "claude-sonnet-4-5")
    assert claude["tool_choice"]["disable_parallel_tool_use"] is True


def test_one_call_at_a_time_is_not_asked_when_none_may_be_made_or_the_client_said() -> None:
    assert "parallel_tool_calls" not in functions_to_tools(legacy(function_call="none"))
    said = functions_to_tools(legacy(parallel_tool_calls=True))
    assert said["parallel_tool_calls"] is True


def test_a_body_in_tools_is_left_as_it_is_and_nonsense_is_a_400() -> None:
    modern = {"model": "m", "messages": [], "tools": [{"type": "function", "function": WEATHER}]}
    assert functions_to_tools(modern) is modern and not is_legacy(modern)
    with pytest.raises(BadRequest) as err:
        functions_to_tools(legacy(function_call="always"))
    assert err.value.param == "function_call"
    with pytest.raises(BadRequest):
        functions_to_tools({"model": "m", "messages": [], "functions": "get_weather"})


def test_a_tool_call_answer_comes_back_as_a_function_call() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    answer = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
            }
        ]
    }
    [choice] = answer_as_function_call(answer)["choices"]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "function_call": {"name": "f", "arguments": '{"a": 1}'},
    }


def test_streamed_tool_call_deltas_come_back_as_function_call_deltas() -> None:
    def chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    opening = {
        "index": 0,
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    more = {"index": 0, "function": {"arguments": '{"a": 1}'}}
    got = [
        chunk_as_function_call(c)["choices"][0]
        for c in (
            chunk({"role": "assistant", "tool_calls": [opening]}),
            chunk({"tool_calls": [more]}),
            chunk({}, "tool_calls"),
        )
    ]
    assert got[0]["delta"] == {"role": "assistant", "function_call": {"name": "f", "arguments": ""}}
    assert got[1]["delta"] == {"function_call": {"arguments": '{"a": 1}'}}
    assert got[2]["finish_reason"] == "function_call"


def streamed_function_call(
    chunks: list[dict[str, Any]], numbering: dict[int, Any] | None
) -> list[tuple[int, dict[str, Any]]]:
    """Each choice's ``function_call`` deltas, as the legacy client hears them."""
    said = []
    for c in chunks:
        for choice in chunk_as_function_call(c, numbering)["choices"]:
            if "function_call" in choice["delta"]:
                said.append((choice["index"], choice["delta"]["function_call"]))
    return said


def tool_chunk(*frags: dict[str, Any], choice: int = 0) -> dict[str, Any]:
    return {"choices": [{"index": choice, "delta": {"tool_calls": list(frags)}}]}


def frag(index: int | None, arguments: str, **first: Any) -> dict[str, Any]:
    fn = {"arguments": arguments, **({"name": first.pop("name")} if "name" in first else {})}
    return {**({} if index is None else {"index": index}), **first, "function": fn}


A = {"id": "call_a", "name": "get_weather"}
B = {"id": "call_b", "name": "get_time"}
FIRST_ONLY = [(0, {"name": "get_weather", "arguments": '{"city":"Paris"}'})]


@pytest.mark.parametrize(
    "chunks",
    [
        # Ollama's /v1: each call whole, both at index 0.
        [tool_chunk(frag(0, '{"city":"Paris"}', **A)), tool_chunk(frag(0, "{}", **B))],
        # Older Ollama builds: no index.
        [tool_chunk(frag(None, '{"city":"Paris"}', **A)), tool_chunk(frag(None, "{}", **B))],
        # Both in one chunk.
        [tool_chunk(frag(0, '{"city":"Paris"}', **A), frag(0, "{}", **B))],
    ],
)
def test_a_legacy_client_hears_the_first_of_calls_sharing_an_index(
    chunks: list[dict[str, Any]],
) -> None:
    """A server that numbers parallel calls its own way (and ignores
    ``parallel_tool_calls: false``): the function call is the first call alone, not the
    calls joined into one (get_weatherget_time)."""
    assert streamed_function_call(chunks, {}) == FIRST_ONLY


def test_the_first_call_s_later_fragments_go_on_and_the_second_s_do_not() -> None:
    chunks = [
        tool_chunk(frag(0, "", **A)),
        tool_chunk(frag(0, '{"city":')),
        tool_chunk(frag(0, '"Paris"}')),
        tool_chunk(frag(0, "", **B)),
        tool_chunk(frag(0, "{}")),
        tool_chunk(frag(None, "")),
    ]
    assert streamed_function_call(chunks, {}) == [
        (0, {"name": "get_weather", "arguments": ""}),
        (0, {"arguments": '{"city":'}),
        (0, {"arguments": '"Paris"}'}),
    ]


def test_openai_s_numbering_is_read_as_it_is_and_each_choice_counts_its_own() -> None:
    """Interleaved calls numbered as OpenAI numbers them; a second choice's first call is
    its own call 0.  Without the stream's numbering, the index given is the call's (as
    on every stream the relay's adapters yield)."""
    chunks = [
        tool_chunk(frag(0, "", **A)),
        tool_chunk(frag(1, "", **B)),
        tool_chunk(frag(1, "{}")),
        tool_chunk(frag(0, "{}")),
        tool_chunk(frag(0, "{}", **B), choice=1),
    ]
    expected = [
        (0, {"name": "get_weather", "arguments": ""}),
        (0, {"arguments": "{}"}),
        (1, {"name": "get_time", "arguments": "{}"}),
    ]
    assert streamed_function_call(chunks, {}) == expected
    assert streamed_function_call(chunks, None) == expected
