"""Anthropic Messages wire format: messages, SSE events, token counting, prompt-cache usage."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from simulator.faults import BadRequest, Sim, json_response, read_json
from simulator.text import Answer, Prompt, compose, digest, new_id, text_tokens

router = APIRouter()

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_FAULT_MESSAGES = {
    "500": "Internal server error",
    "429": "Number of requests has exceeded your rate limit",
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


def _tool_choice(choice: Any) -> str:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "tool":
        return str(choice.get("name") or "required")
    return {"any": "required", "none": "none"}.get(kind or "", "auto")


def to_prompt(body: dict[str, Any]) -> tuple[Prompt, str | None]:
    """The Prompt, plus the text up to the last ``cache_control`` breakpoint (None if none)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: at least one message is required")
    texts: list[str] = []
    prefix: str | None = None
    # The system prompt comes first in Anthropic's cache order (after tools), then messages.
    turns: list[Any] = [{"role": "system", "content": body["system"]}] if body.get("system") else []
    last_user, result = "", None
    for m in [*turns, *messages]:
        if not isinstance(m, dict):
            raise BadRequest("messages: each message must be an object")
        parts: list[str] = []
        for block in _blocks(m.get("content")):
            parts.append(_block_text(block))
            if isinstance(block, dict) and block.get("cache_control"):
                prefix = "\n".join([*texts, "\n".join(parts)])
        texts.append("\n".join(parts))
        if m.get("role") == "user":
            blocks = [b for b in _blocks(m.get("content")) if isinstance(b, dict)]
            results = [_block_text(b) for b in blocks if b.get("type") == "tool_result"]
            last_user = "\n".join(_block_text(b) for b in blocks if b.get("type") == "text")
            result = " ".join(results) if results else None
    if messages[-1].get("role") != "user":
        result = None
    if body.get("cache_control"):  # automatic caching: the breakpoint is the last block
        prefix = "\n".join(texts)
    tools = [
        (str(t["name"]), t.get("input_schema") or {})
        for t in body.get("tools") or []
        if isinstance(t, dict) and t.get("name")
    ]
    return Prompt(texts, last_user, result, tools, _tool_choice(body.get("tool_choice"))), prefix


def _usage(
    sim: Sim, model: str, prompt: Prompt, prefix: str | None, answer: Answer
) -> dict[str, Any]:
    total = prompt.tokens
    created = read = 0
    if prefix and sim.caching(len(prompt.key)):
        cached = min(total, text_tokens(prefix))
        if sim.cache_seen(digest("anthropic", model, prefix)):
            read = cached
        else:
            created = cached
    # Anthropic's input_tokens counts only the tokens after the last cache breakpoint.
    return {
        "input_tokens": total - created - read,
        "output_tokens": answer.completion_tokens,
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
    }


def _prepare(sim: Sim, body: dict[str, Any]) -> tuple[str, Answer, dict[str, Any]]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("max_tokens: Field required")
    prompt, prefix = to_prompt(body)
    answer = compose(model, prompt, max_tokens)
    return model, answer, _usage(sim, model, prompt, prefix, answer)


def _stop_reason(answer: Answer) -> str:
    if answer.tool_name is not None:
        return "tool_use"
    return "max_tokens" if answer.truncated else "end_turn"


def _block(answer: Answer) -> dict[str, Any]:
    if answer.tool_name is not None:
        tool_id = "toolu_" + answer.tool_id
        return {
            "type": "tool_use",
            "id": tool_id,
            "name": answer.tool_name,
            "input": answer.tool_args,
        }
    return {"type": "text", "text": answer.text}


def _message(model: str, answer: Answer, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [_block(answer)],
        "stop_reason": _stop_reason(answer),
        "stop_sequence": None,
        "usage": usage,
    }


def message_result(sim: Sim, body: dict[str, Any]) -> dict[str, Any]:
    """A whole Message for a request body (raises BadRequest)."""
    return _message(*_prepare(sim, body))


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _events(model: str, answer: Answer, usage: dict[str, Any]) -> list[bytes]:
    message = _message(model, answer, usage)
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    if answer.tool_name is not None:
        first = {**_block(answer), "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in answer.json_pieces()]
    else:
        first = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in answer.stream_pieces()]
    return [
        _event("message_start", {"type": "message_start", "message": start}),
        _event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": first},
        ),
        _event("ping", {"type": "ping"}),
        *(
            _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
            for d in deltas
        ),
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        ),
        _event("message_stop", {"type": "message_stop"}),
    ]


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
        model, answer, usage = _prepare(sim, body)
    except BadRequest as exc:
        return error(400, exc.message)
    fault = await sim.admit(request, model, "anthropic.messages")
    if fault:
        return error(int(fault), _FAULT_MESSAGES[fault])
    if body.get("stream"):
        chunks = _events(model, answer, usage)
        return StreamingResponse(sim.paced(request, chunks), media_type="text/event-stream")
    await sim.delay(request)
    return json_response(_message(model, answer, usage))


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
        prompt, _ = to_prompt(body)
    except BadRequest as exc:
        return error(400, exc.message)
    sim.stats.by_endpoint["anthropic.count_tokens"] += 1
    return json_response({"input_tokens": prompt.tokens})
