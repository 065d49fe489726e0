"""A stream whose clients went away (cancel notices): the vendor call stops when nobody
is left on it, goes on when someone is, and each request keeps its one ledger line."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from agents.handler import RequestHandler
from schemas.envelope import RequestEnvelope
from schemas.usage import Usage, estimated_tokens
from tables.prices import cost_of
from tests.support.sinks import Sink
from tests.unit import test_cut_stream_usage as cut
from tests.unit.test_handler import envelope, make, sse

WORDS = [f" w{i:02d}" for i in range(40)]  # 4 characters each: about a token each


def vendor(sent: list[str], calls: list[int], gap: float = 0.01) -> httpx.AsyncClient:
    """A vendor streaming ``WORDS`` a ``gap`` apart; ``sent`` is every line it wrote."""

    async def answer(request: httpx.Request) -> httpx.Response:
        calls.append(1)

        async def lines() -> Any:
            for line in sse(WORDS):
                await asyncio.sleep(gap)
                sent.append(line)
                yield line.encode()

        return httpx.Response(200, content=lines(), headers={"content-type": "text/event-stream"})

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


def chunks(sink: Sink, env: RequestEnvelope) -> int:
    return sum(1 for e in sink.for_(env.correlation_id) if e.kind == "chunk")


def text(sink: Sink, env: RequestEnvelope) -> str:
    events = sink.for_(env.correlation_id)
    return "".join(e.body["choices"][0]["delta"].get("content") or "" for e in events if e.body)


async def until(done: Callable[[], bool]) -> None:
    for _ in range(500):
        if done():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("never happened")


def setup(**kw: Any) -> tuple[RequestHandler, Sink, list[str], list[int]]:
    sent: list[str] = []
    calls: list[int] = []
    handler, sink = make(vendor(sent, calls, **kw))
    return handler, sink, sent, calls


async def test_a_stream_whose_only_client_left_stops_the_vendor_and_bills_what_streamed():
    handler, sink, sent, _ = setup()
    env = envelope(stream=True, key="k-left")
    task = asyncio.create_task(handler.handle(env))
    await until(lambda: chunks(sink, env) >= 3)
    handler.cancel(env.cancel_notice())
    await asyncio.wait_for(task, 2)  # the leader's task meters it, then ends
    written = len(sent)
    await asyncio.sleep(0.2)  # twenty more lines, had it read on
    assert len(sent) == written < 10, "the vendor's stream was closed, not read to its end"
    [line] = sink.ledger
    assert (line.status, line.error_code, line.vendor) == ("error", "client_closed", "a")
    assert 0 < line.usage.output_tokens < len(WORDS) and line.cost > 0
    assert [e.kind for e in sink.for_(env.correlation_id)] == ["chunk"] * chunks(sink, env)
    assert sink.outcomes == [], "a call stopped for nobody says nothing of the vendor's health"
    assert len(handler.flights) == 0


@pytest.mark.parametrize("leaves", ["leader", "follower"])
async def test_a_call_goes_on_for_the_waiter_still_there(leaves: str):
    """The one who left gets nothing more, and a ``client_closed`` line with the figures
    it would have had: the leader's carries what the vendor billed (the whole answer,
    since the call went on), a follower's costs nothing, as coalesced lines do."""
    handler, sink, sent, calls = setup()
    leader, follower = envelope(stream=True, key="k-two"), envelope(stream=True, key="k-two")
    task = asyncio.create_task(handler.handle(leader))
    await until(lambda: chunks(sink, leader) >= 2)
    await handler.handle(follower)  # joins mid-stream
    gone, stays = (leader, follower) if leaves == "leader" else (follower, leader)
    handler.cancel(gone.cancel_notice())
    heard = chunks(sink, gone)
    await asyncio.wait_for(task, 5)
    assert calls == [1] and len(sent) == len(sse(WORDS)), "read to its end, once"
    assert text(sink, stays) == "".join(WORDS) and sink.for_(stays.correlation_id)[-1].kind == (
        "final"
    )
    assert chunks(sink, gone) == heard and sink.for_(gone.correlation_id)[-1].kind == "chunk"
    lines = {line.correlation_id: line for line in sink.ledger}
    assert len(sink.ledger) == 2
    closed, answered = lines[gone.correlation_id], lines[stays.correlation_id]
    assert (closed.status, closed.error_code) == ("error", "client_closed")
    assert answered.status == "ok"
    paid, free = (closed, answered) if leaves == "leader" else (answered, closed)
    assert paid.usage.output_tokens == len(WORDS) and paid.cost > 0 and not paid.coalesced
    assert free.coalesced and free.cost == 0
    assert [o.ok for o in sink.outcomes] == [True]


