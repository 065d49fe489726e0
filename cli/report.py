"""`relay report`: read the cost ledger from Kafka and print where the money went.

The ledger (``relay.usage``) is replayed from its first offset, so a report can be
rebuilt at any time.  SaveRate = 1 - Cost_total / Cost_direct, where Cost_direct prices
every answered request at its alias's first candidate, as if sent straight to it.  Where
the savings came from is a second table: per mechanism (the line's flags), its lines and
the dollars they saved (the ledger's ``saved_cost``), over every group.

By model, a third table counts every vendor call from ``relay.health`` (kept a day): a
ledger line names only the candidate that answered, so a canary's failed attempts that
fell back to the stable version show there, with their own errors and latency.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from schemas.envelope import HealthBatch, UsageEvent
from tables.recent import RecentIds

if TYPE_CHECKING:
    from matplotlib.axes import Axes

M = TypeVar("M", bound=BaseModel)


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0  # failed requests; a client that went away (client_closed) is not one
    closed: int = 0  # streams whose clients went away before the end (client_closed)
    # Billed tokens: those of the lines that took a vendor call, as vendors invoice them.
    # A cache hit's or a coalesced line's usage is the answer's, paid for by another line.
    billed_input_tokens: int = 0
    billed_output_tokens: int = 0
    cost: float = 0.0
    direct: float = 0.0
    cache_hits: int = 0
    coalesced: int = 0
    batched: int = 0  # lines billed a share of a window-batched call: no discount in itself
    batch_api: int = 0
    degraded: int = 0
    unflagged: int = 0  # lines with none of the five flags above
    latency_ms: float = 0.0  # summed; shown as the mean
    # The ledger's saved_cost (direct - cost, never below 0): of every line, of the lines
    # with each flag, and of those with none (a cheaper candidate than the alias's first).
    saved: float = 0.0
    saved_cache: float = 0.0
    saved_coalesced: float = 0.0
    saved_batched: float = 0.0
    saved_batch_api: float = 0.0
    saved_degraded: float = 0.0
    saved_other: float = 0.0

    def add(self, ev: UsageEvent) -> None:
        self.requests += 1
        closed = ev.error_code == "client_closed"
        self.errors += ev.status == "error" and not closed
        self.closed += closed
        if not (ev.cache_hit or ev.coalesced):
            self.billed_input_tokens += ev.usage.input_tokens
            self.billed_output_tokens += ev.usage.output_tokens
        self.cost += ev.cost
        self.direct += ev.direct_cost
        self.cache_hits += ev.cache_hit
        self.coalesced += ev.coalesced
        self.batched += ev.batched
        self.batch_api += ev.batch_api
        self.degraded += ev.degraded is not None
        self.latency_ms += ev.latency_ms
        saved = ev.saved_cost
        self.saved += saved
        self.saved_cache += saved if ev.cache_hit else 0.0
        self.saved_coalesced += saved if ev.coalesced else 0.0
        self.saved_batched += saved if ev.batched else 0.0
        self.saved_batch_api += saved if ev.batch_api else 0.0
        self.saved_degraded += saved if ev.degraded is not None else 0.0
        flagged = ev.cache_hit or ev.coalesced or ev.batched or ev.batch_api
        flagged = flagged or ev.degraded is not None
        self.unflagged += not flagged
        self.saved_other += 0.0 if flagged else saved

    @property
    def save_rate(self) -> float | None:
        return save_rate(self.cost, self.direct)


def save_rate(cost: float, direct: float) -> float | None:
    """``1 - cost / direct``; None for money spent against no direct cost at all (an
    alias whose first candidate is free, as a local model, that fell back to a paid one;
    by model, a failed request's billed cut calls, under no vendor): no rate says how
    much worse than free that is, and 0% would say it broke even."""
    if direct > 0:
        return 1 - cost / direct
    return None if cost > 0 else 0.0


NO_RATE = "n/a"
NO_RATE_NOTE = f"SaveRate {NO_RATE}: cost with no direct cost to measure it against"


def rate_text(rate: float | None) -> str:
    return NO_RATE if rate is None else f"{rate:.1%}"


class TopicMissing(Exception):
    """The topic to read is not on this Kafka (a wrong prefix, or nothing ran yet)."""


@dataclass
class Read(Generic[M]):
    """What a topic held: the messages that parse, and how many did not."""

    events: list[M]
    unreadable: int = 0


STALL_S = 10.0  # no partition's position moved this long: is the broker still there?
REACH_S = 30.0  # the longest that asking it may take


async def reach(bootstrap: str) -> None:
    """Raise ``KafkaError`` unless a broker answers at ``bootstrap``."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
    finally:
        await admin.close()


async def _still_there(bootstrap: str) -> None:
    """Raise ``KafkaConnectionError`` unless the broker answers within ``REACH_S``: the
    consumer itself would retry a broker gone mid-read for ever, printing as it goes."""
    from aiokafka.errors import KafkaConnectionError

    try:
        await asyncio.wait_for(reach(bootstrap), REACH_S)
    except TimeoutError:
        raise KafkaConnectionError(f"no answer from {bootstrap} in {REACH_S:.0f}s") from None


async def values(
    bootstrap: str, topic: str, partitions: int, since_ms: int | None = None
) -> AsyncIterator[bytes | None]:
    """Every message's value on ``topic``, from the first offset (or the first at or after
    ``since_ms``) to the end as of now, with a progress bar.  The partitions are the
    topic's own; one that does not exist raises ``TopicMissing`` (rather than reading it
    into being, shaped by the broker's defaults).  A broker lost mid-read (no position
    moving for ``STALL_S``, and the broker not answering) raises ``KafkaConnectionError``."""
    # An offset gone mid-read (retention deleting the oldest segment under us) resets to
    # the first line still there: aiokafka's default, the last, would skip the rest of
    # that partition and end the read as if it were complete.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    # A broker lost mid-read is one line in the end (``KafkaConnectionError``), not
    # aiokafka's two errors a second while it retries.
    quiet, level = logging.getLogger("aiokafka"), logging.getLogger("aiokafka").level
    quiet.setLevel(logging.CRITICAL)
    try:
        await consumer.start()
        if topic not in await consumer.topics():
            raise TopicMissing(f"no topic {topic} on the Kafka at {bootstrap}")
        found = consumer.partitions_for_topic(topic) or set(range(partitions))
        parts = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(parts)
        # The first offsets before the last (asked the other way round, the pending
        # reset of a new assignment could win over the seek).
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        if since_ms is not None:  # straight to the first line of the period, by time
            starts = await consumer.offsets_for_times({tp: since_ms for tp in parts})
            for tp, at in starts.items():
                consumer.seek(tp, at.offset if at is not None else end[tp])
        start = {tp: await consumer.position(tp) for tp in parts}
        with Progress(transient=True) as progress:
            total = sum(end[tp] - start[tp] for tp in parts) or 1
            task = progress.add_task(f"reading {topic}", total=total)
            at, moved_at = dict(start), time.monotonic()
            while True:
                now = {tp: await consumer.position(tp) for tp in parts}
                if all(now[tp] >= end[tp] for tp in parts):
                    break
                if now != at:
                    at, moved_at = now, time.monotonic()
                elif time.monotonic() - moved_at > STALL_S:
                    progress.update(task, description=f"reading {topic} (is Kafka there?)")
                    await _still_there(bootstrap)  # it is: carry on waiting
                    progress.update(task, description=f"reading {topic}")
                    moved_at = time.monotonic()
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        yield record.value
                    progress.advance(task, len(records))
    finally:
        try:
            await consumer.stop()
        except asyncio.CancelledError:
            # aiokafka's fetcher, stopped while it waits to retry a lost broker, lets the
            # cancellation of its own request out of stop(): only ours is passed on.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        finally:
            quiet.setLevel(level)


async def read_topic(bootstrap: str, topic: str, partitions: int, model: type[M]) -> Read[M]:
    """Every message on ``topic`` that parses as ``model``; one that does not, foreign or
    damaged, is counted and skipped."""
    read: Read[M] = Read([])
    async for value in values(bootstrap, topic, partitions):
        try:
            read.events.append(model.model_validate(orjson.loads(value or b"")))
        except Exception:
            read.unreadable += 1
    return read


RECENT_IDS = 100_000  # event ids remembered to drop a line sent twice (retries are near)


@dataclass
class Ledger:
    """A report's totals, added up line by line as the ledger is read: memory grows with
    the groups (and, for a chart, the minutes), not with the lines of a ledger kept 400
    days; the last ``RECENT_IDS`` event ids (~15 MB) catch a line a producer sent twice."""

    by: str
    since_ms: int | None = None
    until_ms: int | None = None
    charting: bool = True
    rows: dict[str, Totals] = field(default_factory=lambda: defaultdict(Totals))
    minutes: dict[int, list[float]] = field(default_factory=dict)  # minute -> [cost, direct]
    unreadable: int = 0
    repeated: int = 0
    _recent: RecentIds = field(default_factory=lambda: RecentIds(RECENT_IDS))

    def add(self, value: bytes | None) -> None:
        """A ledger message as read from the topic."""
        try:
            ev = UsageEvent.model_validate(orjson.loads(value or b""))
        except Exception:
            self.unreadable += 1
            return
        self.count(ev)

    def count(self, ev: UsageEvent) -> None:
        """One ledger line, unless seen just before or outside the period."""
        if not self._recent.first_time(ev.event_id):
            self.repeated += 1
            return
        if not within(ev.ts_ms, self.since_ms, self.until_ms):
            return
        self.rows[_group_key(ev, self.by)].add(ev)
        if self.charting and CHART_FROM_MS <= ev.ts_ms < CHART_TO_MS:
            point = self.minutes.setdefault(ev.ts_ms // 60_000, [0.0, 0.0])
            point[0] += ev.cost
            point[1] += ev.direct_cost


def within(ts_ms: int, since_ms: int | None, until_ms: int | None) -> bool:
    """Whether a moment falls in the report's period: from ``since_ms``, before
    ``until_ms`` (either open when None)."""
    return (since_ms is None or ts_ms >= since_ms) and (until_ms is None or ts_ms < until_ms)


def feed(
    bootstrap: str,
    topic: str,
    partitions: int,
    since_ms: int | None,
    add: Callable[[bytes | None], None],
) -> None:
    """Read ``topic`` (from ``since_ms``, if given) to its end as of now into ``add``."""

    async def read() -> None:
        async for value in values(bootstrap, topic, partitions, since_ms):
            add(value)

    asyncio.run(read())


def _group_key(ev: UsageEvent, by: str) -> str:
    if by == "tenant":
        return ev.tenant
    if by == "alias":
        return ev.alias
    if by == "tag":
        return ev.cost_tag or "-"
    if by == "model":
        return f"{ev.vendor or '-'}/{ev.vendor_model or '-'}"
    return f"{ev.tenant}/{ev.key_id}"


BILLED_NOTE = (
    "billed tokens: of the lines that took a vendor call, as vendors invoice them "
    "(cache hits and coalesced lines left out)"
)


def _total(rows: dict[str, Totals]) -> Totals:
    total = Totals()
    for r in rows.values():
        for column in Totals.__dataclass_fields__:
            setattr(total, column, getattr(total, column) + getattr(r, column))
    return total


def table(rows: dict[str, Totals], by: str) -> Table:
    total = _total(rows)
    unmeasured = any(r.save_rate is None for r in [*rows.values(), total])
    caption = f"{BILLED_NOTE}; {NO_RATE_NOTE}" if unmeasured else BILLED_NOTE
    t = Table(title=f"cost by {by}", caption=caption)
    for col in (by, "requests", "errors", "client left", "mean ms", "billed tokens in/out",
                "cost $", "direct $", "SaveRate", "cache", "coalesced", "batched", "batch API",
                "degraded"):  # fmt: skip
        t.add_column(col, justify="left" if col == by else "right")
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1].cost):
        t.add_row(*_cells(name, r))
    t.add_section()
    t.add_row(*_cells("total", total))
    return t


