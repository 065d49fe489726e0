"""OpenAI chat-completion bodies and their streamed chunks, converted both ways."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from schemas.errors import BadRequest, VendorUnsupported

# Word-ish pieces that concatenate back to the exact original text: leading whitespace
# rides with the word after it, and trailing whitespace becomes a piece of its own.
_PIECES = re.compile(r"\s*\S+|\s+")


# OpenAI's reasoning_effort values, least to most; vendors that think map them their way.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")

# Top-level fields that every chunk repeats and a whole answer has once, when the vendor
# sent them at all.
_OPTIONAL_HEAD = ("system_fingerprint", "service_tier")
# How an Anthropic vendor's answer ended, where finish_reason cannot say it: the stop
# sequence it matched, and a stop reason of its own (``schemas.formats.anthropic``).  The
# choice carries them as extensions, through assembly and replay, for Anthropic clients.
OWN_STOP_REASON = "anthropic_stop_reason"
_STOP_EXTENSIONS = ("stop_sequence", OWN_STOP_REASON)


def reasoning_effort(body: dict[str, Any]) -> str | None:
    """The request's ``reasoning_effort`` (None when unset), or a 400 naming the field."""
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        allowed = ", ".join(REASONING_EFFORTS)
        raise BadRequest(
            f"reasoning_effort: {effort!r} is not one of {allowed}", param="reasoning_effort"
        )
    return effort


def one_plain_choice(body: dict[str, Any]) -> None:
    """Refuse what a vendor answering one choice without token logprobs (Anthropic,
    Ollama's native API) would drop in silence: ``n`` > 1, ``logprobs``, ``top_logprobs``.
    An answer quietly missing what was asked would be a lie; a 400 names the field.  An
    OpenAI-format candidate can give both, so it is this candidate's refusal
    (``VendorUnsupported``): the next one is tried before the client hears it."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise VendorUnsupported("n: this model answers one choice per request", param="n")
    if body.get("logprobs") or body.get("top_logprobs"):
        param = "logprobs" if body.get("logprobs") else "top_logprobs"
        raise VendorUnsupported(f"{param}: this model does not return token logprobs", param=param)


def answer_chars(chunk: dict[str, Any]) -> int:
    """Characters of answer a chunk carries: text, reasoning and tool-call arguments."""
    total = 0
    for choice in chunk.get("choices") or []:
        delta = (choice.get("delta") if isinstance(choice, dict) else None) or {}
        calls = delta.get("tool_calls") or []
        total += sum(len((c.get("function") or {}).get("arguments") or "") for c in calls)
        total += len(delta.get("content") or "") + len(delta.get("reasoning_content") or "")
    return total


def new_id(prefix: str) -> str:
    """A fresh random id such as ``chatcmpl-3f9c…``.

    ``prefix`` is used verbatim when it already ends in ``-`` or ``_`` (``"call_"``,
    ``"msg_"``); otherwise a ``-`` joins it to the random part, as OpenAI does.
    """
    sep = "" if prefix.endswith(("-", "_")) else "-"
    return f"{prefix}{sep}{secrets.token_hex(12)}"


def parse_arguments(raw: Any) -> dict[str, Any]:
    """Tool-call arguments as an object: a model's malformed JSON becomes {} rather than
    failing an answer that was already paid for."""
    if isinstance(raw, dict):  # some OpenAI-compatible servers send objects already
        return raw
    try:
        value = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def tool_use_block(call: dict[str, Any], fallback_id: str = "") -> dict[str, Any]:
    """An OpenAI tool call as an Anthropic ``tool_use`` block (``fallback_id`` for a call
    that came without an id)."""
    fn = call.get("function") or {}
    return {
        "type": "tool_use",
        "id": call.get("id") or fallback_id,
        "name": fn.get("name", ""),
        "input": parse_arguments(fn.get("arguments")),
    }


def assemble_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge a streamed ``chat.completion.chunk`` list into one ``chat.completion`` body.

    Content and refusal deltas are concatenated per choice, as are the choice's
    ``logprobs`` lists and the delta's ``annotations``; tool calls are merged by their
    ``index`` (id, type and name come once, argument fragments are joined). The last
    usage seen, if any, is kept.
    """
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        for key in ("id", "created", "model", *_OPTIONAL_HEAD):
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
    for key in _OPTIONAL_HEAD:
        if key in head:
            body[key] = head[key]
    if usage is not None:
        body["usage"] = usage
    return body


def _empty_choice() -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": [],
        "refusal": [],
        "tools": {},
        "reasoning": [],
        "annotations": [],
        "logprobs": None,  # {"content": [...], "refusal": [...]} once a chunk carries any
        "order": [],  # segments in arrival order: thinking, redacted, text, tool (see below)
        "cited": False,  # an Anthropic vendor's text cited a document
        "finish": None,
    }


