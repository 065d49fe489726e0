"""Tool-call ids on the way to Anthropic: ids an OpenAI-format server made (Kimi K2's
``functions.Bash:0``, or none at all) are mapped, call and result alike, to what Anthropic
takes; ids Anthropic takes go as they are; and no other vendor, nor the client, ever sees
a mapped id."""

from __future__ import annotations

import re
from typing import Any

import httpx

from agents.adapters import AnthropicAdapter, VendorCall
from schemas.config import VendorConfig
from schemas.formats.anthropic import (
    anthropic_tool_id,
    messages_request_to_openai,
    openai_request_to_messages,
    without_cache_control,
)

PATTERN = re.compile(r"^[a-zA-Z0-9_-]+$")  # Anthropic's, for tool_use.id
BASH = {"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"}}}


def history(*ids: str) -> dict[str, Any]:
    """An OpenAI-format conversation whose last turn called Bash once per id, answered."""
    calls = [
        {"id": i, "type": "function", "function": {"name": "Bash", "arguments": "{}"}} for i in ids
    ]
    results = [
        {"role": "tool", "tool_call_id": i, "content": f"out {n}"} for n, i in enumerate(ids)
    ]
    return {
        "model": "a",
        "messages": [
            {"role": "user", "content": "list files"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            *results,
        ],
        "tools": [BASH],
    }


def sent_ids(request: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The tool_use ids and the tool_result tool_use_ids of a Messages request."""
    uses, results = [], []
    for turn in request["messages"]:
        for block in turn["content"] if isinstance(turn["content"], list) else []:
            if block["type"] == "tool_use":
                uses.append(block["id"])
            elif block["type"] == "tool_result":
                results.append(block["tool_use_id"])
    return uses, results


def test_an_id_anthropic_takes_goes_as_it_is() -> None:
    for given in ("toolu_01A09q90qw90lq917835lq9", "call_abc", "a-b_C9"):
        assert anthropic_tool_id(given) == given


def test_an_id_anthropic_refuses_maps_the_same_way_every_time_and_never_onto_another() -> None:
    mapped = anthropic_tool_id("functions.Bash:0")
    assert PATTERN.match(mapped) and mapped.startswith("functions_Bash_0_")
    assert anthropic_tool_id("functions.Bash:0") == mapped
    others = {anthropic_tool_id(i) for i in ("functions.Bash:1", "functions:Bash.0", "a b", "é")}
    assert mapped not in others and len(others) == 4
    assert all(PATTERN.match(i) for i in others)


def test_a_kimi_history_reaches_anthropic_with_its_calls_and_results_paired() -> None:
    request = openai_request_to_messages(history("functions.Bash:0", "functions.Bash:1"), "c")
    uses, results = sent_ids(request)
    assert uses == results and len(set(uses)) == 2
    assert all(PATTERN.match(i) for i in uses)
    # The same history sent again (the next turn) maps the same way: the prompt prefix,
    # and so Anthropic's cache of it, stays the same.
    again = openai_request_to_messages(history("functions.Bash:0", "functions.Bash:1"), "c")
    assert sent_ids(again) == (uses, results)


def test_calls_without_ids_get_ids_of_the_relay_their_results_take_in_order() -> None:
    request = openai_request_to_messages(history("", ""), "c")
    uses, results = sent_ids(request)
    assert uses == results and len(set(uses)) == 2 and all(PATTERN.match(i) for i in uses)
    said = [b["content"] for b in request["messages"][2]["content"]]
    assert said == ["out 0", "out 1"], "each result stays with its call"


def test_an_openai_vendor_gets_the_ids_as_they_were() -> None:
    body = history("functions.Bash:0")
    assert without_cache_control(body) is body
    # ...and so does it an Anthropic client's history with such an id (an OpenAI-format
    # candidate answered that call, and wants its own id back, exactly).
    anthropic_body = {
        "model": "a",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "list files"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "functions.Bash:0", "name": "Bash", "input": {}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "functions.Bash:0", "content": "a"}
                ],
            },
        ],
    }
    neutral = messages_request_to_openai(anthropic_body)
    plain = without_cache_control(neutral)
    assert plain["messages"][1]["tool_calls"][0]["id"] == "functions.Bash:0"
    assert plain["messages"][2]["tool_call_id"] == "functions.Bash:0"
    uses, results = sent_ids(openai_request_to_messages(neutral, "c"))
    assert uses == results == [anthropic_tool_id("functions.Bash:0")]


def test_an_anthropic_turn_carried_whole_maps_its_ids_too_without_touching_the_client_s() -> None:
    """A turn with text after its call keeps its blocks (``anthropic_content``)."""
    said = [
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "functions.Bash:0", "name": "Bash", "input": {}},
        {"type": "text", "text": "Then more."},
    ]
    body = {
        "model": "a",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": said},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "functions.Bash:0", "content": "a"}
                ],
            },
        ],
    }
    request = openai_request_to_messages(messages_request_to_openai(body), "c")
    mapped = anthropic_tool_id("functions.Bash:0")
    assert request["messages"][1]["content"][1]["id"] == mapped
    assert [b["type"] for b in request["messages"][1]["content"]] == ["text", "tool_use", "text"]
    assert said[1]["id"] == "functions.Bash:0", "the client's own block is left as it was"


async def test_a_kimi_history_is_answered_by_the_simulated_anthropic(
    sim: httpx.AsyncClient,
) -> None:
    """The simulator refuses ids outside Anthropic's pattern, and unpaired results, as
    Anthropic does."""
    config = VendorConfig(kind="anthropic", base_url="http://sim", api_key_env="X")
    adapter = AnthropicAdapter(config, sim)
    for ids in (("functions.Bash:0",), ("", "")):
        result = await adapter.chat(
            VendorCall(model="claude-haiku-4-5", body=history(*ids), api_key="k")
        )
        assert result.body["choices"][0]["message"]["content"]
