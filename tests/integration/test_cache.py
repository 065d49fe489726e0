"""The response cache at the edge, end to end: real gateways, worker, Kafka, Redis, simulator.

Every test asks its own question (a uuid in the prompt), so the shared Redis never lets one
test answer another; vendor calls are counted on a vendor model only this module uses.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis.asyncio as aioredis
from openai.types.chat import ChatCompletion

from schemas.config import hash_key
from tables.cache import cache_key, redis_prefix
from tests.integration.conftest import read_ledger
from tests.support.stack import DEMO_KEY, Simulator, Stack, example_config

ALIAS = "cached"
VENDOR_MODEL = "gpt-4o-mini-cache-tests"  # counted in the simulator's stats by this name
OTHER_KEY = "rk-other-tenant-cache-tests"
CLOSED_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def cache_config(sim: Simulator) -> dict[str, Any]:
    """The example config, plus an alias of our own and a second tenant with its own key."""
    cfg = example_config(sim.url)
    cfg["models"][ALIAS] = {
        "cache_ttl": "dynamic",
        "candidates": [
            {
                "vendor": "sim-openai",
                "model": VENDOR_MODEL,
                "input_per_1m": 0.15,
                "output_per_1m": 0.60,
            }
        ],
    }
    cfg["tenants"]["other"] = {
        "keys": [{"id": "other-key", "sha256": hash_key(OTHER_KEY)}],
        "models": ["*"],
    }
    return cfg


@pytest.fixture(scope="module")
def pair(stack_factory: Any, simulator: Simulator) -> Stack:
    """Two gateway replicas (A = gateways[0], B = gateways[1]) in front of one worker."""
    return stack_factory(cache_config(simulator), gateways=2)  # type: ignore[no-any-return]


def prompt() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"tell me about {uuid.uuid4().hex}"}]


def vendor_calls(sim: Simulator) -> int:
    return int(sim.stats()["calls"].get(VENDOR_MODEL, 0))


@dataclass
class Reply:
    headers: httpx.Headers
    body: ChatCompletion

    @property
    def cache(self) -> str:
        return self.headers["x-relay-cache"]

    @property
    def text(self) -> str:
        return self.body.choices[0].message.content or ""


async def chat(
    gateway: str,
    messages: list[dict[str, Any]],
    *,
    key: str = DEMO_KEY,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> Reply:
    """One non-streamed chat through the official SDK, with the response headers."""
    client = openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0)
    async with client:
        raw = await client.chat.completions.with_raw_response.create(
            model=ALIAS, messages=messages, extra_headers=headers or {}, **params
        )
        return Reply(raw.headers, raw.parse())


@dataclass
class Streamed:
    headers: httpx.Headers
    data: list[str]  # every ``data:`` payload, ``[DONE]`` included

    @property
    def cache(self) -> str:
        return self.headers["x-relay-cache"]

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
        found = [c["usage"] for c in self.chunks if c.get("usage")]
        assert len(found) <= 1, "at most one usage chunk"
        return found[0] if found else None


async def stream_chat(
    gateway: str,
    messages: list[dict[str, Any]],
    *,
    include_usage: bool = True,
    headers: dict[str, str] | None = None,
) -> Streamed:
    """One streamed chat read as raw server-sent events."""
    body: dict[str, Any] = {"model": ALIAS, "messages": messages, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    hdrs = {"authorization": f"Bearer {DEMO_KEY}", **(headers or {})}
    data: list[str] = []
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream("POST", f"{gateway}/v1/chat/completions", json=body, headers=hdrs) as resp,
    ):
        assert resp.status_code == 200, await resp.aread()
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                data.append(line.removeprefix("data: "))
    return Streamed(resp.headers, data)


async def test_second_identical_request_is_an_l1_hit(pair: Stack, simulator: Simulator):
    messages = prompt()
    before = vendor_calls(simulator)
    first = await chat(pair.gateways[0], messages)
    second = await chat(pair.gateways[0], messages)

    assert (first.cache, second.cache) == ("miss", "hit-l1")
    assert vendor_calls(simulator) - before == 1
    assert second.text == first.text and second.text
    assert second.body.usage == first.body.usage
    assert second.body.model == ALIAS
    assert second.body.id != first.body.id, "a cached answer is served under a new id"


async def test_an_answer_from_gateway_a_is_an_l2_hit_on_gateway_b(
    pair: Stack, simulator: Simulator
):
    messages = prompt()
    before = vendor_calls(simulator)
    on_a = await chat(pair.gateways[0], messages)
    on_b = await chat(pair.gateways[1], messages)
    again_on_b = await chat(pair.gateways[1], messages)

    assert (on_a.cache, on_b.cache, again_on_b.cache) == ("miss", "hit-l2", "hit-l1")
    assert vendor_calls(simulator) - before == 1
    assert on_b.text == on_a.text == again_on_b.text
    assert on_b.body.usage == on_a.body.usage


async def test_key_order_and_whitespace_around_the_text_do_not_change_the_key(
    pair: Stack, simulator: Simulator
):
    word = uuid.uuid4().hex
    url = f"{pair.gateways[0]}/v1/chat/completions"
    auth = {"authorization": f"Bearer {DEMO_KEY}", "content-type": "application/json"}
    first = (
        '{"model": "cached", "temperature": 0.5,'
        ' "messages": [{"role": "user", "content": "What is ' + word + '?"}]}'
    )
    reordered = (
        '{"messages": [{"content": "  What is ' + word + '?  \\r\\n", "role": "user"}],'
        ' "temperature": 0.5, "model": "cached"}'
    )
    hotter = first.replace("0.5", "0.9")
    before = vendor_calls(simulator)
    async with httpx.AsyncClient(timeout=30) as http:
        a = await http.post(url, content=first, headers=auth)
        b = await http.post(url, content=reordered, headers=auth)
        assert vendor_calls(simulator) - before == 1
        c = await http.post(url, content=hotter, headers=auth)

    assert [r.status_code for r in (a, b, c)] == [200, 200, 200]
    assert [r.headers["x-relay-cache"] for r in (a, b, c)] == ["miss", "hit-l1", "miss"]
    assert vendor_calls(simulator) - before == 2
    content = [r.json()["choices"][0]["message"]["content"] for r in (a, b)]
    assert content[0] == content[1]


async def test_a_parameter_at_its_default_is_the_same_request(pair: Stack, simulator: Simulator):
    messages = prompt()
    before = vendor_calls(simulator)
    plain = await chat(pair.gateways[0], messages)
    explicit = await chat(pair.gateways[0], messages, temperature=1.0, user="someone")
    assert (plain.cache, explicit.cache) == ("miss", "hit-l1")
    assert vendor_calls(simulator) - before == 1


@pytest.mark.parametrize(
    "headers",
    [{"x-relay-cache": "bypass"}, {"cache-control": "no-cache"}],
    ids=["x-relay-cache-bypass", "cache-control-no-cache"],
)
async def test_bypass_skips_the_cache(pair: Stack, simulator: Simulator, headers: dict[str, str]):
    messages = prompt()
    stored = await chat(pair.gateways[0], messages)
    before = vendor_calls(simulator)
    bypassed = await chat(pair.gateways[0], messages, headers=headers)

    assert (stored.cache, bypassed.cache) == ("miss", "miss")
    assert vendor_calls(simulator) - before == 1
    assert bypassed.text == stored.text
    assert (await chat(pair.gateways[0], messages)).cache == "hit-l1"  # the entry is still there


async def test_refresh_calls_the_vendor_and_stores_again(
    pair: Stack, simulator: Simulator, redis_url: str
):
    messages = prompt()
    body = {"model": ALIAS, "messages": messages}
    redis_key = redis_prefix(pair.prefix) + cache_key(
        scope="tenant:demo", alias=ALIAS, endpoint="chat", body=body
    )
    r = aioredis.Redis.from_url(redis_url)

    async def fresh_for_s() -> float:
        """How long L2's entry stays fresh (Redis keeps it longer, for stale readers)."""
        return float(orjson.loads(await r.get(redis_key))["fresh_until"]) - time.time()

    async def created() -> float:
        return float(orjson.loads(await r.get(redis_key))["entry"]["created"])

    try:
        stored = await chat(pair.gateways[0], messages)
        assert stored.cache == "miss"
        assert 0 < await fresh_for_s() <= 60, "the alias's dynamic TTL: 60 s"
        first = await created()

        before = vendor_calls(simulator)
        headers = {"x-relay-cache": "refresh", "x-relay-cache-ttl": "semi-static"}
        refreshed = await chat(pair.gateways[0], messages, headers=headers)
        assert refreshed.cache == "miss"
        assert vendor_calls(simulator) - before == 1

        assert 60 < await fresh_for_s() <= 15 * 60, "stored again, with the new TTL"
        assert await created() > first
    finally:
        await r.aclose()
    on_a = await chat(pair.gateways[0], messages)
    on_b = await chat(pair.gateways[1], messages)
    assert (on_a.cache, on_b.cache) == ("hit-l1", "hit-l2")
    assert vendor_calls(simulator) - before == 1
    assert on_a.text == on_b.text == refreshed.text


