"""With no worker taking requests, the gateway says so at once (503, Retry-After, one
ledger line) instead of queueing requests until their deadline; cache hits still work."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx

from schemas.errors import NoWorker
from tests.integration.conftest import read_ledger
from tests.support.stack import DEMO_KEY, Simulator, example_config


def chat(prompt: str, **headers: str) -> tuple[dict[str, Any], dict[str, str]]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    return body, {"authorization": f"Bearer {DEMO_KEY}", **headers}


async def test_requests_are_refused_quickly_once_no_worker_runs(
    stack_factory: Any, simulator: Simulator
) -> None:
    stack = stack_factory(example_config(simulator.url), extra_env={"RELAY_WORKER_GRACE_S": "1"})
    url = f"{stack.url}/v1/chat/completions"
    remembered = f"remember me {uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=30) as http:
        body, headers = chat(remembered)
        for _ in range(20):  # a 1 s grace can run out before the worker's first join
            first = await http.post(url, json=body, headers=headers)
            if first.status_code != NoWorker.status:
                break
            await asyncio.sleep(0.5)
        assert first.status_code == 200, first.text

        stack.procs[0].stop()  # the only worker leaves the consumer group
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "never refused"
            body, headers = chat(f"unique {time.monotonic()}", **{"x-relay-trace-id": "nw"})
            started = time.monotonic()
            reply = await http.post(url, json=body, headers={**headers, "x-relay-timeout": "3"})
            if reply.status_code == NoWorker.status:
                break
            assert reply.status_code == 504, reply.text  # queued before the gateway noticed

        assert time.monotonic() - started < 1.0, "refused at once, not at the deadline"
        error = reply.json()["error"]
        assert (error["code"], error["type"]) == ("no_worker", "api_error")
        assert int(reply.headers["retry-after"]) >= 1

        metrics = (await http.get(f"{stack.url}/metrics")).text
        [missing] = [
            line for line in metrics.splitlines() if line.startswith("relay_workers_missing")
        ]
        assert float(missing.split()[-1]) > 1.0

        body, headers = chat(remembered)  # answered before, from the gateway's cache
        cached = await http.post(url, json=body, headers=headers)
        assert cached.status_code == 200, (first.headers, cached.text)
        assert cached.headers["x-relay-cache"].startswith("hit")

    [line] = [e for e in await read_ledger(stack, {"nw"}) if e.error_code == "no_worker"][-1:]
    assert line.status == "error" and line.tenant == "demo"
