"""Server-sent events in the OpenAI and Anthropic dialects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway import metrics
from gateway.errors import anthropic_error
from schemas.errors import RelayError
from schemas.formats.anthropic import ChunksToMessageEvents, without_start_usage
from schemas.formats.responses import ChunksToResponseEvents
from schemas.usage import Usage


class EventStream(StreamingResponse):
    """An SSE response (never cached by the way) that calls ``on_close`` however it ends:
    finished, failed, or cancelled because the client left (possibly before the first
    event was made)."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        on_close: Callable[[], None],
        headers: dict[str, str] | None = None,
    ) -> None:
        headers = {**(headers or {}), "cache-control": "no-cache"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


# An SSE connection silent for ~60 s is cut by many proxies and load balancers (nginx's
# proxy_read_timeout, cloud load balancers' idle timeouts); a stream waiting for its first
# token (a request queued in its lane, a model that thinks first) sends a keep-alive this
# often.
KEEPALIVE_S = 15.0
_OPENAI_KEEPALIVE = b": keepalive\n\n"  # an SSE comment: clients skip it
_ANTHROPIC_PING = b'event: ping\ndata: {"type": "ping"}\n\n'  # Anthropic's own keep-alive

Item = TypeVar("Item")


def _data(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _beats(source: AsyncIterator[Item], every_s: float) -> AsyncIterator[Item | None]:
    """``source``'s items, and None every ``every_s`` while the first one is awaited.  Once
    tokens flow they flow: past the first item the source is read as it is, without a
    task per item."""
    first = asyncio.ensure_future(anext(source))
    try:
        while not (await asyncio.wait({first}, timeout=every_s))[0]:
            yield None
    finally:
        if not first.done():
            first.cancel()  # the client left while the first item was awaited
    try:
        item = first.result()
    except StopAsyncIteration:
        return
    yield item
    async for item in source:
        yield item


async def openai_sse(
    chunks: AsyncIterator[dict[str, Any] | Usage],
    include_usage: bool,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[bytes]:
    """Chunks as ``data:`` lines; the usage chunk if asked; then ``data: [DONE]``; an SSE
    comment every ``keepalive_s`` while the first chunk is awaited.

    An error after the stream began cannot change the status any more; it is sent the way
    OpenAI does it, as a final ``data:`` line holding an ``error`` object.
    """
    last: dict[str, Any] = {}
    try:
        async for item in _beats(chunks, keepalive_s):
            if item is None:
                yield _OPENAI_KEEPALIVE
                continue
            if isinstance(item, Usage):
                if include_usage:
                    yield _data(
                        {
                            "id": last.get("id", ""),
                            "object": "chat.completion.chunk",
                            "created": last.get("created", 0),
                            "model": last.get("model", ""),
                            "choices": [],
                            "usage": item.to_openai(),
                        }
                    )
                continue
            last = item = without_start_usage(item)
            yield _data(item)
    except RelayError as err:
        metrics.count_error(err)
        yield _data({"error": {"message": err.message, "type": err.type, "code": err.code}})
    yield b"data: [DONE]\n\n"


class _Translator(Protocol):
    """Chunks in, named events out (``ChunksToMessageEvents``, ``ChunksToResponseEvents``)."""

    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]: ...

    def finish(self, usage: Usage) -> list[tuple[str, dict[str, Any]]]: ...


def _frame(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\n".encode() + _data(data)


async def _named_events(
    events: _Translator,
    chunks: AsyncIterator[dict[str, Any] | Usage],
    keepalive: bytes,
    keepalive_s: float,
) -> AsyncIterator[bytes]:
    """Each chunk's events (the closing ones for the final usage) as SSE frames, and
    ``keepalive`` every ``keepalive_s`` while the first chunk is awaited.  A ``RelayError``
    from the chunks is the caller's to send in its dialect."""
    async for item in _beats(chunks, keepalive_s):
        if item is None:
            yield keepalive
            continue
        out = events.finish(item) if isinstance(item, Usage) else events.feed(item)
        for name, data in out:
            yield _frame(name, data)


async def anthropic_sse(
    chunks: AsyncIterator[dict[str, Any] | Usage],
    model: str,
    message_id: str,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[bytes]:
    """The Anthropic event sequence (message_start … message_stop) built from chunks,
    with a ``ping`` every ``keepalive_s`` while the first chunk is awaited."""
    events = ChunksToMessageEvents(model, message_id)
    try:
        async for frame in _named_events(events, chunks, _ANTHROPIC_PING, keepalive_s):
            yield frame
    except RelayError as err:
        metrics.count_error(err)
        yield _frame("error", anthropic_error(err)[1])


async def responses_sse(
    chunks: AsyncIterator[dict[str, Any] | Usage],
    request: dict[str, Any],
    response_id: str,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[bytes]:
    """The Responses API's events (response.created … response.completed) built from
    chunks, with an SSE comment every ``keepalive_s`` while the first chunk is awaited;
    an error once the stream began is its ``error`` event and ``response.failed``, and
    the stream ends there."""
    events = ChunksToResponseEvents(request, response_id)
    for name, data in events.start():
        yield _frame(name, data)
    try:
        async for frame in _named_events(events, chunks, _OPENAI_KEEPALIVE, keepalive_s):
            yield frame
    except RelayError as err:
        metrics.count_error(err)
        for name, data in events.error(err.code, err.message):
            yield _frame(name, data)
