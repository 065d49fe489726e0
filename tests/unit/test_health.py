"""Breaker transitions, 429 handling, the outcome window and candidate ranking."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from schemas.config import Candidate
from schemas.envelope import HealthEvent
from schemas.errors import (
    ContentFiltered,
    VendorBadRequest,
    VendorRateLimited,
    VendorUnavailable,
    VendorUnsupported,
)
from tables.health import (
    BreakerPolicy,
    Health,
    OutcomeBucket,
    available,
    available_at,
    fold,
    health_key,
    rank,
    record,
    score,
    stale_latency,
    success_rate,
)

POLICY = BreakerPolicy()
T0 = 1_700_000_000.0


def ok(latency_ms: float = 100.0, cost: float = 0.001) -> HealthEvent:
    return HealthEvent(vendor="v", model="m", ok=True, latency_ms=latency_ms, cost=cost)


def fail(code: str = VendorUnavailable.code, retry_after: float | None = None) -> HealthEvent:
    return HealthEvent(
        vendor="v", model="m", ok=False, latency_ms=5.0, error_code=code, retry_after=retry_after
    )


def throttled(retry_after: float | None = None) -> HealthEvent:
    return fail(VendorRateLimited.code, retry_after)


def feed(h: Health, events: list[HealthEvent], now: float, step: float = 0.1) -> Health:
    for i, ev in enumerate(events):
        h = record(h, ev, POLICY, now + i * step)
    return h


def test_health_key() -> None:
    assert health_key("openai", "gpt-4o") == "openai/gpt-4o"


def test_state_round_trips_through_json() -> None:
    h = feed(Health(), [ok(), fail(), ok(), throttled(2.0)], T0)
    h = feed(h, [fail()] * 5, T0 + 1)
    assert h.state == "open"
    again = Health.model_validate(h.model_dump(mode="json"))
    assert again == h


def test_record_returns_a_new_state() -> None:
    h = Health()
    after = record(h, fail(), POLICY, T0)
    assert h.fail == 0 and h.window == []
    assert after.fail == 1


def test_consecutive_failures_open_the_breaker() -> None:
    h = feed(Health(), [fail()] * 4, T0)
    assert h.state == "closed" and h.consecutive_failures == 4
    h = record(h, fail(), POLICY, T0 + 1)
    assert h.state == "open" and h.opened_at == T0 + 1


def test_a_success_resets_the_consecutive_count() -> None:
    h = feed(Health(), [fail()] * 4 + [ok()] + [fail()] * 4, T0)
    assert h.state == "closed"
    assert (h.calls, h.ok, h.fail) == (9, 1, 8)


def test_failure_rate_over_the_window_opens_once_min_calls_is_reached() -> None:
    # Never 5 failures in a row, but 6 of 10 calls failed: above the 50% rate.
    pattern = [fail(), ok(), fail(), fail(), ok(), fail(), ok(), fail(), ok()]
    h = feed(Health(), pattern, T0)
    assert h.state == "closed"  # 9 calls: below min_calls
    h = record(h, fail(), POLICY, T0 + 1)
    assert h.state == "open"


def test_failures_older_than_the_window_are_forgotten() -> None:
    pattern = [fail(), ok(), fail(), fail(), ok(), fail(), ok(), fail(), ok()]
    h = feed(Health(), pattern, T0)
    # 70 s later the old outcomes have left the 60 s window; the rate is 1/1 but
    # there are too few calls to judge, and one failure is not five in a row.
    h = record(h, ok(), POLICY, T0 + 70)
    h = record(h, fail(), POLICY, T0 + 70.5)
    assert h.state == "closed"
    assert success_rate(h, T0 + 70.5) == pytest.approx(2 / 3)


def test_window_stays_bounded() -> None:
    h = Health()
    for i in range(2_000):
        h = record(h, ok() if i % 3 else fail(), BreakerPolicy(consecutive_failures=99), T0 + i)
    assert len(h.window) <= POLICY.buckets + 1
    assert h.calls == 2_000


def test_open_waits_open_s_then_one_probe_decides() -> None:
    h = feed(Health(), [fail()] * 5, T0)
    opened = h.opened_at
    assert opened is not None
    assert not available(h, POLICY, opened + POLICY.open_s - 0.01)
    assert available(h, POLICY, opened + POLICY.open_s)

    # The probe went at opened + 11 (the router's rule: one out per worker at a time).
    closed = record(h, ok(latency_ms=1000.0), POLICY, opened + 12)
    assert closed.state == "closed" and closed.opened_at is None
    # The failures that opened it were cleared: one more failure does not re-open.
    assert record(closed, fail(), POLICY, opened + 13).state == "closed"

    reopened = record(h, fail(), POLICY, opened + 12)
    assert reopened.state == "open" and reopened.opened_at == opened + 12
    assert not available(reopened, POLICY, opened + 15)
    assert available(reopened, POLICY, opened + 22)


def test_late_results_do_not_move_an_open_breaker() -> None:
    h = feed(Health(), [fail()] * 5, T0)
    late = record(h, ok(), POLICY, T0 + 1)
    assert late.state == "open" and late.opened_at == h.opened_at
    late = record(h, fail(), POLICY, T0 + 2)
    assert late.opened_at == h.opened_at


def test_late_results_do_not_move_a_breaker_whose_probe_is_out_either() -> None:
    """A probe is out; calls sent before the open period ended end now (a 30 s timeout,
    a slow success): only the probe decides."""
    h = feed(Health(), [fail()] * 5, T0)
    opened = h.opened_at
    assert opened is not None
    slow_failure = fail().model_copy(update={"latency_ms": 30_000.0})
    still = record(h, slow_failure, POLICY, opened + 12)
    assert still.state == "open" and still.opened_at == opened
    still = record(still, ok(latency_ms=20_000.0), POLICY, opened + 12.5)
    assert still.state == "open" and still.opened_at == opened
    assert record(still, ok(), POLICY, opened + 13).state == "closed", "the probe decides"


def test_429_sets_retry_after_without_counting_as_a_failure() -> None:
    h = record(Health(), throttled(retry_after=3.0), POLICY, T0)
    assert h.state == "closed"
    assert h.fail == 0 and h.rate_limited == 1 and h.consecutive_failures == 0
    assert h.retry_after_until == T0 + 3.0
    assert not available(h, POLICY, T0 + 2.9)
    assert available(h, POLICY, T0 + 3.0)
    assert success_rate(h, T0) == 1.0


def test_429_without_retry_after_backs_off_exponentially() -> None:
    h = Health()
    waits = []
    for i in range(4):
        now = T0 + 100 * i
        h = record(h, throttled(), POLICY, now)
        waits.append(h.retry_after_until - now)
    assert waits == [1.0, 2.0, 4.0, 8.0]


def test_repeated_429s_open_the_breaker() -> None:
    h = feed(Health(), [throttled(0.5)] * 4, T0)
    assert h.state == "closed"
    h = record(h, throttled(0.5), POLICY, T0 + 1)
    assert h.state == "open"
    # A success in between restarts the count.
    h = feed(Health(), [throttled(0.5)] * 4 + [ok()] + [throttled(0.5)] * 4, T0)
    assert h.state == "closed"


def test_retry_after_on_a_5xx_also_holds_calls_back() -> None:
    h = record(Health(), fail(retry_after=5.0), POLICY, T0)
    assert h.fail == 1
    assert available_at(h, POLICY) == T0 + 5.0


@pytest.mark.parametrize(
    "code", [VendorBadRequest.code, ContentFiltered.code, VendorUnsupported.code]
)
def test_client_faults_do_not_touch_the_breaker(code: str) -> None:
    h = feed(Health(), [fail(code)] * 20, T0)
    assert h.state == "closed"
    assert h.calls == 20 and h.fail == 0 and h.consecutive_failures == 0


def test_ewmas_follow_successes_only() -> None:
    p = BreakerPolicy(ewma_alpha=0.5)
    h = record(Health(), ok(latency_ms=100, cost=0.02), p, T0)
    assert h.latency_ewma_ms == 100 and h.cost_ewma == 0.02
    h = record(h, ok(latency_ms=200, cost=0.04), p, T0 + 1)
    assert h.latency_ewma_ms == pytest.approx(150)
    assert h.cost_ewma == pytest.approx(0.03)
    h = record(h, fail(), p, T0 + 2)  # a fast error must not look like low latency
    assert h.latency_ewma_ms == pytest.approx(150)


def test_success_rate_has_a_one_success_prior() -> None:
    assert success_rate(Health(), T0) == 1.0
    h = feed(Health(), [ok(), ok(), ok(), fail()], T0)
    assert success_rate(h, T0 + 1) == pytest.approx(4 / 5)


CHEAP = Candidate(vendor="a", model="cheap", input_per_1m=0.1, output_per_1m=0.4, quality=1)
MID = Candidate(vendor="b", model="mid", input_per_1m=1.0, output_per_1m=4.0, quality=3)
BEST = Candidate(vendor="c", model="best", input_per_1m=3.0, output_per_1m=15.0, quality=3)


def measured(latency_ms: float | None) -> Health:
    """A candidate with this latency EWMA, backed by a success in the window at T0."""
    if latency_ms is None:
        return Health()
    return Health(latency_ewma_ms=latency_ms, window=[OutcomeBucket(start=T0, ok=1)])


def _healths(**latency: float) -> dict[str, Health]:
    return {
        health_key(c.vendor, c.model): measured(latency.get(c.model)) for c in (CHEAP, MID, BEST)
    }


def names(cands: list[Candidate]) -> list[str]:
    return [c.model for c in cands]


def test_score_per_strategy() -> None:
    h = measured(500.0)
    assert score(h, CHEAP, "cheapest", T0) == pytest.approx(-(0.75 * 0.1 + 0.25 * 0.4))
    assert score(h, MID, "quality", T0) == 3.0
    assert score(h, MID, "latency", T0) == -500.0
    assert score(Health(), MID, "latency", T0) == 0.0  # unknown latency: try it
    weighted = MID.model_copy(update={"weight": 3.0})
    assert score(h, weighted, "weighted", T0) == pytest.approx(3.0 * 1.0 / 1.5)


def test_rank_cheapest_quality_latency() -> None:
    rng = random.Random(0)
    hs = _healths(cheap=900.0, mid=50.0, best=300.0)
    assert names(rank([BEST, MID, CHEAP], hs, "cheapest", T0, rng)) == ["cheap", "mid", "best"]
    # Equal quality: the cheaper one first.
    assert names(rank([BEST, MID, CHEAP], hs, "quality", T0, rng)) == ["mid", "best", "cheap"]
    assert names(rank([BEST, MID, CHEAP], hs, "latency", T0, rng)) == ["mid", "best", "cheap"]


def test_cheapest_ties_go_to_the_faster_one() -> None:
    twin = CHEAP.model_copy(update={"vendor": "z"})
    hs = {health_key("a", "cheap"): measured(800.0)}
    hs[health_key("z", "cheap")] = measured(100.0)
    assert [c.vendor for c in rank([CHEAP, twin], hs, "cheapest", T0, random.Random())] == [
        "z",
        "a",
    ]


def test_latency_tries_unmeasured_candidates_first() -> None:
    hs = _healths(cheap=900.0, best=300.0)  # mid never measured
    assert names(rank([CHEAP, BEST, MID], hs, "latency", T0, random.Random()))[0] == "mid"


def test_a_stale_latency_keeps_its_rank_and_its_next_success_measures_it_afresh() -> None:
    """Measured slow an hour ago and unused since: its old figure still ranks it last
    (read as untried, it drew every request until its first answer was folded), and
    the next success replaces that figure instead of moving it a fifth of the way."""
    hs = _healths(cheap=3000.0, best=300.0)
    hs[health_key("a", "cheap")].window = [OutcomeBucket(start=T0 - 3600, ok=1)]
    assert stale_latency(hs[health_key("a", "cheap")], T0)
    assert names(rank([CHEAP, BEST], hs, "latency", T0, random.Random())) == ["best", "cheap"]
    again = record(hs[health_key("a", "cheap")], ok(latency_ms=150.0), POLICY, T0)
    assert again.latency_ewma_ms == 150.0 and not stale_latency(again, T0)
    blended = record(again, ok(latency_ms=1150.0), POLICY, T0 + 1)
    assert blended.latency_ewma_ms == pytest.approx(0.8 * 150 + 0.2 * 1150)


def test_latency_counts_a_candidate_s_failures_against_its_speed() -> None:
    """100 ms but failing 40 % of calls (each a wasted attempt before a fallback) ranks
    behind 150 ms that answers: 100 / 0.6 is more than 150."""
    flaky = measured(100.0)
    flaky.window = [OutcomeBucket(start=T0, ok=6, fail=4)]
    hs = {health_key("a", "cheap"): flaky, health_key("c", "best"): measured(150.0)}
    assert names(rank([CHEAP, BEST], hs, "latency", T0, random.Random())) == ["best", "cheap"]
    assert score(flaky, CHEAP, "latency", T0) == pytest.approx(-100.0 * 11 / 7)


def test_weighted_picks_in_proportion_to_effective_weight() -> None:
    heavy = CHEAP.model_copy(update={"weight": 3.0})
    light = MID.model_copy(update={"weight": 1.0})
    hs = _healths()
    rng = random.Random(42)
    firsts = Counter(rank([heavy, light], hs, "weighted", T0, rng)[0].model for _ in range(4000))
    assert firsts["cheap"] / 4000 == pytest.approx(0.75, abs=0.03)
    # Every candidate is still in the list, to fall back on.
    assert sorted(names(rank([heavy, light], hs, "weighted", T0, rng))) == ["cheap", "mid"]


def test_weighted_discounts_failing_and_slow_candidates() -> None:
    flaky = feed(Health(), [ok(latency_ms=0.0), fail(), fail(), fail()], T0)  # rate 2/5
    slow = measured(3000.0)  # divided by 1 + 3
    # success 2/5, and its one success cost 0.1 cent a call: half the share again
    assert score(flaky, CHEAP, "weighted", T0 + 1) == pytest.approx(0.4 / 2)
    assert score(slow, CHEAP, "weighted", T0) == pytest.approx(0.25)


def test_rank_leaves_out_unavailable_candidates() -> None:
    hs = _healths()
    hs[health_key("a", "cheap")] = feed(Health(), [fail()] * 5, T0)
    assert names(rank([CHEAP, MID, BEST], hs, "cheapest", T0 + 1, random.Random())) == [
        "mid",
        "best",
    ]
    # A candidate with no health yet is healthy.
    assert names(rank([CHEAP, MID], {}, "cheapest", T0, random.Random())) == ["cheap", "mid"]


def test_when_all_are_unavailable_the_soonest_is_the_last_resort() -> None:
    hs = {
        health_key("a", "cheap"): feed(Health(), [fail()] * 5, T0 + 5),  # open until ~T0+15
        health_key("b", "mid"): feed(Health(), [fail()] * 5, T0),  # open until ~T0+10
        health_key("c", "best"): record(Health(), throttled(30.0), POLICY, T0),
    }
    assert names(rank([CHEAP, MID, BEST], hs, "cheapest", T0 + 1, random.Random())) == ["mid"]
    assert rank([], {}, "cheapest", T0, random.Random()) == []


def test_a_call_sent_after_the_open_period_is_a_probe_whoever_sent_it() -> None:
    # Another worker routed the probe: only its outcome reaches the table.
    h = feed(Health(), [fail()] * 5, T0)
    reopened = record(h, fail(), POLICY, T0 + POLICY.open_s + 1)
    assert reopened.state == "open" and reopened.opened_at == T0 + POLICY.open_s + 1
    closed = record(h, ok(latency_ms=50), POLICY, T0 + POLICY.open_s + 1)
    assert closed.state == "closed"
    # ...but a call that went out while the breaker was still open is not a probe.
    late = record(h, ok(latency_ms=5000), POLICY, T0 + POLICY.open_s + 1)
    assert late.state == "open"


def test_a_vendor_out_of_quota_for_days_keeps_its_backoff_bounded():
    """Thousands of 429s in a row without Retry-After (an exhausted quota, probed again and
    again): the backoff stays at most open_s and recording never fails."""
    policy = BreakerPolicy()
    h = Health()
    for i in range(2000):
        h = record(h, HealthEvent(vendor="v", model="m", ok=False, latency_ms=1.0,
                                  error_code="vendor_rate_limited"), policy, 1000.0 + i)  # fmt: skip
    assert h.consecutive_rate_limited == 2000
    assert h.retry_after_until <= 1000.0 + 1999 + policy.open_s


def test_a_batch_read_again_after_a_crash_is_not_counted_twice() -> None:
    """A worker that dies between writing the table and committing its offset leaves the
    next owner to read the same batches: three failures stay three, the breaker closed."""
    policy = BreakerPolicy(consecutive_failures=5)
    h = Health()
    batches = [(10, [fail()]), (11, [fail(), fail()])]
    for offset, events in batches:
        folded = fold(h, events, offset, policy, T0)
        assert folded is not None
        h = folded
    assert (h.consecutive_failures, h.folded_offset) == (3, 11)
    for offset, events in batches:  # the partition read again from the last commit
        assert fold(h, events, offset, policy, T0) is None
    later = fold(h, [fail()], 12, policy, T0)
    assert later is not None and later.consecutive_failures == 4 and later.state == "closed"


def test_a_probe_the_client_was_at_fault_for_leaves_the_breaker_as_it_was() -> None:
    """A probe answered 400 says nothing of the vendor: the breaker stays open with its
    open period, so a late failure of a call sent before it opened moves nothing."""
    h = Health(state="open", opened_at=T0, consecutive_failures=5, opened=1)
    bad = HealthEvent(
        vendor="v", model="m", ok=False, latency_ms=100, error_code="vendor_bad_request"
    )
    h = record(h, bad, POLICY, T0 + POLICY.open_s + 1)
    assert (h.state, h.opened_at) == ("open", T0)
    late = HealthEvent(
        vendor="v", model="m", ok=False, latency_ms=17_000, error_code="vendor_error"
    )
    h = record(h, late, POLICY, T0 + POLICY.open_s + 2)
    assert (h.state, h.opened_at, h.opened) == ("open", T0, 1)


def test_failures_of_calls_sent_before_a_probe_closed_it_do_not_open_it_again() -> None:
    """Opened at T0, closed by a probe at T0+11; calls sent at ~T0-18 then end on a 30 s
    vendor timeout: counted, but the outage they speak of is over.  Calls sent after the
    probe closed it still count as before."""
    h = feed(Health(), [fail()] * 5, T0)
    assert h.state == "open"
    h = record(h, ok(latency_ms=500), POLICY, T0 + 11)
    assert h.state == "closed"
    timed_out = HealthEvent(
        vendor="v", model="m", ok=False, latency_ms=30_000, error_code=VendorUnavailable.code
    )
    throttled_late = timed_out.model_copy(update={"error_code": VendorRateLimited.code})
    h = feed(h, [timed_out] * 5 + [throttled_late] * 5, T0 + 12)
    assert (h.state, h.opened, h.fail, h.rate_limited) == ("closed", 1, 10, 5)
    assert (h.consecutive_failures, h.consecutive_rate_limited) == (0, 0)
    assert success_rate(h, T0 + 14) == 1.0  # the window holds only the probe

    h = feed(h, [fail()] * 5, T0 + 20)  # sent after it closed: a new outage
    assert (h.state, h.opened) == ("open", 2)


def test_a_health_record_stored_before_closed_at_existed_still_loads() -> None:
    stored = feed(Health(), [fail()] * 2, T0).model_dump(mode="json")
    del stored["closed_at"]
    h = Health.model_validate(stored)
    assert h.closed_at is None and h.consecutive_failures == 2
    assert feed(h, [fail()] * 3, T0 + 1).state == "open"
