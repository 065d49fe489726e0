"""Batch API lines held back by what their tenant has in flight wait their turn and are
judged again, rather than end with the 429 a client would come back after: nobody comes
back for a Batch API line.  Only a spent budget (402, the throttle's 429), a cancelled
batch or the batch's window ends one unanswered; a stopping worker puts them back.  The
line is judged in order, first fit: one that fits goes though one before it does not,
until that one has been passed by for ``PASSED_BY_S``."""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from typing import Any

import pytest

from agents.batch_lane import VENDOR_WINDOW_S
from agents.handler import BatchLines, RequestHandler
from schemas.envelope import Priority, RequestEnvelope, UsageEvent
from schemas.errors import VendorUnsupported
from tables.budgets import BudgetDecision, BudgetPolicy, Spend, add_spend
from tables.holds import AFTER_DEADLINE_S, PASSED_BY_S, Budgets, Judge, Waiting, worst_cost
from tests.support.envelopes import request_envelope
from tests.support.sinks import Sink
from tests.unit.test_handler import CONFIG, envelope, make, vendor
from tests.unit.test_holds import PRICES

RESULTS = "relay.batch-results"


class Lines:
    """The Batch API's side of the worker (``BatchLines``): batches cancelled, and lines
    put back on the request topic."""

    def __init__(self) -> None:
        self.cancelled: set[str] = set()
        self.put_back: list[str] = []

    def bound(self) -> BatchLines:
        async def cancelled(env: RequestEnvelope) -> bool:
            return env.correlation_id.split("/")[0] in self.cancelled

        async def put_back(env: RequestEnvelope) -> None:
            self.put_back.append(env.correlation_id)

        return BatchLines(RESULTS, cancelled, put_back)


def line(n: int, batch: str = "batch_x", deadline_s: float = 86_400.0) -> RequestEnvelope:
    """Line ``n`` of a Batch API batch: no client waits on it, its answer goes to the
    batch's results."""
    return envelope(
        key=f"line-{n}",
        ttl=None,
        priority=Priority.background,
        correlation_id=f"{batch}/{n}",
        reply_to=RESULTS,
        deadline_ms=int((time.time() + deadline_s) * 1000),
    )


def budgeted(
    limit_usd: float, **policy: Any
) -> tuple[RequestHandler, Sink, Budgets, dict[str, Spend], list[str], Lines]:
    """A handler whose tenant ``t`` has a budget of ``limit_usd``, and whose sink meters
    each line at once (the worker's sink tells the holds, the spend agent counts it)."""
    spent = {"t": Spend()}
    budgets = Budgets(
        {"t": BudgetPolicy(limit_usd=limit_usd, **policy)}, lambda t: spent[t], PRICES
    )
    calls: list[str] = []
    handler, sink = make(vendor(calls, delay=0.01), budget=budgets)
    lines = Lines()
    handler.batch_lines = lines.bound()
    written = sink.usage

    async def usage(event: UsageEvent) -> None:
        await written(event)
        budgets.metered(event.tenant, event.correlation_id)
        spent[event.tenant] = add_spend(spent[event.tenant], event.cost, time.time(), "month")

    sink.usage = usage  # type: ignore[method-assign]
    return handler, sink, budgets, spent, calls, lines


def holding_all(budgets: Budgets) -> RequestEnvelope:
    """A request of tenant ``t`` in flight (for an hour at most) whose worst case holds
    the whole budget: every other one is held back until its line is written."""
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}
    blocker = request_envelope(body=body, correlation_id="blocker")
    budgets.keep(blocker, time.time() + 3600)
    assert budgets.holds.held("t") >= budgets.policies["t"].limit_usd
    return blocker


def lined_up(budgets: Budgets, count: int) -> asyncio.Event:
    """Set once ``count`` requests have taken their place in a tenant's line (each
    handled on its own task, as the requests agent does)."""
    seen = asyncio.Event()
    taken = 0
    turn = budgets.turn

    def counted(tenant: str) -> Any:
        nonlocal taken
        taken += 1
        if taken >= count:
            seen.set()
        return turn(tenant)  # (entered at once, before its task yields)

    budgets.turn = counted  # type: ignore[method-assign]
    return seen


