"""OpenAI wire format (chat, legacy completions, embeddings), also under Azure OpenAI paths."""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from simulator.faults import BadRequest, Sim, bearer, json_response, read_json
from simulator.text import (
    EMBED_DIM,
    Answer,
    Prompt,
    compose,
    digest,
    embedding,
    embedding_b64,
    input_tokens,
    json_pieces,
    new_id,
    text_tokens,
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


def supplied_key(request: Request) -> str | None:
    """The key a call carries: a bearer token at OpenAI; the ``api-key`` header on Azure's
    dated paths; either on Azure's v1 API, which the plain OpenAI client calls with its
    bearer token."""
    path = request.url.path
    if path.startswith("/openai/v1/"):
        return request.headers.get("api-key") or bearer(request)
    return request.headers.get("api-key") if path.startswith("/openai/") else bearer(request)


def missing_api_version(request: Request) -> Response | None:
    """What Azure answers a dated path (``/openai/...`` but not its v1 API) without its
    ``api-version``: a 404 with no OpenAI-style body."""
    path = request.url.path
    dated = path.startswith("/openai/") and not path.startswith("/openai/v1/")
    if dated and not request.query_params.get("api-version"):
        return json_response({"error": {"code": "404", "message": "Resource not found"}}, 404)
    return None


def content_text(content: Any) -> str:
    """Text of an OpenAI/Ollama message content: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


_JSON_TYPES: tuple[tuple[Any, str], ...] = (
    (bool, "a boolean"),
    (str, "a string"),
    (int | float, "a number"),
    (list, "an array"),
    (dict, "an object"),
)


def _json_type(value: Any) -> str:
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), "null")


def check_type(body: dict[str, Any], field: str, kind: type, expected: str) -> Any:
    """``body[field]`` when absent, null or of ``kind``; else OpenAI's 400 ``invalid_type``."""
    value = body.get(field)
    if value is None or (isinstance(value, kind) and (kind is bool or type(value) is not bool)):
        return value
    raise BadRequest(
        f"Invalid type for '{field}': expected {expected}, but got {_json_type(value)} instead.",
        field,
        "invalid_type",
    )


def _function_name(spec: Any) -> str | None:
    """The name in ``{"type": "function", "function": {"name": ...}}`` (or a custom tool's)."""
    if not isinstance(spec, dict):
        return None
    inner = spec.get("function") or spec.get("custom")
    name = inner.get("name") if isinstance(inner, dict) else spec.get("name")
    return name if isinstance(name, str) and name else None


_NO_TOOLS = (
    "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified."
)


def _tool_choice(choice: Any, tools: list[Any]) -> tuple[str, set[str] | None]:
    """The Prompt's tool_choice, and the names of the only tools allowed (None: all),
    after OpenAI's 400s: any tool choice with no tools, a word it does not know, a forced
    function without its name or naming none of the tools, an ``allowed_tools`` list
    naming none of them.  The relay rewrites tool choices between formats: a garbled or
    dropped name must fail here as it would at OpenAI, not get a call of another tool.

    ``{"type": "allowed_tools", "allowed_tools": {"mode": "auto" | "required", "tools":
    [...]}}`` narrows the tools to those listed, and calls one only as ``mode`` says."""
    if choice is None:
        return "auto", None
    if not tools:
        raise BadRequest(_NO_TOOLS, "tool_choice")
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise BadRequest(
                f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and 'required'.",
                "tool_choice",
                "invalid_value",
            )
        return choice, None
    check_type({"tool_choice": choice}, "tool_choice", dict, "a string or an object")
    offered = {n for t in tools if (n := _function_name(t))}
    kind = choice.get("type")
    if kind == "allowed_tools":
        spec = choice.get("allowed_tools")
        spec = spec if isinstance(spec, dict) else {}
        listed = spec.get("tools")
        names = (
            {n for t in listed if (n := _function_name(t))} if isinstance(listed, list) else set()
        )
        if not names & offered:
            raise BadRequest(
                "Invalid value for 'tool_choice': none of the tools 'allowed_tools' lists is "
                "among 'tools'.",
                "tool_choice",
            )
        return ("required" if spec.get("mode") == "required" else "auto"), names
    if kind not in ("function", "custom"):
        raise BadRequest(
            f"Invalid value: {str(kind)!r}. Supported values are: 'function', 'custom', and "
            "'allowed_tools'.",
            "tool_choice.type",
            "invalid_value",
        )
    where, inner = f"tool_choice.{kind}", choice.get(kind)
    if inner is not None and not isinstance(inner, dict):
        raise BadRequest(
            f"Invalid type for '{where}': expected an object, but got {_json_type(inner)} instead.",
            where,
            "invalid_type",
        )
    if inner is None or not isinstance(inner.get("name"), str) or not inner["name"]:
        field = where if inner is None else f"{where}.name"
        raise BadRequest(
            f"Missing required parameter: '{field}'.", field, "missing_required_parameter"
        )
    if inner["name"] not in offered:
        raise BadRequest(
            f"Tool choice '{inner['name']}' not found in 'tools' parameter.", "tool_choice"
        )
    return inner["name"], None


def _parameters(fn: dict[str, Any]) -> dict[str, Any]:
    params = fn.get("parameters")
    if params is None:
        return {}  # no parameters: the function takes none
    if not isinstance(params, dict):
        raise BadRequest(
            "Invalid type for 'tools[].function.parameters': expected an object, but got "
            f"{_json_type(params)} instead.",
            "tools",
            "invalid_type",
        )
    return params


def to_prompt(
    messages: list[Any], tools: Any, tool_choice: Any, *, parallel: bool = True
) -> Prompt:
    """Reduce OpenAI-shaped messages (also Ollama's) to a vendor-neutral Prompt; the tool
    definitions count towards the prompt's tokens, as their JSON."""
    texts: list[str] = []
    last_user = ""
    if tools is not None and not isinstance(tools, list):
        raise BadRequest(
            f"Invalid type for 'tools': expected an array, but got {_json_type(tools)} instead.",
            "tools",
            "invalid_type",
        )
    for m in messages:
        if not isinstance(m, dict):
            raise BadRequest("Each message must be an object.", "messages")
        text = content_text(m.get("content"))
        calls = m.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            fn = call.get("function") if isinstance(call, dict) else None
            fn = fn if isinstance(fn, dict) else {}
            args = fn.get("arguments", "")
            text += str(fn.get("name", "")) + (
                args if isinstance(args, str) else orjson.dumps(args).decode()
            )
        texts.append(text)
        if m.get("role") == "user":
            last_user = text
    last = messages[-1] if messages else {}
    result = texts[-1] if last.get("role") == "tool" else None
    choice, allowed = _tool_choice(tool_choice, tools or [])
    specs: list[tuple[str, dict[str, Any]]] = []
    for t in tools or []:
        fn = (t.get("function") or t) if isinstance(t, dict) else {}
        if isinstance(fn, dict) and fn.get("name"):
            if allowed is None or str(fn["name"]) in allowed:
                specs.append((str(fn["name"]), _parameters(fn)))
    tool_tokens = text_tokens(orjson.dumps(tools).decode()) if tools else 0
    return Prompt(texts, last_user, result, specs, choice, parallel, tool_tokens)


# The models that reason, so take ``reasoning_effort``: OpenAI's o-series and gpt-5
# family, the open reasoning models OpenAI-compatible servers serve (gpt-oss, qwen3,
# DeepSeek's reasoner), and any name saying "reason" or "think" (for tests).  Any other
# model (gpt-4o, gpt-4.1, gpt-3.5-turbo...) refuses the field, as OpenAI's do.
_REASONS = re.compile(r"^(o\d|gpt-5|gpt-oss|qwen3|deepseek-r)|reason|think", re.IGNORECASE)
MAX_CHOICES = 128  # the most answers to one prompt OpenAI gives (``n``)
MAX_BEST_OF = 20  # the most candidates a legacy completion weighs (``best_of``)


def reasons(model: str) -> bool:
    """Whether ``model`` takes ``reasoning_effort`` (``_REASONS``)."""
    return _REASONS.search(model) is not None


def _check_effort(body: dict[str, Any], model: str) -> None:
    """OpenAI's 400 for ``reasoning_effort`` sent to a model that does not reason."""
    if body.get("reasoning_effort") is not None and not reasons(model):
        raise BadRequest(
            "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
            "reasoning_effort",
            "unsupported_parameter",
        )


def _count(body: dict[str, Any], field: str, most: int) -> int:
    """A count field (``n``, ``best_of``): 1 when absent, else an integer 1..``most``, or
    OpenAI's 400 naming it."""
    value = check_type(body, field, int, "an integer")
    if value is None:
        return 1
    if value < 1:
        raise BadRequest(
            f"Invalid '{field}': integer below minimum value. Expected a value >= 1, but "
            f"got {value} instead.",
            field,
            "integer_below_min_value",
        )
    if value > most:
        raise BadRequest(
            f"Invalid '{field}': integer above maximum value. Expected a value <= {most}, "
            f"but got {value} instead.",
            field,
            "integer_above_max_value",
        )
    return value


def _require_model(body: dict[str, Any], model: str | None) -> str:
    model = model or body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    return model


def _max_tokens(body: dict[str, Any]) -> int | None:
    field = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"{field} must be a positive integer.", field)
    return value


