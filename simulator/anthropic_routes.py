"""Anthropic Messages wire format: messages, SSE events, token counting, prompt-cache usage,
and the 400s Anthropic answers a request it refuses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from simulator.faults import BadRequest, Sim, json_response, read_json
from simulator.text import (
    Answer,
    Call,
    Prompt,
    compose,
    digest,
    json_pieces,
    new_id,
    text_tokens,
)

router = APIRouter()

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
# The body fields /v1/messages/count_tokens takes (its own and its beta's documented ones).
COUNT_TOKENS_FIELDS = frozenset(
    (
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "cache_control",
        "output_config",
        "output_format",
        "context_management",
        "mcp_servers",
        "speed",
    )
)
# The body fields /v1/messages takes (its own, and its betas' documented ones: the beta is
# asked for in a header, which the simulator does not demand); Anthropic refuses any other
# as an extra input.  Generous on purpose: it is the unknown field that is refused.
MESSAGES_FIELDS = COUNT_TOKENS_FIELDS | frozenset(
    (
        "max_tokens",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_k",
        "top_p",
        "service_tier",
        "container",
        "inference_geo",
    )
)
# The tool-use system prompt Anthropic adds when tools are offered, in input tokens (its
# "Tool use system prompt token count" for Claude 4 models): by whether the tool choice
# leaves the call to the model or forces one.
TOOL_SYSTEM_TOKENS = {"auto": 346, "forced": 313}
_THINKING_DOCS = (
    "Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/"
    "extended-thinking#important-considerations-when-using-extended-thinking"
)
_FAULT_MESSAGES = {
    "500": "Internal server error",
    "429": "Number of requests has exceeded your rate limit",
    "overloaded": "Overloaded",
}


def error(status: int, message: str) -> Response:
    """An Anthropic error body with the type matching the status; 429s carry ``Retry-After``."""
    request_id = new_id("req_")
    body = {
        "type": "error",
        "error": {"type": _STATUS_TYPES.get(status, "api_error"), "message": message},
        "request_id": request_id,
    }
    headers = {"request-id": request_id}
    if status == 429:
        headers["retry-after"] = "1"
    return json_response(body, status, headers)


def error_object(status: int, message: str) -> dict[str, Any]:
    """The ``{"type": "error", "error": {...}}`` body, for batch results."""
    return {
        "type": "error",
        "error": {"type": _STATUS_TYPES.get(status, "api_error"), "message": message},
    }


def check_headers(request: Request) -> Response | None:
    """Auth by ``x-api-key`` and the mandatory ``anthropic-version`` header."""
    sim: Sim = request.app.state.sim
    if not sim.authorized(request.headers.get("x-api-key")):
        return error(401, "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        return error(400, "anthropic-version: header is required")
    return None


def _block_text(block: Any) -> str:
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_use":
        return str(block.get("name", "")) + orjson.dumps(block.get("input", {})).decode()
    if kind == "tool_result":
        return _content_text(block.get("content"))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_block_text(b) for b in content)
    return ""


def _blocks(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content if isinstance(content, list) else []


def _tool_choice(choice: Any, names: list[str]) -> str:
    """The Prompt's tool choice, after Anthropic's 400s: a type it does not know, a forced
    tool (``tool``, or ``any``) with no tools offered, or a named tool not among them.
    The relay rewrites tool choices between formats: a garbled or dropped name must fail
    here as it would at Anthropic, not get a call of some other tool."""
    if choice is None:
        return "auto"
    kind = choice.get("type")
    if kind not in ("auto", "any", "tool", "none"):
        raise BadRequest(
            f"tool_choice: Input tag {kind!r} found using 'type' does not match any of the "
            "expected tags: 'auto', 'any', 'tool', 'none'"
        )
    if kind in ("any", "tool") and not names:
        raise BadRequest(
            f"tool_choice: tool_choice of type '{kind}' may only be specified while providing tools"
        )
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise BadRequest("tool_choice.tool.name: Field required")
        if name not in names:
            raise BadRequest(f"tool_choice.name: Tool '{name}' not found in tools")
        return name
    return {"any": "required", "none": "none"}.get(kind, "auto")


def _check_roles(messages: list[Any]) -> None:
    """Anthropic's 400 for a turn of a role it does not take: the system prompt is the
    top-level ``system`` (never a ``system`` turn), a tool's result a ``tool_result``
    block in a user turn (never a ``tool`` turn)."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest("messages: each message must be an object")
        if m.get("role") not in ("user", "assistant"):
            raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")


