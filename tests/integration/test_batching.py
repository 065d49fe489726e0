"""Window batching and the batch-API lane, through the real broker to the simulator."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.integration.conftest import read_ledger
from tests.support.stack import DEMO_KEY, Simulator, Stack

HEADERS = {"authorization": f"Bearer {DEMO_KEY}", "x-relay-cache": "bypass"}


async def post(stack: Stack, path: str, body: dict, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(f"{stack.url}{path}", json=body, headers={**HEADERS, **headers})


def calls(sim: Simulator, model: str) -> int:
    return int(sim.stats()["calls"].get(model, 0))


def inputs(sim: Simulator, model: str) -> int:
    return int(sim.stats().get("inputs", {}).get(model, 0))


async def test_embeddings_in_one_window_share_one_vendor_call(relay: Stack, simulator: Simulator):
    model = "text-embedding-3-small"
    before_calls, before_inputs = calls(simulator, model), inputs(simulator, model)
    trace = uuid.uuid4().hex
    words = [f"w{i}-{uuid.uuid4().hex[:6]}" for i in range(8)]
    answers = await asyncio.gather(
        *(
            post(
                relay, "/v1/embeddings", {"model": model, "input": w}, **{"x-relay-trace-id": trace}
            )
            for w in words
        )
    )
    assert all(a.status_code == 200 for a in answers)
    assert calls(simulator, model) - before_calls < len(words), "some requests shared a call"
    assert inputs(simulator, model) - before_inputs == len(words)
    async with httpx.AsyncClient() as client:
        direct = await client.post(
            f"{simulator.url}/v1/embeddings",
            json={"model": model, "input": words[3]},
            headers={"authorization": "Bearer sim-test-key"},
        )
    assert answers[3].json()["data"][0]["embedding"] == direct.json()["data"][0]["embedding"]
    ledger = await read_ledger(relay, {trace})
    assert len(ledger) == len(words)
    assert any(e.batched for e in ledger)
    assert sum(e.usage.input_tokens for e in ledger) > 0


async def test_completions_with_list_prompts_are_batched_and_split(
    relay: Stack, simulator: Simulator
):
    model = "gpt-3.5-turbo-instruct"
    before = calls(simulator, model)
    prompts = [[f"p{i}a {uuid.uuid4().hex}", f"p{i}b {uuid.uuid4().hex}"] for i in range(4)]
    answers = await asyncio.gather(
        *(post(relay, "/v1/completions", {"model": model, "prompt": p}) for p in prompts)
    )
    assert all(a.status_code == 200 for a in answers), answers[0].text
    assert calls(simulator, model) - before < len(prompts)
    for p, a in zip(prompts, answers, strict=True):
        choices = a.json()["choices"]
        assert [c["index"] for c in choices] == list(range(len(p)))
    async with httpx.AsyncClient() as client:
        direct = await client.post(
            f"{simulator.url}/v1/completions",
            json={"model": model, "prompt": prompts[2][1]},
            headers={"authorization": "Bearer sim-test-key"},
        )
    assert answers[2].json()["choices"][1]["text"] == direct.json()["choices"][0]["text"]


async def test_background_chat_goes_through_the_vendor_batch_api_at_a_discount(
    relay: Stack, simulator: Simulator
):
    before = simulator.stats().get("batches", 0)
    deleted = simulator.stats().get("files_deleted", 0)
    trace = uuid.uuid4().hex
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"later {uuid.uuid4().hex}"}],
    }
    answer = await post(
        relay,
        "/v1/chat/completions",
        body,
        **{"x-relay-priority": "background", "x-relay-trace-id": trace},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    assert simulator.stats().get("batches", 0) == before + 1
    [event] = await read_ledger(relay, {trace})
    assert event.batch_api and event.status == "ok"
    full = (event.usage.input_tokens * 0.15 + event.usage.output_tokens * 0.60) / 1e6
    assert event.cost == pytest.approx(full * 0.5)
    assert event.saved_cost == pytest.approx(full * 0.5)
    for _ in range(50):  # the batch's input and output files go once it is answered
        if simulator.stats().get("files_deleted", 0) >= deleted + 2:
            break
        await asyncio.sleep(0.1)
    assert simulator.stats()["files_deleted"] >= deleted + 2
