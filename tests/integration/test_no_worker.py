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
    refused_trace = f"nw-{uuid.uuid4().hex[:12]}"
    async with httpx.AsyncClient(timeout=60) as http:
        body, headers = chat(remembered)
        deadline = time.monotonic() + 60
        while True:  # a 1 s grace can run out before the worker's first join
            first = await http.post(url, json=body, headers=headers)
            if first.status_code != NoWorker.status or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert first.status_code == 200, first.text

        stack.procs[0].stop()  # the only worker leaves the consumer group
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "never refused"
            body, headers = chat(f"unique {time.monotonic()}", **{"x-relay-trace-id": "nw"})
            reply = await http.post(url, json=body, headers={**headers, "x-relay-timeout": "3"})
            if reply.status_code == NoWorker.status:
                break
            assert reply.status_code == 504, reply.text  # queued before the gateway noticed

        # The gateway knows now: a request with a long deadline is refused in a round
        # trip, where one queued until its deadline would take all 30 s.
        body, headers = chat(f"unique {uuid.uuid4().hex}", **{"x-relay-trace-id": refused_trace})
        started = time.monotonic()
        reply = await http.post(url, json=body, headers={**headers, "x-relay-timeout": "30"})
        assert reply.status_code == NoWorker.status, reply.text
        assert time.monotonic() - started < 10.0, "refused at once, not at the deadline"
        error = reply.json()["error"]
        assert (error["code"], error["type"]) == ("no_worker", "api_error")
        assert int(reply.headers["retry-after"]) >= 1

        # The gauge is set at each look for workers (every 0.5 s here, and before a
        # refusal unless the last look is under 0.1 s old): it passes the 1 s grace at
        # the next look, if the refusal came just after one that saw it a little under.
        missing, deadline = 0.0, time.monotonic() + 10
        while missing <= 1.0:
            assert time.monotonic() < deadline, f"relay_workers_missing_seconds {missing}"
            await asyncio.sleep(0.1)
            metrics = (await http.get(f"{stack.url}/metrics")).text
            [gauge] = [
                line for line in metrics.splitlines() if line.startswith("relay_workers_missing")
            ]
            missing = float(gauge.split()[-1])

        body, headers = chat(remembered)  # answered before, from the gateway's cache
        cached = await http.post(url, json=body, headers=headers)
        assert cached.status_code == 200, (first.headers, cached.text)
        assert cached.headers["x-relay-cache"].startswith("hit")

    [line] = await read_ledger(stack, {refused_trace})  # the refusal's one line
    assert (line.status, line.error_code, line.tenant) == ("error", "no_worker", "demo")
