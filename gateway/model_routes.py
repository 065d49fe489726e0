"""``/v1/models``: the aliases a caller may use, listed or one by one, in the shape of the
SDK asking (Anthropic's when the request carries ``anthropic-version``, else OpenAI's)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.auth import CallerDep
from gateway.errors import request_trace, trace_headers
from gateway.json_answer import JSONAnswer
from gateway.relay import Relay

router = APIRouter(prefix="/v1")
EPOCH = "1970-01-01T00:00:00Z"  # aliases have no release date; Anthropic's field is required


def wants_anthropic(request: Request) -> bool:
    return "anthropic-version" in request.headers


def _openai(alias: str) -> dict[str, Any]:
    return {"id": alias, "object": "model", "created": 0, "owned_by": "relay-station"}


def _anthropic(alias: str) -> dict[str, Any]:
    return {"type": "model", "id": alias, "display_name": alias, "created_at": EPOCH}


def _answer(request: Request, body: dict[str, Any]) -> JSONAnswer:
    """``body`` with a request id, as every answer carries one (the SDKs' ``_request_id``):
    the client's own trace id if it sent one the relay takes, else a new one.  No ledger
    line is written for a model list, so the id only names the request."""
    return JSONAnswer(body, headers=trace_headers(request_trace(request)))


@router.get("/models")
async def list_models(
    request: Request,
    who: CallerDep,
    limit: int = 20,
    after_id: str | None = None,
    before_id: str | None = None,
) -> JSONAnswer:
    """OpenAI's list is whole; Anthropic's pages by ``limit``/``after_id``/``before_id``."""
    relay: Relay = request.app.state.relay
    aliases = [a for a in relay.config.models if who.policy.may_use(a)]
    if not wants_anthropic(request):
        return _answer(request, {"object": "list", "data": [_openai(a) for a in aliases]})
    limit = min(max(limit, 1), 1000)  # Anthropic's bounds
    if after_id in aliases:
        aliases = aliases[aliases.index(after_id) + 1 :]
    if before_id in aliases:
        aliases = aliases[: aliases.index(before_id)]
        page = aliases[-limit:]
        has_more = len(aliases) > len(page)
    else:
        page = aliases[:limit]
        has_more = len(aliases) > len(page)
    return _answer(
        request,
        {
            "data": [_anthropic(a) for a in page],
            "has_more": has_more,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        },
    )


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request, who: CallerDep) -> JSONAnswer:
    """One alias; 404 in the caller's format when it does not exist or is not theirs."""
    relay: Relay = request.app.state.relay
    await relay.check_model(who, model_id)
    return _answer(request, _anthropic(model_id) if wants_anthropic(request) else _openai(model_id))
