"""OpenAI chat-completion bodies and their streamed chunks, converted both ways."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from schemas.errors import BadRequest, VendorUnsupported

# Word-ish pieces that concatenate back to the exact original text: leading whitespace
# rides with the word after it, and trailing whitespace becomes a piece of its own.
_PIECES = re.compile(r"\s*\S+|\s+")


# OpenAI's reasoning_effort values, least to most; vendors that think map them their way.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")

# Top-level fields that every chunk repeats and a whole answer has once, when the vendor
# sent them at all.
_OPTIONAL_HEAD = ("system_fingerprint", "service_tier")
_HEAD_SAID = ("id", "created", "model", *_OPTIONAL_HEAD)  # what a whole answer takes of them
# Random padding a vendor puts on each streamed chunk against token-length side
# channels: OpenAI's ``obfuscation`` and Mistral's ``p`` (docs.mistral.ai release note,
# 2025-08-27).  It says where a stream is, not what the answer is; another vendor's is
# known by its kind (``_OwnHead``).
_PADDING = ("obfuscation", "p")
# The top-level fields the format itself gives a body or a chunk, and those that say
# where a stream is, not what the answer is: the padding and Perplexity's ``status`` and
# ``type`` (PENDING then COMPLETED; message, info, end_of_stream).  Any other is a
# vendor's own and answer data (Perplexity's ``citations`` and ``search_results``, which
# the text's "[1]" points into; Azure's ``prompt_filter_results``; OpenRouter's
# ``provider``): assembly and replay carry it across (``vendor_fields``).
_HEAD_KEYS = frozenset(
    {"id", "object", "created", "model", "choices", "usage", *_OPTIONAL_HEAD}
    | {*_PADDING, "status", "type"}
)
# How an Anthropic vendor's answer ended, where finish_reason cannot say it: the stop
# sequence it matched, and a stop reason of its own (``schemas.formats.anthropic``).  The
# choice carries them as extensions, through assembly and replay, for Anthropic clients.
OWN_STOP_REASON = "anthropic_stop_reason"
_STOP_EXTENSIONS = ("stop_sequence", OWN_STOP_REASON)
# The fields the format gives a choice, of a body (``message``) or of a chunk (``delta``,
# and Perplexity's ``message``: the answer so far, repeated on each chunk).  Any other is
# a vendor's own (the Anthropic extensions above go their own way), carried across like
# a top-level one: vLLM's ``stop_reason`` (the stop string or token that ended the
# answer, said on the last chunk), OpenRouter's ``native_finish_reason``, Azure's
# ``content_filter_results``.
_CHOICE_KEYS = frozenset(
    {"index", "message", "delta", "finish_reason", "logprobs", *_STOP_EXTENSIONS}
)

# A tool call carries its payload under its type's key: a function's name and JSON
# arguments, or a custom tool's (OpenAI's free-form tools) name and raw input.  A stream
# sends the name once and the second field in fragments, joined in the whole answer.
_CALL_FIELDS = {"function": ("name", "arguments"), "custom": ("name", "input")}
# ``message.audio``: id, expires_at (each said once) and the base64 ``data`` and its
# ``transcript``, which a stream sends as ``delta.audio`` fragments to join.
_AUDIO_JOINED = ("data", "transcript")
_AUDIO_KEYS = frozenset({"id", "expires_at", *_AUDIO_JOINED})
_AUDIO_PIECE = 16_384  # base64 characters per replayed audio delta
# The fields a chat message and a stream's delta have alike.
_MESSAGE_FIELDS = frozenset(
    {
        "role",
        "content",
        "refusal",
        "tool_calls",
        "function_call",
        "audio",
        "annotations",
        "reasoning_content",
    }
)
# What a delta may say that ``assemble_chunks`` puts in the whole answer (``reasoning``:
# the text a vendor sending both also sends as ``reasoning_content``).  The Anthropic
# extensions are ``schemas.formats.anthropic``'s.
_DELTA_KEYS = _MESSAGE_FIELDS | {
    "reasoning",
    "thinking_start",
    "thinking_signature",
    "redacted_thinking",
    "citation",
    "text_block",
}
# A message's keys ``response_to_chunks`` replays in their own way; any other rides whole
# on a delta of its own.
_MESSAGE_KEYS = _MESSAGE_FIELDS | {"thinking_blocks", "anthropic_content"}


def reasoning_effort(body: dict[str, Any]) -> str | None:
    """The request's ``reasoning_effort`` (None when unset), or a 400 naming the field."""
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        allowed = ", ".join(REASONING_EFFORTS)
        raise BadRequest(
            f"reasoning_effort: {effort!r} is not one of {allowed}", param="reasoning_effort"
        )
    return effort