async def test_a_stream_is_served_from_a_cached_answer(pair: Stack, simulator: Simulator):
    messages = prompt()
    answer = await chat(pair.gateways[0], messages)
    before = vendor_calls(simulator)
    replay = await stream_chat(pair.gateways[0], messages)
    from_l2 = await stream_chat(pair.gateways[1], messages, include_usage=False)

    assert (answer.cache, replay.cache, from_l2.cache) == ("miss", "hit-l1", "hit-l2")
    assert vendor_calls(simulator) - before == 0
    assert replay.text == from_l2.text == answer.text
    assert replay.data[-1] == "[DONE]" and from_l2.data[-1] == "[DONE]"
    assert answer.body.usage is not None
    assert replay.usage is not None
    assert replay.usage["prompt_tokens"] == answer.body.usage.prompt_tokens
    assert replay.usage["completion_tokens"] == answer.body.usage.completion_tokens
    assert from_l2.usage is None, "no usage chunk unless stream_options.include_usage"
    assert replay.chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_an_answer_is_served_from_a_cached_stream(pair: Stack, simulator: Simulator):
    messages = prompt()
    streamed = await stream_chat(pair.gateways[0], messages)
    before = vendor_calls(simulator)
    answer = await chat(pair.gateways[0], messages)
    on_b = await chat(pair.gateways[1], messages)
    replay = await stream_chat(pair.gateways[1], messages)

    assert streamed.cache == "miss" and streamed.data[-1] == "[DONE]"
    assert (answer.cache, on_b.cache, replay.cache) == ("hit-l1", "hit-l2", "hit-l1")
    assert vendor_calls(simulator) - before == 0
    assert streamed.text and answer.text == on_b.text == replay.text == streamed.text
    assert answer.body.choices[0].finish_reason == "stop"
    assert replay.data[-1] == "[DONE]" and replay.usage == streamed.usage
    deltas = [c["choices"][0]["delta"] for c in replay.chunks if c["choices"]]
    assert deltas == [c["choices"][0]["delta"] for c in streamed.chunks if c["choices"]]
    # A chat.completion always carries its usage, whichever form the answer was cached in.
    assert streamed.usage is not None
    for reply in (answer, on_b):
        assert reply.body.usage is not None, f"{reply.cache}: no usage in the answer"
        assert reply.body.usage.prompt_tokens == streamed.usage["prompt_tokens"]
        assert reply.body.usage.completion_tokens == streamed.usage["completion_tokens"]


