"""The relay's own Batch API lines on a worker: a cancel reaches the lines it already took
(waiting at the rate gates, between retries), and a stop puts the lines it cut back on the
request topic instead of failing them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from agents.batch_results import CancelledBatches
from agents.handler import BatchLines, RequestHandler
from schemas.envelope import Priority, RequestEnvelope
from streams.wiring import PUT_BACK, finish, taken_as
from tables.buckets import PriorityGate, TokenBucket
from tables.recent import RecentIds
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


class Topic:
    """The request topic as a stopping worker sees it: what was put back on it."""

    def __init__(self, *, fails: bool = False) -> None:
        self.put: list[RequestEnvelope] = []
        self.fails = fails

    async def put_back(self, env: RequestEnvelope) -> None:
        if self.fails:
            raise ConnectionError("no broker")
        self.put.append(env)


def lines_of(store: Store, topic: Topic | None = None, ttl_s: float = 0.05) -> BatchLines:
    """What the wiring gives the handler (a shorter cache, for the tests' time scale)."""
    cancels = CancelledBatches(store, RESULTS, ttl_s=ttl_s)  # type: ignore[arg-type]
    return BatchLines(RESULTS, cancels, (topic or Topic()).put_back)


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


async def until(done: Callable[[], bool]) -> None:
    """Wait until ``done()`` (5 s at most): for a step of the handler's to be reached,
    rather than for a time a loaded machine may take longer than."""
    for _ in range(5000):
        if done():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("never happened")


def handler_with(
    calls: list[str], gate: PriorityGate, lines: BatchLines, **kw: Any
) -> tuple[RequestHandler, Sink]:
    handler, sink = make(vendor(calls, **kw))
    handler.dispatcher.gate = gate
    handler.batch_lines = lines
    return handler, sink


async def test_lines_taken_before_a_cancel_are_not_sent_after_it():
    """Four lines taken at once; the tenant's limit lets one go now, the next every 0.5 s.
    Cancelled once the first has reached its vendor: the three still at the gate are
    answered batch_cancelled once it lets them through, never sent, and cost nothing."""
    calls: list[str] = []
    store = Store()
    handler, sink = handler_with(calls, gated(1, 2), lines_of(store), delay=0)
    envs = [line("batch_gate", i) for i in range(4)]
    tasks = [asyncio.create_task(handler.handle(e)) for e in envs]
    await until(lambda: calls == ["a"])  # (a step, not a time a loaded machine may overrun)
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
    await until(lambda: calls == ["a"])  # the call to vendor a is under way (for 0.05 s)
    store.cancelled_ids.add("batch_retry")
    await task
    assert calls == ["a"]
    [answer] = sink.for_(env.correlation_id)
    assert answer.error is not None and answer.error["code"] == "batch_cancelled"


async def test_a_batch_is_read_once_per_interval_however_many_lines_ask():
    store = Store()
    # (an interval a loaded machine cannot overrun between two lines of the test)
    cancels = CancelledBatches(store, RESULTS, ttl_s=0.5)  # type: ignore[arg-type]
    envs = [line("batch_many", i) for i in range(200)]
    assert not any(await asyncio.gather(*(cancels(e) for e in envs)))
    assert store.reads == 1
    store.cancelled_ids.add("batch_many")
    assert not await cancels(envs[0]), "within the interval the last answer stands"
    await asyncio.sleep(0.55)
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


async def test_a_stop_puts_the_lines_it_cut_back_on_the_request_topic():
    """Four lines taken, three waiting at the tenant's gate when the worker stops: those
    three are put back (same correlation id) for the next worker, unanswered and
    unmetered, instead of failing for good; the one that was answered stays answered."""
    calls: list[str] = []
    topic = Topic()
    handler, sink = handler_with(calls, gated(1, 0.01), lines_of(Store(), topic), delay=0)
    envs = [line("batch_rs", i) for i in range(4)]
    tasks = {asyncio.create_task(handler.handle(e)) for e in envs}
    await asyncio.sleep(0.05)
    await finish(lambda: tasks | handler.spawned, set(), drain_s=0.05, answer_s=2)

    first, *cut = envs
    assert [e.kind for e in sink.for_(first.correlation_id)] == ["final"]
    assert sorted(e.correlation_id for e in topic.put) == [e.correlation_id for e in cut]
    assert all(put == env for put, env in zip(sorted(topic.put, key=lambda e: e.correlation_id),
                                              cut, strict=True))  # fmt: skip
    assert not any(sink.for_(e.correlation_id) for e in cut), "no answer: the next worker's"
    assert [line.trace_id for line in sink.ledger] == [first.trace_id]


async def test_a_line_cut_mid_stream_is_put_back_and_what_streamed_metered():
    """A vendor that had begun answering is paid for what it sent: that ledger line is
    written as for any request cut, and the line still goes back, unanswered."""
    calls: list[str] = []
    topic = Topic()
    handler, sink = handler_with(calls, PriorityGate(), lines_of(Store(), topic))
    env = line("batch_stream", 0, stream=True)
    task = asyncio.create_task(handler.handle(env))
    await until(lambda: bool(sink.for_(env.correlation_id)))  # a chunk streamed, more to come
    await finish(lambda: {task} | handler.spawned, set(), drain_s=0, answer_s=2)
    assert [e.correlation_id for e in topic.put] == [env.correlation_id]
    assert all(e.kind == "chunk" for e in sink.for_(env.correlation_id))
    [metered] = sink.ledger
    assert metered.error_code == "no_worker" and metered.cost > 0


async def test_a_line_the_broker_will_not_take_back_is_answered_as_cut():
    calls: list[str] = []
    topic = Topic(fails=True)
    handler, sink = handler_with(calls, gated(0, 0.01), lines_of(Store(), topic))
    env = line("batch_nobroker", 0)
    task = asyncio.create_task(handler.handle(env))
    await asyncio.sleep(0.02)
    await finish(lambda: {task} | handler.spawned, set(), drain_s=0, answer_s=2)
    [answer] = sink.for_(env.correlation_id)
    assert answer.error is not None and answer.error["code"] == "no_worker"
    [metered] = sink.ledger
    assert metered.error_code == "no_worker" and metered.cost == 0


async def test_a_line_cut_before_its_call_is_put_back():
    """Cut while the worker still looks for its answer in the cache, before any flight."""
    topic = Topic()
    handler, sink = handler_with([], PriorityGate(), lines_of(Store(), topic))

    class Lane:
        def accepts(self, cand: Any) -> bool:
            return True

    async def slow_cache(key: str, *, stale_ok: bool = False) -> None:
        await asyncio.sleep(10)

    handler.lane = Lane()  # type: ignore[assignment]
    sink.cached = slow_cache  # type: ignore[method-assign,assignment]
    env = line("batch_early", 0, key="early", cache_lookup=True)
    task = asyncio.create_task(handler.handle(env))
    await asyncio.sleep(0.01)
    await finish(lambda: {task}, set(), drain_s=0, answer_s=2)
    assert [e.correlation_id for e in topic.put] == [env.correlation_id]
    assert not sink.replies and not sink.ledger


def test_a_line_put_back_is_taken_again_and_a_copy_of_either_is_not():
    """The worker drops an envelope it took already (a producer's retry); the copy a
    stopping worker put back is another envelope, taken by whichever worker reads it,
    even one that took the first."""
    env = line("batch_dup", 0)
    taken = RecentIds(10)
    first = taken.first_time(taken_as(env, []))
    retry = taken.first_time(taken_as(env, ()))
    put_back = [(PUT_BACK, b"7f3a")]
    again = taken.first_time(taken_as(env, put_back))
    again_retry = taken.first_time(taken_as(env, {PUT_BACK: b"7f3a"}))
    later = taken.first_time(taken_as(env, [("other", b"x"), (PUT_BACK, b"c001")]))
    assert (first, retry, again, again_retry, later) == (True, False, True, False, True)


class ExpiringBatches:
    """A vendor batch API whose batch runs until it is cancelled, and then says the first
    request had run (answered, billed) and the others had not."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.cancels = 0

    async def submit_batch(self, calls: list[Any], api_key: str) -> str:
        self.calls = calls
        return "vb_exp"

    async def poll_batch(self, batch_id: str, api_key: str) -> Any:
        from agents.adapters.base import VendorResult
        from schemas.errors import VendorUnavailable
        from schemas.usage import Usage

        if not self.cancels:
            return None
        message = {"role": "assistant", "content": "done"}
        body = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        ran = VendorResult(body=body, usage=Usage(input_tokens=70, output_tokens=10))
        return {
            cid: ran if n == 0 else VendorUnavailable("batch request not run")
            for n, (cid, _) in enumerate(self.calls)
        }

    async def cancel_batch(self, batch_id: str, api_key: str) -> None:
        self.cancels += 1


async def test_lines_of_a_batch_that_expired_in_a_vendor_batch_are_not_paid_for_unrun():
    """Two lines went to a vendor batch late in their batch's window; the window (and
    the store's grace) ends while the vendor still works on it.  The store says the batch
    is done with (as it says cancelled), so the lane cancels the vendor batch: the line
    the vendor had run is delivered and metered at the batch price (its batch does not
    take it: its error file says batch_expired), the other is answered deadline_exceeded,
    which its error file says batch_expired too, never batch_cancelled, and is neither
    sent the realtime way nor paid for.  One ledger line each."""
    from agents.batch_lane import BatchLane
    from agents.batch_results import cancelled, output_line
    from agents.keys import KeyPool
    from schemas.config import BatchLane as LaneRule

    calls: list[str] = []
    store = Store()
    handler, sink = handler_with(calls, PriorityGate(), lines_of(store))
    vendor = ExpiringBatches()

    async def line_cancelled(env: RequestEnvelope) -> bool:
        return await cancelled(store, env, RESULTS)  # type: ignore[arg-type]

    handler.lane = BatchLane(
        {"a": vendor},
        {"a": KeyPool(["k"])},
        LaneRule(max_size=2, poll_s=0.01),
        handler.deliver_batch,
        cancelled=line_cancelled,
    )
    end = time.time() + 0.2  # the batch's window ends (its lines' deadline)
    envs = [line("batch_exp", i, deadline_ms=int(end * 1000)) for i in range(2)]
    for env in envs:
        await handler.handle(env)
    await until(lambda: bool(vendor.calls))
    await until(lambda: time.time() > end)
    store.cancelled_ids.add("batch_exp")  # past its window and grace: the store says so
    for task in list(handler.lane._tasks):
        await task

    assert calls == [] and vendor.cancels == 1
    ran, unrun = envs
    [answer] = sink.for_(ran.correlation_id)
    assert answer.kind == "final"
    [refused] = sink.for_(unrun.correlation_id)
    assert output_line("c1", refused).error is not None
    assert output_line("c1", refused).error.code == "batch_expired"  # type: ignore[union-attr]
    by_id = {line.trace_id: line for line in sink.ledger}
    assert len(sink.ledger) == 2
    paid, free = by_id[ran.trace_id], by_id[unrun.trace_id]
    assert paid.batch_api and paid.status == "ok" and paid.cost > 0
    assert (free.status, free.error_code, free.cost) == ("error", "deadline_exceeded", 0.0)
