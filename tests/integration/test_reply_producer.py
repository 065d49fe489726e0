"""A reply to a topic deleted after the worker had sent to it (an ephemeral gateway's, at
its stop, with a slow request still running) holds up no offset commit: replies go on a
producer of their own, not on Faust's, which Faust flushes before every commit (where such
a reply used to wait out Faust's 20-minute request timeout, and every commit with it)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from streams.codec import encode
from streams.topics import Topics
from tests.integration.test_direct_producer import replies
from tests.integration.test_kafka_reply_topic_gone import request
from tests.support.stack import Simulator, Stack, example_config


async def committed(admin: AIOKafkaAdminClient, stack: Stack, tp: TopicPartition) -> int:
    offsets = await admin.list_consumer_group_offsets(Topics(stack.prefix).app_id)
    return offsets[tp].offset if tp in offsets else -1


async def test_a_reply_to_a_topic_deleted_meanwhile_holds_up_no_commit(
    stack_factory: Any, simulator: Simulator
) -> None:
    stack = stack_factory(example_config(simulator.url))
    gone, alive = (f"{stack.prefix}-{name}-{uuid.uuid4().hex[:6]}" for name in ("gone", "alive"))
    requests = f"{stack.prefix}.requests"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await admin.start()
    await producer.start()
    try:
        await admin.create_topics([NewTopic(gone, 1, 1), NewTopic(alive, 1, 1)])

        async def post(reply_to: str) -> Any:
            env = request(reply_to)
            return await producer.send_and_wait(requests, encode(env), key=env.prompt_hash.encode())

        await post(alive)
        assert len(await replies(stack, alive, want=1)) == 1
        # The worker's first writes to its tables' changelogs (the spend agent's, the
        # health agent's) add topics to its producers: each refreshes their metadata.
        await asyncio.sleep(3)
        await post(gone)  # the worker's producer now has the topic's metadata
        assert [r.kind for r in await replies(stack, gone, want=1)] == ["final"]

        # A slow request, its topic deleted while the vendor call runs: its answer goes to
        # a partition that has no leader any more.
        calls = simulator.stats()["total"]
        simulator.configure(latency_ms=3000)
        try:
            await post(gone)
            for _ in range(200):  # until the vendor has the call
                if simulator.stats()["total"] > calls:
                    break
                await asyncio.sleep(0.05)
        finally:
            simulator.configure(latency_ms=5)
        await admin.delete_topics([gone])
        await asyncio.sleep(4)  # the answer is sent, and stuck

        later = [await post(alive) for _ in range(3)]
        assert len(await replies(stack, alive, want=4)) == 4
        last = max(later, key=lambda sent: sent.offset)
        tp = TopicPartition(requests, last.partition)
        for _ in range(25):  # commits come every second
            if await committed(admin, stack, tp) > last.offset:
                break
            await asyncio.sleep(0.2)
        assert await committed(admin, stack, tp) > last.offset, "offset commits are held up"
    finally:
        await producer.stop()
        await admin.close()
