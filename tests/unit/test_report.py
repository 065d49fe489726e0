"""Cost report arithmetic: totals, grouping and SaveRate = 1 - Cost_total / Cost_direct."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import cli.report as report
from cli.report import Ledger, Totals, draw
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


def ledger(events: list[UsageEvent], by: str = "tenant") -> Ledger:
    """``events`` added up as `relay report` reads them off the topic."""
    read = Ledger(by)
    for ev in events:
        read.add(ev.model_dump_json().encode())
    return read


def rows_by(events: list[UsageEvent], by: str) -> dict[str, Totals]:
    return dict(ledger(events, by).rows)


def chart(events: list[UsageEvent], path: Path) -> None:
    draw(ledger(events).minutes, path)


async def read_topic_into_ledger(topic: str = "relay.usage") -> Ledger:
    """The ledger as `relay report` reads it, through a consumer patched in."""
    read = Ledger("tenant")
    async for value in report.values("127.0.0.1:9", topic, 1):
        read.add(value)
    return read


def test_save_rate_per_tenant():
    events = [
        event("a", 1.0, 1.0),
        event("a", 0.0, 1.0, cache_hit=True),
        event("a", 0.0, 1.0, coalesced=True),
        event("a", 0.5, 1.0, batch_api=True),
        event("b", 2.0, 2.0),
    ]
    rows = rows_by(events, "tenant")
    assert rows["a"].requests == 4 and rows["a"].cache_hits == 1 and rows["a"].coalesced == 1
    assert rows["a"].save_rate == pytest.approx(1 - 1.5 / 4.0)
    assert rows["b"].save_rate == 0.0
    assert rows["a"].billed_input_tokens == 20, "the cache hit and the coalesced line billed none"


def test_billed_tokens_are_those_of_lines_that_took_a_vendor_call():
    """A cache hit's and a coalesced line's usage is the answer's, paid for by the line
    that called: counted, the tokens would not match the vendors' invoices.  A window-
    batched or Batch API line, and a failed call's (what a broken stream was billed), did
    call."""
    from rich.console import Console

    from cli.report import table

    events = [
        event("a", 1.0, 1.0),
        event("a", 0.0, 1.0, cache_hit=True),
        event("a", 0.0, 1.0, coalesced=True),
        event("a", 0.4, 1.0, batched=True),
        event("a", 0.5, 1.0, batch_api=True),
        event("a", 0.2, 1.0, status="error"),
    ]
    rows = rows_by(events, "tenant")
    assert rows["a"].requests == 6
    assert (rows["a"].billed_input_tokens, rows["a"].billed_output_tokens) == (40, 20)
    console = Console(width=250, record=True)
    console.print(table(rows, "tenant"))
    shown = console.export_text()
    assert "billed tokens in/out" in shown and "40/20" in shown
    assert "cache hits and coalesced lines left out" in " ".join(shown.split())


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
    assert drawn == [[0.0, 2.0, 2.0], [0.0, 1.0, 1.0]], "direct then paid, from zero, held"


def test_lines_all_in_one_minute_draw_on_an_axis_of_minutes_not_years(tmp_path):
    """A first run's few lines share one minute: matplotlib would widen that span of
    nothing to years, the step a hairline in the middle of the picture."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.dates import num2date
    from matplotlib.figure import Figure

    spans: list[tuple[float, float]] = []
    real = Figure.savefig

    def spy(self, *args, **kwargs):
        spans.append(self.axes[0].get_xlim())
        return real(self, *args, **kwargs)

    Figure.savefig = spy  # type: ignore[method-assign]
    try:
        draw({29_000_000: [2e-5, 9e-5]}, tmp_path / "one.png")
    finally:
        Figure.savefig = real  # type: ignore[method-assign]
    low, high = (num2date(x) for x in spans[0])
    minute = datetime.fromtimestamp(29_000_000 * 60, UTC)
    assert low < minute < high
    assert 3 * 60 <= (high - low).total_seconds() <= 30 * 60, (low, high)


