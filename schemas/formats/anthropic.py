"""Anthropic Messages <-> OpenAI chat completions, both directions, requests and answers.

The client side (the gateway speaking Anthropic to its clients) turns a Messages request
into the relay's neutral OpenAI body and the neutral answer back into a Message or its
stream events.  The vendor side (the Anthropic adapter) does the inverse.  Pure
functions: no I/O, so both sides test without a network.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import ijson  # type: ignore[import-untyped]

from schemas.errors import BadRequest, VendorUnsupported
from schemas.formats.openai import (
    OWN_STOP_REASON,
    ToolCallIndexes,
    allowed_tool_names,
    choice_name,
    new_id,
    openai_only_refused,
    reasoning_effort,
    tool_use_block,
)
from schemas.usage import Usage

# OpenAI finish_reason -> Anthropic stop_reason; content_filter is what "refusal" means.
_STOP_REASON = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Anthropic stop_reason -> OpenAI finish_reason; pause_turn (a server tool paused the
# turn) has no OpenAI twin, and the turn did end, so it reads as "stop".
_FINISH_REASON = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic stop reasons a finish_reason cannot tell from another (they would come back
# as end_turn and max_tokens): an Anthropic vendor's rides on the choice as the extension
# ``OWN_STOP_REASON``, so an Anthropic client hears it as the vendor said it.
_OWN_STOP_REASONS = ("pause_turn", "model_context_window_exceeded")
# Anthropic requires max_tokens; this is what the relay asks for when a client did not.
DEFAULT_MAX_TOKENS = 4096
# The tool an Anthropic model answers a response_format request through: its call comes
# back to the client as the message's JSON content, never as a tool call.
JSON_ANSWER_TOOL = "relay_json_answer"
MIN_THINKING_BUDGET = 1024  # Anthropic's smallest budget_tokens
# reasoning_effort → thinking budget_tokens ("none" and "minimal" do not think)
THINKING_BUDGETS = {  # keyed by every one of openai.REASONING_EFFORTS
    "none": 0,
    "minimal": 0,
    "low": 1024,
    "medium": 4096,
    "high": 16384,
    "xhigh": 32768,
}
# ...and back, for an Anthropic client's thinking served by another vendor kind: each
# level's own budget comes back as that level (1 024 low, 4 096 medium, 16 384 high), and
# between them the nearer by ratio.  Nothing asks for xhigh (a budget past 8 192 is high,
# and so are Anthropic's efforts xhigh and max), which only OpenAI's newest models take:
# Claude Code's usual 31 999 would fail on the others.
_EFFORT_BY_BUDGET = (
    (2 * THINKING_BUDGETS["low"], "low"),  # up to 2 048
    (2 * THINKING_BUDGETS["medium"], "medium"),  # up to 8 192; more is high
)
THINKING_KINDS = ("enabled", "adaptive", "disabled")  # Anthropic's thinking.type


# --------------------------------------------------------------------------------------
# Client side: an Anthropic client's request in, the neutral answer out.
# --------------------------------------------------------------------------------------


def messages_request_to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat-completions body.

    Raises ``BadRequest`` naming the offending field for malformed input.  What OpenAI has
    no slot for rides along as an extension, so an Anthropic vendor gets it back:
    ``cache_control`` on text parts (and top level) and ``thinking``; the OpenAI adapters
    strip them (``without_cache_control``).  ``top_k`` goes on as is: Anthropic, Ollama
    and most OpenAI-compatible servers take it (OpenAI's own adapter drops it for OpenAI).
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("model: a model name is required", param="model")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("max_tokens: a positive integer is required", param="max_tokens")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise BadRequest("messages: a non-empty list is required", param="messages")
    _carried_only(body)
    managed = body.get("context_management")
    if managed is not None and not isinstance(managed, dict):
        raise BadRequest("context_management: must be an object", param="context_management")
    if managed:
        compaction_refused(managed)  # before the history, which may hold its blocks

    out: dict[str, Any] = {"model": body["model"], "messages": [], "max_tokens": max_tokens}
    if body.get("system"):
        out["messages"].append({"role": "system", "content": _system_to_openai(body["system"])})
    for i, message in enumerate(body["messages"]):
        out["messages"].extend(_message_to_openai(message, f"messages.{i}"))
    if body["messages"][-1]["role"] == "assistant":
        # A prefill: Anthropic's answer goes on from this turn (``PREFILL``).
        out["messages"][-1][PREFILL] = True

    for key in ("temperature", "top_p", "top_k"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise BadRequest(f"{key}: must be a number", param=key)
        if value is not None:
            out[key] = value  # top_k: an extension (OpenAI has none; Ollama and Anthropic do)
    if body.get("stream") is not None:
        if not isinstance(body["stream"], bool):
            raise BadRequest("stream: must be true or false", param="stream")
        out["stream"] = body["stream"]
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        raise BadRequest("tools: must be a list", param="tools")
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(x, str) for x in stops)
    ):
        raise BadRequest("stop_sequences: must be a list of strings", param="stop_sequences")
    if stops:
        out["stop"] = list(stops)
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadRequest("metadata: must be an object", param="metadata")
    user = (metadata or {}).get("user_id")
    if user is not None and not isinstance(user, str):  # passed on as OpenAI's user
        raise BadRequest("metadata.user_id: must be a string", param="metadata.user_id")
    if user:
        out["user"] = user
    if body.get("tools"):
        out["tools"] = [_tool_to_openai(t, f"tools.{i}") for i, t in enumerate(body["tools"])]
    if body.get("tool_choice"):
        chosen: dict[str, Any] = {}
        _tool_choice_to_openai(body["tool_choice"], chosen)  # checked even with no tools
        if "tools" in out or chosen["tool_choice"] not in ("auto", "none"):
            out |= chosen  # chat refuses auto/none (and parallel calls) without tools
    if body.get("cache_control"):
        out["cache_control"] = body["cache_control"]
    thinking = body.get("thinking")
    if thinking is not None and not isinstance(thinking, dict):
        raise BadRequest("thinking: must be an object", param="thinking")
    if thinking:
        out["thinking"] = thinking
    if managed:
        out["context_management"] = managed  # an extension: Anthropic vendors only
    out |= _output_config_to_openai(body)
    return out


def compaction_refused(managed: dict[str, Any]) -> None:
    """Refuse server-side compaction (a ``context_management`` edit of type
    ``compact_*``): its answer is a ``compaction`` block the client must keep and send
    back, which the relay's neutral answer has no slot for, so the client would never see
    the summary (and pay for a new one each turn).  The edits that only clear context
    (``clear_tool_uses_*``, ``clear_thinking_*``) answer no block of their own and pass."""
    edits = managed.get("edits")
    for n, edit in enumerate(edits if isinstance(edits, list) else []):
        kind = edit.get("type") if isinstance(edit, dict) else None
        if isinstance(kind, str) and kind.startswith("compact_"):
            where = f"context_management.edits.{n}.type"
            raise BadRequest(
                f"{where}: compaction ({kind}) is not supported by the relay "
                "(its compaction block cannot reach the client)",
                param=where,
            )


# The extension on an Anthropic client's last message when it is the assistant's: a
# prefill, which the answer continues (its content holds the continuation alone).  An
# OpenAI-format vendor answers a new turn after it instead, so an OpenAI adapter refuses
# it (``without_cache_control``) and an Anthropic (or Ollama) candidate serves it.
PREFILL = "prefill"


# The Messages request's fields the relay carries to every vendor kind.
CARRIED = frozenset(
    {
        "model", "max_tokens", "messages", "system", "temperature", "top_p", "top_k",
        "stream", "tools", "tool_choice", "stop_sequences", "metadata", "cache_control",
        "thinking", "output_config", "output_format", "context_management",
    }
)  # fmt: skip


def _carried_only(body: dict[str, Any]) -> None:
    """Refuse a field the relay does not carry (``mcp_servers``, ``container``,
    ``inference_geo``, a new one): the request would run without it, which the client
    would never learn; Anthropic itself refuses fields it does not know, too.  A field
    sent empty (null, [], {}) asks for nothing, and ``service_tier: auto`` is what the
    vendor does anyway."""
    for key, value in body.items():
        if key in CARRIED or value in (None, [], {}) or (key == "service_tier" and value == "auto"):
            continue
        if key == "service_tier":
            raise BadRequest("service_tier: only `auto` passes through the relay", param=key)
        raise BadRequest(
            f"{key}: not supported by the relay (the request would run without it)", param=key
        )


def _output_config_to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's structured outputs (``output_config.format``, or the older top-level
    ``output_format``) as OpenAI's ``response_format`` json_schema, which every vendor
    kind answers (an Anthropic one through the relay's JSON-answer tool, which any Claude
    model takes); the rest of ``output_config`` (``effort``) rides along for Anthropic
    vendors, and other vendors go without it."""
    config = body.get("output_config")
    if config is not None and not isinstance(config, dict):
        raise BadRequest("output_config: must be an object", param="output_config")
    config = config or {}
    out: dict[str, Any] = {}
    fmt, param = config.get("format"), "output_config.format"
    if fmt is None:
        fmt, param = body.get("output_format"), "output_format"
    if fmt is not None:
        if not (
            isinstance(fmt, dict)
            and fmt.get("type") == "json_schema"
            and isinstance(fmt.get("schema"), dict)
        ):
            raise BadRequest(f"{param}: needs type json_schema and a schema object", param=param)
        schema = {"name": "output", "schema": fmt["schema"]}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    if rest := {k: v for k, v in config.items() if k != "format" and v is not None}:
        out["output_config"] = rest
    return out