async def test_cache_hits_are_metered_as_free_and_saving(pair: Stack):
    messages = prompt()
    traces = [uuid.uuid4().hex for _ in range(3)]
    original = await chat(pair.gateways[0], messages, headers={"x-relay-trace-id": traces[0]})
    hit_l1 = await chat(pair.gateways[0], messages, headers={"x-relay-trace-id": traces[1]})
    hit_l2 = await chat(pair.gateways[1], messages, headers={"x-relay-trace-id": traces[2]})
    assert [r.cache for r in (original, hit_l1, hit_l2)] == ["miss", "hit-l1", "hit-l2"]
    assert hit_l1.headers["x-relay-trace-id"] == traces[1]

    events = {e.trace_id: e for e in await read_ledger(pair, set(traces))}
    assert set(events) == set(traces)
    paid = events[traces[0]]
    assert not paid.cache_hit and paid.cost > 0 and paid.status == "ok"
    for trace in traces[1:]:
        hit = events[trace]
        assert hit.cache_hit and not hit.coalesced and hit.status == "ok"
        assert hit.cost == 0
        assert hit.saved_cost > 0 and hit.saved_cost == pytest.approx(paid.cost)
        assert hit.direct_cost == pytest.approx(paid.direct_cost)
        assert hit.usage == paid.usage
        assert (hit.tenant, hit.key_id, hit.alias) == ("demo", "demo-key", ALIAS)
        assert (hit.vendor, hit.vendor_model) == ("sim-openai", VENDOR_MODEL)


async def test_a_tenant_never_reads_another_tenants_entry(pair: Stack, simulator: Simulator):
    messages = prompt()
    before = vendor_calls(simulator)
    demo = await chat(pair.gateways[0], messages)
    other = await chat(pair.gateways[0], messages, key=OTHER_KEY)
    assert (demo.cache, other.cache) == ("miss", "miss")
    assert vendor_calls(simulator) - before == 2

    other_again = await chat(pair.gateways[0], messages, key=OTHER_KEY)
    other_on_b = await chat(pair.gateways[1], messages, key=OTHER_KEY)
    demo_on_b = await chat(pair.gateways[1], messages)
    assert (other_again.cache, other_on_b.cache, demo_on_b.cache) == ("hit-l1", "hit-l2", "hit-l2")
    assert vendor_calls(simulator) - before == 2


async def test_a_redis_outage_never_reaches_the_client(stack_factory: Any, simulator: Simulator):
    stack = stack_factory(cache_config(simulator), extra_env={"RELAY_REDIS_URL": CLOSED_REDIS})
    messages = prompt()
    before = vendor_calls(simulator)
    first = await chat(stack.url, messages)
    second = await chat(stack.url, messages)
    streamed = await stream_chat(stack.url, prompt())

    assert (first.cache, second.cache, streamed.cache) == ("miss", "hit-l1", "miss")
    assert second.text == first.text
    assert streamed.text and streamed.data[-1] == "[DONE]"
    assert vendor_calls(simulator) - before == 2

    async with httpx.AsyncClient(timeout=10) as http:
        ready = await http.get(f"{stack.url}/readyz")
        metrics = await http.get(f"{stack.url}/metrics")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "broker": True, "worker": True, "redis": False}
    assert "relay_redis_up 0.0" in metrics.text.splitlines()