async def test_the_ledger_is_read_once_per_line_and_unreadable_lines_are_counted(monkeypatch):
    """A producer's retry can write a line twice (same event_id); a damaged, empty or
    foreign record is skipped and counted, never silently."""

    import orjson

    line = event("a", 1.0, 2.0)
    values = [
        line.model_dump_json().encode(),
        line.model_dump_json().encode(),  # the same line again
        b"{not json",
        None,  # a tombstone
        orjson.dumps({"tenant": "a", "cost": 5.0}),  # not a ledger line
    ]

    monkeypatch.setattr(report, "AIOKafkaConsumer", reading({"relay.usage": values}))
    read = await read_topic_into_ledger()
    assert read.rows["a"].requests == 1 and (read.repeated, read.unreadable) == (1, 3)


def test_a_line_with_an_impossible_time_is_left_off_the_chart(tmp_path):
    path = tmp_path / "cost.png"
    broken = event("a", 1.0, 2.0).model_copy(update={"ts_ms": 10**17})
    chart([event("a", 1.0, 2.0), broken], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="plausible time"):
        chart([broken], path)


def test_the_ledger_is_added_up_line_by_line_within_the_period() -> None:
    """Totals per group and cost per minute: memory grows with those, not with the lines
    of a ledger kept 400 days; a line sent twice counts once."""

    minute = 60_000
    at = 1_796_000_000_000 - 1_796_000_000_000 % minute
    lines = [
        event("a", 1.0, 2.0).model_copy(update={"ts_ms": at - minute}),  # before the period
        event("a", 1.0, 2.0).model_copy(update={"ts_ms": at}),
        event("b", 0.0, 2.0, cache_hit=True).model_copy(update={"ts_ms": at + 1}),
        event("a", 3.0, 3.0).model_copy(update={"ts_ms": at + 2 * minute}),  # after it
    ]
    ledger = Ledger("tenant", since_ms=at, until_ms=at + 2 * minute)
    for line in [*lines, lines[1]]:
        ledger.add(line.model_dump_json().encode())
    ledger.add(b"{not a line")
    assert {k: (r.requests, r.cost, r.direct) for k, r in ledger.rows.items()} == {
        "a": (1, 1.0, 2.0),
        "b": (1, 0.0, 2.0),
    }
    assert ledger.minutes == {at // minute: [1.0, 4.0]}
    assert (ledger.repeated, ledger.unreadable) == (1, 1)


def test_a_period_is_a_utc_date_or_time_or_a_span_back() -> None:
    from cli.report import moment_ms

    now = 1_796_000_000_000
    assert moment_ms("24h", now) == now - 86_400_000
    assert moment_ms("7d", now) == now - 7 * 86_400_000
    assert moment_ms("2026-12-01", now) == 1_796_083_200_000
    assert moment_ms("2026-12-01T12:00+01:00", now) == 1_796_083_200_000 + 11 * 3_600_000
    with pytest.raises(ValueError):
        moment_ms("last tuesday", now)
    with pytest.raises(ValueError, match="before 1970"):
        moment_ms("1969-12-31", now)


@pytest.mark.parametrize(("option", "given"), [("--until", "1969-12-31"), ("--since", "99999999d")])
def test_a_period_before_1970_is_said_to_be_so_not_unreadable(option: str, given: str) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["report", option, given])
    said = " ".join(result.output.replace("│", " ").split())  # out of rich's box
    assert result.exit_code == 2 and f"{option}: '{given}' is before 1970" in said
    assert "neither a date" not in said


def test_a_chart_that_cannot_be_written_is_refused_before_the_ledger_is_read(tmp_path):
    """Said at once, as a bad option (exit 2), not in a traceback after reading it all."""
    from typer.testing import CliRunner

    from cli.main import app

    folder = tmp_path / "cost.png"
    folder.mkdir()
    result = CliRunner().invoke(app, ["report", "--chart", str(folder)])
    said = " ".join(result.output.replace("│", " ").split())  # out of rich's box
    assert result.exit_code == 2 and "is a directory" in said


