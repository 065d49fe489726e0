"""The embedded single-node Apache Kafka (KRaft) that the relay starts when none is set."""

from streams.broker.embedded import BrokerError, EmbeddedKafka

__all__ = ["BrokerError", "EmbeddedKafka"]
