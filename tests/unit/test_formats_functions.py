"""The deprecated function calling, carried as tools and answered as a function call."""

from __future__ import annotations

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
