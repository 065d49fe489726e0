"""OpenAI's Responses API (``POST /v1/responses``) to and from the relay's neutral chat body.

The relay keeps no conversation state, so a Responses request is taken as a stateless
one (``store`` is answered ``false``): the whole conversation comes in ``input``, and what
needs a stored response (``previous_response_id``, ``conversation``, ``background``, item
references) or a tool that only OpenAI hosts (web search, file search, code interpreter…)
is refused with a 400 naming the field, as is ``context_management`` (the relay never
compacts or trims the conversation, so every answer says ``truncation: disabled``,
``auto`` asked or not).  Function tools, function calls and their outputs,
images by URL, ``instructions``, ``text.format`` (JSON mode and JSON schema) and
``reasoning.effort`` map onto chat.  A model's reasoning (an Anthropic vendor's thinking,
another's ``reasoning_content``, which the OpenAI adapter also makes of a vendor's
``reasoning``) comes back as a reasoning item, its text the summary;
with ``include: ["reasoning.encrypted_content"]`` an Anthropic vendor's signed thinking
rides in ``encrypted_content``, and a reasoning item sent back with it goes back to the
vendor as that thinking (a tool loop that thinks needs it); another reasoning item sent
back (its reasoning_text, else its summary) goes on as its assistant turn's
``reasoning_content``, as a chat client echoes it: an Ollama vendor reads it as that
turn's thinking, and the OpenAI adapter sends it to no server (OpenAI refuses the
field).  An answer's ``url_citation`` annotations (a search model's) are its text's
annotations, in the Responses API's flat form, streamed as
``response.output_text.annotation.added``.  A function tool keeps the ``strict`` it
was given; one given none runs as chat runs it (not strict), where OpenAI's Responses
API would make its schema strict.  An error raised in chat's words (chat's checks, the
worker's, an OpenAI-format vendor's 400) names the field as the Responses request sent
it (``in_responses_words``).

Every top-level field the openai SDK sends is taken, refused, or ignored on purpose
(``_IGNORED`` says why); any other (chat's ``max_tokens``, ``stop``, ``seed``...) is
refused with OpenAI's own ``unknown_parameter``, as OpenAI refuses it, rather than the
request run without it.
"""

from __future__ import annotations

import base64
import copy
import re
import time
from itertools import groupby
from typing import Any

import orjson

from schemas.errors import BadRequest, RelayError
from schemas.formats.openai import (
    ToolCallIndexes,
    assemble_chunks,
    call_function,
    new_id,
    tool_use_block,
)
from schemas.usage import Usage

_ENCRYPTED = "reasoning.encrypted_content"  # the include that asks for it
# Delta keys of a model's reasoning (see schemas.formats.anthropic for the thinking ones).
_THINKING_KEYS = ("reasoning_content", "thinking_start", "thinking_signature")
_SEALED = "relay-thinking:"  # encrypted_content the relay made, of a vendor's thinking
_THINKING = ("thinking", "redacted_thinking")  # an Anthropic vendor's thinking blocks

_STATEFUL = {
    "previous_response_id": "the relay keeps no responses: send the whole conversation in input",
    "conversation": "the relay keeps no conversations: send the whole conversation in input",
    "background": "background responses are not supported; use the Batch API or "
    "`x-relay-priority: background`",
    "prompt": "stored prompt templates are not supported; send the prompt in input",
    "context_management": "the relay does not compact or trim the conversation; send "
    "in input what the model should see",
}
_ROLES = ("user", "assistant", "system", "developer")
_VERBOSITY = ("low", "medium", "high")  # text.verbosity's values

# The fields read below (those in _STATEFUL are refused when given).
_TAKEN = frozenset(
    {
        "model", "input", "instructions", "stream", "temperature", "top_p", "user",
        "max_output_tokens", "tools", "tool_choice", "parallel_tool_calls", "text",
        "verbosity", "reasoning", "include", "metadata", "truncation", "top_logprobs",
        "moderation", "prompt_cache_options", "service_tier", "prompt_cache_key",
        "safety_identifier", "prompt_cache_retention",
    }
)  # fmt: skip
# Fields the SDK may send that change nothing the relay could do, left aside on purpose.
_IGNORED = {
    "store": "the relay stores no responses: every answer says store: false",
    "stream_options": "its one option obfuscates OpenAI's own events; the relay's carry none",
    "max_tool_calls": "it counts calls to OpenAI-hosted tools, which the relay refuses",
    "background_options": "it only goes with background, which the relay refuses",
    "image": "a hint for how OpenAI compresses images in its context",
    "access_programs": "OpenAI's account access programs; a vendor serves under its own",
}
# Chat's names for a Responses field, for the refusal of a client that sent them.
_CHAT_NAMES = {
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "messages": "input",
    "response_format": "text.format",
    "reasoning_effort": "reasoning.effort",
}


def _known_only(body: dict[str, Any]) -> None:
    """Refuse a field the Responses API does not have, as OpenAI does (``unknown_parameter``,
    which clients read): the relay would run the request without it.  A field sent empty
    (null, [], {}) asks for nothing, as the Messages route also takes it."""
    for key, value in body.items():
        if key in _TAKEN or key in _STATEFUL or key in _IGNORED or value in (None, [], {}):
            continue
        twin = _CHAT_NAMES.get(key)
        why = f"the Responses API calls it {twin}" if twin else "the request would run without it"
        err = BadRequest(f"{key}: unknown parameter ({why})", param=key)
        err.vendor_code = "unknown_parameter"
        raise err


