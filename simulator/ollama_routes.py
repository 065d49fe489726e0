"""Ollama native wire format: /api/chat (NDJSON streaming by default), /api/embed, /api/tags."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from simulator.faults import BadRequest, Sim, bearer, json_response, read_json
from simulator.openai_routes import to_prompt
from simulator.text import (
    EMBED_DIM,
    Answer,
    Prompt,
    compose,
    digest,
    embedding,
    input_tokens,
    text_tokens,
)

router = APIRouter()

# The locally pulled models and what each can do (Ollama's "capabilities"): one chat model
# without tools or thinking and one for embeddings only, so that Ollama's 400s for what a
# model lacks can be met.  llama3.2 thinks here (not at Ollama), so that reasoning_effort
# has a model to reach in the demo.
TAGS = {
    "llama3.2:latest": ("completion", "tools", "thinking"),
    "qwen2.5:7b": ("completion", "tools"),
    "qwen3:latest": ("completion", "tools", "thinking"),
    "gpt-oss:20b": ("completion", "tools", "thinking"),
    "gemma3:1b": ("completion",),
    "nomic-embed-text:latest": ("embedding",),
}
_EVERYTHING = ("completion", "tools", "thinking", "embedding")
# The pulled models that think only when asked: llama3.2, which cannot think at Ollama at
# all.  Every other pulled model that can think thinks unasked, as Ollama turns thinking
# on when ``think`` is not sent; a name not pulled here (a config's own model) thinks only
# when asked too, so that its answers stay plain.
_THINKS_WHEN_ASKED = frozenset({"llama3.2:latest"})
UNPULLED = "-unpulled"  # in a model's name: a model not pulled (Ollama's 404)
_FAULT_MESSAGES = {
    "500": "internal server error",
    "429": "too many requests, retry later",
    "overloaded": "server busy, please try again.  maximum pending requests exceeded",
}
# ``x-sim-fail: midstream``: the runner dies after the first line of the answer, and the
# stream ends with this ``{"error"}`` line (an answer not streamed is a 500 saying it).
MIDSTREAM = "midstream"
_RUNNER_DIED = "llama runner process has terminated: exit status 2"


def error(status: int, message: str) -> Response:
    """Ollama's error body is ``{"error": "..."}``; 429s carry ``Retry-After``."""
    headers = {"retry-after": "1"} if status == 429 else None
    return json_response({"error": message}, status, headers)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def _gate(request: Request) -> tuple[Sim, dict[str, Any] | Response]:
    sim: Sim = request.app.state.sim
    if not sim.authorized(bearer(request)):
        return sim, error(401, "unauthorized")
    body = await read_json(request)
    if body is None:
        return sim, error(400, "invalid JSON body")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return sim, error(400, "model is required")
    if capabilities(body["model"]) is None:
        return sim, error(404, f'model "{body["model"]}" not found, try pulling it first')
    return sim, body


def _pulled(model: str) -> str:
    """A model's name as pulled: a name without a tag is its ``:latest``."""
    return model if ":" in model else f"{model}:latest"


def capabilities(model: str) -> tuple[str, ...] | None:
    """What a pulled model can do (a name without a tag is its ``:latest``), None for a
    model not pulled: one whose name says so (``-unpulled``), as ``-fail500`` forces a
    fault.  Any other name stands for a model that can do everything, so that a config
    naming its own local models (and the tests' per-test model names) runs on the
    simulator."""
    if UNPULLED in model:
        return None
    return TAGS.get(_pulled(model), _EVERYTHING)


def _check_capable(model: str, body: dict[str, Any], thinks: bool) -> None:
    """Ollama's 400 for a chat its model cannot have: no chat at all (an embedding model),
    tools, or thinking."""
    able = capabilities(model) or ()
    for need, asked in (
        ("completion", True),
        ("tools", bool(body.get("tools"))),
        ("thinking", thinks),
    ):
        if asked and need not in able:
            what = "chat" if need == "completion" else need
            raise BadRequest(f'"{model}" does not support {what}')


def _max_tokens(body: dict[str, Any]) -> int | None:
    options = body.get("options")
    value = options.get("num_predict") if isinstance(options, dict) else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # as Ollama reads a JSON number into an int option
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


THINK_LEVELS = ("low", "medium", "high")


