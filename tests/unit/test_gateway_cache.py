"""The gateway's side of the cache: which answers it keeps in L1 and which it serves."""

from __future__ import annotations

import time
from typing import Any

from schemas.envelope import ReplyEvent, RequestEnvelope
from schemas.usage import Usage
from tests.support.gateway import client, gateway_app, hello

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "cache me"}]}


def paid(**extra: Any):  # type: ignore[no-untyped-def]
    """A worker's answer from a vendor (or, with ``cache_hit``, from L2)."""
    finish = extra.pop("finish_reason", "stop")

    def script(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        body = hello(env.alias, finish)
        final = ReplyEvent(
            correlation_id=env.correlation_id,
            kind="final",
            body=body,
            usage=Usage(input_tokens=3, output_tokens=1),
            **{"vendor": "sim-openai", "model": "gpt-4o-mini", **extra},
        )
        return [(0.0, final)]

    return script


async def test_an_answer_older_than_the_request_allows_is_not_served() -> None:
    """``x-relay-cache-ttl`` is also the oldest answer the request takes; 0 asks for none."""
    app, bus = gateway_app(paid())
    async with client(app) as http:
        first = await http.post("/v1/chat/completions", json=BODY)
        assert first.headers["x-relay-cache"] == "miss"
        relay = app.state.relay
        entry = relay.cache.l1.get(bus.published[0].prompt_hash)
        entry.created = time.time() - 7200  # stored two hours ago
        fresh = {"x-relay-cache-ttl": "dynamic"}  # five minutes at most
        again = await http.post("/v1/chat/completions", json=BODY, headers=fresh)
        assert again.headers["x-relay-cache"] == "miss" and len(bus.published) == 2
        assert not bus.published[1].cache_lookup, "the worker must not serve it from L2 either"
        no_cache = await http.post(
            "/v1/chat/completions", json=BODY, headers={"x-relay-cache-ttl": "0"}
        )
        assert no_cache.headers["x-relay-cache"] == "miss" and len(bus.published) == 3
        any_age = await http.post("/v1/chat/completions", json=BODY)
        assert any_age.headers["x-relay-cache"] == "hit-l1"


async def test_a_workers_cache_hit_is_not_kept_again_for_a_whole_ttl() -> None:
    app, bus = gateway_app(paid(cache_hit=True))
    async with client(app) as http:
        first = await http.post("/v1/chat/completions", json=BODY)
        assert first.headers["x-relay-cache"] == "hit-l2"
        second = await http.post("/v1/chat/completions", json=BODY)
        assert second.headers["x-relay-cache"] == "hit-l2" and len(bus.published) == 2


async def test_an_answer_a_content_filter_cut_is_not_kept() -> None:
    app, bus = gateway_app(paid(finish_reason="content_filter"))
    async with client(app) as http:
        for _ in range(2):
            answer = await http.post("/v1/chat/completions", json=BODY)
            assert answer.headers["x-relay-cache"] == "miss"
            assert answer.json()["choices"][0]["finish_reason"] == "content_filter"
    assert len(bus.published) == 2


async def test_a_canarys_answer_is_not_kept_for_users_of_the_stable_version() -> None:
    from schemas.config import Canary, Candidate, load_config
    from tests.support.gateway import EXAMPLE

    config = load_config(EXAMPLE)
    canary = Candidate(vendor="sim-openai", model="gpt-4o-mini-next")
    config.models["gpt-4o-mini"].canary = Canary(candidate=canary, percent=10)
    app, bus = gateway_app(paid(model="gpt-4o-mini-next"), config)
    async with client(app) as http:
        for _ in range(2):
            answer = await http.post("/v1/chat/completions", json=BODY)
            assert answer.headers["x-relay-cache"] == "miss"
    assert len(bus.published) == 2
