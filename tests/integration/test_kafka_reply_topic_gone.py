"""A reply topic deleted after the worker answered on it stays deleted: the worker's
metadata requests name every topic it ever sent to, and on a broker that creates topics
on first use (the embedded one does) each refresh used to make it again."""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.envelope import RequestEnvelope
from streams.codec import encode
from tests.integration.conftest import read_ledger
from tests.integration.test_direct_producer import replies
from tests.support.stack import Simulator, Stack, example_config


def request(reply_to: str) -> RequestEnvelope:
    return RequestEnvelope(
        correlation_id=uuid.uuid4().hex, reply_to=reply_to, tenant="demo", key_id="service",
        alias="gpt-4o-mini", prompt_hash=uuid.uuid4().hex, trace_id=uuid.uuid4().hex,
        deadline_ms=int((time.time() + 60) * 1000),
        body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": uuid.uuid4().hex}]},
    )  # fmt: skip


async def post(stack: Stack, env: RequestEnvelope) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        key = env.prompt_hash.encode()
        await producer.send_and_wait(f"{stack.prefix}.requests", encode(env), key=key)
    finally:
        await producer.stop()


async def test_a_deleted_reply_topic_is_not_made_again_by_the_worker(
    stack_factory: Any, simulator: Simulator
) -> None:
    stack = stack_factory(example_config(simulator.url))
    gone, never = f"{stack.prefix}-gone-{uuid.uuid4().hex[:6]}", f"{stack.prefix}-never"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(gone, 1, 1)])
        first = request(gone)
        await post(stack, first)
        assert [r.kind for r in await replies(stack, gone, want=1)] == ["final"]
        await admin.delete_topics([gone])  # as an ephemeral gateway's stop does

        # A reply to a topic that does not exist: the worker refreshes its metadata
        # (naming every topic it sent to) until it gives up, and meters the request.
        second = request(never)
        await post(stack, second)
        [line] = await read_ledger(stack, {second.trace_id}, timeout_s=40)
        assert line.correlation_id == second.correlation_id

        left = set(await admin.list_topics())
    finally:
        await admin.close()
    assert gone not in left, "the deleted topic stays deleted"
    assert never not in left, "nor is a reply_to that never existed made"
