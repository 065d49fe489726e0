"""ensure_topics on a real broker: a refused topic fails the start by name and is not made
anyway with the broker's defaults; a topic made earlier with other configs is reported."""

from __future__ import annotations

import logging
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.topics import TopicSpec, TopicsRefused, ensure_topics
from tests.integration.conftest import topic_names


async def test_a_refused_topic_fails_loudly_and_is_not_made_with_defaults(
    kafka_bootstrap: str,
) -> None:
    """More replicas than the cluster has brokers: refused.  The wait for leaders that
    followed used to name the topic in a metadata request, which a broker that creates
    topics on first use (the embedded one does) answered by making it: 1 partition, the
    broker's retention."""
    brokers = await _brokers(kafka_bootstrap)
    name = f"t{uuid.uuid4().hex[:8]}.usage"
    spec = TopicSpec(name, 4, {"retention.ms": str(400 * 24 * 3600 * 1000)})
    with pytest.raises(TopicsRefused) as refused:
        await ensure_topics(kafka_bootstrap, [spec], replication=brokers + 1)
    assert name in str(refused.value)
    assert "InvalidReplicationFactorError" in str(refused.value)
    assert name not in await topic_names(kafka_bootstrap)


async def test_a_topic_made_earlier_with_another_retention_is_reported(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"t{uuid.uuid4().hex[:8]}.audit"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs={"retention.ms": "1000"})])
    finally:
        await admin.close()
    spec = TopicSpec(name, 1, {"retention.ms": "86400000", "cleanup.policy": "delete"})
    with caplog.at_level(logging.WARNING, logger="relay.topics"):
        await ensure_topics(kafka_bootstrap, [spec])
    [warned] = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert f"{name} has retention.ms=1000 where the relay declares retention.ms=86400000" in warned


async def _brokers(bootstrap: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return len((await admin.describe_cluster())["brokers"])
    finally:
        await admin.close()
