"""In-flight coalescing, end to end: identical requests under way share one vendor call.

The vendor is made slow (latency_ms=300) for the length of a test, so that every request
of a burst reaches the worker while the first call is still under way.  Each alias calls
a vendor model only this module uses, and each test its own prompt, so the simulator's
call counts (read before and after) are this test's alone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from openai.types import CompletionUsage

from schemas.envelope import UsageEvent
from streams.topics import Topics
from tests.integration.conftest import read_ledger
from tests.support.stack import DEMO_KEY, SIM_KEY, Simulator, Stack, example_config

ALIAS, VENDOR_MODEL = "shared", "gpt-4o-mini-coalescing-tests"
FLAKY, FLAKY_MODEL = "flaky", "gpt-4o-mini-coalescing-fails"
BURST = 20
SLOW_MS = 300


def coalescing_config(sim: Simulator) -> dict[str, Any]:
    cfg = example_config(sim.url)
    for alias, model in ((ALIAS, VENDOR_MODEL), (FLAKY, FLAKY_MODEL)):
        cfg["models"][alias] = {
            "cache_ttl": "dynamic",
            "candidates": [
                {"vendor": "sim-openai", "model": model, "input_per_1m": 0.15, "output_per_1m": 0.6}
            ],
        }
    return cfg


@pytest.fixture(scope="module")
def single(stack_factory: Any, simulator: Simulator) -> Stack:
    """One gateway, one worker."""
    return stack_factory(coalescing_config(simulator))  # type: ignore[no-any-return]


async def group_members(stack: Stack) -> tuple[str, int]:
    """State and member count of the workers' consumer group on the request topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        [described] = await admin.describe_consumer_groups([Topics(stack.prefix).app_id])
        _, _, state, _, _, members, *_ = described.groups[0]
        return str(state), len(members)
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def replicas(stack_factory: Any, simulator: Simulator) -> Stack:
    """Two gateways and two workers, once both workers are in the request consumer group."""
    stack: Stack = stack_factory(coalescing_config(simulator), gateways=2, workers=2)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while await group_members(stack) != ("Stable", 2):
        assert loop.time() < deadline, f"workers never both joined: {await group_members(stack)}"
        await asyncio.sleep(0.5)
    # Both gateways get answers through the settled group before a test counts anything.
    warm = [
        asyncio.wait_for(chat(stack.gateways[i % 2], prompt(), alias="gpt-4o-mini"), 30)
        for i in range(16)
    ]
    await asyncio.gather(*warm)
    return stack


@pytest.fixture
def vendor(simulator: Simulator) -> Iterator[Callable[..., None]]:
    """Change the simulator's live config for one test; what was changed is put back."""
    saved = httpx.get(f"{simulator.url}/sim/config", timeout=5).json()
    changed: set[str] = set()

    def configure(**changes: Any) -> None:
        changed.update(changes)
        simulator.configure(**changes)

    yield configure
    if changed:
        simulator.configure(**{k: saved[k] for k in changed})


def prompt() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"one answer for all about {uuid.uuid4().hex}"}]


def vendor_calls(sim: Simulator, model: str = VENDOR_MODEL) -> int:
    return int(sim.stats()["calls"].get(model, 0))


@dataclass
class Reply:
    trace: str
    headers: httpx.Headers
    text: str
    usage: CompletionUsage | None


async def chat(
    gateway: str, messages: list[dict[str, Any]], *, alias: str = ALIAS, trace: str = ""
) -> Reply:
    """One non-streamed chat through the official SDK, with the response headers."""
    trace = trace or uuid.uuid4().hex
    client = openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key=DEMO_KEY, max_retries=0)
    async with client:
        raw = await client.chat.completions.with_raw_response.create(
            model=alias, messages=messages, extra_headers={"x-relay-trace-id": trace}
        )
        body = raw.parse()
    return Reply(trace, raw.headers, body.choices[0].message.content or "", body.usage)


@dataclass
class Streamed:
    trace: str
    headers: httpx.Headers | None = None
    data: list[str] = field(default_factory=list)  # every ``data:`` payload, ``[DONE]`` too
    first_chunk: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [orjson.loads(d) for d in self.data if d != "[DONE]"]

    @property
    def text(self) -> str:
        return "".join(
            c["choices"][0]["delta"].get("content") or "" for c in self.chunks if c["choices"]
        )

    @property
    def usage(self) -> dict[str, Any] | None:
        return next((c["usage"] for c in self.chunks if c.get("usage")), None)