def _check_types(body: dict[str, Any]) -> None:
    """Anthropic's 400 for a field of the wrong JSON type (its messages read as pydantic's)."""
    wanted = {
        "messages": (list, "a valid list"),
        "tools": (list, "a valid list"),
        "tool_choice": (dict, "a valid dictionary"),
        "thinking": (dict, "a valid dictionary"),
        "metadata": (dict, "a valid dictionary"),
        "stop_sequences": (list, "a valid list"),
        "stream": (bool, "a valid boolean"),
        "system": (str | list, "a valid string or list"),
    }
    for field, (kind, what) in wanted.items():
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise BadRequest(f"{field}: Input should be {what}")
    for i, stop in enumerate(body.get("stop_sequences") or []):
        if not isinstance(stop, str):
            raise BadRequest(f"stop_sequences.{i}: Input should be a valid string")
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools.{i}: Input should be a valid dictionary")
        schema = tool.get("input_schema")
        if schema is not None and not isinstance(schema, dict):
            raise BadRequest(f"tools.{i}.input_schema: Input should be a valid dictionary")


def to_prompt(body: dict[str, Any]) -> tuple[Prompt, list[str]]:
    """The Prompt, plus the text (system, then messages) up to each ``cache_control``
    breakpoint in it, in order (``_breakpoints`` puts the tools' own before them)."""
    _check_types(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: at least one message is required")
    _check_roles(messages)
    _check_tool_pairs(messages)
    texts: list[str] = []
    marks: list[str] = []
    # The system prompt comes first in Anthropic's cache order (after tools), then messages.
    turns: list[Any] = [{"role": "system", "content": body["system"]}] if body.get("system") else []
    last_user, result = "", None
    for m in [*turns, *messages]:
        parts: list[str] = []
        for block in _blocks(m.get("content")):
            parts.append(_block_text(block))
            if isinstance(block, dict) and block.get("cache_control"):
                marks.append("\n".join([*texts, "\n".join(parts)]))
        texts.append("\n".join(parts))
        if m.get("role") == "user":
            blocks = [b for b in _blocks(m.get("content")) if isinstance(b, dict)]
            results = [_block_text(b) for b in blocks if b.get("type") == "tool_result"]
            last_user = "\n".join(_block_text(b) for b in blocks if b.get("type") == "text")
            result = " ".join(results) if results else None
    if messages[-1].get("role") != "user":
        result = None
    if body.get("cache_control"):  # automatic caching: the breakpoint is the last block
        marks.append("\n".join(texts))
    tools = [
        (str(t["name"]), t.get("input_schema") or {})
        for t in body.get("tools") or []
        if isinstance(t, dict) and t.get("name")
    ]
    asked = body.get("tool_choice")
    choice = _tool_choice(asked, [name for name, _ in tools])
    parallel = not (isinstance(asked, dict) and asked.get("disable_parallel_tool_use"))
    prompt = Prompt(texts, last_user, result, tools, choice, parallel, _tool_tokens(body, choice))
    return prompt, marks


_TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def _tool_ids(message: dict[str, Any], kind: str) -> list[tuple[int, Any]]:
    """(block index, id) of a turn's ``tool_use`` blocks' ids or ``tool_result`` blocks'
    ``tool_use_id``s."""
    key = "id" if kind == "tool_use" else "tool_use_id"
    return [
        (j, b.get(key))
        for j, b in enumerate(_blocks(message.get("content")))
        if isinstance(b, dict) and b.get("type") == kind
    ]


def _check_tool_pairs(messages: list[dict[str, Any]]) -> None:
    """Anthropic's 400s for tool turns that do not pair up: a ``tool_use`` id outside its
    pattern, a ``tool_use`` with no ``tool_result`` for it in the next turn, and a
    ``tool_result`` for no ``tool_use`` of the turn before.  (An assistant turn's calls
    that end the conversation are a prefill, which nothing answers yet.)"""
    for i, m in enumerate(messages):
        if m.get("role") == "assistant":
            uses = _tool_ids(m, "tool_use")
            for j, use in uses:
                if not isinstance(use, str) or not _TOOL_USE_ID.fullmatch(use):
                    raise BadRequest(
                        f"messages.{i}.content.{j}.tool_use.id: String should match pattern "
                        "'^[a-zA-Z0-9_-]+$'"
                    )
            if uses and i + 1 < len(messages):
                answered = {r for _, r in _tool_ids(messages[i + 1], "tool_result")}
                if missing := [u for _, u in uses if u not in answered]:
                    raise BadRequest(
                        f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                        f"immediately after: {', '.join(missing)}. Each `tool_use` block must "
                        "have a corresponding `tool_result` block in the next message."
                    )
        elif m.get("role") == "user":
            before = messages[i - 1] if i else {}
            used = {u for _, u in _tool_ids(before, "tool_use")}
            for j, result in _tool_ids(m, "tool_result"):
                if result not in used:
                    raise BadRequest(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {result}. Each `tool_result` block must have "
                        "a corresponding `tool_use` block in the previous message."
                    )


def _tool_tokens(body: dict[str, Any], choice: str) -> int:
    """Input tokens the tools cost: their definitions (as JSON) and the tool-use system
    prompt Anthropic adds for them (``TOOL_SYSTEM_TOKENS``)."""
    if not body.get("tools"):
        return 0
    system = TOOL_SYSTEM_TOKENS["auto" if choice in ("auto", "none") else "forced"]
    return text_tokens(orjson.dumps(body["tools"]).decode()) + system


def _one_hour(body: dict[str, Any]) -> bool:
    """Whether a cache breakpoint asks for the one-hour cache (``ttl: "1h"``); the
    simulator writes the whole prefix at that lifetime then."""
    blocks = [body, *(body.get("tools") or [])]
    system = body.get("system")
    blocks += system if isinstance(system, list) else []
    for m in body.get("messages") or []:
        blocks += _blocks(m.get("content")) if isinstance(m, dict) else []
    return any(
        isinstance(b, dict)
        and isinstance(b.get("cache_control"), dict)
        and b["cache_control"].get("ttl") == "1h"
        for b in blocks
    )


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """A prompt-cache entry: the key of everything up to a ``cache_control`` breakpoint,
    and that prefix's input tokens."""

    key: int
    tokens: int


def _breakpoints(
    sim: Sim, model: str, body: dict[str, Any], prompt: Prompt, marks: list[str]
) -> list[Breakpoint]:
    """The prompt-cache entries a call reads and, once answered, writes: one per
    breakpoint, in Anthropic's cache order, tools, then system, then messages.  A tool's
    breakpoint caches the tools up to it (with the tool-use system prompt); any later one
    caches every tool before its text, so the tools are in every later key and changing
    them makes all of those new.  A breakpoint whose prefix is under the minimum is none
    (the minimum applies to what is cached, not to the whole prompt)."""
    tools = body.get("tools") or []
    every = orjson.dumps(tools).decode() if tools else ""
    system = prompt.tool_tokens - text_tokens(every) if tools else 0
    found: list[tuple[int, int, int]] = []  # key, tokens, characters
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and tool.get("cache_control"):
            upto = orjson.dumps(tools[: i + 1]).decode()
            found.append((digest("anthropic", model, upto), text_tokens(upto) + system, len(upto)))
    for mark in marks:
        tokens = prompt.tool_tokens + text_tokens(mark)
        found.append((digest("anthropic", model, every, mark), tokens, len(every) + len(mark)))
    return [Breakpoint(key, tokens) for key, tokens, chars in found if sim.caching(chars)]


def _usage(
    sim: Sim, prompt: Prompt, breakpoints: list[Breakpoint], answer: Answer, one_hour: bool
) -> dict[str, Any]:
    """The call's usage: the longest prefix an earlier answered call cached is read, the
    rest up to the last breakpoint written."""
    total = prompt.tokens
    last = min(total, max((b.tokens for b in breakpoints), default=0))
    read = min(last, max((b.tokens for b in breakpoints if sim.cache_seen(b.key)), default=0))
    created = last - read
    # Anthropic's input_tokens counts only the tokens after the last cache breakpoint.
    return {
        "input_tokens": total - created - read,
        "output_tokens": answer.completion_tokens,
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
        # The writes by cache lifetime (the simulator writes the whole prefix at the one
        # asked for, the five-minute one unless a breakpoint says "1h").
        "cache_creation": {
            "ephemeral_5m_input_tokens": 0 if one_hour else created,
            "ephemeral_1h_input_tokens": created if one_hour else 0,
        },
    }


def signature(thinking: str) -> str:
    """The signature the simulator gives (and later demands back for) a thinking text."""
    return f"sig{digest('thinking', thinking):016x}"


def _thinking(body: dict[str, Any], prompt: Prompt, max_tokens: int) -> dict[str, Any] | None:
    """The thinking block to answer with when the request enables extended thinking, after
    the checks Anthropic makes: a budget of at least 1024 tokens below ``max_tokens``; no
    forced tool use, temperature but 1, top_k, or top_p below 0.95 beside it; and a
    tool-use turn sent back starting with its thinking block, signature intact."""
    config = body.get("thinking")
    if not isinstance(config, dict) or config.get("type") not in ("enabled", "adaptive"):
        return None
    if config["type"] == "enabled":
        budget = config.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024 or budget >= max_tokens:
            raise BadRequest("thinking.budget_tokens: must be >= 1024 and less than max_tokens")
    _sampling_beside_thinking(body)
    messages = body.get("messages") or []
    last = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
    blocks = _blocks(last.get("content")) if last else []
    if any(isinstance(b, dict) and b.get("type") == "tool_use" for b in blocks):
        first = blocks[0] if isinstance(blocks[0], dict) else {}
        if first.get("type") not in ("thinking", "redacted_thinking"):
            raise BadRequest(
                "messages: Expected `thinking` or `redacted_thinking`, but found "
                f"`{first.get('type')}`. When `thinking` is enabled, a final `assistant` "
                "message must start with a thinking block"
            )
        if first["type"] == "thinking" and first.get("signature") != signature(
            str(first.get("thinking", ""))
        ):
            raise BadRequest("messages: Invalid `signature` in `thinking` block")
    text = f"The user asks: {prompt.last_user[:80]}. A short answer will do."
    return {"type": "thinking", "thinking": text, "signature": signature(text)}


def _sampling_beside_thinking(body: dict[str, Any]) -> None:
    """Anthropic's 400s for what extended thinking does not go with."""
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise BadRequest("Thinking may not be enabled when tool_choice forces tool use.")
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise BadRequest(
            f"`temperature` may only be set to 1 when thinking is enabled. {_THINKING_DOCS}"
        )
    if body.get("top_k") is not None:
        raise BadRequest(f"`top_k` must be unset when thinking is enabled. {_THINKING_DOCS}")
    top_p = body.get("top_p")
    if isinstance(top_p, int | float) and top_p < 0.95:
        raise BadRequest(
            "`top_p` must be greater than or equal to 0.95 or unset when thinking is "
            f"enabled. {_THINKING_DOCS}"
        )


def _thought_within(
    thinking: dict[str, Any] | None, max_tokens: int
) -> tuple[dict[str, Any] | None, int]:
    """The thinking as far as ``max_tokens`` lets it go (adaptive thinking has no budget
    below it: it may use all of it, never more), and the tokens it used."""
    if thinking is None:
        return None, 0
    text = thinking["thinking"]
    if text_tokens(text) >= max_tokens:
        text = text[: 4 * max_tokens]
        thinking = {"type": "thinking", "thinking": text, "signature": signature(text)}
    return thinking, text_tokens(text)


Prepared = tuple[str, Answer, dict[str, Any], dict[str, Any] | None, list[int]]
"""model, answer, usage, thinking block, the prompt-cache entries it writes once answered"""


def _known_fields_only(body: dict[str, Any], known: frozenset[str]) -> None:
    """Anthropic's 400 for a field it does not take (the first, in name order)."""
    extra = sorted(set(body) - known)
    if extra:
        raise BadRequest(f"{extra[0]}: Extra inputs are not permitted")


def _prepare(sim: Sim, body: dict[str, Any]) -> Prepared:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required")
    _known_fields_only(body, MESSAGES_FIELDS)
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("max_tokens: Field required")
    both = body.get("temperature") is not None and body.get("top_p") is not None
    if both and not model.startswith("claude-3"):
        # As Claude 4.5 and later answer (and the relay must never ask).
        raise BadRequest("`temperature` and `top_p` cannot both be specified for this model.")
    prompt, marks = to_prompt(body)
    # The thinking counts towards max_tokens: the answer gets what it leaves, if any.
    thinking, thought = _thought_within(_thinking(body, prompt, max_tokens), max_tokens)
    if thought >= max_tokens:
        answer = Answer(words=[], truncated=True, cap=0)
    else:
        # Claude writes a sentence before the calls it chooses to make; with thinking
        # on, that reasoning is in the thinking block, and it calls straight after.
        stops = body.get("stop_sequences") or []
        answer = compose(model, prompt, max_tokens - thought, stops=stops, preamble=not thinking)
    breakpoints = _breakpoints(sim, model, body, prompt, marks)
    usage = _usage(sim, prompt, breakpoints, answer, _one_hour(body))
    usage["output_tokens"] += thought
    return model, answer, usage, thinking, [b.key for b in breakpoints]


def _cache_write(sim: Sim, keys: list[int]) -> None:
    """An answered call's prompt-cache entries, one per breakpoint."""
    for key in keys:
        sim.cache_write(key)


def _stop_reason(answer: Answer) -> str:
    if answer.truncated:  # a tool call cut short too
        return "max_tokens"
    if answer.stop_sequence:
        return "stop_sequence"
    return "tool_use" if answer.calls else "end_turn"


def _tool_block(call: Call) -> dict[str, Any]:
    # Anthropic holds each input value back until it is whole: a call max_tokens cut
    # carries (and streamed) only the values it finished.
    finished, _ = call.finished_args()
    return {"type": "tool_use", "id": "toolu_" + call.id, "name": call.name, "input": finished}


def _blocks_of(answer: Answer) -> list[dict[str, Any]]:
    """The answer's content blocks: its text (none when it has no words, as when the
    thinking took all of max_tokens), then a tool_use block per call."""
    text = [{"type": "text", "text": answer.text}] if answer.words else []
    if not text and not answer.calls and not answer.truncated:
        text = [{"type": "text", "text": ""}]  # cut by a stop sequence before any word
    return [*text, *(_tool_block(call) for call in answer.calls)]


def _message(
    model: str, answer: Answer, usage: dict[str, Any], thinking: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [*([thinking] if thinking else []), *_blocks_of(answer)],
        "stop_reason": _stop_reason(answer),
        "stop_sequence": answer.stop_sequence,
        "usage": usage,
    }


def message_result(sim: Sim, body: dict[str, Any]) -> dict[str, Any]:
    """A whole Message for a request body (raises BadRequest); an answered call, so it
    writes its prompt-cache entries."""
    model, answer, usage, thinking, keys = _prepare(sim, body)
    _cache_write(sim, keys)
    return _message(model, answer, usage, thinking)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _block_events(index: int, first: dict[str, Any], deltas: list[dict[str, Any]]) -> list[bytes]:
    start = {"type": "content_block_start", "index": index, "content_block": first}
    return [
        _event("content_block_start", start),
        *(
            _event(
                "content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}
            )
            for d in deltas
        ),
        _event("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


# message_delta's usage fields (MessageDeltaUsage; server_tool_use only with server tools).
_DELTA_USAGE = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
)


def _events(
    model: str, answer: Answer, usage: dict[str, Any], thinking: dict[str, Any] | None = None
) -> list[bytes]:
    message = _message(model, answer, usage)
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    # Each block as it starts (empty) and the deltas that fill it, in the message's order.
    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    if thinking:
        words = thinking["thinking"].split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        deltas = [{"type": "thinking_delta", "thinking": p} for p in pieces]
        deltas.append({"type": "signature_delta", "signature": thinking["signature"]})
        blocks.append(({"type": "thinking", "thinking": "", "signature": ""}, deltas))
    calls = iter(answer.calls)
    for block in _blocks_of(answer):
        if block["type"] == "text":
            deltas = [{"type": "text_delta", "text": p} for p in answer.stream_pieces()]
            blocks.append(({"type": "text", "text": ""}, deltas))
            continue
        _, sent = next(calls).finished_args()
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in json_pieces(sent)]
        blocks.append(({**block, "input": {}}, deltas))
    stop = {"stop_reason": message["stop_reason"], "stop_sequence": answer.stop_sequence}
    events = [
        _event("message_start", {"type": "message_start", "message": start}),
        *(e for i, (first, deltas) in enumerate(blocks) for e in _block_events(i, first, deltas)),
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": stop,
                # Cumulative, as the API now says them: the input side again beside the
                # output (a stream's last word on usage, which the relay's merge reads).
                "usage": {k: usage[k] for k in _DELTA_USAGE},
            },
        ),
        _event("message_stop", {"type": "message_stop"}),
    ]
    # After the first block's start (after message_start when there is no block).
    events.insert(2 if blocks else 1, _event("ping", {"type": "ping"}))
    return events


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    """Anthropic Messages, streaming or not."""
    sim: Sim = request.app.state.sim
    rejected = check_headers(request)
    if rejected is not None:
        return rejected
    body = await read_json(request)
    if body is None:
        return error(400, "invalid JSON body")
    try:
        model, answer, usage, thinking, keys = _prepare(sim, body)
    except BadRequest as exc:
        return error(400, exc.message)
    fault = await sim.admit(request, model, "anthropic.messages")
    if fault == "overloaded" and body.get("stream"):
        # As Anthropic can: 200, message_start, then an error event before any text.
        overloaded = {"type": "error", "error": error_object(529, "Overloaded")["error"]}
        opened = _events(model, answer, usage, thinking)[:1]
        return await sim.stream(
            request,
            [*opened, _event("ping", {"type": "ping"}), _event("error", overloaded)],
            waited=True,
        )
    if fault:
        return error(529 if fault == "overloaded" else int(fault), _FAULT_MESSAGES[fault])
    _cache_write(sim, keys)  # only a call that is answered writes the prompt cache
    if body.get("stream"):
        return await sim.stream(request, _events(model, answer, usage, thinking))
    await sim.delay(request)
    return json_response(_message(model, answer, usage, thinking))


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    """Token count of a Messages request; listed under by_endpoint, not as a model call."""
    sim: Sim = request.app.state.sim
    rejected = check_headers(request)
    if rejected is not None:
        return rejected
    body = await read_json(request)
    if body is None or not isinstance(body.get("model"), str):
        return error(400, "model: Field required")
    try:
        # What Messages takes beside (max_tokens, stream, temperature...) is refused here.
        _known_fields_only(body, COUNT_TOKENS_FIELDS)
        prompt, _ = to_prompt(body)
    except BadRequest as exc:
        return error(400, exc.message)
    sim.stats.by_endpoint["anthropic.count_tokens"] += 1
    return json_response({"input_tokens": prompt.tokens})
