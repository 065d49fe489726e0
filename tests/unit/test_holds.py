"""Budgets see spend let go ahead and not counted yet: requests arriving together do
not all pass a budget with room for one, and what a request held is let go when its
line is written (the spend table counts it from then), or after its deadline.  What is
held caps admission only (a 429 for seconds): it is never money spent."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agents.batch_lane import VENDOR_WINDOW_S
from schemas.config import BatchLane as LaneRule
from schemas.envelope import Priority, UsageEvent
from schemas.usage import Usage
from tables.budgets import IN_FLIGHT_RETRY_S, BudgetPolicy, Spend, add_spend
from tables.holds import AFTER_DEADLINE_S, MAX_HELD_COMPLETION, Budgets, Holds, worst_cost
from tables.prices import PriceSheet
from tests.support.clock import Clock
from tests.support.envelopes import request_envelope
from tests.unit.test_handler import CONFIG, SlowBatches, envelope, lane_handler, make, vendor

# Alias m: $1 in, $2 out per 1M first, its fallback $5 in, $10 out: holds are at the latter.
PRICES = PriceSheet.from_config(CONFIG.models)


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


def test_settled_holds_do_not_stay_in_memory_until_their_expiry() -> None:
    """Requests sent in vendor batches hold for a day; once answered, their holds go,
    not a day later (a busy lane would keep a day of answered requests)."""
    from tables.holds import SETTLED_KEPT

    clock = Clock(EPOCH)
    holds = Holds(clock)
    for n in range(5 * SETTLED_KEPT):
        holds.take("t", f"req-{n}", 0.001, until=clock.now + 86_400)
        if n % 10:
            holds.settle("t", f"req-{n}")
    live = len(range(0, 5 * SETTLED_KEPT, 10))
    assert len(holds._expiring) <= 2 * live + SETTLED_KEPT + 1
    assert holds.held("t") == pytest.approx(live * 0.001)
    clock.now += 86_401
    assert holds.held("t") == 0.0 and not holds._expiring


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
    assert worst_cost(capped, PRICES) == pytest.approx((1000 * 5 + 1000 * 10) / 1e6, rel=0.05)
    embed = request_envelope(endpoint="embeddings", body={"model": "m", "input": "x" * 4000})
    assert worst_cost(embed, PRICES) == pytest.approx(1000 * 5 / 1e6, rel=0.05)
    assert worst_cost(request_envelope(alias="nope", body=long), PRICES) == 0.0
    # Without max_tokens: what the relay asks an Anthropic vendor for then.
    from schemas.formats.anthropic import DEFAULT_MAX_TOKENS

    assert DEFAULT_MAX_TOKENS == 4096
    asked = (1000 * 5 + DEFAULT_MAX_TOKENS * 10) / 1e6
    assert worst_cost(uncapped, PRICES) == pytest.approx(asked, rel=0.05)
    for nonsense in (0, -5, True, "lots", float("nan"), float("inf"), None):
        odd = request_envelope(body={**long, "max_tokens": nonsense, "n": nonsense})
        assert worst_cost(odd, PRICES) == pytest.approx(asked, rel=0.05), nonsense


def test_the_worst_case_is_at_the_dearest_candidate_its_alias_may_route_to() -> None:
    """An unpriced local primary and a priced fallback (and a dearer canary): held at the
    first-listed prices, each request held nothing, and a burst went ahead whole against
    a budget its fallback could spend many times over."""
    from schemas.config import RelayConfig

    config = RelayConfig.model_validate(
        {
            "vendors": {
                "local": {"kind": "ollama", "base_url": "http://o:11434"},
                "oai": {"kind": "openai", "base_url": "http://a/v1"},
            },
            "models": {
                "m": {
                    "candidates": [
                        {"vendor": "local", "model": "llama"},
                        {"vendor": "oai", "model": "gpt-4o", "input_per_1m": 2.5, "output_per_1m": 10},
                    ]
                },
                "canaried": {
                    "candidates": [{"vendor": "local", "model": "llama"}],
                    "canary": {
                        "candidate": {"vendor": "oai", "model": "o3", "input_per_1m": 5, "output_per_1m": 20},
                        "percent": 5,
                    },
                },
            },
            "tenants": {"t": {}},
        }
    )  # fmt: skip
    prices = PriceSheet.from_config(config.models)
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 4000}], "max_tokens": 1000}
    worst = worst_cost(request_envelope(body=body), prices)
    assert worst == pytest.approx((1000 * 2.5 + 1000 * 10) / 1e6, rel=0.05)
    canaried = request_envelope(alias="canaried", body={**body, "model": "canaried"})
    assert worst_cost(canaried, prices) == pytest.approx((1000 * 5 + 1000 * 20) / 1e6, rel=0.05)
    budgets = Budgets({"t": BudgetPolicy(limit_usd=4.5 * worst)}, lambda t: Spend(), prices)
    verdicts = [budgets(request_envelope(body=body, correlation_id=f"r{n}")) for n in range(50)]
    assert [v.action for v in verdicts if v].count("allow") == 4, "four worst cases fit"


def test_the_worst_case_counts_every_answer_asked_for() -> None:
    """``n`` answers (or legacy completions' ``best_of``, all written and billed) may
    each run to max_tokens; both bounded, as the completion is."""
    long = {"model": "m", "messages": [{"role": "user", "content": "x" * 4000}]}
    eight = request_envelope(body={**long, "max_tokens": 1000, "n": 8})
    assert worst_cost(eight, PRICES) == pytest.approx((1000 * 5 + 8 * 1000 * 10) / 1e6, rel=0.05)
    legacy = {"model": "m", "prompt": "x" * 4000, "max_tokens": 1000, "n": 2, "best_of": 5}
    best_of = request_envelope(endpoint="completions", body=legacy)
    assert worst_cost(best_of, PRICES) == pytest.approx((1000 * 5 + 5 * 1000 * 10) / 1e6, rel=0.05)
    absurd = request_envelope(body={**long, "max_tokens": 10**12, "n": 10**6})
    most = 128 * MAX_HELD_COMPLETION * 10 / 1e6
    assert worst_cost(absurd, PRICES) == pytest.approx(most, rel=0.01)


def test_what_is_held_caps_admission_for_seconds_and_never_counts_as_spent() -> None:
    """Each request holds 1.0 against $2.5 with nothing spent: two go ahead (with the
    third's worst case, what is in flight could pass the limit), the others are held
    back with a 429 of seconds, not refused as spent nor degraded; once the first two
    have their lines, there is room again."""
    clock = Clock(EPOCH)
    spent = Spend()
    budgets = Budgets({"t": BudgetPolicy(limit_usd=2.5)}, lambda t: spent, PRICES, clock)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100_000}
    # Each holds 1.0 (100k completion tokens at $10 per 1M) until its line is written.
    until = int((clock.now + 60) * 1000)
    verdicts = []
    for n in range(4):
        env = request_envelope(
            tenant="t", body=body, deadline_ms=until, trace_id="shared", correlation_id=f"r{n}"
        )
        verdict = budgets(env)
        assert verdict is not None
        verdicts.append((verdict.action, verdict.reason, verdict.retry_after_s))
    held_back = ("refuse", "budget_in_flight", IN_FLIGHT_RETRY_S)
    assert verdicts == [("allow", None, None)] * 2 + [held_back] * 2
    assert IN_FLIGHT_RETRY_S <= 10, "a few seconds, not the period"
    assert budgets.holds.held("t") == pytest.approx(2.0, rel=1e-3), (
        "a request held back holds nothing"
    )
    budgets.metered("t", "r0")  # answered: the spend table has its cost
    budgets.metered("t", "r1")
    env = request_envelope(
        tenant="t", body=body, deadline_ms=until, trace_id="shared", correlation_id="r4"
    )
    verdict = budgets(env)
    assert verdict is not None and verdict.action == "allow"
    assert budgets(request_envelope(tenant="other", body=body)) is None, "no budget, no hold"
    assert AFTER_DEADLINE_S > 0


def test_refusals_and_degradation_go_by_the_spend_counted_alone() -> None:
    """A throttled monthly $10 budget, nothing spent, each request holding about $0.96
    (64k completion tokens at $15 per 1M): the one that would pass the limit is told to
    wait seconds, not until the month's end, nor degraded on the way there."""
    from schemas.config import RelayConfig

    config = RelayConfig.model_validate(
        {
            "vendors": {"a": {"kind": "anthropic", "base_url": "http://a"}},
            "models": {
                "sonnet": {
                    "candidates": [
                        {"vendor": "a", "model": "s", "input_per_1m": 3, "output_per_1m": 15}
                    ]
                }
            },
            "tenants": {"t": {}},
        }
    )
    spent = Spend()
    policy = BudgetPolicy(limit_usd=10.0, degrade_at=0.5, on_exhausted="throttle")
    budgets = Budgets({"t": policy}, lambda t: spent, PriceSheet.from_config(config.models))
    body = {"model": "sonnet", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64000}
    verdicts = [
        budgets(request_envelope(tenant="t", alias="sonnet", body=body, correlation_id=f"r{n}"))
        for n in range(12)
    ]
    assert [v.action for v in verdicts if v] == ["allow"] * 10 + ["refuse"] * 2
    for refused in verdicts[10:]:
        assert refused is not None and not refused.throttle and refused.resets_at is None
        assert refused.retry_after_s == IN_FLIGHT_RETRY_S
    spent = Spend(period_start=EPOCH, spent_usd=10.0)  # now it is spent: until the reset
    budgets.clock = lambda: EPOCH + 60
    verdict = budgets(request_envelope(tenant="t", alias="sonnet", body=body))
    assert verdict is not None and verdict.throttle and verdict.resets_at is not None
    assert verdict.retry_after_s is None


def test_a_request_alone_goes_ahead_whatever_its_worst_case() -> None:
    """Nothing else in flight: a request whose worst case passes what is left goes
    (it passes the limit by itself at most), or the tenant would be refused for good
    with money left; one with an absurd max_tokens holds what a real answer may cost."""
    spent = Spend()
    budgets = Budgets({"t": BudgetPolicy(limit_usd=0.01)}, lambda t: spent, PRICES)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9 * 10**18}
    verdict = budgets(request_envelope(tenant="t", body=body, correlation_id="huge"))
    assert verdict is not None and verdict.action == "allow"
    # 128k completion tokens at $10 per 1M, and a word of prompt
    assert budgets.holds.held("t") == pytest.approx(MAX_HELD_COMPLETION * 10 / 1e6, rel=0.01)


def test_a_request_joining_a_call_under_way_holds_nothing_and_is_not_held_back() -> None:
    """Its line costs nothing (the leader holds for the call); the spend counted still
    refuses it once the budget is spent."""
    spent = Spend()
    budgets = Budgets(
        {"t": BudgetPolicy(limit_usd=1.0, degrade_at=0.5)}, lambda t: spent, PRICES, time.time
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400_000}
    assert budgets(request_envelope(tenant="t", body=body, correlation_id="leader"))
    asked: list[str | None] = []

    def joins(degraded: str | None) -> bool:
        asked.append(degraded)
        return True

    for n in range(5):
        verdict = budgets(request_envelope(tenant="t", body=body, correlation_id=f"f{n}"), joins)
        assert verdict is not None and verdict.action == "allow"
    assert budgets.holds.held("t") == pytest.approx(1.28, rel=1e-3), "the leader's hold alone"
    assert asked == [None] * 5
    spent = Spend(period_start=time.time(), spent_usd=0.6)  # past degrade_at
    verdict = budgets(request_envelope(tenant="t", body=body), joins)
    assert verdict is not None and verdict.action == "degrade"
    assert asked[-1] == "budget_50pct", "asked whether it joins as the degraded request it is"
    spent = Spend(period_start=time.time(), spent_usd=1.0)
    verdict = budgets(request_envelope(tenant="t", body=body), joins)
    assert verdict is not None and verdict.reason == "budget_exhausted"


def test_a_request_handled_again_is_not_held_back_by_its_own_hold() -> None:
    spent = Spend()
    budgets = Budgets({"t": BudgetPolicy(limit_usd=1.5)}, lambda t: spent, PRICES)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100_000}
    env = request_envelope(tenant="t", body=body, correlation_id="again")
    first, second = budgets(env), budgets(env)
    assert first is not None and second is not None
    assert (first.action, second.action) == ("allow", "allow")
    assert budgets.holds.held("t") == pytest.approx(1.0, rel=1e-3)


