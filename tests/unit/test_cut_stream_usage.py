"""A cut Anthropic stream is billed the prompt the vendor counted in message_start (its
input, cache reads and cache writes, each at its own price), with only its output
estimated: broken by the vendor, cut by the deadline or the worker's stop, cut by a begin
limit before it said anything (its client's stop: ``test_client_closed``)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from agents.adapters.registry import make_adapter
from agents.dispatch import Dispatcher
from agents.handler import RequestHandler
from agents.keys import KeyPool
from agents.route import Router
from schemas.config import RelayConfig
from schemas.envelope import RequestEnvelope
from schemas.usage import Usage, estimated_tokens
from tables.prices import PriceSheet, cost_of
from tests.support.sinks import Sink
from tests.unit.test_handler import envelope, sse

PRICES = {"input_per_1m": 3, "cached_input_per_1m": 0.3, "output_per_1m": 15}


def config(**anthropic: Any) -> RelayConfig:
    return RelayConfig.model_validate(
        {
            "vendors": {
                "an": {"kind": "anthropic", "base_url": "http://an/v1", **anthropic},
                "b": {"kind": "openai", "base_url": "http://b/v1"},
            },
            "models": {
                "m": {
                    "candidates": [
                        {"vendor": "an", "model": "claude", **PRICES},
                        {"vendor": "b", "model": "other", "input_per_1m": 5, "output_per_1m": 20},
                    ]
                }
            },
            "tenants": {"t": {}},
        }
    )


WORDS = [f" w{i:02d}" for i in range(10)]
ANSWERED = "".join(WORDS)
# What Anthropic says of a prompt mostly read from its cache, before any answer.
COUNTED = {
    "input_tokens": 20,
    "cache_read_input_tokens": 8000,
    "cache_creation_input_tokens": 1000,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1000},
    "output_tokens": 1,
}
PROMPT = "x" * 36_000  # the relay's own guess: 9 000 tokens or so, all at the full price


def prompt_vendor_counted(output_tokens: int) -> Usage:
    """The line's usage: ``COUNTED`` as the vendor said it, its output estimated."""
    return Usage(
        input_tokens=9020,
        cache_read_tokens=8000,
        cache_write_tokens=1000,
        cache_write_1h_tokens=1000,
        output_tokens=output_tokens,
    )


def event(name: str, **data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


def opening(words: list[str], counted: dict[str, Any]) -> list[bytes]:
    """message_start saying ``counted``, then a text block saying ``words``."""
    start = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
             "content": [], "usage": counted}  # fmt: skip
    block = {"type": "text", "text": ""}
    return [
        event("message_start", message=start),
        event("content_block_start", index=0, content_block=block),
        *(
            event("content_block_delta", index=0, delta={"type": "text_delta", "text": w})
            for w in words
        ),
    ]


def vendors(
    then: str, words: list[str] = WORDS, counted: dict[str, Any] = COUNTED
) -> httpx.AsyncClient:
    """``an`` streams ``opening(words, counted)``, then breaks (``then="break"``) or goes silent
    (``"hang"``); ``b``, an OpenAI-format vendor, answers whole."""

    async def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "b":
            lines = "".join(sse(["Hi"])).encode()
            return httpx.Response(200, content=lines, headers={"content-type": "text/event-stream"})

        async def events() -> Any:
            for part in opening(words, counted):
                yield part
            if then == "break":
                raise httpx.ReadError("connection reset")
            await asyncio.Event().wait()  # silent, the connection held open

        return httpx.Response(200, content=events(), headers={"content-type": "text/event-stream"})

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


def make(client: httpx.AsyncClient, cfg: RelayConfig | None = None) -> tuple[RequestHandler, Sink]:
    cfg = cfg or config()
    sink = Sink()
    adapters = {name: make_adapter(v, client) for name, v in cfg.vendors.items()}
    pools = {name: KeyPool(["k-123456789"]) for name in cfg.vendors}
    dispatcher = Dispatcher(adapters, pools, sink.health)
    return RequestHandler(
        Router(cfg, {}.get), dispatcher, PriceSheet.from_config(cfg.models), sink
    ), sink


