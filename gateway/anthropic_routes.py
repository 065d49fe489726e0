"""Anthropic-compatible routes: /v1/messages (with its event stream) and count_tokens."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from gateway.auth import CallerDep
from gateway.bodies import count_refusal, json_object
from gateway.errors import trace_headers
from gateway.json_answer import JSONAnswer
from gateway.relay import Answer, Options, Relay
from gateway.sse import EventStream, anthropic_sse
from schemas.errors import BadRequest, NoHealthyVendor
from schemas.formats.anthropic import messages_request_to_openai, openai_response_to_messages
from schemas.usage import prompt_chars

router = APIRouter(prefix="/v1")
log = logging.getLogger("relay.gateway")


def neutral_request(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages request as the relay's neutral (OpenAI-shaped) chat body."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: field required", param="model")
    if (refused := count_refusal(body)) is not None:
        raise refused  # more items than a request may hold: refused before they are walked
    try:
        return messages_request_to_openai(body)
    except RecursionError:
        raise BadRequest("body: nested too deep to relay") from None
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        # A field of the wrong type deep in a block: still the client's 400, never a 500.
        # The client is told where, in Anthropic's words; the exception is the relay's
        # own business (it names our code), so only the log has it.
        where = _malformed_part(body)
        log.info("malformed Messages request at %s: %.200s", where, f"{type(exc).__name__}: {exc}")
        raise BadRequest(
            f"{where}: malformed Messages request (a field of the wrong type, or a block "
            "without a field it needs)",
            param=None if where == "body" else where,
        ) from None


def _malformed_part(body: dict[str, Any]) -> str:
    """The first part of a Messages request that does not translate on its own (a block of
    a message, a message, a top-level field), or ``body`` when none alone fails.  Only run
    for a request already refused, so its cost is the error path's."""
    base = {"model": body["model"], "max_tokens": 1, "messages": [{"role": "user", "content": "."}]}
    messages = body.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        if not _fails({**base, "messages": [message]}):
            continue
        blocks = message.get("content") if isinstance(message, dict) else None
        for j, block in enumerate(blocks if isinstance(blocks, list) else []):
            if _fails({**base, "messages": [{**message, "content": [block]}]}):
                return f"messages.{i}.content.{j}"
        return f"messages.{i}"
    for field, value in body.items():
        if field not in ("model", "messages") and _fails({**base, field: value}):
            return field
    return "body"


def _fails(body: dict[str, Any]) -> bool:
    try:
        messages_request_to_openai(body)
    except Exception:  # whichever way it fails, the part tried is to blame
        return True
    return False


def render(answer: Answer, body: dict[str, Any]) -> Response:
    """An answer in Anthropic's shape: a message, or its event stream."""
    model = str(body["model"])
    if answer.chunks is None:
        reply = openai_response_to_messages(answer.body or {}, answer.usage, model)
        return JSONAnswer(reply, headers=answer.headers)
    message_id = f"msg_{uuid.uuid4().hex[:24]}"
    return EventStream(
        anthropic_sse(answer.chunks, model, message_id),
        answer.close,
        answer.headers,
    )


@router.post("/messages")
async def messages(request: Request, who: CallerDep) -> Any:
    body = await json_object(request)
    neutral = neutral_request(body)
    relay: Relay = request.app.state.relay
    opts = Options.from_headers(request.headers)
    return render(await relay.answer(who, "chat", neutral, opts), body)


@router.post("/messages/count_tokens")
async def count_tokens(request: Request, who: CallerDep) -> Any:
    """The vendor's own count when the alias has a vendor that counts (Anthropic), through
    the pipeline like any request (cached, metered at no cost); else an estimate at four
    characters a token, since OpenAI and Ollama have no such endpoint."""
    body = await json_object(request)
    opts = Options.from_headers(request.headers)  # a bad header is a 400 whoever counts
    neutral = neutral_request({**body, "max_tokens": body.get("max_tokens", 1)})
    relay: Relay = request.app.state.relay
    alias = str(body["model"])
    await relay.check_model(who, alias)
    relay.check_kind(alias, "count_tokens")
    if relay.config.counts_tokens(alias):
        try:
            answer = await relay.answer(who, "count_tokens", neutral, opts)
        except NoHealthyVendor:
            pass  # no vendor that counts is available now (or in this plan): estimate
        else:
            counted = (answer.body or {}).get("input_tokens", 0)
            return JSONAnswer({"input_tokens": counted}, headers=answer.headers)
    try:
        chars = prompt_chars(neutral)  # images at a flat size, not their base64
        chars += len(orjson.dumps(neutral.get("tools", []))) if neutral.get("tools") else 0
    except (TypeError, ValueError, RecursionError) as exc:  # nesting past what JSON goes to
        raise BadRequest(f"body: cannot be counted ({exc})") from None
    headers = {"x-relay-cache": "miss", **trace_headers(opts.trace_id)}
    return JSONResponse({"input_tokens": max(1, chars // 4)}, headers=headers)