async def test_requests_arriving_together_do_not_all_pass_a_budget_with_room_for_a_few() -> None:
    """50 distinct requests at once against a budget worth 2.5 worst cases, with a
    spend table that counts each line the instant it is written: two go ahead (a third
    would let what is in flight pass the limit), and the others are told to try again
    in a few seconds (429, not 402: nothing is spent yet)."""
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
    assert len(calls) == 2 and sum(f.kind == "final" for f in finals) == 2
    refused = [f for f in finals if f.kind == "error"]
    assert len(refused) == 48 and all(f.error["code"] == "rate_limited" for f in refused)
    for f in refused:
        assert f.error["retry_after"] == IN_FLIGHT_RETRY_S
        assert "in flight" in f.error["message"] and "spent" not in f.error["message"]
    assert spent["t"].spent_usd < 2.5 * worst


async def test_identical_requests_arriving_together_share_one_call_none_refused() -> None:
    """20 identical requests at once against a budget worth 2.5 worst cases, degrading
    at half of it: one vendor call, every one answered (the followers cost nothing and
    hold nothing), and none degraded (a degraded one flies apart, a second call)."""
    calls: list[str] = []
    spent = {"t": Spend()}
    worst = worst_cost(envelope(key="same"), PRICES)
    budgets = Budgets(
        {"t": BudgetPolicy(limit_usd=2.5 * worst, degrade_at=0.5)},
        lambda tenant: spent[tenant],
        PRICES,
    )
    handler, sink = make(vendor(calls, delay=0.05), budget=budgets)
    written = sink.usage

    async def usage(event: UsageEvent) -> None:
        await written(event)
        budgets.metered(event.tenant, event.correlation_id)
        spent[event.tenant] = add_spend(spent[event.tenant], event.cost, time.time(), "month")

    sink.usage = usage  # type: ignore[method-assign]
    envs = [envelope(key="same", ttl=None) for _ in range(20)]
    await asyncio.gather(*(handler.handle(e) for e in envs))
    finals: list[Any] = [sink.for_(e.correlation_id)[-1] for e in envs]
    assert len(calls) == 1
    assert all(f.kind == "final" and not f.degraded for f in finals)
    assert sum(bool(f.coalesced) for f in finals) == 19
    assert budgets.holds.held("t") == 0.0


