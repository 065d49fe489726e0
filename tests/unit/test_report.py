"""Cost report arithmetic: totals, grouping and SaveRate = 1 - Cost_total / Cost_direct."""

from __future__ import annotations

import uuid

import pytest

from cli.report import chart, group
from schemas.envelope import UsageEvent
from schemas.usage import Usage


def event(tenant: str, cost: float, direct: float, **flags: object) -> UsageEvent:
    return UsageEvent(
        event_id=uuid.uuid4().hex,
        tenant=tenant,
        key_id="k",
        alias="m",
        trace_id="t",
        usage=Usage(input_tokens=10, output_tokens=5),
        cost=cost,
        direct_cost=direct,
        saved_cost=direct - cost,
        **flags,  # type: ignore[arg-type]
    )


def test_save_rate_per_tenant():
    events = [
        event("a", 1.0, 1.0),
        event("a", 0.0, 1.0, cache_hit=True),
        event("a", 0.0, 1.0, coalesced=True),
        event("a", 0.5, 1.0, batch_api=True),
        event("b", 2.0, 2.0),
    ]
    rows = group(events, "tenant")
    assert rows["a"].requests == 4 and rows["a"].cache_hits == 1 and rows["a"].coalesced == 1
    assert rows["a"].save_rate == pytest.approx(1 - 1.5 / 4.0)
    assert rows["b"].save_rate == 0.0
    assert rows["a"].input_tokens == 40


def test_chart_is_written(tmp_path):
    path = tmp_path / "cost.png"
    chart([event("a", 1.0, 2.0), event("a", 0.0, 2.0, cache_hit=True)], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_one_event_ledger_still_draws_its_step(tmp_path):
    """One event: both lines start from zero at it, so the chart shows a step, not nothing."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    path = tmp_path / "one.png"
    drawn: list = []
    real = plt.Axes.plot

    def spy(self, *args, **kwargs):
        drawn.append(args[1])
        return real(self, *args, **kwargs)

    plt.Axes.plot = spy  # type: ignore[method-assign]
    try:
        chart([event("a", 1.0, 2.0)], path)
    finally:
        plt.Axes.plot = real  # type: ignore[method-assign]
    assert path.stat().st_size > 1000
    assert drawn == [[0.0, 2.0], [0.0, 1.0]], "direct then paid, each from zero"
