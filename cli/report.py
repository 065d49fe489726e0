"""`relay report`: read the cost ledger from Kafka and print where the money went.

The ledger (``relay.usage``) is replayed from its first offset, so a report can be
rebuilt at any time.  SaveRate = 1 - Cost_total / Cost_direct, where Cost_direct prices
every answered request at its alias's first candidate, as if sent straight to it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from schemas.envelope import UsageEvent

M = TypeVar("M", bound=BaseModel)


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    direct: float = 0.0
    cache_hits: int = 0
    coalesced: int = 0
    batched: int = 0
    batch_api: int = 0
    degraded: int = 0
    latency_ms: float = 0.0  # summed; shown as the mean

    def add(self, ev: UsageEvent) -> None:
        self.requests += 1
        self.errors += ev.status == "error"
        self.input_tokens += ev.usage.input_tokens
        self.output_tokens += ev.usage.output_tokens
        self.cost += ev.cost
        self.direct += ev.direct_cost
        self.cache_hits += ev.cache_hit
        self.coalesced += ev.coalesced
        self.batched += ev.batched
        self.batch_api += ev.batch_api
        self.degraded += ev.degraded is not None
        self.latency_ms += ev.latency_ms

    @property
    def save_rate(self) -> float:
        return 1 - self.cost / self.direct if self.direct > 0 else 0.0


class TopicMissing(Exception):
    """The topic to read is not on this Kafka (a wrong prefix, or nothing ran yet)."""


@dataclass
class Read(Generic[M]):
    """What a topic held: the messages that parse, and how many did not."""

    events: list[M]
    unreadable: int = 0


async def read_topic(bootstrap: str, topic: str, partitions: int, model: type[M]) -> Read[M]:
    """Every message on ``topic`` that parses as ``model``, from the first offset to the end
    as of now (one that does not, foreign or damaged, is counted and skipped).  The
    partitions are the topic's own; one that does not exist raises ``TopicMissing``
    (rather than reading it into being, shaped by the broker's defaults)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    read: Read[M] = Read([])
    try:
        await consumer.start()
        if topic not in await consumer.topics():
            raise TopicMissing(f"no topic {topic} on the Kafka at {bootstrap}")
        found = consumer.partitions_for_topic(topic) or set(range(partitions))
        parts = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        with Progress(transient=True) as progress:
            task = progress.add_task(f"reading {topic}", total=sum(end.values()) or 1)
            while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for r in records:
                        try:
                            read.events.append(model.model_validate(orjson.loads(r.value)))
                        except Exception:
                            read.unreadable += 1
                    progress.advance(task, len(records))
    finally:
        await consumer.stop()
    return read


async def read_ledger(bootstrap: str, topic: str, partitions: int) -> Read[UsageEvent]:
    """Every event on the ledger, each once: a line a producer sent twice (a retry after
    a lost acknowledgement) carries the same ``event_id``."""
    read = await read_topic(bootstrap, topic, partitions, UsageEvent)
    once: dict[str, UsageEvent] = {}
    for event in read.events:
        once.setdefault(event.event_id, event)
    return Read(list(once.values()), read.unreadable)


def group(events: list[UsageEvent], by: str) -> dict[str, Totals]:
    out: dict[str, Totals] = defaultdict(Totals)
    for ev in events:
        key = {
            "tenant": ev.tenant,
            "alias": ev.alias,
            "tag": ev.cost_tag or "-",
            "model": f"{ev.vendor or '-'}/{ev.vendor_model or '-'}",
            "key": f"{ev.tenant}/{ev.key_id}",
        }[by]
        out[key].add(ev)
    return dict(out)


def table(rows: dict[str, Totals], by: str) -> Table:
    t = Table(title=f"cost by {by}")
    for col in (by, "requests", "errors", "mean ms", "tokens in/out", "cost $", "direct $",
                "SaveRate", "cache", "coalesced", "batched", "batch API", "degraded"):  # fmt: skip
        t.add_column(col, justify="left" if col == by else "right")
    total = Totals()
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1].cost):
        t.add_row(*_cells(name, r))
        for field in Totals.__dataclass_fields__:
            setattr(total, field, getattr(total, field) + getattr(r, field))
    t.add_section()
    t.add_row(*_cells("total", total))
    return t


def _cells(name: str, r: Totals) -> list[str]:
    return [
        name, str(r.requests), str(r.errors), f"{r.latency_ms / max(1, r.requests):.0f}",
        f"{r.input_tokens}/{r.output_tokens}",
        f"{r.cost:.6f}", f"{r.direct:.6f}", f"{r.save_rate:.1%}", str(r.cache_hits),
        str(r.coalesced), str(r.batched), str(r.batch_api), str(r.degraded),
    ]  # fmt: skip


CHART_FROM_MS = 946_684_800_000  # 2000-01-01
CHART_TO_MS = 4_102_444_800_000  # 2100-01-01


def _ts(event: UsageEvent) -> int:
    return event.ts_ms


def chart(events: list[UsageEvent], path: Path) -> None:
    """Cumulative cost against what direct calls would have cost, over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A line stamped outside any plausible time (a producer's broken clock) would
    # stretch the axis over centuries, or past what a datetime can hold.
    events = sorted((e for e in events if CHART_FROM_MS <= e.ts_ms < CHART_TO_MS), key=_ts)
    if not events:
        raise ValueError("no ledger line has a plausible time to chart")
    times = [datetime.fromtimestamp(e.ts_ms / 1000, UTC) for e in events]
    # Both lines start from zero at the first event, so even one event draws a step.
    times = times[:1] + times
    paid, direct, p, d = [0.0], [0.0], 0.0, 0.0
    for e in events:
        p += e.cost
        d += e.direct_cost
        paid.append(p)
        direct.append(d)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    steps = {"drawstyle": "steps-post", "marker": "." if len(events) < 50 else None}
    # matplotlib plots datetimes through its unit converters; its stubs only know numbers.
    ax.plot(times, direct, label="direct to vendors (Cost_direct)", color="#c44", **steps)  # type: ignore[arg-type]
    ax.plot(times, paid, label="through the relay (Cost_total)", color="#2a7", **steps)  # type: ignore[arg-type]
    ax.fill_between(times, paid, direct, color="#2a7", alpha=0.12, label="saved", step="post")  # type: ignore[arg-type]
    ax.set_ylabel("USD, cumulative")
    rate = 1 - p / d if d else 0.0
    ax.set_title(f"Relay Station cost over time — SaveRate {rate:.1%}")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(bootstrap: str, topic: str, partitions: int, by: str, png: Path | None) -> None:
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)  # a report piped to a file keeps every column
    read = asyncio.run(read_ledger(bootstrap, topic, partitions))
    if read.unreadable:
        console.print(f"[yellow]{read.unreadable} unreadable lines on {topic} skipped[/yellow]")
    if not read.events:
        console.print(f"no events on {topic} yet")
        return
    console.print(table(group(read.events, by), by))
    if png is not None:
        try:
            chart(read.events, png)
        except ValueError as err:
            console.print(f"[red]no chart: {err}[/red]")
            return
        console.print(f"chart: {png}")