class Lane:
    """A vendor-batch lane that takes every background request and sends none."""

    def __init__(self) -> None:
        self.taken: list[Any] = []
        self.rule = LaneRule()

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


class Later:
    """The budgets' clock, ``ahead`` seconds past the real one (the handler's)."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


def metered_by(budgets: Budgets, sink: Any) -> None:
    """The worker's sink tells the budgets of each line it writes."""
    written = sink.usage

    async def usage(event: UsageEvent) -> None:
        await written(event)
        budgets.metered(event.tenant, event.correlation_id)

    sink.usage = usage


async def test_a_request_in_a_vendor_batch_stays_held_past_its_deadline_until_its_line() -> None:
    """Background requests go out in a vendor batch and get their 504 (unmetered) at
    their deadline; a minute later the vendor batch still runs, and will bill them: they
    still hold, so the tenant's next requests are held back, until the batch's answers
    are metered.  Nothing is held past the vendor's window."""
    batches = SlowBatches()
    handler, sink = lane_handler(batches, max_age_s=0)
    worst = worst_cost(envelope(key="probe"), PRICES)
    later = Later()
    budgets = Budgets(
        {"t": BudgetPolicy(limit_usd=2.5 * worst, degrade_at=1.0)}, lambda t: Spend(), PRICES, later
    )
    handler.budget = budgets
    metered_by(budgets, sink)
    soon = int((time.time() + 0.05) * 1000)
    envs = [
        envelope(
            key=f"lane-{n}",
            priority=Priority.background,
            gateway_meters_timeout=True,
            deadline_ms=soon,
            ttl=None,
        )
        for n in range(2)
    ]
    for env in envs:
        await handler.handle(env)
    await asyncio.sleep(0.15)  # past the deadlines: each answered 504, no line
    assert [sink.for_(e.correlation_id)[-1].error["code"] for e in envs] == [
        "deadline_exceeded"
    ] * 2
    assert sink.ledger == []
    later.ahead = AFTER_DEADLINE_S + 5  # a hold for a realtime request would be gone
    assert budgets.holds.held("t") == pytest.approx(2 * worst)
    verdict = budgets(envelope(key="next", ttl=None))
    assert verdict is not None and verdict.reason == "budget_in_flight"
    # Bounded all the same: none is held past the lane's wait and the vendor's window.
    bound = time.time() + LaneRule(max_age_s=5).max_age_s + VENDOR_WINDOW_S
    assert all(until <= bound for until, _, hold in budgets.holds._expiring if hold.live)
    batches.done.set()
    for task in list(handler.lane._tasks):  # type: ignore[union-attr]
        await task
    assert len(sink.ledger) == 2 and budgets.holds.held("t") == 0.0
    verdict = budgets(envelope(key="next", ttl=None))
    assert verdict is not None and verdict.action == "allow"