async def test_a_cancel_for_no_request_waiting_here_changes_nothing():
    handler, sink, _, _ = setup(gap=0.001)
    handler.cancel(envelope(stream=True, key="k-unknown").cancel_notice())
    env = envelope(stream=True, key="k-other-tenant")
    task = asyncio.create_task(handler.handle(env))
    await until(lambda: chunks(sink, env) >= 1)
    # another tenant cannot withdraw it by naming its correlation id
    handler.cancel(env.cancel_notice().model_copy(update={"tenant": "u"}))
    await asyncio.wait_for(task, 2)
    handler.cancel(env.cancel_notice())  # answered already
    await asyncio.sleep(0.01)
    assert text(sink, env) == "".join(WORDS)
    [line] = sink.ledger
    assert line.status == "ok" and line.correlation_id == env.correlation_id
    assert len(sink.replies) == chunks(sink, env) + 1


async def test_an_identical_request_after_a_stop_gets_a_fresh_answer():
    handler, sink, _, calls = setup()
    first, again = envelope(stream=True, key="k-again"), envelope(stream=True, key="k-again")
    task = asyncio.create_task(handler.handle(first))
    await until(lambda: chunks(sink, first) >= 2)
    handler.cancel(first.cancel_notice())
    # at once, while the stopped call is still being metered: it must not join that one
    await asyncio.wait_for(handler.handle(again), 5)
    await asyncio.wait_for(task, 2)
    assert calls == [1, 1]
    assert text(sink, again) == "".join(WORDS)
    assert sink.for_(again.correlation_id)[-1].kind == "final"
    codes = {line.correlation_id: line.error_code for line in sink.ledger}
    assert codes == {first.correlation_id: "client_closed", again.correlation_id: None}
    assert len(handler.flights) == 0


async def test_a_stopped_stream_s_tpm_is_squared_with_what_streamed() -> None:
    """The tenant's and the vendor's TPM buckets are charged what the line bills (what
    streamed), not given the whole estimate back (a client reading most of a stream and
    leaving would use no TPM) nor left holding it."""
    import time

    from tables.buckets import TokenBucket

    handler, sink, _, _ = setup(gap=0.005)
    gate = handler.dispatcher.gate
    full = 100_000.0
    for key in ("tenant-tpm:t", "vendor-tpm:a"):
        now = time.monotonic()
        gate.configure(key, TokenBucket(capacity=full, refill_per_s=1e-9, tokens=full, updated=now))
    env = envelope(stream=True, key="tpm-stopped")
    task = asyncio.create_task(handler.handle(env))
    await until(lambda: chunks(sink, env) >= 30)
    handler.cancel(env.cancel_notice())
    await asyncio.wait_for(task, 5)
    [line] = sink.ledger
    billed = line.usage.input_tokens + line.usage.output_tokens
    assert line.error_code == "client_closed" and billed > 0
    for key in ("tenant-tpm:t", "vendor-tpm:a"):
        bucket = gate.bucket(key)
        assert bucket is not None and full - bucket.tokens == pytest.approx(billed), key


