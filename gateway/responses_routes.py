"""OpenAI's Responses API on the relay: ``POST /v1/responses`` (stateless), JSON or events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from gateway.auth import CallerDep
from gateway.bodies import count_refusal, json_object
from gateway.errors import validation_message
from gateway.json_answer import JSONAnswer
from gateway.openai_routes import ChatBody, chat_fields
from gateway.relay import Answer, Options, Relay
from gateway.sse import EventStream, responses_sse
from schemas.errors import BadRequest, NotFound, RelayError
from schemas.formats.openai import new_id
from schemas.formats.responses import (
    in_responses_words,
    openai_response_to_responses,
    responses_request_to_openai,
)

router = APIRouter(prefix="/v1")


class _ResponsesChat(ChatBody):
    """Chat's checks, and the types of the fields a Responses request passes on to chat
    by the same name (chat's body lets them through unchecked)."""

    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    prompt_cache_retention: str | None = None


def neutral_request(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses request as the relay's chat body, held to chat's checks (a knob of
    the wrong type is the client's 400 here, never a vendor's later), which name the
    field as the client sent it.  Its input items are counted before any is read."""
    if (refusal := count_refusal(body, turns="input")) is not None:
        raise refusal
    try:
        return chat_fields(_ResponsesChat.model_validate(responses_request_to_openai(body)))
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise in_responses_words(BadRequest(message, param=param), body) from None


def render(answer: Answer, body: dict[str, Any]) -> Response:
    """An answer as a Response object, or its event stream."""
    if answer.chunks is None:
        reply = openai_response_to_responses(answer.body or {}, answer.usage, body)
        return JSONAnswer(reply, headers=answer.headers)
    return EventStream(
        responses_sse(answer.chunks, body, new_id("resp_")), answer.close, answer.headers
    )


@router.post("/responses")
async def responses(request: Request, who: CallerDep) -> Any:
    body = await json_object(request)
    relay: Relay = request.app.state.relay
    if isinstance(model := body.get("model"), str) and model:
        await relay.check_model(who, model)  # before its items are read and translated
    neutral = neutral_request(body)
    opts = Options.from_headers(request.headers)
    try:
        answer = await relay.answer(who, "chat", neutral, opts)
    except RelayError as err:  # (the worker's, a vendor's: in chat's words)
        in_responses_words(err, body)
        raise
    return render(answer, body)


_UNSUPPORTED = {
    "input_tokens": "counting a Responses request's input tokens is not supported by the "
    "relay (an Anthropic client's POST /v1/messages/count_tokens is); each answer's usage "
    "says what its input took",
    "compact": "compacting a conversation is not supported by the relay: it keeps no "
    "conversations and never trims one; send in input what the model should see",
}


@router.post("/responses/input_tokens")
@router.post("/responses/compact")
async def unsupported(request: Request, who: CallerDep) -> Any:
    """OpenAI's endpoints the relay does not serve: a clear 404 rather than the 405 the
    stored-response routes' path would give."""
    action = request.url.path.rsplit("/", 1)[-1]
    raise NotFound(f"POST /v1/responses/{action}: {_UNSUPPORTED[action]}")


def _not_stored(response_id: str) -> NotFound:
    return NotFound(
        f"No response with id '{response_id}': the relay stores no responses (every answer "
        "says store: false), so one cannot be retrieved, cancelled or deleted",
        param="response_id",
    )


@router.get("/responses/{response_id}")
@router.delete("/responses/{response_id}")
@router.post("/responses/{response_id}/cancel")
@router.get("/responses/{response_id}/input_items")
async def stored_response(response_id: str, who: CallerDep) -> Any:
    """What needs a stored response: a clear 404 rather than an unknown URL."""
    raise _not_stored(response_id)
