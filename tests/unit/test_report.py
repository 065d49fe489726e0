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


async def test_the_ledger_is_read_once_per_line_and_unreadable_lines_are_counted(monkeypatch):
    """A producer's retry can write a line twice (same event_id); a damaged, empty or
    foreign record is skipped and counted, never silently."""
    from types import SimpleNamespace

    import orjson
    from aiokafka import TopicPartition

    import cli.report as report

    line = event("a", 1.0, 2.0)
    values = [
        line.model_dump_json().encode(),
        line.model_dump_json().encode(),  # the same line again
        b"{not json",
        None,  # a tombstone
        orjson.dumps({"tenant": "a", "cost": 5.0}),  # not a ledger line
    ]

    class Consumer:
        def __init__(self, **_: object) -> None:
            self.at = 0

        async def start(self) -> None: ...
        async def stop(self) -> None: ...
        async def topics(self) -> set[str]:
            return {"relay.usage"}

        def partitions_for_topic(self, topic: str) -> set[int]:
            return {0}

        def assign(self, parts: object) -> None: ...
        async def seek_to_beginning(self, *parts: object) -> None: ...
        async def end_offsets(self, parts: list[TopicPartition]) -> dict[TopicPartition, int]:
            return {parts[0]: len(values)}

        async def position(self, tp: TopicPartition) -> int:
            return self.at

        async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[SimpleNamespace]]:
            records = [SimpleNamespace(value=v) for v in values[self.at :]]
            self.at = len(values)
            return {TopicPartition("relay.usage", 0): records}

    monkeypatch.setattr(report, "AIOKafkaConsumer", Consumer)
    read = await report.read_ledger("127.0.0.1:9", "relay.usage", 1)
    assert [e.event_id for e in read.events] == [line.event_id] and read.unreadable == 3


def test_a_line_with_an_impossible_time_is_left_off_the_chart(tmp_path):
    path = tmp_path / "cost.png"
    broken = event("a", 1.0, 2.0).model_copy(update={"ts_ms": 10**17})
    chart([event("a", 1.0, 2.0), broken], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="plausible time"):
        chart([broken], path)
