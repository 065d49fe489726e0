"""The gateway's HTTP protocol bounds a request's head in size and in time."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from fastapi import FastAPI

from gateway import http_head
from gateway.http_head import BoundedHead


@pytest.fixture
async def server() -> AsyncIterator[int]:
    app = FastAPI()

    @app.post("/v1/echo")
    async def echo(body: dict[str, str]) -> dict[str, str]:
        return body

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=BoundedHead, log_level="error")
    served = uvicorn.Server(config)
    task = asyncio.create_task(served.serve())
    while not served.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
        await asyncio.sleep(0.01)
    yield port
    served.should_exit = True
    await task


async def exchange(port: int, *pieces: bytes, pause: float = 0.0) -> bytes:
    """What the server answers while ``pieces`` go out (until it closes on them)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(pause)

    sending = asyncio.create_task(send())
    try:
        return await asyncio.wait_for(reader.read(), 5)  # to the server's close
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        writer.close()


def post(body: bytes, extra: bytes = b"", *, last: bool = True) -> bytes:
    return (
        b"POST /v1/echo HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\n"
        + (b"connection: close\r\n" if last else b"")
        + extra
        + b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )


async def test_a_request_with_a_large_body_and_ordinary_headers_is_served(server: int) -> None:
    body = b'{"text": "%s"}' % (b"x" * 300_000)  # read in many chunks, past the head's limit
    answer = await exchange(server, post(body, b"x-big: " + b"y" * 30_000 + b"\r\n"))
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"x" * 1000 + b'"}')


async def test_a_head_past_the_limit_is_a_431_and_the_connection_closes(server: int) -> None:
    endless = b"POST /v1/echo HTTP/1.1\r\nx-filler: " + b"a" * 16_384
    answer = await exchange(server, endless, *([b"a" * 16_384] * 8), pause=0.02)
    assert answer.startswith(b"HTTP/1.1 431")


async def test_a_head_that_trickles_in_is_cut_at_the_timeout(
    server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_head, "HEAD_TIMEOUT_S", 0.3)
    answer = await exchange(
        server, *[b"POST /v1/echo HTTP/1.1\r\nx-slow: a"] + [b"a"] * 20, pause=0.05
    )
    assert answer.startswith(b"HTTP/1.1 408")


async def test_a_pipelined_head_after_a_large_body_is_not_charged_for_that_body(
    server: int,
) -> None:
    """One read that ends a 200 KB body and starts the next request's head: both served."""
    big = post(b'{"text": "%s"}' % (b"x" * 200_000), last=False)
    second = post(b'{"text": "hi"}')
    answer = await exchange(server, big + second[:20], second[20:], pause=0.3)
    assert answer.count(b"HTTP/1.1 200") == 2