async def test_batch_lines_over_the_in_flight_cap_all_end_answered_within_the_budget() -> None:
    """200 lines of a tenant with $1 and nothing spent: its holds let about 24 go at a
    time (each holds its worst case), and the rest used to end as 429 budget_in_flight.
    Each waits its turn instead: all 200 answered, never more in flight than the holds
    allow, the spend within the budget, nobody left in line and nothing held after."""
    handler, sink, budgets, spent, calls, _ = budgeted(1.0)
    envs = [line(n) for n in range(200)]
    worst = worst_cost(envs[0], PRICES)
    most = 0.0
    dispatch = handler.dispatcher.run

    async def counted(*args: Any, **kw: Any) -> Any:  # what is held as each call goes out
        nonlocal most
        most = max(most, budgets.holds.held("t"))
        return await dispatch(*args, **kw)

    handler.dispatcher.run = counted  # type: ignore[method-assign]
    await asyncio.gather(*(handler.handle(e) for e in envs))
    finals = [sink.for_(e.correlation_id)[-1] for e in envs]
    assert [f.kind for f in finals] == ["final"] * 200
    assert all(topic == RESULTS for topic, _ in sink.replies)
    assert len(calls) == 200 and len(sink.ledger) == 200
    assert 10 * worst < most <= 1.0, "many at once, never more than the budget holds"
    assert spent["t"].spent_usd <= 1.0
    assert budgets.waiting.waiting("t") == 0 and budgets.holds.held("t") == 0.0


async def test_a_request_with_a_client_is_still_told_to_come_back() -> None:
    """A realtime request (its reply goes to a gateway) held back by the same holds gets
    its 429 with Retry-After at once, while the Batch API lines behind them wait."""
    handler, sink, budgets, _, _, _ = budgeted(1.0)
    blocker = holding_all(budgets)
    waiting = line(0)
    queued = lined_up(budgets, 1)
    task = asyncio.ensure_future(handler.handle(waiting))
    await queued.wait()
    client = envelope(key="client", ttl=None)
    await handler.handle(client)
    [told] = sink.for_(client.correlation_id)
    assert told.kind == "error" and told.error["code"] == "rate_limited"
    assert sink.for_(waiting.correlation_id) == []
    budgets.metered("t", blocker.correlation_id)  # its line is written: room again
    await task
    assert sink.for_(waiting.correlation_id)[-1].kind == "final"


async def test_a_budget_spent_while_lines_wait_ends_them_with_402() -> None:
    """Lines wait behind those in flight; the spend counted then reaches the limit (the
    tenant's other spend): the lines in flight are answered, and each waiting one is
    refused 402 as it is judged again, not left to its deadline."""
    handler, sink, budgets, spent, calls, _ = budgeted(1.0)
    blocker = holding_all(budgets)
    envs = [line(n) for n in range(30)]
    queued = lined_up(budgets, len(envs))
    tasks = [asyncio.ensure_future(handler.handle(e)) for e in envs]
    await queued.wait()
    spent["t"] = add_spend(spent["t"], 1.0, time.time(), "month")  # counted elsewhere
    budgets.metered("t", blocker.correlation_id)
    await asyncio.gather(*tasks)
    codes = [sink.for_(e.correlation_id)[-1].error["code"] for e in envs]
    assert codes == ["budget_exceeded"] * len(envs) and calls == []
    assert [line.error_code for line in sink.ledger] == ["budget_exceeded"] * len(envs)
    assert budgets.waiting.waiting("t") == 0