# Anthropic-only fields the neutral body carries as extensions, so an Anthropic vendor
# gets them back: cache breakpoints (top level, tools, content parts, tool results), a
# tool result's error flag, a document block's own fields, Anthropic's client tools and
# a custom tool's own fields (``input_examples``, ``defer_loading``...).
# OpenAI-format vendors refuse unknown fields: they get the body ``without_cache_control``.
EXTENSIONS = frozenset(
    {
        "cache_control",
        "is_error",
        "anthropic_document",
        "anthropic_tool",
        "anthropic_tool_fields",  # a custom tool's fields OpenAI has no slot for
        "anthropic_result",  # a tool result's own blocks (images, documents, search results)
        "lifted",  # an image part lifted out of a tool result (the result keeps it too)
    }
)
# Anthropic's own tools that run on the client (their ``type`` names a version).
CLIENT_TOOLS = ("bash_", "text_editor_", "computer_", "memory_")
# ...and at the top level: cache breakpoints, the extended-thinking config, what an
# output_config holds besides its format (effort), context management (what Claude Code
# asks to clear from a long context: other vendors get the context whole) and the
# client's anthropic-beta features (which the Anthropic adapter sends as that header); on
# messages, thinking (the blocks, the ordered content they sit in, and the keys an
# OpenAI client's SDK folds into a message it echoes back: reasoning text, signature,
# redacted data).  OpenAI-format vendors refuse fields they do not know.
TOP_EXTENSIONS = (
    "cache_control",
    "thinking",
    "output_config",
    "context_management",
    "anthropic_beta",
)
MESSAGE_EXTENSIONS = EXTENSIONS | {
    "citation",
    "text_block",
    "thinking_blocks",
    "anthropic_content",
    "reasoning_content",
    "thinking_start",
    "thinking_signature",
    "redacted_thinking",
    PREFILL,
}


def _plain(item: Any, keys: frozenset[str] = EXTENSIONS) -> Any:
    if isinstance(item, dict) and not keys.isdisjoint(item):
        return {k: v for k, v in item.items() if k not in keys}
    return item


def thinking_effort(body: dict[str, Any]) -> str | None:
    """The ``reasoning_effort`` an Anthropic client's ``thinking`` (extension) asks of a
    vendor of another kind: ``none`` for thinking disabled, a level for thinking on, and
    None when it asked nothing (so nothing is sent: models that do not reason refuse the
    field).  The level is the budget's (``_EFFORT_BY_BUDGET``) or, for adaptive thinking
    or a budget not given, ``output_config.effort`` (low or medium; else high, Anthropic's
    own default).  Effort without thinking asks for no reasoning: it reaches Anthropic
    only."""
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") not in THINKING_KINDS:
        return None
    kind, budget = thinking["type"], thinking.get("budget_tokens")
    if kind == "disabled":
        return "none"
    if kind == "enabled" and isinstance(budget, int) and not isinstance(budget, bool):
        return next((level for most, level in _EFFORT_BY_BUDGET if budget <= most), "high")
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    return effort if effort in ("low", "medium") else "high"


