"""The official openai SDK against the relay: chat, stream, embeddings, models, errors."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

from tests.integration.conftest import read_ledger
from tests.support.stack import DEMO_KEY, Simulator, Stack


def client(stack: Stack, trace: str | None = None, **headers: str) -> openai.AsyncOpenAI:
    hdrs = dict(headers)
    if trace:
        hdrs["x-relay-trace-id"] = trace
    return openai.AsyncOpenAI(
        base_url=f"{stack.url}/v1", api_key=DEMO_KEY, default_headers=hdrs, max_retries=0
    )


def direct(sim: Simulator) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="sim-test-key", max_retries=0)


def prompt() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"say something about {uuid.uuid4().hex}"}]


async def test_chat_matches_the_vendor_and_lands_in_the_ledger(relay: Stack, simulator: Simulator):
    trace = uuid.uuid4().hex
    messages = prompt()
    got = await client(relay, trace, **{"x-relay-cost-tag": "team-a"}).chat.completions.create(
        model="gpt-4o-mini", messages=messages
    )
    want = await direct(simulator).chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.usage.prompt_tokens == want.usage.prompt_tokens
    assert got.usage.completion_tokens == want.usage.completion_tokens
    assert got.model == "gpt-4o-mini"

    [event] = await read_ledger(relay, {trace})
    assert (event.tenant, event.key_id, event.alias) == ("demo", "demo-key", "gpt-4o-mini")
    assert (event.vendor, event.vendor_model, event.status) == ("sim-openai", "gpt-4o-mini", "ok")
    assert event.usage.input_tokens == want.usage.prompt_tokens
    assert event.usage.output_tokens == want.usage.completion_tokens
    expected = (want.usage.prompt_tokens * 0.15 + want.usage.completion_tokens * 0.60) / 1e6
    assert event.cost == pytest.approx(expected)
    assert event.cost_tag == "team-a"
    assert not event.cache_hit and not event.coalesced


async def test_stream_yields_the_same_text_and_usage(relay: Stack, simulator: Simulator):
    messages = prompt()
    stream = await client(relay).chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    want = await direct(simulator).chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert "".join(parts) == want.choices[0].message.content
    assert len(parts) > 2, "streamed in several chunks, not one"
    assert usage is not None and usage.completion_tokens == want.usage.completion_tokens


async def test_stream_without_include_usage_sends_no_usage_chunk(relay: Stack):
    stream = await client(relay).chat.completions.create(
        model="gpt-4o-mini", messages=prompt(), stream=True
    )
    chunks = [c async for c in stream]
    assert chunks and all(c.usage is None for c in chunks)


async def test_embeddings_string_and_array(relay: Stack, simulator: Simulator):
    c = client(relay)
    one = await c.embeddings.create(model="text-embedding-3-small", input="hello")
    many = await c.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
    want = await direct(simulator).embeddings.create(
        model="text-embedding-3-small", input=["hello", "world"]
    )
    assert len(one.data) == 1 and len(many.data) == 2
    assert many.data[1].embedding == want.data[1].embedding
    assert one.data[0].embedding == want.data[0].embedding


async def test_models_lists_the_aliases(relay: Stack):
    models = await client(relay).models.list()
    ids = {m.id for m in models.data}
    assert {"gpt-4o-mini", "claude-haiku", "text-embedding-3-small"} <= ids


async def test_a_model_is_retrieved_by_alias_and_an_unknown_one_is_not_found(relay: Stack):
    model = await client(relay).models.retrieve("gpt-4o-mini")
    assert (model.id, model.object, model.owned_by) == ("gpt-4o-mini", "model", "relay-station")
    with pytest.raises(openai.NotFoundError) as info:
        await client(relay).models.retrieve("gpt-nonexistent")
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


async def test_unknown_relay_key_is_401(relay: Stack):
    bad = openai.AsyncOpenAI(base_url=f"{relay.url}/v1", api_key="rk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        await bad.chat.completions.create(model="gpt-4o-mini", messages=prompt())
    assert info.value.body["code"] == "invalid_api_key"  # type: ignore[index]


async def test_missing_key_is_401_in_openai_shape(relay: Stack):
    r = httpx.post(f"{relay.url}/v1/chat/completions", json={"model": "x", "messages": []})
    assert r.status_code == 401
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


async def test_malformed_body_is_400_not_422(relay: Stack):
    r = httpx.post(
        f"{relay.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {DEMO_KEY}"},
        json={"model": "gpt-4o-mini", "messages": "not a list"},
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "messages"
    r = httpx.post(
        f"{relay.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {DEMO_KEY}", "content-type": "application/json"},
        content=b"{not json",
    )
    assert r.status_code == 400 and "error" in r.json()


async def test_unknown_model_is_404(relay: Stack):
    with pytest.raises(openai.NotFoundError) as info:
        await client(relay).chat.completions.create(model="gpt-99", messages=prompt())
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


async def test_vendor_500_is_502_and_metered_as_error(relay: Stack):
    trace = uuid.uuid4().hex
    with pytest.raises(openai.APIStatusError) as info:
        await client(relay, trace).chat.completions.create(model="broken", messages=prompt())
    assert info.value.status_code == 502
    [event] = await read_ledger(relay, {trace})
    assert event.status == "error" and event.error_code == "vendor_unavailable"
    assert event.cost == 0


async def test_deadline_is_504(relay: Stack):
    trace = uuid.uuid4().hex
    c = client(relay, trace, **{"x-relay-timeout": "1"})
    with pytest.raises(openai.APIStatusError) as info:
        await c.chat.completions.create(model="hanging", messages=prompt())
    assert info.value.status_code == 504
    assert info.value.body["code"] == "deadline_exceeded"  # type: ignore[index]
    [event] = await read_ledger(relay, {trace})
    assert event.error_code == "deadline_exceeded"
