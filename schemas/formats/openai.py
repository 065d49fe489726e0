"""OpenAI chat-completion bodies and their streamed chunks, converted both ways."""

from __future__ import annotations

import re
import secrets
from typing import Any

# Word-ish pieces that concatenate back to the exact original text: leading whitespace
# rides with the word after it, and trailing whitespace becomes a piece of its own.
_PIECES = re.compile(r"\s*\S+|\s+")


def new_id(prefix: str) -> str:
    """A fresh random id such as ``chatcmpl-3f9c…``.

    ``prefix`` is used verbatim when it already ends in ``-`` or ``_`` (``"call_"``,
    ``"msg_"``); otherwise a ``-`` joins it to the random part, as OpenAI does.
    """
    sep = "" if prefix.endswith(("-", "_")) else "-"
    return f"{prefix}{sep}{secrets.token_hex(12)}"


def assemble_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge a streamed ``chat.completion.chunk`` list into one ``chat.completion`` body.

    Content and refusal deltas are concatenated per choice; tool calls are merged by
    their ``index`` (id, type and name come once, argument fragments are joined). The
    last usage seen, if any, is kept.
    """
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        for key in ("id", "created", "model", "system_fingerprint"):
            if key not in head and chunk.get(key) is not None:
                head[key] = chunk[key]
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            _merge_choice(choices.setdefault(choice.get("index", 0), _empty_choice()), choice)

    body: dict[str, Any] = {
        "id": head.get("id", ""),
        "object": "chat.completion",
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": [_finish_choice(i, choices[i]) for i in sorted(choices)],
    }
    if "system_fingerprint" in head:
        body["system_fingerprint"] = head["system_fingerprint"]
    if usage is not None:
        body["usage"] = usage
    return body


def _empty_choice() -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": [],
        "refusal": [],
        "tools": {},
        "thinking": [],
        "finish": None,
    }


def _merge_choice(acc: dict[str, Any], choice: dict[str, Any]) -> None:
    delta = choice.get("delta") or {}
    if delta.get("role"):
        acc["role"] = delta["role"]
    if delta.get("content"):
        acc["content"].append(delta["content"])
    if delta.get("refusal"):
        acc["refusal"].append(delta["refusal"])
    _merge_thinking(acc["thinking"], delta)
    for frag in delta.get("tool_calls") or []:
        call = acc["tools"].setdefault(
            frag.get("index", 0), {"id": "", "type": "function", "name": [], "arguments": []}
        )
        if frag.get("id"):
            call["id"] = frag["id"]
        fn = frag.get("function") or {}
        if fn.get("name"):
            call["name"].append(fn["name"])
        if fn.get("arguments"):
            call["arguments"].append(fn["arguments"])
    if choice.get("finish_reason"):
        acc["finish"] = choice["finish_reason"]


def _merge_thinking(blocks: list[dict[str, Any]], delta: dict[str, Any]) -> None:
    """Thinking extensions of a delta (``reasoning_content``, ``thinking_signature``,
    ``redacted_thinking``: see ``schemas.formats.anthropic``) folded into thinking blocks;
    a signature closes its block."""
    last = blocks[-1] if blocks else None
    open_block = last if last and last["type"] == "thinking" and not last["signature"] else None
    if text := delta.get("reasoning_content"):
        if open_block is None:
            open_block = {"type": "thinking", "thinking": "", "signature": ""}
            blocks.append(open_block)
        open_block["thinking"] += text
    if (sig := delta.get("thinking_signature")) and open_block is not None:
        open_block["signature"] = sig
    if (data := delta.get("redacted_thinking")) is not None:
        blocks.append({"type": "redacted_thinking", "data": data})


def _finish_choice(index: int, acc: dict[str, Any]) -> dict[str, Any]:
    # OpenAI sends ``content: null`` for a pure tool-call answer, "" for an empty one.
    text = "".join(acc["content"])
    message: dict[str, Any] = {
        "role": acc["role"],
        "content": text if text or not acc["tools"] else None,
    }
    if acc["refusal"]:
        message["refusal"] = "".join(acc["refusal"])
    if acc["thinking"]:
        message["reasoning_content"] = "".join(b.get("thinking", "") for b in acc["thinking"])
        message["thinking_blocks"] = acc["thinking"]
    if acc["tools"]:
        message["tool_calls"] = []
        for _, call in sorted(acc["tools"].items()):
            fn = {"name": "".join(call["name"]), "arguments": "".join(call["arguments"])}
            message["tool_calls"].append({"id": call["id"], "type": call["type"], "function": fn})
    return {"index": index, "message": message, "logprobs": None, "finish_reason": acc["finish"]}


def response_to_chunks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks a stream would have sent for ``body`` (used to replay cached answers).

    Per choice: a role chunk, the content split into word-ish pieces, each tool call as
    one chunk with its id and name followed by one with its arguments, and a finish
    chunk.  No usage chunk: the caller adds its own.
    """
    head = {
        "id": body.get("id", ""),
        "object": "chat.completion.chunk",
        "created": body.get("created", 0),
        "model": body.get("model", ""),
    }
    if body.get("system_fingerprint"):
        head["system_fingerprint"] = body["system_fingerprint"]

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

    out: list[dict[str, Any]] = []
    for choice in body.get("choices") or []:
        i = choice.get("index", 0)
        message = choice.get("message") or {}
        out.append(chunk(i, {"role": message.get("role", "assistant"), "content": ""}))
        for block in message.get("thinking_blocks") or []:
            if block.get("type") == "thinking":
                out.append(chunk(i, {"reasoning_content": block.get("thinking", "")}))
                out.append(chunk(i, {"thinking_signature": block.get("signature", "")}))
            elif block.get("type") == "redacted_thinking":
                out.append(chunk(i, {"redacted_thinking": block.get("data", "")}))
        content = message.get("content")
        if isinstance(content, str):
            out.extend(chunk(i, {"content": piece}) for piece in _PIECES.findall(content))
        if message.get("refusal"):
            out.append(chunk(i, {"refusal": message["refusal"]}))
        for n, call in enumerate(message.get("tool_calls") or []):
            fn = call.get("function") or {}
            start = {"index": n, "id": call.get("id"), "type": call.get("type", "function")}
            start["function"] = {"name": fn.get("name", ""), "arguments": ""}
            out.append(chunk(i, {"tool_calls": [start]}))
            if fn.get("arguments"):
                args = {"index": n, "function": {"arguments": fn["arguments"]}}
                out.append(chunk(i, {"tool_calls": [args]}))
        out.append(chunk(i, {}, choice.get("finish_reason") or "stop"))
    return out
