"""A malformed message on the request topic goes to the dead-letter topic; the worker goes on."""

from __future__ import annotations

import uuid

import openai
import orjson
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import dead_letters
from tests.support.stack import DEMO_KEY, Stack


async def test_garbage_is_dead_lettered_and_the_worker_keeps_serving(relay: Stack):
    marker = uuid.uuid4().hex
    producer = AIOKafkaProducer(bootstrap_servers=relay.bootstrap, max_request_size=4 << 20)
    await producer.start()
    try:
        await producer.send_and_wait(
            f"{relay.prefix}.requests", f"not json {marker}".encode(), key=b"x"
        )
        await producer.send_and_wait(
            f"{relay.prefix}.requests", orjson.dumps({"correlation_id": marker}), key=b"y"
        )
        # Well formed, but no reply could go where it says: not a topic name, or the
        # relay's own ledger (a reply there would be read as a ledger line).
        for reply_to in ("not a topic!", f"{relay.prefix}.usage"):
            envelope = {
                "correlation_id": uuid.uuid4().hex, "reply_to": reply_to, "tenant": "demo",
                "key_id": "demo", "alias": "gpt-4o-mini", "prompt_hash": marker,
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
                "deadline_ms": 2**41, "trace_id": marker,
            }  # fmt: skip
            await producer.send_and_wait(
                f"{relay.prefix}.requests", orjson.dumps(envelope), key=marker.encode()
            )
        # Large and unreadable: kept in part, never grown past what the topic takes.
        large = orjson.dumps({"correlation_id": marker, "pad": '"' * 700_000})
        await producer.send_and_wait(f"{relay.prefix}.requests", large, key=b"z")
    finally:
        await producer.stop()

    client = openai.AsyncOpenAI(base_url=f"{relay.url}/v1", api_key=DEMO_KEY, max_retries=0)
    answer = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"still there? {marker}"}]
    )
    assert answer.choices[0].message.content

    letters = await dead_letters(relay, marker, 5, timeout_s=15)
    assert len(letters) == 5, "every bad message was kept, with where it came from"
    assert sum("should match pattern" in d.error for d in letters) == 1  # not a topic name
    assert sum("relay's own topic" in d.error for d in letters) == 1
    assert all(d.topic == f"{relay.prefix}.requests" for d in letters)
    assert all(d.partition is not None and d.offset is not None for d in letters)
    assert any("not json" in d.value for d in letters)
    assert all(d.error for d in letters)
    cut = [d for d in letters if d.truncated]
    assert len(cut) == 1 and cut[0].size == len(large) and len(cut[0].value) <= 64 * 1024