def _merge_choice(acc: dict[str, Any], choice: dict[str, Any]) -> None:
    delta = choice.get("delta") or {}
    if delta.get("role"):
        acc["role"] = delta["role"]
    _merge_thinking(acc, delta)
    if (citation := delta.get("citation")) is not None:
        _text_segment(acc, delta)["citations"].append(citation)
        acc["cited"] = True
    if delta.get("content"):
        acc["content"].append(delta["content"])
        _text_segment(acc, delta)["pieces"].append(delta["content"])
    if delta.get("refusal"):
        acc["refusal"].append(delta["refusal"])
    # Web-search answers send their citations as deltas, often after the text they cite.
    acc["annotations"].extend(delta.get("annotations") or [])
    if logprobs := choice.get("logprobs"):
        merged = acc["logprobs"] = acc["logprobs"] or {"content": [], "refusal": []}
        merged["content"].extend(logprobs.get("content") or [])
        merged["refusal"].extend(logprobs.get("refusal") or [])
    for frag in delta.get("tool_calls") or []:
        if frag.get("index", 0) not in acc["tools"]:
            acc["order"].append(("tool", frag.get("index", 0)))
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
    for key in _STOP_EXTENSIONS:  # an Anthropic vendor's, kept for Anthropic clients
        if choice.get(key):
            acc[key] = choice[key]