SAVINGS_NOTE = (
    "saved $: the ledger's saved_cost (direct - cost, never below 0) of the lines with the "
    "flag; a line with two flags counts under both"
)
# Each mechanism: its name, the Totals fields of its lines and of what they saved, and
# what its lines are.  "batched" is no saving in itself: a window-batched call's share
# is charged at the full price (the flag says how the line was billed).
MECHANISMS = (
    ("cache", "cache_hits", "saved_cache", "answered from the response cache, cost 0"),
    ("coalesced", "coalesced", "saved_coalesced", "rode on an identical request's call, cost 0"),
    ("batch API", "batch_api", "saved_batch_api", "answered by a vendor batch, at its discount"),
    ("degraded", "degraded", "saved_degraded", "routed cheaper (budget, rate pressure)"),
    (
        "batched",
        "batched",
        "saved_batched",
        "billed a share of a window-batched call (embeddings, legacy completions) at the full "
        "price: no discount in itself; what they saved is their candidate's",
    ),
    (
        "other",
        "unflagged",
        "saved_other",
        "no flag: a saving only when a cheaper candidate than the alias's first answered",
    ),
)


def savings_table(rows: dict[str, Totals]) -> Table:
    """Where the savings came from, over every group: each mechanism's (flag's) lines and
    the dollars they saved, from the ledger's ``saved_cost``, with what its lines are."""
    total = _total(rows)
    t = Table(title="where the savings came from", caption=SAVINGS_NOTE)
    for col in ("mechanism", "lines", "saved $", "its lines"):
        t.add_column(col, justify="right" if col in ("lines", "saved $") else "left")
    for name, lines, saved, meaning in MECHANISMS:
        count, dollars = getattr(total, lines), getattr(total, saved)
        t.add_row(name, str(count), f"{dollars:.6f}", meaning)
    t.add_section()
    t.add_row("all lines", str(total.requests), f"{total.saved:.6f}", "")
    return t


