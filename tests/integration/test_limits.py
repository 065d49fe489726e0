"""RPM limits, end to end: the token bucket's pace, 429 when a deadline cannot be met, and
priority lanes under a flood.

One simulator of this module's own; each test calls a vendor model only it uses, behind a
vendor of its own (buckets are per vendor), so call counts and buckets are the test's alone.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from schemas.config import hash_key
from schemas.errors import RateLimited
from tests.integration.conftest import WORKDIR
from tests.support.stack import DEMO_KEY, Simulator, Stack, start_simulator

PACED = ("paced", "gpt-4o-mini-rpm-pace", 120)  # alias, vendor model, rpm
SCARCE = ("scarce", "gpt-4o-mini-rpm-deadline", 6)
LANES = ("lanes", "llama3.2-lanes", 60)


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    started = start_simulator(WORKDIR / "sim-limits", latency_ms=5)
    yield started
    started.proc.stop()


@pytest.fixture(scope="module")
def stack(stack_factory: Any, sim: Simulator) -> Stack:
    vendors: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for (alias, model, rpm), kind in ((PACED, "openai"), (SCARCE, "openai"), (LANES, "ollama")):
        # Ollama has no batch API, so background chat goes through the gate, not the
        # batch lane.
        base = sim.url + "/v1" if kind == "openai" else sim.url
        vendors[alias] = {"kind": kind, "base_url": base, "api_key_env": "RELAY_SIM_KEY"}
        vendors[alias]["rpm"] = rpm
        models[alias] = {"candidates": [{"vendor": alias, "model": model}]}
    demo = hash_key(DEMO_KEY)
    cfg = {
        "vendors": vendors,
        "models": models,
        "tenants": {"demo": {"keys": [{"id": "demo-key", "sha256": demo}], "models": ["*"]}},
    }
    return stack_factory(cfg)  # type: ignore[no-any-return]


@dataclass
class Timed:
    reply: httpx.Response
    sent: float
    done: float

    @property
    def latency(self) -> float:
        return self.done - self.sent


async def chat(
    http: httpx.AsyncClient,
    stack: Stack,
    alias: str,
    *,
    timeout_s: float = 60,
    priority: str = "realtime",
) -> Timed:
    """One chat with a prompt never asked before, past the cache, timed on our clock."""
    body = {
        "model": alias,
        "messages": [{"role": "user", "content": f"tell me about {uuid.uuid4().hex}"}],
        "max_tokens": 16,
    }
    headers = {
        "authorization": f"Bearer {DEMO_KEY}",
        "x-relay-cache": "bypass",
        "x-relay-timeout": str(timeout_s),
        "x-relay-priority": priority,
    }
    sent = time.monotonic()
    reply = await http.post(
        f"{stack.url}/v1/chat/completions", json=body, headers=headers, timeout=timeout_s + 10
    )
    return Timed(reply, sent, time.monotonic())


async def calls(http: httpx.AsyncClient, sim: Simulator, model: str) -> int:
    stats = (await http.get(f"{sim.url}/stats", timeout=5)).json()
    return int(stats["calls"].get(model, 0))


async def watch_calls(
    http: httpx.AsyncClient, sim: Simulator, model: str, until: asyncio.Event
) -> list[tuple[float, int]]:
    """(time, count) each time the simulator's count for ``model`` moves, polled at 50 Hz."""
    seen = [(time.monotonic(), await calls(http, sim, model))]
    while not until.is_set():
        await asyncio.sleep(0.02)
        count = await calls(http, sim, model)
        if count != seen[-1][1]:
            seen.append((time.monotonic(), count))
    return seen


