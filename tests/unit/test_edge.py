"""The edge's body limit: 413 in the caller's error format, before reading too much; and
no body read at all for a write without a known relay key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
from starlette.types import Receive, Scope, Send

from gateway.auth import RefusalThrottle
from gateway.edge import Edge
from schemas.config import TenantConfig, hash_key

LIMIT = 1000
KEY = "rk-edge-test-key"


class Behind:
    """The app behind the edge: records what reached it, answers 200 with its size."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


def client(behind: Behind, key: str | None = KEY) -> httpx.AsyncClient:
    """The edge before ``behind``, on an app whose relay knows ``KEY`` (and only it)."""
    edge = Edge(behind, max_body=LIMIT)
    relay = SimpleNamespace(
        keys={hash_key(KEY): ("t", "k")},
        config=SimpleNamespace(tenants={"t": TenantConfig(keys=[])}),
        refusals=RefusalThrottle(per_minute=0),
        audit_refusal=lambda *a, **kw: asyncio.sleep(0),
    )
    app = SimpleNamespace(state=SimpleNamespace(relay=relay))

    async def in_app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = app
        await edge(scope, receive, send)

    headers = {"authorization": f"Bearer {key}"} if key else {}
    transport = httpx.ASGITransport(app=in_app)
    return httpx.AsyncClient(transport=transport, base_url="http://relay", headers=headers)


async def chunks(total: int, size: int = 300) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        part = b"x" * min(size, total - sent)
        sent += len(part)
        yield part


async def test_a_body_declared_too_large_is_refused_in_openai_shape() -> None:
    behind = Behind()
    async with client(behind) as http:
        reply = await http.post("/v1/chat/completions", content=b"x" * (LIMIT + 1))
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "request_too_large"
    assert behind.bodies == [], "nothing behind the edge saw it"


async def test_a_body_declared_too_large_is_refused_in_anthropic_shape() -> None:
    async with client(Behind()) as http:
        reply = await http.post("/v1/messages", content=b"x" * (LIMIT + 1))
    assert reply.status_code == 413
    assert reply.json() == {
        "type": "error",
        "error": {"type": "request_too_large", "message": reply.json()["error"]["message"]},
    }


async def test_a_chunked_upload_is_held_to_the_limit_and_passed_on_whole_within_it() -> None:
    behind = Behind()
    async with client(behind) as http:
        over = await http.post("/v1/files", content=chunks(LIMIT + 1))
        within = await http.post("/v1/files", content=chunks(LIMIT))
    assert over.status_code == 413
    assert (within.status_code, within.text) == (200, str(LIMIT))
    assert behind.bodies == [b"x" * LIMIT]


async def test_sized_bodies_within_the_limit_and_other_methods_pass_untouched() -> None:
    behind = Behind()
    async with client(behind) as http:
        assert (await http.post("/v1/files", content=b"y" * LIMIT)).text == str(LIMIT)
        assert (await http.get("/v1/models")).status_code == 200
    assert behind.bodies == [b"y" * LIMIT, b""]


async def test_a_write_without_a_known_key_is_refused_before_its_body_is_read() -> None:
    read: list[int] = []

    async def counted(total: int) -> AsyncIterator[bytes]:
        async for part in chunks(total):
            read.append(len(part))
            yield part

    behind = Behind()
    for key in (None, "rk-guessed"):
        async with client(behind, key=key) as http:
            reply = await http.post("/v1/chat/completions", content=counted(50 * LIMIT))
        assert reply.status_code == 401 and reply.json()["error"]["type"] == "authentication_error"
    assert behind.bodies == [], "nothing behind the edge saw it"
    assert sum(read) < 50 * LIMIT, "the body was not read through"


async def test_a_chunked_body_outside_v1_is_never_read_by_the_edge() -> None:
    """No route there takes a body: the app answers 404/405 without reading it, and the
    edge must not buffer it first (up to the limit, for anyone, with no key)."""
    pulled = 0

    async def upload() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(20):
            pulled += 1
            yield b"x" * 300

    class Refusing:
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 405, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    edge = Edge(Refusing(), max_body=LIMIT * 100)
    transport = httpx.ASGITransport(app=edge)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as http:
        reply = await http.post("/healthz", content=upload())
    assert reply.status_code == 405 and pulled <= 1