async def test_an_adopted_vendor_batch_s_requests_hold_again_on_the_adopting_worker() -> None:
    """The worker that sent a vendor batch died with its holds; the adopter holds each
    unanswered request again until its answer is metered, at the batch price (as the
    sending worker did), as requests in a vendor batch."""
    from agents.adapters.base import VendorResult

    budgets = Budgets({"t": BudgetPolicy(limit_usd=1.0)}, lambda t: Spend(), PRICES)
    handler, sink = make(vendor([]), budget=budgets, discounts={"a": 0.5})
    metered_by(budgets, sink)
    day = int((time.time() + 86_400) * 1000)
    envs = [envelope(key=f"adopted-{n}", ttl=None, deadline_ms=day) for n in range(3)]
    cand = CONFIG.models["m"].candidates[0]
    handler.adopted(envs, cand)
    worst = worst_cost(envs[0], PRICES)
    assert budgets.holds.held("t") == pytest.approx(3 * 0.5 * worst, rel=0.01)
    assert budgets.holds.lasting("t") == pytest.approx(3 * 0.5 * worst, rel=0.01)
    handler.adopted(envs[:1], cand)  # adopted again (this worker stalled): held once
    assert budgets.holds.held("t") == pytest.approx(3 * 0.5 * worst, rel=0.01)
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
    for env in envs:
        result = VendorResult(body=answer, usage=Usage(input_tokens=7, output_tokens=1))
        await handler.deliver_batch(env, cand, result)
    assert len(sink.ledger) == 3 and budgets.holds.held("t") == 0.0


