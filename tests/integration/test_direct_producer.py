"""A service posting envelopes straight to the request topic, with its own reply topic:
answered there like a gateway, metered once — also when it posts the same envelope twice
(a producer's retry), and also with a body nested deeper than pydantic's parser goes."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.envelope import ReplyEvent, RequestEnvelope
from streams.codec import encode
from tests.integration.test_batch_api import ledger_by_tag
from tests.support.stack import Stack


def envelope(stack: Stack, reply_to: str, tag: str, body: dict[str, Any]) -> RequestEnvelope:
    return RequestEnvelope(
        correlation_id=uuid.uuid4().hex,
        reply_to=reply_to,
        tenant="demo",
        key_id="service",
        alias="gpt-4o-mini",
        body=body,
        prompt_hash=uuid.uuid4().hex,
        deadline_ms=int((time.time() + 30) * 1000),
        trace_id=uuid.uuid4().hex,
        cost_tag=tag,
    )


async def replies(stack: Stack, topic: str, want: int, timeout_s: float = 20) -> list[ReplyEvent]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    got: list[ReplyEvent] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline and len(got) < want:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                got += [ReplyEvent.model_validate_json(r.value or b"") for r in records]
    finally:
        await consumer.stop()
    return got


async def test_an_envelope_posted_twice_is_answered_and_metered_once(relay: Stack) -> None:
    tag, topic = uuid.uuid4().hex, f"service-replies-{uuid.uuid4().hex[:8]}"
    deep: Any = "bottom"
    for _ in range(230):  # deeper than pydantic's JSON parser nests, within orjson's
        deep = [deep]
    twice = envelope(relay, topic, tag, {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": f"once please {tag}"}]})  # fmt: skip
    nested = envelope(relay, topic, tag, {"model": "gpt-4o-mini", "metadata": {"deep": deep},
        "messages": [{"role": "user", "content": f"deep {tag}"}]})  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=relay.bootstrap)
    await producer.start()
    try:
        for env in (twice, twice, nested):
            key = env.prompt_hash.encode()
            await producer.send_and_wait(f"{relay.prefix}.requests", encode(env), key=key)
    finally:
        await producer.stop()
    got = await replies(relay, topic, want=3, timeout_s=20)
    finals = [e for e in got if e.kind == "final"]
    assert sorted(e.correlation_id for e in finals) == sorted(
        [twice.correlation_id, nested.correlation_id]
    ), "each request answered once, the deep one too (not dead-lettered)"
    lines = await ledger_by_tag(relay, tag, count=3, timeout_s=10)
    assert sorted(line.trace_id for line in lines) == sorted([twice.trace_id, nested.trace_id])
