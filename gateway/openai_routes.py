"""OpenAI-compatible routes: chat completions (with SSE), embeddings, legacy completions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from gateway.auth import CallerDep
from gateway.bodies import inputs_problem, stops_problem, tools_problem, turns_problem
from gateway.json_answer import JSONAnswer
from gateway.relay import Answer, Options, Relay
from gateway.sse import EventStream, openai_sse
from schemas.errors import BadRequest
from schemas.formats.functions import (
    answer_as_function_call,
    chunk_as_function_call,
    functions_to_tools,
    is_legacy,
)
from schemas.formats.openai import ToolCallIndexes
from schemas.usage import Usage

router = APIRouter(prefix="/v1")


def bounded(problem_of: Callable[[Any], str | None]) -> Any:
    """A pydantic ``before`` validator refusing a field's value that ``problem_of`` finds
    holds too many items (``gateway.bodies``), before any of them is validated."""

    def check(cls: type, value: Any) -> Any:
        if problem := problem_of(value):
            raise ValueError(problem)
        return value

    return classmethod(check)


class ChatBody(BaseModel):
    """Enough shape to reject nonsense with a clear 400 naming the field (the fields the
    translators read, typed); the rest passes through as sent."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: StrictBool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    parallel_tool_calls: StrictBool | None = None
    user: str | None = None

    @field_validator("stream", mode="before")
    @classmethod
    def _stream(cls, value: Any) -> Any:
        # OpenAI documents ``stream`` as a boolean or null, and the ``openai`` SDK sends
        # null for ``stream=None``: null asks for what leaving it out does.
        return False if value is None else value

    # Before the items are validated, each of which costs the event loop (gateway.bodies).
    _turns = field_validator("messages", mode="before")(bounded(turns_problem))
    _tools = field_validator("tools", mode="before")(bounded(tools_problem))
    _stops = field_validator("stop", mode="before")(bounded(stops_problem))


class EmbeddingsBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]

    # As OpenAI: at most 2048 inputs (checked before they are validated one by one).
    _inputs = field_validator("input", mode="before")(bounded(inputs_problem))

    @field_validator("input")
    @classmethod
    def _something_to_embed(cls, value: Any) -> Any:
        # As OpenAI: no empty string, no empty list or token array (an empty input would
        # be one empty vector, or none, depending on batching).
        items = (
            value
            if isinstance(value, list) and value and isinstance(value[0], list | str)
            else [value]
        )
        if value == [] or any(len(item) == 0 for item in items if not isinstance(item, int)):
            raise ValueError("an input must not be empty (an empty string, list or token array)")
        return value


class CompletionsBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    prompt: str | list[str] | list[int] | list[list[int]]  # text, or token ids, as OpenAI's
    # Never passed on (always false), so a request that says so is merged by window
    # batching with those that do not.
    stream: StrictBool = Field(False, exclude=True)

    _prompts = field_validator("prompt", mode="before")(bounded(inputs_problem))

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, value: Any) -> Any:
        if value == [] or (isinstance(value, list) and any(item == [] for item in value)):
            raise ValueError("a prompt list or token array must not be empty")
        return value

    @field_validator("stream", mode="before")
    @classmethod
    def _stream(cls, value: Any) -> Any:
        if value is True:  # the relay answers legacy completions whole (and batches them)
            raise ValueError(
                "streaming of legacy completions is not supported; leave stream out, "
                "or stream through /v1/chat/completions"
            )
        return False if value is None else value  # null, as chat's


def _relay(request: Request) -> Relay:
    return request.app.state.relay  # type: ignore[no-any-return]


def chat_fields(body: ChatBody) -> dict[str, Any]:
    """The validated chat body as the relay takes it (also the edge's view of it)."""
    raw = body.model_dump(exclude_unset=True)
    for i, msg in enumerate(raw["messages"]):
        if not isinstance(msg.get("role"), str):
            raise BadRequest(f"messages.{i}.role: required", param=f"messages.{i}.role")
        if msg.get("tool_calls") is not None:  # null: what the openai SDK echoes
            _check_tool_calls(msg["tool_calls"], f"messages.{i}.tool_calls")
        if isinstance(msg.get("content"), list):
            _check_parts(msg["content"], f"messages.{i}.content")
    if not isinstance(raw.get("stream_options") or {}, dict):
        raise BadRequest("stream_options: must be an object", param="stream_options")
    for i, tool in enumerate(raw.get("tools") or ()):
        _check_named(tool, f"tools.{i}")
    return functions_to_tools(raw)  # the deprecated function calling, as tools


