"""The relay's own Batch API, in OpenAI's shapes: files, batch objects, input and output lines.

A client uploads a JSONL file of requests (``POST /v1/files``, purpose ``batch``), creates
a batch from it (``POST /v1/batches``) and later reads the output file.  Each line becomes
a background request envelope whose reply goes to the batch-results topic; the results
agent writes it into the batch's store.  Line ``n`` of batch ``b`` travels as correlation
id ``b/n``.
"""

from __future__ import annotations

import codecs
import math
import re
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from schemas.errors import RelayError
from schemas.formats.functions import is_legacy
from schemas.usage import Usage

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions")
COMPLETION_WINDOW_S = 24 * 3600  # OpenAI's only window, "24h"
# Past its window a batch waits this much longer for its last lines before it expires them:
# an answer the worker sent at the deadline may still be on its way to the store.
EXPIRY_GRACE_S = 300
MAX_LINES = 50_000  # OpenAI's limit per batch

# The statuses a batch ends in (OpenAI's; its Batch API's terminal states as well).
ENDED: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


_INDEX = re.compile(r"[0-9]{1,9}")  # a line's place in its batch, ASCII digits


LEGACY_MARK = "/functions"  # a line that asked with the deprecated ``functions``


def line_correlation(batch_id: str, index: int, legacy: bool = False) -> str:
    """A batch line's correlation id; ``legacy`` marks a line asked with ``functions``,
    whose answer goes in the output file as ``function_call``, as it would be answered."""
    return f"{batch_id}/{index}" + (LEGACY_MARK if legacy else "")


def legacy_line(correlation_id: str) -> bool:
    return correlation_id.endswith(LEGACY_MARK)


def parse_correlation(correlation_id: str) -> tuple[str, int] | None:
    """``(batch id, line index)`` of a batch line's correlation id, else None."""
    correlation_id = correlation_id.removesuffix(LEGACY_MARK)
    batch_id, sep, index = correlation_id.rpartition("/")
    if not sep or not batch_id.startswith(("batch_", "msgbatch_")) or not _INDEX.fullmatch(index):
        return None  # (str.isdigit would pass "²", which int() refuses)
    return batch_id, int(index)


class Listed(BaseModel):
    """What a list pages over: ``listed_at`` (when it joined its list, to the
    microsecond; never shown) orders the list and places a cursor."""

    _listed_at: float = PrivateAttr(0.0)

    @property
    def listed_at(self) -> float:
        return self._listed_at or float(getattr(self, "created_at", 0))


class FileObject(Listed):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int = Field(default_factory=lambda: int(time.time()))
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class InputLine(BaseModel):
    """One request of an input file."""

    custom_id: str = Field(min_length=1)
    method: Literal["POST"]
    url: str
    body: dict[str, Any]
    _legacy: bool = PrivateAttr(False)  # asked with ``functions`` (read_input finds out)

    @property
    def legacy(self) -> bool:
        return self._legacy


class LineError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class Errors(BaseModel):
    object: Literal["list"] = "list"
    data: list[LineError]


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchObject(Listed):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: Errors | None = None
    input_file_id: str
    completion_window: str = "24h"
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def ended_at(self) -> int | None:
        """When the batch ended, whichever way it did."""
        return self.completed_at or self.cancelled_at or self.expired_at or self.failed_at


class OutputResponse(BaseModel):
    status_code: int
    request_id: str
    body: dict[str, Any]


class OutputLine(BaseModel):
    """One line of an output (status 200) or error file (anything else)."""

    id: str = Field(default_factory=lambda: new_id("batch_req_"))
    custom_id: str
    response: OutputResponse | None = None
    error: LineError | None = None
    # The vendor's own counts, cache writes included (the body's OpenAI-shaped usage has
    # no place for them): kept with the line for Anthropic's results, never in the file.
    usage: Usage | None = None

    def file_line(self) -> bytes:
        """The line as OpenAI's batch output file has it."""
        return self.model_dump_json(exclude={"usage"}).encode() + b"\n"

    @property
    def ok(self) -> bool:
        return self.response is not None and self.response.status_code == 200

    @property
    def outcome(self) -> Literal["succeeded", "errored", "canceled", "expired"]:
        """What Anthropic's Message Batches call this line's result."""
        if self.ok:
            return "succeeded"
        code = self.error.code if self.error else None
        if code == "batch_cancelled":
            return "canceled"
        return "expired" if code == "batch_expired" else "errored"


def read_input(
    data: bytes, endpoint: str, validate: Callable[[dict[str, Any]], dict[str, Any]]
) -> tuple[list[tuple[int, InputLine]], list[LineError]]:
    """The lines of an input file with their line numbers (from 1), each body validated
    as ``endpoint`` takes it (and normalised by ``validate``), or what is wrong with them."""
    lines: list[tuple[int, InputLine]] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    # A file saved "UTF-8 with BOM" (Windows editors, PowerShell) starts with one, which
    # no JSON parser takes: it is no part of line 1.
    data = data.removeprefix(codecs.BOM_UTF8)
    for number, text in enumerate(data.splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = InputLine.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or None
            errors.append(
                LineError(code="invalid_request", message=first["msg"], param=where, line=number)
            )
            continue
        problem = None
        if line.url != endpoint:
            problem = f"url `{line.url}` is not the batch's endpoint `{endpoint}`"
        elif line.custom_id in seen:
            problem = f"custom_id `{line.custom_id}` is used by an earlier line"
        elif line.body.get("stream"):
            problem = "streaming is not available in a batch"
        elif not _finite(line.body):  # (read as JSON here, though JSON has no such number)
            problem = "body: NaN and Infinity are not JSON numbers"
        else:
            try:
                line._legacy = is_legacy(line.body)  # before the body becomes tools
                line.body = validate(line.body)
                orjson.dumps(line.body)  # what the relay cannot send on, it refuses now
            except (ValidationError, RelayError) as exc:
                problem = _reason(exc)
            except TypeError as exc:
                problem = f"body: cannot be sent on ({exc})"
        seen.add(line.custom_id)
        if problem:
            errors.append(LineError(code="invalid_request", message=problem, line=number))
        else:
            lines.append((number, line))
    if not lines and not errors:
        errors.append(LineError(code="empty_file", message="the input file has no requests"))
    elif len(lines) + len(errors) > MAX_LINES:
        errors.append(LineError(code="too_many_requests", message=f"over {MAX_LINES} lines"))
    return lines, errors


def _finite(value: Any) -> bool:
    """Whether no number in ``value`` is NaN or infinite (``NaN``, ``Infinity``, ``1e999``),
    which the relay refuses as its realtime routes do: no vendor takes them."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _reason(exc: ValidationError | RelayError) -> str:
    if isinstance(exc, RelayError):
        return exc.message
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"body.{where}: {first['msg']}" if where else f"body: {first['msg']}"
