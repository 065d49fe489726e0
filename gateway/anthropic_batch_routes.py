"""Anthropic's Message Batches on the relay: ``/v1/messages/batches``.

The ``anthropic`` SDK's ``messages.batches`` works unchanged.  It is the same machinery as
the OpenAI Batch API (``batch_routes``): each request becomes a background envelope,
answers land in the batch store, and this module shows them the Anthropic way — a
``message_batch`` with its counts, and results as JSONL of succeeded / errored / canceled
/ expired.  As Anthropic does, a request whose params are invalid does not fail the batch:
it ends ``errored`` and the rest run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from gateway.anthropic_routes import neutral_request
from gateway.auth import Caller, CallerDep
from gateway.batch_submit import YIELD_EVERY, Line, refused_models, store_quota, submit
from gateway.errors import ANTHROPIC_TYPES
from gateway.relay import Options, Relay
from schemas.batches import (
    COMPLETION_WINDOW_S,
    BatchObject,
    OutputLine,
    RequestCounts,
    new_id,
)
from schemas.errors import BadRequest, NotFound, RelayError, StoreUnavailable
from schemas.formats.anthropic import openai_response_to_messages
from schemas.usage import Usage
from tables.batches import MESSAGE_BATCHES, BatchStore

router = APIRouter(prefix="/v1/messages")
ENDPOINT = MESSAGE_BATCHES


class Item(BaseModel):
    custom_id: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    params: dict[str, Any]


class CreateBody(BaseModel):
    requests: list[Item] = Field(min_length=1, max_length=100_000)


def _store(request: Request) -> BatchStore:
    return request.app.state.batches  # type: ignore[no-any-return]


def _iso(ts: int | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else None


async def _batch(request: Request, who: Caller, batch_id: str) -> BatchObject:
    batch = await _store(request).batch(who.tenant, batch_id)
    if batch is None or batch.endpoint != ENDPOINT:
        raise NotFound(f"message batch `{batch_id}` not found")
    return batch


_NONE_YET = {"succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}


async def _shown(
    request: Request, batch: BatchObject, counts: dict[str, int] | None = None
) -> dict[str, Any]:
    """The batch as Anthropic's ``message_batch`` object (its requests' ``counts`` by
    outcome, read from the store unless given)."""
    if counts is None:
        counts = await _store(request).outcomes(batch.id)
    ended = batch.ended
    status = "ended" if ended else "canceling" if batch.status == "cancelling" else "in_progress"
    base = request.app.state.relay.settings.public_url or str(request.base_url)
    results = f"{base.rstrip('/')}{ENDPOINT}/batches/{batch.id}/results"
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": {
            "processing": batch.request_counts.total - sum(counts.values()),
            **counts,
        },
        "ended_at": _iso(batch.ended_at) if ended else None,
        "created_at": _iso(batch.created_at),
        "expires_at": _iso(batch.expires_at),
        "archived_at": None,
        "cancel_initiated_at": _iso(batch.cancelling_at),
        "results_url": results if ended else None,
    }


@router.post("/batches")
async def create(body: CreateBody, request: Request, who: CallerDep) -> dict[str, Any]:
    ids = [item.custom_id for item in body.requests]
    if len(set(ids)) != len(ids):
        raise BadRequest("requests: every custom_id must be unique in a batch")
    opts = Options.from_headers(request.headers)  # a bad header refuses the whole batch
    relay: Relay = request.app.state.relay
    store = _store(request)
    batch_id = new_id("msgbatch_")
    # Its requests count against the tenant's store quota, as an upload does (the store
    # keeps their ids and answers) until it is deleted or expires: checked before any
    # work on them (in the try: a hold counted whose answer was lost is let go too).
    size = len(await request.body())
    try:
        await store.hold(who.tenant, batch_id, size, store.batch_kept_s, store_quota(relay, who))
        failed, batch = await _submit(relay, store, who, opts, batch_id, body)
    except BaseException:
        with contextlib.suppress(StoreUnavailable):  # (else it ends as the batch would)
            await store.release(who.tenant, batch_id)
        raise
    try:
        return await _shown(request, await _batch(request, who, batch.id))
    except StoreUnavailable:
        # Its requests are out: the batch exists, and a 503 would have the client make
        # (and pay for) a second one.  As it stood when they went out.
        return await _shown(request, batch, {**_NONE_YET, "errored": failed})


async def _submit(
    relay: Relay,
    store: BatchStore,
    who: Caller,
    opts: Options,
    batch_id: str,
    body: CreateBody,
) -> tuple[int, BatchObject]:
    """Store the batch and send its requests (``submit``): how many failed, and the batch."""
    lines = []
    for n, item in enumerate(body.requests, 1):
        lines.append(_line(item))
        if n % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # a large batch shares the gateway with everyone else
    models = {str(line.body["model"]) for line in lines if line.body is not None}
    refused = await refused_models(relay, who, models, "chat")
    lines = [
        Line(line.custom_id, refused=refused[model])
        if line.body is not None and (model := str(line.body["model"])) in refused
        else line
        for line in lines
    ]
    now = int(time.time())
    batch = BatchObject(
        id=batch_id,
        endpoint=ENDPOINT,
        input_file_id="",
        status="in_progress",
        created_at=now,
        in_progress_at=now,
        expires_at=now + COMPLETION_WINDOW_S,
        request_counts=RequestCounts(total=len(body.requests)),
    )
    return await submit(relay, store, who, opts, batch, "chat", lines), batch


def _line(item: Item) -> Line:
    """The request as a batch line; as at Anthropic, invalid params error this request
    alone (any malformed field: the translation's own checks, or what they missed)."""
    try:
        if item.params.get("stream"):
            raise BadRequest("stream: a batched request cannot stream", param="stream")
        return Line(item.custom_id, body=neutral_request(item.params))
    except RelayError as err:
        return Line(item.custom_id, refused=err)


@router.get("/batches")
async def list_batches(
    request: Request,
    who: CallerDep,
    limit: int = Query(20, ge=1, le=1000),
    after_id: str | None = None,
    before_id: str | None = None,
) -> dict[str, Any]:
    """Newest first; ``after_id`` pages on to older batches, ``before_id`` back."""
    store = _store(request)
    batches = [b for b in await store.batches(who.tenant) if b.endpoint == ENDPOINT]
    if before_id is not None:
        end = await store.position(who.tenant, batches, before_id, before=True)
        page, more = batches[max(0, end - limit) : end], end - limit > 0
    else:
        start = 0 if after_id is None else await store.position(who.tenant, batches, after_id)
        page, more = batches[start : start + limit], start + limit < len(batches)
    return {
        "data": [await _shown(request, b) for b in page],
        "has_more": more,
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
    }


@router.get("/batches/{batch_id}")
async def retrieve(batch_id: str, request: Request, who: CallerDep) -> dict[str, Any]:
    return await _shown(request, await _batch(request, who, batch_id))


@router.post("/batches/{batch_id}/cancel")
async def cancel(batch_id: str, request: Request, who: CallerDep) -> dict[str, Any]:
    await _batch(request, who, batch_id)
    await _store(request).cancel(who.tenant, batch_id)
    return await _shown(request, await _batch(request, who, batch_id))


@router.delete("/batches/{batch_id}")
async def delete(batch_id: str, request: Request, who: CallerDep) -> dict[str, Any]:
    try:
        batch = await _batch(request, who, batch_id)
    except NotFound:
        # A retry of a delete whose batch went but whose bytes failed to stop counting:
        # let them go now (only what this tenant holds for that id).
        await _store(request).release(who.tenant, batch_id)
        raise
    if not batch.ended:
        raise BadRequest("a batch can be deleted once it has ended; cancel it first")
    await _store(request).delete_batch(who.tenant, batch_id)
    return {"id": batch_id, "type": "message_batch_deleted"}


@router.get("/batches/{batch_id}/results")
async def results(batch_id: str, request: Request, who: CallerDep) -> Response:
    batch = await _batch(request, who, batch_id)
    if not batch.ended:
        raise BadRequest(f"message batch `{batch_id}` has not ended yet; its results follow")
    lines = await _store(request).lines(batch_id)
    data = b"".join(orjson.dumps(_result(line)) + b"\n" for line in lines)
    return Response(data, media_type="application/x-jsonl")


def _result(line: OutputLine) -> dict[str, Any]:
    """One output line as an Anthropic batch result."""
    kind = line.outcome
    if kind == "succeeded" and line.response is not None:
        body = line.response.body
        usage = line.usage  # the vendor's, cache writes and all...
        if usage is None or not (usage.input_tokens or usage.output_tokens):
            usage = Usage.from_openai(body.get("usage"))  # ...unless it was a cache hit
        message = openai_response_to_messages(body, usage, str(body.get("model", "")))
        return {"custom_id": line.custom_id, "result": {"type": kind, "message": message}}
    if kind != "errored":
        return {"custom_id": line.custom_id, "result": {"type": kind}}
    status = line.response.status_code if line.response else 500
    detail = (line.response.body if line.response else {}).get("error") or {}
    text = str(detail.get("message") or "the request failed")
    error = {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": text}
    return {
        "custom_id": line.custom_id,
        "result": {"type": "errored", "error": {"type": "error", "error": error}},
    }