def _text_segment(acc: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """The text segment a delta's text or citation belongs to: the open one, unless the
    delta names another Anthropic text block (``text_block``: an answer that cites sends
    each cited span as a block of its own, its citations first)."""
    order, block = acc["order"], delta.get("text_block")
    if order and order[-1][0] == "text" and order[-1][1]["block"] == block:
        return order[-1][1]  # type: ignore[no-any-return]
    segment: dict[str, Any] = {"pieces": [], "citations": [], "block": block}
    order.append(("text", segment))
    return segment


def _merge_thinking(acc: dict[str, Any], delta: dict[str, Any]) -> None:
    """A delta's thinking extensions (see ``schemas.formats.anthropic``): any
    ``reasoning_content`` is kept as reasoning text; an Anthropic thinking block is opened
    by ``thinking_start`` (or by a signature with no text before it), fed that text and
    closed by its ``thinking_signature``; ``redacted_thinking`` is a block of its own."""
    order = acc["order"]
    last = order[-1] if order else None
    open_block = None
    if (
        last
        and last[0] == "thinking"
        and last[1]["type"] == "thinking"
        and not last[1]["signature"]
    ):
        open_block = last[1]
    if delta.get("thinking_start"):
        open_block = {"type": "thinking", "thinking": "", "signature": ""}
        order.append(("thinking", open_block))
    if text := delta.get("reasoning_content"):
        acc["reasoning"].append(text)
        if open_block is not None:
            open_block["thinking"] += text
    if sig := delta.get("thinking_signature"):
        if open_block is None:  # a block whose thinking was omitted: signature only
            open_block = {"type": "thinking", "thinking": "", "signature": ""}
            order.append(("thinking", open_block))
        open_block["signature"] = sig
    if (data := delta.get("redacted_thinking")) is not None:
        order.append(("thinking", {"type": "redacted_thinking", "data": data}))


def _finish_choice(index: int, acc: dict[str, Any]) -> dict[str, Any]:
    # OpenAI sends ``content: null`` for a pure tool-call or refusal answer, "" for an
    # empty one.
    text = "".join(acc["content"])
    message: dict[str, Any] = {
        "role": acc["role"],
        "content": text if text or not (acc["tools"] or acc["refusal"]) else None,
    }
    if acc["refusal"]:
        message["refusal"] = "".join(acc["refusal"])
    if acc["reasoning"]:
        message["reasoning_content"] = "".join(acc["reasoning"])
    if acc["annotations"]:
        message["annotations"] = acc["annotations"]
    calls: dict[int, dict[str, Any]] = {}
    if acc["tools"]:
        message["tool_calls"] = []
        for n, call in sorted(acc["tools"].items()):
            fn = {"name": "".join(call["name"]), "arguments": "".join(call["arguments"])}
            calls[n] = {"id": call["id"], "type": call["type"], "function": fn}
            message["tool_calls"].append(calls[n])
    thought = any(kind == "thinking" for kind, _ in acc["order"])
    if thought:
        message["thinking_blocks"] = [seg for kind, seg in acc["order"] if kind == "thinking"]
    if thought or acc.get("cited"):
        message["anthropic_content"] = [_anthropic_block(seg, calls) for seg in acc["order"]]
    out = {
        "index": index,
        "message": message,
        "logprobs": _finish_logprobs(acc["logprobs"]),
        "finish_reason": acc["finish"],
    }
    out |= {key: acc[key] for key in _STOP_EXTENSIONS if acc.get(key)}
    return out


def _finish_logprobs(merged: dict[str, Any] | None) -> dict[str, Any] | None:
    """A choice's logprobs as a whole answer has them: ``refusal`` is null, not [], when
    the model refused nothing."""
    if merged is None:
        return None
    return {"content": merged["content"], "refusal": merged["refusal"] or None}


def _anthropic_block(segment: tuple[str, Any], calls: dict[int, dict[str, Any]]) -> dict[str, Any]:
    kind, value = segment
    if kind == "thinking":
        return value  # type: ignore[no-any-return]
    if kind == "text":
        text = {"type": "text", "text": "".join(value["pieces"])}
        return text | ({"citations": value["citations"]} if value["citations"] else {})
    return tool_use_block(calls[value])


def _anthropic_deltas(content: list[Any]) -> list[dict[str, Any]]:
    """The deltas that replay an Anthropic answer's blocks in their order (thinking
    between tool calls included), thinking as the extensions ``MessageEventsToChunks``
    makes of it."""
    deltas: list[dict[str, Any]] = []
    tools = 0
    cited = any(isinstance(b, dict) and b.get("citations") for b in content)
    for n, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "thinking":
            start: dict[str, Any] = {"thinking_start": True}
            if block.get("thinking"):
                start["reasoning_content"] = block["thinking"]
            deltas.append(start)
            if block.get("signature"):
                deltas.append({"thinking_signature": block["signature"]})
        elif kind == "redacted_thinking":
            deltas.append({"redacted_thinking": block.get("data", "")})
        elif kind == "text" and cited:  # each text block apart, its citations first
            deltas += [{"citation": c, "text_block": n} for c in block.get("citations") or []]
            pieces = _PIECES.findall(block.get("text", ""))
            deltas += [{"content": piece, "text_block": n} for piece in pieces]
        elif kind == "text":
            deltas += [{"content": piece} for piece in _PIECES.findall(block.get("text", ""))]
        elif kind == "tool_use":
            args = json.dumps(block.get("input") or {})
            deltas += _call_deltas(tools, block.get("id"), "function", block.get("name", ""), args)
            tools += 1
    return deltas


def _call_deltas(
    index: int, call_id: Any, kind: Any, name: str, arguments: str
) -> list[dict[str, Any]]:
    """One tool call as a stream sends it: id and name first, then its arguments."""
    start = {
        "index": index,
        "id": call_id,
        "type": kind,
        "function": {"name": name, "arguments": ""},
    }
    deltas = [{"tool_calls": [start]}]
    if arguments:
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})
    return deltas


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
    for key in _OPTIONAL_HEAD:
        if body.get(key):
            head[key] = body[key]

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

    def last(index: int, choice: dict[str, Any]) -> dict[str, Any]:
        end = chunk(index, {}, choice.get("finish_reason") or "stop")
        # An Anthropic vendor's, kept for Anthropic clients.
        end["choices"][0] |= {key: choice[key] for key in _STOP_EXTENSIONS if choice.get(key)}
        return end

    out: list[dict[str, Any]] = []
    for choice in body.get("choices") or []:
        i = choice.get("index", 0)
        deltas = _message_deltas(choice.get("message") or {})
        chunks = [chunk(i, d) for d in deltas]
        if choice.get("logprobs"):
            # The pieces are words, not tokens, so splitting the logprobs to match them
            # would be guesswork. The whole object rides on the choice's first text
            # chunk instead: a client that joins logprobs across chunks (as the SDKs do)
            # gets exactly the stored lists back.
            text = (n for n, d in enumerate(deltas) if d.get("content") or d.get("refusal"))
            chunks[next(text, 0)]["choices"][0]["logprobs"] = choice["logprobs"]
        out += chunks
        out.append(last(i, choice))
    return out


def _message_deltas(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The deltas that replay one choice's message, starting with its role."""
    deltas: list[dict[str, Any]] = [{"role": message.get("role", "assistant"), "content": ""}]
    if isinstance(message.get("anthropic_content"), list):  # Anthropic's, in order
        return deltas + _anthropic_deltas(message["anthropic_content"])
    if message.get("reasoning_content"):
        deltas.append({"reasoning_content": message["reasoning_content"]})
    content = message.get("content")
    if isinstance(content, str):
        deltas += [{"content": piece} for piece in _PIECES.findall(content)]
    if message.get("refusal"):
        deltas.append({"refusal": message["refusal"]})
    if message.get("annotations"):  # after the text they cite, as OpenAI streams them
        deltas.append({"annotations": message["annotations"]})
    for n, call in enumerate(message.get("tool_calls") or []):
        fn = call.get("function") or {}
        deltas += _call_deltas(
            n,
            call.get("id"),
            call.get("type", "function"),
            fn.get("name", ""),
            fn.get("arguments") or "",
        )
    return deltas
