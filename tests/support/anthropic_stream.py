"""An Anthropic vendor's event stream, and what the anthropic SDK makes of the relay's
own: for tests that follow an answer from the vendor's events through the neutral chunks
to an Anthropic client."""

from __future__ import annotations

import json
from typing import Any

from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message

from schemas.formats.anthropic import ChunksToMessageEvents, MessageEventsToChunks
from schemas.usage import Usage


def vendor_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The event stream an Anthropic vendor sends for ``message`` (thinking word by word;
    a cited text block opens with no citations, which come as deltas before its text)."""
    start = {**message, "content": [], "stop_reason": None}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    for i, block in enumerate(message["content"]):
        kind = block["type"]
        first = {
            "thinking": {**block, "thinking": "", "signature": ""},
            "text": {**block, "text": ""} | ({"citations": []} if "citations" in block else {}),
            "tool_use": {**block, "input": {}},
        }.get(kind, block)
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": i, "content_block": first},
            )
        )
        deltas: list[dict[str, Any]] = []
        if kind == "thinking":
            deltas = [
                {"type": "thinking_delta", "thinking": w} for w in block["thinking"].split(" ")
            ]
            deltas = [
                {**d, "thinking": (" " if j else "") + d["thinking"]} for j, d in enumerate(deltas)
            ]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif kind == "text":
            deltas = [
                {"type": "citations_delta", "citation": c} for c in block.get("citations", [])
            ]
            deltas.append({"type": "text_delta", "text": block["text"]})
        elif kind == "tool_use":
            deltas = [{"type": "input_json_delta", "partial_json": json.dumps(block["input"])}]
        for d in deltas:
            events.append(
                ("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d})
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": 30},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def client_message(chunks: list[dict[str, Any]]) -> Message:
    """What the anthropic SDK assembles from the events the relay makes of ``chunks``."""
    convert = ChunksToMessageEvents("claude-alias", "msg_relay")
    events: list[tuple[str, dict[str, Any]]] = []
    for chunk in chunks:
        events += convert.feed(chunk)
    events += convert.finish(Usage(input_tokens=10, output_tokens=30))
    snapshot = None
    json_bufs: dict[int, bytes] = {}  # each tool block's input JSON so far, as the SDK keeps
    for _, data in events:
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=json_bufs)  # type: ignore[arg-type]
    assert snapshot is not None
    return Message.model_validate(snapshot.model_dump())


def blocks(message: Message) -> list[dict[str, Any]]:
    return [b.model_dump(exclude_none=True) for b in message.content]


def through_a_stream(message: dict[str, Any]) -> tuple[list[dict[str, Any]], Message]:
    """The vendor's events as neutral chunks, and what an Anthropic client makes of them."""
    to_chunks = MessageEventsToChunks(created=1)
    chunks: list[dict[str, Any]] = []
    for name, data in vendor_events(message):
        chunks += [c for c in to_chunks.feed(name, data) if isinstance(c, dict)]
    return chunks, client_message(chunks)
