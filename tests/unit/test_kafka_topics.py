"""ensure_topics against a stub admin client: refusals raise, a missing leader raises,
topics made earlier are checked against their declarations, and new topics get the
replication asked for (or the cluster's, up to 3)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from streams import topics as topics_module
from streams.topics import Topics, TopicSpec, TopicsRefused, ensure_topics


class StubAdmin:
    """Answers as aiokafka's admin client does (shapes taken from a real broker)."""

    def __init__(
        self,
        *,
        brokers: int = 1,
        existing: dict[str, dict[str, Any]] | None = None,
        configs: dict[str, dict[str, str]] | None = None,
        refuse: dict[str, tuple[int, str | None]] | None = None,
        leaders: bool = True,
    ) -> None:
        self.brokers = brokers
        self.existing = existing or {}
        self.configs = configs or {}
        self.refuse = refuse or {}
        self.leaders = leaders
        self.created: list[Any] = []
        self.described_by_name = False

    def __call__(self, **_: Any) -> StubAdmin:  # stands in for the class
        return self

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def describe_cluster(self) -> dict[str, Any]:
        return {"brokers": [{"node_id": i} for i in range(self.brokers)]}

    async def describe_topics(self, topics: list[str] | None = None) -> list[dict[str, Any]]:
        if topics is not None:
            self.described_by_name = True  # on an auto-creating broker: makes them
        leader = 1 if self.leaders else -1
        return [
            {"topic": name, "error_code": 0, "partitions": t["partitions"]}
            for name, t in self.existing.items()
        ] + [
            {
                "topic": t.name,
                "error_code": 0,
                "partitions": [
                    {"partition": p, "leader": leader, "replicas": [1] * t.replication_factor}
                    for p in range(t.num_partitions)
                ],
            }
            for t in self.created
        ]

    async def create_topics(self, new: list[Any]) -> Any:
        errors = []
        for t in new:
            code, message = self.refuse.get(t.name, (0, None))
            errors.append((t.name, code, message))
            if code == 0:
                self.created.append(t)
        return SimpleNamespace(topic_errors=errors)

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        entries = []
        for r in resources:
            have = self.configs.get(r.name, {})
            kept: list[Any] = [
                (k, v, False, 1, False, []) for k, v in have.items() if k in r.configs
            ]
            entries.append((0, "", 2, r.name, kept))
        return [SimpleNamespace(resources=entries)]


def existing(spec: TopicSpec, *, partitions: int | None = None, replicas: int = 1) -> Any:
    count = spec.partitions if partitions is None else partitions
    return {
        "partitions": [
            {"partition": p, "leader": 1, "replicas": [1] * replicas} for p in range(count)
        ]
    }


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> Any:
    def use(stub: StubAdmin) -> StubAdmin:
        monkeypatch.setattr(topics_module, "AIOKafkaAdminClient", stub)
        return stub

    return use


async def test_a_topic_the_broker_refuses_raises_naming_it_and_why(admin: Any) -> None:
    t = Topics("relay")
    stub = admin(StubAdmin(refuse={t.usage.name: (38, "only 1 broker(s) are registered")}))
    with pytest.raises(TopicsRefused) as refused:
        await ensure_topics("kafka:9092", t.all())
    message = str(refused.value)
    assert "relay.usage" in message and "InvalidReplicationFactorError (38)" in message
    assert "only 1 broker(s) are registered" in message
    assert "RELAY_TOPIC_REPLICATION" in message
    assert "relay.requests" not in message, "only the refused topic is named"
    assert not stub.described_by_name


async def test_a_refusal_without_a_message_says_what_the_code_means(admin: Any) -> None:
    t = Topics("relay")
    admin(StubAdmin(refuse={t.audit.name: (29, None)}))
    with pytest.raises(TopicsRefused, match=r"relay\.audit: TopicAuthorizationFailedError"):
        await ensure_topics("kafka:9092", t.all())


async def test_a_topic_another_process_made_meanwhile_is_no_refusal(admin: Any) -> None:
    t = Topics("relay")
    stub = admin(StubAdmin(refuse={t.usage.name: (36, "Topic 'relay.usage' already exists.")}))
    stub.existing[t.usage.name] = existing(t.usage)  # (made by the other process)
    await ensure_topics("kafka:9092", t.all())


async def test_no_leader_within_the_wait_raises(admin: Any) -> None:
    admin(StubAdmin(leaders=False))
    with pytest.raises(TopicsRefused, match=r"no leader .* relay\.requests"):
        await ensure_topics("kafka:9092", Topics("relay").all(), leader_wait_s=0)


async def test_topics_are_never_described_by_name(admin: Any) -> None:
    """A metadata request naming a topic makes it, with the broker's defaults, on a broker
    that creates topics on first use: the wait for leaders would make a refused one."""
    stub = admin(StubAdmin())
    await ensure_topics("kafka:9092", Topics("relay").all())
    assert stub.created and not stub.described_by_name


@pytest.mark.parametrize(
    ("brokers", "asked", "made"), [(1, None, 1), (2, None, 2), (5, None, 3), (5, 2, 2), (1, 3, 3)]
)
async def test_new_topics_get_the_replication_asked_for_or_the_clusters(
    admin: Any, brokers: int, asked: int | None, made: int
) -> None:
    stub = admin(StubAdmin(brokers=brokers))
    await ensure_topics("kafka:9092", Topics("relay").all(), replication=asked)
    assert {t.replication_factor for t in stub.created} == {made}


