"""EventStream releases its request however the stream ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from gateway.sse import EventStream


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
