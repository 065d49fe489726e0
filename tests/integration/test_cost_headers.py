"""What each answer cost and saved: response headers and the metrics say what the ledger
says (each process counting the lines it wrote)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import read_ledger
from tests.support.stack import DEMO_KEY, Stack


def counter(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_answers_carry_their_cost_and_the_metrics_add_it_up(relay: Stack) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
    traces = [uuid.uuid4().hex, uuid.uuid4().hex]
    async with httpx.AsyncClient(base_url=relay.url, timeout=30) as http:
        before = (await http.get("/metrics")).text
        answers = [
            await http.post(
                "/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {DEMO_KEY}", "x-relay-trace-id": trace},
            )
            for trace in traces
        ]
        after = (await http.get("/metrics")).text
    paid, hit = answers
    assert paid.headers["x-relay-cache"] == "miss" and hit.headers["x-relay-cache"] == "hit-l1"
    events = {e.trace_id: e for e in await read_ledger(relay, set(traces))}
    first, second = events[traces[0]], events[traces[1]]
    assert first.cost > 0
    assert float(paid.headers["x-relay-cost-usd"]) == pytest.approx(first.cost)
    assert float(paid.headers["x-relay-saved-usd"]) == pytest.approx(first.saved_cost)
    assert float(hit.headers["x-relay-cost-usd"]) == 0 == second.cost
    assert float(hit.headers["x-relay-saved-usd"]) == pytest.approx(second.saved_cost)
    assert second.saved_cost == pytest.approx(first.cost), "the hit saved what the call cost"

    # The gateway counts the line it wrote (the hit); the worker wrote the paid one.
    labels = {"tenant": "demo", "alias": "gpt-4o-mini"}
    spent = counter(after, "relay_cost_usd_total", **labels) - counter(
        before, "relay_cost_usd_total", **labels
    )
    saved = counter(after, "relay_saved_usd_total", tenant="demo") - counter(
        before, "relay_saved_usd_total", tenant="demo"
    )
    assert spent == 0
    assert saved == pytest.approx(second.saved_cost)
