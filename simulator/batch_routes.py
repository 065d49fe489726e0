"""OpenAI Files + Batch API and Anthropic Message Batches; jobs end after batch_complete_after_s,
expired (their window closed on requests not yet run) when a request's model says ``-expire``
or past the first ``batch_expire_after`` requests."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.datastructures import UploadFile

from simulator import anthropic_routes, openai_routes
from simulator.faults import BadRequest, Sim, json_response, read_json
from simulator.text import new_id

router = APIRouter()

_DAY = 86_400
_OPENAI_ENDPOINTS: dict[str, Callable[[Sim, dict[str, Any]], dict[str, Any]]] = {
    "/v1/chat/completions": openai_routes.chat_result,
    "/v1/completions": openai_routes.completions_result,
    "/v1/embeddings": openai_routes.embeddings_result,
    # Azure's batch lines name the paths without /v1.
    "/chat/completions": openai_routes.chat_result,
    "/completions": openai_routes.completions_result,
    "/embeddings": openai_routes.embeddings_result,
}


def _sim(request: Request) -> Sim:
    return request.app.state.sim


def _end_time(sim: Sim, job: dict[str, Any]) -> float | None:
    """When the job ended (t0 + the completion delay), or None while it runs.  Fixed the
    first time it is seen ended, so its timestamps hold however often it is polled (and
    a later change of the delay does not bring it back to life)."""
    if job.get("ended") is None and time.time() - job["t0"] >= sim.config.batch_complete_after_s:
        job["ended"] = job["t0"] + sim.config.batch_complete_after_s
    ended: float | None = job.get("ended")
    return ended


def _ended(sim: Sim, job: dict[str, Any]) -> bool:
    return _end_time(sim, job) is not None


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


EXPIRE = "-expire"  # a model name with this in it: its batch requests are never run


def _unrun(sim: Sim, models: list[str]) -> list[bool]:
    """Which of an ended batch's requests its window closed on before they ran (as the
    vendors' 24 hours can): those whose model says ``-expire``, and every one past the
    first ``batch_expire_after`` (as configured when the batch is seen ended).  A batch
    with any such request ends expired; the others ran."""
    after = sim.config.batch_expire_after
    return [EXPIRE in model or (after is not None and i >= after) for i, model in enumerate(models)]


def _model(params: Any) -> str:
    model = params.get("model") if isinstance(params, dict) else None
    return str(model or "")


# ---- OpenAI Files and Batches -------------------------------------------------------------


def _store_file(sim: Sim, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "id": new_id("file-"),
        "object": "file",
        "bytes": len(data),
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }
    sim.files[meta["id"]] = meta
    sim.file_data[meta["id"]] = data
    return meta


def _openai_auth(request: Request) -> Response | None:
    """OpenAI's bearer key, or Azure's ``api-key`` header on Azure's ``/openai/…`` paths,
    whose dated ones (not the v1 API) also need their ``api-version``."""
    if (missing := openai_routes.missing_api_version(request)) is not None:
        return missing
    if _sim(request).authorized(openai_routes.supplied_key(request)):
        return None
    return openai_routes.error(401, "Incorrect API key provided.", code="invalid_api_key")


@router.post("/v1/files")
@router.post("/openai/files")  # Azure
@router.post("/openai/v1/files")  # Azure v1 API
async def upload_file(request: Request) -> Response:
    """Upload a file (multipart ``file`` + ``purpose``)."""
    if (rejected := _openai_auth(request)) is not None:
        return rejected
    form = await request.form()
    upload, purpose = form.get("file"), form.get("purpose", "batch")
    if not isinstance(upload, UploadFile):
        return openai_routes.error(400, "Missing required parameter: 'file'.", param="file")
    data = await upload.read()
    filename = upload.filename or "upload.jsonl"
    return json_response(_store_file(_sim(request), data, filename, str(purpose)))


@router.get("/v1/files/{file_id}")
@router.get("/openai/files/{file_id}")  # Azure
@router.get("/openai/v1/files/{file_id}")  # Azure v1 API
async def get_file(file_id: str, request: Request) -> Response:
    """File metadata."""
    if (rejected := _openai_auth(request)) is not None:
        return rejected
    meta = _sim(request).files.get(file_id)
    if meta is None:
        return openai_routes.error(404, f"No such File object: {file_id}", param="id")
    return json_response(meta)


@router.get("/v1/files/{file_id}/content")
@router.get("/openai/files/{file_id}/content")  # Azure
@router.get("/openai/v1/files/{file_id}/content")  # Azure v1 API
async def file_content(file_id: str, request: Request) -> Response:
    """Raw file bytes (batch input, output or error JSONL)."""
    if (rejected := _openai_auth(request)) is not None:
        return rejected
    data = _sim(request).file_data.get(file_id)
    if data is None:
        return openai_routes.error(404, f"No such File object: {file_id}", param="id")
    return Response(data, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
@router.delete("/openai/files/{file_id}")  # Azure
@router.delete("/openai/v1/files/{file_id}")  # Azure v1 API
async def delete_file(file_id: str, request: Request) -> Response:
    """Delete a file and its bytes."""
    if (rejected := _openai_auth(request)) is not None:
        return rejected
    sim = _sim(request)
    if sim.files.pop(file_id, None) is None:
        return openai_routes.error(404, f"No such File object: {file_id}", param="id")
    sim.file_data.pop(file_id, None)
    sim.stats.files_deleted += 1
    return json_response({"id": file_id, "object": "file", "deleted": True})


def _line_error(line: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "line": line, "message": message, "param": param}


def _validate_lines(
    endpoint: str, data: bytes
) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
    """The requests of a batch input file as (custom_id, body), and what is wrong with it,
    line by line, as OpenAI lists it in a failed batch's ``errors`` (any fails the batch)."""
    requests: list[tuple[str, dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            item = None
        if not isinstance(item, dict):
            errors.append(
                _line_error(n, "invalid_json_line", "This line is not parseable as valid JSON.")
            )
            continue
        custom_id, body, url = item.get("custom_id"), item.get("body"), item.get("url")
        if not isinstance(custom_id, str) or not custom_id:
            message = "Missing required parameter: 'custom_id'."
            errors.append(_line_error(n, "missing_required_parameter", message, "custom_id"))
        elif custom_id in seen:
            message = (
                f"The custom_id '{custom_id}' is used by another request in this batch: "
                "each request's custom_id must be unique."
            )
            errors.append(_line_error(n, "duplicate_custom_id", message, "custom_id"))
        elif url != endpoint:
            message = f"The url '{url}' of this request does not match the batch's endpoint "
            message += f"'{endpoint}'."
            errors.append(_line_error(n, "url_mismatch", message, "url"))
        elif not isinstance(body, dict):
            message = "Missing required parameter: 'body' (an object)."
            errors.append(_line_error(n, "missing_required_parameter", message, "body"))
        else:
            requests.append((custom_id, body))
        if isinstance(custom_id, str):
            seen.add(custom_id)
    return requests, errors


def _openai_item(
    sim: Sim, endpoint: str, custom_id: str, body: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """One output line for one (valid) input line, and whether it succeeded."""
    line_id, request_id = new_id("batch_req_"), new_id("req_")
    model = str(body.get("model") or "unknown")
    sim.stats.record(model, "batch")
    status, fault = 200, sim.model_fault(model)
    try:
        if fault:
            status = 503 if fault == "overloaded" else int(fault)
            out = openai_routes.error_body(status, "Simulated failure for this model.")
        else:
            out = _OPENAI_ENDPOINTS[endpoint](sim, body)
    except BadRequest as exc:
        status, out = 400, openai_routes.error_body(400, exc.message, exc.param)
    response = {"status_code": status, "request_id": request_id, "body": out}
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": response,
        "error": None,
    }, status == 200


@router.post("/v1/batches")
@router.post("/openai/batches")  # Azure
@router.post("/openai/v1/batches")  # Azure v1 API
async def create_batch(request: Request) -> Response:
    """Create a batch; its lines are answered once the job 'completes' (when it is first
    seen ended), so a batch cancelled before then runs none of them.  An input file with
    a bad line fails the whole batch (``status: failed``, the lines' problems in
    ``errors``), and none of it runs."""
    if (rejected := _openai_auth(request)) is not None:
        return rejected
    sim = _sim(request)
    body = await read_json(request)
    if body is None:
        return openai_routes.error(400, "We could not parse the JSON body of your request.")
    endpoint, file_id = body.get("endpoint"), body.get("input_file_id")
    if (refused := _metadata_refused(body.get("metadata"))) is not None:
        return openai_routes.error(400, refused, param="metadata")
    if not isinstance(endpoint, str) or endpoint not in _OPENAI_ENDPOINTS:
        return openai_routes.error(400, f"Unsupported endpoint: {endpoint}", param="endpoint")
    data = sim.file_data.get(file_id) if isinstance(file_id, str) else None
    if data is None:
        return openai_routes.error(404, f"No such File object: {file_id}", param="input_file_id")
    requests, invalid = _validate_lines(endpoint, data)
    requests = [] if invalid else requests
    sim.stats.batches += 1
    now = int(time.time())
    job: dict[str, Any] = {
        "id": new_id("batch_"),
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": file_id,
        "completion_window": str(body.get("completion_window") or "24h"),
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + _DAY,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": len(requests), "completed": 0, "failed": 0},
        "metadata": body.get("metadata"),
    }
    sim.batches[job["id"]] = {
        "t0": time.time(),
        "obj": job,
        "invalid": invalid,
        "requests": requests,
        "ran": False,
        "output": None,
        "errors": None,
        "counts": (0, 0, 0),  # completed, failed, expired
        "cancelled": False,
    }
    return json_response(job)


def _metadata_refused(metadata: Any) -> str | None:
    """Why OpenAI would refuse a batch's ``metadata`` (at most 16 pairs of strings, keys
    up to 64 characters, values up to 512), or None."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > 16:
        return "metadata: expected an object of at most 16 key-value pairs"
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
            return "metadata: keys are strings of up to 64 characters, values up to 512"
    return None


_EXPIRED_LINE = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}


def _run_openai(sim: Sim, rec: dict[str, Any]) -> None:
    """Answer an ended batch's requests, once: its output file holds the answered lines,
    its error file (if any) the failed ones, then those its window closed on
    (``batch_expired``, no response: never run, never billed).  An expired batch with no
    answered line has no output file."""
    if rec["ran"] or rec["invalid"]:
        return
    rec["ran"] = True
    good: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    late: list[dict[str, Any]] = []
    requests = rec["requests"]
    for (custom_id, params), unrun in zip(
        requests, _unrun(sim, [_model(p) for _, p in requests]), strict=True
    ):
        if unrun:
            line_id = new_id("batch_req_")
            late.append(
                {"id": line_id, "custom_id": custom_id, "response": None, "error": _EXPIRED_LINE}
            )
            continue
        line, ok = _openai_item(sim, rec["obj"]["endpoint"], custom_id, params)
        (good if ok else bad).append(line)
    if good or not late:
        rec["output"] = _store_file(sim, _jsonl(good), "batch_output.jsonl", "batch_output")["id"]
    if bad or late:
        errors = _jsonl([*bad, *late])
        rec["errors"] = _store_file(sim, errors, "batch_errors.jsonl", "batch_output")["id"]
    rec["counts"] = (len(good), len(bad), len(late))


def _openai_view(sim: Sim, rec: dict[str, Any]) -> dict[str, Any]:
    obj = dict(rec["obj"])
    if rec["cancelled"]:
        return obj | {
            "status": "cancelled",
            "cancelled_at": obj["cancelling_at"],
            "error_file_id": rec["errors"],
        }
    ended = _end_time(sim, rec)
    if ended is None:
        if rec["invalid"]:
            return obj  # still "validating"
        return obj | {"status": "in_progress", "in_progress_at": obj["created_at"]}
    at = int(ended)
    if rec["invalid"]:
        errors = {"object": "list", "data": rec["invalid"]}
        return obj | {"status": "failed", "failed_at": at, "errors": errors}
    _run_openai(sim, rec)
    done, failed, expired = rec["counts"]
    ran = {
        "output_file_id": rec["output"],
        "error_file_id": rec["errors"],
        "in_progress_at": obj["created_at"],
        "request_counts": {
            "total": done + failed + expired,
            "completed": done,
            "failed": failed + expired,
        },
    }
    if expired:
        # Its window closed (at the simulator's end time, not 24 hours on): what ran is
        # in the output file, the rest in the error file, counted as failed.
        return obj | ran | {"status": "expired", "expires_at": at, "expired_at": at}
    return obj | ran | {"status": "completed", "finalizing_at": at, "completed_at": at}


def _openai_job(request: Request, batch_id: str) -> tuple[Sim, dict[str, Any] | Response]:
    sim = _sim(request)
    if (rejected := _openai_auth(request)) is not None:
        return sim, rejected
    rec = sim.batches.get(batch_id)
    if rec is None or rec["obj"].get("object") != "batch":
        return sim, openai_routes.error(404, f"No such Batch object: {batch_id}", param="batch_id")
    return sim, rec


@router.get("/v1/batches")
@router.get("/openai/batches")  # Azure
@router.get("/openai/v1/batches")  # Azure v1 API
async def list_batches(request: Request) -> Response:
    """The account's batches, newest first, paged by ``after`` (a batch id) and ``limit``
    (1 to 100, 20 if not given), as OpenAI lists them."""
    if (rejected := _openai_auth(request)) is not None:
        return rejected
    sim = _sim(request)
    try:
        limit = int(request.query_params.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        return openai_routes.error(400, "limit: an integer from 1 to 100", param="limit")
    ids = [i for i, rec in reversed(sim.batches.items()) if rec["obj"].get("object") == "batch"]
    after = request.query_params.get("after")
    start = ids.index(after) + 1 if after in ids else 0 if after is None else len(ids)
    page = [_openai_view(sim, sim.batches[i]) for i in ids[start : start + limit]]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": start + limit < len(ids),
        }
    )


@router.get("/v1/batches/{batch_id}")
@router.get("/openai/batches/{batch_id}")  # Azure
@router.get("/openai/v1/batches/{batch_id}")  # Azure v1 API
async def get_batch(batch_id: str, request: Request) -> Response:
    """Batch status: ``in_progress`` until the delay passes, then ``completed``."""
    sim, rec = _openai_job(request, batch_id)
    if isinstance(rec, Response):
        return rec
    return json_response(_openai_view(sim, rec))


@router.post("/v1/batches/{batch_id}/cancel")
@router.post("/openai/batches/{batch_id}/cancel")  # Azure
@router.post("/openai/v1/batches/{batch_id}/cancel")  # Azure v1 API
async def cancel_batch(batch_id: str, request: Request) -> Response:
    """Cancel a batch that has not completed yet."""
    sim, rec = _openai_job(request, batch_id)
    if isinstance(rec, Response):
        return rec
    if not _ended(sim, rec) and not rec["cancelled"]:
        # None of it ran: each request is listed in the error file as batch_cancelled.
        error = {"code": "batch_cancelled", "message": "The batch was cancelled."}
        unrun = [
            {"id": new_id("batch_req_"), "custom_id": cid, "response": None, "error": error}
            for cid, _ in rec["requests"]
        ]
        rec["errors"] = _store_file(sim, _jsonl(unrun), "batch_errors.jsonl", "batch_output")["id"]
        rec["obj"]["cancelling_at"] = int(time.time())
        rec["cancelled"] = True
        sim.stats.batches_cancelled += 1
        return json_response(_openai_view(sim, rec) | {"status": "cancelling"})
    return json_response(_openai_view(sim, rec))


# ---- Anthropic Message Batches ------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _anthropic_item(sim: Sim, item: Any) -> dict[str, Any]:
    custom_id, params = item.get("custom_id"), item.get("params")
    model = str(params.get("model") or "unknown")
    sim.stats.record(model, "batch")
    try:
        if sim.model_fault(model):
            error = anthropic_routes.error_object(500, "Simulated failure for this model.")
        else:
            message = anthropic_routes.message_result(sim, params)
            return {"custom_id": custom_id, "result": {"type": "succeeded", "message": message}}
    except BadRequest as exc:
        error = anthropic_routes.error_object(400, exc.message)
    return {"custom_id": custom_id, "result": {"type": "errored", "error": error}}


def _anthropic_results(sim: Sim, rec: dict[str, Any]) -> list[dict[str, Any]]:
    """An ended batch's results, its requests answered the first time they are asked for
    (so a batch cancelled before it ended runs none of them); those its window closed on
    are ``expired`` (never run, never billed)."""
    if rec["results"] is None:
        items = rec["items"]
        late = _unrun(sim, [_model(item.get("params")) for item in items])
        rec["results"] = [
            {"custom_id": item["custom_id"], "result": {"type": "expired"}}
            if unrun
            else _anthropic_item(sim, item)
            for item, unrun in zip(items, late, strict=True)
        ]
    results: list[dict[str, Any]] = rec["results"]
    return results


def _anthropic_view(sim: Sim, rec: dict[str, Any], request: Request) -> dict[str, Any]:
    obj = dict(rec["obj"])
    if rec["cancelled"]:
        canceled = len(rec["items"])
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": canceled}
        counts["expired"] = 0
    elif _ended(sim, rec):
        kinds = [r["result"]["type"] for r in _anthropic_results(sim, rec)]
        succeeded, expired = kinds.count("succeeded"), kinds.count("expired")
        errored = len(kinds) - succeeded - expired
        counts = {"processing": 0, "succeeded": succeeded, "errored": errored, "canceled": 0}
        counts["expired"] = expired
        if expired:  # its window closed then (at the simulator's end time)
            obj["expires_at"] = _iso(rec["ended"])
    else:
        return obj
    url = f"{str(request.base_url).rstrip('/')}/v1/messages/batches/{obj['id']}/results"
    return obj | {
        "processing_status": "ended",
        "request_counts": counts,
        "ended_at": _iso(rec["ended"]),  # fixed when it ended (at the cancel, if cancelled)
        "results_url": url,
    }


def _anthropic_job(request: Request, batch_id: str) -> tuple[Sim, dict[str, Any] | Response]:
    sim = _sim(request)
    rejected = anthropic_routes.check_headers(request)
    if rejected is not None:
        return sim, rejected
    rec = sim.batches.get(batch_id)
    if rec is None or rec["obj"].get("type") != "message_batch":
        return sim, anthropic_routes.error(404, f"message batch {batch_id} not found")
    return sim, rec


_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # Anthropic's rule for a request's id


@router.post("/v1/messages/batches")
async def create_message_batch(request: Request) -> Response:
    """Create a Message Batch from ``requests: [{custom_id, params}]``."""
    sim = _sim(request)
    rejected = anthropic_routes.check_headers(request)
    if rejected is not None:
        return rejected
    body = await read_json(request)
    items = body.get("requests") if body else None
    if not isinstance(items, list) or not items:
        return anthropic_routes.error(400, "requests: at least one request is required")
    for i, item in enumerate(items):
        if not (isinstance(item, dict) and isinstance(item.get("params"), dict)):
            return anthropic_routes.error(400, "requests: each needs custom_id and params")
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str):  # null or a number is no id, not "None" or "5"
            message = f"requests.{i}.custom_id: Input should be a valid string"
            return anthropic_routes.error(400, message)
        if not _CUSTOM_ID.fullmatch(custom_id):
            return anthropic_routes.error(
                400, f"requests.custom_id: {custom_id!r} does not match ^[a-zA-Z0-9_-]{{1,64}}$"
            )
    if len({item["custom_id"] for item in items}) < len(items):
        return anthropic_routes.error(400, "requests: custom_id values must be unique")
    sim.stats.batches += 1
    now = time.time()
    job: dict[str, Any] = {
        "id": new_id("msgbatch_"),
        "type": "message_batch",
        "processing_status": "in_progress",
        "request_counts": {
            "processing": len(items),
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        },
        "ended_at": None,
        "created_at": _iso(now),
        "expires_at": _iso(now + _DAY),
        "cancel_initiated_at": None,
        "archived_at": None,
        "results_url": None,
    }
    sim.batches[job["id"]] = {
        "t0": now,
        "obj": job,
        "items": items,
        "results": None,  # until it has ended and is looked at
        "cancelled": False,
    }
    return json_response(job)


@router.get("/v1/messages/batches/{batch_id}")
async def get_message_batch(batch_id: str, request: Request) -> Response:
    """Batch status: ``in_progress`` until the delay passes, then ``ended`` with ``results_url``."""
    sim, rec = _anthropic_job(request, batch_id)
    if isinstance(rec, Response):
        return rec
    return json_response(_anthropic_view(sim, rec, request))


@router.post("/v1/messages/batches/{batch_id}/cancel")
async def cancel_message_batch(batch_id: str, request: Request) -> Response:
    """Cancel a batch still in progress; its requests end as ``canceled``."""
    sim, rec = _anthropic_job(request, batch_id)
    if isinstance(rec, Response):
        return rec
    if not _ended(sim, rec) and not rec["cancelled"]:
        rec["cancelled"] = True
        sim.stats.batches_cancelled += 1
        rec["ended"] = time.time()
        rec["obj"]["cancel_initiated_at"] = _iso(rec["ended"])
        return json_response(rec["obj"] | {"processing_status": "canceling"})
    return json_response(_anthropic_view(sim, rec, request))


@router.delete("/v1/messages/batches/{batch_id}")
async def delete_message_batch(batch_id: str, request: Request) -> Response:
    """Delete an ended batch and its results (one still running cannot be)."""
    sim, rec = _anthropic_job(request, batch_id)
    if isinstance(rec, Response):
        return rec
    if not _ended(sim, rec) and not rec["cancelled"]:
        message = f"message batch {batch_id} is still in progress; cancel it first"
        return anthropic_routes.error(400, message)
    del sim.batches[batch_id]
    sim.stats.batches_deleted += 1
    return json_response({"id": batch_id, "type": "message_batch_deleted"})


@router.get("/v1/messages/batches/{batch_id}/results")
async def message_batch_results(batch_id: str, request: Request) -> Response:
    """JSONL results, one ``{custom_id, result}`` per request, once the batch has ended."""
    sim, rec = _anthropic_job(request, batch_id)
    if isinstance(rec, Response):
        return rec
    if rec["cancelled"]:
        lines = [
            {"custom_id": item["custom_id"], "result": {"type": "canceled"}}
            for item in rec["items"]
        ]
    elif _ended(sim, rec):
        lines = _anthropic_results(sim, rec)
    else:
        return anthropic_routes.error(400, f"message batch {batch_id} has not ended yet")
    return Response(_jsonl(lines), media_type="application/binary")
