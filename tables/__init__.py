"""Keyed state and its pure rules: prices, vendor health, rate limits, budgets, the cache."""

from tables.buckets import PriorityGate, TokenBucket
from tables.budgets import BudgetDecision, BudgetPolicy, Spend, add_spend, decide, period_start
from tables.cache import CacheEntry, L1Cache, ResponseCache, cache_key, normalize
from tables.health import (
    BreakerPolicy,
    Health,
    OutcomeBucket,
    available,
    available_at,
    health_key,
    rank,
    record,
    score,
    success_rate,
)
from tables.prices import PriceSheet, cost_of

__all__ = [
    "BreakerPolicy",
    "BudgetDecision",
    "BudgetPolicy",
    "CacheEntry",
    "Health",
    "L1Cache",
    "OutcomeBucket",
    "PriceSheet",
    "PriorityGate",
    "ResponseCache",
    "Spend",
    "TokenBucket",
    "add_spend",
    "available",
    "available_at",
    "cache_key",
    "cost_of",
    "decide",
    "health_key",
    "normalize",
    "period_start",
    "rank",
    "record",
    "score",
    "success_rate",
]
