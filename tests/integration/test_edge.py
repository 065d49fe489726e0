"""The edge (gateway.edge): hits answered before FastAPI, everything else handed on intact.

A hit from the edge must be indistinguishable from one the routes would send, and a request
the edge does not answer must reach the routes exactly as the client sent it, so their
validation and error bodies still apply.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.topics import Topics
from tests.integration.conftest import read_ledger
from tests.support.stack import DEMO_KEY, Stack

AUTH = {"authorization": f"Bearer {DEMO_KEY}"}


def question() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"edge test {uuid.uuid4().hex}"}]


async def post(
    relay: Stack, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = {"content-type": "application/json", **AUTH, **(headers or {})}
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(f"{relay.url}{path}", content=content, headers=hdrs)


async def test_hit_from_the_edge_matches_the_answer_it_repeats(relay: Stack) -> None:
    body = {"model": "gpt-4o-mini", "messages": question(), "temperature": 0}
    first = await post(relay, "/v1/chat/completions", body)
    again = await post(relay, "/v1/chat/completions", {**body, "temperature": 0.0})
    assert first.headers["x-relay-cache"] == "miss"
    assert again.headers["x-relay-cache"] == "hit-l1"
    a, b = first.json(), again.json()
    assert b["choices"] == a["choices"]
    assert b["usage"] == a["usage"]
    assert b["model"] == "gpt-4o-mini" and b["id"] != a["id"]


async def test_anthropic_hit_is_rendered_as_a_message(relay: Stack) -> None:
    body = {"model": "gpt-4o-mini", "max_tokens": 64, "messages": question()}
    first = await post(relay, "/v1/messages", body)
    again = await post(relay, "/v1/messages", body)
    assert again.headers["x-relay-cache"] == "hit-l1"
    assert again.json()["type"] == "message"
    assert again.json()["content"] == first.json()["content"]


async def test_bad_requests_still_get_the_routes_errors(relay: Stack) -> None:
    broken = await post(relay, "/v1/chat/completions", b'{"model": "gpt-4o-mini", "mess')
    assert broken.status_code == 400
    assert broken.json()["error"]["type"] == "invalid_request_error"

    no_messages = await post(relay, "/v1/chat/completions", {"model": "gpt-4o-mini"})
    assert no_messages.status_code == 400
    assert no_messages.json()["error"]["param"] == "messages"

    anthropic_bad = await post(relay, "/v1/messages", {"messages": question(), "max_tokens": 5})
    assert anthropic_bad.status_code == 400
    assert anthropic_bad.json()["type"] == "error"


async def test_a_cached_answer_is_not_served_to_an_unknown_key(relay: Stack) -> None:
    body = {"model": "gpt-4o-mini", "messages": question()}
    assert (await post(relay, "/v1/chat/completions", body)).status_code == 200
    stranger = await post(
        relay, "/v1/chat/completions", body, {"authorization": "Bearer rk-not-a-key"}
    )
    assert stranger.status_code == 401
    assert stranger.json()["error"]["code"] == "invalid_api_key"


async def test_bypass_and_large_bodies_go_through_the_routes(relay: Stack) -> None:
    body = {"model": "gpt-4o-mini", "messages": question()}
    await post(relay, "/v1/chat/completions", body)
    bypass = await post(relay, "/v1/chat/completions", body, {"x-relay-cache": "bypass"})
    assert bypass.headers["x-relay-cache"] == "miss"

    # Over the edge's body limit: not read at the edge, still answered (and cached) by the routes.
    large = {"model": "gpt-4o-mini", "messages": question(), "metadata": {"pad": "x" * 300_000}}
    once = await post(relay, "/v1/chat/completions", large)
    twice = await post(relay, "/v1/chat/completions", large)
    assert once.status_code == twice.status_code == 200
    assert twice.headers["x-relay-cache"] == "hit-l1"


async def test_a_body_not_sent_as_json_gets_the_routes_answer(relay: Stack) -> None:
    """FastAPI's routes refuse a body not declared as JSON; the edge must not answer it."""
    body = {"model": "gpt-4o-mini", "messages": question()}
    as_text = await post(relay, "/v1/chat/completions", body, {"content-type": "text/plain"})
    assert as_text.status_code == 400
    assert as_text.json()["error"]["type"] == "invalid_request_error"


async def test_stream_options_must_be_an_object(relay: Stack) -> None:
    body = {"model": "gpt-4o-mini", "messages": question(), "stream_options": "yes"}
    bad = await post(relay, "/v1/chat/completions", body)
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "stream_options"


async def test_a_request_too_big_for_the_request_topic_gets_413_and_a_ledger_line(
    relay: Stack,
) -> None:
    """The relay's topics take 64 MiB; one made before (Kafka's default 1 MB) refuses a
    larger message at the broker, and the client hears 413, not a 503."""
    requests = Topics(relay.prefix).requests
    admin = AIOKafkaAdminClient(bootstrap_servers=relay.bootstrap)
    await admin.start()

    async def limit(configs: dict[str, str]) -> None:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, requests.name, configs)]
        )

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 1_200_000}]}
    try:
        await limit({**requests.config, "max.message.bytes": "1000000"})
        for _ in range(20):  # until the broker applies the lower limit
            trace = f"too-big-{uuid.uuid4().hex[:8]}"
            reply = await post(relay, "/v1/chat/completions", body, {"x-relay-trace-id": trace})
            if reply.status_code != 200:
                break
            await asyncio.sleep(0.5)
    finally:
        await limit(requests.config)
        await admin.close()
    assert reply.status_code == 413, reply.text
    assert reply.json()["error"]["code"] == "request_too_large"
    [line] = await read_ledger(relay, {trace})
    assert (line.status, line.error_code) == ("error", "request_too_large")
