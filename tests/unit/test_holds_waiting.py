"""Batch API lines held back by what their tenant has in flight wait their turn and are
judged again, rather than end with the 429 a client would come back after: nobody comes
back for a Batch API line.  Only a spent budget (402, the throttle's 429), a cancelled
batch or the batch's window ends one unanswered; a stopping worker puts them back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agents.handler import BatchLines, RequestHandler
from schemas.envelope import Priority, RequestEnvelope, UsageEvent
from tables.budgets import BudgetPolicy, Spend, add_spend
from tables.holds import Budgets, Waiting, worst_cost
from tests.support.envelopes import request_envelope
from tests.support.sinks import Sink
from tests.unit.test_handler import envelope, make, vendor
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


async def test_a_hold_let_go_wakes_the_first_in_line_only() -> None:
    """One hold let go wakes one waiting request (the first), not every one: a tenant
    with thousands of lines waiting pays for one verdict a hold, not thousands.  The
    next is woken when the first leaves the line."""
    waiting = Waiting()
    entered, woke, leave = ([asyncio.Event() for _ in range(3)] for _ in range(3))

    async def wait(n: int) -> None:
        with waiting.turn("t") as turn:
            entered[n].set()
            await turn.wait(3600)
            woke[n].set()
            await leave[n].wait()

    tasks = [asyncio.ensure_future(wait(n)) for n in range(3)]
    await asyncio.gather(*(e.wait() for e in entered))
    waiting.settled("t")
    await woke[0].wait()
    for _ in range(10):  # the loop runs on: nothing else wakes the others
        await asyncio.sleep(0)
    assert not woke[1].is_set() and not woke[2].is_set()
    leave[0].set()
    await woke[1].wait()
    assert not woke[2].is_set() and waiting.waiting("t") == 2
    for event in leave:
        event.set()
    waiting.settled("t")
    await asyncio.gather(*tasks)
    assert waiting.waiting("t") == 0