async def stream_chat(
    gateway: str, messages: list[dict[str, Any]], out: Streamed, *, leave_after: int = 0
) -> Streamed:
    """One streamed chat (with the usage chunk), read as raw server-sent events into ``out``;
    with ``leave_after``, the client disconnects once it has read that many."""
    body = {
        "model": ALIAS,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"authorization": f"Bearer {DEMO_KEY}", "x-relay-trace-id": out.trace}
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream("POST", f"{gateway}/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        assert resp.status_code == 200, await resp.aread()
        out.headers = resp.headers
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                out.data.append(line.removeprefix("data: "))
                out.first_chunk.set()
                if len(out.data) == leave_after:
                    return out  # (leaving the block closes the connection mid-stream)
    out.done = True
    return out


async def direct_text(sim: Simulator, messages: list[dict[str, Any]]) -> str:
    """What the vendor itself answers (the simulator is deterministic per model and prompt)."""
    client = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key=SIM_KEY, max_retries=0)
    async with client:
        got = await client.chat.completions.create(model=VENDOR_MODEL, messages=messages)
    return got.choices[0].message.content or ""


def one_miss_and_the_rest_coalesced(headers: list[httpx.Headers | None]) -> None:
    counted = Counter(h["x-relay-cache"] if h else None for h in headers)
    assert counted == {"miss": 1, "coalesced": len(headers) - 1}, counted


def one_paid_and_the_rest_free(events: list[UsageEvent], n: int) -> None:
    assert len(events) == n, f"one ledger event per request, got {len(events)} for {n}"
    paid = [e for e in events if not e.coalesced]
    shared = [e for e in events if e.coalesced]
    assert len(paid) == 1, [(e.trace_id, e.coalesced, e.cost) for e in events]
    assert paid[0].cost > 0 and not paid[0].cache_hit
    assert len(shared) == n - 1
    for e in shared:
        assert e.status == "ok" and not e.cache_hit
        assert e.cost == 0
        assert e.saved_cost > 0 and e.saved_cost == pytest.approx(paid[0].cost)
        assert e.usage == paid[0].usage
        assert (e.vendor, e.vendor_model) == ("sim-openai", VENDOR_MODEL)


async def test_identical_requests_share_one_vendor_call(
    single: Stack, simulator: Simulator, vendor: Callable[..., None]
):
    vendor(latency_ms=SLOW_MS)
    messages = prompt()
    before = vendor_calls(simulator)
    replies = await asyncio.gather(*(chat(single.url, messages) for _ in range(BURST)))

    assert vendor_calls(simulator) - before == 1
    assert len({r.text for r in replies}) == 1 and replies[0].text
    assert replies[0].usage is not None
    assert all(r.usage == replies[0].usage for r in replies)
    one_miss_and_the_rest_coalesced([r.headers for r in replies])
    one_paid_and_the_rest_free(await read_ledger(single, {r.trace for r in replies}), BURST)
    assert replies[0].text == await direct_text(simulator, messages)


async def test_identical_streams_share_one_vendor_call(
    single: Stack, simulator: Simulator, vendor: Callable[..., None]
):
    vendor(latency_ms=SLOW_MS)
    messages = prompt()
    before = vendor_calls(simulator)
    streams = [Streamed(uuid.uuid4().hex) for _ in range(BURST)]
    await asyncio.gather(*(stream_chat(single.url, messages, s) for s in streams))

    assert vendor_calls(simulator) - before == 1
    want = await direct_text(simulator, messages)
    for s in streams:
        assert s.text == want
        assert s.data[-1] == "[DONE]"
        assert s.usage == streams[0].usage and s.usage is not None
    deltas = [[c["choices"] for c in s.chunks] for s in streams]
    assert all(d == deltas[0] for d in deltas), "every stream got the same chunks, in order"
    one_miss_and_the_rest_coalesced([s.headers for s in streams])
    one_paid_and_the_rest_free(await read_ledger(single, {s.trace for s in streams}), BURST)


async def test_a_stream_joined_midway_still_gets_every_chunk(
    single: Stack, simulator: Simulator, vendor: Callable[..., None]
):
    vendor(latency_ms=SLOW_MS, chunk_gap_ms=100)
    messages = prompt()
    before = vendor_calls(simulator)
    first, late = Streamed(uuid.uuid4().hex), Streamed(uuid.uuid4().hex)
    leader = asyncio.create_task(stream_chat(single.url, messages, first))
    await asyncio.wait_for(first.first_chunk.wait(), 10)
    seen_before_join = len(first.data)
    follower = asyncio.create_task(stream_chat(single.url, messages, late))
    await asyncio.wait_for(late.first_chunk.wait(), 10)
    assert not first.done, "the late stream joined while the first was still streaming"
    await asyncio.wait_for(asyncio.gather(leader, follower), 30)

    assert vendor_calls(simulator) - before == 1
    assert first.headers is not None and late.headers is not None
    assert (first.headers["x-relay-cache"], late.headers["x-relay-cache"]) == ("miss", "coalesced")
    assert len(first.data) > seen_before_join + 2, "the first stream went on after the join"
    assert late.text == first.text == await direct_text(simulator, messages)
    assert [c["choices"] for c in late.chunks] == [c["choices"] for c in first.chunks]
    assert late.data[-1] == "[DONE]" and late.usage == first.usage


