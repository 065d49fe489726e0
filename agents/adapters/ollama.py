"""The native Ollama adapter: ``/api/chat`` (JSON or NDJSON stream) and ``/api/embed``.

Ollama differs from OpenAI in small ways handled here: sampling knobs live in
``options``, images are bare base64 strings beside the text, tool-call arguments are
objects (with ids from Ollama 0.12 on), usage is ``prompt_eval_count`` /
``eval_count``, and a thinking model's ``think`` / ``thinking`` are OpenAI's
``reasoning_effort`` / ``reasoning_content``.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx

from agents.adapters.base import StreamItem, VendorCall, VendorResult
from agents.adapters.http import (
    json_body,
    knobs_struck,
    lines,
    model_limits,
    open_stream,
    refused,
    send,
)
from schemas.config import VendorConfig
from schemas.errors import BadRequest, VendorUnavailable, VendorUnsupported
from schemas.formats.anthropic import thinking_effort, without_cache_control
from schemas.formats.openai import (
    allowed_tool_names,
    choice_name,
    new_id,
    openai_only_refused,
    parse_arguments,
    reasoning_effort,
)
from schemas.usage import Usage

# OpenAI's reasoning_effort -> Ollama's think: a level, which gpt-oss takes as is, or
# true for every other model (``_think``); none and minimal turn thinking off.
_THINK: dict[str, bool | str] = {  # keyed by every one of openai.REASONING_EFFORTS
    "none": False,
    "minimal": False,
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
}
# ``think`` goes when the model refuses it (``knobs_struck``) unless the client asked for
# it (its own ``reasoning_effort``): the relay adds it for an Anthropic client's
# ``thinking``, which a model without thinking (llama3.x, gemma3, qwen2.5...) refuses
# with a 400 '"<model>" does not support thinking'.
_KNOBS = {"think": "reasoning_effort"}
# Content parts /api/chat has no slot for, which other vendors read (a PDF as a ``file``
# part: OpenAI and Anthropic; audio: OpenAI): the next candidate may serve them.
_OTHER_VENDORS_PARTS = ("file", "input_audio")
# OpenAI request field -> Ollama option of the same meaning.
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",  # listed last: the newer name wins
}


class OllamaAdapter:
    """Chat, stream and embed against a native Ollama server (``http://host:11434``)."""

    kind = "ollama"

    def __init__(self, config: VendorConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client
        self.base = config.base_url.rstrip("/")
        # Parsed once: httpx would parse a string URL again on every call.
        self.chat_url = httpx.URL(f"{self.base}/api/chat")
        self.embed_url = httpx.URL(f"{self.base}/api/embed")

    def headers(self, api_key: str) -> dict[str, str]:
        """A local Ollama needs no key; one behind a proxy may want a bearer token."""
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _chat(self, call: VendorCall, body: dict[str, Any]) -> dict[str, Any]:
        """The ``/api/chat`` request of ``call`` sending ``body``: URL, body, headers and
        time limit."""
        return {
            "url": self.chat_url,
            "vendor": self.kind,
            "json": body,
            "headers": self.headers(call.api_key),
            "timeout": call.timeout_s,
        }

    async def chat(self, call: VendorCall) -> VendorResult:
        """One non-streamed chat answer as a ``chat.completion``.  A model that does not
        think is asked again without the ``think`` the relay added (``_KNOBS``); what else
        one local model lacks passes the request on (``model_limits``)."""
        body = chat_request(call.body, call.model, stream=False)
        with model_limits():
            resp = await knobs_struck(
                lambda: send(self.client, "POST", **self._chat(call, body)),
                body,
                call.body,
                _KNOBS,
            )
        data = json_body(resp, self.kind)
        _raise_if_error(data)
        message = data.get("message")
        if data.get("done") is not True or not isinstance(message, dict):
            # A proxy's body, or Ollama's own for a model only loaded (done_reason "load"):
            # never an empty answer to cache, nor a success for the vendor's health.
            raise VendorUnavailable("ollama: HTTP 200 without an answer")
        calls = _tool_calls(message)
        text = message.get("content") or ""
        answer = {
            "id": new_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": data.get("model", call.model),
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text if text or not calls else None,
                        **({"tool_calls": calls} if calls else {}),
                        **_reasoning(message),
                    },
                    "logprobs": None,
                    "finish_reason": _finish_reason(data, bool(calls)),
                }
            ],
        }
        usage = _usage(data, call)
        answer["usage"] = usage.to_openai()
        return VendorResult(answer, usage)

    async def stream(self, call: VendorCall) -> AsyncIterator[StreamItem]:
        """Ollama's NDJSON lines as OpenAI chunks, then one ``Usage``."""
        head = {
            "id": new_id("chatcmpl"),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": call.model,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        tools_seen = 0
        started = False
        body = chat_request(call.body, call.model, stream=True)
        async with AsyncExitStack() as stack:

            async def opened() -> httpx.Response:
                sending = open_stream(self.client, "POST", **self._chat(call, body))
                return await stack.enter_async_context(sending)

            with model_limits():
                resp = await knobs_struck(opened, body, call.body, _KNOBS)
            async for line in lines(resp):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except ValueError:
                    raise VendorUnavailable("ollama: stream sent a line that is not JSON") from None
                _raise_if_error(data)
                if not started:
                    # Only once the vendor has answered with something: until a chunk
                    # is out, the relay may still fall back to another vendor (an error
                    # as the first line is as good as an error status).
                    yield chunk({"role": "assistant", "content": ""})
                    started = True
                message = data.get("message") or {}
                if reasoning := _reasoning(message):
                    yield chunk(reasoning)
                if message.get("content"):
                    yield chunk({"content": message["content"]})
                # Ollama sends each tool call whole, so id, name and arguments go at once.
                for call_ in _tool_calls(message):
                    yield chunk({"tool_calls": [{"index": tools_seen, **call_}]})
                    tools_seen += 1
                if data.get("done"):
                    yield chunk({}, _finish_reason(data, tools_seen > 0))
                    yield _usage(data, call)
                    return
        raise VendorUnavailable("ollama: stream ended before done")

    async def embed(self, call: VendorCall) -> VendorResult:
        """Embeddings via ``/api/embed``, answered as an OpenAI embeddings list."""
        given = call.body.get("input", "")
        if not isinstance(given, str) and not all(isinstance(i, str) for i in given):
            # /api/embed takes text only; a vendor that takes token ids may be next.
            raise VendorUnsupported("ollama: embeddings of token ids are not supported (`input`)")
        # Too long for the model's context is the client's 400, as OpenAI answers it:
        # Ollama otherwise cuts each input to fit (``truncate`` defaults to true) and
        # answers a vector of its start alone.  Older servers ignore the field.
        body: dict[str, Any] = {"model": call.model, "input": given, "truncate": False}
        if call.body.get("dimensions"):
            body["dimensions"] = call.body["dimensions"]
        with model_limits():
            resp = await send(
                self.client,
                "POST",
                self.embed_url,
                vendor=self.kind,
                json=body,
                headers=self.headers(call.api_key),
                timeout=call.timeout_s,
            )
        data = json_body(resp, self.kind)
        _raise_if_error(data)
        vectors = data.get("embeddings")
        if not isinstance(vectors, list) or len(vectors) != (
            1 if isinstance(given, str) else len(given)
        ):
            # Not an answer (a proxy's body): never an empty list passed on as one.
            raise VendorUnavailable("ollama: HTTP 200 without an embedding for each input")
        # An Ollama that says no count (its first /api/embed): estimated, not free.
        counted = data.get("prompt_eval_count")
        usage = Usage(
            input_tokens=int(counted)
            if counted is not None
            else Usage.estimated(call.body, 0).input_tokens
        )
        encode = _base64 if call.body.get("encoding_format") == "base64" else list
        answer = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(vector)}
                for i, vector in enumerate(vectors)
            ],
            "model": data.get("model", call.model),
            "usage": {"prompt_tokens": usage.input_tokens, "total_tokens": usage.input_tokens},
        }
        return VendorResult(answer, usage)