class FakeConsumer:
    """Stands in for AIOKafkaConsumer: each topic of ``held`` on one partition, read
    whole by the first poll."""

    held: dict[str, list[bytes | None]] = {}

    def __init__(self, **_: object) -> None:
        self.at = 0
        self.values: list[bytes | None] = []

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def topics(self) -> set[str]:
        return set(self.held)

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assign(self, parts: list[Any]) -> None:
        self.values = self.held[parts[0].topic]

    async def seek_to_beginning(self, *parts: object) -> None: ...
    async def end_offsets(self, parts: list[Any]) -> dict[Any, int]:
        return {parts[0]: len(self.values)}

    async def position(self, tp: object) -> int:
        return self.at

    async def getmany(self, timeout_ms: int) -> dict[Any, list[Any]]:
        from types import SimpleNamespace

        from aiokafka import TopicPartition

        records = [SimpleNamespace(value=v) for v in self.values[self.at :]]
        self.at = len(self.values)
        return {TopicPartition("x", 0): records}


def reading(held: dict[str, list[bytes | None]]) -> type[FakeConsumer]:
    """A FakeConsumer class whose topics hold ``held``."""
    return type("Consumer", (FakeConsumer,), {"held": held})


async def test_an_offset_gone_mid_read_resumes_at_the_oldest_line_not_the_end(monkeypatch):
    """Retention deleting the segment being read makes the offset out of range: reset to
    the latest, the rest of that partition would be skipped and the report end short."""

    built: list[dict[str, object]] = []

    class Recorded(FakeConsumer):
        def __init__(self, **kwargs: object) -> None:
            built.append(kwargs)
            super().__init__()

    monkeypatch.setattr(report, "AIOKafkaConsumer", type("C", (Recorded,), {"held": {"t": []}}))
    await read_topic_into_ledger("t")
    assert [kw.get("auto_offset_reset") for kw in built] == ["earliest"]


class StalledConsumer(FakeConsumer):
    """A consumer whose broker went away mid-read: its positions stop moving, and
    ``getmany`` returns nothing (aiokafka retries it without end)."""

    held = {"relay.usage": [None] * 10}
    stopped = False

    def __init__(self, **_: object) -> None:
        super().__init__()
        self.polls = 0

    async def stop(self) -> None:
        StalledConsumer.stopped = True

    async def position(self, tp: object) -> int:
        return 3

    async def getmany(self, timeout_ms: int) -> dict[Any, list[Any]]:
        import asyncio

        self.polls += 1
        await asyncio.sleep(0.01)
        return {}


async def test_a_broker_lost_mid_read_ends_the_read_as_unreachable(monkeypatch):
    """No position moving for STALL_S, and the broker not answering: KafkaConnectionError
    (one line from `_on_kafka`), not a read that waits for ever."""
    import asyncio

    from aiokafka.errors import KafkaConnectionError

    asked: list[str] = []

    async def gone(bootstrap: str) -> None:
        asked.append(bootstrap)
        raise KafkaConnectionError("Unable to bootstrap")

    monkeypatch.setattr(report, "AIOKafkaConsumer", StalledConsumer)
    monkeypatch.setattr(report, "STALL_S", 0.05)
    monkeypatch.setattr(report, "reach", gone)
    StalledConsumer.stopped = False
    with pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(read_topic_into_ledger(), 5)
    assert asked == ["127.0.0.1:9"] and StalledConsumer.stopped


async def test_a_broker_that_does_not_answer_in_time_is_unreachable(monkeypatch):
    import asyncio

    from aiokafka.errors import KafkaConnectionError

    async def frozen(bootstrap: str) -> None:
        await asyncio.sleep(60)

    monkeypatch.setattr(report, "AIOKafkaConsumer", StalledConsumer)
    monkeypatch.setattr(report, "STALL_S", 0.05)
    monkeypatch.setattr(report, "REACH_S", 0.1)
    monkeypatch.setattr(report, "reach", frozen)
    with pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(read_topic_into_ledger(), 5)


