"""Server-sent events in the OpenAI and Anthropic dialects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from schemas.errors import RelayError
from schemas.formats.anthropic import ChunksToMessageEvents
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


def _data(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def openai_sse(
    chunks: AsyncIterator[dict[str, Any] | Usage], include_usage: bool
) -> AsyncIterator[bytes]:
    """Chunks as ``data:`` lines; the usage chunk if asked; then ``data: [DONE]``.

    An error after the stream began cannot change the status any more; it is sent the way
    OpenAI does it, as a final ``data:`` line holding an ``error`` object.
    """
    last: dict[str, Any] = {}
    try:
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
            last = item
            yield _data(item)
    except RelayError as err:
        yield _data({"error": {"message": err.message, "type": err.type, "code": err.code}})
    yield b"data: [DONE]\n\n"


async def anthropic_sse(
    chunks: AsyncIterator[dict[str, Any] | Usage], model: str, message_id: str
) -> AsyncIterator[bytes]:
    """The Anthropic event sequence (message_start … message_stop) built from chunks."""
    events = ChunksToMessageEvents(model, message_id)
    try:
        async for item in chunks:
            out = events.finish(item) if isinstance(item, Usage) else events.feed(item)
            for name, data in out:
                yield f"event: {name}\n".encode() + _data(data)
    except RelayError as err:
        err_body = {"type": "error", "error": {"type": err.type, "message": err.message}}
        yield b"event: error\n" + _data(err_body)
