"""Every topic the relay uses, declared once: name, partitions, configs.

Plain data with no Faust import, so the gateway (which talks aiokafka directly) and the
worker (Faust) read the same declarations.  ``ensure_topics`` creates them, with their
configs, before any agent starts, and says where topics made earlier differ from them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import RequestTimedOutError, TopicAlreadyExistsError, for_code

APP_ID = "relay"
DAY_MS = 24 * 3600 * 1000
# The largest message the relay sends or takes: a request body may be 32 MiB (images as
# base64), an answer as large (a few hundred base64 embeddings pass 1 MB), and Kafka's
# own default of 1 MB would turn those into 413s and lost replies.  Topics that carry
# requests and answers say so in ``max.message.bytes``; producers in ``max_request_size``.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
LARGE = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
# The most replicas a new topic gets when RELAY_TOPIC_REPLICATION leaves it to the
# cluster's size: one broker lost keeps every partition writable with acks=all under
# min.insync.replicas=2, which is what hardened clusters set.
MAX_AUTO_REPLICATION = 3
LEADER_WAIT_S = 15.0

log = logging.getLogger("relay.topics")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


# Every topic keeps each batch as its producer wrote it: a broker or topic default of
# compression.type=zstd (say) would recompress the relay's own messages, and a reader
# without that codec could read none of them.
AS_WRITTEN = {"compression.type": "producer"}
COMPACT = {"cleanup.policy": "compact", "segment.ms": str(3600 * 1000)} | AS_WRITTEN
# Every other topic is a log, said outright: on a cluster whose log.cleanup.policy is
# compact, requests, answers and results would be compacted by key, and a dead letter
# (or any message without a key) refused.
DELETE = {"cleanup.policy": "delete"} | AS_WRITTEN
# The ledger and the audit log are replayed for 400 days: said outright, so no broker
# default (log.retention.bytes, a compacting log.cleanup.policy) shortens them.
KEPT = DELETE | {"retention.ms": str(400 * DAY_MS), "retention.bytes": "-1"}


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
            DELETE | {"retention.ms": str(DAY_MS)} | LARGE,
        )

    @property
    def usage(self) -> TopicSpec:
        """The cost ledger, keyed by tenant; kept 400 days so it can be replayed."""
        return TopicSpec(f"{self.prefix}.usage", 4, KEPT)

    @property
    def health(self) -> TopicSpec:
        """Outcome of every vendor call, folded into the vendor-health table."""
        return TopicSpec(f"{self.prefix}.health", 1, DELETE | {"retention.ms": str(DAY_MS)})

    @property
    def audit(self) -> TopicSpec:
        """Authentication failures, denied models, process starts; kept 400 days."""
        return TopicSpec(f"{self.prefix}.audit", 1, KEPT)

    @property
    def dead_letter(self) -> TopicSpec:
        """Messages a worker could not read, keyed by the topic each came from."""
        return TopicSpec(
            f"{self.prefix}.dead-letter", 1, DELETE | {"retention.ms": str(30 * DAY_MS)}
        )

    @property
    def batch_results(self) -> TopicSpec:
        """Answers to the lines of the relay's own Batch API, keyed by each line's
        correlation id (``<batch id>/<line index>``); the results agent stores them, and
        replaying the topic rebuilds the store's results of the last 30 days (the store
        may keep them longer: ``RELAY_BATCH_RETENTION_S``)."""
        return TopicSpec(
            f"{self.prefix}.batch-results",
            4,
            DELETE | {"retention.ms": str(30 * DAY_MS)} | LARGE,
        )

    def replies(self, instance: str) -> TopicSpec:
        """One reply topic per gateway instance, so each replica reads only its replies."""
        return TopicSpec(
            f"{self.prefix}.replies.{instance}",
            1,
            DELETE | {"retention.ms": str(3600_000)} | LARGE,
        )

    def changelog(self, table: str, partitions: int) -> TopicSpec:
        return TopicSpec(f"{self.app_id}-{table}-changelog", partitions, COMPACT)

    @property
    def app_id(self) -> str:
        return f"{self.prefix}-{APP_ID}" if self.prefix != "relay" else APP_ID

    def tables(self) -> list[TopicSpec]:
        """The changelogs of the worker's tables (``streams.wiring``), one per table."""
        return [
            self.changelog("vendor_health", 1),
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


class TopicsRefused(RuntimeError):
    """A topic the relay needs could not be made, or got no leader: the message names
    each one, and what the broker said."""


async def ensure_topics(
    bootstrap: str,
    specs: list[TopicSpec],
    *,
    replication: int | None = None,
    leader_wait_s: float = LEADER_WAIT_S,
) -> dict[str, int]:
    """Create the topics of ``specs`` that do not exist yet, with their configs, and wait
    for their leaders; raises ``TopicsRefused`` when the broker refuses one (no right to
    create it, a replication factor or config it does not take) or gives it no leader
    within ``leader_wait_s``.  Topics that exist are left as they are, but where their
    partitions, replicas or declared configs differ from ``specs`` it is logged, with the
    command that fixes it.  Returns each topic's partitions: as declared for one made
    here, as it has them for one made earlier.

    ``replication``: the replication factor of new topics (``RELAY_TOPIC_REPLICATION``);
    None: as many as the cluster has brokers, up to ``MAX_AUTO_REPLICATION`` (1 on the
    embedded broker).

    Topics are looked up in the metadata of the whole cluster, never by name: a metadata
    request naming a topic makes it, with the broker's defaults, on a broker that creates
    topics on first use (Apache's default), which is what a refused topic must not get.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        brokers = len(cluster.get("brokers") or ()) or 1
        wanted = replication or min(MAX_AUTO_REPLICATION, brokers)
        described = {t["topic"]: t for t in await admin.describe_topics()}
        missing = [s for s in specs if s.name not in described]
        if missing:
            await _create(admin, bootstrap, missing, wanted)
            await _wait_for_leaders(admin, [s.name for s in missing], leader_wait_s)
        existing = [s for s in specs if s.name in described]
        if existing:
            await _check(admin, bootstrap, existing, described, wanted)
    finally:
        await admin.close()
    return {
        s.name: len(described[s.name].get("partitions") or ())
        if s.name in described
        else s.partitions
        for s in specs
    }


async def _create(
    admin: AIOKafkaAdminClient, bootstrap: str, specs: list[TopicSpec], replication: int
) -> None:
    """Ask for ``specs``; CreateTopics answers each topic's refusal in its response (the
    client raises nothing for them), so each is read here."""
    response = await admin.create_topics(
        [NewTopic(s.name, s.partitions, replication, topic_configs=s.config) for s in specs]
    )
    by_name = {s.name: s for s in specs}
    refused = []
    for name, code, *rest in response.topic_errors:
        # 36: another relay process made it meanwhile; 7: still being made when the
        # request timed out (the leader wait tells whether it comes).
        if code in (0, TopicAlreadyExistsError.errno, RequestTimedOutError.errno):
            continue
        said = rest[0] if rest and rest[0] else for_code(code).description
        spec = by_name.get(name)
        wanted = (
            f" (wanted: {spec.partitions} partitions, replication factor {replication}, "
            f"configs {_configs(spec.config)})"
            if spec
            else ""
        )
        refused.append(f"{name}: {for_code(code).__name__} ({code}), {said}{wanted}")
    if refused:
        raise TopicsRefused(
            f"Kafka at {bootstrap} refused to create {len(refused)} topic(s): "
            + "; ".join(refused)
            + ". Set RELAY_TOPIC_REPLICATION to what the cluster takes, give the relay "
            "the right to create topics, or create them yourself as wanted."
        )


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float) -> None:
    """New partitions have no leader for a moment; clients that race them log errors.
    Past ``timeout_s`` without one, the relay could not use the topic: raise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        described = {t["topic"]: t for t in await admin.describe_topics()}
        waiting = [n for n in names if not _led(described.get(n))]
        if not waiting:
            return
        if loop.time() >= deadline:
            raise TopicsRefused(
                f"created, but no leader for every partition within {timeout_s:.0f}s: "
                + ", ".join(waiting)
                + " (are the cluster's brokers up and in sync?)"
            )
        await asyncio.sleep(0.1)