def openai_only_refused(body: dict[str, Any]) -> None:
    """Refuse what a vendor of another kind (Anthropic, Ollama's native API) would drop in
    silence: ``n`` > 1, token ``logprobs``, audio out (``modalities``, ``audio``), web
    search (``web_search_options``), custom (free-text) tools.  An answer quietly
    missing what was asked would be a lie; a 400 names the field.  An OpenAI-format
    candidate can give them all, so it is this candidate's refusal (``VendorUnsupported``):
    the next one is tried before the client hears it."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise VendorUnsupported("n: this model answers one choice per request", param="n")
    if body.get("logprobs") or body.get("top_logprobs"):
        param = "logprobs" if body.get("logprobs") else "top_logprobs"
        raise VendorUnsupported(f"{param}: this model does not return token logprobs", param=param)
    modalities = body.get("modalities")
    if body.get("audio") or (isinstance(modalities, list) and "audio" in modalities):
        param = "audio" if body.get("audio") else "modalities"
        raise VendorUnsupported(f"{param}: this model does not answer in audio", param=param)
    if body.get("web_search_options") is not None:
        raise VendorUnsupported(
            "web_search_options: this model does not search the web", param="web_search_options"
        )
    for i, tool in enumerate(body.get("tools") or []):
        kind = (tool.get("type") or "function") if isinstance(tool, dict) else None
        if kind != "function":
            raise VendorUnsupported(
                f"tools.{i}.type: this model takes function tools only (not {kind!r})",
                param="tools",
            )


def answer_chars(chunk: dict[str, Any]) -> int:
    """Characters of answer a chunk carries: text, reasoning, tool-call arguments (a
    custom tool's input) and an audio answer's transcript."""
    total = 0
    for choice in chunk.get("choices") or []:
        delta = (choice.get("delta") if isinstance(choice, dict) else None) or {}
        calls = [c for c in delta.get("tool_calls") or [] if isinstance(c, dict)]
        if isinstance(delta.get("function_call"), dict):
            calls.append({"function": delta["function_call"]})
        for call in calls:
            arguments = call_function(call).get("arguments")
            total += len(arguments) if isinstance(arguments, str) else 0
        transcript = _object(delta.get("audio")).get("transcript")
        total += len(transcript) if isinstance(transcript, str) else 0
        total += len(delta.get("content") or "") + len(delta.get("reasoning_content") or "")
    return total


def is_custom_call(call: dict[str, Any]) -> bool:
    """Whether a tool call (or a streamed fragment of one) is a custom tool's: its type
    says so, or it carries ``custom`` and no ``function`` (a stream names the type once,
    on the first fragment).  An empty ``custom`` some servers echo on every function
    fragment does not make one."""
    if call.get("type"):
        return bool(call["type"] == "custom")
    return not isinstance(call.get("function"), dict) and bool(call.get("custom"))


def call_function(call: dict[str, Any]) -> dict[str, Any]:
    """A tool call's (or fragment's) ``function``, as formats with function calls alone
    (the legacy ``function_call``, the Responses API's function_call items) carry any
    call: a custom tool's raw input is the arguments.  Keys absent from the fragment stay
    absent."""
    if is_custom_call(call):
        renamed = {"name": "name", "input": "arguments"}
        return {renamed[k]: v for k, v in _object(call.get("custom")).items() if k in renamed}
    return _object(call.get("function"))


class ToolCallIndexes:
    """Which call of a choice each streamed tool-call fragment is part of: a number per
    call, counting up from 0 in the order the calls began (on a stream that numbers its
    calls as OpenAI does, their own ``index``), and each call's id and name so far.

    OpenAI tells parallel calls apart by ``index``; some OpenAI-compatible servers do
    not.  Ollama's ``/v1`` sends each call whole, all at ``index`` 0 (older builds send
    no index at all), and other servers reuse an index likewise; each call still has an
    id of its own.  So at an index that already holds a call, a fragment is another
    call's when the open call's arguments are already whole JSON and the fragment gives
    an id other than the call's (or, with no id, a name other than the call's).  Any
    other fragment goes on with the open call, whatever it says: some servers change a
    call's id after its first fragment (Poolside; mlx-openai-server before its #216),
    stream a name in pieces (Gemini: ``edit_ex``, ``isting_file``) or repeat the id and
    name on every fragment (Fireworks, MiniMax on NIM).  A call keeps the first id it
    was given, and its name is ``more_name``'s.  A fragment with no index goes on with
    the call the last one was part of; an id said before goes back to its own call."""

    def __init__(self) -> None:
        self._at: dict[Any, int] = {}  # the vendor's index -> the call now there
        self._by_id: dict[str, int] = {}  # every id a call was given -> the call
        self._ids: list[str] = []  # each call's first id and name so far ("" until given)
        self._names: list[str] = []
        self._args: list[list[str]] = []  # each call's arguments so far, in pieces
        self._last: Any = 0  # the vendor's index the last fragment had

    def of(self, frag: dict[str, Any]) -> int:
        """The number of the call ``frag`` is part of."""
        given = frag.get("index")
        key = given if isinstance(given, int) else self._last
        call_id = frag.get("id")
        call_id = call_id if isinstance(call_id, str) else ""
        fn = call_function(frag)
        name = fn.get("name")
        name = name if isinstance(name, str) else ""
        n = self._by_id.get(call_id) if call_id else None
        if n is None:
            n = self._at.get(key)
            if n is None or self._begins_another(n, call_id, name):
                n = len(self._ids)
                self._ids.append("")
                self._names.append("")
                self._args.append([])
        self._at[key], self._last = n, key
        if call_id:
            self._ids[n] = self._ids[n] or call_id
            self._by_id.setdefault(call_id, n)
        self._names[n] = more_name(self._names[n], name)
        arguments = fn.get("arguments")
        if isinstance(arguments, str):
            self._args[n].append(arguments)
        elif arguments is not None:  # an object, as some servers send: whole
            self._args[n] = [json.dumps(arguments)]
        return n

    def call_id(self, n: int) -> str:
        """Call ``n``'s id: the first one given ("" until one is)."""
        return self._ids[n]

    def name(self, n: int) -> str:
        """Call ``n``'s name so far ("" until one is given)."""
        return self._names[n]

    def _begins_another(self, n: int, call_id: str, name: str) -> bool:
        """Whether a fragment at call ``n``'s index, giving ``call_id`` (one not said
        before) and ``name``, is another call's."""
        if not (_other(self._ids[n], call_id) or (not call_id and _other(self._names[n], name))):
            return False
        return _whole_json("".join(self._args[n]))


