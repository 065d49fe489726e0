"""The worker's own /metrics: vendor calls by outcome, their latency, breakers, in flight."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.stack import DEMO_KEY, Simulator, example_config, free_port


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_the_worker_reports_vendor_calls_and_breakers(
    stack_factory: Any, simulator: Simulator
) -> None:
    cfg = example_config(simulator.url)
    cfg["models"]["broken"] = {"candidates": [{"vendor": "sim-openai", "model": "gpt-fail500"}]}
    port = free_port()
    stack = stack_factory(cfg, extra_env={"RELAY_WORKER_METRICS_PORT": str(port)})
    headers = {"authorization": f"Bearer {DEMO_KEY}", "x-relay-cache": "bypass"}
    async with httpx.AsyncClient(timeout=30) as http:
        for model in ("gpt-4o-mini", "broken"):
            body = {"model": model, "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
            await http.post(f"{stack.url}/v1/chat/completions", json=body, headers=headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        broken = frozenset({("vendor", "sim-openai"), ("model", "gpt-fail500")})
        while True:
            scraped = samples((await http.get(f"http://127.0.0.1:{port}/metrics")).text)
            if ("relay_worker_breaker_state", broken) in scraped or loop.time() > deadline:
                break
            await asyncio.sleep(0.3)

    ok = frozenset({("vendor", "sim-openai"), ("model", "gpt-4o-mini"), ("outcome", "ok")})
    failed = broken | {("outcome", "vendor_unavailable")}
    assert scraped[("relay_worker_vendor_calls_total", ok)] == 1
    assert scraped[("relay_worker_vendor_calls_total", failed)] >= 1
    latency = frozenset({("vendor", "sim-openai"), ("model", "gpt-4o-mini")})
    assert scraped[("relay_worker_vendor_latency_seconds_count", latency)] == 1
    assert scraped[("relay_worker_breaker_state", broken)] in (0, 1, 2)
    assert scraped[("relay_worker_in_flight", frozenset())] == 0
    # The ledger lines it wrote: the paid answer's cost (the failure cost nothing).
    paid = frozenset({("tenant", "demo"), ("alias", "gpt-4o-mini")})
    assert scraped[("relay_worker_cost_usd_total", paid)] > 0
    failure = frozenset({("tenant", "demo"), ("alias", "broken")})
    assert scraped[("relay_worker_cost_usd_total", failure)] == 0
    assert scraped[("relay_worker_batch_lane_queued", frozenset())] == 0