async def test_a_throttled_spent_budget_ends_waiting_lines_too() -> None:
    """``on_exhausted: throttle``: the 429 until the period resets is a refusal for good
    for a line (nobody comes back a month later), not a wait."""
    handler, sink, budgets, spent, _, _ = budgeted(1.0, on_exhausted="throttle")
    blocker = holding_all(budgets)
    waiting = line(0)
    queued = lined_up(budgets, 1)
    task = asyncio.ensure_future(handler.handle(waiting))
    await queued.wait()
    spent["t"] = add_spend(spent["t"], 1.0, time.time(), "month")
    budgets.metered("t", blocker.correlation_id)
    await task
    told = sink.for_(waiting.correlation_id)[-1]
    assert told.kind == "error" and told.error["code"] == "rate_limited"
    assert "spent its budget" in told.error["message"]


async def test_a_line_waiting_at_its_batch_s_deadline_ends_expired() -> None:
    """Nothing lets go of the holds before the batch's window ends: the line is answered
    as expired (its batch says ``batch_expired``), once."""
    handler, sink, budgets, _, calls, _ = budgeted(1.0)
    holding_all(budgets)
    late = line(0, deadline_s=0.2)
    await handler.handle(late)
    [told] = sink.for_(late.correlation_id)
    assert told.kind == "error" and told.error["code"] == "deadline_exceeded"
    assert calls == [] and [e.error_code for e in sink.ledger] == ["deadline_exceeded"]


async def test_a_line_of_a_batch_cancelled_while_it_waits_is_answered_cancelled() -> None:
    handler, sink, budgets, _, calls, lines = budgeted(1.0)
    blocker = holding_all(budgets)
    waiting = line(0, batch="batch_gone")
    queued = lined_up(budgets, 1)
    task = asyncio.ensure_future(handler.handle(waiting))
    await queued.wait()
    lines.cancelled.add("batch_gone")
    budgets.metered("t", blocker.correlation_id)  # it looks again
    await task
    [told] = sink.for_(waiting.correlation_id)
    assert told.kind == "error" and told.error["code"] == "batch_cancelled" and calls == []


async def test_a_stopping_worker_puts_waiting_lines_back_unanswered() -> None:
    """The worker stops while lines wait: each goes back on the request topic for the
    next worker (its offset is committed here), with no answer and no ledger line."""
    handler, sink, budgets, _, calls, lines = budgeted(1.0)
    holding_all(budgets)
    envs = [line(n) for n in range(5)]
    queued = lined_up(budgets, len(envs))
    tasks = [asyncio.ensure_future(handler.handle(e)) for e in envs]
    await queued.wait()
    handler.stop_waiting()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(d, asyncio.CancelledError) for d in done)
    assert sorted(lines.put_back) == sorted(e.correlation_id for e in envs)
    assert sink.replies == [] and sink.ledger == [] and calls == []
    assert budgets.waiting.waiting("t") == 0


def in_flight(budgets: Budgets, name: str, usd: float) -> RequestEnvelope:
    """A realtime request of tenant ``t`` in flight (for an hour at most) holding ``usd``."""
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}
    held = request_envelope(body=body, correlation_id=name)
    budgets.keep(held, time.time() + 3600, share=usd / worst_cost(held, PRICES))
    return held


def big_line(n: int) -> RequestEnvelope:
    """Line ``n``, whose worst case ($1.28) is more than a $1 budget: it goes only when
    nothing else of its tenant is held."""
    env = line(n)
    return env.model_copy(update={"body": {**env.body, "max_tokens": 10**6}})


async def test_a_small_line_behind_a_big_one_goes_once_its_worst_case_fits() -> None:
    """First fit: a big line first in line cannot fit while anything is held; a small one
    behind it goes as soon as a hold let go leaves room for it, not once everything held
    is let go.  The big one keeps its place and goes once nothing is held."""
    handler, sink, budgets, _, calls, _ = budgeted(1.0)
    blocker = in_flight(budgets, "blocker", 0.5)
    other = in_flight(budgets, "other", 0.48)
    big, small = big_line(0), line(1)
    assert worst_cost(small, PRICES) < 0.5 < 1.0 < worst_cost(big, PRICES)
    queued = lined_up(budgets, 2)
    t_big = asyncio.ensure_future(handler.handle(big))
    t_small = asyncio.ensure_future(handler.handle(small))
    await queued.wait()
    assert budgets.waiting.waiting("t") == 2
    budgets.metered("t", other.correlation_id)  # $0.5 still held: room for the small one
    await t_small
    assert sink.for_(small.correlation_id)[-1].kind == "final"
    assert not t_big.done() and budgets.waiting.waiting("t") == 1 and len(calls) == 1
    budgets.metered("t", blocker.correlation_id)  # nothing held: the big one goes
    await t_big
    assert sink.for_(big.correlation_id)[-1].kind == "final" and len(calls) == 2
    assert budgets.waiting.waiting("t") == 0 and budgets.holds.held("t") == 0.0