async def test_a_slow_broker_that_still_answers_is_waited_for(monkeypatch):
    """Positions still for a while, but the broker answers: the read goes on to the end."""
    import asyncio
    from types import SimpleNamespace

    line = event("a", 1.0, 2.0).model_dump_json().encode()

    class Slow(StalledConsumer):
        at = 0

        async def position(self, tp: object) -> int:
            return self.at

        async def end_offsets(self, parts: list) -> dict:
            return {parts[0]: 1}

        async def getmany(self, timeout_ms: int) -> dict:
            await super().getmany(timeout_ms)
            if self.polls < 20:  # ~0.2 s of nothing, four stall periods
                return {}
            self.at = 1
            return {"p": [SimpleNamespace(value=line)]}

    asked: list[str] = []

    async def there(bootstrap: str) -> None:
        asked.append(bootstrap)

    monkeypatch.setattr(report, "AIOKafkaConsumer", Slow)
    monkeypatch.setattr(report, "STALL_S", 0.05)
    monkeypatch.setattr(report, "reach", there)
    read = await asyncio.wait_for(read_topic_into_ledger(), 5)
    assert read.rows["a"].requests == 1 and asked


def test_a_lost_broker_is_one_line_from_relay_report(monkeypatch):
    """From the command: the `cannot reach Kafka` line and exit code 1, no traceback."""
    from typer.testing import CliRunner

    from cli.main import app

    async def gone(bootstrap: str) -> None:
        from aiokafka.errors import KafkaConnectionError

        raise KafkaConnectionError("Unable to bootstrap")

    monkeypatch.setattr(report, "AIOKafkaConsumer", StalledConsumer)
    monkeypatch.setattr(report, "STALL_S", 0.05)
    monkeypatch.setattr(report, "reach", gone)
    monkeypatch.setenv("RELAY_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    result = CliRunner().invoke(app, ["report"])
    assert result.exit_code == 1, result.output
    assert "cannot reach Kafka at 127.0.0.1:9" in result.output
    assert "Traceback" not in result.output


def test_by_model_a_canary_s_failed_attempts_show_in_the_vendor_calls(monkeypatch):
    """A canary attempt that failed and fell back to the stable version leaves a ledger
    line naming the stable version only; `relay report --by model` also counts every
    vendor call from relay.health, so the canary's errors and latency are there, apart."""

    from typer.testing import CliRunner

    from cli.main import app
    from schemas.envelope import HealthBatch, HealthEvent

    def call(model: str, ok: bool, ms: float) -> HealthEvent:
        return HealthEvent(vendor="openai", model=model, ok=ok, latency_ms=ms, cost=0.001 * ok)

    topics = {
        "relay.usage": [
            event("t", 0.001, 0.001, vendor="openai", vendor_model="stable").model_dump_json()
            for _ in range(4)
        ],
        "relay.health": [
            HealthBatch(
                events=[call("canary", False, 200), call("canary", False, 200)]
            ).model_dump_json(),
            HealthBatch(events=[call("stable", True, 10)] * 4).model_dump_json(),
        ],
    }

    encoded = {topic: [v.encode() for v in values] for topic, values in topics.items()}
    monkeypatch.setattr(report, "AIOKafkaConsumer", reading(encoded))
    monkeypatch.setenv("RELAY_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["report", "--by", "model"])
    assert result.exit_code == 0, result.output
    ledger, calls = result.output.split("vendor calls by model")
    assert "openai/stable" in ledger and "openai/canary" not in ledger
    rows = {
        cells[0]: cells[1:]
        for line in calls.splitlines()
        if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 6
    }
    # calls, errors, error rate, mean ms, cost
    assert rows["openai/canary"] == ["2", "2", "100.0%", "200", "0.000000"]
    assert rows["openai/stable"] == ["4", "0", "0.0%", "10", "0.004000"]


def test_a_client_that_went_away_is_counted_apart_from_errors():
    """A stream stopped because its client left (client_closed) is no failure of the
    relay's: the report counts it in its own column, with what it cost."""
    lines = [
        event("t", 0.001, 0.001),
        event("t", 0.0005, 0.0005, status="error", error_code="client_closed"),
        event("t", 0.0, 0.0, status="error", error_code="vendor_unavailable"),
    ]
    rows = rows_by(lines, "tenant")
    assert (rows["t"].requests, rows["t"].errors, rows["t"].closed) == (3, 1, 1)
    assert rows["t"].cost == pytest.approx(0.0015)


def test_the_savings_are_said_in_dollars_per_mechanism():
    """Each flag's lines and the saved_cost they carry, beside each other; a line with
    two flags counts under both, and one with none is the other saving (a cheaper
    candidate).  Window-batched lines were charged their shares: the table says so."""
    from rich.console import Console

    from cli.report import savings_table

    events = [
        event("a", 0.0, 0.3, cache_hit=True),
        event("a", 0.0, 0.2, cache_hit=True),
        event("a", 0.0, 0.1, coalesced=True),
        event("a", 0.25, 0.5, batch_api=True),
        event("a", 0.4, 1.0, batch_api=True, degraded="budget_exhausted"),
        event("a", 0.7, 0.7, batched=True),
        event("a", 0.6, 1.0),
        event("b", 1.0, 1.0),
    ]
    rows = rows_by(events, "tenant")
    a = rows["a"]
    assert (a.cache_hits, a.saved_cache) == (2, pytest.approx(0.5))
    assert (a.coalesced, a.saved_coalesced) == (1, pytest.approx(0.1))
    assert (a.batch_api, a.saved_batch_api) == (2, pytest.approx(0.85))
    assert (a.degraded, a.saved_degraded) == (1, pytest.approx(0.6))
    assert (a.batched, a.saved_batched) == (1, 0.0), "a share costs what it costs"
    assert (a.unflagged, a.saved_other) == (1, pytest.approx(0.4))
    assert (rows["b"].unflagged, rows["b"].saved_other) == (1, 0.0)
    assert a.saved == pytest.approx(0.3 + 0.2 + 0.1 + 0.25 + 0.6 + 0.4)
    console = Console(width=200, record=True)
    console.print(savings_table(rows))
    shown = console.export_text()
    cells = {
        parts[0]: parts[1:3]
        for line in shown.splitlines()
        if line.startswith("│") and (parts := [c.strip() for c in line.split("│")[1:-1]])[0]
    }
    assert cells == {
        "cache": ["2", "0.500000"],
        "coalesced": ["1", "0.100000"],
        "batch API": ["2", "0.850000"],
        "degraded": ["1", "0.600000"],
        "batched": ["1", "0.000000"],
        "other": ["2", "0.400000"],
        "all lines": ["8", "1.850000"],
    }
    said = " ".join(shown.split())
    assert "window-batched call" in said and "no discount in itself" in said
    assert "a line with two flags counts under both" in said


def test_relay_report_prints_where_the_savings_came_from(monkeypatch):
    """After the cost table, the savings by mechanism over every group; the cost table's
    row of a group stays its one line (what scripts read)."""
    from typer.testing import CliRunner

    from cli.main import app

    lines = [
        event("t", 0.0, 0.002, cache_hit=True).model_dump_json(),
        event("t", 0.001, 0.002, batch_api=True).model_dump_json(),
    ]
    monkeypatch.setattr(
        report, "AIOKafkaConsumer", reading({"relay.usage": [x.encode() for x in lines]})
    )
    monkeypatch.setenv("RELAY_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["report", "--by", "tenant"])
    assert result.exit_code == 0, result.output
    costs, savings = result.output.split("where the savings came from")
    assert [line for line in result.output.splitlines() if "│ t " in line] == [
        line for line in costs.splitlines() if "│ t " in line
    ]
    rows = {
        parts[0]: parts[1:3]
        for line in savings.splitlines()
        if line.startswith("│") and (parts := [c.strip() for c in line.split("│")[1:-1]])[0]
    }
    assert rows["cache"] == ["1", "0.002000"] and rows["batch API"] == ["1", "0.001000"]


def test_cost_with_no_direct_cost_has_no_save_rate_not_zero():
    """An alias whose first candidate is free (a local model) that fell back to a paid
    one, or by model a failed request's billed cut calls under no vendor: money spent
    against a direct cost of 0 is no 0.0% (breaking even), and says so."""
    from rich.console import Console

    from cli.report import save_rate, table

    assert save_rate(0.3, 0.0) is None
    assert save_rate(0.0, 0.0) == 0.0 and save_rate(1.0, 2.0) == 0.5
    rows = rows_by([event("free-first", 0.3, 0.0), event("paid", 1.0, 2.0)], "tenant")
    assert rows["free-first"].save_rate is None
    console = Console(width=250, record=True)
    console.print(table(rows, "tenant"))
    shown = console.export_text()
    cells = {
        parts[0]: parts[8]
        for line in shown.splitlines()
        if line.startswith("│") and (parts := [c.strip() for c in line.split("│")[1:-1]])[0]
    }
    assert cells == {"free-first": "n/a", "paid": "50.0%", "total": "35.0%"}
    assert "SaveRate n/a: cost with no direct cost" in " ".join(shown.split())


def _shaded(minutes: dict[int, list[float]], path: Path) -> tuple[dict[str, float], str]:
    """The areas the chart of ``minutes`` shades, by legend label (in USD x days, the
    axis' units), and its title."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    seen: list[tuple[dict[str, float], str]] = []
    real = Figure.savefig

    def spy(self, *args, **kwargs):
        ax = self.axes[0]
        areas = {}
        for fill in ax.collections:
            area = 0.0
            for polygon in fill.get_paths():
                x, y = polygon.vertices[:, 0], polygon.vertices[:, 1]
                area += abs(sum(x[i] * y[i + 1] - x[i + 1] * y[i] for i in range(len(x) - 1))) / 2
            areas[fill.get_label()] = area
        seen.append((areas, ax.get_title()))
        return real(self, *args, **kwargs)

    Figure.savefig = spy  # type: ignore[method-assign]
    try:
        draw(minutes, path)
    finally:
        Figure.savefig = real  # type: ignore[method-assign]
    return seen[0]


MINUTE_IN_DAYS = 1 / 1440


def test_a_relay_that_cost_more_than_direct_shades_extra_cost_not_saved(tmp_path):
    """A fallback to a pricier model costs more than direct: the area is red and said to
    be extra cost, and nothing is said to be saved."""
    areas, title = _shaded({29_000_000: [2.0, 1.0]}, tmp_path / "neg.png")
    extra = "extra cost (paid more than direct)"
    assert set(areas) == {extra}
    assert areas[extra] == pytest.approx(1.0 * MINUTE_IN_DAYS)  # 1 USD more, for a minute
    assert "SaveRate -100.0%" in title


def test_lines_that_cross_shade_each_side_where_it_is(tmp_path):
    """Saved 2 USD over the first minute, then a line that paid 3 for nothing direct:
    green for the first minute, red for the next, cut where the lines cross."""
    areas, title = _shaded({29_000_000: [0.0, 2.0], 29_000_001: [3.0, 0.0]}, tmp_path / "x.png")
    assert areas == {
        "saved": pytest.approx(2.0 * MINUTE_IN_DAYS),
        "extra cost (paid more than direct)": pytest.approx(1.0 * MINUTE_IN_DAYS),
    }
    assert "SaveRate -50.0%" in title
    _, free = _shaded({29_000_000: [0.3, 0.0]}, tmp_path / "free.png")
    assert "SaveRate n/a" in free