def _led(topic: Mapping[str, Any] | None) -> bool:
    return bool(
        topic
        and topic.get("error_code", 0) == 0
        and topic.get("partitions")
        and all(p.get("leader", -1) >= 0 for p in topic["partitions"])
    )


async def _check(
    admin: AIOKafkaAdminClient,
    bootstrap: str,
    specs: list[TopicSpec],
    described: Mapping[str, Mapping[str, Any]],
    replication: int,
) -> None:
    """Log where topics made earlier (by hand, by a broker's auto-creation, by an older
    relay) differ from their declarations.  Nothing is changed: fewer partitions or
    replicas take a reassignment only an operator should run, and a config the relay
    would overwrite may have been set on purpose.  A check that cannot be made (no right
    to describe configs) is said once, and the relay starts."""
    for spec in specs:
        partitions = described[spec.name].get("partitions") or []
        if len(partitions) != spec.partitions:
            log.warning(
                "topic %s has %d partitions where the relay declares %d%s",
                spec.name,
                len(partitions),
                spec.partitions,
                f" (add them: kafka-topics.sh --bootstrap-server {bootstrap} --alter "
                f"--topic {spec.name} --partitions {spec.partitions})"
                if len(partitions) < spec.partitions
                else " (a topic cannot lose partitions: re-create it to match)",
            )
        replicas = min((len(p.get("replicas") or ()) for p in partitions), default=0)
        if partitions and replicas < replication:
            log.warning(
                "topic %s has %d replica(s) per partition where new topics get %d: a "
                "broker lost loses what only it held (raise it with "
                "kafka-reassign-partitions.sh)",
                spec.name,
                replicas,
                replication,
            )
    checked = [s for s in specs if s.config]
    if not checked:
        return
    try:
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, s.name, dict.fromkeys(s.config))
                for s in checked
            ]
        )
        actual = {
            name: {entry[0]: entry[1] for entry in entries}
            for response in responses
            for code, _, _, name, entries in response.resources
            if code == 0
        }
    except Exception as exc:  # the check is advice: it never stops a start
        log.warning("could not check the configs of the relay's topics: %r", exc)
        return
    for spec in checked:
        have = actual.get(spec.name)
        if have is None:
            log.warning("could not check the configs of topic %s", spec.name)
            continue
        drift = {k: v for k, v in spec.config.items() if have.get(k) != v}
        if drift:
            log.warning(
                "topic %s has %s where the relay declares %s: fix it with kafka-configs.sh "
                "--bootstrap-server %s --alter --entity-type topics --entity-name %s "
                "--add-config %s",
                spec.name,
                _configs({k: have.get(k) or "(unset)" for k in drift}),
                _configs(drift),
                bootstrap,
                spec.name,
                ",".join(f"{k}={v}" for k, v in drift.items()),
            )


def _configs(configs: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in configs.items()) or "none"
