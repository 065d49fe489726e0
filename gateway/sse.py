"""Server-sent events in the OpenAI and Anthropic dialects."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway import metrics
from gateway.errors import anthropic_error
from gateway.metrics import ANTHROPIC_PING, OPENAI_KEEPALIVE
from schemas.errors import RelayError
from schemas.formats.anthropic import ChunksToMessageEvents, without_start_usage
from schemas.formats.responses import ChunksToResponseEvents
from schemas.usage import Usage

log = logging.getLogger("relay.gateway")


class EventStream(StreamingResponse):
    """An SSE response (never cached by the way) that calls ``on_close`` however it ends:
    finished, failed, or cancelled because the client left (possibly before the first
    event was made).  Its events are closed first: a response that ends inside ``send``
    (a client that stopped reading, then left) leaves them paused at a ``yield``, where
    nothing else would stop their read-ahead of the answer and their keep-alive timer."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        on_close: Callable[[], object],
        headers: dict[str, str] | None = None,
    ) -> None:
        headers = {**(headers or {}), "cache-control": "no-cache"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                if inspect.isasyncgen(events := self.body_iterator):
                    await events.aclose()  # (a no-op for events that ran to their end)
            finally:
                self.on_close()


# An SSE connection silent for ~60 s is cut by many proxies and load balancers (nginx's
# proxy_read_timeout, cloud load balancers' idle timeouts); a stream that has written
# nothing for this long (a request queued in its lane, a model that thinks first, a
# vendor's reasoning an Anthropic client is not shown) sends a keep-alive (its frames
# are gateway.metrics', whose time to first byte must not count them).
KEEPALIVE_S = 15.0


def _data(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _kept_alive(
    frames: AsyncIterator[bytes], keepalive: bytes, every_s: float
) -> AsyncIterator[bytes]:
    """``frames``, and ``keepalive`` whenever ``every_s`` has passed since the last frame
    was written: before the first token and after it alike, since chunks may come that
    make no frame (reasoning an Anthropic client is not shown) or none come for a while.

    One task reads ``frames`` for the whole stream and one timer, moved on only when it
    fires, wakes the writer when the stream has been quiet: tokens that flow cost no task
    and no timer each, and frames that came together are written in one wake-up."""
    loop = asyncio.get_running_loop()
    pipe = _Pipe(loop)
    reader = asyncio.ensure_future(pipe.fill(frames))
    written = loop.time()
    timer: asyncio.TimerHandle | None = None

    def beat() -> None:
        nonlocal timer
        now = loop.time()
        if now - written < every_s:
            timer = loop.call_at(written + every_s, beat)
            return
        if not pipe.frames:  # else frames are on their way out already
            pipe.put(keepalive)
        timer = loop.call_at(now + every_s, beat)

    timer = loop.call_at(written + every_s, beat)
    try:
        while batch := await pipe.take():
            written = loop.time()
            for frame in batch:
                yield frame
    finally:
        if timer is not None:
            timer.cancel()
        reader.cancel()  # the client left while a read was pending


class _Pipe:
    """Frames from the task reading a stream to the one writing it.  The reader is held
    once ``LIMIT`` frames wait unwritten (a slow client does not make the gateway read
    the whole answer into memory); a failure of the reader's reaches the writer."""

    LIMIT = 64

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.frames: list[bytes] = []
        self.ended = False
        self.failure: Exception | None = None
        self._writer: asyncio.Future[None] | None = None  # waiting for a frame
        self._reader: asyncio.Future[None] | None = None  # waiting for room

    def put(self, frame: bytes) -> None:
        self.frames.append(frame)
        _wake(self._writer)

    async def fill(self, frames: AsyncIterator[bytes]) -> None:
        """Every frame of ``frames``, then the end (or the failure)."""
        try:
            async for frame in frames:
                self.put(frame)
                if len(self.frames) >= self.LIMIT:
                    self._reader = self.loop.create_future()
                    await self._reader
        except Exception as exc:
            self.failure = exc
        self.ended = True
        _wake(self._writer)

    async def take(self) -> list[bytes]:
        """The frames waiting (after a wait for one, if none do); [] once ended."""
        while not self.frames and not self.ended:
            self._writer = self.loop.create_future()
            await self._writer
        if not self.frames and self.failure is not None:
            raise self.failure
        batch, self.frames = self.frames, []
        _wake(self._reader)  # a reader held by a full pipe goes on
        return batch


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def openai_sse(
    chunks: AsyncIterator[dict[str, Any] | Usage],
    include_usage: bool,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[bytes]:
    """Chunks as ``data:`` lines; the usage chunk if asked; then ``data: [DONE]``; an SSE
    comment whenever ``keepalive_s`` passes without a line.

    An error after the stream began (a bug of the relay's too, logged) cannot change the
    status any more; it is sent the way OpenAI does it, as a final ``data:`` line holding
    an ``error`` object.
    """
    return _kept_alive(_openai_lines(chunks, include_usage), OPENAI_KEEPALIVE, keepalive_s)


async def _guarded(
    frames: AsyncIterator[bytes],
    on_error: Callable[[RelayError], Iterable[bytes]],
    what: str,
) -> AsyncIterator[bytes]:
    """``frames``, and when they fail, ``on_error``'s frames for the failure (counted): a
    ``RelayError`` as it is, any other a bug of ours, logged and said as an internal
    error, so the client still hears the stream end in its dialect."""
    try:
        async for frame in frames:
            yield frame
    except RelayError as err:
        failure = err
    except Exception:  # a bug of ours: the client still hears the stream end
        log.exception("%s stream failed", what)
        failure = RelayError("internal error; it has been logged")
    else:
        return
    metrics.count_error(failure)
    for frame in on_error(failure):
        yield frame


async def _openai_lines(
    chunks: AsyncIterator[dict[str, Any] | Usage], include_usage: bool
) -> AsyncIterator[bytes]:
    lines = _openai_data(chunks, include_usage)
    async for line in _guarded(lines, lambda err: [_data(err.openai_body())], "OpenAI"):
        yield line
    yield b"data: [DONE]\n\n"


async def _openai_data(
    chunks: AsyncIterator[dict[str, Any] | Usage], include_usage: bool
) -> AsyncIterator[bytes]:
    last: dict[str, Any] = {}
    async for item in chunks:
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


class _Translator(Protocol):
    """Chunks in, named events out (``ChunksToMessageEvents``, ``ChunksToResponseEvents``)."""

    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]: ...

    def finish(self, usage: Usage) -> list[tuple[str, dict[str, Any]]]: ...


def _frame(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\n".encode() + _data(data)


async def _named_events(
    events: _Translator, chunks: AsyncIterator[dict[str, Any] | Usage]
) -> AsyncIterator[bytes]:
    """Each chunk's events (the closing ones for the final usage) as SSE frames.  A
    failure is the caller's to send in its dialect (``_guarded``)."""
    async for item in chunks:
        out = events.finish(item) if isinstance(item, Usage) else events.feed(item)
        for name, data in out:
            yield _frame(name, data)


def anthropic_sse(
    chunks: AsyncIterator[dict[str, Any] | Usage],
    model: str,
    message_id: str,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[bytes]:
    """The Anthropic event sequence (message_start … message_stop) built from chunks,
    with a ``ping`` whenever ``keepalive_s`` passes without an event; an error once the
    stream began (a bug of the relay's too, logged, as ``api_error``) is its ``error``
    event, and the stream ends there, as Anthropic's own does."""
    events = _named_events(ChunksToMessageEvents(model, message_id), chunks)
    frames = _guarded(events, lambda err: [_frame("error", anthropic_error(err)[1])], "Anthropic")
    return _kept_alive(frames, ANTHROPIC_PING, keepalive_s)


def responses_sse(
    chunks: AsyncIterator[dict[str, Any] | Usage],
    request: dict[str, Any],
    response_id: str,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[bytes]:
    """The Responses API's events (response.created … response.completed) built from
    chunks, with an SSE comment whenever ``keepalive_s`` passes without an event; an
    error once the stream began (a bug of the relay's too, logged) is its ``error``
    event and ``response.failed``, and the stream ends there."""
    frames = _response_events(ChunksToResponseEvents(request, response_id), chunks)
    return _kept_alive(frames, OPENAI_KEEPALIVE, keepalive_s)


async def _response_events(
    events: ChunksToResponseEvents, chunks: AsyncIterator[dict[str, Any] | Usage]
) -> AsyncIterator[bytes]:
    for name, data in events.start():
        yield _frame(name, data)
    async for frame in _guarded(
        _named_events(events, chunks),
        lambda err: (_frame(name, data) for name, data in events.error(err)),
        "Responses",
    ):
        yield frame