def chat_request(body: dict[str, Any], model: str, *, stream: bool) -> dict[str, Any]:
    """An OpenAI chat body as an Ollama ``/api/chat`` request.

    ``tool_choice`` has no Ollama equivalent: the tools offered stand in for it
    (``_offered_tools``).  Ollama answers one choice per request, without token
    logprobs: ``n`` > 1 and logprobs are refused rather than ignored.
    """
    openai_only_refused(body)
    # An echoed answer's reasoning goes back as the message's thinking, as Ollama keeps it.
    thoughts = [m.get("reasoning_content") for m in body.get("messages") or []]
    # An Anthropic client's thinking, disabled, is think false (without_cache_control
    # turns thinking on into reasoning_effort, and sends nothing for disabled).
    asked = thinking_effort(body)
    body = without_cache_control(body)
    out: dict[str, Any] = {"model": model, "messages": _messages(body), "stream": stream}
    for item, thought in zip(out["messages"], thoughts, strict=True):
        if thought and item["role"] == "assistant":
            item["thinking"] = thought
    if (effort := reasoning_effort(body) or asked) is not None:
        out["think"] = _think(effort, model)
    options = {_OPTIONS[k]: body[k] for k in _OPTIONS if body.get(k) is not None}
    if body.get("top_k") is not None:  # an Anthropic client's: Ollama has the same knob
        options["top_k"] = body["top_k"]
    stop = body.get("stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if options:
        out["options"] = options
    if tools := _offered_tools(body):
        out["tools"] = tools  # Ollama takes OpenAI's tool shape as is
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        out["format"] = "json"
    elif fmt.get("type") == "json_schema":
        out["format"] = (fmt.get("json_schema") or {}).get("schema", "json")
    return out


def _think(effort: str, model: str) -> bool | str:
    """Ollama's ``think`` for an effort.  Levels are gpt-oss's alone (its harmony format):
    Ollama 0.11 and 0.12 refuse a level for any other model (a 400, "think value ... is
    not supported for this model"), later versions take it as true.  The model's family
    is not known here, only its name, so any other name gets true: thinking on, at the
    model's own depth.  A gpt-oss under another name gets true as well, which it takes."""
    think = _THINK[effort]
    if isinstance(think, str) and not any(n in model.lower() for n in ("gpt-oss", "gptoss")):
        return True
    return think


def _offered_tools(body: dict[str, Any]) -> list[Any]:
    """The tools the model may call now.  Ollama has no ``tool_choice``: ``none`` offers
    none, a named function (or OpenAI's ``allowed_tools``) offers only those; that one be
    called (``required``, or a name) cannot be forced, so the model may still answer in
    text."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return []
    if not isinstance(choice, dict):
        return list(tools)
    if choice.get("type") == "allowed_tools":
        names = allowed_tool_names(choice)
    else:
        names = {choice_name(choice)}
    return [t for t in tools if isinstance(t, dict) and choice_name(t) in names - {""}]


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}  # tool call id -> function name, for the tool results
    out = []
    for i, message in enumerate(body.get("messages") or []):
        role = "system" if message.get("role") == "developer" else message.get("role")
        text, images = _content(message.get("content"), i)
        item: dict[str, Any] = {"role": role, "content": text}
        if images:
            item["images"] = images
        calls = []
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            names[call.get("id", "")] = fn.get("name", "")
            calls.append({"function": {"name": fn.get("name", ""), "arguments": _arguments(fn)}})
        if calls:
            item["tool_calls"] = calls
        if role == "tool" and message.get("tool_call_id") in names:
            item["tool_name"] = names[message["tool_call_id"]]
        out.append(item)
    return out


def _arguments(fn: dict[str, Any]) -> dict[str, Any]:
    # Ollama wants the arguments as an object; a model's malformed JSON becomes {}.
    return parse_arguments(fn.get("arguments"))


def _content(content: Any, i: int) -> tuple[str, list[str]]:
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise BadRequest(f"messages.{i}.content: must be a string or a list of parts")
    texts, images = [], []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise BadRequest(f"messages.{i}.content.{j}: a content part must be an object")
        if part.get("type") == "text":
            texts.append(part.get("text", ""))
        elif part.get("type") == "refusal":  # an assistant's refusal in the history
            texts.append(part.get("refusal", ""))
        elif part.get("type") == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else None
            if not isinstance(url, str):
                raise BadRequest(f"messages.{i}.content.{j}.image_url: needs a `url`")
            header, _, data = url.partition(",")
            if not (url.startswith("data:") and ";base64" in header and data):
                # Ollama cannot fetch URLs: it only takes the image bytes themselves (a
                # vendor that fetches them may be the next candidate).
                raise VendorUnsupported(
                    f"messages.{i}.content.{j}: ollama needs base64 data: URLs, not links"
                )
            images.append(data)
        else:
            kind = part.get("type")
            refusal = f"messages.{i}.content.{j}: part type {kind!r} is not supported"
            if kind in _OTHER_VENDORS_PARTS:
                raise VendorUnsupported(f"ollama: {refusal}")
            raise BadRequest(refusal)
    return "\n".join(texts), images


def _tool_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    # Ollama's call ids when it gives them (0.12 on); else the relay makes them, so tool
    # results can refer back.
    calls = []
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        arguments = fn.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments if isinstance(arguments, dict) else {})
        calls.append(
            {
                "id": call.get("id") or new_id("call_"),
                "type": "function",
                "function": {"name": fn.get("name", ""), "arguments": arguments},
            }
        )
    return calls


def _base64(vector: list[float]) -> str:
    """A vector as OpenAI's ``encoding_format: base64`` sends it: little-endian float32s
    (the ``openai`` SDKs for Node ask for this by default and decode it)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _reasoning(message: dict[str, Any]) -> dict[str, str]:
    """A thinking model's reasoning, as the ``reasoning_content`` OpenAI-format clients
    read (DeepSeek's name for it, which LiteLLM and vLLM use too)."""
    return {"reasoning_content": message["thinking"]} if message.get("thinking") else {}


def _finish_reason(data: dict[str, Any], called_tools: bool) -> str:
    if called_tools:
        return "tool_calls"
    return "length" if data.get("done_reason") == "length" else "stop"


def _usage(data: dict[str, Any], call: VendorCall) -> Usage:
    """Ollama's counts: ``prompt_eval_count`` includes the prompt tokens read from its
    cache (``prompt_eval_cached_count``); versions before 0.2 left it out when the whole
    prompt was cached, and it is estimated then rather than metered as nothing."""
    given = data.get("prompt_eval_count")
    prompt = int(given) if given is not None else Usage.estimated(call.body, 0).input_tokens
    return Usage(
        input_tokens=prompt,
        output_tokens=int(data.get("eval_count") or 0),
        cache_read_tokens=min(int(data.get("prompt_eval_cached_count") or 0), prompt),
    )


def _raise_if_error(data: Any) -> None:
    """Ollama reports a failure after its 200 (a runner that crashed mid-stream) as
    ``{"error": "..."}`` alone: its ``streamResponse`` sends a failure before any line as
    that failure's own status (classified as any error response), and drops the status
    from one after content.  So such a line is the vendor's failure, said by it."""
    if isinstance(data, dict) and data.get("error"):
        raise refused(VendorUnavailable(f"ollama: {data['error']}"))
