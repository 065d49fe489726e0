"""The worker's outputs when the broker fails them: a refused answer is followed by a
small error its waiter can hear at once, a ledger line written while no producer can
start is spilled, and a health outcome that could not be sent is logged by the relay."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
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


class OwnReplies:
    """The sink's reply producer (``streams.replies.Replies``), sending on ``producer``."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer

    async def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        return await self.producer.send(topic, key, value, None, None, None)  # type: ignore[no-any-return]

    async def close(self) -> bool:
        return True


def sink_on(producer: Any, spill: Path | None = None, replies: Any = None) -> KafkaSink:
    """A sink whose Faust producer is ``producer``, and whose replies go on it too unless
    ``replies`` is given."""
    app = SimpleNamespace(producer=producer)
    replies = replies if replies is not None else OwnReplies(producer)
    return KafkaSink(app, Topics("relay"), None, "127.0.0.1:9", spill, replies=replies)  # type: ignore[arg-type]


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


class Leaderless:
    """Cluster metadata after a topic was deleted: its partition has no leader."""

    def leader_for_partition(self, tp: Any) -> None:
        return None


def replies_with_a_deleted_topic(monkeypatch: Any) -> Any:
    """The sink's real reply producer (``streams.replies``), its metadata still listing a
    reply topic whose partition has lost its leader: the topic was deleted after the
    producer had cached it, so a send queues the reply and nothing can ever take it."""
    from aiokafka import AIOKafkaProducer

    from streams.replies import Replies, reply_producer

    replies = Replies("127.0.0.1:9")
    producer: AIOKafkaProducer = reply_producer("127.0.0.1:9")

    async def cached(topic: str) -> None:
        return None

    monkeypatch.setattr(producer.client, "_wait_on_metadata", cached)
    monkeypatch.setattr(producer, "_partition", lambda *args: 0)
    producer._message_accumulator._cluster = Leaderless()
    replies.producer = producer  # (as started)
    return replies


async def test_a_reply_to_a_deleted_topic_holds_up_no_flush_of_fausts_and_expires_soon(
    monkeypatch: Any,
) -> None:
    """Replies go on the sink's own producer, never Faust's: Faust flushes its producer
    before every offset commit and at each rebalance, and a reply stuck there (its topic
    gone) froze the worker's commits for Faust's 20-minute request timeout.  On its own
    producer the stuck reply expires after REPLY_TIMEOUT_MS, and then its waiter is told."""
    from aiokafka.errors import KafkaError

    from streams.replies import REPLY_TIMEOUT_MS

    faust_producer = Producer()
    replies = replies_with_a_deleted_topic(monkeypatch)
    sink = sink_on(faust_producer, replies=replies)
    final = ReplyEvent(correlation_id="c1", kind="final", body={"text": "late"})
    await asyncio.wait_for(sink.reply("relay.replies.gone", final), 1)
    assert faust_producer.delivered == [], "nothing on Faust's producer"
    accumulator = replies.producer._message_accumulator
    [batch] = [b for batches in accumulator._batches.values() for b in batches]
    assert batch._ttl == REPLY_TIMEOUT_MS / 1000 <= 30, "not Faust's 1200 s"

    nodes, unknown_leaders = accumulator.drain_by_nodes(ignore_nodes=set())
    assert not nodes and unknown_leaders, "no leader: the batch waits"
    batch._ctime -= REPLY_TIMEOUT_MS / 1000 + 1  # its time is up
    accumulator.drain_by_nodes(ignore_nodes=set())
    assert isinstance(batch.future.exception(), KafkaError)  # expired: the broker is not asked
    await asyncio.sleep(0.01)  # the sink tells the waiter: a small error, on the same producer
    [told] = [b for batches in accumulator._batches.values() for b in batches]
    assert told is not batch and told.tp.topic == "relay.replies.gone"
    assert faust_producer.delivered == []
    assert await replies.close(0.01) is False  # (the notice is as stuck)


async def test_the_notice_of_a_lost_answer_is_given_up_after_reply_send_s(
    monkeypatch: Any, caplog: Any
) -> None:
    """The error sent after an answer the broker failed goes to the same topic, which may
    be gone: its send, which would ask the broker for the topic's metadata for the reply
    producer's whole request timeout, is given up after REPLY_SEND_S as the handler's are."""
    monkeypatch.setattr("streams.wiring.REPLY_SEND_S", 0.05)
    answered: list[str] = []

    class Hanging:
        async def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
            if answered:
                await asyncio.sleep(3600)  # the notice: its topic's metadata never comes
            answered.append(topic)
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(MessageSizeTooLargeError("RecordTooLarge"))
            return failed

    caplog.set_level(logging.WARNING)
    sink = sink_on(Producer(), replies=Hanging())
    await sink.reply("relay.replies.gone", ReplyEvent(correlation_id="c1", kind="final"))
    await asyncio.sleep(0.2)
    assert not sink._tasks, "the notice's task ended"
    assert any("could not be sent" in r.getMessage() for r in caplog.records)


async def test_replies_still_held_at_stop_are_said_lost_and_the_close_says_so(
    monkeypatch: Any, caplog: Any
) -> None:
    """At stop the reply producer delivers what it holds within its grace, else drops it
    and says so: the sink's close returns False (and the worker's last commit is made all
    the same: their requests' offsets were committed as they were taken)."""
    caplog.set_level(logging.ERROR)
    replies = replies_with_a_deleted_topic(monkeypatch)
    sink = sink_on(Producer(), replies=replies)
    await sink.reply("relay.replies.gone", ReplyEvent(correlation_id="c1", kind="final"))
    monkeypatch.setattr(replies, "close", partial(type(replies).close, replies, 0.05))
    assert await asyncio.wait_for(sink.close(), 5) is False
    assert any("replies" in r.getMessage() and "lost" in r.getMessage() for r in caplog.records)
    from aiokafka.errors import ProducerClosed

    with pytest.raises(ProducerClosed):
        await replies.send("relay.replies.g", b"c2", b"{}")


async def test_a_sink_that_sent_no_reply_closes_delivered() -> None:
    from streams.replies import Replies

    assert await sink_on(Producer(), replies=Replies("127.0.0.1:9")).close() is True
