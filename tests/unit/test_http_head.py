"""The gateway's HTTP protocol bounds a request's head in size and in time, and leaves no
connection open without a timer on it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from gateway import http_head
from gateway.http_head import BoundedHead


def echo_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/echo")
    async def echo(body: dict[str, str]) -> dict[str, str]:
        return body

    @app.post("/v1/refuse")
    async def refuse() -> JSONResponse:  # as the edge refuses: before reading the body
        return JSONResponse({"error": "no key"}, status_code=401)

    return app


@pytest.fixture
async def server() -> AsyncIterator[int]:
    async for port in serving(keep_alive_s=5.0):
        yield port


@pytest.fixture
async def brief_server() -> AsyncIterator[int]:
    """One whose keep-alive timeout (the bound on an idle or lingering connection) is
    short enough to wait out."""
    async for port in serving(keep_alive_s=0.2):
        yield port


async def serving(keep_alive_s: float) -> AsyncIterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        echo_app(), host="127.0.0.1", port=port, http=BoundedHead, log_level="error"
    )
    # uvicorn types the option an int; its timer takes any number of seconds
    config.timeout_keep_alive = keep_alive_s  # type: ignore[assignment]
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


async def test_a_connection_that_sends_nothing_is_closed(brief_server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", brief_server)
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def head_of_answer(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await asyncio.wait_for(reader.readexactly(length), 5)
    return head.lower()


@pytest.mark.parametrize("path", ["/v1/refuse", "/nope"])
async def test_an_answer_before_the_body_closes_the_connection_though_bytes_trickle_in(
    brief_server: int, path: str
) -> None:
    """The refusal says ``connection: close``; the body's bytes that come after it no
    longer keep the connection open (they cancelled the keep-alive timer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", brief_server)
    try:
        writer.write(
            b"POST %s HTTP/1.1\r\nhost: relay\r\ncontent-length: %d\r\n\r\n"
            % (path.encode(), 10**9)
        )
        head = await head_of_answer(reader)
        assert head.startswith((b"http/1.1 401", b"http/1.1 404"))
        assert b"connection: close" in head
        for _ in range(3):
            writer.write(b"x")
            await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_a_client_still_uploading_gets_the_answer_sent_before_its_body(
    brief_server: int,
) -> None:
    """The rest of the body is read and dropped, not met with a reset that could take
    the answer with it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", brief_server)
    try:
        writer.write(b"POST /v1/refuse HTTP/1.1\r\nhost: relay\r\ncontent-length: 2000000\r\n\r\n")
        head = await head_of_answer(reader)
        writer.write(b"x" * 2_000_000)
        await asyncio.wait_for(writer.drain(), 5)
        assert head.startswith(b"http/1.1 401")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after the linger
    finally:
        writer.close()


async def test_a_client_still_sending_a_head_too_large_gets_its_431(brief_server: int) -> None:
    """The 431 goes out while the head still comes in: the rest is read and dropped, not
    met with a reset that could take the answer with it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", brief_server)
    try:
        writer.write(b"POST /v1/echo HTTP/1.1\r\nx-filler: ")
        for _ in range(40):  # 2 MB of head, the 431 due after the first 64 KiB of it
            writer.write(b"a" * 50_000)
            await asyncio.wait_for(writer.drain(), 5)
        head = await head_of_answer(reader)
        assert head.startswith(b"http/1.1 431") and b"connection: close" in head
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after the linger
    finally:
        writer.close()


async def test_a_body_all_in_before_the_answer_keeps_the_connection_alive(server: int) -> None:
    refused = b"POST /v1/refuse HTTP/1.1\r\nhost: relay\r\ncontent-length: 2\r\n\r\n{}"
    answer = await exchange(server, refused, post(b'{"text": "hi"}'), pause=0.2)
    assert answer.count(b"HTTP/1.1 401") == 1 and answer.count(b"HTTP/1.1 200") == 1
    assert answer.lower().count(b"connection: close") == 1  # the echo's, asked for