# C0 controls, DEL and C1 controls: a terminal acts on them (ESC starts a sequence that
# can clear the screen or rewrite lines already shown), so they are shown, never sent.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(value: str) -> Text:
    """A value read from a topic (anyone who can post may have written it) as plain text
    for the terminal: no markup, and every control character spelled out (``\x1b``)."""
    return Text(_CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", value))


def _cells(name: str, r: Totals) -> list[str | Text]:
    return [
        shown(name), str(r.requests), str(r.errors), str(r.closed),
        f"{r.latency_ms / max(1, r.requests):.0f}",
        f"{r.billed_input_tokens}/{r.billed_output_tokens}",
        f"{r.cost:.6f}", f"{r.direct:.6f}", rate_text(r.save_rate), str(r.cache_hits),
        str(r.coalesced), str(r.batched), str(r.batch_api), str(r.degraded),
    ]  # fmt: skip


@dataclass
class Calls:
    """Vendor calls of one (vendor, model), each attempt counted, fallbacks included."""

    calls: int = 0
    errors: int = 0
    latency_ms: float = 0.0  # summed; shown as the mean
    cost: float = 0.0

    def add(self, ok: bool, latency_ms: float, cost: float) -> None:
        self.calls += 1
        self.errors += not ok
        self.latency_ms += latency_ms
        self.cost += cost


@dataclass
class VendorCalls:
    """``relay.health`` added up by model, within the report's period."""

    since_ms: int | None = None
    until_ms: int | None = None
    rows: dict[str, Calls] = field(default_factory=lambda: defaultdict(Calls))
    unreadable: int = 0

    def add(self, value: bytes | None) -> None:
        try:
            batch = HealthBatch.model_validate(orjson.loads(value or b""))
        except Exception:
            self.unreadable += 1
            return
        for ev in batch.events:
            if within(ev.ts_ms, self.since_ms, self.until_ms):
                self.rows[f"{ev.vendor}/{ev.model}"].add(ev.ok, ev.latency_ms, ev.cost)


def calls_table(rows: dict[str, Calls]) -> Table:
    t = Table(
        title="vendor calls by model",
        caption="every attempt, fallbacks included (relay.health, kept a day)",
    )
    for col in ("model", "calls", "errors", "error rate", "mean ms", "cost $"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1].calls):
        t.add_row(
            shown(name), str(r.calls), str(r.errors), f"{r.errors / max(1, r.calls):.1%}",
            f"{r.latency_ms / max(1, r.calls):.0f}", f"{r.cost:.6f}",
        )  # fmt: skip
    return t


