"""Budgets see spend let go ahead and not counted yet: requests arriving together do
not all pass a budget with room for one, and what a request held is let go when its
line is written (the spend table counts it from then), or after its deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from schemas.envelope import UsageEvent
from tables.budgets import BudgetPolicy, Spend, add_spend
from tables.holds import AFTER_DEADLINE_S, Budgets, Holds, worst_cost
from tables.prices import PriceSheet
from tests.support.clock import Clock
from tests.support.envelopes import request_envelope
from tests.unit.test_handler import CONFIG, envelope, make, vendor

PRICES = PriceSheet.from_config(CONFIG.models)  # alias m: $1 in, $2 out per 1M (primary)


EPOCH = 1_000_000.0  # where the tests' clocks start


def test_a_hold_lasts_until_the_request_s_line_is_written() -> None:
    clock = Clock(EPOCH)
    holds = Holds(clock)
    holds.take("t", "trace-1", 0.5, until=clock.now + 100)
    holds.take("u", "trace-2", 0.25, until=clock.now + 100)
    assert (holds.held("t"), holds.held("u")) == (0.5, 0.25)
    holds.settle("t", "trace-1")  # the spend table counts it from here
    assert holds.held("t") == 0.0 and holds.held("u") == 0.25


def test_a_hold_whose_line_never_comes_here_ends_after_its_deadline() -> None:
    """Its gateway wrote the line (the deadline passed): the hold lasts until then."""
    clock = Clock(EPOCH)
    holds = Holds(clock)
    holds.take("t", "trace", 0.5, until=clock.now + 10)
    clock.now += 9
    assert holds.held("t") == 0.5
    clock.now += 2
    assert holds.held("t") == 0.0
    holds.settle("t", "trace")  # a line after all: nothing held for it any more
    assert holds.held("t") == 0.0


def test_a_request_handled_again_holds_once() -> None:
    """A vendor batch that failed sends its lines the realtime way, through the budget
    again: the request's second hold replaces its first, and its one line lets go."""
    clock = Clock(EPOCH)
    holds = Holds(clock)
    holds.take("t", "req-1", 0.1, until=clock.now + 86_400)
    holds.take("t", "req-1", 0.1, until=clock.now + 100)
    assert holds.held("t") == pytest.approx(0.1)
    holds.settle("t", "req-1")
    holds.settle("t", "req-1")  # one line too many (a duplicate): holds nothing
    assert holds.held("t") == 0.0
    clock.now += 86_401  # the replaced hold's expiry passes without touching anything
    holds.take("t", "req-2", 0.3, until=clock.now + 100)
    assert holds.held("t") == pytest.approx(0.3)


def test_a_line_settles_only_its_own_request_s_hold() -> None:
    """Lines of other requests (a refusal, a count of tokens, no correlation id at all)
    never let go of an admitted request's hold, whatever trace id they share."""
    holds = Holds(Clock(EPOCH))
    holds.take("t", "req-1", 0.1, until=holds.clock() + 100)
    holds.settle("t", "req-2")
    holds.settle("t", None)
    holds.settle("u", "req-1")
    assert holds.held("t") == pytest.approx(0.1)


def test_a_line_without_a_hold_holds_nothing() -> None:
    """A tenant without budget, or a request taken before a restart."""
    holds = Holds(Clock(EPOCH))
    holds.settle("t", "trace")
    assert holds.held("t") == 0.0


def test_the_worst_case_is_the_prompt_and_the_completion_it_allows() -> None:
    long = {"model": "m", "messages": [{"role": "user", "content": "x" * 4000}]}
    capped = request_envelope(body={**long, "max_tokens": 1000})
    uncapped = request_envelope(body=long)
    assert worst_cost(capped, PRICES) == pytest.approx((1000 * 1 + 1000 * 2) / 1e6, rel=0.05)
    assert worst_cost(uncapped, PRICES) < worst_cost(capped, PRICES), "256 without max_tokens"
    embed = request_envelope(endpoint="embeddings", body={"model": "m", "input": "x" * 4000})
    assert worst_cost(embed, PRICES) == pytest.approx(1000 / 1e6, rel=0.05)
    assert worst_cost(request_envelope(alias="nope", body=long), PRICES) == 0.0


