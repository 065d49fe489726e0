"""A worker told to stop (SIGTERM, as a rolling restart does) answers and meters the
requests it already took before it exits, instead of leaving their clients waiting out
their deadline."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import WORKDIR, read_ledger
from tests.support.stack import DEMO_KEY, Simulator, example_config, start_simulator

VENDOR_S = 3.0


@pytest.fixture(scope="module")
def slow_vendor() -> Iterator[Simulator]:
    sim = start_simulator(WORKDIR / "sim-slow", latency_ms=VENDOR_S * 1000)
    yield sim
    sim.proc.stop()


async def test_a_stopping_worker_finishes_the_requests_it_took(
    stack_factory: Any, slow_vendor: Simulator
) -> None:
    stack = stack_factory(example_config(slow_vendor.url))
    [worker] = [p for p in stack.procs if p.name.startswith("worker")]
    trace = uuid.uuid4().hex
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"drain {trace}"}]}
    headers = {
        "authorization": f"Bearer {DEMO_KEY}",
        "x-relay-cache": "bypass",
        "x-relay-trace-id": trace,
    }
    async with httpx.AsyncClient(timeout=60) as http:
        asked = asyncio.create_task(
            http.post(f"{stack.url}/v1/chat/completions", json=body, headers=headers)
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while slow_vendor.stats()["total"] == 0:  # the worker has called the vendor
            assert loop.time() < deadline, "the request never reached the vendor"
            await asyncio.sleep(0.05)
        started = loop.time()
        worker.popen.send_signal(signal.SIGTERM)
        answer = await asked
        waited = loop.time() - started

    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    assert waited < VENDOR_S + 5, "answered when the vendor did, not at the deadline"
    exit_code = await asyncio.to_thread(worker.popen.wait, 60)
    assert exit_code == 0
    [event] = await read_ledger(stack, {trace})
    assert event.status == "ok" and event.cost > 0
    assert "finishing 1 requests in flight" in worker.log.read_text()