CHART_FROM_MS = 946_684_800_000  # 2000-01-01
CHART_TO_MS = 4_102_444_800_000  # 2100-01-01


def draw(minutes: dict[int, list[float]], path: Path) -> None:
    """The chart of cost per minute (``minute -> [cost, direct]``), added up over time:
    the area where the relay cost less than direct calls is shaded as saved, and where it
    cost more (a fallback to a pricier model) as extra cost.  Lines stamped outside any
    plausible time (a producer's broken clock) are not in it: they would stretch the axis
    over centuries, or past what a datetime can hold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not minutes:
        raise ValueError("no ledger line has a plausible time to chart")
    import matplotlib.dates as mdates

    order = sorted(minutes)
    times = [datetime.fromtimestamp(m * 60, UTC) for m in order]
    # Both lines start from zero a minute before the first line and hold their last
    # level a minute after the last, so even one line draws a step and its saved area.
    minute = timedelta(minutes=1)
    times = [times[0] - minute, *times, times[-1] + minute]
    paid, direct, p, d = [0.0], [0.0], 0.0, 0.0
    for m in order:
        p += minutes[m][0]
        d += minutes[m][1]
        paid.append(p)
        direct.append(d)
    paid.append(p)
    direct.append(d)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    # At least a few minutes of axis: lines all in one minute (a first run) would have
    # matplotlib widen a span of nothing to years, the step a hairline in the middle.
    pad = max(2 * minute, (times[-1] - times[0]) / 50)
    ax.set_xlim(times[0] - pad, times[-1] + pad)  # type: ignore[arg-type]
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("time (UTC)")
    steps = {"drawstyle": "steps-post", "marker": "." if len(order) < 50 else None}
    # matplotlib plots datetimes through its unit converters; its stubs only know numbers.
    ax.plot(times, direct, label="direct to vendors (Cost_direct)", color="#c44", **steps)  # type: ignore[arg-type]
    ax.plot(times, paid, label="through the relay (Cost_total)", color="#2a7", **steps)  # type: ignore[arg-type]
    _shade(ax, mdates.date2num(times), paid, direct)
    ax.set_ylabel("USD, cumulative")
    ax.set_title(f"Relay Station cost over time — SaveRate {rate_text(save_rate(p, d))}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _shade(ax: Axes, x: Any, paid: list[float], direct: list[float]) -> None:
    """Shade between the two step lines: green and "saved" where direct calls would have
    cost more, red and "extra cost" where the relay cost more; each only where it is."""
    import numpy as np

    # The steps as points (each level held to the next minute), so that a fill stops
    # where the lines cross, on the step that crosses, not a minute before or after.
    xs = np.repeat(np.asarray(x, dtype=float), 2)[1:]
    ps = np.repeat(np.asarray(paid), 2)[:-1]
    ds = np.repeat(np.asarray(direct), 2)[:-1]
    for where, color, label in (
        (ds > ps, "#2a7", "saved"),
        (ps > ds, "#c44", "extra cost (paid more than direct)"),
    ):
        if where.any():
            ax.fill_between(
                xs, ps, ds, where=where, interpolate=True, color=color, alpha=0.12, label=label
            )


def run(
    bootstrap: str,
    topic: str,
    partitions: int,
    by: str,
    png: Path | None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    health: tuple[str, int] | None = None,
) -> None:
    """Print the ledger's table by ``by`` (and, by model, the vendor calls of the
    ``health`` topic, name and partitions), and draw the chart to ``png`` if given."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)  # a report piped to a file keeps every column
    ledger = Ledger(by, since_ms, until_ms, charting=png is not None)
    feed(bootstrap, topic, partitions, since_ms, ledger.add)
    if ledger.unreadable:
        console.print(f"[yellow]{ledger.unreadable} unreadable lines on {topic} skipped[/yellow]")
    if ledger.repeated:
        console.print(f"[dim]{ledger.repeated} lines sent twice counted once[/dim]")
    if not ledger.rows:
        period = " in that period" if since_ms is not None or until_ms is not None else " yet"
        console.print(f"no events on {topic}{period}")
        return
    console.print(table(dict(ledger.rows), by))
    console.print(savings_table(dict(ledger.rows)))
    if by == "model" and health is not None:
        _print_calls(console, bootstrap, health, since_ms, until_ms)
    if png is not None:
        try:
            draw(ledger.minutes, png)
        except ValueError as err:
            console.print(f"[red]no chart: {escape(str(err))}[/red]")
            return
        except OSError as err:  # the file could not be written after all (a full disk)
            console.print(f"[red]no chart: {escape(str(png))}: {escape(err.strerror or '')}[/red]")
            raise SystemExit(1) from None
        console.print(f"chart: {png}")