async def test_the_vendor_rpm_bucket_holds_the_rate_within_5pct(stack: Stack, sim: Simulator):
    alias, model, rpm = PACED
    rate, burst = rpm / 60, max(1.0, rpm / 60)  # the gate's refill per second and capacity
    queued = 24  # about ten seconds of calls, all queued at once: the bucket never idles
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as http:
        done = asyncio.Event()
        watcher = asyncio.create_task(watch_calls(http, sim, model, done))
        replies = await asyncio.gather(*(chat(http, stack, alias) for _ in range(queued)))
        await asyncio.sleep(0.1)
        done.set()
        seen = await watcher
    assert [r.reply.status_code for r in replies] == [200] * queued
    start = seen[0][1]
    assert seen[-1][1] - start == queued, "every request made exactly one vendor call"
    # Past the initial burst, each call waits for the bucket to refill.  (The burst itself
    # is not timed here: the worker's first vendor calls also open their connections.)
    paced = [(t, n) for t, n in seen if n - start > burst]
    (t0, n0), (t1, n1) = paced[0], paced[-1]
    achieved = (n1 - n0) / (t1 - t0)
    assert achieved == pytest.approx(rate, rel=0.05), (
        f"{achieved:.3f} calls/s over {t1 - t0:.1f}s past the burst, limit {rate:.3f}/s"
    )


async def test_a_deadline_the_bucket_cannot_meet_gets_429_with_retry_after(
    stack: Stack, sim: Simulator
):
    alias, model, rpm = SCARCE  # one call per ten seconds, capacity one
    async with httpx.AsyncClient() as http:
        first = await chat(http, stack, alias)
        assert first.reply.status_code == 200, first.reply.text
        before = await calls(http, sim, model)
        hurried = await chat(http, stack, alias, timeout_s=1.5)
        after = await calls(http, sim, model)
    reply = hurried.reply
    assert reply.status_code == RateLimited.status, reply.text
    assert orjson.loads(reply.content)["error"]["code"] == RateLimited.code
    retry_after = int(reply.headers["retry-after"])
    assert 1 <= retry_after <= 60 / rpm, f"Retry-After {retry_after}s"
    assert after == before, "a request refused by the bucket never reaches the vendor"
    assert hurried.latency < 1.5 + 1.0, f"the 429 took {hurried.latency:.2f}s"


async def test_realtime_overtakes_a_background_flood(stack: Stack, sim: Simulator):
    alias, model, rpm = LANES
    interval = 60 / rpm  # one token per interval, capacity one
    flood, realtime = 12, 4
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as http:
        background = [
            asyncio.create_task(chat(http, stack, alias, priority="background"))
            for _ in range(flood)
        ]
        await asyncio.sleep(1.5 * interval)  # the flood is queued on the bucket
        urgent: list[Timed] = []
        others: list[int] = []  # vendor calls not its own while each realtime one waited
        for _ in range(realtime):
            before = await calls(http, sim, model)
            urgent.append(await chat(http, stack, alias, priority="realtime"))
            others.append(await calls(http, sim, model) - before - 1)
        pending_then = sum(not t.done() for t in background)
        waited = await asyncio.gather(*background)
        made = await calls(http, sim, model)
    assert [t.reply.status_code for t in urgent] == [200] * realtime
    assert [t.reply.status_code for t in waited] == [200] * flood
    # First come, first served, each realtime request would wait for the eight or more
    # background calls queued ahead of it.  Ahead of them, it waits for the next token
    # (at most one background call in between: one given the token as it arrived), or
    # a few more when a loaded machine slows its trips: counted, not timed, so the
    # machine's pace does not decide (a 2-interval bound on its latency did).
    latencies = [t.latency for t in urgent]
    assert max(others) <= 3, (
        f"background calls while each realtime request waited: {others}; its latencies "
        f"{[f'{s:.2f}' for s in latencies]}s, bucket interval {interval:.1f}s"
    )
    assert pending_then >= flood - 2 - realtime, (
        f"only {pending_then} of {flood} background requests were still waiting"
    )
    slow = statistics.median(t.latency for t in waited)
    assert slow > 3 * max(latencies), f"background median {slow:.2f}s"
    assert made == flood + realtime, "every request went through the gate to the vendor"
