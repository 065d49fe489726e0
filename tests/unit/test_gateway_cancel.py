"""The gateway tells the worker when a stream's client went away before its end (one
cancel notice on the request topic), and never about a request that got its final."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from schemas.envelope import ReplyEvent, RequestEnvelope
from schemas.errors import DeadlineExceeded
from tests.support.envelopes import request_envelope
from tests.support.gateway import AUTH, answer_hello, gateway_app

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def endless(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
    """A worker streaming a chunk every 20 ms for a long while, final last."""
    cid = env.correlation_id
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": env.alias}
    out = []
    for seq in range(1, 200):
        delta = {"content": f" w{seq}"}
        chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        out.append((0.02, ReplyEvent(correlation_id=cid, kind="chunk", seq=seq, body=chunk)))
    return [*out, (0.0, ReplyEvent(correlation_id=cid, kind="final", seq=200, vendor="v"))]


async def post(app: Any, body: dict[str, Any], leave_after: int | None) -> bytes:
    """``body`` to /v1/chat/completions through the whole app, as uvicorn calls it (ASGI
    2.3: Starlette cancels a stream whose client disconnected); the client disconnects
    once it has read ``leave_after`` SSE events, or reads to the end when None."""
    left = asyncio.Event()
    got: list[bytes] = []
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        got.append(message.get("body", b""))
        if leave_after is not None and b"".join(got).count(b"data: ") >= leave_after:
            left.set()

    headers = [(k.encode(), v.encode()) for k, v in AUTH.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [*headers, (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
        "server": ("relay", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), 5)
    await asyncio.sleep(0.05)  # the notice goes out in the background
    return b"".join(got)


async def test_a_stream_whose_client_leaves_midway_sends_one_cancel():
    app, bus = gateway_app(endless)
    await post(app, {**BODY, "stream": True}, leave_after=3)
    request, notice = bus.published
    assert not request.cancel and notice.cancel
    assert notice.correlation_id == request.correlation_id and notice.tenant == request.tenant
    assert notice.prompt_hash == request.prompt_hash, "keyed alike: it reaches the same worker"
    assert notice.body == {}


@pytest.mark.parametrize("stream", [True, False])
async def test_a_request_that_got_its_final_sends_no_cancel(stream: bool):
    app, bus = gateway_app(answer_hello)
    answer = await post(app, {**BODY, "stream": stream}, leave_after=None)
    assert b"Hello" in answer
    [request] = bus.published
    assert not request.cancel


async def test_a_stream_the_worker_failed_sends_no_cancel():
    def failing(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        *chunks, _ = endless(env)
        error = {"code": "vendor_unavailable", "message": "boom"}
        failed = ReplyEvent(correlation_id=env.correlation_id, kind="error", error=error)
        return [*chunks[:2], (0.0, failed)]

    app, bus = gateway_app(failing)
    answer = await post(app, {**BODY, "stream": True}, leave_after=None)
    assert b"vendor_unavailable" in answer
    [request] = bus.published
    assert not request.cancel


async def test_a_stream_withdrawn_while_its_read_waits_is_metered_by_the_worker_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The response let go of the request (its client left: the notice went out) while
    the read of its next reply still waited, as when it ends inside ``send``: that read,
    given up at the deadline, meters nothing (the worker writes the client_closed line)."""
    monkeypatch.setattr("gateway.relay.REPLY_GRACE_S", 0.05)
    app, bus = gateway_app(lambda env: endless(env)[:1])  # one chunk, then nothing
    metered: list[str] = []

    async def meter_failure(env: RequestEnvelope, code: str) -> None:
        metered.append(code)

    bus.meter_failure = meter_failure  # type: ignore[method-assign]
    env = request_envelope(
        reply_to=bus.reply_topic,
        stream=True,
        gateway_meters_timeout=True,
        deadline_ms=int((time.time() + 0.2) * 1000),
    )
    answer = await app.state.relay._through_kafka(env)
    assert answer.chunks is not None
    await anext(answer.chunks)
    reading = asyncio.ensure_future(anext(answer.chunks))
    await asyncio.sleep(0.01)
    answer.close()  # the response ended with the read still waiting
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(reading, 2)
    assert [e.cancel for e in bus.published] == [False, True]
    assert metered == [], "the worker writes its line: the gateway none"