def without_cache_control(
    body: dict[str, Any], *, continues_prefill: bool = True
) -> dict[str, Any]:
    """The body minus the Anthropic extensions (``EXTENSIONS``), for vendors that do not
    know them; the body itself when it has none.  Thinking an Anthropic client turned on
    becomes ``reasoning_effort`` (``thinking_effort``), unless the body has its own.

    Raises ``VendorUnsupported`` for what only an Anthropic vendor reads (a document by
    URL, file id or content blocks, Anthropic's client tools), and for an Anthropic
    client's prefill (``PREFILL``) when the vendor does not continue a last assistant
    turn (``continues_prefill`` false: OpenAI's chat answers a new turn after it, and the
    client would join its prefill to an answer that repeats or ignores it): an Anthropic
    candidate later in the plan may still serve the request."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else None
    if not continues_prefill and isinstance(last, dict) and last.get(PREFILL):
        raise VendorUnsupported(
            "messages: this model cannot continue a prefilled assistant turn (a last "
            "message of the assistant's)",
            param="messages",
        )
    tools = body.get("tools") or []
    if (
        not any(k in body for k in TOP_EXTENSIONS)
        and all(_plain(t) is t for t in tools)
        and all(
            _plain(m, MESSAGE_EXTENSIONS) is m
            and not (
                isinstance(m.get("content"), list) and any(_plain(p) is not p for p in m["content"])
            )
            for m in messages
        )
    ):
        return body
    out = {k: v for k, v in body.items() if k not in TOP_EXTENSIONS}
    # Thinking disabled sends nothing: OpenAI's models before gpt-5.1 refuse "none" (the
    # Ollama adapter reads it from the body itself, as ``think: false``).
    effort = thinking_effort(body)
    if out.get("reasoning_effort") is None and effort not in (None, "none"):
        out["reasoning_effort"] = effort
    out["messages"] = [
        _flag_error(
            m, {**_plain(m, MESSAGE_EXTENSIONS), "content": [_plain(p) for p in m["content"]]}
        )
        if isinstance(m.get("content"), list)
        else _flag_error(m, _plain(m, MESSAGE_EXTENSIONS))
        for m in messages
    ]
    for i, m in enumerate(out["messages"]):
        for j, part in enumerate(m["content"] if isinstance(m.get("content"), list) else []):
            if isinstance(part, dict) and part.get("type") == "document":
                raise VendorUnsupported(
                    f"messages.{i}.content.{j}: a document by URL, file id or content blocks "
                    "reaches Anthropic vendors only; send it as base64 or text for this model"
                )
    if tools:
        for i, tool in enumerate(tools):
            if isinstance(tool, dict) and tool.get("anthropic_tool"):
                kind = tool["anthropic_tool"].get("type")
                raise VendorUnsupported(
                    f"tools.{i}: Anthropic's {kind} tool reaches Anthropic vendors only",
                    param="tools",
                )
        out["tools"] = [_plain(t) for t in tools]
    return out


def _flag_error(given: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """A tool result that failed (``is_error``, which only Anthropic takes) says so in
    its text for other vendors, rather than reading as a normal result."""
    if not (given.get("role") == "tool" and given.get("is_error")):
        return plain
    content = plain.get("content")
    if isinstance(content, list):
        return {**plain, "content": [{"type": "text", "text": "Error:"}, *content]}
    return {**plain, "content": f"Error: {content or ''}".rstrip()}


def _text_part(block: dict[str, Any]) -> dict[str, Any]:
    part = {"type": "text", "text": block.get("text", "")}
    if block.get("cache_control"):
        part["cache_control"] = block["cache_control"]
    return part


def _block_string(block: dict[str, Any], where: str) -> str:
    """A client's text block's text, which must be a string: anything else (null, or
    none at all) is the client's 400 naming it, as Anthropic's own, not a vague
    TypeError wherever (a worker, say) the text is joined later."""
    text = block.get("text")
    if not isinstance(text, str):
        raise BadRequest(f"{where}.text: must be a string", param=f"{where}.text")
    return text


def _text_block_to_openai(block: dict[str, Any], where: str) -> dict[str, Any]:
    _block_string(block, where)
    return _text_part(block)


def _system_to_openai(system: Any) -> str | list[dict[str, Any]]:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise BadRequest("system: must be a string or a list of text blocks", param="system")
    parts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise BadRequest(f"system.{i}: only text blocks are allowed", param="system")
        parts.append(_text_block_to_openai(block, f"system.{i}"))
    # One plain block reads best as a string; several (or cached ones) stay parts.
    if len(parts) == 1 and "cache_control" not in parts[0]:
        return str(parts[0]["text"])
    return parts


def _message_to_openai(message: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise BadRequest(f"{where}.role: must be 'user' or 'assistant'", param="messages")
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content: must be a string or a list of blocks")
    if role == "assistant":
        return [_assistant_to_openai(content, where)]

    # A user turn: tool results become role "tool" messages, which OpenAI wants right
    # after the assistant's tool calls, so they go first; the rest follows as one user
    # message.  Images inside tool results cannot ride on a tool message and join it.
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            text, images = _tool_result_to_openai(block, f"{where}.content.{j}")
            tool = {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}
            tool |= {k: block[k] for k in EXTENSIONS if block.get(k)}
            if isinstance(block.get("content"), list) and any(
                isinstance(b, dict) and b.get("type") != "text" for b in block["content"]
            ):
                # Blocks beyond text: an Anthropic vendor gets the result as it was, its
                # images from the parts they were lifted into (their data carried once).
                tool["anthropic_result"] = [
                    LIFTED if isinstance(b, dict) and b.get("type") == "image" else b
                    for b in block["content"]
                ]
            tools.append(tool)
            parts.extend(image | {"lifted": True} for image in images)
        elif kind == "text":
            parts.append(_text_block_to_openai(block, f"{where}.content.{j}"))
        elif kind == "image":
            parts.append(_image_to_openai(block, f"{where}.content.{j}"))
        elif kind == "document":
            parts.append(_document_to_openai(block, f"{where}.content.{j}"))
        else:
            raise BadRequest(f"{where}.content.{j}: block type {kind!r} is not supported")
    out = list(tools)
    if parts:
        # A lone text block is sent as a plain string, the common OpenAI shape.
        only_text = len(parts) == 1 and parts[0]["type"] == "text" and len(parts[0]) == 2
        out.append({"role": "user", "content": parts[0]["text"] if only_text else parts})
    return out


def _assistant_to_openai(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_block_string(block, f"{where}.content.{j}"))
        elif kind == "tool_use":
            fn = {"name": block.get("name", ""), "arguments": json.dumps(block.get("input", {}))}
            calls.append({"id": block.get("id", ""), "type": "function", "function": fn})
        elif kind in ("thinking", "redacted_thinking"):
            # No slot in an OpenAI request: an extension, so an Anthropic vendor gets its
            # thinking back, signature and all, as it demands in a tool-use loop.
            thinking.append(block)
        else:
            raise BadRequest(f"{where}.content.{j}: block type {kind!r} is not supported")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["thinking_blocks"] = thinking
    if (
        thinking
        or _text_apart(content)
        or any(
            isinstance(b, dict) and (b.get("cache_control") or b.get("citations")) for b in content
        )
    ):
        # The blocks as they were, for an Anthropic vendor: thinking in the order it
        # wants back, cache breakpoints where the client set them, citations on their
        # text, each text block apart and where it was (before a tool call or after it).
        message["anthropic_content"] = content
    return message


def _text_apart(blocks: list[Any]) -> bool:
    """Whether a turn's text is more than its one string before its tool calls says:
    several text blocks, or text after a tool_use.  Such a turn keeps its blocks in
    order (``anthropic_content``) for Anthropic; OpenAI's one ``content`` string joins
    the texts with nothing between them, as a stream of the answer joins its text
    deltas (an answer's text blocks are pieces of one text: a cited span is a block of
    its own, mid-sentence), and has them before its ``tool_calls``."""
    kinds = [b.get("type") for b in blocks if isinstance(b, dict)]
    texts = [n for n, kind in enumerate(kinds) if kind == "text"]
    calls = [n for n, kind in enumerate(kinds) if kind == "tool_use"]
    return len(texts) > 1 or bool(texts and calls and texts[-1] > calls[0])


def _tool_result_to_openai(
    block: dict[str, Any], where: str
) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    if not block.get("tool_use_id"):
        raise BadRequest(f"{where}.tool_use_id: required for a tool_result")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):  # as Anthropic, rather than an empty result
        raise BadRequest(f"{where}.content: must be a string or a list of content blocks")
    texts: list[dict[str, Any]] = []
    images = []
    for k, inner in enumerate(content):
        kind = inner.get("type") if isinstance(inner, dict) else None
        if kind == "text":
            texts.append(_text_block_to_openai(inner, f"{where}.content.{k}"))
        elif kind == "image":
            images.append(_image_to_openai(inner, f"{where}.content.{k}"))
        elif kind in ("document", "search_result"):
            # Text for other vendors (an Anthropic vendor gets the block itself).
            texts.append({"type": "text", "text": _block_text(inner)})
        else:
            raise BadRequest(f"{where}.content.{k}: block type {kind!r} is not supported")
    # is_error has no OpenAI twin: it rides on the tool message as an extension.  Text
    # parts with a cache breakpoint stay parts (OpenAI takes them on a tool message).
    if any("cache_control" in t for t in texts):
        return texts, images
    return "\n".join(t["text"] for t in texts), images


def _block_text(block: dict[str, Any]) -> str:
    """A document or search result inside a tool result, as the text a vendor without
    such blocks reads: its title and source, then its text."""
    source = block.get("source")
    head = [str(block["title"])] if block.get("title") else []
    if isinstance(source, str):  # a search result's source is its URL
        head.append(source)
    body: list[str] = []
    if isinstance(source, dict) and source.get("type") == "text":
        body.append(str(source.get("data") or ""))
    elif isinstance(source, dict) and source.get("type") == "content":
        body += [
            str(b.get("text") or "") for b in source.get("content") or [] if isinstance(b, dict)
        ]
    elif isinstance(source, dict):
        body.append(f"[a {source.get('type', 'binary')} document this model cannot read]")
    body += [str(b.get("text") or "") for b in block.get("content") or [] if isinstance(b, dict)]
    return "\n".join([*head, *body])


def _document_to_openai(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A document block as OpenAI's file part (a PDF as a data URL), or a plain-text one
    as text, with what OpenAI has no slot for (title, context, citations, the source's
    kind) kept as the extension ``anthropic_document``, so an Anthropic vendor gets the
    block back as it was.  Documents by URL, file id or content blocks have no twin an
    OpenAI vendor could read: they become a ``document`` part only Anthropic vendors take."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    rest = {k: v for k, v in block.items() if k != "source"}  # the data rides once only
    if kind == "base64" and isinstance(source, dict) and source.get("data"):
        media = source.get("media_type") or "application/pdf"
        filename = block.get("title") or "document.pdf"
        part: dict[str, Any] = {
            "type": "file",
            "file": {"filename": filename, "file_data": f"data:{media};base64,{source['data']}"},
        }
    elif kind == "text" and isinstance(source, dict) and isinstance(source.get("data"), str):
        part = {"type": "text", "text": source["data"]}
    elif kind in ("url", "file", "content"):
        return {"type": "document", "anthropic_document": block}
    else:
        raise BadRequest(
            f"{where}.source: a document needs a base64, text, url, file or content source"
        )
    if block.get("cache_control"):
        part["cache_control"] = block["cache_control"]
    return part | {"anthropic_document": rest}


def _document_back(part: dict[str, Any], where: str) -> dict[str, Any]:
    """The document block an Anthropic client sent, from the part it became."""
    document: dict[str, Any] = part["anthropic_document"]
    if not isinstance(document, dict) or document.get("type") != "document":
        # (a body may carry this field itself: it brings a document, never another block)
        raise BadRequest(f"{where}: anthropic_document must be a document block")
    if "source" in document:
        return document  # by URL, file id or content blocks: carried whole
    if part.get("type") == "text":
        source = {"type": "text", "media_type": "text/plain", "data": part.get("text", "")}
    else:
        source = _document_to_anthropic(part, where)["source"]
    return {**document, "source": source}


def _image_to_openai(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64" and source.get("data"):
        url = f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
    elif source.get("type") == "url" and source.get("url"):
        url = source["url"]
    else:
        raise BadRequest(f"{where}.source: an image needs a base64 or url source")
    part: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
    if block.get("cache_control"):
        part["cache_control"] = block["cache_control"]
    return part


def _tool_to_openai(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or not tool.get("name"):
        raise BadRequest(f"{where}.name: a tool needs a name", param="tools")
    kind = tool.get("type")
    if isinstance(kind, str) and kind.startswith(CLIENT_TOOLS):
        # One of Anthropic's own tools the client runs (bash, text editor, computer,
        # memory): the model calls it like any tool, with an input only Claude knows.
        fn = {"name": tool["name"], "parameters": {"type": "object", "properties": {}}}
        return {"type": "function", "function": fn, "anthropic_tool": tool}
    if kind not in (None, "custom"):
        # Server tools (web search, code execution...) run inside Anthropic only.
        raise BadRequest(f"{where}: tool type {tool['type']!r} is not supported", param="tools")
    fn = {"name": tool["name"]}
    if tool.get("description"):
        fn["description"] = tool["description"]
    fn["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
    strict = tool.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise BadRequest(f"{where}.strict: must be true or false", param=f"{where}.strict")
    if strict is not None:
        fn["strict"] = strict  # OpenAI's own twin: strict function calling
    out: dict[str, Any] = {"type": "function", "function": fn}
    if tool.get("cache_control"):
        out["cache_control"] = tool["cache_control"]
    if unknown := sorted(k for k in tool if k not in _TOOL_SLOTS | _TOOL_EXTRAS):
        raise BadRequest(f"{where}.{unknown[0]}: not a tool field the relay carries", param="tools")
    if own := {k: v for k, v in tool.items() if k in _TOOL_EXTRAS and v is not None}:
        out["anthropic_tool_fields"] = own  # for Anthropic vendors only
    return out


# A custom tool's fields the neutral tool has a slot for; the others Anthropic documents
# ride as the extension ``anthropic_tool_fields``, which OpenAI-format vendors never see,
# and any other is refused (not dropped in silence, nor passed on unchecked).
_TOOL_SLOTS = frozenset({"type", "name", "description", "input_schema", "strict", "cache_control"})
_TOOL_EXTRAS = frozenset(
    {"input_examples", "defer_loading", "eager_input_streaming", "allowed_callers"}
)


def _tool_choice_to_openai(choice: Any, out: dict[str, Any]) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and choice.get("name"):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise BadRequest(f"tool_choice: type {kind!r} is not supported", param="tool_choice")
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False


def _anthropic_usage(usage: Usage) -> dict[str, Any]:
    # Anthropic's input_tokens is the uncached part only; ours counts every prompt token.
    out: dict[str, Any] = {
        "input_tokens": usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "output_tokens": usage.output_tokens,
    }
    if usage.cache_write_1h_tokens:  # how the writes split by cache lifetime, as Anthropic
        out["cache_creation"] = {
            "ephemeral_5m_input_tokens": usage.cache_write_tokens - usage.cache_write_1h_tokens,
            "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens,
        }
    return out


def _stop_reason(
    finish: str | None, *, tools: bool, refused: bool, sequence: Any, own: Any = None
) -> tuple[str, str | None]:
    """Anthropic's ``(stop_reason, stop_sequence)`` for an OpenAI answer that ended with
    ``finish``.  A forced tool choice ends with "stop" at OpenAI, yet the answer is tool
    calls: Anthropic clients loop on ``tool_use``, so that is what they get.  The matched
    stop sequence rides on the choice as an extension (``stop_sequence``) when an
    Anthropic vendor said which one it was, and so does a stop reason ``finish`` cannot
    say (``own``: the extension ``OWN_STOP_REASON``)."""
    if refused:
        return "refusal", None
    if isinstance(sequence, str) and sequence:
        return "stop_sequence", sequence
    if own in _OWN_STOP_REASONS:
        return own, None
    stop = _STOP_REASON.get(finish or "stop", "end_turn")
    return ("tool_use" if tools and stop == "end_turn" else stop), None


_ANTHROPIC_BLOCKS = ("thinking", "redacted_thinking", "text", "tool_use")


def _top_p_allowed(model: str, out: dict[str, Any]) -> bool:
    """Whether ``top_p`` may go beside what ``out`` holds: Claude models after the 3
    family refuse it together with ``temperature`` (OpenAI clients often send both, top_p
    mostly at its default of 1), and temperature is the one Anthropic says to set."""
    return "temperature" not in out or model.startswith("claude-3")


def _json_answer_text(block: dict[str, Any]) -> dict[str, Any]:
    """A call of the JSON answer tool as the text block it stands for; others as they are."""
    if block.get("type") == "tool_use" and block.get("name") == JSON_ANSWER_TOOL:
        return {"type": "text", "text": json.dumps(block.get("input", {}))}
    return block


def _without_preamble(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An answer given through the JSON answer tool, without the text before the call
    (with thinking on, the tool is offered, not forced, and Claude may say a sentence
    first): the JSON is the whole answer, as JSON mode gives it everywhere."""
    answer = next((i for i, b in enumerate(content) if _json_answer_text(b) is not b), None)
    if answer is None:
        return content
    return [b for i, b in enumerate(content) if i >= answer or b.get("type") != "text"]