def responses_request_to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses request as the neutral (OpenAI chat) body; ``BadRequest`` names the
    field that cannot be taken."""
    _known_only(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: field required", param="model")
    for field, why in _STATEFUL.items():
        if body.get(field):
            raise BadRequest(f"{field}: {why}", param=field)
    for field in ("metadata", "reasoning", "text", "prompt_cache_options"):
        if body.get(field) is not None and not isinstance(body[field], dict):
            raise BadRequest(f"{field}: must be an object", param=field)
    if body.get("moderation"):
        raise BadRequest(
            "moderation: not supported by the relay (the request would run without it)",
            param="moderation",
        )
    if (body.get("prompt_cache_options") or {}).get("prewarm"):
        raise BadRequest(
            "prompt_cache_options.prewarm: not supported by the relay (it would answer the "
            "request, and bill it, rather than only warm a cache)",
            param="prompt_cache_options.prewarm",
        )
    if not all(isinstance(v, str) for v in (body.get("metadata") or {}).values()):
        raise BadRequest("metadata: values must be strings", param="metadata")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise BadRequest("stream: must be true or false", param="stream")
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise BadRequest("truncation: auto or disabled", param="truncation")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BadRequest("instructions: must be a string", param="instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages += _input_to_messages(body.get("input"))
    if not messages:
        raise BadRequest("input: field required", param="input")

    out: dict[str, Any] = {"model": model, "messages": messages}
    passed = ("temperature", "top_p", "user", "stream", *_CHAT_TWINS)
    for key in passed:
        if body.get(key) is not None:
            out[key] = body[key]
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest("max_output_tokens: a positive integer", param="max_output_tokens")
        out["max_tokens"] = max_tokens
    if body.get("tools"):
        if not isinstance(body["tools"], list):
            raise BadRequest("tools: must be a list", param="tools")
        out["tools"] = [_tool(t, f"tools.{i}") for i, t in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        choice = _tool_choice(body["tool_choice"])  # checked even with no tools to choose
        if "tools" in out:  # chat refuses a tool choice (or parallel calls) without tools
            out["tool_choice"] = choice
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):  # checked even with no tools
        raise BadRequest("parallel_tool_calls: must be true or false", param="parallel_tool_calls")
    if "tools" in out and parallel is not None:
        out["parallel_tool_calls"] = parallel
    if fmt := _response_format(body.get("text")):
        out["response_format"] = fmt
    # text.verbosity, or the SDK's parse(verbosity=...) at the top
    text = body.get("text") or {}
    for where, said in (
        ("text.verbosity", text.get("verbosity")),
        ("verbosity", body.get("verbosity")),
    ):
        if said is not None and said not in _VERBOSITY:
            raise BadRequest(f"{where}: one of {', '.join(_VERBOSITY)}", param=where)
    if verbosity := text.get("verbosity") or body.get("verbosity"):
        out["verbosity"] = verbosity  # chat's own name for it (GPT-5 models)
    include = body.get("include") or []
    if not isinstance(include, list) or not all(isinstance(x, str) for x in include):
        raise BadRequest("include: must be a list of strings", param="include")
    if body.get("top_logprobs") or "message.output_text.logprobs" in include:
        raise BadRequest(
            "top_logprobs: this relay's Responses API returns no logprobs; ask chat "
            "completions with logprobs instead",
            param="top_logprobs",
        )
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort"):
        out["reasoning_effort"] = reasoning["effort"]
    return out


def _input_to_messages(items: Any, origins: list[_Origin] | None = None) -> list[dict[str, Any]]:
    """``input`` as chat's messages; each message's ``_Origin`` added to ``origins``."""
    if isinstance(items, str):
        if origins is not None:
            origins.append(_Origin("input"))
        return [{"role": "user", "content": items}]
    if items is None:
        return []
    if not isinstance(items, list):
        raise BadRequest("input: a string or a list of items", param="input")
    messages: list[dict[str, Any]] = []
    turns: dict[int, list[dict[str, Any]]] = {}  # an assistant turn's blocks, in order
    reasoned: dict[int, list[str]] = {}  # an assistant turn's unsealed reasoning
    thought: list[dict[str, Any]] = []  # thinking sent back, not yet placed in its turn
    text: list[str] = []  # reasoning sent back unsealed, not yet placed in its turn
    for i, item in enumerate(items):
        where = f"input.{i}"
        if not isinstance(item, dict):
            raise BadRequest(f"{where}: must be an object", param=where)
        kind = item.get("type", "message")
        if kind == "reasoning":
            sealed = _thinking_sent_back(item.get("encrypted_content"))
            thought += sealed
            if not sealed and (said_text := _reasoning_text(item)):
                text.append(said_text)
            continue
        had = len(messages)
        said = _input_item(item, kind, where, messages)
        if origins is not None:
            _trace(origins, kind, i, joined=len(messages) == had)
        turn = len(messages) - 1
        if messages[turn]["role"] == "assistant":
            # Thinking goes back where the model thought it: before what it said next.
            turns.setdefault(turn, []).extend([*thought, *said])
            reasoned.setdefault(turn, []).extend(text)
            thought, text = [], []
        elif (thought or text) and turn > 0 and messages[turn - 1]["role"] == "assistant":
            _lead(turns, turn - 1, thought)
            _lead(reasoned, turn - 1, text)
            thought, text = [], []
    if (thought or text) and messages and messages[-1]["role"] == "assistant":
        _lead(turns, len(messages) - 1, thought)
        _lead(reasoned, len(messages) - 1, text)
    for turn, blocks in turns.items():
        _with_thinking(messages[turn], blocks)
    for turn, texts in reasoned.items():
        if texts:
            messages[turn]["reasoning_content"] = "\n\n".join(texts)
    return messages


def _lead(turns: dict[int, list[Any]], turn: int, thought: list[Any]) -> None:
    """Thinking sent back after all its turn said (no item of the turn follows it): it
    leads the turn, where Anthropic wants a tool-use turn's thinking."""
    turns[turn] = [*thought, *turns.get(turn, [])]


