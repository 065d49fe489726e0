"""Reading a DescribeGroups answer: are workers in the requests consumer group?"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.bus import _workers_in
from schemas.envelope import ReplyEvent


async def drained(bus: Any) -> None:
    """Until the bus has nothing left on its way to the producers (a line a failure's
    line hands on included)."""
    while running := [task for task in bus._background if not task.done()]:
        await asyncio.gather(*running, return_exceptions=True)


def described(error: int, state: str, members: list[Any]) -> list[Any]:
    return [SimpleNamespace(groups=[(error, "relay", state, "consumer", "faust", members, [])])]


def test_members_mean_workers_and_an_unknown_group_means_none() -> None:
    assert _workers_in(described(0, "Stable", [("member-1",)]))
    assert not _workers_in(described(0, "Dead", []))
    assert not _workers_in(described(0, "Empty", []))
    assert not _workers_in([])


def test_a_rebalance_counts_as_workers_rejoining() -> None:
    assert _workers_in(described(0, "PreparingRebalance", []))
    assert _workers_in(described(0, "CompletingRebalance", []))


def test_an_error_answer_cannot_tell_so_it_raises() -> None:
    with pytest.raises(RuntimeError):
        _workers_in(described(14, "", []))  # COORDINATOR_LOAD_IN_PROGRESS


async def test_a_ledger_line_the_producer_refuses_is_logged_never_a_client_s_500(caplog) -> None:
    from aiokafka.errors import KafkaTimeoutError

    from gateway.bus import Bus
    from schemas.envelope import UsageEvent
    from streams.topics import Topics

    class Refusing:
        async def send(self, *args: Any, **kwargs: Any) -> None:
            raise KafkaTimeoutError()

    bus = Bus("127.0.0.1:9", Topics("t"), "gw-1")  # never started
    await bus.ledger.stop()
    bus.ledger = Refusing()  # type: ignore[assignment]
    line = UsageEvent(event_id="e-lost", trace_id="t", tenant="a", key_id="k", alias="m")
    await bus.meter(line)  # does not raise
    await drained(bus)
    for kafka in (bus.producer, bus.consumer):  # never started: closed all the same
        await kafka.stop()
    assert "e-lost" in caplog.text and "not written" in caplog.text


async def test_a_request_metered_at_its_deadline_gets_no_second_line_when_it_fails_later(
    monkeypatch: Any,
) -> None:
    """The gateway writes the line of a request whose deadline passed; should the producer
    give up on its envelope afterwards (10 s on, in a broker outage), that is the same
    request failing twice, and one line is all it gets."""
    import asyncio
    import time

    from aiokafka.errors import KafkaTimeoutError

    import gateway.relay
    from gateway.bus import Bus
    from gateway.relay import Relay
    from schemas.config import load_config
    from schemas.errors import DeadlineExceeded
    from schemas.settings import Settings
    from streams.topics import Topics
    from tables.cache import L1Cache, ResponseCache
    from tests.support.envelopes import request_envelope
    from tests.support.gateway import EXAMPLE

    class Held:
        """The request producer: it takes the envelope, the delivery still pending."""

        def __init__(self) -> None:
            self.deliveries: list[asyncio.Future[object]] = []

        async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
            self.deliveries.append(asyncio.get_running_loop().create_future())
            return self.deliveries[-1]

    class Ledger:
        def __init__(self) -> None:
            self.lines: list[bytes] = []

        async def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
            self.lines.append(value)

    monkeypatch.setattr(gateway.relay, "REPLY_GRACE_S", 0.05)
    bus = Bus("127.0.0.1:9", Topics("t"), "gw-1")  # never started
    for kafka in (bus.producer, bus.consumer):
        await kafka.stop()
    await bus.ledger.stop()
    held, ledger = Held(), Ledger()
    bus.producer, bus.ledger = held, ledger  # type: ignore[assignment]
    relay = Relay(
        Settings(config=EXAMPLE), load_config(EXAMPLE), bus, ResponseCache(L1Cache(10), None)
    )
    env = request_envelope(
        reply_to=bus.reply_topic,
        gateway_meters_timeout=True,
        deadline_ms=int((time.time() + 0.1) * 1000),
    )
    with pytest.raises(DeadlineExceeded):
        await relay._through_kafka(env)
    held.deliveries[0].set_exception(KafkaTimeoutError())
    await asyncio.sleep(0.01)
    await drained(bus)
    assert [b"deadline_exceeded" in line for line in ledger.lines] == [True]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_reader_cancelled_as_a_reply_arrives_stops_and_meters_nothing(stream: bool) -> None:
    """A stream's client goes away (a load balancer cutting stalled connections) just as
    a chunk comes: the reader must stop there, not take the chunk, wait out the deadline
    on a queue nobody fills and then write a second ledger line for the request."""
    from gateway.relay import Relay
    from tests.support.envelopes import request_envelope
    from tests.support.gateway import gateway_app

    app, bus = gateway_app()
    relay: Relay = app.state.relay
    failures: list[str] = []

    async def meter_failure(env: object, code: str) -> None:
        failures.append(code)

    bus.meter_failure = meter_failure  # type: ignore[method-assign]
    env = request_envelope(stream=stream, deadline_ms=int((time.time() + 0.3) * 1000))
    queue: asyncio.Queue[ReplyEvent] = asyncio.Queue()
    reader = asyncio.ensure_future(relay._first(env, queue))
    await asyncio.sleep(0.01)  # waiting on the empty queue
    queue.put_nowait(ReplyEvent(correlation_id=env.correlation_id, kind="chunk", body={}))
    reader.cancel()  # in the same loop step as the reply
    with pytest.raises(asyncio.CancelledError):
        await reader  # (Python 3.11's wait_for took the chunk and dropped the cancel)
    assert failures == []


class Admin:
    """The admin client a look asks: its DescribeGroups answer, or the error it raises."""

    def __init__(self, answer: list[Any] | Exception) -> None:
        self.answer = answer
        self.closed = False

    async def describe_consumer_groups(self, group_ids: list[str]) -> list[Any]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def close(self) -> None:
        self.closed = True


async def _looked(answer: list[Any] | Exception) -> tuple[Any, Admin]:
    """A never-started gateway bus after one look for workers that got ``answer``, the
    last worker it saw 100 s ago."""
    from gateway.bus import Bus
    from streams.topics import Topics

    bus = Bus("127.0.0.1:9", Topics("t"), "gw-1")  # never started
    for kafka in (bus.producer, bus.consumer):
        await kafka.stop()
    await bus.ledger.stop()
    admin = Admin(answer)
    bus._admin = admin  # type: ignore[assignment]
    bus.worker_seen_at = bus.worker_sighted_at = time.monotonic() - 100
    await bus.look_for_workers()
    return bus, admin


def _gauge(name: str) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name)


async def test_a_broker_that_does_not_answer_is_said_yet_still_refuses_nobody() -> None:
    """A Kafka outage on a quiet relay must page (relay_broker_up 0, and no worker seen),
    while admission still lets requests try (a look that cannot tell refuses nobody)."""
    from aiokafka.errors import KafkaConnectionError

    bus, admin = await _looked(KafkaConnectionError("no broker"))
    assert _gauge("relay_broker_up") == 0
    assert (_gauge("relay_workers_missing_seconds") or 0) >= 100
    assert bus.workers_missing_s() < 1  # admission: seen, as before
    assert admin.closed and bus._admin is None  # the next look starts a fresh client


async def test_an_error_answer_says_the_broker_is_up_but_sees_no_worker() -> None:
    bus, admin = await _looked(described(14, "", []))  # COORDINATOR_LOAD_IN_PROGRESS
    assert _gauge("relay_broker_up") == 1
    assert (_gauge("relay_workers_missing_seconds") or 0) >= 100
    assert bus.workers_missing_s() < 1  # cannot tell: never refused on
    assert not admin.closed and bus._admin is admin


@pytest.mark.parametrize("members", [[("member-1",)], []])
async def test_a_broker_s_answer_says_whether_workers_are_there(members: list[Any]) -> None:
    bus, _ = await _looked(described(0, "Stable" if members else "Empty", members))
    assert _gauge("relay_broker_up") == 1
    missing = _gauge("relay_workers_missing_seconds") or 0
    assert (missing < 1) if members else (missing >= 100)
    assert (bus.workers_missing_s() < 1) == bool(members)


async def test_a_stop_lets_a_cancel_notice_on_its_way_reach_the_producer_first() -> None:
    """A client gone just before its gateway stops: the cancel notice, still waiting its
    turn for the producer, goes out before the producer stops, so the worker stops the
    vendor call instead of paying for an answer nobody reads."""
    import asyncio

    from gateway.bus import Bus
    from streams.topics import Topics
    from tests.support.envelopes import request_envelope

    class Slow:
        """The request producer, a moment to take each envelope; stopped, it takes none."""

        def __init__(self) -> None:
            self.sent: list[bytes] = []
            self.stopped = False

        async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
            await asyncio.sleep(0.05)
            if self.stopped:
                raise RuntimeError("the producer is stopped")
            self.sent.append(value)
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

        async def stop(self) -> None:
            self.stopped = True

    bus = Bus("127.0.0.1:9", Topics("t"), "gw-1")  # never started
    for kafka in (bus.producer, bus.consumer):
        await kafka.stop()
    await bus.ledger.stop()
    slow = Slow()
    bus.producer = slow  # type: ignore[assignment]
    bus.cancel(request_envelope(cancel=True, body={}))
    await bus.stop()
    assert len(slow.sent) == 1 and b'"cancel":true' in slow.sent[0]


class Ledger:
    """The ledger producer: each line takes a few loop turns to queue, and ``stop`` and
    ``keep`` are recorded."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.kept: list[Any] = []
        self.stopped = False

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        self.lines.append(value)

    def keep(self, lines: list[Any], why: str) -> bool:
        self.kept += lines
        return True

    async def stop(self) -> None:
        assert not self.stopped
        self.stopped = True