async def test_a_follower_due_a_call_of_its_own_whose_client_left_gets_none() -> None:
    """A follower cut by its leader's deadline is run again once the flight lands; its
    client leaving meanwhile means no second vendor call for nobody, just its line."""
    from schemas.errors import DeadlineExceeded
    from tests.unit.test_handler import in_
    from tests.unit.test_handler import vendor as plain_vendor

    calls: list[str] = []
    handler, sink = make(plain_vendor(calls, delay=0.5))
    hasty = envelope(stream=True, key="rerun-gone", deadline_ms=in_(0.2))
    patient = envelope(stream=True, key="rerun-gone", deadline_ms=in_(30))
    fail = handler._fail

    async def leader_fails(env: RequestEnvelope, err: Any, *args: Any, **kw: Any) -> None:
        if env.correlation_id == hasty.correlation_id and isinstance(err, DeadlineExceeded):
            await asyncio.sleep(0.005)  # the leader's 504 going out; the other client leaves
            handler.cancel(patient.cancel_notice())
        await fail(env, err, *args, **kw)

    handler._fail = leader_fails  # type: ignore[method-assign]

    async def joins_later() -> None:
        await asyncio.sleep(0.05)
        await handler.handle(patient)

    await asyncio.gather(handler.handle(hasty), joins_later())
    await asyncio.gather(*handler.spawned)
    assert calls == ["a"], "one vendor call, not a second for nobody"
    assert [e.kind for e in sink.for_(patient.correlation_id)] == []
    lines = {line.correlation_id: line for line in sink.ledger}
    assert lines[patient.correlation_id].error_code == "client_closed"
    assert lines[hasty.correlation_id].error_code == "deadline_exceeded" and len(lines) == 2


async def test_a_notice_that_comes_before_its_request_joined_stops_it_before_any_call() -> None:
    """The notice was taken before the request joined a flight (a degraded stream's own
    notice still going out): the request starts no call, and its line says why."""
    handler, sink, _, calls = setup()
    env = envelope(stream=True, key="left-early")
    task = asyncio.create_task(handler.handle(env))
    handler.cancel(env.cancel_notice())  # before the request's task has run
    await asyncio.wait_for(task, 5)
    assert calls == [] and sink.for_(env.correlation_id) == []
    assert [line.error_code for line in sink.ledger] == ["client_closed"]
    other = envelope(stream=True, key="left-early")  # the same question, someone else's
    await handler.handle(other)
    assert calls == [1] and sink.for_(other.correlation_id)[-1].kind == "final"


@pytest.mark.parametrize("notice", ["before", "after"])
async def test_a_stream_taken_past_its_deadline_whose_client_left_keeps_its_one_line(
    notice: str,
) -> None:
    """Taken past its deadline and grace (a lagging partition), a stream is answered
    without a line of the worker's, its gateway's taken for written; but a gateway whose
    client left first sent a notice instead and wrote nothing: the line is the worker's,
    whichever of the two the worker took first."""
    from tests.unit.test_handler import in_

    handler, sink, _, calls = setup()
    env = envelope(stream=True, key="late-gone", deadline_ms=in_(-3), gateway_meters_timeout=True)
    if notice == "before":  # the request's task made, then the notice behind it taken
        task = asyncio.create_task(handler.handle(env))
        handler.cancel(env.cancel_notice())
        await task
    else:
        await handler.handle(env)
        assert sink.ledger == [], "its gateway's line, as far as the worker knows yet"
        handler.cancel(env.cancel_notice())
    await asyncio.gather(*handler.spawned)
    assert calls == []
    [line] = sink.ledger
    assert (line.correlation_id, line.error_code, line.cost) == (
        env.correlation_id,
        "client_closed",
        0,
    )
    handler.cancel(env.cancel_notice())  # the same notice again (a producer's retry)
    await asyncio.gather(*handler.spawned)
    assert len(sink.ledger) == 1


