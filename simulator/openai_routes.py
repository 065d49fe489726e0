"""OpenAI wire format (chat, legacy completions, embeddings), also under Azure OpenAI paths."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from simulator.faults import BadRequest, Sim, bearer, json_response, read_json
from simulator.text import (
    EMBED_DIM,
    Answer,
    Prompt,
    compose,
    digest,
    embedding,
    embedding_b64,
    in_json_mode,
    input_tokens,
    new_id,
)

router = APIRouter()

FINGERPRINT = "fp_sim0001"
_FAULTS = {
    "500": (
        500,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    "429": (
        429,
        "Rate limit reached for requests. Please try again in 1s.",
        "requests",
        "rate_limit_exceeded",
    ),
    "overloaded": (
        503,
        "The engine is currently overloaded, please try again later",
        "server_error",
        None,
    ),
}


def error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> Response:
    """An OpenAI error body; 429s carry ``Retry-After: 1``."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    headers = {"x-request-id": new_id("req_")}
    if status == 429:
        headers["retry-after"] = "1"
    return json_response(body, status, headers)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The body of an OpenAI error, for batch output lines."""
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    type_ = "requests" if status == 429 else type_
    return {"error": {"message": message, "type": type_, "param": param, "code": None}}


def fault_response(fault: str) -> Response:
    """The OpenAI answer to an injected fault."""
    status, message, type_, code = _FAULTS[fault]
    return error(status, message, type_, None, code)


def content_text(content: Any) -> str:
    """Text of an OpenAI/Ollama message content: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _tool_choice(choice: Any) -> str:
    if isinstance(choice, dict):
        return str((choice.get("function") or {}).get("name") or "required")
    return choice if choice in ("none", "required") else "auto"


def to_prompt(messages: list[Any], tools: Any, tool_choice: Any) -> Prompt:
    """Reduce OpenAI-shaped messages (also Ollama's) to a vendor-neutral Prompt."""
    texts: list[str] = []
    last_user = ""
    for m in messages:
        if not isinstance(m, dict):
            raise BadRequest("Each message must be an object.", "messages")
        text = content_text(m.get("content"))
        for call in m.get("tool_calls") or []:
            fn = (call.get("function") or {}) if isinstance(call, dict) else {}
            args = fn.get("arguments", "")
            text += str(fn.get("name", "")) + (
                args if isinstance(args, str) else orjson.dumps(args).decode()
            )
        texts.append(text)
        if m.get("role") == "user":
            last_user = text
    last = messages[-1] if messages else {}
    result = texts[-1] if last.get("role") == "tool" else None
    specs: list[tuple[str, dict[str, Any]]] = []
    for t in tools if isinstance(tools, list) else []:
        fn = (t.get("function") or t) if isinstance(t, dict) else {}
        if isinstance(fn, dict) and fn.get("name"):
            specs.append((str(fn["name"]), fn.get("parameters") or {}))
    return Prompt(texts, last_user, result, specs, _tool_choice(tool_choice))


def _require_model(body: dict[str, Any], model: str | None) -> str:
    model = model or body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    return model


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest("max_tokens must be a positive integer.", "max_tokens")
    return value


def _usage(sim: Sim, model: str, prompt: Prompt, answer: Answer) -> dict[str, Any]:
    pt, ct = prompt.tokens, answer.completion_tokens
    key = prompt.key
    cached = 0
    # OpenAI caches automatically on a shared prefix; the first 1024 chars stand for it.
    if sim.caching(len(key)) and sim.cache_seen(digest("openai", model, key[:1024])):
        cached = pt * 3 // 4
    return {
        "prompt_tokens": pt,
        "completion_tokens": ct,
        "total_tokens": pt + ct,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish(answer: Answer) -> str:
    if answer.tool_name is not None:
        return "tool_calls"
    return "length" if answer.truncated else "stop"


def _chat(sim: Sim, body: dict[str, Any], model: str | None) -> tuple[str, Answer, dict[str, Any]]:
    model = _require_model(body, model)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array.", "messages")
    prompt = to_prompt(messages, body.get("tools"), body.get("tool_choice"))
    answer = in_json_mode(compose(model, prompt, _max_tokens(body)), body.get("response_format"))
    return model, answer, _usage(sim, model, prompt, answer)


def _chat_object(model: str, answer: Answer, usage: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    if answer.tool_name is not None:
        message["tool_calls"] = [
            {
                "id": "call_" + answer.tool_id,
                "type": "function",
                "function": {"name": answer.tool_name, "arguments": answer.tool_json},
            }
        ]
    else:
        message["content"] = answer.text
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(answer)}
        ],
        "usage": usage,
    }