def more_name(had: str, piece: str) -> str:
    """A call's name so far with a fragment's ``piece`` of it: a piece equal to the
    name so far says it again (Fireworks and MiniMax on NIM repeat it on every
    fragment) and adds nothing; any other goes on the end (Gemini streams a name in
    pieces, ``edit_ex`` then ``isting_file``)."""
    return had if piece == had else had + piece


def _whole_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _other(had: str, given: str) -> bool:
    return bool(had and given and had != given)


def choice_name(item: dict[str, Any]) -> str:
    """The tool a tool choice (or a tool) names: ``{"type": "function", "function":
    {"name"}}``, or a custom tool's ``{"type": "custom", "custom": {"name"}}``."""
    return str(_object(item.get(str(item.get("type") or "function"))).get("name") or "")


def allowed_tool_names(choice: dict[str, Any]) -> set[str]:
    """The tools an ``allowed_tools`` choice lets the model call now."""
    listed = _object(choice.get("allowed_tools")).get("tools")
    return {choice_name(t) for t in listed or [] if isinstance(t, dict)}


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def new_id(prefix: str) -> str:
    """A fresh random id such as ``chatcmpl-3f9c…``.

    ``prefix`` is used verbatim when it already ends in ``-`` or ``_`` (``"call_"``,
    ``"msg_"``); otherwise a ``-`` joins it to the random part, as OpenAI does.
    """
    sep = "" if prefix.endswith(("-", "_")) else "-"
    return f"{prefix}{sep}{secrets.token_hex(12)}"


def parse_arguments(raw: Any) -> dict[str, Any]:
    """Tool-call arguments as an object: a model's malformed JSON becomes {} rather than
    failing an answer that was already paid for."""
    if isinstance(raw, dict):  # some OpenAI-compatible servers send objects already
        return raw
    try:
        value = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def tool_use_block(call: dict[str, Any], fallback_id: str = "") -> dict[str, Any]:
    """An OpenAI tool call as an Anthropic ``tool_use`` block (``fallback_id`` for a call
    that came without an id).  Anthropic has no free-form tools: a custom tool's call
    keeps its name, its raw input the ``input`` field of the block's object."""
    fn = call_function(call)
    if is_custom_call(call):
        tool_input: dict[str, Any] = {"input": fn.get("arguments") or ""}
    else:
        tool_input = parse_arguments(fn.get("arguments"))
    return {
        "type": "tool_use",
        "id": call.get("id") or fallback_id,
        "name": fn.get("name", ""),
        "input": tool_input,
    }


