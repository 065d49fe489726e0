"""Errors to HTTP, in one place: the OpenAI body for /v1/chat…, Anthropic's for /v1/messages.

Nothing here invents an error: it translates ``schemas.errors`` (and FastAPI's own
validation and routing errors) into the vendor's body and status; unknown exceptions
become a plain 500 with no stack trace.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from gateway import metrics
from schemas.envelope import MAX_TRACE_ID
from schemas.errors import (
    AuthenticationFailed,
    BadRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    RelayError,
    RequestTimeout,
    VendorError,
)
from schemas.formats.responses import in_responses_words

log = logging.getLogger("relay.gateway")

ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Anthropic says "overloaded" with a 529 of its own, which its SDK raises as OverloadedError.
ANTHROPIC_STATUS = {503: 529}
# The endpoints the relay answers from its cache or through a worker: every response of
# theirs says ``x-relay-cache``, an error too (``miss`` unless the relay knew better).
ANSWER_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
    }
)


def trace_headers(trace_id: str) -> dict[str, str]:
    """A response's trace id (its ledger line's), also as the request id the official
    SDKs read: ``x-request-id`` (openai's ``_request_id``) and ``request-id``
    (anthropic's)."""
    return {"x-relay-trace-id": trace_id, "x-request-id": trace_id, "request-id": trace_id}


def is_anthropic(request: Request) -> bool:
    """Anthropic's error body for its endpoints, and for the model list, files and
    batches when the Anthropic SDK (which always sends ``anthropic-version``) asks."""
    path = request.url.path
    return path.startswith("/v1/messages") or (
        path.startswith(("/v1/models", "/v1/files", "/v1/batches"))
        and "anthropic-version" in request.headers
    )


def request_trace(request: Request) -> str:
    """The client's own trace id (``x-relay-trace-id``) if the relay takes it, else a new
    one: the id an answer that went under no trace of the relay's says."""
    given = request.headers.get("x-relay-trace-id", "")
    return given if 0 < len(given) <= MAX_TRACE_ID else uuid.uuid4().hex


def error_response(request: Request, err: RelayError) -> JSONResponse:
    if request.url.path.startswith("/v1/"):  # as relay_requests_total counts: a scanner's
        # 404s elsewhere must not make an error ratio of nothing.  The lane is read off the
        # request, as Measure reads it: the catch-all handler answers from Starlette's
        # ServerErrorMiddleware, outside Measure, once the lane it set has been reset.
        metrics.count_error(err, metrics.lane_of(request.scope))
    headers = {}
    if err.retry_after is not None:
        # Rounded up: a client that waits what it is told must find the way clear.
        headers["retry-after"] = str(max(1, math.ceil(err.retry_after)))
    elif err.status == 429:  # a vendor's 429 that said no wait: every 429 says one
        headers["retry-after"] = "1"
    # The trace id the request went under, or the client's own when it failed before that,
    # or else a new one: every answer carries a request id, as the vendors' do (one to
    # quote in a report, though a request refused this early has no ledger line).
    headers.update(trace_headers(err.trace_id or request_trace(request)))
    if request.url.path in ANSWER_PATHS:
        # Refused before any look-up, or failed on its way to a vendor: not from the
        # cache (a caller that shared another's failed call hears it was ``coalesced``).
        headers["x-relay-cache"] = err.cache or "miss"
    if is_anthropic(request):
        status, body = anthropic_error(err)
    else:
        if request.url.path == "/v1/responses":
            responses_words(err)
        status, body = err.status, err.openai_body()
    return JSONResponse(body, status_code=status, headers=headers)


# A request field the relay names in OpenAI's words, as a Messages client sent it.
ANTHROPIC_NAMES = {"stop": "stop_sequences"}


def anthropic_error(err: RelayError) -> tuple[int, dict[str, Any]]:
    """The status and body Anthropic would answer ``err`` with (the body is also the
    ``error`` event of a stream that already began)."""
    status = ANTHROPIC_STATUS.get(err.status, err.status)
    kind = ANTHROPIC_TYPES.get(status, "api_error")
    message = err.message
    name = ANTHROPIC_NAMES.get(err.param or "")
    if name is not None and message.startswith(f"{err.param}:"):
        message = name + message.removeprefix(err.param or "")
    return status, {"type": "error", "error": {"type": kind, "message": message}}


def responses_words(err: RelayError) -> None:
    """A Responses client's error naming its fields as a Responses request does, where
    the worker's checks and OpenAI-format vendors name them as chat does
    (``in_responses_words``: ``reasoning_effort`` is ``reasoning.effort``), a message's
    place in ``input`` unsaid unless the route said it from the request (this has only
    the error).  The relay's refusal of a chat field sent to /v1/responses
    (``unknown_parameter``) names the field as it was sent."""
    if err.vendor_code != "unknown_parameter" or isinstance(err, VendorError):
        in_responses_words(err, {})


# pydantic names a union's branch in the error's location ("stop.str"): not a field
_BRANCHES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def validation_message(
    exc: RequestValidationError | ValidationError, names: Mapping[str, str] | None = None
) -> tuple[str, str | None]:
    """The first problem, said as a client reads it: the field's dotted path (its first
    part as ``names`` calls it, for a body checked in another shape than the client's)
    and what is wrong with it (FastAPI's own wording for a body that is not JSON, or not
    an object, is replaced by plain words)."""
    first: Mapping[str, Any] = exc.errors()[0] if exc.errors() else {}
    kind = first.get("type", "")
    raw_loc = [p for p in first.get("loc", ()) if p not in ("body", "query")]
    if kind == "json_invalid":
        return "body is not valid JSON", None
    if not raw_loc and kind in ("model_attributes_type", "dict_type", "missing"):
        return "body must be a JSON object, sent as application/json", None
    loc = [str(p) for p in raw_loc if not (str(p) in _BRANCHES or "[" in str(p))]
    if loc and names:
        loc[0] = names.get(loc[0], loc[0])
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return (f"{param}: {msg}" if param else str(msg)), param


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into a vendor-shaped error body."""

    @app.exception_handler(RelayError)
    async def _relay(request: Request, exc: RelayError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(request, BadRequest(message, param=param))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        by_status: dict[int, type[RelayError]] = {
            401: AuthenticationFailed,
            403: PermissionDenied,
            408: RequestTimeout,  # a body that stopped coming in (edge.BodyStalled)
            429: RateLimited,
        }
        if exc.status_code in (404, 405):  # no such route (or method): say which, as OpenAI
            err: RelayError = NotFound(f"Invalid URL ({request.method} {request.url.path})")
        else:
            err = by_status.get(exc.status_code, BadRequest)(str(exc.detail))
        response = error_response(request, err)
        response.status_code = exc.status_code
        return response

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client left while its body was read: nobody to answer, and no error of
        # the relay's (nginx's 499 says so in the metrics, not a 500).
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request, RelayError("internal error; it has been logged"))
