"""The response cache against the real Redis: shared L2, TTLs, LRU, and riding out an outage."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from schemas.usage import Usage
from tables.cache import CacheEntry, L1Cache, ResponseCache, cache_key, redis_prefix


def client(url: str) -> aioredis.Redis:
    """A client built like the relay's: a dead Redis costs a quarter second at most."""
    return aioredis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)


CacheFactory = Callable[..., ResponseCache]


class Clock:
    """A hand-moved clock for the retry interval; starts at real monotonic time."""

    def __init__(self) -> None:
        self.t = time.monotonic()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def cache_factory(redis_url: str) -> AsyncIterator[CacheFactory]:
    """Caches that share one fresh key prefix, each its own 'replica' with its own L1."""
    prefix = f"relay:test:{uuid.uuid4().hex}:"
    clients: list[aioredis.Redis] = []

    def make(
        *,
        url: str | None = None,
        max_entries: int = 100,
        clock: Callable[[], float] | None = None,
        stale_s: float = 0.0,
        wall: Callable[[], float] = time.time,
    ) -> ResponseCache:
        made = client(url or redis_url)
        clients.append(made)
        l1 = L1Cache(max_entries, clock=clock or time.monotonic)
        return ResponseCache(l1, made, prefix=prefix, stale_s=stale_s, wall=wall)

    yield make
    cleanup = aioredis.Redis.from_url(redis_url)
    keys = [k async for k in cleanup.scan_iter(match=prefix + "*")]
    if keys:
        await cleanup.delete(*keys)
    await cleanup.aclose()
    for made in clients:
        await made.aclose()


def answer(text: str = "Paris.") -> CacheEntry:
    return CacheEntry(
        body={"choices": [{"message": {"role": "assistant", "content": text}}]},
        usage=Usage(input_tokens=12, output_tokens=3, cache_read_tokens=4),
        vendor="sim-openai",
        model="gpt-4o-mini",
        created=1_700_000_000.0,
    )


def streamed() -> CacheEntry:
    chunks = [{"choices": [{"delta": {"content": part}}]} for part in ("Pa", "ris", ".")]
    return CacheEntry(chunks=chunks, usage=Usage(output_tokens=3), vendor="v", model="m", created=1)


KEY = cache_key(
    scope="tenant:acme",
    alias="fast",
    endpoint="chat",
    body={"messages": [{"role": "user", "content": "Capital of France?"}]},
)


async def test_a_second_replica_reads_through_l2_and_promotes_to_l1(
    cache_factory: CacheFactory,
) -> None:
    a, b = cache_factory(), cache_factory()
    await a.put(KEY, answer(), ttl_s=30)
    assert await a.get(KEY) == (answer(), "l1")

    hit = await b.get(KEY)
    assert hit == (answer(), "l2")
    assert await b.get(KEY) == (answer(), "l1")  # promoted
    assert b.l2_healthy and b.l2_errors == 0


async def test_stream_chunks_survive_the_round_trip(cache_factory: CacheFactory) -> None:
    a, b = cache_factory(), cache_factory()
    await a.put("stream-key", streamed(), ttl_s=30)
    hit = await b.get("stream-key")
    assert hit is not None
    entry, level = hit
    assert level == "l2" and entry == streamed()
    assert [c["choices"][0]["delta"]["content"] for c in entry.chunks or []] == ["Pa", "ris", "."]


async def test_miss_on_both_levels(cache_factory: CacheFactory) -> None:
    assert await cache_factory().get("never-stored") is None


async def test_entries_expire_in_redis_and_in_the_promoted_l1(
    cache_factory: CacheFactory, redis_url: str
) -> None:
    a, b = cache_factory(), cache_factory()
    await a.put(KEY, answer(), ttl_s=0.3)
    raw = aioredis.Redis.from_url(redis_url)
    ttl_ms = await raw.pttl(a.prefix + KEY)
    await raw.aclose()
    assert 0 < ttl_ms <= 300

    assert await b.get(KEY) == (answer(), "l2")  # b's L1 now holds it for what was left
    await asyncio.sleep(0.35)
    assert await b.get(KEY) is None
    assert await a.get(KEY) is None


async def test_invalidate_removes_it_everywhere(cache_factory: CacheFactory) -> None:
    a, b = cache_factory(), cache_factory()
    await a.put(KEY, answer(), ttl_s=30)
    await a.invalidate(KEY)
    assert await a.get(KEY) is None
    assert await b.get(KEY) is None


async def test_l1_evicts_least_recently_used_and_l2_still_has_it(
    cache_factory: CacheFactory,
) -> None:
    cache = cache_factory(max_entries=2)
    for name in ("one", "two", "three"):
        await cache.put(name, answer(name), ttl_s=30)
    assert len(cache.l1) == 2
    assert cache.l1.get("one") is None  # evicted from L1 ...
    assert await cache.get("one") == (answer("one"), "l2")  # ... but shared L2 had it
    assert await cache.get("three") == (answer("three"), "l1")


