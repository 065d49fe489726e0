"""Every field the openai SDK sends to ``POST /v1/responses`` is taken by the relay (or
refused only for what it asks of a stored response): none is met as unknown."""

from __future__ import annotations

import inspect
from typing import Any

import httpx2
import openai
import pytest
from openai.resources.responses import AsyncResponses

from schemas.formats.responses import _IGNORED, _STATEFUL, _TAKEN
from tests.support.gateway import DEMO_KEY, answer_hello, gateway_app

# Every create() parameter with a value a client may well send.
EVERY: dict[str, Any] = {
    "access_programs": {"cyber": "standard"},
    "background": False,
    "background_options": {"completion_window": "soonest"},
    "context_management": [],
    "conversation": None,
    "image": {"context_compression": "auto"},
    "include": ["reasoning.encrypted_content"],
    "input": "hi",
    "instructions": "Be brief.",
    "max_output_tokens": 64,
    "max_tool_calls": 2,
    "metadata": {"run": "1"},
    "model": "gpt-4o-mini",
    "moderation": None,
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "prompt": None,
    "prompt_cache_key": "conversation-1",
    "prompt_cache_options": {"mode": "implicit", "ttl": "30m"},
    "prompt_cache_retention": "24h",
    "reasoning": {"effort": "low", "summary": "auto"},
    "safety_identifier": "user-1",
    "service_tier": "auto",
    "store": False,
    "temperature": 0.5,
    "text": {"format": {"type": "text"}, "verbosity": "low"},
    "tool_choice": "auto",
    "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    "top_logprobs": 0,
    "top_p": 1.0,
    "truncation": "auto",
    "user": "user-1",
}
NOT_SENT = {"self", "stream", "extra_headers", "extra_query", "extra_body", "timeout"}


def sdk() -> tuple[openai.AsyncOpenAI, Any]:
    app, bus = gateway_app(answer_hello)
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://relay")
    oa = openai.AsyncOpenAI(
        base_url="http://relay/v1", api_key=DEMO_KEY, http_client=http, max_retries=0
    )
    return oa, bus


def test_every_field_the_sdk_can_send_is_read_or_left_aside_on_purpose() -> None:
    sent: set[str] = set()
    for method in (AsyncResponses.create, AsyncResponses.stream, AsyncResponses.parse):
        sent |= set(inspect.signature(method).parameters)
    sent -= NOT_SENT | {"response_id", "starting_after", "text_format", "parse_as"}
    assert sent <= _TAKEN | set(_STATEFUL) | set(_IGNORED), sent - _TAKEN
    params = inspect.signature(AsyncResponses.create).parameters
    # the tests below send each of them (stream_options with the stream)
    assert set(EVERY) | {"stream_options"} == set(params) - NOT_SENT


async def test_a_request_with_every_field_the_sdk_sends_is_answered() -> None:
    oa, bus = sdk()
    answer = await oa.responses.create(**EVERY)
    assert answer.output_text == "Hello" and len(bus.published) == 1
    sent = bus.published[0].body
    assert (sent["max_tokens"], sent["verbosity"], sent["reasoning_effort"]) == (64, "low", "low")


async def test_a_stream_with_every_field_the_sdk_sends_is_answered() -> None:
    oa, _ = sdk()
    ask = {**EVERY, "stream_options": {"include_obfuscation": False}}
    async with oa.responses.stream(**ask) as events:
        answer = await events.get_final_response()
    assert answer.output_text == "Hello"


async def test_parse_s_own_verbosity_is_taken_as_text_verbosity() -> None:
    oa, bus = sdk()
    await oa.responses.parse(model="gpt-4o-mini", input="hi", verbosity="high")
    assert bus.published[0].body["verbosity"] == "high"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
        ({"prompt_cache_options": {"prewarm": True}}, "prompt_cache_options.prewarm"),
    ],
)
async def test_what_the_relay_would_quietly_skip_is_refused(extra: Any, param: str) -> None:
    oa, bus = sdk()
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.responses.create(model="gpt-4o-mini", input="hi", **extra)
    assert refused.value.param == param and not bus.published


async def test_an_unknown_field_is_openai_s_unknown_parameter() -> None:
    oa, bus = sdk()
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.responses.create(model="gpt-4o-mini", input="hi", extra_body={"max_tokens": 5})
    assert (refused.value.code, refused.value.param) == ("unknown_parameter", "max_tokens")
    assert "max_output_tokens" in refused.value.message and not bus.published