async def test_a_stop_waits_for_a_ledger_line_a_failure_hands_on_before_the_producer_stops() -> (
    None
):
    """``meter`` returns at once, the line on its way: a stop lets it (and the line a
    failure writes as the stop begins) reach the producer before it stops, nothing
    spilled, each line once."""
    from gateway.bus import Bus
    from schemas.envelope import UsageEvent
    from streams.topics import Topics
    from tests.support.envelopes import request_envelope

    bus = Bus("127.0.0.1:9", Topics("t"), "gw-1")  # never started
    for kafka in (bus.producer, bus.consumer):
        await kafka.stop()
    await bus.ledger.stop()
    ledger = Ledger()
    bus.ledger = ledger  # type: ignore[assignment]
    hit = UsageEvent(event_id="e-hit", trace_id="t", tenant="a", key_id="k", alias="m")
    await bus.meter(hit)
    assert ledger.lines == [], "handed on, not waited for"
    failed = asyncio.ensure_future(bus.meter_failure(request_envelope(), "no_worker"))
    await bus.stop()
    await failed
    assert len(ledger.lines) == 2 and b"e-hit" in ledger.lines[0]
    assert b"no_worker" in ledger.lines[1]
    assert ledger.kept == [] and ledger.stopped


async def test_a_reply_topic_made_earlier_with_three_partitions_is_read_on_all_three(
    monkeypatch: Any,
) -> None:
    """Workers key replies over every partition the reply topic has: a gateway reading
    partition 0 alone never heard two answers in three."""
    import gateway.bus
    from gateway.bus import Bus
    from streams import fetch_guard
    from streams.topics import Topics

    class Started:
        async def start(self) -> None: ...

    class Consumer(Started):
        assigned: list[Any] = []
        at_end: tuple[Any, ...] = ()

        def assign(self, tps: list[Any]) -> None:
            self.assigned = tps

        async def seek_to_end(self, *tps: Any) -> None:
            self.at_end = tps

    bus = Bus("127.0.0.1:9", Topics("t"), "gw-1")  # never started
    for kafka in (bus.producer, bus.consumer):
        await kafka.stop()
    await bus.ledger.stop()

    async def made(bootstrap: str, specs: list[Any], **_: Any) -> dict[str, int]:
        return {s.name: 3 if s.name == bus.reply_topic else s.partitions for s in specs}

    monkeypatch.setattr(gateway.bus, "ensure_topics", made)
    consumer = Consumer()
    bus.producer, bus.ledger, bus.consumer = Started(), Started(), consumer  # type: ignore[assignment]
    monkeypatch.setattr(bus, "_read", lambda: asyncio.sleep(0))
    monkeypatch.setattr(bus, "_watch_workers", lambda: asyncio.sleep(0))
    try:
        await bus.start()
        # and every fetch guarded: a batch it cannot read is stepped over (next test)
        assert fetch_guard._report is gateway.bus.skipped
    finally:
        fetch_guard.uninstall()
    assert [(tp.topic, tp.partition) for tp in consumer.assigned] == [
        ("t.replies.gw-1", p) for p in range(3)
    ]
    assert list(consumer.at_end) == consumer.assigned