def _print_calls(
    console: Console,
    bootstrap: str,
    health: tuple[str, int],
    since_ms: int | None,
    until_ms: int | None,
) -> None:
    topic, partitions = health
    calls = VendorCalls(since_ms, until_ms)
    try:
        feed(bootstrap, topic, partitions, since_ms, calls.add)
    except TopicMissing:
        console.print(f"[dim]no vendor calls: no topic {topic}[/dim]")
        return
    if calls.unreadable:
        console.print(f"[yellow]{calls.unreadable} unreadable messages on {topic} skipped[/yellow]")
    if calls.rows:
        console.print(calls_table(dict(calls.rows)))
    else:
        console.print(f"[dim]no vendor calls on {topic} in that period (it keeps a day)[/dim]")


class BeforeLedger(ValueError):
    """A ``--since``/``--until`` that is a date or span, but before 1970: said as such,
    not as one that could not be read."""


_SPAN = re.compile(r"(\d+)([mhd])")
_SPAN_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}


def moment_ms(given: str, now_ms: int) -> int:
    """``--since``/``--until`` as epoch milliseconds: a UTC date or time
    (``2026-12-01``, ``2026-12-01T12:00``) or a span back from now (``30m``, ``24h``,
    ``7d``)."""
    if span := _SPAN.fullmatch(given.strip()):
        at = now_ms - int(span[1]) * _SPAN_MS[span[2]]
    else:
        when = datetime.fromisoformat(given.strip())
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        at = int(when.timestamp() * 1000)
    if at < 0:
        raise BeforeLedger(f"{given!r} is before 1970: the ledger has nothing from then")
    return at
