"""The worker's Faust consumer runs on the worker's own event loop (streams.inloop)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from mode.threads import WorkerThread

from streams.inloop import RelayApp


async def app_on_new_topic(bootstrap: str, datadir: Path, partitions: int) -> RelayApp:
    """A RelayApp, and a topic named as it is with ``partitions`` partitions."""
    name = f"inloop-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, replication_factor=1)])
    finally:
        await admin.close()
    return RelayApp(
        name,
        broker=f"kafka://{bootstrap}",
        datadir=str(datadir),
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_partitions=partitions,
    )


async def test_agent_reads_a_topic_without_a_consumer_thread_and_stops_cleanly(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    app = await app_on_new_topic(kafka_bootstrap, tmp_path, partitions=2)
    name = app.conf.id
    topic = app.topic(name, key_serializer="raw", value_serializer="raw")
    received: list[bytes] = []
    got_all = asyncio.Event()
    sent = [f"message {i}".encode() for i in range(20)]

    async def reader(stream: object) -> None:
        async for value in stream:  # type: ignore[attr-defined]
            received.append(value)
            if len(received) == len(sent):
                got_all.set()

    app.agent(topic, name="reader")(reader)
    # A task of the test's own, on the same loop: stopping the app must leave it alone.
    bystander = asyncio.create_task(asyncio.sleep(3600))
    threads_before = {t.ident for t in threading.enumerate()}

    await app.start()
    try:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for value in sent:
                await producer.send_and_wait(name, value, key=value)
        finally:
            await producer.stop()
        await asyncio.wait_for(got_all.wait(), 60)
        started = [t for t in threading.enumerate() if t.ident not in threads_before]
        assert sorted(received) == sorted(sent)
        # Faust's aiokafka driver would run the consumer on a thread of its own.
        assert not [t for t in started if isinstance(t, WorkerThread)]
        assert app.consumer._thread.thread_loop is asyncio.get_running_loop()  # type: ignore[attr-defined]
    finally:
        await asyncio.wait_for(app.stop(), 30)
    assert not bystander.done()
    bystander.cancel()


async def test_a_consumer_closed_during_shutdown_leaves_no_fetcher_on_the_loop(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Faust closes the consumer this way on a rebalance while stopping; on a thread its
    loop took the fetcher down with it, here the fetcher must stop on its own."""
    app = await app_on_new_topic(kafka_bootstrap, tmp_path, partitions=1)
    name = app.conf.id
    topic = app.topic(name, key_serializer="raw", value_serializer="raw")

    async def reader(stream: object) -> None:
        async for _ in stream:  # type: ignore[attr-defined]
            pass

    app.agent(topic, name="reader")(reader)
    before = set(asyncio.all_tasks())
    await app.start()
    for _ in range(300):
        if app.consumer.assignment():
            break
        await asyncio.sleep(0.1)
    aiokafka_consumer = app.consumer._thread._consumer  # type: ignore[attr-defined]
    app.consumer.close()
    await asyncio.wait_for(app.stop(), 30)
    await asyncio.sleep(0.5)
    assert aiokafka_consumer._fetcher._closed
    left = [t for t in asyncio.all_tasks() - before if not t.done()]
    left = [t for t in left if t is not asyncio.current_task()]
    assert not [t for t in left if "Fetcher" in repr(t.get_coro())], left