async def test_a_lane_request_sent_on_the_realtime_way_is_held_as_one_again() -> None:
    """Its vendor batch failed after its gateway gave up on it: sent on, it expires at
    once (no line of the worker's: its gateway wrote one), and lets go of its hold after
    its deadline, as a realtime request does, not at the end of the lane's window."""
    from schemas.envelope import REPLY_GRACE_S
    from schemas.errors import VendorUnavailable

    later = Later()
    budgets = Budgets({"t": BudgetPolicy(limit_usd=1.0)}, lambda t: Spend(), PRICES, later)
    handler, sink = make(vendor([]), budget=budgets)
    metered_by(budgets, sink)
    gone = int((time.time() - REPLY_GRACE_S - 1) * 1000)
    env = envelope(key="sent-on", ttl=None, gateway_meters_timeout=True, deadline_ms=gone)
    budgets.keep(env, time.time() + VENDOR_WINDOW_S)  # as the lane kept it
    cand = CONFIG.models["m"].candidates[0]
    await handler.deliver_batch(env, cand, VendorUnavailable("the vendor's batch failed"))
    await asyncio.gather(*handler.spawned)
    assert sink.ledger == []
    later.ahead = AFTER_DEADLINE_S
    assert budgets.holds.held("t") == 0.0


async def test_a_request_another_worker_answers_lets_go_of_its_hold_here() -> None:
    """The batch lane hands back what another worker's vendor batch carries (or a batch
    another worker took over): the handler drops their holds, which are that worker's."""
    budgets = Budgets({"t": BudgetPolicy(limit_usd=100.0)}, lambda tenant: Spend(), PRICES)
    handler, _ = make(vendor([]), budget=budgets)
    env = envelope(key="elsewhere")
    budgets.keep(env, time.time() + VENDOR_WINDOW_S)
    assert budgets.holds.held("t") > 0
    handler._arm(env)  # as _deferred does for a request a gateway waits on
    handler.dropped([env])
    assert budgets.holds.held("t") == 0.0
    assert env.correlation_id not in handler._lane_deadlines, "its 504 is the other's"