def asked(**kw: Any) -> RequestEnvelope:
    """A streamed request with ``PROMPT``."""
    env = envelope(stream=True, key="cut", **kw)
    body = {**env.body, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 500}
    return env.model_copy(update={"body": body})


async def said_all(sink: Sink, env: RequestEnvelope) -> None:
    """Until ``env``'s client has every chunk the vendor will send (its opening, ``WORDS``)."""
    for _ in range(500):
        if sum(1 for e in sink.for_(env.correlation_id) if e.kind == "chunk") > len(WORDS):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the answer never reached its client")


def claude() -> Any:
    return config().models["m"].candidates[0]


async def test_a_stream_the_vendor_broke_part_way_bills_the_prompt_it_counted() -> None:
    handler, sink = make(vendors("break"))
    env = asked()
    await handler.handle(env)
    [line] = sink.ledger
    assert (line.status, line.error_code, line.vendor) == ("error", "vendor_unavailable", "an")
    used = prompt_vendor_counted(estimated_tokens(len(ANSWERED)))
    assert line.usage == used
    assert line.cost == cost_of(claude(), used)
    # Guessed from the prompt at the full price, it would have cost several times more.
    assert line.cost * 3 < cost_of(claude(), Usage.estimated(env.body, len(ANSWERED)))


async def test_a_stream_cut_by_the_deadline_bills_the_prompt_its_vendor_counted() -> None:
    handler, sink = make(vendors("hang"))
    env = asked(deadline_ms=int((time.time() + 1) * 1000))
    await handler.handle(env)
    [line] = sink.ledger
    assert (line.status, line.error_code, line.vendor) == ("error", "deadline_exceeded", "an")
    used = prompt_vendor_counted(estimated_tokens(len(ANSWERED)))
    assert line.usage == used
    assert line.cost == cost_of(claude(), used)


async def test_a_stream_cut_by_the_worker_stopping_bills_the_prompt_its_vendor_counted() -> None:
    handler, sink = make(vendors("hang"))
    env = asked()
    task = asyncio.create_task(handler.handle(env))
    await said_all(sink, env)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [line] = sink.ledger
    assert (line.status, line.error_code, line.vendor) == ("error", "no_worker", "an")
    used = prompt_vendor_counted(estimated_tokens(len(ANSWERED)))
    assert line.usage == used
    assert line.cost == cost_of(claude(), used)


async def test_a_stream_opened_and_cut_by_its_begin_limit_bills_the_counted_prompt() -> None:
    """Opened, said nothing in its ``timeout_s``, and another candidate answered: the
    answered line carries the cut call too, at the prompt its vendor counted."""
    cfg = config(timeout_s=0.3)
    handler, sink = make(vendors("hang", words=[]), cfg)
    env = asked()
    await handler.handle(env)
    [line] = sink.ledger
    assert (line.status, line.vendor) == ("ok", "b")
    answered = Usage(input_tokens=7, output_tokens=1)  # b's own count (``sse``)
    cut = prompt_vendor_counted(estimated_tokens(0))
    assert line.usage == Usage(
        **{f: getattr(answered, f) + getattr(cut, f) for f in Usage.model_fields}
    )
    other = cfg.models["m"].candidates[1]
    assert line.cost == pytest.approx(cost_of(other, answered) + cost_of(claude(), cut))


async def test_a_vendor_that_counts_at_the_end_only_is_billed_the_estimate() -> None:
    """A compatible server whose message_start says no input (its counts come with
    message_delta): a cut stream is billed the relay's estimate, never a free prompt."""
    handler, sink = make(vendors("break", counted={"input_tokens": 0, "output_tokens": 0}))
    env = asked()
    await handler.handle(env)
    [line] = sink.ledger
    assert line.usage == Usage.estimated(env.body, len(ANSWERED))
