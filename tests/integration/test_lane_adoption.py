"""A worker killed while a vendor batch runs loses nothing: the batch stays written down in
the lane journal, and once its lease lapses a new worker adopts it, polls it to the end
and answers its requests, once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.integration.conftest import WORKDIR, worker_env
from tests.integration.test_batch_api import chat_line, client, finished, jsonl, ledger_by_tag
from tests.support.stack import Simulator, example_config, spawn, start_simulator

VENDOR_BATCH_S = 6.0


@pytest.fixture(scope="module")
def slow_batches() -> Iterator[Simulator]:
    sim = start_simulator(WORKDIR / "sim-slow-batches")
    sim.configure(batch_complete_after_s=VENDOR_BATCH_S)
    yield sim
    sim.proc.stop()


async def test_a_vendor_batch_outlives_the_worker_that_sent_it(
    stack_factory: Any, redis_url: str, slow_batches: Simulator
) -> None:
    cfg = example_config(slow_batches.url)
    cfg["batch_lane"] = {"max_age_s": 0.2, "poll_s": 0.5, "lease_s": 3}
    stack = stack_factory(cfg)
    tag = uuid.uuid4().hex
    sdk: openai.AsyncOpenAI = client(stack, **{"x-relay-cost-tag": tag})
    lines = [chat_line(f"l{i}", f"outlive {i} {uuid.uuid4().hex}") for i in range(2)]
    upload = await sdk.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    created = await sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while slow_batches.stats()["batches"] < 1:  # the worker has submitted the vendor batch
        assert loop.time() < deadline, "no vendor batch was submitted"
        await asyncio.sleep(0.1)

    [old] = [p for p in stack.procs if p.name == "worker-0"]
    old.popen.kill()  # no drain, no goodbye
    old.popen.wait()
    fresh = spawn("worker-0-adopter", ["worker"], worker_env(stack, redis_url), old.log.parent)
    stack.procs.insert(0, fresh)  # stopped with the stack

    batch = await finished(sdk, created.id, timeout_s=90)
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 0)
    assert slow_batches.stats()["batches"] == 1, "adopted, not sent again"
    assert "adopting vendor batch" in fresh.log.read_text()
    events = await ledger_by_tag(stack, tag, 2, timeout_s=20)
    assert len(events) == 2 and all(e.batch_api and e.status == "ok" for e in events)
    more = await ledger_by_tag(stack, tag, 3, timeout_s=3)
    assert len(more) == 2, "each request metered once"