async def test_background_work_goes_to_vendor_batches_only_while_the_breaker_is_closed() -> None:
    """A vendor batch reports no outcome: it can neither be a half-open breaker's probe
    nor go to a vendor no probe has said is back.  Past the open period the request
    goes the realtime way (whose call may be the probe, and says how the vendor is)."""
    from tables.health import Health

    table: dict[str, Any] = {}
    handler, _ = make(vendor([]))
    handler.router.view = table.get
    handler.lane = lane = Lane()  # type: ignore[assignment]
    cand = handler.router.plan("m", time.time())[0]
    key = f"{cand.vendor}/{cand.model}"
    table[key] = Health(state="open", opened_at=time.time() - 3600).model_dump()
    await handler.handle(envelope(key="bg-half-open", priority=Priority.background))
    assert lane.taken == []
    table[key] = Health().model_dump()
    await handler.handle(envelope(key="bg-closed", priority=Priority.background))
    assert len(lane.taken) == 1


def test_requests_in_vendor_batches_hold_their_batch_price_and_a_wait_for_them_is_long() -> None:
    """A request sent in a vendor batch holds its worst case at the batch discount; a
    request held back because such holds (metered when their batch ends, hours maybe)
    would pass the budget is told to wait a minute, not to retry every 5 s."""
    from tables.budgets import IN_FLIGHT_RETRY_S, LASTING_RETRY_S

    clock = Clock(time.time())  # (a realtime hold lasts till its deadline, on the wall clock)
    env = envelope(key="in-a-batch")
    worst = worst_cost(env, PRICES)
    budgets = Budgets(
        {"t": BudgetPolicy(limit_usd=1.2 * worst)}, lambda tenant: Spend(), PRICES, clock=clock
    )
    budgets.keep(env, clock() + VENDOR_WINDOW_S, share=0.5, lasting=True)
    assert budgets.holds.held("t") == pytest.approx(0.5 * worst)
    assert budgets.holds.lasting("t") == pytest.approx(0.5 * worst)
    late = budgets(envelope(key="realtime"))
    assert late is not None and late.retry_after_s == LASTING_RETRY_S
    budgets.metered("t", env.correlation_id)  # its batch ended: it goes
    quick = envelope(key="quick")
    assert budgets(quick) is not None and budgets.holds.lasting("t") == 0.0
    again = budgets(envelope(key="behind-it"))  # held back by a realtime hold alone
    assert again is not None and again.retry_after_s == IN_FLIGHT_RETRY_S


def test_a_long_realtime_request_is_not_taken_for_one_in_a_vendor_batch() -> None:
    """A hold is in a vendor batch when its caller says so, not by how long it may last:
    a realtime request with a 10-minute deadline (its line comes when its call ends)
    holds back the next one for the usual few seconds, not a minute."""
    clock = Clock(time.time())
    long = envelope(key="long", deadline_ms=int((clock() + 600) * 1000))
    worst = worst_cost(long, PRICES)
    budgets = Budgets(
        {"t": BudgetPolicy(limit_usd=1.5 * worst)}, lambda tenant: Spend(), PRICES, clock=clock
    )
    first = budgets(long)
    assert first is not None and first.action == "allow"
    assert budgets.holds.lasting("t") == 0.0
    held_back = budgets(envelope(key="next"))
    assert held_back is not None and held_back.reason == "budget_in_flight"
    assert held_back.retry_after_s == IN_FLIGHT_RETRY_S


async def test_a_request_sent_in_a_vendor_batch_holds_as_one() -> None:
    """The lane's requests are held as requests in vendor batches (a long wait for those
    held back by them), at the batch price."""
    from tables.budgets import LASTING_RETRY_S

    budgets = Budgets({"t": BudgetPolicy(limit_usd=1.0)}, lambda t: Spend(), PRICES)
    handler, _ = make(vendor([]), budget=budgets, discounts={"a": 0.5})
    handler.lane = lane = Lane()  # type: ignore[assignment]
    env = envelope(key="to-the-lane", ttl=None, priority=Priority.background)
    await handler.handle(env)
    assert len(lane.taken) == 1
    worst = worst_cost(env, PRICES)
    assert budgets.holds.lasting("t") == pytest.approx(0.5 * worst)
    assert budgets.holds.held("t") == pytest.approx(0.5 * worst)
    budgets.policies["t"] = BudgetPolicy(limit_usd=worst)  # no room left beside it
    verdict = budgets(envelope(key="behind-it"))
    assert verdict is not None and verdict.retry_after_s == LASTING_RETRY_S