async def test_a_new_line_that_fits_goes_though_others_wait_and_one_that_does_not_queues() -> None:
    """A line arriving while others wait takes its place at the end and is judged there:
    it goes at once if it fits the room those before it leave (first fit), else waits
    behind them (it does not take room one before it could use)."""
    handler, sink, budgets, _, _, _ = budgeted(1.0)
    blocker = in_flight(budgets, "blocker", 0.9)
    big = big_line(0)
    queued = lined_up(budgets, 1)
    t_big = asyncio.ensure_future(handler.handle(big))
    await queued.wait()
    small = line(1)  # $0.04 fits the $0.1 left
    await handler.handle(small)
    assert sink.for_(small.correlation_id)[-1].kind == "final"
    mid = line(2).model_copy(update={"body": {**line(2).body, "max_tokens": 50_000}})
    assert worst_cost(mid, PRICES) > 1.0 - 0.9
    queued = lined_up(budgets, 1)
    t_mid = asyncio.ensure_future(handler.handle(mid))
    await queued.wait()
    assert budgets.waiting.waiting("t") == 2
    budgets.metered("t", blocker.correlation_id)  # the big one first, then the other
    await asyncio.gather(t_big, t_mid)
    assert [e.correlation_id for _, e in sink.replies if e.kind == "final"] == [
        small.correlation_id,
        big.correlation_id,
        mid.correlation_id,
    ]


async def test_a_first_passed_by_long_enough_is_passed_by_nobody_any_more() -> None:
    """A big first line passed by small ones for ``PASSED_BY_S``: later small lines wait
    behind it, so what is held drains and it goes, then they go."""
    handler, sink, budgets, _, _, _ = budgeted(1.0)
    now = [1_000_000.0]
    budgets.waiting.clock = lambda: now[0]
    blocker = in_flight(budgets, "blocker", 0.5)
    big = big_line(0)
    queued = lined_up(budgets, 1)
    t_big = asyncio.ensure_future(handler.handle(big))
    await queued.wait()
    first = line(1)
    await handler.handle(first)  # passes the big one, which counts from here
    assert sink.for_(first.correlation_id)[-1].kind == "final"
    now[0] += PASSED_BY_S
    late = line(2)
    queued = lined_up(budgets, 1)
    t_late = asyncio.ensure_future(handler.handle(late))
    await queued.wait()
    assert budgets.waiting.waiting("t") == 2 and sink.for_(late.correlation_id) == []
    budgets.metered("t", blocker.correlation_id)
    await asyncio.gather(t_big, t_late)
    finals = [e.correlation_id for _, e in sink.replies if e.kind == "final"]
    assert finals == [first.correlation_id, big.correlation_id, late.correlation_id]


class Room:
    """A budget at a glance for ``Waiting`` on its own: ``usd`` of room, a request of
    worst case ``max_tokens`` dollars let go while it fits (taking its room), each
    verdict recorded."""

    def __init__(self, usd: float) -> None:
        self.usd = usd
        self.judged: list[str] = []
        self.at_once: list[str] = []  # those judged as going on at once

    def fits(self, tenant: str, worst: float, besides: str | None) -> bool:
        return worst <= self.usd

    def judge(self, env: RequestEnvelope) -> Judge:
        def judged(at_once: bool) -> BudgetDecision:
            self.judged.append(env.correlation_id)
            if at_once:
                self.at_once.append(env.correlation_id)
            worst = float(env.body["max_tokens"])
            if worst > self.usd:
                return BudgetDecision(action="refuse", remaining_usd=0.0, retry_after_s=5.0)
            self.usd -= worst
            return BudgetDecision(action="allow", remaining_usd=self.usd)

        return judged


