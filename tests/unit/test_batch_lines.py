"""The relay's own Batch API lines on a worker: a cancel reaches the lines it already took
(waiting at the rate gates, between retries)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agents.batch_results import CancelledBatches
from agents.handler import BatchLines, RequestHandler
from schemas.envelope import Priority, RequestEnvelope
from tables.buckets import PriorityGate, TokenBucket
from tests.support.sinks import Sink
from tests.unit.test_handler import envelope, make, vendor

RESULTS = "relay.batch-results"


class Store:
    """The batch store's cancel state, counting its reads."""

    def __init__(self) -> None:
        self.cancelled_ids: set[str] = set()
        self.reads = 0

    async def cancelled(self, batch_id: str) -> bool:
        self.reads += 1
        await asyncio.sleep(0.001)  # a round trip: lines asking meanwhile share it
        return batch_id in self.cancelled_ids


def lines_of(store: Store, ttl_s: float = 0.05) -> BatchLines:
    """What the wiring gives the handler (a shorter cache, for the tests' time scale)."""
    cancels = CancelledBatches(store, RESULTS, ttl_s=ttl_s)  # type: ignore[arg-type]
    return BatchLines(RESULTS, cancels)


def gated(tokens: float, refill_per_s: float) -> PriorityGate:
    """A gate holding tenant ``t`` to ``tokens`` now and ``refill_per_s`` after."""
    gate = PriorityGate()
    bucket = TokenBucket(
        capacity=1, refill_per_s=refill_per_s, tokens=tokens, updated=time.monotonic()
    )
    gate.configure("tenant:t", bucket)
    return gate


def line(batch: str, index: int, **kw: Any) -> RequestEnvelope:
    """Line ``index`` of Batch API batch ``batch``, as the gateway sends it."""
    fields: dict[str, Any] = {
        "key": f"{batch}-{index}",
        "priority": Priority.background,
        "correlation_id": f"{batch}/{index}",
        "reply_to": RESULTS,
        "deadline_ms": int((time.time() + 86400) * 1000),
    }
    return envelope(**{**fields, **kw})


def handler_with(
    calls: list[str], gate: PriorityGate, lines: BatchLines, **kw: Any
) -> tuple[RequestHandler, Sink]:
    handler, sink = make(vendor(calls, **kw))
    handler.dispatcher.gate = gate
    handler.batch_lines = lines
    return handler, sink


async def test_lines_taken_before_a_cancel_are_not_sent_after_it():
    """Four lines taken at once; the tenant's limit lets one go now, the next every 0.2 s.
    Cancelled at 0.05 s: the three still at the gate are answered batch_cancelled once it
    lets them through, never sent, and cost nothing."""
    calls: list[str] = []
    store = Store()
    handler, sink = handler_with(calls, gated(1, 5), lines_of(store), delay=0)
    envs = [line("batch_gate", i) for i in range(4)]
    tasks = [asyncio.create_task(handler.handle(e)) for e in envs]
    await asyncio.sleep(0.05)
    store.cancelled_ids.add("batch_gate")
    await asyncio.gather(*tasks)

    assert calls == ["a"], "only the line let through before the cancel reached a vendor"
    first, *rest = envs
    assert sink.for_(first.correlation_id)[-1].kind == "final"
    for env in rest:
        [answer] = sink.for_(env.correlation_id)
        assert answer.kind == "error" and answer.error is not None
        assert answer.error["code"] == "batch_cancelled"
    by_status = sorted((line.error_code or "ok", line.cost) for line in sink.ledger)
    assert by_status == [("batch_cancelled", 0.0)] * 3 + [("ok", pytest.approx(9e-6))]


async def test_a_line_retrying_is_not_sent_again_once_its_batch_is_cancelled():
    """The first vendor fails (500): before the next candidate is tried, the cancel is
    seen and nothing more goes out."""
    calls: list[str] = []
    store = Store()
    handler, sink = handler_with(calls, PriorityGate(), lines_of(store), fail_a=True, delay=0.05)
    env = line("batch_retry", 0)
    task = asyncio.create_task(handler.handle(env))
    await asyncio.sleep(0.02)  # the call to vendor a is under way
    store.cancelled_ids.add("batch_retry")
    await task
    assert calls == ["a"]
    [answer] = sink.for_(env.correlation_id)
    assert answer.error is not None and answer.error["code"] == "batch_cancelled"


async def test_a_batch_is_read_once_per_interval_however_many_lines_ask():
    store = Store()
    cancels = CancelledBatches(store, RESULTS, ttl_s=0.05)  # type: ignore[arg-type]
    envs = [line("batch_many", i) for i in range(200)]
    assert not any(await asyncio.gather(*(cancels(e) for e in envs)))
    assert store.reads == 1
    store.cancelled_ids.add("batch_many")
    assert not await cancels(envs[0]), "within the interval the last answer stands"
    await asyncio.sleep(0.06)
    assert all(await asyncio.gather(*(cancels(e) for e in envs)))
    assert store.reads == 2
    assert not await cancels(envelope(reply_to=RESULTS, correlation_id="not-a-line"))
    assert not await cancels(envelope(correlation_id="batch_many/1"))  # a gateway's topic
    assert store.reads == 2


async def test_realtime_requests_never_ask_for_a_cancel():
    calls: list[str] = []
    store = Store()
    handler, sink = handler_with(calls, PriorityGate(), lines_of(store))
    env = envelope(key="realtime")
    await handler.handle(env)
    assert calls == ["a"] and store.reads == 0
    assert sink.for_(env.correlation_id)[-1].kind == "final"


async def test_a_request_sharing_a_cancelled_lines_call_gets_one_of_its_own():
    """A background request of the same tenant and question (another producer's, or
    another batch's line) joined the call of a line whose batch is then cancelled: it
    is not answered batch_cancelled, but sent on its own."""
    calls: list[str] = []
    store = Store()
    handler, sink = handler_with(calls, gated(0, 20), lines_of(store), delay=0)
    leader = line("batch_shared", 0, key="same")
    follower = envelope(key="same", priority=Priority.background)
    store.cancelled_ids.add("batch_shared")
    led = asyncio.create_task(handler.handle(leader))
    await asyncio.sleep(0.01)  # the leader waits at the gate
    await handler.handle(follower)
    await led
    while handler.spawned:
        await asyncio.gather(*handler.spawned)
    answer = sink.for_(leader.correlation_id)[-1]
    assert answer.error is not None and answer.error["code"] == "batch_cancelled"
    assert sink.for_(follower.correlation_id)[-1].kind == "final"
    assert calls == ["a"]