def chat_result(sim: Sim, body: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """A whole ``chat.completion`` object for a request body (raises BadRequest)."""
    return _chat_object(*_chat(sim, body, model))


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chat_chunks(
    model: str, answer: Answer, usage: dict[str, Any], include_usage: bool
) -> list[bytes]:
    base = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": FINGERPRINT,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            obj["usage"] = None
        return _sse(obj)

    if answer.tool_name is not None:
        head = {
            "index": 0,
            "id": "call_" + answer.tool_id,
            "type": "function",
            "function": {"name": answer.tool_name, "arguments": ""},
        }
        out = [chunk({"role": "assistant", "content": None, "tool_calls": [head]})]
        out += [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in answer.json_pieces()
        ]
    else:
        out = [chunk({"role": "assistant", "content": "", "refusal": None})]
        out += [chunk({"content": piece}) for piece in answer.stream_pieces()]
    out.append(chunk({}, _finish(answer)))
    if include_usage:
        out.append(_sse({**base, "choices": [], "usage": usage}))
    out.append(b"data: [DONE]\n\n")
    return out


def _prompts(body: dict[str, Any]) -> list[Any]:
    raw = body.get("prompt")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw:
        if all(isinstance(t, int) for t in raw):
            return [raw]
        if all(isinstance(p, str | list) for p in raw):
            return raw
    raise BadRequest("'prompt' must be a string, a list of strings or token arrays.", "prompt")


def _completions(
    body: dict[str, Any], model: str | None
) -> tuple[str, list[Answer], dict[str, Any]]:
    model = _require_model(body, model)
    prompts = _prompts(body)
    cap = _max_tokens(body)
    keys = [p if isinstance(p, str) else orjson.dumps(p).decode() for p in prompts]
    answers = [compose(model, Prompt([k], k), cap) for k in keys]
    pt = sum(input_tokens(p) for p in prompts)
    ct = sum(a.completion_tokens for a in answers)
    return model, answers, {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}


def _completion_object(model: str, answers: list[Answer], usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {"text": a.text, "index": i, "logprobs": None, "finish_reason": _finish(a)}
            for i, a in enumerate(answers)
        ],
        "usage": usage,
    }