def assemble_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge a streamed ``chat.completion.chunk`` list into one ``chat.completion`` body.

    Content and refusal deltas are concatenated per choice, as are the choice's
    ``logprobs`` lists and the delta's ``annotations``; tool calls are merged by their
    ``index``, or what stands for it (``ToolCallIndexes``: a call's first id and type
    are kept, its name pieces joined (``more_name``: one said again adds nothing), the
    fragments of a function's arguments or of a custom tool's input joined), as is a
    legacy ``function_call``; ``audio`` fragments are joined into the message's audio
    (data and transcript concatenated).
    The last usage seen, if any, is kept.  A vendor's own fields, at the top level and a
    choice's (``vendor_fields``), are the answer's as the chunks say them together
    (``_say_more``): one said on each chunk is said whole each time (Perplexity's
    ``citations``), one said once is said there (vLLM's ``stop_reason`` on the last
    chunk), an object's keys add up; a chunk's padding is not (``_OwnHead``).  What
    assembly cannot represent in full is what ``faithful_chunks`` refuses.
    """
    head: dict[str, Any] = {}
    own = _OwnHead(len(chunks))  # the vendor's own top-level fields
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        for key in _HEAD_SAID:
            value = chunk.get(key)
            # Not Azure's opening content-filter chunk's blank id, created and model.
            if key not in head and value is not None and (value or key in _OPTIONAL_HEAD):
                head[key] = value
        if not _HEAD_KEYS.issuperset(chunk):  # the format's fields alone: the common case
            own.add(chunk)
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            _merge_choice(choices.setdefault(choice.get("index", 0), _empty_choice()), choice)

    body: dict[str, Any] = {
        "id": head.get("id", ""),
        "object": "chat.completion",
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": [_finish_choice(i, choices[i]) for i in sorted(choices)],
    }
    for key in _OPTIONAL_HEAD:
        if key in head:
            body[key] = head[key]
    body |= own.fields()
    if usage is not None:
        body["usage"] = usage
    return body


def vendor_fields(holder: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """The fields of a body, a chunk or a choice that are a vendor's own (not in
    ``known``: ``_HEAD_KEYS``, ``_CHOICE_KEYS``), with something to say (not null, nor
    empty)."""
    return {k: v for k, v in holder.items() if k not in known and not _blank(v)}


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def _say_more(own: dict[str, Any], fields: dict[str, Any]) -> bool:
    """A chunk's (or one of its choices') own ``fields`` into ``own``, what the chunks
    before said of them.  A field said again is said as it stands: Perplexity repeats
    its ``citations`` on every chunk, and lists its search results again as they grow.
    An object may say more keys each time, its whole being them all: Groq's ``x_groq``
    adds the usage on the last chunk, and Azure judges a text's categories apart from its
    protected material.  False when one says otherwise than before (a list that does not
    begin with what it was, an object's key said anew): the last word stands, and it is
    not the whole."""
    whole = True
    for key, value in fields.items():
        had = own.get(key)
        if isinstance(had, dict) and isinstance(value, dict):
            whole = whole and all(value[k] == v for k, v in had.items() if k in value)
            value = had | value
        elif had is not None and value != had:
            grew = isinstance(had, list) and isinstance(value, list)
            whole = whole and grew and value[: len(had)] == had
        own[key] = value
    return whole


class _OwnHead:
    """A stream's own top-level fields (``vendor_fields``) as its chunks say them
    together (``_say_more``), less any that says where the stream is: a string said on
    every chunk, each time new (not the one before, nor more of it), is padding as
    ``_PADDING`` is, whatever the vendor names it; neither carried into the whole answer
    nor a contradiction.  A filter's verdict (an object, a list), a string said the same
    twice running, or one said on some chunks only, is the answer's as ever."""

    __slots__ = ("_chunks", "_clashed", "_new", "_said")

    def __init__(self, chunks: int) -> None:
        self._chunks = chunks  # how many the stream has
        self._said: dict[str, Any] = {}
        self._new: dict[str, int] = {}  # a field's sayings so far, each a new string; or -1
        self._clashed: set[str] = set()  # said otherwise than before (``_say_more``)

    def add(self, chunk: dict[str, Any]) -> None:
        """One of the stream's chunks (one saying only the format's fields, ``_HEAD_KEYS``,
        may be left out: it says nothing here)."""
        for key, value in vendor_fields(chunk, _HEAD_KEYS).items():
            had = self._said.get(key)
            new = isinstance(value, str) and not (isinstance(had, str) and value.startswith(had))
            runs = self._new.get(key, 0)
            self._new[key] = runs + 1 if new and runs >= 0 else -1
            if not _say_more(self._said, {key: value}):
                self._clashed.add(key)

    def _padding(self) -> set[str]:
        return {k for k, runs in self._new.items() if runs == self._chunks > 1}

    def whole(self) -> bool:
        """Whether every field but padding said the same, or more, each time."""
        return not self._clashed or self._clashed <= self._padding()

    def fields(self) -> dict[str, Any]:
        """The fields the whole answer carries: all said, but padding."""
        if not self._said:
            return {}
        padding = self._padding()
        return {k: v for k, v in self._said.items() if k not in padding}


def _empty_choice() -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": [],
        "refusal": [],
        "tools": {},
        "indexes": ToolCallIndexes(),  # which call each tool-call fragment is part of
        "function_call": None,  # a legacy answer's: {"name": [...], "arguments": [...]}
        "audio": None,  # {"id", "data": [...], "transcript": [...], "expires_at"?}
        "reasoning": [],
        "annotations": [],
        "logprobs": None,  # {"content": [...], "refusal": [...]} once a chunk carries any
        "order": [],  # segments in arrival order: thinking, redacted, text, tool (see below)
        "cited": False,  # an Anthropic vendor's text cited a document
        "finish": None,
        "extra": {},  # the vendor's own fields of the choice (``_say_more``)
    }


