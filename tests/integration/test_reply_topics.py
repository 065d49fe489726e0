"""Reply topics: a gateway with a made-up instance id removes its own on a clean stop."""

from __future__ import annotations

import uuid

from gateway.bus import Bus
from streams.topics import Topics
from tests.integration.conftest import topic_names


async def test_an_ephemeral_gateway_deletes_its_reply_topic_and_a_named_one_keeps_it(
    kafka_bootstrap: str,
) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    ephemeral = Bus(kafka_bootstrap, topics, "made-up", ephemeral=True)
    named = Bus(kafka_bootstrap, topics, "gateway-1")
    for bus in (ephemeral, named):
        await bus.start()
    assert {ephemeral.reply_topic, named.reply_topic} <= await topic_names(kafka_bootstrap)
    for bus in (ephemeral, named):
        await bus.stop()
    left = await topic_names(kafka_bootstrap)
    assert ephemeral.reply_topic not in left
    assert named.reply_topic in left, "a configured instance comes back to its topic"