def completions_result(sim: Sim, body: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """A ``text_completion`` with one choice per prompt (raises BadRequest)."""
    return _completion_object(*_completions(body, model))


def _completion_chunks(
    model: str, answers: list[Answer], usage: dict[str, Any], include_usage: bool
) -> list[bytes]:
    base = {"id": new_id("cmpl-"), "object": "text_completion", "created": int(time.time())}
    base |= {"model": model, "system_fingerprint": FINGERPRINT}

    def chunk(i: int, text: str, finish: str | None = None) -> bytes:
        choice = {"text": text, "index": i, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    out: list[bytes] = []
    for i, a in enumerate(answers):
        out += [chunk(i, piece) for piece in a.stream_pieces()]
        out.append(chunk(i, "", _finish(a)))
    if include_usage:
        out.append(_sse({**base, "choices": [], "usage": usage}))
    out.append(b"data: [DONE]\n\n")
    return out


def _embed_inputs(body: dict[str, Any]) -> list[Any]:
    raw = body.get("input")
    items: list[Any]
    if isinstance(raw, str):
        items = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
        items = [raw]
    else:
        items = raw if isinstance(raw, list) else []
    if not items or any(not isinstance(i, str | list) or not i for i in items):
        raise BadRequest("'input' must be a non-empty string or array of them.", "input")
    return items


def embeddings_result(sim: Sim, body: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """An embeddings list object (raises BadRequest)."""
    model = _require_model(body, model)
    items = _embed_inputs(body)
    dim = body.get("dimensions") or EMBED_DIM
    if not isinstance(dim, int) or dim < 1:
        raise BadRequest("'dimensions' must be a positive integer.", "dimensions")
    b64 = body.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(items):
        vec = embedding(item, dim)
        data.append(
            {"object": "embedding", "index": i, "embedding": embedding_b64(vec) if b64 else vec}
        )
    tokens = sum(input_tokens(i) for i in items)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


async def _handle(request: Request, kind: str, deployment: str | None = None) -> Response:
    """Shared flow: auth, parse, validate, count + faults, latency, answer."""
    sim: Sim = request.app.state.sim
    azure = deployment is not None or request.url.path.startswith("/openai/v1/")
    supplied = request.headers.get("api-key") if azure else bearer(request)
    if not sim.authorized(supplied):
        return error(401, "Incorrect API key provided.", code="invalid_api_key")
    if deployment is not None and not request.query_params.get("api-version"):
        return error(400, "Missing required query parameter 'api-version'.", param="api-version")
    body = await read_json(request)
    if body is None:
        return error(400, "We could not parse the JSON body of your request.")
    stream = bool(body.get("stream")) and kind != "embeddings"
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    try:
        if kind == "chat":
            model, answer, usage = _chat(sim, body, deployment)
            inputs = 1
            if stream:
                chunks = _chat_chunks(model, answer, usage, include_usage)
            else:
                result = _chat_object(model, answer, usage)
        elif kind == "completions":
            model, answers, usage = _completions(body, deployment)
            inputs = len(answers)
            if stream:
                chunks = _completion_chunks(model, answers, usage, include_usage)
            else:
                result = _completion_object(model, answers, usage)
        else:
            result = embeddings_result(sim, body, deployment)
            model, inputs = result["model"], len(result["data"])
    except BadRequest as exc:
        return error(400, exc.message, param=exc.param)
    fault = await sim.admit(request, model, ("azure." if azure else "openai.") + kind, inputs)
    if fault == "overloaded" and stream:
        # 200 and the opening chunk, then an error before any text.
        _, message, type_, code = _FAULTS[fault]
        failed = _sse({"error": {"message": message, "type": type_, "param": None, "code": code}})
        return StreamingResponse(
            sim.paced(request, [chunks[0], failed]), media_type="text/event-stream"
        )
    if fault:
        return fault_response(fault)
    if stream:
        return StreamingResponse(sim.paced(request, chunks), media_type="text/event-stream")
    await sim.delay(request)
    return json_response(result)


@router.post("/v1/chat/completions")
@router.post("/openai/v1/chat/completions")  # Azure's v1 API: the deployment in `model`
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions (also what Ollama's OpenAI-compatible API serves)."""
    return await _handle(request, "chat")


@router.post("/v1/completions")
@router.post("/openai/v1/completions")
async def completions(request: Request) -> Response:
    """Legacy completions; a list of prompts gets one choice per prompt."""
    return await _handle(request, "completions")


@router.post("/v1/embeddings")
@router.post("/openai/v1/embeddings")
async def embeddings(request: Request) -> Response:
    """Embeddings for a string or a list of inputs."""
    return await _handle(request, "embeddings")


@router.post("/openai/deployments/{deployment}/chat/completions")
async def azure_chat(deployment: str, request: Request) -> Response:
    """Azure OpenAI chat; the deployment name is the model."""
    return await _handle(request, "chat", deployment)


@router.post("/openai/deployments/{deployment}/completions")
async def azure_completions(deployment: str, request: Request) -> Response:
    """Azure OpenAI legacy completions."""
    return await _handle(request, "completions", deployment)


@router.post("/openai/deployments/{deployment}/embeddings")
async def azure_embeddings(deployment: str, request: Request) -> Response:
    """Azure OpenAI embeddings."""
    return await _handle(request, "embeddings", deployment)
