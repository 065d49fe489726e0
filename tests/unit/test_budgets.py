"""Spend per UTC period and the allow / degrade / refuse decision."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tables.budgets import (
    IN_FLIGHT_RETRY_S,
    MAX_SPEND,
    BudgetPolicy,
    Spend,
    add_spend,
    decide,
    held_back,
    next_period_start,
    period_start,
)


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def test_period_start_is_the_utc_day_or_month() -> None:
    now = ts(2025, 3, 17, 23, 59, 30)
    assert period_start(now, "day") == ts(2025, 3, 17)
    assert period_start(now, "month") == ts(2025, 3, 1)


def test_spend_accumulates_within_a_period() -> None:
    s = Spend()
    for hour in range(3):
        s = add_spend(s, 1.5, ts(2025, 3, 17, hour), "day")
    assert s.period_start == ts(2025, 3, 17)
    assert s.spent_usd == pytest.approx(4.5)


def test_spend_resets_at_the_utc_day_boundary() -> None:
    s = add_spend(Spend(), 9.0, ts(2025, 3, 17, 23, 59, 59), "day")
    s = add_spend(s, 0.25, ts(2025, 3, 18, 0, 0, 1), "day")
    assert s == Spend(period_start=ts(2025, 3, 18), spent_usd=0.25)


def test_spend_resets_at_the_month_boundary_only() -> None:
    s = add_spend(Spend(), 5.0, ts(2025, 1, 2), "month")
    s = add_spend(s, 5.0, ts(2025, 1, 31, 23), "month")
    assert s.spent_usd == 10.0
    s = add_spend(s, 1.0, ts(2025, 2, 1, 0, 0, 1), "month")
    assert s == Spend(period_start=ts(2025, 2, 1), spent_usd=1.0)


def test_late_spend_from_a_closed_period_is_dropped() -> None:
    s = add_spend(Spend(), 2.0, ts(2025, 3, 18, 1), "day")
    assert add_spend(s, 7.0, ts(2025, 3, 17, 23), "day") == s


def test_a_budget_changed_from_daily_to_monthly_keeps_counting() -> None:
    """The table kept today's spend under the day's start; the month's lines must add to
    it, not be taken for late ones from a closed period."""
    today = add_spend(Spend(), 5.0, ts(2025, 3, 14, 9), "day")
    s = today
    for day in (15, 20, 28):
        s = add_spend(s, 4.0, ts(2025, 3, day, 12), "month")
    assert s.spent_usd == 17.0 and s.period_start == ts(2025, 3, 1)
    policy = BudgetPolicy(limit_usd=10.0, period="month")
    assert decide(policy, today, ts(2025, 3, 15)).remaining_usd == 5.0
    assert decide(policy, s, ts(2025, 3, 28, 13)).action == "refuse"
    # And back to daily: the month's total is not today's.
    daily = BudgetPolicy(limit_usd=10.0, period="day")
    assert decide(daily, s, ts(2025, 3, 28, 13)).remaining_usd == 10.0
    assert add_spend(s, 1.0, ts(2025, 3, 28, 14), "day").spent_usd == 1.0


def test_spend_round_trips_through_json() -> None:
    s = add_spend(Spend(), 0.1234, ts(2025, 3, 18, 1), "month")
    assert Spend.model_validate(s.model_dump(mode="json")) == s


POLICY = BudgetPolicy(limit_usd=100.0, period="month")
NOW = ts(2025, 3, 17, 12)


def spent(usd: float) -> Spend:
    return Spend(period_start=ts(2025, 3, 1), spent_usd=usd)


def test_allow_below_the_degrade_threshold() -> None:
    d = decide(POLICY, spent(79.0), NOW)
    assert (d.action, d.reason, d.cache_only) == ("allow", None, False)
    assert d.remaining_usd == pytest.approx(21.0)


def test_degrade_from_80_percent() -> None:
    d = decide(POLICY, spent(80.0), NOW)
    assert (d.action, d.reason) == ("degrade", "budget_80pct")
    assert d.remaining_usd == pytest.approx(20.0)
    custom = BudgetPolicy(limit_usd=10.0, degrade_at=0.9)
    assert decide(custom, spent(9.5), NOW).reason == "budget_90pct"


def test_refuse_once_the_limit_is_reached() -> None:
    d = decide(POLICY, spent(100.0), NOW)
    assert (d.action, d.reason, d.remaining_usd) == ("refuse", "budget_exhausted", 0.0)
    assert decide(POLICY, spent(250.0), NOW).remaining_usd == 0.0


def test_throttle_refuses_until_the_period_resets() -> None:
    policy = POLICY.model_copy(update={"on_exhausted": "throttle"})
    d = decide(policy, spent(100.0), NOW)
    assert (d.action, d.throttle) == ("refuse", True)
    assert d.resets_at == next_period_start(NOW, POLICY.period)
    assert next_period_start(ts(2024, 12, 31, 23, 59), "month") == ts(2025, 1, 1)
    assert next_period_start(ts(2024, 2, 29, 12), "day") == ts(2024, 3, 1)
    assert not decide(POLICY, spent(100.0), NOW).throttle


def test_cache_only_degrades_instead_of_refusing() -> None:
    policy = POLICY.model_copy(update={"on_exhausted": "cache_only"})
    d = decide(policy, spent(100.0), NOW)
    assert (d.action, d.reason, d.cache_only) == ("degrade", "budget_exhausted", True)


def test_last_periods_spend_does_not_count() -> None:
    old = Spend(period_start=ts(2025, 2, 1), spent_usd=500.0)
    d = decide(POLICY, old, NOW)
    assert d.action == "allow" and d.remaining_usd == 100.0
    daily = BudgetPolicy(limit_usd=5.0, period="day")
    yesterday = Spend(period_start=ts(2025, 3, 16), spent_usd=5.0)
    assert decide(daily, yesterday, NOW).action == "allow"
    assert decide(daily, yesterday, ts(2025, 3, 16, 22)).action == "refuse"


def test_what_is_in_flight_holds_a_request_back_for_seconds_only_past_the_limit() -> None:
    """Spend counted, plus what other requests in flight hold, plus this one's worst case:
    past the limit it waits a few seconds (429, not spent), never when nothing else is
    held (alone, a request passes the limit by itself at most)."""
    assert held_back(POLICY, spent(50.0), NOW, held=0.0, worst=500.0) is None
    assert held_back(POLICY, spent(50.0), NOW, held=30.0, worst=20.0) is None
    d = held_back(POLICY, spent(50.0), NOW, held=30.0, worst=21.0)
    assert d is not None and (d.action, d.reason) == ("refuse", "budget_in_flight")
    assert d.retry_after_s == IN_FLIGHT_RETRY_S and d.remaining_usd == pytest.approx(50.0)
    assert not d.throttle and d.resets_at is None and not d.cache_only
    # last period's spend is not counted here either
    old = Spend(period_start=ts(2025, 2, 1), spent_usd=90.0)
    assert held_back(POLICY, old, NOW, held=30.0, worst=20.0) is None


def test_a_zero_budget_refuses_everything() -> None:
    assert decide(BudgetPolicy(limit_usd=0.0), Spend(), NOW).action == "refuse"


def test_absurd_lines_add_up_to_a_finite_spend_that_survives_the_changelog() -> None:
    """Two lines of 1e308 would make infinity, which the changelog writes as null: the
    record recovered after a restart would not read, and every request of the tenant
    would fail its budget check.  The total stops at a finite ceiling, past any budget."""
    s = Spend()
    for _ in range(2):
        s = add_spend(s, 1e308, ts(2025, 3, 17), "day")
    assert s.spent_usd == MAX_SPEND
    assert Spend.model_validate_json(s.model_dump_json()) == s
    assert decide(BudgetPolicy(limit_usd=1e6), s, ts(2025, 3, 17)).action == "refuse"