def _check_parts(parts: list[Any], where: str) -> None:
    """Each content part is an object, a text part's text a string: a vendor's
    translation would fail on anything else with a vague TypeError, in a worker, where
    the client's 400 could no longer name the field.  Other parts are the translators'."""
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise BadRequest(f"{where}.{j}: must be an object", param=f"{where}.{j}")
        if part.get("type") == "text" and not isinstance(part.get("text"), str):
            raise BadRequest(f"{where}.{j}.text: must be a string", param=f"{where}.{j}.text")


def _check_tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, list):
        raise BadRequest(f"{where}: must be a list", param=where)
    for j, call in enumerate(calls):
        if not isinstance(call, dict):
            raise BadRequest(f"{where}.{j}: must be an object", param=f"{where}.{j}")
        _check_named(call, f"{where}.{j}")


def _check_named(item: dict[str, Any], where: str) -> None:
    """A tool, or a tool call, names its function (or custom tool) under its type's key,
    so every vendor is sent a name: a malformed one is the client's 400 naming the field
    here, not each vendor's own vaguer refusal later.  Other types (and the extensions
    an Anthropic client's tools carry) are left to the translators."""
    kind = item.get("type") or (
        "custom" if "function" not in item and "custom" in item else "function"
    )
    if kind not in ("function", "custom") or "anthropic_tool" in item:
        return
    spec = item.get(kind)
    if not isinstance(spec, dict):
        raise BadRequest(f"{where}.{kind}: must be an object", param=f"{where}.{kind}")
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        where = f"{where}.{kind}.name"
        raise BadRequest(f"{where}: must be a non-empty string", param=where)


def render(answer: Answer, raw: dict[str, Any]) -> Response:
    """An answer in OpenAI's shape: JSON, or SSE chunks for a stream; ``raw`` is the
    request as the client sent it (a request in ``functions`` hears a ``function_call``)."""
    legacy = is_legacy(raw)
    if answer.chunks is None:
        body = answer_as_function_call(answer.body) if legacy and answer.body else answer.body
        return JSONAnswer(body, headers=answer.headers)
    include_usage = bool((raw.get("stream_options") or {}).get("include_usage"))
    chunks = _as_function_calls(answer.chunks) if legacy else answer.chunks
    return EventStream(openai_sse(chunks, include_usage), answer.close, answer.headers)


async def _as_function_calls(
    chunks: AsyncIterator[dict[str, Any] | Usage],
) -> AsyncIterator[dict[str, Any] | Usage]:
    numbering: dict[int, ToolCallIndexes] = {}  # the stream's, per choice
    async for chunk in chunks:
        yield chunk if isinstance(chunk, Usage) else chunk_as_function_call(chunk, numbering)


@router.post("/chat/completions")
async def chat_completions(body: ChatBody, request: Request, who: CallerDep) -> Any:
    sent = body.model_dump(exclude_unset=True)
    opts = Options.from_headers(request.headers)
    return render(await _relay(request).answer(who, "chat", chat_fields(body), opts), sent)


@router.post("/embeddings")
async def embeddings(body: EmbeddingsBody, request: Request, who: CallerDep) -> Any:
    raw = body.model_dump(exclude_unset=True)
    opts = Options.from_headers(request.headers)
    return render(await _relay(request).answer(who, "embeddings", raw, opts), raw)


@router.post("/completions")
async def completions(body: CompletionsBody, request: Request, who: CallerDep) -> Any:
    """Legacy completions (list prompts are what window batching merges); no streaming."""
    raw = body.model_dump(exclude_unset=True)
    opts = Options.from_headers(request.headers)
    return render(await _relay(request).answer(who, "completions", raw, opts), raw)