def costing(usd: float, name: str) -> RequestEnvelope:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": usd}
    return request_envelope(body=body, correlation_id=name)


def worst_of(env: RequestEnvelope) -> float:
    return float(env.body["max_tokens"])


async def test_a_line_is_judged_in_order_while_there_is_room_each_verdict_taking_it() -> None:
    """A hold let go: the line is judged in order, first fit, each verdict taking its room
    before the next is judged (two that fit alone but not together: one goes); only
    those that may fit are judged, and only those that go are woken."""
    room = Room(0.0)
    waiting = Waiting(room.fits, worst_of)
    sizes = {"big": 5.0, "a": 1.0, "b": 1.5, "c": 1.0, "d": 3.0}
    with ExitStack() as stack:
        turns = {}
        for name, usd in sizes.items():
            turn = stack.enter_context(waiting.turn("t"))
            env = costing(usd, name)
            turn.ask(env, room.judge(env))
            turns[name] = turn
        assert [t.gone for t in turns.values()] == [False] * 5
        room.judged.clear()
        room.usd = 2.2
        waiting.settled("t")
        gone = [name for name, t in turns.items() if t.gone]
        assert gone == ["a", "c"], "b fits alone, not after a"
        assert room.judged == ["a", "c"], "big, b, d not judged: they cannot fit"
        assert round(room.usd, 6) == 0.2 and waiting.waiting("t") == 3
        woken = {name: await t.wait(0) for name, t in turns.items()}
        assert woken == {"big": False, "a": True, "b": False, "c": True, "d": False}
        waiting.settled("t")  # no room for any: nobody is judged
        assert room.judged == ["a", "c"]


async def test_a_thousand_waiting_that_cannot_fit_cost_one_verdict_a_hold_let_go() -> None:
    """A line that cannot fit is passed over at a glance, and once the smallest worst case
    left does not fit, nobody else is looked at: a tenant with thousands of lines
    waiting pays for no verdict a hold let go but one for each that goes."""
    room = Room(0.0)
    waiting = Waiting(room.fits, worst_of)
    with ExitStack() as stack:
        for n in range(1000):
            env = costing(1.0, f"line-{n}")
            stack.enter_context(waiting.turn("t")).ask(env, room.judge(env))
        room.judged.clear()
        room.usd = 0.5
        waiting.settled("t")
        assert room.judged == []
        room.usd = 2.0
        waiting.settled("t")
        assert room.judged == ["line-0", "line-1"] and waiting.waiting("t") == 998


async def test_a_first_that_leaves_without_going_lets_the_next_be_judged() -> None:
    """The first's batch is cancelled (it leaves the line unjudged): those behind it are
    judged at once, a new first among them."""
    room = Room(0.0)
    waiting = Waiting(room.fits, worst_of)
    with ExitStack() as stack:
        with waiting.turn("t") as first:
            env = costing(1.0, "first")
            first.ask(env, room.judge(env))
            second = stack.enter_context(waiting.turn("t"))
            env = costing(2.0, "second")
            second.ask(env, room.judge(env))
            room.judged.clear()
            room.usd = 1.5  # (not for the first: it is leaving)
            assert first.first and not second.first
        assert room.judged == [] and second.first and not second.gone
        assert await second.wait(0), "woken: first now, it waits its Retry-After from here"