def _reasoning_text(item: dict[str, Any]) -> str:
    """What a reasoning item sent back without the relay's seal says: its reasoning_text
    content (a model's own words, where a server gives them), else its summary (where
    the relay puts an OpenAI-format or Ollama vendor's reasoning whole)."""
    for key, kind in (("content", "reasoning_text"), ("summary", "summary_text")):
        parts = item.get(key)
        texts = [
            p["text"]
            for p in (parts if isinstance(parts, list) else [])
            if isinstance(p, dict) and p.get("type") == kind and isinstance(p.get("text"), str)
        ]
        if any(texts):
            return "\n\n".join(t for t in texts if t)
    return ""


def _input_item(
    item: dict[str, Any], kind: str, where: str, messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Put one input item into ``messages``; what it adds to an assistant turn comes back
    as Anthropic blocks, for a turn whose thinking is sent back with it."""
    if kind == "message":
        message = _message(item, where)
        last = messages[-1] if messages else None
        if message["role"] == "assistant" and last and last.get("tool_calls"):
            _fold(last, message["content"])  # (a tool message since would be last)
        else:
            messages.append(message)
        return _text_blocks(message["content"]) if message["role"] == "assistant" else []
    if kind == "function_call":
        if not isinstance(item.get("arguments", ""), str):
            raise BadRequest(f"{where}.arguments: a JSON string", param=f"{where}.arguments")
        call = {
            "id": _text(item, "call_id", where),
            "type": "function",
            "function": {
                "name": _text(item, "name", where),
                "arguments": item.get("arguments") or "{}",
            },
        }
        last = messages[-1] if messages else None
        if last and last["role"] == "assistant":  # the calls of the turn that said it
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        return [tool_use_block(call)]
    if kind == "function_call_output":
        messages.append(
            {
                "role": "tool",
                "tool_call_id": _text(item, "call_id", where),
                "content": _tool_output(item.get("output"), f"{where}.output"),
            }
        )
        return []
    raise BadRequest(f"{where}.type: `{kind}` items are not supported by the relay", param=where)


def _fold(turn: dict[str, Any], content: str | list[dict[str, Any]]) -> None:
    """An assistant message item that follows its turn's function calls (text between
    parallel calls, as Claude writes it; GPT-5's preambles) said by that turn, after what
    it said before: OpenAI-format servers refuse (400) a turn with tool calls followed by
    anything but their tool messages, as a second assistant turn would be.  The turn's
    blocks (``anthropic_content``) keep the text in its place for an Anthropic vendor."""
    if not _text_blocks(content):
        return
    had = turn.get("content")
    turn["content"] = [*_parts(had), *_parts(content)] if had else content


def _parts(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _text_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": p["text"]} for p in _parts(content) if p.get("text")]


def _with_thinking(message: dict[str, Any], blocks: list[dict[str, Any]]) -> None:
    """An assistant turn sent back with its reasoning items, or whose text comes after a
    function call: its blocks as the neutral body's extensions, ``thinking_blocks`` (the
    signed thinking) and ``anthropic_content`` (every block in its place, thinking or
    text between tool calls included), for an Anthropic vendor."""
    thinking = [b for b in blocks if b["type"] in _THINKING]
    if thinking:
        message["thinking_blocks"] = thinking
    kinds = [b["type"] for b in blocks]
    if thinking or ("tool_use" in kinds and "text" in kinds[kinds.index("tool_use") :]):
        message["anthropic_content"] = blocks


def _thinking_sent_back(sealed: Any) -> list[dict[str, Any]]:
    """The thinking blocks a reasoning item's ``encrypted_content`` carries when the relay
    sealed it; nothing for anyone else's (OpenAI's own is opaque, and chat has no slot)."""
    if not isinstance(sealed, str) or not sealed.startswith(_SEALED):
        return []
    try:
        blocks = orjson.loads(base64.b64decode(sealed.removeprefix(_SEALED), validate=True))
    except (ValueError, orjson.JSONDecodeError):
        return []
    if not isinstance(blocks, list):
        return []
    return [b for b in blocks if isinstance(b, dict) and b.get("type") in _THINKING]


def _reasoning_item(
    text: str, blocks: list[dict[str, Any]] | None, request: dict[str, Any], status: str
) -> dict[str, Any]:
    """A model's reasoning as a reasoning item: its text the summary, and its signed
    thinking (an Anthropic vendor's) sealed into ``encrypted_content`` when asked for."""
    item: dict[str, Any] = {"id": new_id("rs_"), "type": "reasoning", "summary": []}
    if text:
        item["summary"] = [{"type": "summary_text", "text": text}]
    item["status"] = status
    _seal(item, blocks, request)
    return item


def _seal(
    item: dict[str, Any], blocks: list[dict[str, Any]] | None, request: dict[str, Any]
) -> None:
    """Put the signed thinking into the reasoning ``item``, if the request asked for it."""
    if blocks and _ENCRYPTED in (request.get("include") or []):
        item["encrypted_content"] = _SEALED + base64.b64encode(orjson.dumps(blocks)).decode()


def _tool_output(output: Any, where: str) -> str | list[dict[str, Any]]:
    """A function's output: a string, or text parts (images and files in a tool result
    have no slot in chat's tool message)."""
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        raise BadRequest(f"{where}: a string or a list of input_text parts", param=where)
    parts = []
    for j, part in enumerate(output):
        if not isinstance(part, dict) or part.get("type") != "input_text":
            raise BadRequest(
                f"{where}.{j}: only input_text parts in a function's output", param=where
            )
        if not isinstance(part.get("text"), str):
            raise BadRequest(f"{where}.{j}.text: field required", param=f"{where}.{j}.text")
        parts.append({"type": "text", "text": part["text"]})
    return parts


def _text(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{where}.{key}: field required", param=f"{where}.{key}")
    return value


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise BadRequest(f"{where}.role: one of {', '.join(_ROLES)}", param=f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content: a string or a list", param=f"{where}.content")
    parts = [_part(p, f"{where}.content.{j}") for j, p in enumerate(content)]
    if role != "user":  # only a user turn may carry images; the rest is text
        if any(p["type"] != "text" for p in parts):
            raise BadRequest(f"{where}.content: only text in a {role} turn", param=where)
    return {"role": role, "content": parts}


# Request fields chat completions takes under the same name, passed on as they are.
_CHAT_TWINS = ("service_tier", "prompt_cache_key", "safety_identifier", "prompt_cache_retention")


def _part(part: Any, where: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise BadRequest(f"{where}: must be an object", param=where)
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        if not isinstance(part.get("text"), str):
            raise BadRequest(f"{where}.text: field required", param=f"{where}.text")
        return {"type": "text", "text": part["text"]}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal", ""))}
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str) or not data.startswith("data:"):
            raise BadRequest(
                f"{where}.file_data: the file inline, as a base64 data URL (file ids and "
                "URLs are not supported)",
                param=f"{where}.file_data",
            )
        # Chat's file part (and an Anthropic vendor's document) takes PDFs only, where
        # Responses takes other documents too: one of another type is the client's 400
        # here, not sent on as a PDF a vendor refuses or misreads.
        media = data[5:].split(",", 1)[0].split(";", 1)[0].strip().lower()
        if media != "application/pdf":
            raise BadRequest(
                f"{where}.file_data: only PDF files (data:application/pdf;base64,...) pass "
                f"through the relay, not `{media or 'no media type'}`",
                param=f"{where}.file_data",
            )
        file = {"filename": str(part.get("filename") or "document.pdf"), "file_data": data}
        return {"type": "file", "file": file}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise BadRequest(
                f"{where}.image_url: an image URL or data URL (file ids are not supported)",
                param=f"{where}.image_url",
            )
        image: dict[str, Any] = {"url": url}
        # chat knows auto, low and high; Responses' "original" (full resolution) is high
        detail = "high" if part.get("detail") == "original" else part.get("detail")
        if detail in ("auto", "low", "high"):
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}
    raise BadRequest(f"{where}.type: `{kind}` content is not supported by the relay", param=where)


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise BadRequest(
            f"{where}.type: only function tools pass through the relay (not `{kind}`)",
            param=where,
        )
    fn: dict[str, Any] = {"name": _text(tool, "name", where)}
    fn |= _typed(tool, _TOOL_FIELDS, where)
    return {"type": "function", "function": fn}


# A function tool's settings (and a JSON schema format's) of their own type, or the
# client's 400 naming them, as OpenAI refuses them, rather than a vendor's 400 later or
# a vendor reading them its own way (a strict of "yes" taken as not strict).
_TOOL_FIELDS = (
    ("description", str, "a string"),
    ("parameters", dict, "a JSON Schema object"),
    ("strict", bool, "true or false"),
)
_FORMAT_FIELDS = (("description", str, "a string"), ("strict", bool, "true or false"))


def _typed(given: dict[str, Any], fields: Any, where: str) -> dict[str, Any]:
    """The ``fields`` ``given`` sets (null: not set), each checked of its type."""
    out = {}
    for key, kind, what in fields:
        said = given.get(key)
        if said is None:
            continue
        if not isinstance(said, kind):
            raise BadRequest(f"{where}.{key}: must be {what}", param=f"{where}.{key}")
        out[key] = said
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadRequest("tool_choice: auto, none, required or a function", param="tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise BadRequest(
            'text.format: an object, e.g. {"type": "json_object"}', param="text.format"
        )
    if fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        for key, kind, what in (("name", str, "a string"), ("schema", dict, "a JSON Schema")):
            if not isinstance(fmt.get(key), kind):
                where = f"text.format.{key}"
                raise BadRequest(f"{where}: {what} (required with json_schema)", param=where)
        schema = {"name": fmt["name"], "schema": fmt["schema"]}
        schema |= _typed(fmt, _FORMAT_FIELDS, "text.format")
        return {"type": "json_schema", "json_schema": schema}
    raise BadRequest("text.format.type: text, json_object or json_schema", param="text.format")


# --------------------------------------------------------------------------------------
# Errors: a field named in chat's words (the relay's checks of the chat body, the
# worker's, an OpenAI-format vendor's) said in the Responses request's.
# --------------------------------------------------------------------------------------

_SEGMENT = re.compile(r"[^.\[\]]+")  # a path's parts: messages.[1].content[0] too
_LEADING_PATH = re.compile(r"[A-Za-z_][\w.\[\]]*")  # what an error message opens with


class _Origin:
    """Where one of chat's messages came from in a Responses request: ``instructions``,
    a string ``input``, a ``message`` item or a function's ``output`` (``item``, its
    index in input), an assistant turn of function ``calls`` alone, or one ``folded``
    of several items' text and calls (its content no one item's); the function calls
    an assistant turn gathered (their items' indices)."""

    __slots__ = ("calls", "item", "kind")

    def __init__(self, kind: str, item: int | None = None) -> None:
        self.kind, self.item = kind, item
        self.calls: list[int] = []


def _trace(origins: list[_Origin], kind: str, i: int, *, joined: bool) -> None:
    """Note where the message input item ``i`` made (or ``joined``: a function call, or
    a message's text, added to the assistant turn before it) came from."""
    if joined and kind == "message":  # (``_fold``)
        origins[-1].kind, origins[-1].item = "folded", None
    elif joined:
        origins[-1].calls.append(i)
    elif kind == "function_call":
        origins.append(_Origin("calls"))
        origins[-1].calls.append(i)
    else:
        origins.append(_Origin("output" if kind == "function_call_output" else "message", i))


def in_responses_words(err: RelayError, request: dict[str, Any]) -> RelayError:
    """``err`` (itself, changed) naming the fields of the Responses ``request`` it answers
    as the client sent them: its ``param``, and the path its message opens with
    (``messages.2.content.0: ...`` is ``input.1.content.0: ...``; ``reasoning_effort``
    ``reasoning.effort``).  A message's index in ``input`` is named only when it is
    sure: a turn several items made (a message and its function calls) is ``input``."""
    head, colon, rest = err.message.partition(":")
    if colon and _LEADING_PATH.fullmatch(head):
        err.message = responses_path(head, request) + colon + rest
    if err.param:
        err.param = responses_path(err.param, request)
    return err


def responses_path(path: str, request: dict[str, Any]) -> str:
    """A field of chat's body (``messages.1.content.0``) as the Responses ``request``
    named it (``input.0.content.0``); a path of no field chat renames, as it is."""
    first, *rest = _SEGMENT.findall(path) or [""]
    if first == "messages":
        return _input_path(rest, request)
    if first == "response_format":  # text.format is json_schema's own fields, flat
        return ".".join(
            ["text.format", *rest[1:]] if rest[:1] == ["json_schema"] else ["text.format", *rest]
        )
    if first == "verbosity":
        text = request.get("text")
        return "text.verbosity" if isinstance(text, dict) and text.get("verbosity") else first
    if first == "tools" and rest[1:2] == ["function"]:  # a function tool's fields, flat
        return ".".join(["tools", rest[0], *rest[2:]])
    if first == "tool_choice" and rest[:1] == ["function"]:
        return ".".join([first, *rest[1:]])
    return _CHAT_NAMES.get(first, path)


def _input_path(rest: list[str], request: dict[str, Any]) -> str:
    """``messages.<rest>`` as the item of ``input`` (or ``instructions``) it came from."""
    origins = [_Origin("instructions")] if request.get("instructions") else []
    try:
        _input_to_messages(request.get("input"), origins)
    except BadRequest:  # (not a request the relay took)
        return "input"
    at = rest[0] if rest else ""
    if not at.isdigit() or int(at) >= len(origins):
        return "input"
    origin, tail = origins[int(at)], rest[1:]
    if origin.kind in ("instructions", "input"):
        return origin.kind
    if tail[:1] == ["tool_calls"]:
        k = tail[1] if len(tail) > 1 else ""
        if not k.isdigit() or int(k) >= len(origin.calls):
            return "input"
        return f"input.{origin.calls[int(k)]}" + _call_field(tail[2:])
    if origin.kind == "folded":  # its content and role: which item's is not said
        return "input"
    if origin.item is None:  # a turn of function calls alone
        return f"input.{origin.calls[0]}" if len(origin.calls) == 1 else "input"
    if origin.calls and not tail:  # the message, or one of its calls: which is not said
        return "input"
    where = f"input.{origin.item}"
    if tail[:1] == ["content"]:
        where += ".output" if origin.kind == "output" else ".content"
        if len(tail) > 1 and tail[1].isdigit():  # parts are taken one for one
            where += f".{tail[1]}" + (
                f".{tail[2]}" if tail[2:3] in (["text"], ["image_url"]) else ""
            )
        return where
    if (origin.kind, tail[:1]) in (("message", ["role"]), ("output", ["tool_call_id"])):
        return where + (".role" if tail[0] == "role" else ".call_id")
    return where


def _call_field(tail: list[str]) -> str:
    """A tool call's field as its function_call item names it."""
    if tail[:1] == ["function"] and tail[1:2] in (["name"], ["arguments"]):
        return f".{tail[1]}"
    return ".call_id" if tail[:1] == ["id"] else ""


# --------------------------------------------------------------------------------------
# Answers: the neutral chat completion (or its chunks) as a Response.
# --------------------------------------------------------------------------------------


def response_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _incomplete(finish: str | None) -> dict[str, str] | None:
    if finish == "length":
        return {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return {"reason": "content_filter"}
    return None


def response_shell(request: dict[str, Any], response_id: str) -> dict[str, Any]:
    """The Response object before any output: what ``response.created`` carries, and
    what every answer is built on (the request's settings echoed back)."""
    tools = [{"type": "function", **t["function"]} for t in _function_tools(request.get("tools"))]
    shell: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": request.get("model"),
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "reasoning": {"effort": (request.get("reasoning") or {}).get("effort"), "summary": None},
        "store": False,
        "temperature": request.get("temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": tools,
        "top_p": request.get("top_p", 1.0),
        # What the relay does, whatever was asked: it never drops input to fit the
        # context window, so a conversation too long is the vendor's 400, as with
        # "disabled" ("auto" is taken, as clients send it by default).
        "truncation": "disabled",
        "usage": None,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }
    for key in _CHAT_TWINS:  # echoed back as sent, as OpenAI does
        if request.get(key) is not None:
            shell[key] = request[key]
    return shell


def _served(shell: dict[str, Any], tier: Any) -> dict[str, Any]:
    """The Response naming the service tier the vendor says served it: OpenAI answers
    with the tier actually used, which may differ from the one asked for.  The
    request's echo stands when the vendor names none."""
    if isinstance(tier, str) and tier:
        return {**shell, "service_tier": tier}
    return shell


def _function_tools(tools: Any) -> list[dict[str, Any]]:
    """The request's function tools in chat's shape (validated when the request was)."""
    if not isinstance(tools, list):
        return []
    return [_tool(t, f"tools.{i}") for i, t in enumerate(tools)]


def _message_item(
    text: str, refusal: bool, status: str = "completed", annotations: Any = None
) -> dict[str, Any]:
    part = (
        {"type": "refusal", "refusal": text}
        if refusal
        else {
            "type": "output_text",
            "text": text,
            "annotations": _annotations(annotations),
            "logprobs": [],
        }
    )
    return {
        "id": new_id("msg_"),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [part],
    }


def _annotations(annotations: Any) -> list[dict[str, Any]]:
    """A chat answer's ``annotations`` as the Responses API's: each ``url_citation`` (a
    search model's, an OpenRouter ``:online`` model's) in its flat form, with the fields
    the SDK reads; another kind (none has a Responses twin here) is left out."""
    out = []
    for annotation in annotations if isinstance(annotations, list) else []:
        if not isinstance(annotation, dict) or annotation.get("type") != "url_citation":
            continue
        cited = annotation.get("url_citation")
        cited = cited if isinstance(cited, dict) else {}
        start, end, url = cited.get("start_index"), cited.get("end_index"), cited.get("url")
        if isinstance(url, str) and type(start) is int and type(end) is int:
            title = cited.get("title")
            out.append(
                {
                    "type": "url_citation",
                    "start_index": start,
                    "end_index": end,
                    "title": title if isinstance(title, str) else "",
                    "url": url,
                }
            )
    return out


def _call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    fn = call_function(call)  # a custom tool's call (never asked for here): its input
    return {
        "id": new_id("fc_"),
        "type": "function_call",
        "status": status,
        "call_id": call.get("id") or new_id("call_"),
        "name": fn.get("name") or "",
        "arguments": _arguments(fn.get("arguments")),
    }


def _arguments(value: Any) -> str:
    """A call's arguments as the JSON text a Response carries: an object (which some
    servers send, and chat's assembler keeps) is written out as JSON."""
    if isinstance(value, str):
        return value
    return "" if value is None else orjson.dumps(value).decode()


def openai_response_to_responses(
    completion: dict[str, Any], usage: Usage, request: dict[str, Any]
) -> dict[str, Any]:
    """A chat completion as the finished Response for ``request``: its text, its refusal
    and its function calls as output items, in the order a stream of it has them."""
    choice = (completion.get("choices") or [None])[0] or {}
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if _thought_in_order(message):  # thinking between tool calls keeps its place
        output += _items_in_order(message, request)
    else:
        if message.get("reasoning_content") or message.get("thinking_blocks"):
            text, blocks = message.get("reasoning_content") or "", message.get("thinking_blocks")
            output.append(_reasoning_item(text, blocks, request, "completed"))
        if message.get("content"):
            said = message["content"]
            output.append(_message_item(said, False, annotations=message.get("annotations")))
        if message.get("refusal"):
            output.append(_message_item(message["refusal"], refusal=True))
        output += [_call_item(call) for call in message.get("tool_calls") or []]
    shell = _served(response_shell(request, new_id("resp_")), completion.get("service_tier"))
    return _finished(shell, output, usage, choice)


def _thought_in_order(message: dict[str, Any]) -> bool:
    """Whether the answer is an Anthropic vendor's that thought, its blocks in order."""
    blocks = message.get("anthropic_content")
    blocks = blocks if isinstance(blocks, list) else []
    return any(isinstance(b, dict) and b.get("type") in _THINKING for b in blocks)


def _items_in_order(message: dict[str, Any], request: dict[str, Any]) -> list[dict[str, Any]]:
    """An Anthropic vendor's blocks as output items in their order, as its stream makes
    them: each run of thinking one reasoning item (sealed, if asked), each run of text
    one message, each tool call its function_call.  Sent back, each reasoning item goes
    to the vendor before what followed it, as the model thought it."""
    calls = {call.get("id"): call for call in message.get("tool_calls") or []}
    output: list[dict[str, Any]] = []
    for kind, run in groupby(message["anthropic_content"], key=_item_kind):
        blocks = list(run)
        if kind == "reasoning":
            text = "".join(b.get("thinking") or "" for b in blocks)
            output.append(_reasoning_item(text, blocks, request, "completed"))
        elif kind == "message":
            output.append(_message_item("".join(b.get("text") or "" for b in blocks), False))
        elif kind == "function_call":
            output += [_call_item(calls.get(b.get("id")) or _as_call(b)) for b in blocks]
    return output


def _item_kind(block: Any) -> str:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind in _THINKING:
        return "reasoning"
    return {"text": "message", "tool_use": "function_call"}.get(str(kind), "")


def _as_call(block: dict[str, Any]) -> dict[str, Any]:
    """A tool_use block as chat's tool call (for one the message's tool_calls lack)."""
    arguments = orjson.dumps(block.get("input") or {}).decode()
    return {"id": block.get("id"), "function": {"name": block.get("name"), "arguments": arguments}}


def _finished(
    shell: dict[str, Any], output: list[dict[str, Any]], usage: Usage, choice: dict[str, Any]
) -> dict[str, Any]:
    incomplete = _incomplete(choice.get("finish_reason"))
    if incomplete and output:
        output[-1]["status"] = "incomplete"  # the item the answer was cut off in
    return {
        **shell,
        "status": "incomplete" if incomplete else "completed",
        "completed_at": int(time.time()),
        "incomplete_details": incomplete,
        "output": output,
        "usage": response_usage(usage),
    }


def _failure_code(err: RelayError) -> str:
    """A failure as one of the error codes OpenAI documents for a failed Response: the
    client's request refused (a vendor's 400, its content filter, a model not found) is
    ``invalid_prompt``, a limit reached (a rate limit; a spent budget, which OpenAI's
    own quota answers with a 429) ``rate_limit_exceeded``; only what failed on the
    serving side (5xx: a vendor down, a deadline passed) is ``server_error``."""
    if err.status in (402, 429):
        return "rate_limit_exceeded"
    if 400 <= err.status < 500:
        return "invalid_prompt"
    return "server_error"


class ChunksToResponseEvents:
    """Chat chunks as the Responses API's stream events, as (event, data): the response
    is created; each run of text (or refusal) is a message item, each tool call a
    function_call item, opened, fed deltas and closed; the response completes with every
    item and the usage.  Every delta names its item, so tool calls whose fragments
    interleave (index 0, 1, 0…) each keep their own item; text closes them."""

    def __init__(self, request: dict[str, Any], response_id: str) -> None:
        self.shell = response_shell(request, response_id)
        self.output: list[dict[str, Any]] = []
        self._seq = 0
        self.request = request
        self._message: tuple[str, int] | None = None  # ("content" | "refusal", output index)
        # Open tool calls: their ``ToolCallIndexes`` number -> output index.
        self._calls: dict[int, int] = {}
        self._indexes = ToolCallIndexes()
        # Calls no fragment has named or given an id yet: number -> their fragments.
        self._held: dict[int, list[dict[str, Any]]] = {}
        self._reasoning: tuple[int, list[dict[str, Any]]] | None = None  # index, its chunks
        self._finish: dict[str, Any] = {}
        self._tier: Any = None  # the service tier the vendor's chunks last named
        self._cites: list[dict[str, Any]] = []  # citations no text message was open for

    def start(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            self._event("response.created", response=self.shell),
            self._event("response.in_progress", response=self.shell),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        if chunk.get("service_tier"):
            self._tier = chunk["service_tier"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if any(delta.get(k) for k in _THINKING_KEYS) or "redacted_thinking" in delta:
                events += self._think(chunk, delta.get("reasoning_content") or "")
            for kind in ("content", "refusal"):
                if text := delta.get(kind):
                    events += self._text(text, kind)
            if cites := _annotations(delta.get("annotations")):
                events += self._cite(cites)
            for frag in delta.get("tool_calls") or []:
                events += self._tool(frag)
            if choice.get("finish_reason"):
                self._finish = choice
        return events

    def finish(self, usage: Usage) -> list[tuple[str, dict[str, Any]]]:
        cut = _incomplete(self._finish.get("finish_reason")) is not None
        events = self._close_all(cut_last=cut)
        texts = [o["content"][0] for o in self.output if o["type"] == "message"]
        if self._cites and (said := [p for p in texts if p["type"] == "output_text"]):
            said[-1]["annotations"] += self._cites  # (where the whole answer has them)
        done = _finished(_served(self.shell, self._tier), self.output, usage, self._finish)
        name = "response.completed" if done["status"] == "completed" else "response.incomplete"
        return [*events, self._event(name, response=done)]

    def error(self, err: RelayError) -> list[tuple[str, dict[str, Any]]]:
        """An ``error`` event (the vendor's own code if it gave one, else the relay's, and
        the field it names), then ``response.failed`` with the output so far and the
        failure in OpenAI's codes: the last ``response.*`` event a client waits for, as
        OpenAI ends a failed response."""
        held = self._open_held()  # (the output so far includes them)
        err = in_responses_words(err, self.request)
        failed = {
            **_served(self.shell, self._tier),
            "status": "failed",
            "output": self.output,
            "error": {"code": _failure_code(err), "message": err.message},
        }
        return [
            *held,
            self._event("error", code=err.openai_code, message=err.message, param=err.param),
            self._event("response.failed", response=failed),
        ]

    # -- items -------------------------------------------------------------------------
    def _think(self, chunk: dict[str, Any], text: str) -> list[tuple[str, dict[str, Any]]]:
        """Reasoning text as a reasoning item's summary; the chunks that carry it are kept
        to seal an Anthropic vendor's signed thinking into the item when it closes."""
        events: list[tuple[str, dict[str, Any]]] = []
        if self._reasoning is None:
            events += self._close_all()
            item = _reasoning_item("", None, self.request, "in_progress")
            events += self._add(item)
            self._reasoning = (len(self.output) - 1, [])
            item["summary"] = [{"type": "summary_text", "text": ""}]
            events.append(
                self._event(
                    "response.reasoning_summary_part.added",
                    **self._in_reasoning(),
                    part=item["summary"][0],
                )
            )
        at, chunks = self._reasoning
        chunks.append(chunk)
        if text:
            self.output[at]["summary"][0]["text"] += text
            events.append(
                self._event(
                    "response.reasoning_summary_text.delta", **self._in_reasoning(), delta=text
                )
            )
        return events

    def _close_reasoning(self, cut: bool = False) -> list[tuple[str, dict[str, Any]]]:
        if self._reasoning is None:
            return []
        at, chunks = self._reasoning
        item = self.output[at]
        part = item["summary"][0]
        events = [
            self._event(
                "response.reasoning_summary_text.done", **self._in_reasoning(), text=part["text"]
            ),
            self._event("response.reasoning_summary_part.done", **self._in_reasoning(), part=part),
        ]
        blocks = assemble_chunks(chunks)["choices"][0]["message"].get("thinking_blocks")
        _seal(item, blocks, self.request)
        item["status"] = "incomplete" if cut else "completed"
        self._reasoning = None
        events.append(self._event("response.output_item.done", output_index=at, item=item))
        return events

    def _in_reasoning(self) -> dict[str, Any]:
        """Where the open reasoning item's one summary part is."""
        assert self._reasoning is not None
        at = self._reasoning[0]
        return {"item_id": self.output[at]["id"], "output_index": at, "summary_index": 0}

    def _text(self, text: str, kind: str) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        if self._message is None or self._message[0] != kind:
            events += self._close_all()
            item = _message_item("", kind == "refusal", status="in_progress")
            part = item["content"].pop()
            events += self._add(item)
            self._message = (kind, len(self.output) - 1)
            item["content"].append(part)
            events.append(self._event("response.content_part.added", **self._at(), part=part))
            if kind == "content" and self._cites:
                cites, self._cites = self._cites, []
                events += self._cite(cites)
        part = self.output[self._message[1]]["content"][0]
        if kind == "refusal":
            part["refusal"] += text
            events.append(self._event("response.refusal.delta", **self._at(), delta=text))
        else:
            part["text"] += text
            events.append(
                self._event("response.output_text.delta", **self._at(), delta=text, logprobs=[])
            )
        return events

    def _cite(self, cites: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """Citations onto the open text's part, each announced (a search model sends them
        after the text they cite); with no text open, held for the next text to open or,
        if none does, for the last one's part in the finished Response (its events have
        gone): the whole answer has them on its one text, whose indices they give."""
        if self._message is None or self._message[0] != "content":
            self._cites += cites
            return []
        said = self.output[self._message[1]]["content"][0]["annotations"]
        events = []
        for cite in cites:
            said.append(cite)
            events.append(
                self._event(
                    "response.output_text.annotation.added",
                    **self._at(),
                    annotation_index=len(said) - 1,
                    annotation=cite,
                )
            )
        return events

    def _tool(self, frag: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        index = self._indexes.of(frag)
        if index in self._calls:
            return self._into_call(self._calls[index], frag)
        self._held.setdefault(index, []).append(frag)
        if not (self._indexes.name(index) or self._indexes.call_id(index)) or not any(
            _arguments(call_function(f).get("arguments")) for f in self._held[index]
        ):
            # Nothing says which call this is yet (some servers open a call with a bare
            # fragment of its arguments and name it, with its id, in the next), or its
            # name may still be coming in pieces (before its arguments): held until it
            # is named and its arguments begin, or other output must go out after it.
            # Its item's call_id and name cannot change once added (the openai SDK
            # refuses a stream whose function_call's call_id differs between its added
            # and done events).
            return []
        return self._open_held(until=index)

    def _open_held(self, until: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Open the held calls, in the order their first fragments came (up to the call
        ``until``, else all), each with the id and name its fragments gave (an id of ours
        and "" when none did), then their arguments."""
        events: list[tuple[str, dict[str, Any]]] = []
        while self._held:
            index, frags = next(iter(self._held.items()))
            del self._held[index]
            events += self._close_reasoning() + self._close_message()
            # An id an earlier item already has (a server resuming a call that text
            # closed) is not taken again: the SDK refuses two items under one call_id.
            taken = {o.get("call_id") for o in self.output}
            call_id = self._indexes.call_id(index)
            name = self._indexes.name(index)
            call = {"id": call_id if call_id not in taken else None, "function": {"name": name}}
            events += self._add(_call_item(call, status="in_progress"))
            at = self._calls[index] = len(self.output) - 1
            for frag in frags:
                events += self._into_call(at, frag)
            if index == until:
                break
        return events

    def _into_call(self, at: int, frag: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """A fragment into the open call at output index ``at``: its arguments, and its
        name when the call had none yet (one that gave its id first: the done events and
        the finished Response name it, as chat's assembler does the whole answer)."""
        fn = call_function(frag)
        item = self.output[at]
        if not item["name"] and fn.get("name"):
            item["name"] = fn["name"]
        raw = fn.get("arguments")
        args = _arguments(raw)
        if not args:
            return []
        # Text fragments add up; an object is the whole arguments, replacing what came
        # before as chat's assembler does (the item's done events say so).
        item["arguments"] = item["arguments"] + args if isinstance(raw, str) else args
        return [
            self._event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=at,
                delta=args,
            )
        ]

    def _add(self, item: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        self.output.append(item)
        index = len(self.output) - 1
        return [self._event("response.output_item.added", output_index=index, item=item)]

    def _close_all(self, cut_last: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """Close what is open: the message, or else the function calls, in output order
        (text closes calls and a call closes the message, so never both); ``cut_last``
        marks the last of them incomplete (the answer was cut off there, its reasoning
        included: response.incomplete says the same of that item).  Calls held for want
        of a name are opened first: they came before what follows."""
        events = self._open_held()
        if self._reasoning is not None:
            return events + self._close_reasoning(cut_last)
        if self._message is not None:
            return events + self._close_message(cut_last)
        calls = sorted(self._calls.values())
        self._calls.clear()
        for at in calls:
            events += self._close_call(at, cut_last and at == calls[-1])
        return events

    def _close_message(self, cut: bool = False) -> list[tuple[str, dict[str, Any]]]:
        if self._message is None:
            return []
        kind, at = self._message
        item = self.output[at]
        part = item["content"][0]
        if kind == "refusal":
            done = self._event("response.refusal.done", **self._at(), refusal=part["refusal"])
        else:
            done = self._event(
                "response.output_text.done", **self._at(), text=part["text"], logprobs=[]
            )
        events = [done, self._event("response.content_part.done", **self._at(), part=part)]
        self._message = None
        item["status"] = "incomplete" if cut else "completed"
        events.append(self._event("response.output_item.done", output_index=at, item=item))
        return events

    def _close_call(self, at: int, cut: bool) -> list[tuple[str, dict[str, Any]]]:
        item = self.output[at]
        item["status"] = "incomplete" if cut else "completed"
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=at,
                name=item["name"],
                arguments=item["arguments"],
            ),
            self._event("response.output_item.done", output_index=at, item=item),
        ]

    def _at(self) -> dict[str, Any]:
        """Where the open message's one content part is."""
        assert self._message is not None
        at = self._message[1]
        return {"item_id": self.output[at]["id"], "output_index": at, "content_index": 0}

    def _event(self, kind: str, /, **data: Any) -> tuple[str, dict[str, Any]]:
        """An event as things stand now: items and parts change as deltas come."""
        data = {k: copy.deepcopy(v) if isinstance(v, dict | list) else v for k, v in data.items()}
        event = {"type": kind, "sequence_number": self._seq, **data}
        self._seq += 1
        return kind, event