def _anthropic_content(message: dict[str, Any]) -> list[dict[str, Any]]:
    """An Anthropic turn's blocks in their order, when the neutral message carries them
    (extension ``anthropic_content``: only turns whose order or blocks OpenAI's shape
    loses do: thinking, citations, cache breakpoints, ``_text_apart``), else []."""
    content = message.get("anthropic_content")
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") in _ANTHROPIC_BLOCKS]


def _thinking_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The thinking and redacted_thinking blocks a neutral message carries (extension).

    A message an OpenAI client's SDK accumulated from a stream has no ``thinking_blocks``,
    only the delta keys folded together: its signed ``reasoning_content`` is the block
    (one: the SDK joins several blocks' signatures into one string no vendor takes), and
    ``redacted_thinking`` the redacted one.  Unsigned reasoning (another vendor's) is no
    thinking block."""
    blocks = message.get("thinking_blocks")
    if not isinstance(blocks, list):
        folded: list[dict[str, Any]] = []
        text, signature = message.get("reasoning_content"), message.get("thinking_signature")
        if isinstance(text, str) and isinstance(signature, str) and signature:
            folded.append({"type": "thinking", "thinking": text, "signature": signature})
        if isinstance(redacted := message.get("redacted_thinking"), str) and redacted:
            folded.append({"type": "redacted_thinking", "data": redacted})
        return folded
    return [
        b
        for b in blocks
        if isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking")
    ]


def _answer_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A neutral answer's blocks: thinking (if carried), text, refusal, tool calls."""
    content = _thinking_blocks(message)
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    if message.get("refusal"):
        content.append({"type": "text", "text": message["refusal"]})
    content += [tool_use_block(c, new_id("toolu_")) for c in message.get("tool_calls") or []]
    return content


def _message_id(source: Any) -> str:
    if not source:
        return new_id("msg_")
    return str(source) if str(source).startswith("msg_") else f"msg_{source}"


def openai_response_to_messages(body: dict[str, Any], usage: Usage, model: str) -> dict[str, Any]:
    """A ``chat.completion`` body as an Anthropic Message; ``model`` is what the client asked."""
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    # An Anthropic vendor's answer with thinking keeps its blocks in their order.
    content = _anthropic_content(message) or _answer_blocks(message)
    stop, sequence = _stop_reason(
        choice.get("finish_reason"),
        tools=bool(message.get("tool_calls")),
        refused=bool(message.get("refusal")),
        sequence=choice.get("stop_sequence"),
        own=choice.get(OWN_STOP_REASON),
    )
    return {
        "id": _message_id(body.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": sequence,
        "usage": _anthropic_usage(usage),
    }


_SPACE = " \t\n\r"


class JsonObjectPrefix:
    """Whether the text fed so far begins a JSON object (what a tool call's arguments
    must be): ``feed`` says whether a piece keeps it so, and ``whole`` whether the object
    is complete.  ijson's push parser (yajl, in C) reads each piece once as it comes, so
    a long argument streamed in thousands of pieces costs no more than read whole.  Once
    a piece breaks it, every later one is refused too."""

    def __init__(self) -> None:
        self.ok = True
        self._begun = False
        self._depth = 0  # open objects and arrays
        self._whole = False
        self._parser = ijson.basic_parse_coro(self)  # (numbers as Decimal: no overflow)

    @property
    def whole(self) -> bool:
        return self.ok and self._whole

    def send(self, event: tuple[str, Any]) -> None:
        """One parse event (ijson's target): the object's own end makes it whole."""
        kind = event[0]
        if kind in ("start_map", "start_array"):
            self._depth += 1
        elif kind in ("end_map", "end_array"):
            self._depth -= 1
            self._whole = self._depth == 0

    def feed(self, text: str) -> bool:
        if not self.ok:
            return False
        if not self._begun and (begun := text.lstrip(_SPACE)):
            self._begun = True
            self.ok = begun.startswith("{")  # arguments are an object
        if self.ok and text:  # (no bytes at all would tell the parser the text ended)
            try:
                self._parser.send(text.encode())
            except ijson.JSONError:
                self.ok = False
        return self.ok


@dataclass
class _ToolCall:
    """A streamed tool call as far as it has come, and whether its block was opened:
    the vendor's id and name ("" until a fragment gives them), and ``args``, what of its
    arguments may reach an Anthropic client (``prefix`` checks it still begins an
    object)."""

    id: str = ""
    name: str = ""
    args: str = ""
    shown: bool = False
    prefix: JsonObjectPrefix = field(default_factory=JsonObjectPrefix)

    def take(self, args: str) -> str:
        """The part of a fragment an Anthropic client may get: all of it while the
        arguments still begin a JSON object, nothing from the fragment that breaks it on
        (Anthropic's SDKs parse the deltas as they come, and fail on JSON that is not;
        the client gets what parsed so far, {} for arguments wrong from the start, as a
        whole answer gets {} for malformed arguments)."""
        if not self.prefix.feed(args):
            return ""
        if not self.args:  # space alone is no JSON to parse: it goes (or not) with the {
            args = args.lstrip(_SPACE)
        self.args += args
        return args

    @property
    def done(self) -> bool:
        """Whether nothing more of the arguments can come to the client: whole JSON, or
        broken."""
        return self.prefix.whole or not self.prefix.ok


# An Anthropic vendor's message_start usage (its input and cache counts, known before
# any text), carried on the opening chunk to an Anthropic client's own message_start:
# some clients read the input side there alone; and the relay bills a stream cut after it
# that count of its prompt (``opening_usage``).  Not for OpenAI clients (see
# ``without_start_usage``); other vendors say their counts at the end only.
START_USAGE = "anthropic_start_usage"
_START_USAGE_FIELDS = frozenset(
    {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cache_creation",
        "service_tier",
    }
)


def opening_usage(chunk: dict[str, Any]) -> Usage | None:
    """The vendor's own count of the prompt an opening chunk carries (``START_USAGE``):
    its input, cache reads and cache writes, said before any answer, so that a stream cut
    after it is billed what the vendor counted (a cached prompt at the cached price), its
    output alone estimated.  None when the chunk carries none, or a count that says no
    prompt at all or cannot be read (a compatible server that counts at the end only):
    the relay's estimate stands then."""
    said = chunk.get(START_USAGE)
    if not isinstance(said, dict):
        return None
    try:
        usage = _usage_from_anthropic(said)
    except (TypeError, ValueError, OverflowError):  # a count that is not a number
        return None
    return usage if usage.input_tokens else None


def without_start_usage(chunk: dict[str, Any]) -> dict[str, Any]:
    """The chunk as an OpenAI client gets it: without ``START_USAGE``."""
    if START_USAGE not in chunk:
        return chunk
    return {k: v for k, v in chunk.items() if k != START_USAGE}


class ChunksToMessageEvents:
    """Turns a stream of OpenAI chunks into Anthropic's stream events, as (event, data).

    Text opens a text block (an Anthropic vendor's cited spans one each, their
    citations first); each tool call opens its own tool_use block, so block indexes count
    up as the answer switches between them.  Only choice 0 is used:
    Anthropic has no ``n``.
    """

    def __init__(self, model: str, message_id: str) -> None:
        self.model = model
        self.message_id = message_id
        self._started = False
        self._block = -1  # index of the open block, -1 before the first one
        self._open: str | None = None  # what the open block holds: "text:", "tool:<n>"...
        self._finish: str | None = None
        self._tools = False
        self._refused = False
        self._sequence: str | None = None
        self._own_stop: str | None = None  # an Anthropic vendor's (OWN_STOP_REASON)
        self._thoughts = 0  # thinking and redacted blocks so far
        self._calls: dict[int, _ToolCall] = {}  # by their ``ToolCallIndexes`` number
        self._indexes = ToolCallIndexes()

    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The events one OpenAI chunk adds to the stream."""
        events = self._start(chunk.get(START_USAGE))
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            events += self._thinking(delta)
            self._refused = self._refused or bool(delta.get("refusal"))
            text_key = f"text:{delta.get('text_block', '')}"
            if (citation := delta.get("citation")) is not None:
                block = {"type": "text", "text": "", "citations": []}
                events += self._open_block(text_key, block)
                events.append(self._delta({"type": "citations_delta", "citation": citation}))
            for text in (delta.get("content"), delta.get("refusal")):
                if text:
                    events += self._open_block(text_key, {"type": "text", "text": ""})
                    events.append(self._delta({"type": "text_delta", "text": text}))
            for frag in delta.get("tool_calls") or []:
                events += self._tool_fragment(frag)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
                self._sequence = choice.get("stop_sequence")
                self._own_stop = choice.get(OWN_STOP_REASON)
        return events

    def _tool_fragment(self, frag: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """One fragment of a tool call.  The open call's arguments stream live; another
        call's fragments open its block only once the open call's arguments are whole
        JSON (vendors send parallel calls one after another), and are held back until
        then when a vendor interleaves them: a block, once stopped, cannot take more.
        A call is held too until it is named and its arguments have begun (some servers
        open a call with a bare fragment of its arguments and give its id and name in the
        next; some stream a name in pieces before the arguments): its block's start says
        its id and name once and for all.
        Arguments sent as an object (some OpenAI-compatible servers do) go as its JSON;
        a fragment that makes them no JSON object goes nowhere (``_ToolCall.take``)."""
        self._tools = True
        fn = frag.get("function") or {}
        index = self._indexes.of(frag)
        call = self._calls.setdefault(index, _ToolCall())
        if not call.shown:  # the id first given, the name its pieces make so far
            call.id, call.name = self._indexes.call_id(index), self._indexes.name(index)
        given = fn.get("arguments")
        if given is not None and not isinstance(given, str):
            given = json.dumps(given)  # an object: some OpenAI-compatible servers send one
        args = call.take(given or "")
        if self._open == f"tool:{index}":
            return [self._json_delta(args)] if args else []
        if call.shown or not self._may_switch():
            return []  # held back (or, for a block already stopped, nowhere to go)
        return self._show_held()

    def _may_switch(self) -> bool:
        open_key = self._open or ""
        # Unless the open call's arguments are not whole yet (and not broken either).
        return not open_key.startswith("tool:") or self._calls[int(open_key[5:])].done

    def _show_held(self, unnamed: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """Open the held-back calls in the order they began, each with its arguments so
        far; one whose arguments are not yet whole stays open and the rest wait, as they
        do behind one not named yet (unless ``unnamed``: other output must follow them;
        such a call goes as it is, "" under an id of the relay's)."""
        events: list[tuple[str, dict[str, Any]]] = []
        for index, call in self._calls.items():
            if call.shown:
                continue
            if not (call.name and call.args) and not unnamed:
                break
            call.shown = True
            call.id = call.id or new_id("toolu_")
            block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            events += self._open_block(f"tool:{index}", block)
            if call.args:
                events.append(self._json_delta(call.args))
            if not self._may_switch():
                break
        return events

    def _show_all(self) -> list[tuple[str, dict[str, Any]]]:
        """Open every held call, in turn: what comes next came after them."""
        events: list[tuple[str, dict[str, Any]]] = []
        while any(not call.shown for call in self._calls.values()):
            events += self._close_block() + self._show_held(unnamed=True)
        return events

    def _json_delta(self, partial: str) -> tuple[str, dict[str, Any]]:
        return self._delta({"type": "input_json_delta", "partial_json": partial})

    def _thinking(self, delta: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """An Anthropic vendor's thinking (the neutral extensions) as thinking blocks: one
        opened by ``thinking_start`` (or by a signature with no text before it, when the
        thinking was omitted), fed its text and closed by its signature; a redacted block
        whole.  Reasoning text from other vendors has no signature to give an Anthropic
        client, and is not shown to one."""
        events: list[tuple[str, dict[str, Any]]] = []
        thinking = {"type": "thinking", "thinking": "", "signature": ""}
        if delta.get("thinking_start"):
            self._thoughts += 1
            events += self._open_block(f"thinking:{self._thoughts}", thinking)
        open_key = self._open or ""
        unsigned = open_key.startswith("thinking:") and not open_key.endswith("+")
        if (text := delta.get("reasoning_content")) and unsigned:
            events.append(self._delta({"type": "thinking_delta", "thinking": text}))
        if sig := delta.get("thinking_signature"):
            if not unsigned:
                self._thoughts += 1
                events += self._open_block(f"thinking:{self._thoughts}", thinking)
            events.append(self._delta({"type": "signature_delta", "signature": sig}))
            self._open = f"{self._open}+"  # signed: more thinking is a new block
        if (data := delta.get("redacted_thinking")) is not None:
            self._thoughts += 1
            block = {"type": "redacted_thinking", "data": data}
            events += self._open_block(f"redacted:{self._thoughts}", block)
        return events

    def finish(self, usage: Usage) -> list[tuple[str, dict[str, Any]]]:
        """The closing events: the open block's stop, message_delta and message_stop."""
        events = self._start() + self._show_all() + self._close_block()
        # The input side is only known at the end here, so message_delta carries it too;
        # Anthropic's SDKs take any usage field present on message_delta.
        stop, sequence = _stop_reason(
            self._finish,
            tools=self._tools,
            refused=self._refused,
            sequence=self._sequence,
            own=self._own_stop,
        )
        delta = {"stop_reason": stop, "stop_sequence": sequence}
        data = {"type": "message_delta", "delta": delta, "usage": _anthropic_usage(usage)}
        events.append(("message_delta", data))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    def _start(self, usage: Any = None) -> list[tuple[str, dict[str, Any]]]:
        if self._started:
            return []
        self._started = True
        opening = {"input_tokens": 0, "output_tokens": 0}
        if isinstance(usage, dict):  # an Anthropic vendor's own counts, as it sent them
            opening |= {k: v for k, v in usage.items() if k in _START_USAGE_FIELDS}
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": opening,
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _open_block(self, key: str, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        # Other output than a call's opens the calls held so far first: they came before.
        events = [] if key.startswith("tool:") else self._show_all()
        if self._open == key:
            return events
        events += self._close_block()
        self._block += 1
        self._open = key
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        events.append(("content_block_start", start))
        if self._block == 0:
            events.append(("ping", {"type": "ping"}))  # where Anthropic sends its ping
        return events

    def _close_block(self) -> list[tuple[str, dict[str, Any]]]:
        if self._open is None:
            return []
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._block})]

    def _delta(self, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        data = {"type": "content_block_delta", "index": self._block, "delta": delta}
        return ("content_block_delta", data)


# --------------------------------------------------------------------------------------
# Vendor side: the neutral request out to Anthropic, Anthropic's answer back in.
# --------------------------------------------------------------------------------------


def openai_request_to_messages(body: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat body as an Anthropic Messages request for vendor model ``model``.

    System (and developer) messages become the top-level ``system``; tool messages
    become ``tool_result`` blocks in a user turn; consecutive turns of one role are
    merged.  Raises ``BadRequest`` for content Anthropic cannot take, and for ``n`` > 1 or
    logprobs: Anthropic answers one choice per request, with no token logprobs.
    """
    openai_only_refused(body)
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    lifted = _lifted_images(body.get("messages") or [])
    for i, message in enumerate(body.get("messages") or []):
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_system_blocks(message.get("content"), f"messages.{i}"))
            continue
        if role == "user":
            turn = {"role": "user", "content": _user_content(message.get("content"), i)}
        elif role == "assistant":
            turn = {"role": "assistant", "content": _assistant_blocks(message, i)}
        elif role == "tool":
            own = message.get("anthropic_result")
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": _with_images(own, lifted, f"messages.{i}.anthropic_result")
                if isinstance(own, list)
                else _tool_result_content(message.get("content"), f"messages.{i}"),
            }
            result |= {k: message[k] for k in EXTENSIONS - {"anthropic_result"} if message.get(k)}
            turn = {"role": "user", "content": [result]}
        else:
            raise BadRequest(f"messages.{i}.role: {role!r} is not supported", param="messages")
        if turn["content"]:
            messages.append(turn)
    messages = _alternating(_with_anthropic_ids(messages))
    if not messages:
        messages, system = _system_as_the_turn(system), []

    given = body.get("max_completion_tokens") or body.get("max_tokens")
    max_tokens = given or DEFAULT_MAX_TOKENS
    tools = [_tool_to_anthropic(t) for t in body.get("tools") or []]
    asked = body.get("tool_choice")
    if isinstance(asked, dict) and asked.get("type") == "allowed_tools":
        # OpenAI's subset of the tools the model may call now: the others left out.
        allowed = allowed_tool_names(asked)
        tools = [t for t in tools if t.get("name") in allowed]
        spec = asked.get("allowed_tools")
        required = isinstance(spec, dict) and spec.get("mode") == "required"
        asked = "required" if required else "auto"
    choice = _tool_choice_to_anthropic(asked, body.get("parallel_tool_calls"))
    choice = choice if tools else None
    thinking = body.get("thinking")
    if answer_tool := _json_answer_tool(body.get("response_format")):
        # JSON mode as a tool the model must answer through (alone, or beside the
        # client's own tools, which it may call instead).
        if _thinks(thinking):
            # Anthropic refuses thinking beside a forced tool: the model is asked (by the
            # tool's description) rather than made to answer through it; tools the client
            # said none of may be called are not offered at all.
            if choice is not None and choice.get("type") == "none":
                tools = []
            choice = _choice_like("auto", choice)
        elif not tools or (choice is not None and choice.get("type") == "none"):
            # No tools of the client's, or none it may call: the JSON answer it is.
            choice = {"type": "tool", "name": JSON_ANSWER_TOOL}
        elif choice is None or choice.get("type") == "auto":
            # A tool call or the JSON answer, never prose first (one at a time still, if
            # the client said so).
            choice = _choice_like("any", choice)
        tools.append(answer_tool)
    by_effort = False
    if not thinking:
        thinking = _effort_thinking(reasoning_effort(body), given, messages, choice)
        by_effort = thinking is not None
        if thinking is not None and not given:
            max_tokens = thinking["budget_tokens"] + DEFAULT_MAX_TOKENS
    elif isinstance(thinking, dict) and thinking.get("type") == "enabled":
        _refuse_unsigned_tool_turn(messages)
    out: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    if system and not any("cache_control" in b for b in system):
        out["system"] = "\n\n".join(b["text"] for b in system)
    elif system:
        out["system"] = system  # blocks, so the cache breakpoints stay where they were
    if body.get("cache_control"):
        out["cache_control"] = body["cache_control"]
    if thinking:
        out["thinking"] = thinking
    if body.get("output_config"):
        out["output_config"] = body["output_config"]
    if managed := body.get("context_management"):
        if isinstance(managed, dict):
            compaction_refused(managed)  # a body may carry this extension itself
        out["context_management"] = managed
    # Anthropic refuses sampling knobs beside thinking (as OpenAI's reasoning models do):
    # thinking the relay turned on for reasoning_effort goes without them.
    if body.get("temperature") is not None and not by_effort:
        # OpenAI allows 0..2, Anthropic 0..1: clamp rather than have the vendor refuse.
        out["temperature"] = min(float(body["temperature"]), 1.0)
    if body.get("top_p") is not None and not by_effort and _top_p_allowed(model, out):
        out["top_p"] = body["top_p"]
    if body.get("top_k") is not None and not by_effort:
        out["top_k"] = body["top_k"]
    stop = body.get("stop")
    stops = [s for s in ([stop] if isinstance(stop, str) else stop or []) if isinstance(s, str)]
    for sequence in stops:
        if sequence and not sequence.strip():
            # Anthropic refuses whitespace-only sequences ("\n" is a common OpenAI stop).
            # Sent without it, the model would run on past every newline (and the answer
            # be cached as the one to that stop): an OpenAI-format candidate serves it.
            # Said to the client if none can: an Anthropic client's body says
            # ``stop_sequences``, and its error body carries the message alone, no param.
            raise VendorUnsupported(
                f"stop: this model takes no stop sequence of whitespace alone ({sequence!r}), "
                "in `stop` or `stop_sequences`",
                param="stop",
            )
    if stops := [s for s in stops if s]:
        out["stop_sequences"] = stops
    # The end user, as OpenAI's deprecated ``user`` or its successor ``safety_identifier``
    # (the same abuse attribution that Anthropic's ``metadata.user_id`` is for).
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if tools:
        out["tools"] = tools
    if choice:
        out["tool_choice"] = choice
    return out


def _system_as_the_turn(system: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The one user turn of a request with no turn but its system text (a chat of a
    system message alone, Responses' ``instructions`` with no input): Anthropic wants at
    least one turn, none empty, while OpenAI answers the system text as the request.  So
    the text is asked as the user's (and is no system prompt as well: said twice, it
    would weigh double); cache breakpoints stay on its blocks.  With no text at all (a lone
    empty user message) there is nothing to ask Claude, but an OpenAI candidate, which
    takes it, may still serve the request."""
    blocks = [b for b in system if b["text"].strip()]  # Anthropic refuses blank text
    if not blocks:
        raise VendorUnsupported(
            "messages: this model needs a message with text in it", param="messages"
        )
    if any("cache_control" in b for b in blocks):
        return [{"role": "user", "content": blocks}]
    return [{"role": "user", "content": "\n\n".join(b["text"] for b in blocks)}]


def _json_answer_tool(response_format: Any) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` (JSON object or schema) as the tool an Anthropic
    model answers through, its input the JSON answer; None for plain text."""
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        schema: Any = {"type": "object"}
        about = "Give your answer as a JSON object."
    elif response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest(
                "response_format.json_schema.schema: an object is required",
                param="response_format",
            )
        about = spec.get("description") or "Give your answer as JSON matching this schema."
    else:
        return None
    return {"name": JSON_ANSWER_TOOL, "description": about, "input_schema": schema}


def _tool_result_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A tool message's content as a tool_result's: text, or text blocks when a part
    carries a cache breakpoint (kept where the client set it)."""
    texts = _texts(content, where)
    if isinstance(content, list) and any(
        isinstance(p, dict) and p.get("cache_control") for p in content
    ):
        return [_text_part({**p, "text": t}) for t, p in zip(texts, content, strict=True)]
    return "\n".join(texts)


def _thinking_for(effort: str | None, max_tokens: int | None) -> dict[str, Any] | None:
    """OpenAI's ``reasoning_effort`` as Anthropic's extended thinking: a thinking budget
    by effort, inside the ``max_tokens`` the client gave (which, as OpenAI's
    ``max_completion_tokens``, counts the reasoning too; none given, the caller makes room
    for the answer on top).  ``none`` and ``minimal`` think not at all, and neither does a
    request whose ``max_tokens`` leaves no room for Anthropic's smallest budget."""
    if effort is None:
        return None
    budget = THINKING_BUDGETS[effort]
    if max_tokens is not None:
        budget = min(budget, max_tokens - 1)
    if budget < MIN_THINKING_BUDGET:
        return None
    return {"type": "enabled", "budget_tokens": budget}


def _effort_thinking(
    effort: str | None, given: int | None, messages: list[dict[str, Any]], choice: Any
) -> dict[str, Any] | None:
    """The thinking ``reasoning_effort`` asks for, unless Anthropic would refuse it here:
    beside a forced tool choice, or in a tool loop whose last call came back without its
    signed thinking (a Responses client drops it)."""
    thinking = _thinking_for(effort, given)
    if thinking is None or _unsigned_tool_turn(messages):
        return None
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        return None
    return thinking


def _refuse_unsigned_tool_turn(messages: list[dict[str, Any]]) -> None:
    """Refuse the client's own (manual) thinking in a tool loop whose last call came
    without its signed thinking block: another vendor kind answered it (a fallback, a
    mixed alias), and Anthropic would refuse the request, final, for a history the relay's
    routing made.  A candidate of that kind may serve it (``VendorUnsupported``); with none
    left, the client hears this.  Adaptive thinking is left be: Claude may skip thinking
    there, and a tool call of its own without a thinking block is no fault."""
    if _unsigned_tool_turn(messages):
        raise VendorUnsupported(
            "messages: the last tool call came without the signed thinking block this "
            "model needs while thinking is on",
            param="thinking",
        )


def _thinks(thinking: Any) -> bool:
    """Whether a ``thinking`` config turns thinking on."""
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def _unsigned_tool_turn(messages: list[dict[str, Any]]) -> bool:
    """Whether the last assistant turn calls a tool without the thinking block Anthropic
    wants first in it while thinking is on."""
    last = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
    blocks = last["content"] if last and isinstance(last["content"], list) else []
    calls = any(b.get("type") == "tool_use" for b in blocks)
    return calls and blocks[0].get("type") not in ("thinking", "redacted_thinking")


def _system_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, list):
        _texts(content, where)  # the same validation: text parts only
        return [_text_part(p) for p in content]
    return [{"type": "text", "text": t} for t in _texts(content, where)]


def _texts(content: Any, where: str) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content: must be a string or a list of parts")
    texts = []
    for part in content:
        # An assistant's refusal part (OpenAI allows them in history) is text too.
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("text", "refusal"):
            raise BadRequest(f"{where}.content: only text parts are allowed here")
        texts.append(str(part.get(kind, "")))
    return texts


def _user_content(content: Any, i: int) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"messages.{i}.content: must be a string or a list of parts")
    blocks = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise BadRequest(f"messages.{i}.content.{j}: a content part must be an object")
        kind = part.get("type")
        if part.get("lifted"):
            continue  # the tool result it came from carries it, where the client put it
        if isinstance(part.get("anthropic_document"), dict):
            blocks.append(_document_back(part, f"messages.{i}.content.{j}"))
        elif kind == "text":
            if part.get("text"):  # Anthropic refuses empty text blocks
                blocks.append(_text_part(part))
        elif kind == "image_url":
            image = _image_to_anthropic(part, f"messages.{i}.content.{j}")
            if part.get("cache_control"):
                image["cache_control"] = part["cache_control"]
            blocks.append(image)
        elif kind == "file":
            document = _document_to_anthropic(part, f"messages.{i}.content.{j}")
            if part.get("cache_control"):
                document["cache_control"] = part["cache_control"]
            blocks.append(document)
        elif kind == "input_audio":
            # Audio in has no Anthropic block, but an OpenAI candidate may hear it: that
            # one's refusal, so the next candidate is tried (a 400 only if none can).
            raise VendorUnsupported(
                f"messages.{i}.content.{j}: this model does not take audio input",
                param="messages",
            )
        else:
            raise BadRequest(f"messages.{i}.content.{j}: part type {kind!r} is not supported")
    return blocks


def _document_to_anthropic(part: dict[str, Any], where: str) -> dict[str, Any]:
    """OpenAI's file part (its data inline) as a document block; a ``file_id`` names a
    file only OpenAI holds, which an OpenAI candidate may still read (``VendorUnsupported``)."""
    file = part.get("file")
    data = file.get("file_data") if isinstance(file, dict) else None
    header, _, payload = data.partition(",") if isinstance(data, str) else ("", "", "")
    if not (header.startswith("data:") and header.endswith(";base64") and payload):
        refusal = f"{where}.file: this model needs the file inline, as a base64 data URL"
        if isinstance(file, dict) and file.get("file_id"):
            raise VendorUnsupported(refusal)
        raise BadRequest(refusal)
    media = header.removeprefix("data:").removesuffix(";base64") or "application/pdf"
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": media, "data": payload},
    }
    if isinstance(file, dict) and file.get("filename"):
        block["title"] = file["filename"]
    return block


def _image_to_anthropic(part: dict[str, Any], where: str) -> dict[str, Any]:
    image_url = part.get("image_url")
    if not isinstance(image_url, dict) or not isinstance(image_url.get("url"), str):
        raise BadRequest(f"{where}.image_url: must be an object with a `url`")
    url = image_url["url"]
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[len("data:") :].split(";")[0].lower() or "image/png"
        # OpenAI takes image/jpg, a common misspelling; Anthropic refuses all but jpeg.
        media_type = "image/jpeg" if media_type == "image/jpg" else media_type
        if ";base64" not in header or not data:
            raise BadRequest(f"{where}: an image data URL must be base64-encoded")
        source = {"type": "base64", "media_type": media_type, "data": data}
        return {"type": "image", "source": source}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise BadRequest(f"{where}: an image needs a data: or http(s) URL")


def _assistant_blocks(message: dict[str, Any], i: int) -> list[dict[str, Any]]:
    if ordered := _anthropic_content(message):
        return ordered  # an Anthropic turn with thinking, exactly as it was
    blocks: list[dict[str, Any]] = list(_thinking_blocks(message))
    blocks += [
        {"type": "text", "text": t} for t in _texts(message.get("content"), f"messages.{i}") if t
    ]
    blocks += [tool_use_block(call) for call in message.get("tool_calls") or []]
    return blocks


# Where an image sat in a tool result: its data rides in the image part lifted out of it.
LIFTED = {"type": "lifted_image"}


def _lifted_images(messages: list[Any]) -> deque[dict[str, Any]]:
    """The images lifted out of tool results, as Anthropic blocks, in their order."""
    images: deque[dict[str, Any]] = deque()
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else []):
            if isinstance(part, dict) and part.get("lifted"):
                image = _image_to_anthropic(part, f"messages.{i}.content.{j}")
                if part.get("cache_control"):
                    image["cache_control"] = part["cache_control"]
                images.append(image)
    return images


# The blocks a tool result may hold, as the Messages ingress lets them in.
_RESULT_BLOCKS = frozenset({"text", "image", "document", "search_result"})


def _with_images(blocks: list[Any], lifted: deque[dict[str, Any]], where: str) -> list[Any]:
    """A tool result's own blocks, each lifted image back where it was; a block of
    another kind is refused (a body may carry ``anthropic_result`` itself, and no block
    reaches the vendor past the checks the Messages ingress makes)."""
    out = []
    for block in blocks:
        if block != LIFTED:
            if not isinstance(block, dict) or block.get("type") not in _RESULT_BLOCKS:
                kind = block.get("type") if isinstance(block, dict) else type(block).__name__
                raise BadRequest(f"{where}: a tool result block of type {kind!r} is not supported")
            out.append(block)
        elif lifted:  # (a body not made by this module may hold fewer: those are gone)
            out.append(lifted.popleft())
    return out


def _alternating(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic wants user and assistant to alternate: a run of one role (tool results
    followed by a user remark, say) becomes one turn with all their blocks, in order
    (built once per run: a long run costs its length, not its square)."""
    out: list[dict[str, Any]] = []
    for role, run in groupby(turns, key=lambda turn: turn["role"]):
        first, *rest = run
        if not rest:
            out.append(first)
            continue
        blocks = [block for turn in (first, *rest) for block in _blocks(turn["content"])]
        out.append({"role": role, "content": blocks})
    return out


_TOOL_ID = re.compile(r"[A-Za-z0-9_-]+")  # what Anthropic takes as a tool_use id


def anthropic_tool_id(given: str) -> str:
    """A tool call's id as Anthropic takes it (``^[a-zA-Z0-9_-]+$``): as it is when it
    does, else its other characters made ``_`` and a digest of the whole id added, so two
    ids never become one.  OpenAI-format servers promise no shape (Kimi K2's are
    ``functions.Bash:0``), and one of them may have made a call an Anthropic vendor now
    sees in the history.  The same id always maps the same way: a call and its result
    still pair, turn after turn (and a cached prompt prefix stays the same)."""
    if _TOOL_ID.fullmatch(given):
        return given
    digest = hashlib.sha256(given.encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', given)[:64]}_{digest}"


def _with_anthropic_ids(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The turns with every ``tool_use`` id and ``tool_result`` ``tool_use_id`` as
    Anthropic takes them (``anthropic_tool_id``).  On the way to Anthropic only: the
    client keeps its ids (its answer's calls are Anthropic's own, which need no change),
    and a vendor of another kind gets them as they were.  A call that came with no id at
    all (some servers give none) gets one of the relay's, from where it stands, and the
    results with no id that follow take those in order, as the client sent them."""
    out: list[dict[str, Any]] = []
    unnamed: deque[str] = deque()  # the last assistant turn's calls that had no id
    for i, turn in enumerate(turns):
        content = turn["content"]
        if not isinstance(content, list):
            out.append(turn)
            continue
        if turn["role"] == "assistant":
            unnamed = deque()
        blocks = []
        for j, block in enumerate(content):
            kind = block.get("type")
            key = {"tool_use": "id", "tool_result": "tool_use_id"}.get(kind)
            if key is not None:
                given = block.get(key)
                if given and isinstance(given, str):
                    named = anthropic_tool_id(given)
                elif given:  # a number, say: as its text
                    named = anthropic_tool_id(str(given))
                elif kind == "tool_use":
                    named = f"toolu_relay_{i}_{j}"
                    unnamed.append(named)
                else:
                    named = unnamed.popleft() if unnamed else f"toolu_relay_{i}_{j}"
                block = block if named == given else {**block, key: named}
            blocks.append(block)
        out.append({**turn, "content": blocks})
    return out


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _tool_to_anthropic(tool: dict[str, Any]) -> dict[str, Any]:
    if isinstance(own := tool.get("anthropic_tool"), dict):
        # One of Anthropic's client-run tools, as /v1/messages carried it.  Any other type
        # (a server tool: web search, code execution, billed per use beside the tokens)
        # is refused, whichever route it came by: a body may carry this field itself.
        kind = own.get("type")
        if not (isinstance(kind, str) and kind.startswith(CLIENT_TOOLS)):
            raise BadRequest(f"tools: tool type {kind!r} is not supported", param="tools")
        return own
    fn = tool.get("function") or {}
    out: dict[str, Any] = {"name": fn.get("name", "")}
    if fn.get("description"):
        out["description"] = fn["description"]
    out["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
    if fn.get("strict") is True:
        # Strict tool use; false is the default on both sides, and goes unsaid.
        out["strict"] = True
    own = tool.get("anthropic_tool_fields")
    if isinstance(own, dict):
        # An Anthropic client's own tool fields, as it sent them: never one the neutral
        # tool says (a body may carry this field itself; a type would make a server tool).
        out |= {k: v for k, v in own.items() if k in _TOOL_EXTRAS}
    if tool.get("cache_control"):
        out["cache_control"] = tool["cache_control"]
    return out


def _choice_like(kind: str, choice: dict[str, Any] | None) -> dict[str, Any]:
    """A tool choice of ``kind`` that keeps ``choice``'s one-call-at-a-time, if it said so."""
    kept = {k: v for k, v in (choice or {}).items() if k == "disable_parallel_tool_use"}
    return {"type": kind} | kept


def _tool_choice_to_anthropic(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any]
    if isinstance(choice, dict) and choice_name(choice):
        out = {"type": "tool", "name": choice_name(choice)}
    elif choice in (None, "auto") or isinstance(choice, dict):  # a choice it cannot say
        out = {"type": "auto"}
    else:
        out = {"type": {"required": "any", "none": "none"}.get(choice, "auto")}
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    # Anthropic's default is auto; only send a choice when it says something.
    return None if out == {"type": "auto"} else out


def _usage_from_anthropic(usage: dict[str, Any]) -> Usage:
    read = int(usage.get("cache_read_input_tokens") or 0)
    write = int(usage.get("cache_creation_input_tokens") or 0)
    by_ttl = usage.get("cache_creation")
    by_ttl = by_ttl if isinstance(by_ttl, dict) else {}
    return Usage(
        input_tokens=int(usage.get("input_tokens") or 0) + read + write,
        output_tokens=int(usage.get("output_tokens") or 0),
        cache_read_tokens=read,
        cache_write_tokens=write,
        cache_write_1h_tokens=min(write, int(by_ttl.get("ephemeral_1h_input_tokens") or 0)),
    )


def messages_response_to_openai(body: dict[str, Any]) -> tuple[dict[str, Any], Usage]:
    """An Anthropic Message as a ``chat.completion`` body, with its ``Usage``."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking: list[dict[str, Any]] = []
    for block in body.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use" and block.get("name") == JSON_ANSWER_TOOL:
            texts = [json.dumps(block.get("input", {}))]  # the JSON answer is the answer
        elif block.get("type") == "tool_use":
            fn = {"name": block.get("name", ""), "arguments": json.dumps(block.get("input", {}))}
            calls.append({"id": block.get("id", ""), "type": "function", "function": fn})
        elif block.get("type") in ("thinking", "redacted_thinking"):
            thinking.append(block)
        # server-tool blocks have no OpenAI twin and are left out
    # As OpenAI does: content is null for a pure tool-call answer, "" for an empty one.
    text = "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        # reasoning_content for OpenAI-format clients (as DeepSeek and LiteLLM send it);
        # the blocks themselves, signatures included, for Anthropic clients.
        message["reasoning_content"] = "".join(b.get("thinking", "") for b in thinking)
        message["thinking_blocks"] = thinking
    # The JSON answer tool's call is the answer's text, for them as for everyone.
    ordered = [
        _json_answer_text(b)
        for b in _without_preamble(body.get("content") or [])
        if b.get("type") in _ANTHROPIC_BLOCKS
    ]
    if thinking or _text_apart(ordered) or any(b.get("citations") for b in ordered):
        # ...and an Anthropic client gets the blocks in their order: text that cites a
        # document keeps its citations, block by block, and text blocks stay apart and
        # where they were (``_text_apart``: OpenAI's content joins them, before the calls).
        message["anthropic_content"] = ordered
    usage = _usage_from_anthropic(body.get("usage") or {})
    finish = _FINISH_REASON.get(body.get("stop_reason") or "end_turn", "stop")
    if finish == "tool_calls" and not calls:
        finish = "stop"  # it called only the JSON answer tool: a plain answer
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    if body.get("stop_reason") == "stop_sequence" and body.get("stop_sequence"):
        choice["stop_sequence"] = body["stop_sequence"]  # for an Anthropic client
    if body.get("stop_reason") in _OWN_STOP_REASONS:
        choice[OWN_STOP_REASON] = body["stop_reason"]  # for an Anthropic client
    answer = {
        "id": body.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [choice],
        "usage": usage.to_openai(),
    }
    return answer, usage


def offers_json_answer(request: dict[str, Any]) -> bool:
    """Whether a Messages request (``openai_request_to_messages``'s) offers the JSON
    answer tool: its answer is JSON mode's, for ``MessageEventsToChunks``."""
    tools = request.get("tools") or []
    return any(isinstance(t, dict) and t.get("name") == JSON_ANSWER_TOOL for t in tools)


def _says_text(item: dict[str, Any] | Usage) -> bool:
    """Whether a chunk carries answer text (or a citation of it)."""
    if not isinstance(item, dict):
        return False
    delta = (item.get("choices") or [{}])[0].get("delta") or {}
    return bool(delta.get("content") or delta.get("citation"))


# The input side of Anthropic's usage, which message_start says and message_delta may
# say again.
_INPUT_COUNTS = frozenset(
    {"input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"}
)


def _cumulative_usage(
    earlier: dict[str, Any], later: dict[str, Any], input_side: Collection[str] = _INPUT_COUNTS
) -> dict[str, Any]:
    """message_delta's usage over what message_start said.  Anthropic's message_delta
    counts are cumulative, so a count present there replaces the earlier one (a server
    may give an estimate first, the true count last), and one absent or null keeps it.
    An input or cache count of 0 after one that was not is taken as absent: some
    Anthropic-compatible servers say the input side again as zeros, and a cumulative
    count cannot drop to 0 (the ledger would bill no input).  The cache writes by TTL
    (``cache_creation``) likewise, count by count."""
    merged = dict(earlier)
    for key, value in later.items():
        if value is None or (key in input_side and value == 0 and earlier.get(key)):
            continue
        if key == "cache_creation" and isinstance(value, dict):
            then = earlier.get(key)
            if isinstance(then, dict):
                value = _cumulative_usage(then, value, input_side=value.keys())
        merged[key] = value
    return merged


class MessageEventsToChunks:
    """Turns Anthropic stream events into OpenAI chunks, ending with one ``Usage``.

    ``feed`` takes each event name and its parsed data.  Thinking travels as extensions of
    the delta: ``thinking_start`` opens a block, its text comes as ``reasoning_content``
    (as DeepSeek and LiteLLM send reasoning, so OpenAI clients read it too), and its
    ``thinking_signature`` closes it; a redacted block is one ``redacted_thinking``.
    A text block's citations travel as ``citation`` deltas, and once the answer cites,
    its text deltas name their block (``text_block``).  Unknown events and deltas are
    skipped, as Anthropic asks clients to do.
    ``error`` events are the caller's to raise: this class only translates.

    ``json_answer``: the request offered the JSON answer tool (``offers_json_answer``).
    With thinking on the tool is offered, not forced, and the model may write a sentence
    before calling it; the whole answer is the tool's JSON alone, so text is held back
    until the tool is called (then dropped) or is not (then sent, in its place).
    """

    def __init__(self, created: int | None = None, *, json_answer: bool = False) -> None:
        self.created = int(time.time()) if created is None else created
        self._json_answer = json_answer  # until its tool is called: text may be preamble
        self._held: list[dict[str, Any]] = []  # chunks from the first text held on
        self._id = ""
        self._model = ""
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self._quiet: set[int] = set()  # tool blocks no argument JSON came for yet
        self._answers: set[int] = set()  # JSON answer tool blocks: their input is content
        self._finish = "stop"
        self._sequence: str | None = None
        self._own_stop: str | None = None  # a stop reason finish_reason cannot say
        self._usage: dict[str, Any] = {}
        self._cited = False  # text blocks cite documents: each says which block it is

    def feed(self, event: str, data: dict[str, Any]) -> list[dict[str, Any] | Usage]:
        """The chunks (and, at ``message_stop``, the final ``Usage``) one event yields."""
        out = self._translate(event, data)
        return self._sift(event, data, out) if self._json_answer else out

    def _sift(
        self, event: str, data: dict[str, Any], out: list[dict[str, Any] | Usage]
    ) -> list[dict[str, Any] | Usage]:
        """JSON mode: from the first text on, chunks are held (thinking too, so that what
        is sent keeps its order) until a tool is called or the message ends.  The JSON
        answer tool drops the held text, as the whole answer has none; a tool of the
        client's, or the end, sends it all."""
        kind = data.get("type", event)
        block = data.get("content_block") or {}
        if (kind == "content_block_start" and block.get("type") == "tool_use") or (
            kind == "message_stop"
        ):
            held, self._held = self._held, []
            if block.get("name") == JSON_ANSWER_TOOL:
                self._json_answer = False  # answered: what follows is the answer
                held = [c for c in held if not _says_text(c)]
            return [*held, *out]
        if self._held or any(_says_text(c) for c in out):
            self._held += [c for c in out if isinstance(c, dict)]
            return [c for c in out if isinstance(c, Usage)]
        return out

    def _translate(self, event: str, data: dict[str, Any]) -> list[dict[str, Any] | Usage]:
        kind = data.get("type", event)
        if kind == "message_start":
            message = data.get("message") or {}
            self._id = message.get("id", "")
            self._model = message.get("model", "")
            self._usage = dict(message.get("usage") or {})
            opening = self._chunk({"role": "assistant", "content": ""})
            if self._usage:  # for an Anthropic client's message_start (see START_USAGE)
                opening[START_USAGE] = dict(self._usage)
            return [opening]
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            index = data.get("index", 0)
            # Anthropic starts a tool block with ``input: {}`` and streams the JSON after;
            # a compatible server may give the whole input here instead, and nothing
            # after: it is the first fragment, or the call would end with ``{}``.
            given = block.get("input")
            whole = json.dumps(given) if isinstance(given, dict) and given else ""
            if block.get("type") == "tool_use" and block.get("name") == JSON_ANSWER_TOOL:
                self._answers.add(index)  # its JSON streams as the content
                if not whole:
                    self._quiet.add(index)
                    return []
                return [self._chunk({"content": whole})]
            if block.get("type") == "tool_use":
                n = self._tools[index] = len(self._tools)
                fn = {"name": block.get("name", ""), "arguments": ""}
                call = {"index": n, "id": block.get("id", ""), "type": "function", "function": fn}
                named: list[dict[str, Any] | Usage] = [self._chunk({"tool_calls": [call]})]
                if not whole:
                    self._quiet.add(index)
                    return named
                given_args = {"index": n, "function": {"arguments": whole}}
                return [*named, self._chunk({"tool_calls": [given_args]})]
            if block.get("type") == "text":
                self._cited = self._cited or "citations" in block
                cited = block.get("citations") or []
                chunks: list[dict[str, Any] | Usage] = [
                    self._text({"citation": c}, data) for c in cited
                ]
                if block.get("text"):
                    chunks.append(self._text({"content": block["text"]}, data))
                return chunks
            if block.get("type") == "thinking":
                start: dict[str, Any] = {"thinking_start": True}
                if block.get("thinking"):
                    start["reasoning_content"] = block["thinking"]
                if block.get("signature"):  # given whole at the start, as the text may be
                    start["thinking_signature"] = block["signature"]
                return [self._chunk(start)]
            if block.get("type") == "redacted_thinking":
                return [self._chunk({"redacted_thinking": block.get("data", "")})]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [self._text({"content": delta["text"]}, data)]
            if delta.get("type") == "citations_delta" and delta.get("citation"):
                self._cited = True
                return [self._text({"citation": delta["citation"]}, data)]
            if delta.get("type") == "thinking_delta" and delta.get("thinking"):
                return [self._chunk({"reasoning_content": delta["thinking"]})]
            if delta.get("type") == "signature_delta" and delta.get("signature"):
                # Ends a thinking block: the extension an Anthropic client needs back.
                return [self._chunk({"thinking_signature": delta["signature"]})]
            if delta.get("type") == "input_json_delta" and data.get("index", 0) in self._answers:
                if not delta.get("partial_json"):
                    return []
                self._quiet.discard(data.get("index", 0))
                return [self._chunk({"content": delta["partial_json"]})]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                if (index := data.get("index", 0)) not in self._tools:
                    return []  # a block skipped at its start (a server tool's): no call's
                self._quiet.discard(index)
                call = {
                    "index": self._tools[index],
                    "function": {"arguments": delta["partial_json"]},
                }
                return [self._chunk({"tool_calls": [call]})]
            return []
        if kind == "content_block_stop" and data.get("index", 0) in self._quiet:
            # A tool called with no input streams no JSON at all (or one empty delta):
            # OpenAI clients parse the arguments, and "" is not JSON.
            self._quiet.discard(data.get("index", 0))
            if data.get("index", 0) in self._answers:
                return [self._chunk({"content": "{}"})]
            n = self._tools[data.get("index", 0)]
            return [self._chunk({"tool_calls": [{"index": n, "function": {"arguments": "{}"}}]})]
        if kind == "message_delta":
            delta = data.get("delta") or {}
            reason = delta.get("stop_reason")
            if reason:
                self._finish = _FINISH_REASON.get(reason, "stop")
                if self._finish == "tool_calls" and not self._tools:
                    self._finish = "stop"  # only the JSON answer tool was called
            if reason == "stop_sequence" and delta.get("stop_sequence"):
                self._sequence = delta["stop_sequence"]
            if reason in _OWN_STOP_REASONS:
                self._own_stop = reason
            self._usage = _cumulative_usage(self._usage, data.get("usage") or {})
            return []
        if kind == "message_stop":
            last = self._chunk({}, self._finish)
            if self._sequence:
                last["choices"][0]["stop_sequence"] = self._sequence  # for an Anthropic client
            if self._own_stop:
                last["choices"][0][OWN_STOP_REASON] = self._own_stop  # for one too
            return [last, _usage_from_anthropic(self._usage)]
        return []

    def _text(self, delta: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """A text or citation delta; once the answer cites, each names its block (the
        extension ``text_block``), so every cited span stays a block of its own."""
        if self._cited:
            delta["text_block"] = data.get("index", 0)
        return self._chunk(delta)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