async def test_the_ledger_and_audit_say_their_retention_outright() -> None:
    for spec in (Topics("relay").usage, Topics("relay").audit):
        assert spec.config["cleanup.policy"] == "delete"
        assert spec.config["retention.ms"] == str(400 * 24 * 3600 * 1000)
        assert spec.config["retention.bytes"] == "-1"


async def test_an_existing_ledger_kept_seven_days_is_reported_with_its_fix(
    admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Made earlier with the broker's defaults (auto-created, by hand): the relay starts,
    and says what differs and how to fix it."""
    t = Topics("relay")
    configs = {t.usage.name: {**t.usage.config, "retention.ms": "604800000"}}
    stub = admin(StubAdmin(existing={t.usage.name: existing(t.usage)}, configs=configs))
    for spec in t.all():
        if spec.name != t.usage.name:
            stub.existing[spec.name] = existing(spec)
            stub.configs[spec.name] = dict(spec.config)
    with caplog.at_level(logging.WARNING, logger="relay.topics"):
        await ensure_topics("kafka:9092", t.all())
    assert not stub.created
    [warned] = [r.getMessage() for r in caplog.records]
    assert "relay.usage has retention.ms=604800000" in warned
    assert f"declares retention.ms={400 * 24 * 3600 * 1000}" in warned
    assert "--entity-name relay.usage --add-config retention.ms=" in warned


async def test_a_changelog_that_is_not_compacted_is_reported(
    admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    spend = Topics("relay").changelog("tenant_spend", 4)
    admin(
        StubAdmin(
            existing={spend.name: existing(spend)},
            configs={spend.name: {**spend.config, "cleanup.policy": "delete"}},
        )
    )
    with caplog.at_level(logging.WARNING, logger="relay.topics"):
        await ensure_topics("kafka:9092", [spend])
    assert any(
        "has cleanup.policy=delete where the relay declares cleanup.policy=compact"
        in r.getMessage()
        for r in caplog.records
    )


async def test_partitions_and_replicas_short_of_the_declaration_are_reported(
    admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    t = Topics("relay")
    stub = admin(
        StubAdmin(brokers=3, existing={t.requests.name: existing(t.requests, partitions=2)})
    )
    stub.configs[t.requests.name] = dict(t.requests.config)
    with caplog.at_level(logging.WARNING, logger="relay.topics"):
        await ensure_topics("kafka:9092", [t.requests])
    said = " | ".join(r.getMessage() for r in caplog.records)
    assert "relay.requests has 2 partitions where the relay declares 8" in said
    assert "--topic relay.requests --partitions 8" in said
    assert "relay.requests has 1 replica(s) per partition where new topics get 3" in said


async def test_a_config_check_the_broker_refuses_never_stops_a_start(
    admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    t = Topics("relay")
    stub = admin(StubAdmin(existing={t.usage.name: existing(t.usage)}))

    async def refused(resources: list[Any]) -> list[Any]:
        raise RuntimeError("not authorized to describe configs")

    stub.describe_configs = refused
    with caplog.at_level(logging.WARNING, logger="relay.topics"):
        await ensure_topics("kafka:9092", [t.usage])
    assert any("could not check the configs" in r.getMessage() for r in caplog.records)


def every_spec(t: Topics) -> list[TopicSpec]:
    return [*t.all(), t.replies("gw-1")]


def test_every_topic_keeps_batches_as_their_producer_wrote_them() -> None:
    """compression.type=producer, said outright: a cluster default (zstd, say) would
    recompress the relay's own messages, and _check reports a topic made otherwise."""
    for spec in every_spec(Topics("relay")):
        assert spec.config.get("compression.type") == "producer", spec.name


def test_every_topic_but_a_changelog_says_it_is_a_log_that_deletes() -> None:
    """On a cluster whose default log.cleanup.policy is compact, requests, answers and
    results would be compacted by key, and a message without a key refused."""
    t = Topics("relay")
    changelogs = {s.name for s in t.tables()}
    for spec in every_spec(t):
        wanted = "compact" if spec.name in changelogs else "delete"
        assert spec.config.get("cleanup.policy") == wanted, spec.name


def test_every_changelog_declared_is_a_worker_table_s_and_each_table_s_is_declared(
    tmp_path: Any,
) -> None:
    """The changelogs made are exactly those of the worker's tables (no relay-prices-
    changelog made on every cluster for a table that never existed), partitions and all."""
    from pathlib import Path

    import yaml

    from schemas.config import RelayConfig
    from schemas.settings import Settings
    from streams import fetch_guard, topic_guard
    from streams.wiring import build_worker

    example = Path(__file__).resolve().parents[2] / "relay.example.yaml"
    cfg = yaml.safe_load(example.read_text())
    cfg.pop("simulator", None)
    try:
        app = build_worker(Settings(data_dir=tmp_path), RelayConfig.model_validate(cfg), "x:9")
    finally:  # (process-wide guards the worker installs)
        fetch_guard.uninstall()
        topic_guard.uninstall()
    tables = {t.changelog_topic.get_topic_name(): t.partitions for t in app.tables.values()}
    declared = {s.name: s.partitions for s in Topics(Settings().topic_prefix).tables()}
    assert declared == tables


async def test_the_partitions_of_each_topic_are_returned(admin: Any) -> None:
    """As declared for a topic made now; as it is for one made earlier (a reply topic
    made by hand with three)."""
    t = Topics("relay")
    replies = t.replies("gw-1")
    stub = admin(StubAdmin(existing={replies.name: existing(replies, partitions=3)}))
    stub.configs[replies.name] = dict(replies.config)
    made = await ensure_topics("kafka:9092", [t.requests, replies])
    assert made == {t.requests.name: 8, replies.name: 3}