async def test_a_plain_request_joining_a_stream_gets_the_whole_answer(
    single: Stack, simulator: Simulator, vendor: Callable[..., None]
):
    vendor(latency_ms=SLOW_MS, chunk_gap_ms=100)
    messages = prompt()
    before = vendor_calls(simulator)
    streamed = Streamed(uuid.uuid4().hex)
    leader = asyncio.create_task(stream_chat(single.url, messages, streamed))
    await asyncio.wait_for(streamed.first_chunk.wait(), 10)
    plain = await chat(single.url, messages)
    await asyncio.wait_for(leader, 30)

    assert vendor_calls(simulator) - before == 1
    assert streamed.headers is not None
    assert (streamed.headers["x-relay-cache"], plain.headers["x-relay-cache"]) == (
        "miss",
        "coalesced",
    )
    assert plain.text == streamed.text
    assert streamed.usage is not None
    assert plain.usage is not None, "a chat.completion carries its usage"
    assert plain.usage.completion_tokens == streamed.usage["completion_tokens"]


async def test_identical_requests_across_replicas_share_one_vendor_call(
    replicas: Stack, simulator: Simulator, vendor: Callable[..., None]
):
    vendor(latency_ms=SLOW_MS)
    messages = prompt()
    before = vendor_calls(simulator)
    replies = await asyncio.gather(
        *(chat(replicas.gateways[i % 2], messages) for i in range(BURST))
    )

    assert vendor_calls(simulator) - before == 1
    assert len({r.text for r in replies}) == 1 and replies[0].text
    one_miss_and_the_rest_coalesced([r.headers for r in replies])
    one_paid_and_the_rest_free(await read_ledger(replicas, {r.trace for r in replies}), BURST)


async def test_a_failed_call_fails_every_waiter_alike(
    single: Stack, simulator: Simulator, vendor: Callable[..., None]
):
    vendor(error_rate=1.0)
    messages = prompt()
    before = vendor_calls(simulator, FLAKY_MODEL)
    traces = [uuid.uuid4().hex for _ in range(10)]

    async def one(trace: str) -> int:
        try:
            await chat(single.url, messages, alias=FLAKY, trace=trace)
        except openai.APIStatusError as exc:
            assert exc.body["code"] == "vendor_unavailable"  # type: ignore[index]
            return exc.status_code
        return 200

    statuses = await asyncio.gather(*(asyncio.wait_for(one(t), 30) for t in traces))
    assert statuses == [502] * len(traces)
    calls = vendor_calls(simulator, FLAKY_MODEL) - before
    assert 1 <= calls < len(traces), f"{calls} vendor calls: the failure was not shared"

    events = await read_ledger(single, set(traces))
    assert len(events) == len(traces)
    assert all(e.status == "error" and e.error_code == "vendor_unavailable" for e in events)
    assert all(e.cost == 0 for e in events)


async def a_long_answer(sim: Simulator) -> tuple[list[dict[str, Any]], int]:
    """A prompt the vendor answers at length (30 words at least), and its output tokens."""
    client = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key=SIM_KEY, max_retries=0)
    async with client:
        for _ in range(100):
            messages = prompt()
            got = await client.chat.completions.create(model=VENDOR_MODEL, messages=messages)
            if got.usage is not None and got.usage.completion_tokens >= 30:
                return messages, got.usage.completion_tokens
    raise AssertionError("no long answer in 100 prompts")


async def test_a_stream_its_client_left_stops_the_vendor_call(
    single: Stack, simulator: Simulator, vendor: Callable[..., None]
):
    """The client reads three events and disconnects: its gateway sends a cancel notice,
    and the worker, nobody else waiting, stops the call and writes the request's line
    as client_closed, billed the few words that streamed, well before the answer would
    have ended (a word every 100 ms)."""
    messages, full = await a_long_answer(simulator)
    vendor(chunk_gap_ms=100)
    left = await stream_chat(single.url, messages, Streamed(uuid.uuid4().hex), leave_after=3)
    assert not left.done
    [line] = await read_ledger(single, {left.trace})
    assert (line.status, line.error_code, line.vendor) == ("error", "client_closed", "sim-openai")
    assert 0 < line.usage.output_tokens <= full // 3, (line.usage, full)
    assert line.latency_ms < full * 100 / 2, "the call ended long before the whole answer"
    # The call was stopped, not left for another to join: the same question is answered.
    again = await stream_chat(single.url, messages, Streamed(uuid.uuid4().hex))
    assert again.done and again.usage is not None and again.usage["completion_tokens"] == full
