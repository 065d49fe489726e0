"""The savings benchmark's ledger, read as ``relay report`` reads it."""

from __future__ import annotations

from bench.savings import once_each, savings
from schemas.envelope import UsageEvent


def line(event_id: str, cost: float, **fields: object) -> UsageEvent:
    return UsageEvent.model_validate(
        {
            "event_id": event_id,
            "tenant": "demo",
            "key_id": "k",
            "alias": "bench-zipf",
            "trace_id": "t",
            "cost": cost,
            "direct_cost": 1.0,
            **fields,
        }
    )


def test_a_line_sent_twice_counts_once_in_the_measured_save_rate() -> None:
    """A producer's retry (or a spilled line sent again) puts a paid line on the ledger
    twice: counted once, as ``relay report`` counts it."""
    paid, hit = line("e1", 1.0), line("e2", 0.0, cache_hit=True)
    events = once_each([paid, hit, line("e1", 1.0)])
    assert [e.event_id for e in events] == ["e1", "e2"]
    measured = savings(events)
    assert measured["events"] == 2 and measured["save_rate_measured"] == 0.5