def stops(value: Any, field: str = "stop") -> list[str]:
    """The stop sequences of an OpenAI ``stop`` (a string, a list of them, or null);
    OpenAI's 400 ``invalid_type`` for anything else."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return value
    raise BadRequest(
        f"Invalid type for '{field}': expected a string or an array of strings, but got "
        f"{_json_type(value)} instead.",
        field,
        "invalid_type",
    )


def _cache_key(sim: Sim, model: str, prompt: Prompt) -> int | None:
    """The prompt-cache entry a call reads and, once answered, writes (None: too short)."""
    key = prompt.key
    # OpenAI caches automatically on a shared prefix; the first 1024 chars stand for it.
    return digest("openai", model, key[:1024]) if sim.caching(len(key)) else None


def _usage(
    sim: Sim, prompt: Prompt, answers: list[Answer], cache_key: int | None
) -> dict[str, Any]:
    """The usage of a call: the prompt once, the completion tokens of every answer."""
    pt, ct = prompt.tokens, sum(a.completion_tokens for a in answers)
    cached = pt * 3 // 4 if cache_key is not None and sim.cache_seen(cache_key) else 0
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
    """OpenAI's finish_reason; a stop sequence ends an answer with "stop", as the end does."""
    if answer.truncated:  # a tool call cut short too: its arguments are not whole
        return "length"
    return "tool_calls" if answer.calls else "stop"


