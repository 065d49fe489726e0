"""Tenant budgets: spend per UTC day or month, and whether a request may go ahead."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

Period = Literal["day", "month"]


class BudgetPolicy(BaseModel):
    """A tenant's limit per period, when to degrade, and what to do once it is spent."""

    limit_usd: float
    period: Period = "month"
    degrade_at: float = 0.8
    on_exhausted: Literal["refuse", "throttle", "cache_only"] = "refuse"


class Spend(BaseModel):
    """USD spent since ``period_start`` (epoch seconds of the period's UTC start), and
    the last ledger line folded in, as (partition, offset): a worker that takes the
    ledger over after another died before committing reads those lines again, and must
    not count them twice (the tenant's lines all live in one partition)."""

    period_start: float = 0.0
    spent_usd: float = 0.0
    folded: tuple[int, int] = (-1, -1)

    def has_folded(self, partition: int, offset: int) -> bool:
        """Whether the ledger line at ``partition``/``offset`` is counted already."""
        return partition == self.folded[0] and offset <= self.folded[1]


class BudgetDecision(BaseModel):
    """The verdict for one request.

    ``degrade`` means serve it more cheaply (the caller picks how); with ``cache_only``
    set, the budget is spent and only a cached answer may be served.
    """

    action: Literal["allow", "degrade", "refuse"]
    reason: str | None = None
    remaining_usd: float
    cache_only: bool = False
    # A refusal as 429 until ``resets_at`` (the next period's start) instead of 402.
    throttle: bool = False
    resets_at: float | None = None
    # A refusal as 429 for a few seconds: the budget is not spent, but what requests in
    # flight may still cost could reach it (``held_back``).
    retry_after_s: float | None = None


def period_start(now: float, period: Period) -> float:
    """Epoch seconds of the start of the UTC day or month containing ``now``."""
    t = datetime.fromtimestamp(now, UTC)
    start = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        start = start.replace(day=1)
    return start.timestamp()


def next_period_start(now: float, period: Period) -> float:
    """Epoch seconds of the start of the next UTC day or month after ``now``."""
    start = datetime.fromtimestamp(period_start(now, period), UTC)
    if period == "day":
        return start.timestamp() + 86400
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month).timestamp()


# A period's spend at most: two absurd lines (1e308 each) would add up to infinity, which
# the table's changelog writes as null and the record recovered after a restart fails to
# read.  Past every budget there is, and finite.
MAX_SPEND = 1e15


def add_spend(s: Spend, cost: float, now: float, period: Period) -> Spend:
    """Add ``cost`` to the current period, starting a fresh one at the UTC boundary.

    A cost metered in a period already closed (a late event replayed after the reset) is
    dropped: that period's total no longer gates anything, and adding it to the new one
    would charge the tenant twice for the boundary.
    """
    start = period_start(now, period)
    kept = _kept_start(s, period)
    if start > kept:
        return Spend(period_start=start, spent_usd=min(cost, MAX_SPEND), folded=s.folded)
    if start < kept:
        return s
    total = min(s.spent_usd + cost, MAX_SPEND)
    return Spend(period_start=start, spent_usd=total, folded=s.folded)


def _kept_start(s: Spend, period: Period) -> float:
    """The start of the ``period`` that holds the spend kept: the table may have kept it
    under the other period (a budget changed from daily to monthly starts the day's spend
    on the month, rather than taking the month's lines for late ones)."""
    return period_start(s.period_start, period)


# How long a request held back by what is in flight is told to wait: about a call's
# length, after which most of those requests have written their lines (and let go of
# their holds), and the spend they counted says whether there is room.
IN_FLIGHT_RETRY_S = 5.0
# ... and when vendor batches alone hold what would pass it (their lines come when their
# batch ends, minutes or hours away): a minute, not a loop of retries every 5 s.
LASTING_RETRY_S = 60.0


def counted(policy: BudgetPolicy, spend: Spend, now: float) -> float:
    """USD the spend table has counted in the period containing ``now`` (none when what
    it keeps is a period already closed)."""
    current = period_start(now, policy.period)
    return spend.spent_usd if _kept_start(spend, policy.period) >= current else 0.0


def decide(policy: BudgetPolicy, spend: Spend, now: float) -> BudgetDecision:
    """Allow, degrade past ``degrade_at`` of the limit, or refuse (or cache-only) once
    the limit is reached, by the spend counted alone: money a request may still cost
    (``tables.holds``) is a guess, often many times what it costs, and must neither
    degrade a tenant (a degraded request flies apart, so the relay would pay for a second
    call) nor tell it its budget is spent until the period resets."""
    spent = counted(policy, spend, now)
    remaining = max(0.0, policy.limit_usd - spent)
    if spent >= policy.limit_usd:
        if policy.on_exhausted == "cache_only":
            return BudgetDecision(
                action="degrade", reason="budget_exhausted", remaining_usd=0.0, cache_only=True
            )
        return BudgetDecision(
            action="refuse",
            reason="budget_exhausted",
            remaining_usd=0.0,
            throttle=policy.on_exhausted == "throttle",
            resets_at=next_period_start(now, policy.period),
        )
    if spent >= policy.degrade_at * policy.limit_usd:
        pct = round(policy.degrade_at * 100)
        return BudgetDecision(action="degrade", reason=f"budget_{pct}pct", remaining_usd=remaining)
    return BudgetDecision(action="allow", remaining_usd=remaining)


def held_back(
    policy: BudgetPolicy,
    spend: Spend,
    now: float,
    held: float,
    worst: float,
    lasting: float = 0.0,
) -> BudgetDecision | None:
    """A short 429 for a request whose ``worst`` case, on top of the spend counted and
    what other requests in flight ``held``, would pass the limit; None when it may go.

    Holds cap admission, nothing more: requests arriving together cannot all pass a
    budget with room for one, yet none is told the budget is spent, and the wait is
    seconds (until those in flight write their lines), not the period.  A request that
    finds nothing held goes ahead whatever its worst case (alone it passes the limit by
    one request at most), or a tenant whose requests may each cost more than what is
    left would be refused for good with money still in its budget.  Of ``held``,
    ``lasting`` is what requests in vendor batches hold: when those alone would pass it,
    the wait is ``LASTING_RETRY_S``."""
    spent = counted(policy, spend, now)
    if held <= 0.0 or spent + held + worst <= policy.limit_usd:
        return None
    long_wait = lasting > 0.0 and spent + lasting + worst > policy.limit_usd
    return BudgetDecision(
        action="refuse",
        reason="budget_in_flight",
        remaining_usd=max(0.0, policy.limit_usd - spent),
        retry_after_s=LASTING_RETRY_S if long_wait else IN_FLIGHT_RETRY_S,
    )
