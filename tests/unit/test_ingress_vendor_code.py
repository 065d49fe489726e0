"""A vendor's own OpenAI error code reaches OpenAI-format clients through the gateway."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import openai
import pytest

from schemas.envelope import ReplyEvent, RequestEnvelope
from schemas.errors import VendorBadRequest
from tests.support.gateway import DEMO_KEY, gateway_app


def overflowed(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
    """A worker's error for OpenAI's context-overflow 400, as the adapter classifies it."""
    err = VendorBadRequest("openai: HTTP 400: maximum context length", param="messages")
    err.vendor_code = "context_length_exceeded"
    return [(0.0, ReplyEvent(correlation_id=env.correlation_id, kind="error", error=err.to_dict()))]


def http() -> httpx2.AsyncClient:
    app, _ = gateway_app(overflowed)
    transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx2.AsyncClient(transport=transport, base_url="http://relay")


ASK: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("stream", [False, True])
async def test_the_openai_sdk_reads_the_vendor_s_code(stream: bool) -> None:
    oa = openai.AsyncOpenAI(
        base_url="http://relay/v1", api_key=DEMO_KEY, http_client=http(), max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as refused:
        answer = await oa.chat.completions.create(**ASK, stream=stream)
        async for _ in answer:  # type: ignore[union-attr]
            pass
    assert refused.value.code == "context_length_exceeded"
    assert refused.value.param == "messages"


async def test_the_responses_api_s_error_carries_the_vendor_s_code() -> None:
    oa = openai.AsyncOpenAI(
        base_url="http://relay/v1", api_key=DEMO_KEY, http_client=http(), max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.responses.create(model="gpt-4o-mini", input="hi")
    assert refused.value.code == "context_length_exceeded"


async def test_the_anthropic_sdk_keeps_anthropic_s_error_type() -> None:
    claude = anthropic.AsyncAnthropic(
        base_url="http://relay", api_key=DEMO_KEY, http_client=http(), max_retries=0
    )
    with pytest.raises(anthropic.BadRequestError) as refused:
        await claude.messages.create(
            model="claude-haiku", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    said: Any = refused.value.body
    assert said["error"]["type"] == "invalid_request_error" and "code" not in said["error"]
