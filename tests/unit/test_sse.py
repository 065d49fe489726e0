"""EventStream releases its request however the stream ends; silent streams keep alive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from openai._streaming import SSEDecoder

from gateway.sse import EventStream, anthropic_sse, openai_sse
from schemas.usage import Usage


async def never() -> AsyncIterator[bytes]:
    await asyncio.Event().wait()  # the first chunk never comes
    yield b""


async def two() -> AsyncIterator[bytes]:
    yield b"data: 1\n\n"
    yield b"data: 2\n\n"


def scope(spec: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"spec_version": spec}, "method": "POST", "headers": []}


async def test_a_client_leaving_before_the_first_chunk_still_releases_the_request() -> None:
    """ASGI 2.3 (uvicorn here): Starlette cancels the stream when the client disconnects,
    before the content generator ever started, so only the response can release it."""
    closed: list[bool] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    response = EventStream(never(), lambda: closed.append(True))
    await asyncio.wait_for(response(scope("2.3"), receive, send), timeout=5)
    assert closed == [True]


async def test_a_finished_stream_releases_once() -> None:
    closed: list[bool] = []
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    async def send(message: dict[str, Any]) -> None:
        body.append(message.get("body", b""))

    await EventStream(two(), lambda: closed.append(True))(scope("2.3"), receive, send)
    assert b"".join(body) == b"data: 1\n\ndata: 2\n\n" and closed == [True]


def chunk(text: str) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


async def slow_start() -> AsyncIterator[dict[str, Any] | Usage]:
    await asyncio.sleep(0.35)  # a model thinking before its first token
    yield chunk("hel")
    yield chunk("lo")
    yield Usage(input_tokens=3, output_tokens=2)


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([part async for part in stream])


async def test_a_silent_openai_stream_sends_keepalives_the_sdk_skips() -> None:
    raw = await collect(openai_sse(slow_start(), include_usage=True, keepalive_s=0.1))
    assert raw.startswith(b": keepalive\n\n") and raw.count(b": keepalive") >= 2
    events = [e async for e in SSEDecoder().aiter_bytes(_aiter(raw))]
    data = [e.data for e in events]
    assert data[-1] == "[DONE]" and len(data) == 4, "two chunks, usage, done: nothing else"


async def test_a_silent_anthropic_stream_pings() -> None:
    raw = await collect(anthropic_sse(slow_start(), "claude", "msg_1", keepalive_s=0.1))
    names = [line for line in raw.decode().splitlines() if line.startswith("event: ")]
    assert names[:2] == ["event: ping", "event: ping"]
    assert "event: message_start" in names and names[-1] == "event: message_stop"


async def test_a_client_leaving_mid_wait_cancels_the_pending_read() -> None:
    cancelled = asyncio.Event()

    async def stuck() -> AsyncIterator[dict[str, Any] | Usage]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        yield chunk("never")

    stream = cast(
        AsyncGenerator[bytes, None], openai_sse(stuck(), include_usage=False, keepalive_s=0.05)
    )
    assert await anext(stream) == b": keepalive\n\n"
    await stream.aclose()
    await asyncio.wait_for(cancelled.wait(), timeout=2)


async def _aiter(raw: bytes) -> AsyncIterator[bytes]:
    yield raw


async def test_an_anthropic_stream_s_error_event_says_anthropic_s_error_type() -> None:
    """After the 200 the error is an event, typed as Anthropic types that status."""
    import json

    from schemas.errors import BudgetExceeded, NotFound, NoWorker, RelayError

    def failing(err: RelayError) -> AsyncIterator[dict[str, Any] | Usage]:
        async def chunks() -> AsyncIterator[dict[str, Any] | Usage]:
            delta = {"role": "assistant", "content": "Hel"}
            yield {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            raise err

        return chunks()

    for err, kind in (
        (BudgetExceeded("spent"), "billing_error"),
        (NotFound("gone"), "not_found_error"),
        (NoWorker("none"), "overloaded_error"),
    ):
        raw = (await collect(anthropic_sse(failing(err), "claude", "msg_1"))).decode()
        last = raw.strip().split("\n\n")[-1].splitlines()
        assert last[0] == "event: error"
        body = json.loads(last[1].removeprefix("data: "))
        assert body == {"type": "error", "error": {"type": kind, "message": err.message}}


async def test_an_openai_client_never_sees_the_anthropic_start_usage() -> None:
    async def chunks() -> AsyncIterator[dict[str, Any] | Usage]:
        delta = {"role": "assistant", "content": ""}
        yield {
            "id": "c",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            "anthropic_start_usage": {"input_tokens": 25},
        }
        yield Usage(input_tokens=25, output_tokens=1)

    raw = await collect(openai_sse(chunks(), include_usage=True))
    assert b"anthropic_start_usage" not in raw and raw.count(b"data: ") == 3