def _merge_choice(acc: dict[str, Any], choice: dict[str, Any]) -> None:
    delta = choice.get("delta") or {}
    if delta.get("role"):
        acc["role"] = delta["role"]
    _merge_thinking(acc, delta)
    if (citation := delta.get("citation")) is not None:
        _text_segment(acc, delta)["citations"].append(citation)
        acc["cited"] = True
    if content := delta.get("content"):
        acc["content"].append(content)
        _text_segment(acc, delta)["pieces"].append(content)
    if refusal := delta.get("refusal"):
        acc["refusal"].append(refusal)
    # Web-search answers send their citations as deltas, often after the text they cite.
    if annotations := delta.get("annotations"):
        acc["annotations"].extend(annotations)
    if logprobs := choice.get("logprobs"):
        merged = acc["logprobs"] = acc["logprobs"] or {"content": [], "refusal": []}
        merged["content"].extend(logprobs.get("content") or [])
        merged["refusal"].extend(logprobs.get("refusal") or [])
    for frag in delta.get("tool_calls") or ():
        _merge_call(acc, frag)
    if isinstance(legacy := delta.get("function_call"), dict):
        acc["function_call"] = _merge_fields(acc["function_call"] or {}, legacy)
    if isinstance(audio := delta.get("audio"), dict):
        _merge_audio(acc, audio)
    if choice.get("finish_reason"):
        acc["finish"] = choice["finish_reason"]
    for key in _STOP_EXTENSIONS:  # an Anthropic vendor's, kept for Anthropic clients
        if choice.get(key):
            acc[key] = choice[key]
    if not _CHOICE_KEYS.issuperset(choice):  # a vendor's own fields: rare, and kept
        _say_more(acc["extra"], vendor_fields(choice, _CHOICE_KEYS))


def _merge_call(acc: dict[str, Any], frag: dict[str, Any]) -> None:
    """One tool-call fragment into its call (``ToolCallIndexes``): the id (the first one
    given, as a live stream says it), the type (the first) and each payload
    (``function``, ``custom``) field by field."""
    index = acc["indexes"].of(frag)
    if index not in acc["tools"]:
        acc["order"].append(("tool", index))
    call = acc["tools"].setdefault(index, {"id": "", "type": "", "payloads": {}})
    call["id"] = acc["indexes"].call_id(index)
    if frag.get("type") and not call["type"]:
        call["type"] = frag["type"]
    for key, payload in frag.items():
        if key not in ("index", "id", "type") and isinstance(payload, dict):
            _merge_fields(call["payloads"].setdefault(key, {}), payload)


def _merge_fields(fields: dict[str, list[Any]], fragment: dict[str, Any]) -> dict[str, list[Any]]:
    """A fragment's fields into ``fields``: text pieces are kept to be joined, anything
    else (an object some servers send as arguments) replaces what came before.  A name
    piece is ``more_name``'s: one equal to the name so far (Fireworks and MiniMax on
    NVIDIA NIM say it again on every fragment) adds nothing, any other is joined to it
    (Gemini streams a name in pieces)."""
    for key, value in fragment.items():
        if key == "name" and isinstance(value, str):
            had = (fields.get(key) or [""])[-1]
            fields[key] = [more_name(had if isinstance(had, str) else "", value)]
        elif isinstance(value, str):
            fields.setdefault(key, []).append(value)
        elif value is not None:
            fields[key] = [value]
    return fields


def _joined(fields: dict[str, list[Any]]) -> dict[str, Any]:
    return {
        key: "".join(parts) if all(isinstance(p, str) for p in parts) else parts[-1]
        for key, parts in fields.items()
    }


def _merge_audio(acc: dict[str, Any], audio: dict[str, Any]) -> None:
    merged = acc["audio"] = acc["audio"] or {"id": "", "data": [], "transcript": []}
    for key, value in audio.items():
        if key in _AUDIO_JOINED:
            merged[key].append(value if isinstance(value, str) else "")
        elif value is not None and value != "":  # id, expires_at: said once (or again)
            merged[key] = value


def _call_kind(call: dict[str, Any]) -> str:
    """A call's type: as the stream named it, else ``custom`` for one that said only a
    custom tool's fields, else ``function``."""
    if call["type"]:
        return str(call["type"])
    said = {k for k, fields in call["payloads"].items() if _says_something(fields)}
    return "custom" if said == {"custom"} else "function"


def _says_something(fields: dict[str, Any]) -> bool:
    return any(p not in ("", None) for parts in fields.values() for p in parts)


