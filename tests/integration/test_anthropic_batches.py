"""Anthropic's Message Batches on the relay, driven by the official ``anthropic`` SDK:
requests to an Anthropic vendor and (translated) to an OpenAI one, an invalid request that
errors alone, results, listing, cancel and delete."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import anthropic
import pytest

from tests.integration.test_batch_api import ledger_by_tag
from tests.support.stack import DEMO_KEY, SIM_KEY, Simulator, Stack


def client(stack: Stack, **headers: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=stack.url, api_key=DEMO_KEY, default_headers=headers, max_retries=0
    )


def params(model: str, text: str) -> Any:
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}


async def ended(sdk: anthropic.AsyncAnthropic, batch_id: str, timeout_s: float = 60) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        batch = await sdk.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        await asyncio.sleep(0.3)
    raise AssertionError(f"{batch_id} still {batch.processing_status}")


async def results(sdk: anthropic.AsyncAnthropic, batch_id: str) -> dict[str, Any]:
    return {r.custom_id: r.result async for r in await sdk.messages.batches.results(batch_id)}


async def test_the_anthropic_sdk_runs_a_message_batch(relay: Stack, simulator: Simulator) -> None:
    tag = uuid.uuid4().hex
    sdk = client(relay, **{"x-relay-cost-tag": tag})
    claude = params("claude-haiku", f"batched for claude {uuid.uuid4().hex}")
    gpt = params("gpt-4o-mini", f"batched for gpt {uuid.uuid4().hex}")
    odd: Any = {**params("claude-haiku", "hi"), "metadata": "x"}  # not an object: invalid
    created = await sdk.messages.batches.create(
        requests=[
            {"custom_id": "claude", "params": claude},
            {"custom_id": "gpt", "params": gpt},
            {"custom_id": "nope", "params": params("no-such-model", "hi")},
            {"custom_id": "odd", "params": odd},
        ]
    )
    assert created.processing_status == "in_progress" and created.id.startswith("msgbatch_")
    assert created.request_counts.errored == 2, "invalid requests error at once, alone"
    batch = await ended(sdk, created.id)

    counts = batch.request_counts
    assert (counts.succeeded, counts.errored, counts.processing) == (2, 2, 0)
    assert batch.ended_at and batch.results_url
    got = await results(sdk, created.id)
    assert got["nope"].type == "errored" and got["nope"].error.error.type == "not_found_error"
    assert got["odd"].error.error.type == "invalid_request_error"
    assert "metadata" in got["odd"].error.error.message

    direct = anthropic.AsyncAnthropic(
        base_url=simulator.url, api_key=SIM_KEY, default_headers={"x-api-key": SIM_KEY}
    )
    want = await direct.messages.create(**{**claude, "model": "claude-3-5-haiku-latest"})
    assert got["claude"].type == "succeeded"
    assert got["claude"].message.content[0].text == want.content[0].text
    assert got["claude"].message.model == "claude-haiku"
    assert got["gpt"].type == "succeeded" and got["gpt"].message.stop_reason == "end_turn"
    assert got["gpt"].message.content[0].text

    events = await ledger_by_tag(relay, tag, 2)
    assert len(events) == 2 and all(e.batch_api and e.status == "ok" for e in events)
    listed = await sdk.messages.batches.list(limit=50)
    assert created.id in [b.id for b in listed.data]

    deleted = await sdk.messages.batches.delete(created.id)
    assert deleted.id == created.id
    with pytest.raises(anthropic.NotFoundError):
        await sdk.messages.batches.retrieve(created.id)


async def test_a_cancelled_message_batch_ends_with_every_request_accounted_for(
    relay: Stack,
) -> None:
    sdk = client(relay)
    requests: Any = [
        {"custom_id": f"r{i}", "params": params("claude-haiku", f"cancel {i} {uuid.uuid4().hex}")}
        for i in range(2)
    ]
    created = await sdk.messages.batches.create(requests=requests)
    cancelling = await sdk.messages.batches.cancel(created.id)
    assert cancelling.processing_status == "canceling" and cancelling.cancel_initiated_at
    batch = await ended(sdk, created.id)
    counts = batch.request_counts
    assert counts.processing == 0
    assert counts.succeeded + counts.errored + counts.canceled + counts.expired == 2
    assert set(await results(sdk, created.id)) == {"r0", "r1"}


async def test_bad_batches_get_anthropic_errors(relay: Stack) -> None:
    sdk = client(relay)
    with pytest.raises(anthropic.BadRequestError) as twice:
        await sdk.messages.batches.create(
            requests=[
                {"custom_id": "same", "params": params("claude-haiku", "a")},
                {"custom_id": "same", "params": params("claude-haiku", "b")},
            ]
        )
    assert twice.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        await sdk.messages.batches.retrieve("msgbatch_nothing_here")
    with pytest.raises(anthropic.NotFoundError):
        await sdk.messages.batches.results("msgbatch_nothing_here")


async def test_deleting_batches_while_listing_them_visits_every_one(relay: Stack) -> None:
    """The usual clean-up: list, and delete each ended batch as it comes.  The SDK asks
    each next page after the batch it just deleted, which the relay still places."""
    sdk = client(relay)
    made = set()
    for _ in range(3):
        batch = await sdk.messages.batches.create(
            requests=[{"custom_id": "a", "params": params("no-such-model", "hi")}]
        )
        made.add((await ended(sdk, batch.id)).id)
    seen = set()
    async for batch in sdk.messages.batches.list(limit=1):
        if batch.id in made:  # (other tests' batches are left as they are)
            seen.add(batch.id)
            await sdk.messages.batches.delete(batch.id)
    assert seen == made
    assert not made & {b.id async for b in sdk.messages.batches.list(limit=100)}