async def test_only_a_request_whose_own_task_looks_may_join_a_call_under_way() -> None:
    """Judged as it asks (whatever its size: it is judged as the budget judges any), or
    as the first whose Retry-After passed, a request goes on at once, so it may join a
    call under way for nothing; judged while it waits, it holds its worst case (that
    call may be over by the time its task runs)."""
    room = Room(0.0)
    waiting = Waiting(room.fits, worst_of)
    with waiting.turn("t") as first, waiting.turn("t") as second:
        env = costing(1.0, "first")
        first.ask(env, room.judge(env))
        env = costing(1.0, "second")
        second.ask(env, room.judge(env))
        assert room.at_once == room.judged == ["first", "second"]
        first.look()
        waiting.settled("t")
        assert room.at_once == room.judged == ["first", "second", "first"]
        room.usd = 2.0
        waiting.settled("t")
        assert first.gone and second.gone and room.judged[3:] == ["first", "second"]
        assert room.at_once == ["first", "second", "first"]


async def test_a_line_let_go_as_the_worker_stops_is_put_back_holding_nothing() -> None:
    """A hold let go lets a waiting line go (its verdict takes its hold at once); the
    worker stops before the line's task runs on: it goes back on the request topic, and
    what it was let go to hold is let go with it, not kept until its window ends."""
    handler, sink, budgets, _, calls, lines = budgeted(1.0)
    blocker = holding_all(budgets)
    waiting = line(0)
    queued = lined_up(budgets, 1)
    task = asyncio.ensure_future(handler.handle(waiting))
    await queued.wait()
    budgets.metered("t", blocker.correlation_id)
    assert budgets.waiting.waiting("t") == 0 and budgets.holds.held("t") > 0.0
    handler.stop_waiting()
    [done] = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(done, asyncio.CancelledError)
    assert lines.put_back == [waiting.correlation_id] and sink.replies == [] and calls == []
    assert budgets.holds.held("t") == 0.0


def refused_knob() -> VendorUnsupported:
    """A vendor batch's line refused for a knob the realtime way strikes: retryable, so
    the lane hands the request back to be sent the realtime way."""
    return VendorUnsupported("reasoning_effort is not supported", param="reasoning_effort")


async def test_lines_a_vendor_batch_failed_sent_on_together_are_all_answered() -> None:
    """Three lines a vendor batch failed (held at its batch price: all three fit) are sent
    the realtime way at once, at the full price, with room for two of them at a time.
    Each holds nothing until it is judged again in its tenant's line, so two go and the
    third once one's line is written; they used to re-hold their full price each and
    wait behind one another's holds, nothing in flight, until their batch's window."""
    handler, sink, budgets, _, calls, _ = budgeted(1.0)
    envs = [line(n) for n in range(3)]
    worst = worst_cost(envs[0], PRICES)
    budgets.policies["t"] = BudgetPolicy(limit_usd=2.5 * worst)
    cand = CONFIG.models["m"].candidates[0]
    for env in envs:  # as the lane held them
        budgets.keep(env, time.time() + VENDOR_WINDOW_S, share=0.5, lasting=True)
    assert budgets.holds.held("t") == pytest.approx(1.5 * worst)
    most = 0.0
    dispatch = handler.dispatcher.run

    async def counted(*args: Any, **kw: Any) -> Any:  # what is held as each call goes out
        nonlocal most
        most = max(most, budgets.holds.held("t"))
        return await dispatch(*args, **kw)

    handler.dispatcher.run = counted  # type: ignore[method-assign]
    for env in envs:
        await handler.deliver_batch(env, cand, refused_knob())
    assert budgets.holds.held("t") == 0.0, "sent on, a line holds nothing till it is judged"
    async with asyncio.timeout(60):  # (a guard: they used to hang till their window ended)
        await asyncio.gather(*handler.spawned)
    assert [sink.for_(e.correlation_id)[-1].kind for e in envs] == ["final"] * 3
    assert len(calls) == 3 and len(sink.ledger) == 3
    assert 0.0 < most <= 2.5 * worst, "never more in flight than the budget holds"
    assert budgets.waiting.waiting("t") == 0 and budgets.holds.held("t") == 0.0