def _text_segment(acc: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """The text segment a delta's text or citation belongs to: the open one, unless the
    delta names another Anthropic text block (``text_block``: an answer that cites sends
    each cited span as a block of its own, its citations first)."""
    order, block = acc["order"], delta.get("text_block")
    if order and order[-1][0] == "text" and order[-1][1]["block"] == block:
        return order[-1][1]  # type: ignore[no-any-return]
    segment: dict[str, Any] = {"pieces": [], "citations": [], "block": block}
    order.append(("text", segment))
    return segment


def _merge_thinking(acc: dict[str, Any], delta: dict[str, Any]) -> None:
    """A delta's thinking extensions (see ``schemas.formats.anthropic``): any
    ``reasoning_content`` is kept as reasoning text; an Anthropic thinking block is opened
    by ``thinking_start`` (or by a signature with no text before it), fed that text and
    closed by its ``thinking_signature``; ``redacted_thinking`` is a block of its own."""
    order = acc["order"]
    last = order[-1] if order else None
    open_block = None
    if (
        last
        and last[0] == "thinking"
        and last[1]["type"] == "thinking"
        and not last[1]["signature"]
    ):
        open_block = last[1]
    if delta.get("thinking_start"):
        open_block = {"type": "thinking", "thinking": "", "signature": ""}
        order.append(("thinking", open_block))
    if text := delta.get("reasoning_content"):
        acc["reasoning"].append(text)
        if open_block is not None:
            open_block["thinking"] += text
    if sig := delta.get("thinking_signature"):
        if open_block is None:  # a block whose thinking was omitted: signature only
            open_block = {"type": "thinking", "thinking": "", "signature": ""}
            order.append(("thinking", open_block))
        open_block["signature"] = sig
    if (data := delta.get("redacted_thinking")) is not None:
        order.append(("thinking", {"type": "redacted_thinking", "data": data}))


def _finish_choice(index: int, acc: dict[str, Any]) -> dict[str, Any]:
    # OpenAI sends ``content: null`` for a pure tool-call or refusal answer, "" for an
    # empty one.
    text = "".join(acc["content"])
    said_else = acc["tools"] or acc["refusal"] or acc["audio"] or acc["function_call"]
    message: dict[str, Any] = {
        "role": acc["role"],
        "content": text if text or not said_else else None,
    }
    if acc["refusal"]:
        message["refusal"] = "".join(acc["refusal"])
    if acc["reasoning"]:
        message["reasoning_content"] = "".join(acc["reasoning"])
    if acc["annotations"]:
        message["annotations"] = acc["annotations"]
    if (audio := acc["audio"]) is not None:
        message["audio"] = {**audio, **_joined({k: audio[k] for k in _AUDIO_JOINED})}
    if acc["function_call"] is not None:
        message["function_call"] = {"name": "", "arguments": ""} | _joined(acc["function_call"])
    calls: dict[int, dict[str, Any]] = {}
    if acc["tools"]:
        message["tool_calls"] = []
        for n, call in sorted(acc["tools"].items()):
            kind = _call_kind(call)
            payload = _joined(call["payloads"].get(kind, {}))
            if kind in _CALL_FIELDS:
                payload = dict.fromkeys(_CALL_FIELDS[kind], "") | payload
            calls[n] = {"id": call["id"], "type": kind, kind: payload}
            message["tool_calls"].append(calls[n])
    thought = any(kind == "thinking" for kind, _ in acc["order"])
    if thought:
        message["thinking_blocks"] = [seg for kind, seg in acc["order"] if kind == "thinking"]
    if thought or acc.get("cited") or _text_after_call(acc["order"]):
        # Anthropic's blocks in order, for an Anthropic client (content has all the text,
        # and before the tool calls): what the stream said, not only what OpenAI keeps.
        message["anthropic_content"] = [_anthropic_block(seg, calls) for seg in acc["order"]]
    finish = acc["finish"]
    if finish is None and audio is not None and "expires_at" in audio:
        # An audio answer's stream may end on its expiry, with no finish_reason: it said
        # all it had to (openai-node's stream helper takes it so, as ``stop``).
        finish = "stop"
    out = {
        "index": index,
        "message": message,
        "logprobs": _finish_logprobs(acc["logprobs"]),
        "finish_reason": finish,
    }
    out |= {key: acc[key] for key in _STOP_EXTENSIONS if acc.get(key)}
    return out | acc["extra"] if acc["extra"] else out


def _text_after_call(order: list[tuple[str, Any]]) -> bool:
    """Whether a stream said text after a tool call (an Anthropic vendor's text, tool_use,
    text answer): a whole answer keeps that text where it was only in its blocks."""
    kinds = [kind for kind, _ in order]
    return "tool" in kinds and "text" in kinds[kinds.index("tool") :]


def _finish_logprobs(merged: dict[str, Any] | None) -> dict[str, Any] | None:
    """A choice's logprobs as a whole answer has them: ``refusal`` is null, not [], when
    the model refused nothing."""
    if merged is None:
        return None
    return {"content": merged["content"], "refusal": merged["refusal"] or None}


def _anthropic_block(segment: tuple[str, Any], calls: dict[int, dict[str, Any]]) -> dict[str, Any]:
    kind, value = segment
    if kind == "thinking":
        return value  # type: ignore[no-any-return]
    if kind == "text":
        text = {"type": "text", "text": "".join(value["pieces"])}
        return text | ({"citations": value["citations"]} if value["citations"] else {})
    return tool_use_block(calls[value])


def _anthropic_deltas(content: list[Any]) -> list[dict[str, Any]]:
    """The deltas that replay an Anthropic answer's blocks in their order (thinking
    between tool calls included), thinking as the extensions ``MessageEventsToChunks``
    makes of it."""
    deltas: list[dict[str, Any]] = []
    tools = 0
    cited = any(isinstance(b, dict) and b.get("citations") for b in content)
    for n, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "thinking":
            start: dict[str, Any] = {"thinking_start": True}
            if block.get("thinking"):
                start["reasoning_content"] = block["thinking"]
            deltas.append(start)
            if block.get("signature"):
                deltas.append({"thinking_signature": block["signature"]})
        elif kind == "redacted_thinking":
            deltas.append({"redacted_thinking": block.get("data", "")})
        elif kind == "text" and cited:  # each text block apart, its citations first
            deltas += [{"citation": c, "text_block": n} for c in block.get("citations") or []]
            pieces = _PIECES.findall(block.get("text", ""))
            deltas += [{"content": piece, "text_block": n} for piece in pieces]
        elif kind == "text":
            deltas += [{"content": piece} for piece in _PIECES.findall(block.get("text", ""))]
        elif kind == "tool_use":
            fn = {"name": block.get("name", ""), "arguments": json.dumps(block.get("input") or {})}
            deltas += _call_deltas(
                tools, {"id": block.get("id"), "type": "function", "function": fn}
            )
            tools += 1
    return deltas


def _call_deltas(index: int, call: dict[str, Any]) -> list[dict[str, Any]]:
    """One tool call as a stream sends it: id, type and name first, then its arguments
    (a custom tool's input).  What else the call carries rides whole on the first."""
    kind = call.get("type") or ("custom" if is_custom_call(call) else "function")
    start: dict[str, Any] = {"index": index, "id": call.get("id"), "type": kind}
    start |= {k: v for k, v in call.items() if k not in ("index", "id", "type")}
    if kind not in _CALL_FIELDS:  # a type of call the relay does not know: as it is
        return [{"tool_calls": [start]}]
    payload = _object(call.get(kind))
    name, streamed = _CALL_FIELDS[kind]
    start[kind] = {**payload, name: payload.get(name) or "", streamed: ""}
    deltas = [{"tool_calls": [start]}]
    if value := payload.get(streamed):
        deltas.append({"tool_calls": [{"index": index, kind: {streamed: value}}]})
    return deltas


def _audio_deltas(audio: dict[str, Any]) -> list[dict[str, Any]]:
    """An audio answer as OpenAI streams it: its id with the transcript's first piece,
    the rest of the transcript, the data in pieces, and its expiry last."""
    first = {k: v for k, v in audio.items() if k not in (*_AUDIO_JOINED, "expires_at")}
    transcript, data = audio.get("transcript"), audio.get("data")
    pieces = _PIECES.findall(transcript) if isinstance(transcript, str) else []
    if transcript and not pieces:
        first["transcript"] = transcript  # not text: as it is
    deltas = [{"audio": first | ({"transcript": pieces[0]} if pieces else {})}]
    deltas += [{"audio": {"transcript": piece}} for piece in pieces[1:]]
    if isinstance(data, str):
        step = _AUDIO_PIECE
        deltas += [{"audio": {"data": data[i : i + step]}} for i in range(0, len(data), step)]
    elif data is not None:
        deltas.append({"audio": {"data": data}})
    if "expires_at" in audio:
        deltas.append({"audio": {"expires_at": audio["expires_at"]}})
    return deltas


def _function_call_deltas(call: dict[str, Any]) -> list[dict[str, Any]]:
    """A legacy ``function_call`` as a stream sends it: the name, then the arguments."""
    deltas = [{"function_call": {**call, "name": call.get("name") or "", "arguments": ""}}]
    if arguments := call.get("arguments"):
        deltas.append({"function_call": {"arguments": arguments}})
    return deltas


def response_to_chunks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks a stream would have sent for ``body`` (used to replay cached answers).

    Per choice: a role chunk, the content split into word-ish pieces, an audio answer's
    transcript and data in pieces, each tool call as one chunk with its id and name
    followed by one with its arguments (a custom tool's input), any other field of the
    message whole in a chunk of its own, and a finish chunk.  No usage chunk: the caller
    adds its own.  A vendor's own top-level fields (``vendor_fields``: Perplexity's
    ``citations``) ride on the first chunk and the last, where clients look for them
    (Azure says ``prompt_filter_results`` first, Perplexity's concise stream its
    citations last), not on every word of the replay; a choice's own (vLLM's
    ``stop_reason``) on its finish chunk, as vLLM says it.
    """
    head = {
        "id": body.get("id", ""),
        "object": "chat.completion.chunk",
        "created": body.get("created", 0),
        "model": body.get("model", ""),
    }
    for key in _OPTIONAL_HEAD:
        if body.get(key):
            head[key] = body[key]

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

    def last(index: int, choice: dict[str, Any]) -> dict[str, Any]:
        end = chunk(index, {}, choice.get("finish_reason") or "stop")
        # An Anthropic vendor's, kept for Anthropic clients.
        end["choices"][0] |= {key: choice[key] for key in _STOP_EXTENSIONS if choice.get(key)}
        end["choices"][0] |= vendor_fields(choice, _CHOICE_KEYS)
        return end

    out: list[dict[str, Any]] = []
    for choice in body.get("choices") or []:
        i = choice.get("index", 0)
        deltas = _message_deltas(choice.get("message") or {})
        chunks = [chunk(i, d) for d in deltas]
        if choice.get("logprobs"):
            # The pieces are words, not tokens, so splitting the logprobs to match them
            # would be guesswork. The whole object rides on the choice's first text
            # chunk instead: a client that joins logprobs across chunks (as the SDKs do)
            # gets exactly the stored lists back.
            text = (n for n, d in enumerate(deltas) if d.get("content") or d.get("refusal"))
            chunks[next(text, 0)]["choices"][0]["logprobs"] = choice["logprobs"]
        out += chunks
        out.append(last(i, choice))
    if out and (extra := vendor_fields(body, _HEAD_KEYS)):
        for end in (out[0], out[-1]):
            end |= extra
    return out


def _message_deltas(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The deltas that replay one choice's message, starting with its role."""
    # OpenAI opens an answer of no text (tool calls, audio) with ``content: null``.
    opening = "" if isinstance(message.get("content"), str) else None
    deltas: list[dict[str, Any]] = [{"role": message.get("role", "assistant"), "content": opening}]
    if isinstance(message.get("anthropic_content"), list):  # Anthropic's, in order
        return deltas + _anthropic_deltas(message["anthropic_content"])
    if message.get("reasoning_content"):
        deltas.append({"reasoning_content": message["reasoning_content"]})
    content = message.get("content")
    if isinstance(content, str):
        deltas += [{"content": piece} for piece in _PIECES.findall(content)]
    if message.get("refusal"):
        deltas.append({"refusal": message["refusal"]})
    if message.get("annotations"):  # after the text they cite, as OpenAI streams them
        deltas.append({"annotations": message["annotations"]})
    if isinstance(message.get("audio"), dict):
        deltas += _audio_deltas(message["audio"])
    if isinstance(message.get("function_call"), dict):
        deltas += _function_call_deltas(message["function_call"])
    for n, call in enumerate(message.get("tool_calls") or []):
        deltas += _call_deltas(n, call)
    # A field of a vendor's own: a client's SDK takes it back from one delta as it was.
    deltas += [{k: v} for k, v in message.items() if k not in _MESSAGE_KEYS and v is not None]
    return deltas


