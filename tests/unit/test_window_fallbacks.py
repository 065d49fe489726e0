"""Window batching through the dispatcher when a shared call cannot simply be split back:
a server that takes no list prompt (Ollama's /v1/completions), a shared call refused or
answered unsplittably (still one call for the vendor's health), Azure's per-prompt
filter verdicts (each caller's own only), and the ledger line of a request coalesced
onto a window-batched one.  Vendors are real adapters on httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from agents.adapters.azure import AzureOpenAIAdapter
from agents.adapters.openai import OpenAIAdapter
from agents.dispatch import Dispatcher
from agents.handler import RequestHandler
from agents.keys import KeyPool
from agents.route import Router
from schemas.config import Batching, Candidate, VendorConfig
from schemas.envelope import HealthEvent, RequestEnvelope
from tables.cache import cache_key
from tables.prices import PriceSheet
from tests.support.envelopes import request_envelope
from tests.support.sinks import Sink
from tests.unit.test_window_batching import (
    CONFIG,
    EMB,
    Embeddings,
    SizeLimited,
    Skipping,
    dispatcher,
    embed,
)

CODER = [Candidate(vendor="o", model="qwen2.5-coder")]


def completion(prompt: Any, tenant: str = "t") -> RequestEnvelope:
    return request_envelope(
        alias="e",
        endpoint="completions",
        tenant=tenant,
        body={"model": "e", "prompt": prompt, "max_tokens": 16},
        deadline_ms=int((time.time() + 5) * 1000),
    )


def batching(adapter: Any, name: str) -> tuple[Dispatcher, list[HealthEvent]]:
    seen: list[HealthEvent] = []

    async def on_health(ev: HealthEvent) -> None:
        seen.append(ev)

    batches = {"e": Batching(window_ms=50, max_size=64)}
    return Dispatcher({name: adapter}, {name: KeyPool(["k"])}, on_health, batching=batches), seen


# --- a server that takes a string prompt only --------------------------------------------


async def test_window_batched_completions_reach_a_server_that_takes_no_list_prompt() -> None:
    """Ollama's /v1/completions binds ``prompt`` to a string: a lone caller's request goes
    as it came, and a window of two, refused as a list, is answered caller by caller."""
    sent: list[Any] = []

    async def ollama_v1(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["prompt"]
        sent.append(prompt)
        if not isinstance(prompt, str):
            message = "json: cannot unmarshal array into Go struct field of type string"
            return httpx.Response(400, json={"error": {"message": message, "param": None}})
        choices = [{"text": f"ans:{prompt}", "index": 0, "finish_reason": "stop"}]
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        return httpx.Response(200, json={"object": "text_completion", "choices": choices,
                                         "usage": usage})  # fmt: skip

    client = httpx.AsyncClient(transport=httpx.MockTransport(ollama_v1))
    dispatch, _ = batching(
        OpenAIAdapter(VendorConfig(kind="openai", base_url="http://o/v1"), client), "o"
    )
    lone = await dispatch.run(completion("def fib("), CODER, None)
    assert lone.error is None and sent == ["def fib("]
    sent.clear()
    outs = await asyncio.gather(*(dispatch.run(completion(p), CODER, None) for p in "ab"))
    assert [o.error for o in outs] == [None, None]
    assert [o.body["choices"][0]["text"] for o in outs if o.body] == ["ans:a", "ans:b"]
    assert sent == [["a", "b"], "a", "b"]


# --- a shared call no caller hears: still one outcome ------------------------------------


async def test_every_vendor_call_of_a_window_split_after_a_413_is_one_health_outcome() -> None:
    vendor = SizeLimited()
    dispatch, seen = dispatcher(vendor)
    small, large = embed("s" * 100, tenant="victim"), embed("L" * 1_900, tenant="other")
    outs = await asyncio.gather(*(dispatch.run(e, EMB, None) for e in (small, large)))
    assert [o.error for o in outs] == [None, None]
    assert len(vendor.calls) == 3 and len(seen) == 3
    assert (seen[0].ok, seen[0].error_code) == (False, "vendor_request_too_large")


async def test_a_shared_answer_that_cannot_be_split_is_reported_as_the_vendor_s_failure() -> None:
    vendor = Skipping()
    dispatch, seen = dispatcher(vendor)
    outs = await asyncio.gather(*(dispatch.run(embed(t), EMB, None) for t in ("a", "skip me")))
    assert outs[0].error is None and outs[1].error is not None
    assert vendor.calls[0][2] == ["a", "skip me"], "one shared call first"
    assert len(seen) == len(vendor.calls) > 2, "every call one outcome, the shared one too"
    assert (seen[0].ok, seen[0].error_code) == (False, "vendor_unavailable")


# --- Azure's prompt filter verdicts ------------------------------------------------------


async def test_each_tenant_hears_its_own_prompt_filter_verdicts_only() -> None:
    calls: list[list[str]] = []

    async def azure(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        calls.append(prompts)

        def verdict(p: str) -> dict[str, Any]:
            severity = "medium" if "secret" in p else "safe"
            return {"self_harm": {"filtered": False, "severity": severity}}

        return httpx.Response(200, json={
            "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "instruct",
            "prompt_filter_results": [
                {"prompt_index": i, "content_filter_results": verdict(p)}
                for i, p in enumerate(prompts)
            ],
            "choices": [
                {"text": f"ans:{p}", "index": i, "finish_reason": "stop",
                 "content_filter_results": {}}
                for i, p in enumerate(prompts)
            ],
            "usage": {"prompt_tokens": 3 * len(prompts), "completion_tokens": 2 * len(prompts),
                      "total_tokens": 5 * len(prompts)},
        })  # fmt: skip

    client = httpx.AsyncClient(transport=httpx.MockTransport(azure))
    adapter = AzureOpenAIAdapter(VendorConfig(kind="azure", base_url="http://az.example"), client)
    dispatch, _ = batching(adapter, "az")
    cands = [Candidate(vendor="az", model="instruct")]
    a, b = await asyncio.gather(
        dispatch.run(completion("tenant A secret prompt", "A"), cands, None),
        dispatch.run(completion(["hello", "world"], "B"), cands, None),
    )
    assert calls == [["tenant A secret prompt", "hello", "world"]], "one shared call"
    assert a.body is not None and b.body is not None

    def verdicts(body: dict[str, Any]) -> list[tuple[int, str]]:
        return [
            (f["prompt_index"], f["content_filter_results"]["self_harm"]["severity"])
            for f in body["prompt_filter_results"]
        ]

    assert verdicts(a.body) == [(0, "medium")]
    assert verdicts(b.body) == [(0, "safe"), (1, "safe")]
    assert [(c["index"], c["text"]) for c in b.body["choices"]] == [
        (0, "ans:hello"),
        (1, "ans:world"),
    ]


# --- the ledger: a request coalesced onto a window-batched one ---------------------------


async def test_a_request_coalesced_onto_a_batched_one_is_not_flagged_batched() -> None:
    """``batched`` is a share of a window-batched call, billed; the follower paid
    nothing (its saving is coalescing's), so ``relay report`` counts it there."""
    vendor = Embeddings(delay={"a": 0.2})
    sink = Sink()
    client = vendor.client()
    handler = RequestHandler(
        Router(CONFIG, {}.get),
        Dispatcher(
            {n: OpenAIAdapter(v, client) for n, v in CONFIG.vendors.items()},
            {n: KeyPool(["k"]) for n in CONFIG.vendors},
            sink.health,
            batching={"e": CONFIG.models["e"].batching},  # type: ignore[dict-item]
        ),
        PriceSheet.from_config(CONFIG.models),
        sink,
    )
    envs = [
        e.model_copy(
            update={
                "prompt_hash": cache_key(
                    scope="tenant:t", alias="e", endpoint="embeddings", body=e.body
                )
            }
        )
        for e in (embed("same", 10), embed("same", 10), embed("other", 10))
    ]

    async def later(env: RequestEnvelope, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await handler.handle(env)

    await asyncio.gather(later(envs[0], 0), later(envs[1], 0.05), later(envs[2], 0))
    for task in list(handler.spawned):
        await task
    assert [inputs for _, _, inputs in vendor.calls] == [["same", "other"]]
    lines = {line.trace_id: line for line in sink.ledger}
    leader, follower, other = (lines[e.trace_id] for e in envs)
    assert (leader.coalesced, leader.batched) == (False, True)
    assert (follower.coalesced, follower.batched, follower.cost) == (True, False, 0.0)
    assert (other.coalesced, other.batched) == (False, True)
