"""Every topic the relay uses, declared once: name, partitions, configs.

Plain data with no Faust import, so the gateway (which talks aiokafka directly) and the
worker (Faust) read the same declarations.  ``ensure_topics`` creates them, with their
configs, before any agent starts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

APP_ID = "relay"
DAY_MS = 24 * 3600 * 1000
# The largest message the relay sends or takes: a request body may be 32 MiB (images as
# base64), an answer as large (a few hundred base64 embeddings pass 1 MB), and Kafka's
# own default of 1 MB would turn those into 413s and lost replies.  Topics that carry
# requests and answers say so in ``max.message.bytes``; producers in ``max_request_size``.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
LARGE = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


COMPACT = {"cleanup.policy": "compact", "segment.ms": str(3600 * 1000)}


@dataclass(frozen=True)
class Topics:
    """The relay's topics under one prefix (``RELAY_TOPIC_PREFIX``, default ``relay``)."""

    prefix: str = "relay"
    request_partitions: int = 8

    @property
    def requests(self) -> TopicSpec:
        """Request envelopes, keyed by prompt hash: one worker owns each key."""
        return TopicSpec(
            f"{self.prefix}.requests",
            self.request_partitions,
            {"retention.ms": str(DAY_MS)} | LARGE,
        )

    @property
    def usage(self) -> TopicSpec:
        """The cost ledger, keyed by tenant; kept 400 days so it can be replayed."""
        return TopicSpec(f"{self.prefix}.usage", 4, {"retention.ms": str(400 * DAY_MS)})

    @property
    def health(self) -> TopicSpec:
        """Outcome of every vendor call, folded into the vendor-health table."""
        return TopicSpec(f"{self.prefix}.health", 1, {"retention.ms": str(DAY_MS)})

    @property
    def audit(self) -> TopicSpec:
        """Authentication failures, denied models, process starts; kept 400 days."""
        return TopicSpec(f"{self.prefix}.audit", 1, {"retention.ms": str(400 * DAY_MS)})

    @property
    def dead_letter(self) -> TopicSpec:
        return TopicSpec(f"{self.prefix}.dead-letter", 1, {"retention.ms": str(30 * DAY_MS)})

    @property
    def batch_results(self) -> TopicSpec:
        """Answers to the lines of the relay's own Batch API, keyed by each line's
        correlation id (``<batch id>/<line index>``); the results agent stores them, and
        replaying the topic rebuilds the store."""
        return TopicSpec(
            f"{self.prefix}.batch-results", 4, {"retention.ms": str(30 * DAY_MS)} | LARGE
        )

    def replies(self, instance: str) -> TopicSpec:
        """One reply topic per gateway instance, so each replica reads only its replies."""
        return TopicSpec(
            f"{self.prefix}.replies.{instance}", 1, {"retention.ms": str(3600_000)} | LARGE
        )

    def changelog(self, table: str, partitions: int) -> TopicSpec:
        return TopicSpec(f"{self.app_id}-{table}-changelog", partitions, COMPACT)

    @property
    def app_id(self) -> str:
        return f"{self.prefix}-{APP_ID}" if self.prefix != "relay" else APP_ID

    def tables(self) -> list[TopicSpec]:
        return [
            self.changelog("vendor_health", 1),
            self.changelog("prices", 1),
            self.changelog("tenant_spend", self.usage.partitions),
        ]

    def all(self) -> list[TopicSpec]:
        return [
            self.requests,
            self.usage,
            self.health,
            self.dead_letter,
            self.audit,
            self.batch_results,
            *self.tables(),
        ]


async def ensure_topics(bootstrap: str, specs: list[TopicSpec]) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(s.name, s.partitions, 1, topic_configs=s.config)
            for s in specs
            if s.name not in existing
        ]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # a replica created it between our list and create
            await _wait_for_leaders(admin, [t.name for t in new])
    finally:
        await admin.close()


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 15
) -> None:
    """New partitions have no leader for a moment; clients that race them log errors."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        described = await admin.describe_topics(names)
        if all(
            t.get("error_code", 0) == 0
            and t.get("partitions")
            and all(p.get("leader", -1) >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        await asyncio.sleep(0.1)