def _thinking(body: dict[str, Any], prompt: Prompt) -> str:
    """What the model thinks first when ``think`` is on (a boolean or a level), or ''.
    A level is gpt-oss's alone, as in Ollama 0.11 and 0.12 (the version reported), which
    refuse it for any other model; later versions take it as true.  Not sent, it is on
    for a pulled model that can think (qwen3, gpt-oss), as Ollama's ChatHandler turns it
    on (``_THINKS_WHEN_ASKED``): such a model spends ``num_predict`` on thinking first."""
    think = body.get("think")
    model = _pulled(str(body["model"]))
    if think is None and "thinking" in TAGS.get(model, ()) and model not in _THINKS_WHEN_ASKED:
        think = True
    if think is None or think is False:
        return ""
    if think is not True and think not in THINK_LEVELS:
        raise BadRequest(f"invalid think value: {think!r} (use true, false, low, medium or high)")
    if isinstance(think, str) and "gpt-oss" not in str(body["model"]).lower():
        raise BadRequest(f'think value "{think}" is not supported for this model')
    return f"Thinking ({think}) about: {prompt.last_user[:60]}. Keep it short."


def _final(
    model: str, answer: Answer, prompt_tokens: int, content: str, thinking: str = ""
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if answer.calls and not answer.truncated:
        # Ollama 0.12 on gives each call an id: "call_" and eight characters.
        message["tool_calls"] = [
            {"id": f"call_{call.id[:8]}", "function": {"name": call.name, "arguments": call.args}}
            for call in answer.calls
        ]
    # Durations are nanoseconds, synthesised from the token counts so they are stable.
    output_tokens = answer.completion_tokens + (text_tokens(thinking) if thinking else 0)
    prompt_ns, eval_ns = prompt_tokens * 100_000, output_tokens * 10_000_000
    return {
        "model": model,
        "created_at": _now(),
        "message": message,
        "done": True,
        "done_reason": "length" if answer.truncated else "stop",
        "total_duration": 1_000_000 + prompt_ns + eval_ns,
        "load_duration": 1_000_000,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": output_tokens,
        "eval_duration": eval_ns,
    }


def _lines(model: str, answer: Answer, prompt_tokens: int, thinking: str) -> list[bytes]:
    created = _now()

    def line(message: dict[str, Any]) -> dict[str, Any]:
        return {"model": model, "created_at": created, "message": message, "done": False}

    # The thinking streams first, in its own lines, as Ollama sends it.
    thoughts = [thinking[i : i + 24] for i in range(0, len(thinking), 24)]
    lines = [line({"role": "assistant", "content": "", "thinking": t}) for t in thoughts]
    lines += [line({"role": "assistant", "content": p}) for p in answer.stream_pieces()]
    final = _final(model, answer, prompt_tokens, "", thinking)
    final["message"].pop("thinking", None)  # already sent
    if "tool_calls" in final["message"]:
        # Ollama sends tool calls in a chunk of their own before the closing one.
        lines.append(line(final["message"]))
        final["message"] = {"role": "assistant", "content": ""}
    return [orjson.dumps(x) + b"\n" for x in [*lines, final]]


class _OptionRefused(Exception):
    """An option of the wrong type: Ollama's ``Options.FromMap`` refuses it as the model
    is scheduled, and ``handleScheduleError`` answers such an error with a 500."""


def _stops(body: dict[str, Any]) -> list[str]:
    """``options.stop``: the sequences the answer stops before, a list of strings (a
    string is refused, as Ollama refuses it)."""
    options = body.get("options")
    stop = options.get("stop") if isinstance(options, dict) else None
    if stop is None:
        return []
    if not isinstance(stop, list):
        raise _OptionRefused('option "stop" must be of type array')
    if not all(isinstance(s, str) for s in stop):
        raise _OptionRefused('option "stop" must be of an array of strings')
    return stop


def _check_arguments(messages: list[Any]) -> None:
    """Ollama binds each tool call's ``arguments`` to an object (api.ToolCallFunction-
    Arguments): a JSON string there (OpenAI's shape) fails the request's binding, a 400."""
    for m in messages:
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        for call in calls if isinstance(calls, list) else []:
            fn = call.get("function") if isinstance(call, dict) else None
            args = fn.get("arguments") if isinstance(fn, dict) else None
            if args is not None and not isinstance(args, dict):
                kind = "string" if isinstance(args, str) else "value"
                raise BadRequest(
                    f"json: cannot unmarshal {kind} into Go struct field ToolCallFunction."
                    "messages.tool_calls.function.arguments of type api.ToolCallFunctionArguments"
                )


def _format(fmt: Any) -> dict[str, Any] | None:
    """Ollama's ``format`` ("json", or a JSON schema) as OpenAI's response_format."""
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"schema": fmt}}
    return None


