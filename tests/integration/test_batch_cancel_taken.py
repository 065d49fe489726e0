"""A cancel reaches the Batch API lines a worker has already taken: lines waiting at the
tenant's rate limit when their batch is cancelled are answered batch_cancelled, never
sent to a vendor, rather than sent (and billed) as the limit lets them through."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.integration.test_batch_api import chat_line, client, finished, jsonl, output
from tests.support.stack import Simulator, example_config

LINES = 3


async def test_lines_waiting_at_the_rate_limit_are_not_sent_once_cancelled(
    stack_factory: Any, simulator: Simulator
) -> None:
    cfg = example_config(simulator.url)
    cfg["tenants"]["demo"]["rpm"] = 30  # one line now, the next every 2 s
    stack = stack_factory(cfg)
    sdk = client(stack)
    # llama3's vendor (Ollama) has no batch API: the lines go the realtime way.
    lines = [chat_line(f"g{i}", f"gate {i} {uuid.uuid4().hex}", "llama3") for i in range(LINES)]
    before = simulator.stats()["total"]
    upload = await sdk.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    created = await sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while simulator.stats()["total"] == before:  # the worker took the lines; one went out
        assert loop.time() < deadline, "no line reached the vendor"
        await asyncio.sleep(0.05)
    await sdk.batches.cancel(created.id)
    batch = await finished(sdk, created.id, timeout_s=30)

    assert simulator.stats()["total"] == before + 1, "no line was sent after the cancel"
    assert batch.status == "cancelled"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, LINES - 1)
    errors = await output(sdk, batch.error_file_id)
    assert {x["error"]["code"] for x in errors.values()} == {"batch_cancelled"}