Chat = tuple[str, list[Answer], dict[str, Any], int | None]  # model, answers, usage, cache key


def _chat(sim: Sim, body: dict[str, Any], model: str | None) -> Chat:
    model = _require_model(body, model)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array.", "messages")
    _check_effort(body, model)
    choices = _count(body, "n", MAX_CHOICES)
    response_format = check_type(body, "response_format", dict, "an object")
    parallel = body.get("parallel_tool_calls") is not False
    prompt = to_prompt(messages, body.get("tools"), body.get("tool_choice"), parallel=parallel)
    cap, cut = _max_tokens(body), stops(body.get("stop"))
    answers = [
        compose(model, prompt, cap, response_format, stops=cut, choice=i) for i in range(choices)
    ]
    key = _cache_key(sim, model, prompt)
    return model, answers, _usage(sim, prompt, answers, key), key


def _message(answer: Answer) -> dict[str, Any]:
    # As OpenAI: content is null beside tool calls (unless there is text too).
    text = answer.text if answer.words or not answer.calls else None
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if answer.calls:
        message["tool_calls"] = [
            {
                "id": "call_" + call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.json},
            }
            for call in answer.calls
        ]
    return message


def _chat_object(model: str, answers: list[Answer], usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {"index": i, "message": _message(a), "logprobs": None, "finish_reason": _finish(a)}
            for i, a in enumerate(answers)
        ],
        "usage": usage,
    }


