"""Integration fixtures: one real Apache Kafka per session, the real Redis, real processes.

Kafka comes from ``RELAY_KAFKA_BOOTSTRAP`` if set; from testcontainers when
``RELAY_TEST_KAFKA=testcontainers`` (needs a Docker engine); else the embedded broker.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from schemas.envelope import DeadLetter, UsageEvent
from schemas.settings import Settings
from tests.support.stack import (
    SIM_KEY,
    Simulator,
    Stack,
    example_config,
    start_simulator,
    start_stack,
)

WORKDIR = Path(tempfile.gettempdir()) / "relay-station-tests"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    if os.environ.get("RELAY_KAFKA_BOOTSTRAP"):
        yield os.environ["RELAY_KAFKA_BOOTSTRAP"]
        return
    if os.environ.get("RELAY_TEST_KAFKA") == "testcontainers":
        from testcontainers.community.kafka import KafkaContainer

        # testcontainers' Kafka module drives Confluent's image (Apache Kafka inside),
        # here in KRaft mode; the startup it waits for is that image's.
        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    from streams.broker.embedded import EmbeddedKafka, short_lived_jvm_opts

    jvm_opts = short_lived_jvm_opts(Settings().jvm_opts())
    kafka = EmbeddedKafka(Path(tempfile.mkdtemp(prefix="relay-kafka-")), jvm_opts=jvm_opts)
    yield kafka.start()
    kafka.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("RELAY_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"integration tests need a real redis-server at {url} (.ci/run starts one): {exc}"
        )
    return url


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    sim = start_simulator(WORKDIR / "sim", latency_ms=5)
    yield sim
    sim.proc.stop()


@pytest.fixture(scope="session")
def stack_factory(kafka_bootstrap: str, redis_url: str) -> Iterator[Any]:
    stacks: list[Stack] = []

    def make(config: dict[str, Any], **kw: Any) -> Stack:
        stack = start_stack(
            config, bootstrap=kafka_bootstrap, redis_url=redis_url, workdir=WORKDIR, **kw
        )
        stacks.append(stack)
        return stack

    yield make
    for s in stacks:
        s.stop()


@pytest.fixture(scope="session")
def blackhole() -> Iterator[str]:
    """A port that accepts connections and never answers: a vendor that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture(scope="session")
def relay(stack_factory: Any, simulator: Simulator, blackhole: str) -> Stack:
    """The shipped example config on one worker and one gateway, plus two broken aliases."""
    cfg = example_config(simulator.url)
    cfg["vendors"]["hang"] = {
        "kind": "openai",
        "base_url": blackhole + "/v1",
        "api_key_env": "RELAY_SIM_KEY",
    }
    cfg["models"]["broken"] = {"candidates": [{"vendor": "sim-openai", "model": "gpt-fail500"}]}
    cfg["models"]["hanging"] = {"candidates": [{"vendor": "hang", "model": "gpt-4o-mini"}]}
    return stack_factory(cfg)  # type: ignore[no-any-return]


async def read_ledger(stack: Stack, trace_ids: set[str], timeout_s: float = 15) -> list[UsageEvent]:
    """Every usage event carrying one of ``trace_ids``, read from the ledger topic."""
    consumer = AIOKafkaConsumer(
        f"{stack.prefix}.usage",
        bootstrap_servers=stack.bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    found: list[UsageEvent] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for r in records:
                    ev = UsageEvent.model_validate(orjson.loads(r.value))
                    if ev.trace_id in trace_ids:
                        found.append(ev)
            if {e.trace_id for e in found} >= trace_ids and not batch:
                break
    finally:
        await consumer.stop()
    return found


async def dead_letters(
    stack: Stack, marker: str, want: int, timeout_s: float = 20
) -> list[DeadLetter]:
    """The dead letters whose value holds ``marker``, read until ``want`` have come (or
    ``timeout_s`` passed)."""
    consumer = AIOKafkaConsumer(
        f"{stack.prefix}.dead-letter",
        bootstrap_servers=stack.bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline and len(letters) < want:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                letters += [DeadLetter.model_validate_json(r.value or b"") for r in records]
            letters = [d for d in letters if marker in d.value]
    finally:
        await consumer.stop()
    return letters


async def topic_names(bootstrap: str) -> set[str]:
    """Every topic the cluster has."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def worker_env(stack: Stack, redis_url: str) -> dict[str, str]:
    """The environment ``start_stack`` gave this stack's workers (Stack does not keep it)."""
    return {
        **os.environ,
        "RELAY_CONFIG": str(WORKDIR / f"{stack.prefix}.yaml"),
        "RELAY_KAFKA_BOOTSTRAP": stack.bootstrap,
        "RELAY_REDIS_URL": redis_url,
        "RELAY_TOPIC_PREFIX": stack.prefix,
        "RELAY_DATA_DIR": str(WORKDIR / stack.prefix),
        "RELAY_SIM_KEY": SIM_KEY,
    }
