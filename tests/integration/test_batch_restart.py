"""A rolling restart in the middle of a Batch API batch: the lines the stopping worker cut
go back on the request topic and the worker that comes next answers them, instead of
their ending `failed` with the stop's "try again"."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import WORKDIR, worker_env
from tests.integration.test_batch_api import chat_line, client, finished, jsonl, output
from tests.support.stack import Simulator, example_config, spawn, start_simulator

VENDOR_S = 3.0
LINES = 3


@pytest.fixture(scope="module")
def slow_vendor() -> Iterator[Simulator]:
    sim = start_simulator(WORKDIR / "sim-restart", latency_ms=VENDOR_S * 1000)
    yield sim
    sim.proc.stop()


async def test_lines_cut_by_a_restart_are_answered_by_the_next_worker(
    stack_factory: Any, slow_vendor: Simulator, redis_url: str
) -> None:
    drain = {"RELAY_WORKER_DRAIN_S": "0.5"}  # shorter than the vendor: the lines are cut
    stack = stack_factory(example_config(slow_vendor.url), extra_env=drain)
    [worker] = [p for p in stack.procs if p.name.startswith("worker")]
    sdk = client(stack)
    # llama3's vendor (Ollama) has no batch API: the lines go the realtime way.
    lines = [chat_line(f"r{i}", f"restart {i} {uuid.uuid4().hex}", "llama3") for i in range(LINES)]
    upload = await sdk.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    created = await sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while slow_vendor.stats()["total"] < LINES:  # the worker holds every line
        assert loop.time() < deadline, "the lines never reached the vendor"
        await asyncio.sleep(0.05)

    worker.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.popen.wait, 60) == 0
    assert (await sdk.batches.retrieve(created.id)).request_counts.failed == 0
    slow_vendor.configure(latency_ms=5)
    env = worker_env(stack, redis_url)
    stack.procs.append(spawn("worker-next", ["worker"], env, WORKDIR / stack.prefix / "logs"))
    batch = await finished(sdk, created.id, timeout_s=90)

    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (LINES, 0)
    results = await output(sdk, batch.output_file_id)
    assert {cid: r["response"]["status_code"] for cid, r in results.items()} == {
        f"r{i}": 200 for i in range(LINES)
    }
    assert slow_vendor.stats()["total"] == 2 * LINES, "each line cut once, then run once"