async def test_redis_outage_never_reaches_the_caller(cache_factory: CacheFactory) -> None:
    clock = Clock()
    down = cache_factory(url="redis://127.0.0.1:1/0", clock=clock)

    await down.put(KEY, answer(), ttl_s=30)  # must not raise
    assert down.l2_healthy is False and down.l2_errors == 1
    assert await down.get(KEY) == (answer(), "l1")  # L1 keeps serving

    # Within the retry interval Redis is not tried again: misses are instant and quiet.
    assert await down.get("other") is None
    await down.put("other", answer("x"), ttl_s=30)
    await down.invalidate("gone")
    assert down.l2_errors == 1

    clock.t += 1.0  # the interval has passed: the next call tries Redis once more
    started = time.monotonic()
    assert await down.get("missing") is None
    assert time.monotonic() - started < 0.5
    assert down.l2_errors == 2 and down.l2_healthy is False

    clock.t += 1.0  # ...and of many at once, only one: the rest go on without L2
    got = await asyncio.gather(*(down.get(f"k{i}") for i in range(20)))
    assert got == [None] * 20 and down.l2_errors == 3


async def test_l2_comes_back_after_the_outage(cache_factory: CacheFactory, redis_url: str) -> None:
    clock = Clock()
    cache = cache_factory(url="redis://127.0.0.1:1/0", clock=clock)
    other = cache_factory()
    await other.put(KEY, answer(), ttl_s=30)

    assert await cache.get(KEY) is None  # Redis unreachable: a miss, not an error
    assert cache.l2_healthy is False

    # Redis is reachable again (the same real server the other replica uses).
    cache.redis = client(redis_url)
    try:
        assert await cache.get(KEY) is None  # still inside the retry interval
        clock.t += 1.0
        assert await cache.get(KEY) == (answer(), "l2")
        assert cache.l2_healthy is True and cache.l2_errors == 1
    finally:
        await cache.redis.aclose()


async def test_a_stale_answer_is_kept_for_readers_that_accept_one(
    cache_factory: CacheFactory, redis_url: str
) -> None:
    """Fresh for ttl_s; L2 keeps it stale_s longer, served only to ``stale_ok`` readers."""
    wall = Clock()
    writer = cache_factory(stale_s=600, wall=wall)
    await writer.put(KEY, answer(), ttl_s=30)
    raw = aioredis.Redis.from_url(redis_url)
    ttl_ms = await raw.pttl(writer.prefix + KEY)
    await raw.aclose()
    assert 600_000 < ttl_ms <= 630_000

    wall.t += 31  # past the TTL, inside the stale window
    reader = cache_factory(stale_s=600, wall=wall)
    assert await reader.get(KEY) is None, "a stale answer is a miss for ordinary reads"
    assert await reader.get(KEY, stale_ok=True) == (answer(), "l2")
    assert await reader.get(KEY) is None, "...and is not promoted to L1 as fresh"


async def test_deployments_sharing_a_redis_keep_their_answers_apart(redis_url: str) -> None:
    """Production and staging on one Redis, each with a tenant `alice`: the same key in
    each deployment's prefix (its topic prefix) is two entries."""
    redis = client(redis_url)
    prod, staging = (
        ResponseCache(L1Cache(10), redis, prefix=redis_prefix(name))
        for name in (f"prod{uuid.uuid4().hex[:6]}", f"staging{uuid.uuid4().hex[:6]}")
    )
    entry = CacheEntry(
        body={"answer": "prod"}, usage=Usage(), vendor="v", model="m", created=time.time()
    )
    try:
        await prod.put("k", entry, 60)
        assert await staging.get("k") is None
        again = ResponseCache(L1Cache(10), redis, prefix=prod.prefix)  # another replica
        hit = await again.get("k")
        assert hit is not None and hit[0].body == {"answer": "prod"}
    finally:
        await redis.delete(prod.prefix + "k")
        await redis.aclose()


async def until(check: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.01)


