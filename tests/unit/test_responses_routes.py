"""The Responses API's routes the relay does not serve answer so, through the SDK."""

from __future__ import annotations

import httpx2
import openai
import pytest

from tests.support.gateway import DEMO_KEY, answer_hello, gateway_app


def sdk() -> openai.AsyncOpenAI:
    app, _ = gateway_app(answer_hello)
    # The official SDK is built on httpx2 and rejects a plain httpx client.
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://relay")
    return openai.AsyncOpenAI(
        base_url="http://relay/v1", api_key=DEMO_KEY, http_client=http, max_retries=0
    )


async def test_counting_input_tokens_is_a_404_saying_the_relay_does_not() -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        await sdk().responses.input_tokens.count(model="gpt-4o-mini", input="hi")
    assert "input tokens is not supported by the relay" in refused.value.message


async def test_compacting_is_a_404_saying_the_relay_does_not() -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        await sdk().responses.compact(model="gpt-4o-mini", input="hi")
    assert "compacting a conversation is not supported by the relay" in refused.value.message