def chat_result(sim: Sim, body: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """A whole ``chat.completion`` object for a request body (raises BadRequest); an
    answered call, so it writes its prompt-cache entry."""
    model, answers, usage, key = _chat(sim, body, model)
    sim.cache_write(key)
    return _chat_object(model, answers, usage)


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


_SAFE = {"filtered": False, "severity": "safe"}
_FILTERS = {kind: _SAFE for kind in ("hate", "self_harm", "sexual", "violence")}


def _prompt_filter_chunk(prompts: int) -> bytes:
    """The chunk Azure opens every stream with: no choices, its prompt filter's verdicts."""
    results = [{"prompt_index": i, "content_filter_results": _FILTERS} for i in range(prompts)]
    return _sse(
        {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "system_fingerprint": None,
            "prompt_filter_results": results,
        }
    )


Delta = tuple[dict[str, Any], str | None]  # a choice's delta, and its finish reason
_OPENING: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}


class _ChatStream:
    """The chunks of one streamed chat completion (their shared id, model and stamp):
    each chunk carries one choice, and several choices (``n``) take turns, as OpenAI
    interleaves them."""

    def __init__(self, model: str, include_usage: bool, azure: bool, choices: int = 1) -> None:
        self.base = {
            "id": new_id("chatcmpl-"),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": FINGERPRINT,
        }
        self.include_usage = include_usage
        self.azure = azure
        self.choices = choices

    def chunk(self, delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = {**self.base, "choices": [choice]}
        if self.include_usage:
            obj["usage"] = None
        return _sse(obj)

    def opening(self) -> list[bytes]:
        """Azure's prompt-filter chunk, then each choice's empty first delta."""
        filtered = [_prompt_filter_chunk(1)] if self.azure else []
        return [*filtered, *(self.chunk(_OPENING, index=i) for i in range(self.choices))]

    def chunks(self, answers: list[Answer], usage: dict[str, Any]) -> list[bytes]:
        """Each choice's deltas (``_deltas``), a round of one from each at a time, then
        the usage chunk (if asked for) and ``[DONE]``."""
        out = [_prompt_filter_chunk(1)] if self.azure else []
        rounds = itertools.zip_longest(*(_deltas(a) for a in answers))
        for turn in rounds:
            out += [self.chunk(d[0], d[1], i) for i, d in enumerate(turn) if d is not None]
        if self.include_usage:
            out.append(_sse({**self.base, "choices": [], "usage": usage}))
        out.append(b"data: [DONE]\n\n")
        return out


def _deltas(answer: Answer) -> list[Delta]:
    """One choice's deltas: the text's, then each tool call: its id and name with empty
    arguments, then their fragments, at its own index (parallel calls one after
    another); last the empty delta with the finish reason."""
    heads = [
        {
            "index": i,
            "id": "call_" + call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        for i, call in enumerate(answer.calls)
    ]
    out: list[Delta]
    if heads and not answer.words:  # the first call opens the answer
        out = [({"role": "assistant", "content": None, "tool_calls": heads[:1]}, None)]
    else:
        out = [(_OPENING, None)]
        out += [({"content": piece}, None) for piece in answer.stream_pieces()]
    for i, call in enumerate(answer.calls):
        if i or answer.words:
            out.append(({"tool_calls": [heads[i]]}, None))
        out += [
            ({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}, None)
            for piece in json_pieces(call.json)
        ]
    out.append(({}, _finish(answer)))
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


Completions = tuple[str, list[Answer], dict[str, Any], int]  # model, answers, usage, prompts


def _completions(body: dict[str, Any], model: str | None) -> Completions:
    """The answers to a legacy completion: ``n`` per prompt (index prompt * n + j), the
    first ``n`` of its ``best_of`` candidates, each candidate billed (as OpenAI does)."""
    model = _require_model(body, model)
    prompts = _prompts(body)
    n, best_of = _count(body, "n", MAX_CHOICES), _count(body, "best_of", MAX_BEST_OF)
    if body.get("best_of") is not None:
        if best_of < n:
            raise BadRequest(
                f"best_of must be greater than or equal to n (best_of is {best_of}, n is {n}).",
                "best_of",
            )
        if best_of > 1 and body.get("stream") is True:
            raise BadRequest("Cannot stream results with best_of greater than 1.", "best_of")
    best_of = max(best_of, n)
    cap, cut = _max_tokens(body), stops(body.get("stop"))
    keys = [p if isinstance(p, str) else orjson.dumps(p).decode() for p in prompts]
    answers, billed = list[Answer](), 0
    for k in keys:
        candidates = [
            compose(model, Prompt([k], k), cap, stops=cut, choice=j) for j in range(best_of)
        ]
        billed += sum(a.completion_tokens for a in candidates)
        answers += candidates[:n]
    pt = sum(input_tokens(p) for p in prompts)
    usage = {"prompt_tokens": pt, "completion_tokens": billed, "total_tokens": pt + billed}
    return model, answers, usage, len(prompts)


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
    """A ``text_completion`` with ``n`` choices per prompt (raises BadRequest)."""
    model, answers, usage, _ = _completions(body, model)
    return _completion_object(model, answers, usage)


class _CompletionStream:
    """The chunks of one streamed legacy completion."""

    def __init__(self, model: str, prompts: int, include_usage: bool, azure: bool) -> None:
        self.base = {
            "id": new_id("cmpl-"),
            "object": "text_completion",
            "created": int(time.time()),
        }
        self.base |= {"model": model, "system_fingerprint": FINGERPRINT}
        self.prompts = prompts
        self.include_usage = include_usage
        self.azure = azure

    def chunk(self, i: int, text: str, finish: str | None = None) -> bytes:
        choice = {"text": text, "index": i, "logprobs": None, "finish_reason": finish}
        return _sse({**self.base, "choices": [choice]})

    def opening(self) -> list[bytes]:
        """Azure's prompt-filter chunk, then a first chunk with no text yet."""
        filtered = [_prompt_filter_chunk(self.prompts)] if self.azure else []
        return [*filtered, self.chunk(0, "")]

    def chunks(self, answers: list[Answer], usage: dict[str, Any]) -> list[bytes]:
        out = [_prompt_filter_chunk(self.prompts)] if self.azure else []
        for i, a in enumerate(answers):
            out += [self.chunk(i, piece) for piece in a.stream_pieces()]
            out.append(self.chunk(i, "", _finish(a)))
        if self.include_usage:
            out.append(_sse({**self.base, "choices": [], "usage": usage}))
        out.append(b"data: [DONE]\n\n")
        return out


# OpenAI's limits for one embeddings request (its API reference, ``input``), which a
# relay merging callers' inputs into one call must stay under: inputs per request,
# tokens per input (every embedding model's context), tokens summed over the request.
MAX_EMBED_INPUTS = 2048
MAX_EMBED_INPUT_TOKENS = 8192
MAX_EMBED_REQUEST_TOKENS = 300_000
PER_REQUEST = "max_tokens_per_request"  # OpenAI's code (and type) for the last one


def _embed_limits(items: list[Any]) -> None:
    """Refuse what OpenAI refuses of an embeddings request's size, with its messages
    (tokens counted as the simulator bills them: ceil(chars/4), a token list's length)."""
    if len(items) > MAX_EMBED_INPUTS:
        raise BadRequest(
            "'$.input' is invalid. Please check the API reference: "
            "https://platform.openai.com/docs/api-reference."
        )
    counts = [input_tokens(i) for i in items]
    if (total := sum(counts)) > MAX_EMBED_REQUEST_TOKENS:
        raise BadRequest(
            f"Requested {total} tokens, max {MAX_EMBED_REQUEST_TOKENS} tokens per request",
            code=PER_REQUEST,
        )
    if (longest := max(counts)) > MAX_EMBED_INPUT_TOKENS:
        raise BadRequest(
            f"This model's maximum context length is {MAX_EMBED_INPUT_TOKENS} tokens, however "
            f"you requested {longest} tokens ({longest} in your prompt; 0 for the completion). "
            "Please reduce your prompt; or completion length."
        )


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
    _embed_limits(items)
    return items


def embeddings_result(sim: Sim, body: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """An embeddings list object (raises BadRequest)."""
    model = _require_model(body, model)
    items = _embed_inputs(body)
    dim = body.get("dimensions") or EMBED_DIM
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
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


def _stream_flags(body: dict[str, Any], kind: str) -> tuple[bool, bool]:
    """Whether to stream, and whether the stream ends with a usage chunk (raises BadRequest
    for a ``stream`` or ``stream_options`` OpenAI would refuse)."""
    stream = check_type(body, "stream", bool, "a boolean") is True
    options = check_type(body, "stream_options", dict, "an object")
    if options is not None and not stream:
        raise BadRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    return stream and kind != "embeddings", bool((options or {}).get("include_usage"))


async def _handle(request: Request, kind: str, deployment: str | None = None) -> Response:
    """Shared flow: auth, parse, validate, count + faults, latency, answer."""
    sim: Sim = request.app.state.sim
    azure = deployment is not None or request.url.path.startswith("/openai/v1/")
    if (missing := missing_api_version(request)) is not None:
        return missing
    if not sim.authorized(supplied_key(request)):
        return error(401, "Incorrect API key provided.", code="invalid_api_key")
    body = await read_json(request)
    if body is None:
        return error(400, "We could not parse the JSON body of your request.")
    # Azure opens a stream with its prompt filter's chunk on the deployment paths.
    filtered = deployment is not None
    cache_key: int | None = None
    try:
        stream, include_usage = _stream_flags(body, kind)
        if kind == "chat":
            model, answers, usage, cache_key = _chat(sim, body, deployment)
            inputs = 1
            if stream:
                chat = _ChatStream(model, include_usage, filtered, len(answers))
                opening, chunks = chat.opening(), chat.chunks(answers, usage)
            else:
                result = _chat_object(model, answers, usage)
        elif kind == "completions":
            model, answers, usage, inputs = _completions(body, deployment)
            if stream:
                legacy = _CompletionStream(model, inputs, include_usage, filtered)
                opening, chunks = legacy.opening(), legacy.chunks(answers, usage)
            else:
                result = _completion_object(model, answers, usage)
        else:
            result = embeddings_result(sim, body, deployment)
            model, inputs = result["model"], len(result["data"])
    except BadRequest as exc:
        type_ = PER_REQUEST if exc.code == PER_REQUEST else "invalid_request_error"
        return error(400, exc.message, type_, param=exc.param, code=exc.code)
    fault = await sim.admit(request, model, ("azure." if azure else "openai.") + kind, inputs)
    if fault == "overloaded" and stream:
        # 200 and the stream's opening (no text), then an error; nothing was answered.
        _, message, type_, code = _FAULTS[fault]
        failed = _sse({"error": {"message": message, "type": type_, "param": None, "code": code}})
        return await sim.stream(request, [*opening, failed], waited=True)
    if fault:
        return fault_response(fault)
    sim.cache_write(cache_key)  # only a call that is answered writes the prompt cache
    if stream:
        return await sim.stream(request, chunks)
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
    """Legacy completions; a list of prompts gets ``n`` choices per prompt."""
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