async def test_a_follower_whose_notice_comes_after_its_flight_landed_late_keeps_its_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A follower whose client left, its notice taken only after the flight landed past
    the follower's deadline and grace (a lagging agent, a notice gone to the partition's
    next owner): its gateway wrote no line, so the worker does, once."""
    from tests.unit.test_handler import in_

    monkeypatch.setattr("agents.flights.REPLY_GRACE_S", 0.05)
    handler, sink, _, calls = setup()
    leader = envelope(stream=True, key="late-notice")
    task = asyncio.create_task(handler.handle(leader))
    await until(lambda: chunks(sink, leader) >= 1)
    # Its 0.1 s counted from when it joins, not from before the leader's first chunk,
    # which a loaded machine may take most of 0.1 s to bring.
    follower = envelope(
        stream=True, key="late-notice", deadline_ms=in_(0.1), gateway_meters_timeout=True
    )
    await handler.handle(follower)
    await asyncio.wait_for(task, 5)
    assert [line.correlation_id for line in sink.ledger] == [leader.correlation_id]
    handler.cancel(follower.cancel_notice())
    await asyncio.gather(*handler.spawned)
    lines = {line.correlation_id: line for line in sink.ledger}
    assert len(sink.ledger) == 2 and calls == [1]
    closed = lines[follower.correlation_id]
    assert (closed.error_code, closed.coalesced, closed.cost) == ("client_closed", True, 0)
    assert lines[leader.correlation_id].status == "ok"


@pytest.mark.parametrize("other", ["given_up", "lost"])
async def test_a_waiter_nobody_reads_keeps_no_call_going_for_nobody(
    other: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower its gateway gave up on (cut at its own, shorter, deadline: answered 504
    and metered there, no notice sent) or one whose reply topic failed reads nothing more:
    it is sent no more chunks, and when the leader's client leaves, the call stops."""
    from tests.unit.test_handler import break_topic, in_

    monkeypatch.setattr("agents.flights.REPLY_GRACE_S", 0.05)
    handler, sink, sent, _ = setup()  # 40 words, 10 ms apart
    break_topic(sink, "gone")
    key = f"nobody-{other}"
    leader = envelope(stream=True, key=key)
    if other == "given_up":
        follower = envelope(
            stream=True, key=key, deadline_ms=in_(0.05), gateway_meters_timeout=True
        )
    else:
        follower = envelope(stream=True, key=key, reply_to="gone")
    task = asyncio.create_task(handler.handle(leader))
    await until(lambda: chunks(sink, leader) >= 1)
    await handler.handle(follower)
    await asyncio.sleep(0.15)  # the follower's deadline and grace passed
    heard = chunks(sink, follower)
    await until(lambda: chunks(sink, leader) >= 15)
    assert chunks(sink, follower) == heard, "nothing more to a waiter nobody reads"
    handler.cancel(leader.cancel_notice())
    await asyncio.wait_for(task, 2)
    written = len(sent)
    await asyncio.sleep(0.1)  # ten more lines, had it read on
    assert len(sent) == written < len(WORDS), "the vendor's stream was closed"
    lines = {line.correlation_id: line for line in sink.ledger}
    assert lines[leader.correlation_id].error_code == "client_closed"
    assert len(sink.ledger) == len(lines), "one line each at most"
    if other == "given_up":  # its gateway wrote its line
        assert follower.correlation_id not in lines


async def test_a_stopped_anthropic_stream_bills_the_prompt_its_vendor_counted() -> None:
    """A client's "stop" on a long prompt served from Anthropic's cache: the line bills
    the input, cache reads and cache writes message_start said (each at its own price),
    only its output estimated, never the whole prompt guessed at the full input price."""
    handler, sink = cut.make(cut.vendors("hang"))
    env = cut.asked()
    task = asyncio.create_task(handler.handle(env))
    await until(lambda: text(sink, env) == cut.ANSWERED)  # then the vendor goes silent
    handler.cancel(env.cancel_notice())
    await asyncio.wait_for(task, 2)
    [line] = sink.ledger
    assert (line.status, line.error_code, line.vendor) == ("error", "client_closed", "an")
    used = cut.prompt_vendor_counted(estimated_tokens(len(cut.ANSWERED)))
    assert line.usage == used
    assert (line.usage.input_tokens, line.usage.cache_read_tokens) == (9020, 8000)
    assert line.cost == cost_of(cut.claude(), used)
    assert line.cost * 3 < cost_of(cut.claude(), Usage.estimated(env.body, len(cut.ANSWERED)))