def _answer(model: str, prompt: Prompt, body: dict[str, Any], thinking: str) -> tuple[str, Answer]:
    """The thinking and the answer within ``num_predict``, which counts both: a thinking
    that fills it is cut there, and the answer is left empty (a tool call cut short is
    never parsed into ``tool_calls``: Ollama sends none)."""
    cap, fmt = _max_tokens(body), _format(body.get("format"))
    thought = text_tokens(thinking)
    if cap is not None and thinking and thought >= cap:
        return thinking[: 4 * cap], Answer(words=[], truncated=True, cap=0)
    left = None if cap is None else cap - thought
    return thinking, compose(model, prompt, left, fmt, stops=_stops(body))


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    """Ollama chat; ``stream`` defaults to true, streaming NDJSON lines."""
    sim, body = await _gate(request)
    if isinstance(body, Response):
        return body
    model = body["model"]
    messages = body.get("messages") or []
    try:
        if not isinstance(messages, list):
            raise BadRequest("messages must be an array")
        _check_arguments(messages)
        prompt = to_prompt(messages, body.get("tools"), None)
        thinking = _thinking(body, prompt)
        _check_capable(model, body, bool(thinking))
        thinking, answer = _answer(model, prompt, body, thinking)
    except BadRequest as exc:
        return error(400, exc.message)
    except _OptionRefused as exc:
        return error(500, str(exc))
    fault = await sim.admit(request, model, "ollama.chat")
    if fault:
        return error(503 if fault == "overloaded" else int(fault), _FAULT_MESSAGES[fault])
    streams = body.get("stream") is not False  # unless told exactly false (null streams)
    if request.headers.get("x-sim-fail") == MIDSTREAM:
        sim.stats.faults[model] += 1
        if not streams:
            await sim.delay(request)
            return error(500, _RUNNER_DIED)
        said = _lines(model, answer, prompt.tokens, thinking)[:-1][:1]  # never the last
        failed = orjson.dumps({"error": _RUNNER_DIED}) + b"\n"
        return await sim.stream(request, [*said, failed], "application/x-ndjson")
    if streams:
        chunks = _lines(model, answer, prompt.tokens, thinking)
        return await sim.stream(request, chunks, "application/x-ndjson")
    await sim.delay(request)
    return json_response(_final(model, answer, prompt.tokens, answer.text, thinking))


@router.post("/api/embed")
async def embed(request: Request) -> Response:
    """Ollama embeddings for a string or a list of strings."""
    sim, body = await _gate(request)
    if isinstance(body, Response):
        return body
    model, raw = body["model"], body.get("input")
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        return error(400, "invalid input type")
    dim = body.get("dimensions") or EMBED_DIM
    if not isinstance(dim, int) or dim < 1:
        return error(400, "dimensions must be a positive integer")
    fault = await sim.admit(request, model, "ollama.embed", len(items))
    if fault:
        return error(503 if fault == "overloaded" else int(fault), _FAULT_MESSAGES[fault])
    await sim.delay(request)
    return json_response(
        {
            "model": model,
            "embeddings": [embedding(i, dim) for i in items],
            "total_duration": 1_000_000,
            "load_duration": 100_000,
            "prompt_eval_count": sum(input_tokens(i) for i in items),
        }
    )


@router.get("/api/tags")
async def tags() -> Response:
    """The locally 'pulled' models."""
    models = [
        {
            "name": name,
            "model": name,
            "modified_at": "2025-01-01T00:00:00Z",
            "size": 2_000_000_000,
            "digest": f"{digest(name):016x}",
            "details": {"format": "gguf", "family": name.split(":")[0], "parameter_size": "3B"},
        }
        for name in TAGS
    ]
    return json_response({"models": models})


@router.get("/api/version")
async def version() -> Response:
    """The server version, which Ollama clients probe."""
    return json_response({"version": "0.12.0"})
