"""An answer that points to something its vendor keeps for a while (an audio answer's
id, until ``expires_at``) is never served from the cache after that."""

from __future__ import annotations

from typing import Any

import orjson

from tables.cache import CacheEntry, L1Cache, ResponseCache, audio_expiry

NOW = 1_800_000_000.0


def audio_body(expires_at: Any) -> dict[str, Any]:
    audio = {"id": "audio_abc", "expires_at": expires_at, "data": "UklGR", "transcript": "Hi"}
    message = {"role": "assistant", "content": None, "audio": audio}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


def audio_chunks(expires_at: float) -> list[dict[str, Any]]:
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    deltas = [
        {"role": "assistant", "audio": {"id": "audio_abc", "transcript": "Hi"}},
        {"audio": {"data": "UklGR"}},
        {"audio": {"expires_at": expires_at}},
    ]
    return [
        {**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas
    ] + [{**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]


def entry(**stored: Any) -> CacheEntry:
    return CacheEntry(vendor="v", model="gpt-4o-audio-preview", created=NOW, **stored)


def test_the_earliest_audio_expiry_of_a_body_or_a_stream_is_found() -> None:
    assert audio_expiry([audio_body(NOW + 60)]) == NOW + 60
    assert audio_expiry(audio_chunks(NOW + 30)) == NOW + 30
    two = audio_body(NOW + 90)
    two["choices"].append({**two["choices"][0], "index": 1})
    two["choices"][1]["message"] = {**two["choices"][1]["message"], "audio": {"expires_at": 5}}
    assert audio_expiry([two]) == 5
    hello = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}}]}
    assert audio_expiry([hello]) is None
    assert audio_expiry([audio_body(True), audio_body("soon"), {"data": [1]}]) is None


def test_l1_keeps_an_audio_answer_no_longer_than_its_vendor_does() -> None:
    t = [0.0]
    l1 = L1Cache(10, clock=lambda: t[0], wall=lambda: NOW)
    l1.put("body", entry(body=audio_body(NOW + 30)), 3600)
    l1.put("stream", entry(chunks=audio_chunks(NOW + 40)), 3600)
    l1.put("gone", entry(body=audio_body(NOW - 1)), 3600)
    assert l1.get("gone") is None and len(l1) == 2
    t[0] = 29.0
    assert l1.get("body") is not None and l1.get("stream") is not None
    t[0] = 30.0
    assert l1.get("body") is None and l1.get("stream") is not None
    t[0] = 40.0
    assert l1.get("stream") is None


def test_an_audio_answer_is_young_enough_only_until_it_expires() -> None:
    import time

    now = time.time()
    assert entry(body=audio_body(now + 3600)).young_enough(None)
    assert not entry(body=audio_body(now - 3600)).young_enough(None)
    assert not entry(chunks=audio_chunks(now - 3600)).young_enough(60 * 60 * 24)
    assert entry(body={"choices": []}).usable_for(now) == float("inf")


class FakeRedis:
    """Just what ``ResponseCache`` asks of Redis for ``put`` and ``get``."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.px: dict[str, int] = {}

    async def set(self, key: str, value: bytes, px: int) -> None:
        self.data[key], self.px[key] = value, px

    def pipeline(self, transaction: bool = True) -> FakeRedis.Pipe:
        return FakeRedis.Pipe(self)

    class Pipe:
        def __init__(self, redis: FakeRedis) -> None:
            self.redis = redis
            self.asked: list[tuple[str, str]] = []

        async def __aenter__(self) -> FakeRedis.Pipe:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        def get(self, key: str) -> None:
            self.asked.append(("get", key))

        def pttl(self, key: str) -> None:
            self.asked.append(("pttl", key))

        async def execute(self) -> list[Any]:
            d = self.redis
            return [d.data.get(k) if op == "get" else d.px.get(k, -2) for op, k in self.asked]


async def test_l2_neither_keeps_nor_serves_an_audio_answer_past_its_expiry() -> None:
    """Fresh for no longer than the audio lives, and kept no longer for stale readers
    (the worker's ``cache_only`` look-up); an entry an older version stored for longer
    is not served, stale or fresh, once the audio has gone."""
    redis = FakeRedis()
    l1 = L1Cache(10, wall=lambda: NOW)
    cache = ResponseCache(l1, redis, "t:", stale_s=3600.0, wall=lambda: NOW)
    assert await cache.put("k", entry(body=audio_body(NOW + 30)), 3600)
    stored = orjson.loads(redis.data["t:k"])
    assert stored["fresh_until"] == NOW + 30 and redis.px["t:k"] == 30_000
    assert not await cache.put("late", entry(body=audio_body(NOW - 1)), 3600)
    assert "t:late" not in redis.data

    old = {"fresh_until": NOW + 3600, "entry": entry(body=audio_body(NOW - 1)).model_dump()}
    redis.data["t:old"], redis.px["t:old"] = orjson.dumps(old), 7_200_000
    assert await cache.get("old") is None and await cache.get("old", stale_ok=True) is None
    plain = entry(body={"choices": [{"index": 0, "finish_reason": "stop"}]})
    assert await cache.put("plain", plain, 60)
    assert redis.px["t:plain"] == (60 + 3600) * 1000, "an answer of no audio: as before"


class Watched(list[Any]):
    """A chunk's choices that fail the test when read once ``armed``."""

    armed = False

    def __iter__(self) -> Any:
        assert not Watched.armed, "an entry's chunks were read on a hit"
        return super().__iter__()


def test_a_hit_never_reads_the_entrys_chunks_again() -> None:
    """What an entry points to at its vendor is found as the entry is made (a stream's
    every chunk read once), not on each hit (review finding: every hit scanned every chunk of
    a stored stream for audio, ~0.5 ms for 500 chunks, two or three times per L2 hit)."""
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    said = [{"index": 0, "delta": {"content": f" w{i}"}, "finish_reason": None} for i in range(50)]
    chunks = [{**head, "choices": Watched([choice])} for choice in said]
    streamed, audio = entry(chunks=chunks), entry(chunks=audio_chunks(NOW + 40))
    assert "expires_at" not in streamed.model_dump(), "not stored: read from the answer"
    read_back = CacheEntry.model_validate({**streamed.model_dump(), "chunks": chunks})  # L2's
    for e in (streamed, read_back):
        assert e.chunks is not None and isinstance(e.chunks[0]["choices"], Watched)
    Watched.armed = True
    try:
        l1 = L1Cache(10, clock=lambda: 0.0, wall=lambda: NOW)
        for e in (streamed, read_back):
            assert e.young_enough(None) and e.young_enough(60 * 60 * 24 * 365 * 100)
            assert e.usable_for(NOW) == float("inf") and e.ttl_within(60, NOW) == 60
            l1.put("stream", e, 3600, size=1000)
            assert l1.get("stream") is e
    finally:
        Watched.armed = False
    assert audio.expires_at() == NOW + 40 and audio.ttl_within(3600, NOW) == 40


def test_an_entrys_answer_is_fixed_once_made() -> None:
    """Its audio is found in its answer once, so the answer cannot be swapped after."""
    import pydantic
    import pytest

    stored = entry(body=audio_body(NOW + 30))
    with pytest.raises(pydantic.ValidationError):
        stored.body = audio_body(NOW + 3600)  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        stored.chunks = audio_chunks(NOW + 3600)  # type: ignore[misc]
    assert stored.expires_at() == NOW + 30
