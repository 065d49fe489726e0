"""The edge's body limit: 413 in the caller's error format, before reading too much; and
no body read at all for a write without a known relay key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.auth import RefusalThrottle
from gateway.edge import BodyStalled, Edge
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
    assert reply.headers["x-relay-cache"] == "miss"
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
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
        assert reply.headers["x-relay-cache"] == "miss", "every answer of the endpoint says"
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


def stalling(*parts: bytes) -> Receive:
    """A client that sends ``parts`` of its body, then nothing more (nor leaves)."""
    messages = [{"type": "http.request", "body": part, "more_body": True} for part in parts]

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # never set: the client went quiet
        raise AssertionError("unreachable")

    return receive


async def raw_post(edge: Edge, path: str, receive: Receive, **headers: str) -> list[Message]:
    """The messages ``edge`` sends for a POST to ``path`` whose body comes by ``receive``."""
    relay = SimpleNamespace(
        keys={hash_key(KEY): ("t", "k")},
        config=SimpleNamespace(tenants={"t": TenantConfig(keys=[])}),
        refusals=RefusalThrottle(per_minute=0),
    )
    raw_headers = [(b"authorization", f"Bearer {KEY}".encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": raw_headers, "client": ("127.0.0.1", 1),
        "server": ("relay", 80), "state": {},
        "app": SimpleNamespace(state=SimpleNamespace(relay=relay)),
    }  # fmt: skip
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await edge(scope, receive, send)
    return sent


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/v1/chat/completions", {"type": "invalid_request_error", "code": "request_timeout"}),
        ("/v1/messages", {"type": "timeout_error"}),
    ],
)
async def test_a_body_that_stops_coming_in_is_a_408_in_the_endpoint_s_shape(
    path: str, shape: dict[str, str]
) -> None:
    """uvicorn sets no timer while a body arrives: the edge's own read does, so a client
    cannot hold its connection (and what it sent) by sending a part and no more."""
    behind = Behind()
    sent = await raw_post(Edge(behind, body_timeout_s=0.01), path, stalling(b'{"mo'))
    start, body = sent[0], orjson.loads(sent[1]["body"])
    assert start["status"] == 408
    assert shape.items() <= body["error"].items()
    assert (b"x-relay-cache", b"miss") in start["headers"]
    assert behind.bodies == [], "nothing behind the edge saw it"


async def test_a_body_that_trickles_in_is_a_408_once_it_falls_behind_the_minimum_rate() -> None:
    """A byte now and then, each well within the quiet timeout, still ends: past its
    first ``timeout_s`` a body must come at ``min_rate`` on average (here no rate is
    enough, so it ends as that first stretch does)."""
    calls = 0

    async def trickle() -> Message:
        nonlocal calls
        calls += 1
        if calls > 1:
            await asyncio.sleep(0.001)  # the client's pace: far within the quiet timeout
        return {"type": "http.request", "body": b" ", "more_body": True}

    behind = Behind()
    edge = Edge(behind, body_timeout_s=0.05, body_min_rate=1e12)
    sent = await raw_post(edge, "/v1/chat/completions", trickle)
    assert sent[0]["status"] == 408
    assert "too slowly" in orjson.loads(sent[1]["body"])["error"]["message"]
    assert behind.bodies == []


async def test_a_body_the_app_reads_itself_is_timed_too() -> None:
    """A body the edge hands on unread (sized, for a route not its own) comes to the app
    through a timed ``receive``: a stall raises the HTTPException(408) FastAPI passes on
    to the error handlers (which answer it in the endpoint's shape: test_ingress_body_timeout)."""
    got: list[BodyStalled] = []

    class Reading:
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            try:
                while (await receive()).get("more_body"):
                    pass
            except BodyStalled as exc:
                got.append(exc)

    await raw_post(
        Edge(Reading(), body_timeout_s=0.01), "/v1/files", stalling(b"x"), **{"content-length": "9"}
    )
    assert [(e.status_code, "nothing for 0.01 s" in e.detail) for e in got] == [(408, True)]


async def test_once_the_body_is_in_or_an_answer_begun_the_wait_is_not_timed() -> None:
    """After the body, ``receive`` only waits for the client to leave (a streamed answer
    listens for it), and once an answer has begun its body is the protocol's to bound
    (http_head): neither may be cut short by the body timeout."""
    waited: list[str] = []

    class Listening:
        def __init__(self, answer_first: bool) -> None:
            self.answer_first = answer_first

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if self.answer_first:
                await send({"type": "http.response.start", "status": 200, "headers": []})
            else:
                assert (await receive())["more_body"] is False
            try:
                async with asyncio.timeout(0.05):
                    await receive()
            except TimeoutError:
                waited.append("the app's own wait, not the body timeout")

    whole = [{"type": "http.request", "body": b"x", "more_body": False}]

    async def receive_then_stall() -> Message:
        if whole:
            return whole.pop(0)
        return await stalling()()

    for answer_first, receive in ((False, receive_then_stall), (True, stalling())):
        edge = Edge(Listening(answer_first), body_timeout_s=0.001)
        await raw_post(edge, "/v1/files", receive, **{"content-length": "1"})
    assert len(waited) == 2