async def test_a_reply_batch_that_cannot_be_read_is_stepped_over_logged_and_counted(
    caplog: Any,
) -> None:
    """Through aiokafka's own fetch classes, as the reply consumer reads: with the guard
    the gateway installs, the readable replies are handed over and the fetch position
    moves past the bad batch, instead of getmany() raising at the same offset for ever."""
    from aiokafka.consumer import fetcher
    from aiokafka.structs import TopicPartition
    from prometheus_client import REGISTRY

    from gateway.bus import skipped
    from streams import fetch_guard
    from tests.unit.test_kafka_fetch_guard import batch

    def counted() -> float:
        value = REGISTRY.get_sample_value("relay_replies_skipped_total", {"reason": "unreadable"})
        assert value is not None, "started at 0"
        return value

    before = counted()
    tp = TopicPartition("t.replies.gw-1", 0)
    data = batch(0, [b"a", b"b", b"c"], poison=1) + batch(3, [b"d"])
    fetch_guard.install(skipped)
    try:
        records = fetcher.PartitionRecords(
            tp, fetcher.MemoryRecords(data), [], 0, None, None, True, 0
        )
        assert [r.value for r in records] == [b"a", b"d"]
    finally:
        fetch_guard.uninstall()
    assert records.next_fetch_offset == 4
    assert counted() == before + 2, "the records not read: offsets 1 and 2"
    assert "skipped t.replies.gw-1[0]@1-2" in caplog.text