def test_budgets_count_what_is_held_toward_the_threshold_and_the_limit() -> None:
    clock = Clock(EPOCH)
    spent = Spend()
    budgets = Budgets({"t": BudgetPolicy(limit_usd=1.0)}, lambda t: spent, PRICES, clock)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200_000}
    # Each holds 0.4 (200k completion tokens at $2 per 1M) until its line is written.
    until = int((clock.now + 60) * 1000)
    verdicts = []
    for n in range(4):
        env = request_envelope(
            tenant="t", body=body, deadline_ms=until, trace_id="shared", correlation_id=f"r{n}"
        )
        verdict = budgets(env)
        assert verdict is not None
        verdicts.append(verdict.action)
    assert verdicts == ["allow", "allow", "degrade", "refuse"]
    budgets.metered("t", "r0")  # answered: the spend table has its cost
    budgets.metered("t", "r1")
    env = request_envelope(
        tenant="t", body=body, deadline_ms=until, trace_id="shared", correlation_id="r4"
    )
    verdict = budgets(env)
    assert verdict is not None and verdict.action == "allow"
    assert budgets(request_envelope(tenant="other", body=body)) is None, "no budget, no hold"
    assert AFTER_DEADLINE_S > 0


async def test_requests_arriving_together_do_not_all_pass_a_budget_with_room_for_a_few() -> None:
    """50 distinct requests at once against a budget worth 2.5 worst cases, with a
    spend table that counts each line the instant it is written: three go ahead while
    less than the limit is spent or held (the vendor is called three times, not fifty),
    and the others are refused with 402."""
    calls: list[str] = []
    spent = {"t": Spend()}
    probe = envelope(key="probe")
    worst = worst_cost(probe, PRICES)
    budgets = Budgets(
        {"t": BudgetPolicy(limit_usd=2.5 * worst, degrade_at=1.0)},
        lambda tenant: spent[tenant],
        PRICES,
    )
    handler, sink = make(vendor(calls, delay=0.05), budget=budgets)
    written = sink.usage

    async def usage(event: UsageEvent) -> None:  # the worker's sink, and the spend agent
        await written(event)
        budgets.metered(event.tenant, event.correlation_id)
        spent[event.tenant] = add_spend(spent[event.tenant], event.cost, time.time(), "month")

    sink.usage = usage  # type: ignore[method-assign]
    envs = [envelope(key=f"k{n}", ttl=None) for n in range(50)]
    await asyncio.gather(*(handler.handle(e) for e in envs))
    finals: list[Any] = [sink.for_(e.correlation_id)[-1] for e in envs]
    assert len(calls) == 3 and sum(f.kind == "final" for f in finals) == 3
    refused = [f for f in finals if f.kind == "error"]
    assert len(refused) == 47 and all(f.error["code"] == "budget_exceeded" for f in refused)


class Lane:
    """A vendor-batch lane that takes every background request and sends none."""

    def __init__(self) -> None:
        self.taken: list[Any] = []

    def accepts(self, cand: Any) -> bool:
        return True

    def submit(self, env: Any, cand: Any) -> None:
        self.taken.append((env, cand))

    def withdraw(self, correlation_id: str) -> bool:
        return False


async def test_a_vendor_batch_that_failed_leaves_no_hold_behind() -> None:
    """Background requests wait for a vendor batch, which fails as a whole: each is sent
    the realtime way (the budget asked again) and answered with one ledger line, after
    which the tenant holds nothing (a second hold used to stay for the batch's 24 h)."""
    from schemas.envelope import Priority
    from schemas.errors import VendorUnavailable

    budgets = Budgets({"t": BudgetPolicy(limit_usd=1.0)}, lambda t: Spend(), PRICES)
    handler, sink = make(vendor([]), budget=budgets)
    written = sink.usage

    async def usage(event: UsageEvent) -> None:
        await written(event)
        budgets.metered(event.tenant, event.correlation_id)

    sink.usage = usage  # type: ignore[method-assign]
    lane = Lane()
    handler.lane = lane  # type: ignore[assignment]
    day = int((time.time() + 86_400) * 1000)
    for n in range(5):
        env = envelope(key=f"b{n}", ttl=None, priority=Priority.background, deadline_ms=day)
        await handler.handle(env)
    assert len(lane.taken) == 5 and budgets.holds.held("t") > 0
    for env, cand in lane.taken:
        await handler.deliver_batch(env, cand, VendorUnavailable("the vendor's batch failed"))
    await asyncio.gather(*handler.spawned)  # each sent on the realtime way, on its own task
    finals = [sink.for_(env.correlation_id)[-1] for env, _ in lane.taken]
    assert all(f.kind == "final" for f in finals)
    assert budgets.holds.held("t") == 0.0
