"""A record whose header key is not UTF-8 (legal on the wire: Go's Sarama sends []byte
keys, and the broker stores them) on the request topic is dead-lettered with where it
was, and the worker goes on serving: aiokafka's reader used to raise inside the fetch,
which stopped the worker and left the partition stuck at that offset."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.producer import message_accumulator
from aiokafka.producer import producer as producer_module
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

from streams.topics import Topics
from tests.integration.conftest import dead_letters
from tests.support.stack import DEMO_KEY, Simulator, Stack, example_config


class RawKey(str):
    """A header key written as bytes that are not UTF-8 (aiokafka's Python batch builder
    writes what ``encode`` gives; its C one takes only text)."""

    def encode(self, *_: Any, **__: Any) -> bytes:
        return b"\xff\xfe"


async def post_poison(stack: Stack, marker: str, monkeypatch: pytest.MonkeyPatch) -> dict[int, int]:
    """One poisoned record on each partition of the request topic: its offset by partition."""
    for module in (message_accumulator, producer_module):
        monkeypatch.setattr(module, "DefaultRecordBatchBuilder", _DefaultRecordBatchBuilderPy)
    requests = Topics(stack.prefix).requests
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    offsets: dict[int, int] = {}
    try:
        for partition in range(requests.partitions):
            value = orjson.dumps({"correlation_id": f"{marker}-{partition}"})
            sent = await producer.send_and_wait(
                requests.name, value, key=b"k", partition=partition,
                headers=[(RawKey("x"), b"from a Go service")],
            )  # fmt: skip
            offsets[partition] = sent.offset
    finally:
        await producer.stop()
    return offsets


async def test_a_header_key_that_is_not_utf8_is_dead_lettered_and_the_worker_serves_on(
    stack_factory: Any, simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = stack_factory(example_config(simulator.url))
    [worker] = [p for p in stack.procs if p.name.startswith("worker")]
    marker = uuid.uuid4().hex
    offsets = await post_poison(stack, marker, monkeypatch)

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"on? {marker}"}]}
    headers = {"authorization": f"Bearer {DEMO_KEY}", "x-relay-cache": "bypass"}
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(f"{stack.url}/v1/chat/completions", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]

    letters = await dead_letters(stack, marker, want=len(offsets))
    assert {d.partition: d.offset for d in letters} == offsets, "each where it was"
    assert all(d.topic == f"{stack.prefix}.requests" for d in letters)
    assert all("UnicodeDecodeError" in d.error for d in letters)
    assert worker.popen.poll() is None, "the same worker, still running"
    assert "Drain messages raised" not in worker.log.read_text()