def faithful_chunks(chunks: list[dict[str, Any]]) -> bool:
    """Whether ``assemble_chunks`` makes of ``chunks`` the whole answer in full: every
    delta says only what assembly keeps (an unknown field's number or flag is the
    chunk's, a token id say, not the answer's), a tool call is a function's or a custom
    tool's and says only that call's fields, and audio only its own; and a vendor's own
    field, at the top level or a choice's, says the same each time it is said, or more
    (``_say_more``): Azure's ``content_filter_results`` judge each piece of text apart,
    and two that differ on one category are no one answer's (a chunk's padding, new on
    each, is no contradiction: ``_OwnHead``).  An answer it cannot make whole is not one
    to cache: a later non-streamed request would get less than the vendor said."""
    said: dict[tuple[Any, Any], tuple[str, set[str]]] = {}  # call -> its type, payloads
    indexes: dict[Any, ToolCallIndexes] = {}  # per choice: which call a fragment is part of
    own = _OwnHead(len(chunks))  # the vendor's own top-level fields, as said so far
    owns: dict[Any, dict[str, Any]] = {}  # and each choice's
    for chunk in chunks:
        if not _HEAD_KEYS.issuperset(chunk):
            own.add(chunk)
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            if not _CHOICE_KEYS.issuperset(choice):
                said_so_far = owns.setdefault(choice.get("index", 0), {})
                if not _say_more(said_so_far, vendor_fields(choice, _CHOICE_KEYS)):
                    return False
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            if not _DELTA_KEYS.issuperset(delta) and not all(
                k in _DELTA_KEYS or _incidental(v) for k, v in delta.items()
            ):
                return False
            if "function_call" in delta or "audio" in delta:
                if not _plain_fields(delta.get("function_call"), ("name", "arguments")):
                    return False
                if not _plain_fields(delta.get("audio"), _AUDIO_KEYS):
                    return False
            for frag in delta.get("tool_calls") or []:
                if not isinstance(frag, dict):
                    return False
                at = choice.get("index", 0)
                key = (at, indexes.setdefault(at, ToolCallIndexes()).of(frag))
                kind, payloads = said.get(key, ("", set()))
                kind = kind or frag.get("type") or ""
                if kind and kind not in _CALL_FIELDS:
                    return False
                for name, value in frag.items():
                    if name in ("index", "id", "type") or _incidental(value):
                        continue
                    if name not in _CALL_FIELDS or not _plain_fields(value, _CALL_FIELDS[name]):
                        return False
                    if any(v not in ("", None) for v in value.values()):
                        payloads.add(name)
                said[key] = (kind, payloads)
    if not own.whole():
        return False
    # A call says one payload, its type's (or, unnamed, the one its type is taken from).
    return all(len(p) <= 1 and (not k or p <= {k}) for k, p in said.values())


def _incidental(value: Any) -> bool:
    """Whether a field says nothing of the answer: empty, or a number or flag."""
    return value is None or isinstance(value, bool | int | float) or value in ("", [], {})


def _plain_fields(value: Any, fields: Any) -> bool:
    """Whether ``value`` is absent, or an object of text (or numbers) in ``fields``."""
    if value is None:
        return True
    return isinstance(value, dict) and all(
        k in fields and (v is None or isinstance(v, str | int)) for k, v in value.items()
    )
