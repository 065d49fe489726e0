"""The Responses API's routes the relay does not serve answer so, through the SDK."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import pytest

from schemas.envelope import ReplyEvent, RequestEnvelope
from schemas.errors import BadRequest, RelayError
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


# -- errors the worker raises in chat's words, heard in the Responses request's ------


def failing(err: RelayError, *, after_chunk: bool = False):
    """A worker refusing the request with ``err`` (a stream's after one chunk)."""

    def script(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        cid = env.correlation_id
        out = []
        if after_chunk:
            delta = {"role": "assistant", "content": "Hel"}
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
            chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": None}]
            out.append((0.0, ReplyEvent(correlation_id=cid, kind="chunk", seq=1, body=chunk)))
        error = ReplyEvent(correlation_id=cid, kind="error", seq=len(out) + 1, error=err.to_dict())
        return [*out, (0.0, error)]

    return script


def sdk_for(script) -> openai.AsyncOpenAI:
    app, _ = gateway_app(script)
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://relay")
    return openai.AsyncOpenAI(
        base_url="http://relay/v1", api_key=DEMO_KEY, http_client=http, max_retries=0
    )


async def test_a_worker_s_400_names_the_field_the_client_sent() -> None:
    """An Anthropic or Ollama candidate checks reasoning_effort in the worker: the client
    sent reasoning.effort."""
    err = BadRequest("reasoning_effort: 'mega' is not one of low", param="reasoning_effort")
    oa = sdk_for(failing(err))
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.responses.create(model="gpt-4o-mini", input="hi", reasoning={"effort": "mega"})  # type: ignore[typeddict-item]
    assert refused.value.param == "reasoning.effort"
    assert refused.value.body["message"] == "reasoning.effort: 'mega' is not one of low"  # type: ignore[index]


async def test_a_worker_s_error_mid_stream_names_the_input_item() -> None:
    err = BadRequest("messages.1.content.0: an image needs a data: or http(s) URL")
    oa = sdk_for(failing(err, after_chunk=True))
    image = {"type": "input_image", "image_url": "not-a-url"}
    ask = {"model": "gpt-4o-mini", "instructions": "Be brief."}
    events = await oa.responses.create(
        **ask, input=[{"role": "user", "content": [image]}], stream=True
    )
    said = [e async for e in events if e.type == "error"]
    assert [e.message for e in said] == ["input.0.content.0: an image needs a data: or http(s) URL"]


async def test_chat_s_check_of_a_setting_names_it_as_the_client_sent_it() -> None:
    oa = sdk_for(failing(BadRequest("not reached")))
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.responses.create(model="gpt-4o-mini", input="hi", reasoning={"effort": 5})  # type: ignore[typeddict-item]
    assert refused.value.param == "reasoning.effort"
    assert refused.value.body["message"].startswith("reasoning.effort: ")  # type: ignore[index]


@pytest.mark.parametrize("size", ["small", "large"])
async def test_a_worker_s_400_before_the_answer_never_names_a_chat_message(size: str) -> None:
    """Chat's message index is not the Responses input's (instructions, function calls
    joined into their turn, reasoning items): the gateway names the item the client
    sent, whether its edge (small bodies) or the route (large ones) answered."""
    err = BadRequest("messages.1.content.0: an image needs a data: or http(s) URL")
    oa = sdk_for(failing(err))
    image = {"type": "input_image", "image_url": "not-a-url"}
    items: Any = [{"role": "user", "content": [image]}]
    instructions = "Be brief." + " " * (300_000 if size == "large" else 0)
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.responses.create(model="gpt-4o-mini", instructions=instructions, input=items)
    said = refused.value.body["message"]  # type: ignore[index]
    assert said == "input.0.content.0: an image needs a data: or http(s) URL"
