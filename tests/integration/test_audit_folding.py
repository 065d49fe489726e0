"""A flood of refusals folds on the audit topic: the first line at once, then one line
per window saying how many more there were; nothing is lost, nothing floods."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition

from gateway.bus import Bus
from schemas.envelope import AuditEvent
from streams.topics import Topics


async def audit_lines(bootstrap: str, topics: Topics, want: int) -> list[AuditEvent]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    tp = TopicPartition(topics.audit.name, 0)
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)
    events: list[AuditEvent] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while len(events) < want and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                events += [AuditEvent.model_validate_json(r.value or b"") for r in records]
        await asyncio.sleep(0.5)  # and nothing more after them
        for records in (await consumer.getmany(timeout_ms=500)).values():
            events += [AuditEvent.model_validate_json(r.value or b"") for r in records]
    finally:
        await consumer.stop()
    return events


async def test_a_flood_of_bad_keys_costs_two_lines_per_window(kafka_bootstrap: str) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    bus = Bus(kafka_bootstrap, topics, "gw-fold", ephemeral=True, audit_window_s=1.0)
    await bus.start()
    try:
        for i in range(50):  # a script trying a new key each time, from one address
            await bus.audit(
                "auth_failed",
                detail="unknown relay key",
                key_fingerprint=f"{i:012x}",
                client="10.0.0.7",
                path="/v1/chat/completions",
            )
        await bus.audit("auth_failed", detail="no relay key", client="10.0.0.8", path="/v1/models")
        events = await audit_lines(kafka_bootstrap, topics, want=3)
    finally:
        await bus.stop()
    first, other, summary = sorted(events, key=lambda e: (e.ts_ms, e.repeats))
    assert (first.repeats, first.key_fingerprint, first.client) == (1, f"{0:012x}", "10.0.0.7")
    assert (other.detail, other.client, other.repeats) == ("no relay key", "10.0.0.8", 1)
    assert (summary.detail, summary.client, summary.repeats) == (
        "unknown relay key",
        "10.0.0.7",
        49,
    )
    assert summary.key_fingerprint is None, "the folded line names no single key"