async def test_a_request_with_a_client_sent_on_is_held_as_a_realtime_one_again() -> None:
    """Only a Batch API line sent the realtime way lets go of its hold (it is judged
    again in its line): a background request with a client, whose vendor batch failed
    it too, is held at its full price until its ledger line, as before."""
    handler, sink, budgets, _, calls, _ = budgeted(100.0)
    mine = line(0)
    theirs = envelope(key="background", ttl=None, priority=Priority.background)
    cand = CONFIG.models["m"].candidates[0]
    for env in (mine, theirs):
        budgets.keep(env, time.time() + VENDOR_WINDOW_S, share=0.5, lasting=True)
        await handler.deliver_batch(env, cand, refused_knob())
    assert budgets.holds.held("t") == pytest.approx(worst_cost(theirs, PRICES))
    assert budgets.holds.lasting("t") == 0.0
    await asyncio.gather(*handler.spawned)
    assert [sink.for_(e.correlation_id)[-1].kind for e in (mine, theirs)] == ["final"] * 2
    assert len(calls) == 2 and budgets.holds.held("t") == 0.0


async def test_a_line_handled_again_waits_holding_nothing_and_goes_past_a_big_first() -> None:
    """A line comes back holding its worst case (its verdict took it as it waited, then
    it joined a call whose leader was cut, and is run again; or a vendor batch failed
    it): it takes its place behind a big first line holding nothing, and a hold let go
    that leaves room for it lets it go, past the first.  Its own hold used to count
    against it at the glance (and the walk stop there) and against everyone else."""
    handler, sink, budgets, _, calls, _ = budgeted(1.0)
    base = line(1)
    again = base.model_copy(update={"body": {**base.body, "max_tokens": 40_000}})
    worst = worst_cost(again, PRICES)
    assert 0.3 < worst < 0.6
    blocker = in_flight(budgets, "blocker", 1.0 - 1.5 * worst)  # room for it alone
    other = in_flight(budgets, "other", worst)
    big = big_line(0)
    queued = lined_up(budgets, 1)
    t_big = asyncio.ensure_future(handler.handle(big))
    await queued.wait()
    budgets.keep(again, again.deadline_ms / 1000 + AFTER_DEADLINE_S)  # what it holds
    queued = lined_up(budgets, 1)
    t_again = asyncio.ensure_future(handler.handle(again))
    await queued.wait()
    assert budgets.waiting.waiting("t") == 2 and not t_again.done()
    assert budgets.holds.held("t") == pytest.approx(1.0 - 0.5 * worst), "it holds nothing"
    budgets.metered("t", other.correlation_id)
    async with asyncio.timeout(60):  # (a guard: it used to wait till its window ended)
        await t_again
    assert sink.for_(again.correlation_id)[-1].kind == "final" and len(calls) == 1
    assert not t_big.done() and budgets.waiting.waiting("t") == 1
    budgets.metered("t", blocker.correlation_id)
    await t_big
    assert sink.for_(big.correlation_id)[-1].kind == "final" and len(calls) == 2
    assert budgets.waiting.waiting("t") == 0 and budgets.holds.held("t") == 0.0


def test_the_glance_at_a_waiting_request_leaves_out_its_own_hold_as_its_verdict_does() -> None:
    """``Budgets._may_fit`` passes over only a request its verdict would hold back: what
    the request holds itself is left out of both."""
    spent = {"t": Spend()}
    own, other = line(0), line(1)
    worst = worst_cost(own, PRICES)
    budgets = Budgets({"t": BudgetPolicy(limit_usd=2.5 * worst)}, lambda t: spent[t], PRICES)
    budgets.keep(own, time.time() + 3600)
    budgets.keep(other, time.time() + 3600)
    assert budgets._may_fit("t", worst, own.correlation_id)
    verdict = budgets(own)
    assert verdict is not None and verdict.action == "allow"
    budgets.keep(request_envelope(correlation_id="third"), time.time() + 3600)
    assert not budgets._may_fit("t", worst, own.correlation_id)
    verdict = budgets(own)
    assert verdict is not None and verdict.reason == "budget_in_flight"
