"""The worker's outputs when the broker fails them: a refused answer is followed by a
small error its waiter can hear at once, a ledger line written while no producer can
start is spilled, and a health outcome that could not be sent is logged by the relay."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

import streams.producers
from schemas.envelope import HealthEvent, ReplyEvent, UsageEvent
from streams.topics import Topics
from streams.wiring import KafkaSink


class Producer:
    """Faust's producer: ``send`` queues and returns the delivery's future, which fails
    for a value over ``limit`` bytes (the broker's RecordTooLarge)."""

    def __init__(self, limit: int = 1_000) -> None:
        self.limit = limit
        self.delivered: list[tuple[str, dict[str, Any]]] = []

    async def send(self, topic, key, value, partition, timestamp, headers):  # type: ignore[no-untyped-def]
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if len(value) > self.limit:
            delivery.set_exception(MessageSizeTooLargeError("RecordTooLarge"))
        else:
            self.delivered.append((topic, orjson.loads(value)))
            delivery.set_result(None)
        return delivery


def sink_on(producer: Any, spill: Path | None = None) -> KafkaSink:
    app = SimpleNamespace(producer=producer)
    return KafkaSink(app, Topics("relay"), None, "127.0.0.1:9", spill)  # type: ignore[arg-type]


async def test_an_answer_the_broker_refuses_is_followed_by_an_error_its_waiter_hears() -> None:
    producer = Producer(limit=1_000)
    sink = sink_on(producer)
    large = ReplyEvent(correlation_id="c1", kind="final", body={"text": "x" * 5_000})
    await sink.reply("service.replies", large)
    await asyncio.sleep(0.01)
    [(topic, told)] = producer.delivered
    assert topic == "service.replies" and told["kind"] == "error"
    assert told["correlation_id"] == "c1" and "could not be passed back" in told["error"]["message"]


async def test_a_chunk_the_broker_refuses_is_reported_to_the_handler_not_dropped() -> None:
    """A stream's chunk refused after the broker took it: the handler hears of it (it
    knows the waiter, to tell it and meter it failed); a degraded notice, with no body,
    changes nothing."""
    producer = Producer(limit=1_000)
    sink = sink_on(producer)
    lost: list[tuple[ReplyEvent, BaseException]] = []
    sink.on_chunk_lost = lambda event, exc: lost.append((event, exc))
    large = ReplyEvent(correlation_id="c1", kind="chunk", seq=2, body={"text": "x" * 5_000})
    await sink.reply("relay.replies.g", large)
    await sink.reply("relay.replies.g", ReplyEvent(correlation_id="c1", kind="chunk", seq=3))
    await asyncio.sleep(0.01)
    [(event, exc)] = lost
    assert event is large and isinstance(exc, MessageSizeTooLargeError)
    assert [told["kind"] for _, told in producer.delivered] == ["chunk"], "the handler tells"


async def test_a_ledger_line_written_while_no_producer_can_start_is_spilled(
    tmp_path: Path, monkeypatch: Any
) -> None:
    async def cannot_bootstrap(self: streams.producers.BackgroundProducer) -> None:
        raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9)]")

    monkeypatch.setattr(streams.producers.BackgroundProducer, "start", cannot_bootstrap)
    spill = tmp_path / "spill"
    sink = sink_on(Producer(), spill)
    line = UsageEvent(event_id="e-paid", trace_id="t", tenant="a", key_id="k", alias="m", cost=1.5)
    await sink.usage(line)
    kept = b"".join(p.read_bytes() for p in spill.glob("*"))
    assert b"e-paid" in kept


async def test_a_health_outcome_that_could_not_be_sent_is_logged_by_the_relay(caplog) -> None:
    class Refusing:
        async def send(self, *args: Any, **kwargs: Any) -> None:
            raise ProducerSendError("Error while sending: KafkaTimeoutError()")

    caplog.set_level(logging.WARNING)
    sink = sink_on(Refusing())
    failed = HealthEvent(vendor="a", model="m", ok=False, latency_ms=5, error_code="vendor_error")
    await sink.health(failed)  # a failure goes at once, on a task of its own
    await asyncio.sleep(0.01)
    assert any(
        r.name == "relay.worker" and "could not be sent" in r.getMessage() for r in caplog.records
    )


async def test_lines_a_producer_kept_without_starting_are_sent_by_the_next_one(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Kept in a file of their own and let go: the next producer that starts claims it."""
    sent: list[bytes] = []

    async def queued(self: Any, line: Any) -> None:
        sent.append(line[2])

    producer = streams.producers.BackgroundProducer("127.0.0.1:9", tmp_path)
    assert producer.keep([("relay.usage", b"a", b'{"event_id":"e-1"}')], "no broker")
    monkeypatch.setattr(streams.producers.BackgroundProducer, "_queue", queued)
    nxt = streams.producers.BackgroundProducer("127.0.0.1:9", tmp_path)
    await nxt._resend_spilled()
    assert sent == [b'{"event_id":"e-1"}']


async def test_a_ledger_line_naming_a_tenant_or_alias_not_configured_makes_no_series_of_it(
    monkeypatch: Any,
) -> None:
    """An envelope put straight on the requests topic can name any tenant and alias: its
    refusal's ledger line is counted under ``unknown``, not as series of its own (six
    samples each, kept for as long as the worker runs)."""
    from prometheus_client import REGISTRY

    app = SimpleNamespace(producer=Producer())
    sink = KafkaSink(app, Topics("relay"), None, "127.0.0.1:9", tenants={"acme"}, aliases={"m"})  # type: ignore[arg-type]

    async def sent(*args: Any) -> None:
        pass

    monkeypatch.setattr(sink, "_send_later", sent)
    value = REGISTRY.get_sample_value
    unknown = {"tenant": "unknown", "alias": "unknown"}
    before = value("relay_worker_cost_usd_total", unknown) or 0.0
    made_up = UsageEvent(
        event_id="e1", trace_id="t", tenant="t-made-up", key_id="k", alias="a-made-up", cost=0.5
    )
    await sink.usage(made_up)
    await sink.usage(made_up.model_copy(update={"tenant": "acme"}))
    await sink.usage(made_up.model_copy(update={"tenant": "acme", "alias": "m"}))
    names = {
        (s.labels.get("tenant"), s.labels.get("alias"))
        for m in REGISTRY.collect()
        if m.name.startswith("relay_worker")
        for s in m.samples
    }
    assert not any("made-up" in str(n) for n in names)
    assert value("relay_worker_cost_usd_total", unknown) == before + 0.5
    assert value("relay_worker_cost_usd_total", {"tenant": "acme", "alias": "unknown"}) == 0.5
    assert value("relay_worker_cost_usd_total", {"tenant": "acme", "alias": "m"}) == 0.5
