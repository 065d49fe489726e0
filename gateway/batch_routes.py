"""The relay's own Batch API, as OpenAI's: ``/v1/files`` and ``/v1/batches``.

The ``openai`` SDK's ``files`` and ``batches`` work unchanged.  A batch's lines go to the
request topic as background envelopes (so the worker sends them through the vendors'
batch APIs at their discount where it can, unless the cache or a call under way answers
them for nothing) with
replies to the batch-results topic; the worker's results agent writes each answer into the
store this module reads.  The input file is validated when the batch is created: a batch
with any bad line is ``failed`` at once, with every problem listed, and sends nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, field_validator
from starlette.datastructures import UploadFile

from gateway.auth import CallerDep
from gateway.batch_submit import Line, refused_models, store_quota, submit
from gateway.edge import ROUTES
from gateway.relay import Options, Relay
from schemas.batches import (
    COMPLETION_WINDOW_S,
    BatchObject,
    Errors,
    FileObject,
    LineError,
    RequestCounts,
    new_id,
    read_input,
)
from schemas.errors import BadRequest, NotFound, StoreUnavailable
from tables.batches import MESSAGE_BATCHES, BatchStore


def _not_anthropics(request: Request) -> None:
    """The Anthropic SDK's Files API (``client.beta.files``) asks these same paths; it
    must hear that the relay does not serve it, not get OpenAI's files in OpenAI's shape."""
    if "anthropic-version" in request.headers:
        if request.url.path.startswith("/v1/batches"):  # Anthropic's are /v1/messages/batches
            raise NotFound("not an Anthropic endpoint: Message Batches are at /v1/messages/batches")
        raise NotFound("Anthropic's Files API is not served by the relay (OpenAI's is)")


router = APIRouter(prefix="/v1", dependencies=[Depends(_not_anthropics)])


def _store(request: Request) -> BatchStore:
    return request.app.state.batches  # type: ignore[no-any-return]


def _relay(request: Request) -> Relay:
    return request.app.state.relay  # type: ignore[no-any-return]


async def _page(
    request: Request,
    tenant: str,
    items: list[Any],
    after: str | None,
    limit: int,
    newest_first: bool = True,
) -> dict[str, Any]:
    """OpenAI's cursor page over ``items`` (newest first, or oldest): those after
    ``after`` (``BatchStore.position``)."""
    start = 0
    if after is not None:
        start = await _store(request).position(tenant, items, after, newest_first=newest_first)
    page = items[start : start + limit]
    return {
        "object": "list",
        "data": [i.model_dump() for i in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": start + limit < len(items),
    }


# ---- files --------------------------------------------------------------------------------


@router.post("/files")
async def upload_file(request: Request, who: CallerDep) -> dict[str, Any]:
    form = await request.form()
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise BadRequest("file: a file is required (multipart/form-data)", param="file")
    if purpose != "batch":
        raise BadRequest("purpose: this relay takes files for `batch` only", param="purpose")
    data = await upload.read()
    quota = store_quota(_relay(request), who)  # what the tenant keeps, this one too
    meta = await _store(request).put_file(
        who.tenant, upload.filename or "file", purpose, data, quota
    )
    return meta.model_dump()


@router.get("/files")
async def list_files(
    request: Request,
    who: CallerDep,
    after: str | None = None,
    limit: int = Query(10_000, ge=1, le=10_000),
    purpose: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    files = await _store(request).files(who.tenant)  # newest first
    if purpose is not None:
        files = [f for f in files if f.purpose == purpose]
    newest_first = order == "desc"
    listed = files if newest_first else files[::-1]
    return await _page(request, who.tenant, listed, after, limit, newest_first)


async def _file(request: Request, tenant: str, file_id: str) -> FileObject:
    meta = await _store(request).file(tenant, file_id)
    if meta is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return meta


@router.get("/files/{file_id}")
async def get_file(file_id: str, request: Request, who: CallerDep) -> dict[str, Any]:
    return (await _file(request, who.tenant, file_id)).model_dump()


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, request: Request, who: CallerDep) -> Response:
    data = await _store(request).content(who.tenant, file_id)
    if data is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return Response(data, media_type="application/octet-stream")


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, request: Request, who: CallerDep) -> dict[str, Any]:
    if not await _store(request).delete_file(who.tenant, file_id):
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return {"id": file_id, "object": "file", "deleted": True}


# ---- batches ------------------------------------------------------------------------------


class BatchRequest(BaseModel):
    input_file_id: str = Field(min_length=1)
    endpoint: Literal["/v1/chat/completions", "/v1/embeddings", "/v1/completions"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(None, max_length=16)

    @field_validator("metadata")
    @classmethod
    def _storable(cls, given: dict[str, str] | None) -> dict[str, str] | None:
        """OpenAI's limits (keys of 64 characters, values of 512), in text that can be
        stored: a lone surrogate is no character of any encoding."""
        for key, value in (given or {}).items():
            if len(key) > 64 or len(value) > 512:
                raise ValueError("keys may have up to 64 characters and values up to 512")
            try:
                (key + value).encode()
            except UnicodeEncodeError:
                raise ValueError("keys and values must be valid Unicode text") from None
        return given


@router.post("/batches")
async def create_batch(body: BatchRequest, request: Request, who: CallerDep) -> dict[str, Any]:
    store, relay = _store(request), _relay(request)
    opts = Options.from_headers(request.headers)  # a bad header refuses the whole batch
    source = await _file(request, who.tenant, body.input_file_id)
    if source.purpose != "batch":
        raise BadRequest(
            "input_file_id: the file was not uploaded for `batch`", param="input_file_id"
        )
    data = await store.content(who.tenant, source.id) or b""
    endpoint, validate, _ = ROUTES[body.endpoint]
    # Off the event loop: a file of 50 000 lines takes seconds to read and check.
    numbered, errors = await asyncio.to_thread(read_input, data, body.endpoint, validate)
    models = {str(line.body.get("model", "")) for _, line in numbered}
    refused = await refused_models(relay, who, models, endpoint)
    for number, line in numbered:
        if refusal := refused.get(str(line.body.get("model", ""))):
            errors.append(
                LineError(
                    code=refusal.code, message=refusal.message, param="body.model", line=number
                )
            )
    errors.sort(key=lambda e: e.line or 0)
    valid = [line for _, line in numbered]
    now = int(time.time())
    batch = BatchObject(
        id=new_id("batch_"),
        endpoint=body.endpoint,
        input_file_id=source.id,
        status="failed" if errors else "in_progress",
        created_at=now,
        metadata=body.metadata,
        request_counts=RequestCounts(total=0 if errors else len(valid)),
    )
    if errors:
        batch.errors = Errors(data=errors[:1000])
        batch.failed_at = now
        await store.create(who.tenant, batch, [])
        return batch.model_dump()
    batch.in_progress_at = now
    batch.expires_at = now + COMPLETION_WINDOW_S
    lines = [Line(custom_id=line.custom_id, body=line.body, legacy=line.legacy) for line in valid]
    failed = await submit(relay, store, who, opts, batch, endpoint, lines)
    try:
        return (await _batch(request, who.tenant, batch.id)).model_dump()
    except StoreUnavailable:
        # Its lines are out: the batch exists, and a 503 would have the client make (and
        # pay for) a second one.  As it stood when they went out.
        batch.request_counts.failed = failed
        return batch.model_dump()


async def _batch(request: Request, tenant: str, batch_id: str) -> BatchObject:
    batch = await _store(request).batch(tenant, batch_id)
    if batch is None or batch.endpoint == MESSAGE_BATCHES:
        raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
    return batch


@router.get("/batches")
async def list_batches(
    request: Request,
    who: CallerDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
) -> dict[str, Any]:
    batches = await _store(request).batches(who.tenant)
    ours = [b for b in batches if b.endpoint != MESSAGE_BATCHES]
    return await _page(request, who.tenant, ours, after, limit)


@router.get("/batches/{batch_id}")
async def get_batch(batch_id: str, request: Request, who: CallerDep) -> dict[str, Any]:
    return (await _batch(request, who.tenant, batch_id)).model_dump()


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request, who: CallerDep) -> dict[str, Any]:
    await _batch(request, who.tenant, batch_id)
    await _store(request).cancel(who.tenant, batch_id)
    return (await _batch(request, who.tenant, batch_id)).model_dump()
