"""The official openai SDK's Responses API against the relay, served by an OpenAI-format
and by an Anthropic vendor: text, streams, a function call round trip, refusals, ledger."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import read_ledger
from tests.support.clients import relay_openai
from tests.support.stack import DEMO_KEY, Stack

WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}
VENDORS = pytest.mark.parametrize("alias", ["gpt-4o-mini", "claude-haiku"])


async def chat_answer(stack: Stack, alias: str, question: str) -> openai.types.chat.ChatCompletion:
    """The same question through the relay's chat endpoint: what the vendor says to it."""
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": question},
    ]
    return await relay_openai(stack).chat.completions.create(model=alias, messages=messages)


@VENDORS
async def test_a_response_says_what_the_vendor_says_and_is_metered(relay: Stack, alias: str):
    trace, question = uuid.uuid4().hex, f"say something about {uuid.uuid4().hex}"
    got = await relay_openai(relay, trace).responses.create(
        model=alias, instructions="Be brief.", input=question
    )
    want = await chat_answer(relay, alias, question)

    assert got.status == "completed" and got.model == alias and got.id.startswith("resp_")
    assert got.output_text == want.choices[0].message.content
    assert got.usage is not None and want.usage is not None
    assert (got.usage.input_tokens, got.usage.output_tokens) == (
        want.usage.prompt_tokens,
        want.usage.completion_tokens,
    )
    [event] = await read_ledger(relay, {trace})
    assert (event.alias, event.status, event.usage.output_tokens) == (
        alias,
        "ok",
        got.usage.output_tokens,
    )


@VENDORS
async def test_a_streamed_response_assembles_into_the_same_answer(relay: Stack, alias: str):
    question = f"say something about {uuid.uuid4().hex}"
    kinds: list[str] = []
    async with relay_openai(relay).responses.stream(model=alias, input=question) as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_response()
    plain = await relay_openai(relay).responses.create(model=alias, input=question)

    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed" and "response.output_text.delta" in kinds
    assert final.output_text == plain.output_text and final.status == "completed"
    assert final.usage is not None and plain.usage is not None
    assert final.usage.output_tokens == plain.usage.output_tokens


@VENDORS
@pytest.mark.parametrize("effort", [None, "low"])
async def test_a_function_call_round_trip(relay: Stack, alias: str, effort: str | None):
    """With reasoning asked for too: an Anthropic vendor thinks, and the loop still closes
    though the call comes back without the signed thinking before it; a model that does
    not reason refuses the client's own effort with OpenAI's 400, passed on as it is."""
    sdk = relay_openai(relay)
    question = f"what is the weather in Paris? {uuid.uuid4().hex}"
    reasoning: Any = {"effort": effort} if effort else openai.NOT_GIVEN
    if effort and alias == "gpt-4o-mini":
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.responses.create(
                model=alias,
                input=question,
                tools=[WEATHER],  # type: ignore[list-item]
                reasoning=reasoning,
            )
        assert "reasoning" in str(refused.value.message)
        return
    first = await sdk.responses.create(
        model=alias,
        input=question,
        tools=[WEATHER],  # type: ignore[list-item]
        reasoning=reasoning,
    )
    [call] = [o for o in first.output if o.type == "function_call"]
    assert call.name == "get_weather" and call.call_id
    assert json.loads(call.arguments) == {"location": "Paris"}

    second = await sdk.responses.create(
        model=alias,
        tools=[WEATHER],  # type: ignore[list-item]
        reasoning=reasoning,
        input=[
            {"role": "user", "content": question},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "18C and sunny"},
        ],
    )
    assert second.output_text == "Tool said: 18C and sunny"


async def test_a_thinking_tool_loop_sends_the_sealed_reasoning_back(relay: Stack):
    """Asked for encrypted reasoning, an Anthropic vendor's signed thinking comes back in
    the reasoning item; sent back with the call, the vendor gets its thinking again (the
    simulator, like Anthropic, refuses a thinking tool loop without it), so the model
    thinks on the second turn too."""
    sdk = relay_openai(relay)
    question = f"what is the weather in Paris? {uuid.uuid4().hex}"
    asked: Any = {
        "model": "claude-haiku",
        "tools": [WEATHER],
        "reasoning": {"effort": "low"},
        "include": ["reasoning.encrypted_content"],
    }
    first = await sdk.responses.create(input=question, **asked)
    reasoning, call = first.output[0], first.output[-1]
    assert reasoning.type == "reasoning" and reasoning.encrypted_content
    assert reasoning.summary and reasoning.summary[0].text
    assert call.type == "function_call"
    items: Any = [
        {"role": "user", "content": question},
        *(item.model_dump(exclude_none=True) for item in first.output),
        {"type": "function_call_output", "call_id": call.call_id, "output": "18C and sunny"},
    ]
    second = await sdk.responses.create(input=items, **asked)
    assert second.output[0].type == "reasoning", "still thinking on the second turn"
    assert second.output_text == "Tool said: 18C and sunny"


async def test_a_streamed_function_call_arrives_whole(relay: Stack):
    question = f"use the tool: weather in Paris {uuid.uuid4().hex}"
    async with relay_openai(relay).responses.stream(
        model="gpt-4o-mini",
        input=question,
        tools=[WEATHER],  # type: ignore[list-item]
    ) as stream:
        final = await stream.get_final_response()
    [call] = [o for o in final.output if o.type == "function_call"]
    assert json.loads(call.arguments) == {"location": "Paris"}


async def test_stateful_requests_and_unknown_models_get_openai_errors(relay: Stack):
    sdk = relay_openai(relay)
    with pytest.raises(openai.BadRequestError) as stateful:
        await sdk.responses.create(model="gpt-4o-mini", input="hi", previous_response_id="resp_1")
    assert stateful.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="function tools"):
        await sdk.responses.create(model="gpt-4o-mini", input="hi", tools=[{"type": "web_search"}])
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.create(model="no-such-model", input="hi")


async def test_what_needs_a_stored_response_is_a_clear_404(relay: Stack):
    sdk = relay_openai(relay)
    with pytest.raises(openai.NotFoundError, match="stores no responses") as missing:
        await sdk.responses.retrieve("resp_123")
    assert missing.value.body["param"] == "response_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError, match="stores no responses"):
        await sdk.responses.delete("resp_123")
    async with httpx.AsyncClient(base_url=relay.url) as http:
        anonymous = await http.get("/v1/responses/resp_123")
        nowhere = await http.get(
            "/v1/no-such-thing", headers={"authorization": f"Bearer {DEMO_KEY}"}
        )
    assert anonymous.status_code == 401
    assert nowhere.status_code == 404
    assert nowhere.json()["error"] == {
        "message": "Invalid URL (GET /v1/no-such-thing)",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }


@VENDORS
async def test_a_json_schema_format_gets_json_from_either_vendor(relay: Stack, alias: str):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    }
    answer = await relay_openai(relay).responses.create(
        model=alias,
        input=f"plan a trip {uuid.uuid4().hex}",
        text={"format": {"type": "json_schema", "name": "trip", "schema": schema}},
    )
    assert json.loads(answer.output_text) == {"city": "Paris", "days": 1}
    assert [o.type for o in answer.output] == ["message"]