async def test_a_refresh_on_one_gateway_reaches_the_others_l1(
    cache_factory: CacheFactory, redis_url: str
) -> None:
    """Replica A refreshes an answer replica B holds in L1: B serves the new one next,
    not the old one for the rest of its TTL (six hours for the static class)."""
    import orjson
    import redis

    from gateway.relay import Relay
    from schemas.envelope import ReplyEvent, RequestEnvelope
    from tests.support.gateway import client as http_client
    from tests.support.gateway import gateway_app, hello

    a_cache, b_cache = cache_factory(), cache_factory()
    l2 = redis.Redis.from_url(redis_url)
    answers = iter(["v1", "v2"])

    def worker(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        """Answers the next version and stores it in L2, as a worker does, announcing one
        stored in place of another (a refresh) once it is there."""
        body = hello(env.alias)
        body["choices"][0]["message"]["content"] = next(answers)
        usage = Usage(input_tokens=3, output_tokens=1)
        entry = CacheEntry(body=body, usage=usage, vendor="sim-openai", model="gpt-4o-mini",
                           created=time.time(), endpoint=env.endpoint)  # fmt: skip
        ttl = env.cache_ttl_s or 0
        stored = {"fresh_until": time.time() + ttl, "entry": entry.model_dump(mode="json")}
        l2.set(a_cache.prefix + env.prompt_hash, orjson.dumps(stored), px=ttl * 1000)
        if not env.cache_lookup:
            l2.publish(a_cache.channel, b"worker " + env.prompt_hash.encode())
        final = ReplyEvent(correlation_id=env.correlation_id, kind="final", body=body,
                           usage=usage, vendor="sim-openai", model="gpt-4o-mini")  # fmt: skip
        return [(0.0, final)]

    def replica(cache: ResponseCache):  # type: ignore[no-untyped-def]
        app, bus = gateway_app(worker)
        relay = app.state.relay
        app.state.relay = Relay(relay.settings, relay.config, bus, cache)
        return app, bus

    (a, bus), (b, _) = replica(a_cache), replica(b_cache)
    following = asyncio.create_task(b_cache.follow())
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "refresh me"}]}
    static = {"x-relay-cache-ttl": "static"}
    try:
        await until(lambda: _subscribed(b_cache))
        async with http_client(a) as on_a, http_client(b) as on_b:

            async def ask(http: Any, **headers: str) -> tuple[str, str]:
                sent = {**static, **headers}
                reply = await http.post("/v1/chat/completions", json=body, headers=sent)
                said = reply.json()["choices"][0]["message"]["content"]
                return reply.headers["x-relay-cache"], said

            assert await ask(on_a) == ("miss", "v1")
            assert await ask(on_b) == ("hit-l2", "v1")
            assert await ask(on_b) == ("hit-l1", "v1")
            assert await ask(on_a, **{"x-relay-cache": "refresh"}) == ("miss", "v2")
            key = bus.published[-1].prompt_hash
            await until(lambda: _forgotten(b_cache, key))
            assert await ask(on_b) == ("hit-l2", "v2")
            assert await ask(on_a) == ("hit-l1", "v2"), "A kept the answer it was sent"
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        l2.close()


async def _subscribed(cache: ResponseCache) -> bool:
    assert cache.redis is not None
    counts = await cache.redis.pubsub_numsub(cache.channel)
    return bool(counts and counts[0][1])


async def _forgotten(cache: ResponseCache, key: str) -> bool:
    return cache.l1.get(key) is None


async def test_following_rides_out_a_redis_that_is_down(cache_factory: CacheFactory) -> None:
    """The follower runs for the gateway's lifetime: no Redis is no error, only retries."""
    down = cache_factory(url="redis://127.0.0.1:1/0")
    following = asyncio.create_task(down.follow(retry_s=0.05))
    await asyncio.sleep(0.5)
    assert not following.done()
    await down.replaced("k")  # the notice is dropped as quietly as a put would be
    following.cancel()
    await asyncio.gather(following, return_exceptions=True)
    assert following.cancelled()


async def test_a_write_redis_refuses_leaves_l2_in_use(cache_factory: CacheFactory) -> None:
    """One command Redis refuses (here an expiry beyond its range) says nothing of Redis
    being down: the answers after it are still shared through L2."""
    writer, reader = cache_factory(), cache_factory()
    key = cache_key(scope="t", alias="a", endpoint="chat", body={"q": "refused"})
    await writer.put(key, answer(), ttl_s=1e17)
    assert writer.l2_healthy and writer.l2_errors == 0
    other = cache_key(scope="t", alias="a", endpoint="chat", body={"q": "kept"})
    await writer.put(other, answer(), ttl_s=60)
    assert await reader.get(other) is not None, "the next answer reached L2"


async def test_a_replaced_notice_spares_the_new_answer_a_replica_holds_already(
    cache_factory: CacheFactory,
) -> None:
    """The worker announces the answer it stored, with when it was made: a replica
    holding an older answer drops it; the gateway that got the new one, and kept it in
    its L1 as it came, keeps it (it would only read the same answer back from L2)."""
    worker, got_it, other = cache_factory(), cache_factory(), cache_factory()
    following = [asyncio.create_task(c.follow()) for c in (got_it, other)]
    try:
        await until(lambda: _subscribed(got_it))
        await until(lambda: _subscribed(other))
        old = answer("old").model_copy(update={"created": 1000.0})
        new = answer("new").model_copy(update={"created": 2000.0})
        other.l1.put(KEY, old, 3600)
        got_it.l1.put(KEY, new.model_copy(update={"created": 2000.5}), 3600)
        await worker.replaced(KEY, created=2000.0)
        await until(lambda: _forgotten(other, KEY))
        await asyncio.sleep(0.1)  # (the same notice reached the other follower too)
        kept = got_it.l1.get(KEY)
        assert kept is not None and kept.created == 2000.5
    finally:
        for task in following:
            task.cancel()
        await asyncio.gather(*following, return_exceptions=True)
