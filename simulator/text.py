"""Deterministic answers, token counts, tool arguments and embeddings: same input, same output."""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import os
import random
import struct
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

VOCAB = (
    "alpha bravo cedar delta ember falcon garnet harbor indigo juniper kestrel lantern meadow "
    "nectar orchid pepper quartz river saffron timber umber velvet willow xenon yarrow zephyr "
    "amber basil cobalt dune echo fjord glacier hazel iris jasper kelp lotus maple nova olive "
    "prism quill reed sable tundra ultra vessel wander yonder zinc anchor beacon canyon drift "
    "ether flint grove haven"
).split()

TOOL_KEYWORDS = ("weather", "tool")
# A last user turn saying one of these asks for every offered tool at once (parallel calls).
EVERY_TOOL = ("both tools", "all tools", "each tool", "every tool")
# What Claude writes before the tool calls it chooses to make (tool_choice auto), unless
# the user told it outright to use one (a last turn that begins with "use ").
PREAMBLE = "Let me check that."
EMBED_DIM = 16

# Ids only need to be unique per process; a random prefix keeps restarts apart cheaply.
_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count(1)


def new_id(prefix: str) -> str:
    """Return a fresh, process-unique id such as ``chatcmpl-3fa2c1d0000000000007``."""
    return f"{prefix}{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def digest(*parts: str) -> int:
    """Hash text parts into a stable 64-bit integer (stable across processes, unlike hash())."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return int.from_bytes(h.digest(), "big")


def prompt_tokens(texts: list[str]) -> int:
    """Approximate prompt tokens: ceil(chars/4) over all message text plus 3 per message."""
    return math.ceil(sum(len(t) for t in texts) / 4) + 3 * len(texts)


def text_tokens(text: str) -> int:
    """Approximate tokens of one piece of text (no per-message overhead)."""
    return math.ceil(len(text) / 4)


@dataclass(slots=True)
class Prompt:
    """A conversation reduced to what the simulator answers from, whatever the vendor."""

    texts: list[str]
    last_user: str = ""
    tool_result: str | None = None
    tools: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    tool_choice: str = "auto"  # "auto", "none", "required", or a tool name to force
    parallel: bool = True  # several tool calls in one answer allowed
    # What the tool definitions (and any tool-use system prompt the vendor adds) cost.
    tool_tokens: int = 0

    @property
    def key(self) -> str:
        """The text the answer is derived from."""
        return "\n".join(self.texts)

    @property
    def tokens(self) -> int:
        """Prompt tokens as reported in usage: the messages and the tool definitions."""
        return prompt_tokens(self.texts) + self.tool_tokens


@dataclass(slots=True)
class Call:
    """One tool call.  ``budget``: when max_tokens cut the call short, how many characters
    of its arguments' JSON were written before the cut (None: the call is whole)."""

    name: str
    args: dict[str, Any]
    id: str
    budget: int | None = None

    @property
    def whole_json(self) -> str:
        """The arguments as JSON, whole."""
        return orjson.dumps(self.args).decode()

    @property
    def json(self) -> str:
        """The arguments as the JSON string OpenAI-style vendors send: when max_tokens cut
        the call, only what was written before the cut (no longer valid JSON)."""
        whole = self.whole_json
        return whole if self.budget is None else whole[: self.budget]

    @property
    def tokens(self) -> int:
        """Output tokens of the call: its name and arguments by the chars/4 rule."""
        return text_tokens(self.name + self.json)

    def finished_args(self) -> tuple[dict[str, Any], str]:
        """The arguments as a vendor that holds each value back until it is whole
        (Anthropic) gives a call that max_tokens cut: the values written in full, and the
        JSON its stream sent for them (no closing brace); the whole call when not cut."""
        if self.budget is None:
            return self.args, self.whole_json
        budget, done = len(self.json), dict[str, Any]()
        for name, value in self.args.items():
            more = {**done, name: value}
            if len(orjson.dumps(more)) - 1 > budget:
                break
            done = more
        return done, orjson.dumps(done).decode()[:-1] if done else ""


@dataclass(slots=True)
class Answer:
    """A vendor-neutral reply: words of text, then any tool calls (several when the prompt
    asks for more than one; text before them only where the vendor writes some).

    ``truncated`` when the request's max_tokens (``cap``) cut it short: the text keeps its
    first ``cap`` words, the calls what the tokens left cover (the one the cut falls in
    the first ``4 * tokens left`` characters of name + arguments, the chars/4 token rule),
    and either way the answer used exactly ``cap`` tokens.  ``stop_sequence``: the
    request's stop sequence the text was cut before (it is not in the text).
    """

    words: list[str]
    truncated: bool = False
    calls: list[Call] = field(default_factory=list)
    cap: int | None = None
    stop_sequence: str | None = None

    @property
    def text(self) -> str:
        """The words joined as the full reply text."""
        return " ".join(self.words)

    @property
    def completion_tokens(self) -> int:
        """Completion tokens: one per word, plus the size of each call, plus one for a
        stop sequence (written, though left out of the text); the cap, when it cut."""
        if self.truncated and self.cap is not None:
            return self.cap
        stop = 1 if self.stop_sequence else 0
        return len(self.words) + sum(c.tokens for c in self.calls) + stop

    def stream_pieces(self) -> list[str]:
        """Text deltas, one word each, leading space except on the first."""
        return [w if i == 0 else " " + w for i, w in enumerate(self.words)]


def json_pieces(text: str, size: int = 8) -> list[str]:
    """Tool arguments JSON cut into fragments the way vendors stream them."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def generate_words(model: str, key: str) -> list[str]:
    """Pick 8-40 vocabulary words from an RNG seeded by a hash of (model, prompt)."""
    seed = digest(model, key)
    rng = random.Random(seed)
    n = 8 + seed % 33
    words = rng.choices(VOCAB, k=n)
    words[0] = words[0].capitalize()
    words[-1] += "."
    return words


def tool_arguments(schema: Any) -> dict[str, Any]:
    """Arguments for a tool: each required property (or all) set to a deterministic value;
    ``{}`` for a tool without properties (OpenAI: no parameters is an empty list of them)."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict) or not props:
        return {}
    required = schema.get("required")
    names = (
        [n for n in required if isinstance(n, str) and n in props]
        if isinstance(required, list)
        else []
    )
    out: dict[str, Any] = {}
    for name in names or list(props):
        spec = props[name] if isinstance(props[name], dict) else {}
        kind = spec.get("type")
        if isinstance(spec.get("enum"), list) and spec["enum"]:
            out[name] = spec["enum"][0]
        elif kind in ("integer", "number"):
            out[name] = 1
        elif kind == "boolean":
            out[name] = True
        elif kind == "array":
            out[name] = []
        elif kind == "object":
            out[name] = {}
        elif name in ("location", "city"):
            out[name] = "Paris"
        else:
            out[name] = f"{name}-{digest(name) % 10000:04d}"
    return out


def _asked_tools(prompt: Prompt) -> list[tuple[str, dict[str, Any]]]:
    """The offered tools the last user turn asks for together: those it names, when it
    names two or more, or every one when it says so (``EVERY_TOOL``)."""
    low = prompt.last_user.lower()
    if any(phrase in low for phrase in EVERY_TOOL):
        return list(prompt.tools)
    named = [tool for tool in prompt.tools if tool[0].lower() in low]
    return named if len(named) >= 2 else []


def _pick_tools(prompt: Prompt) -> list[tuple[str, dict[str, Any]]]:
    """The tools to call, in the order offered: the forced one; those the prompt asks for
    together (the first alone when parallel calls are off); else the first tool, when
    the choice requires a call or the prompt mentions a tool (``TOOL_KEYWORDS``)."""
    if not prompt.tools or prompt.tool_choice == "none":
        return []
    if prompt.tool_choice not in ("auto", "required"):
        forced = [tool for tool in prompt.tools if tool[0] == prompt.tool_choice]
        if forced:
            return forced[:1]
    elif asked := _asked_tools(prompt):
        return asked if prompt.parallel else asked[:1]
    if prompt.tool_choice != "auto":
        return prompt.tools[:1]
    low = prompt.last_user.lower()
    return prompt.tools[:1] if any(k in low for k in TOOL_KEYWORDS) else []


def _call(model: str, key: str, tool: tuple[str, dict[str, Any]]) -> Call:
    seed = digest(model, key, tool[0])
    return Call(tool[0], tool_arguments(tool[1]), f"{seed:016x}{seed % 99991:08x}")


def seed_text(key: str, choice: int) -> str:
    """The text an answer is drawn from: the prompt's own for the first (or only) choice,
    and for each other choice of several (OpenAI's ``n``) the prompt's and its index, so
    that each choice is an answer of its own, the same on every call."""
    return key if not choice else f"{key}\x00choice {choice}"


def compose(
    model: str,
    prompt: Prompt,
    max_tokens: int | None,
    response_format: Any = None,
    *,
    stops: list[str] | None = None,
    preamble: bool = False,
    choice: int = 0,
) -> Answer:
    """Decide the reply: echo a tool result, call tools, or deterministic text (as JSON
    in JSON mode); then cut it before the first of ``stops`` in its text, and to
    ``max_tokens``, whatever kind of answer it is.  ``preamble``: the vendor writes a
    sentence before the tool calls it chose to make (Claude does; a forced call it
    makes at once, and so does one told outright to "use" a tool).  ``choice``: which
    of several answers to one prompt (``seed_text``); 0 is the only one's."""
    key = seed_text(prompt.key, choice)
    if prompt.tool_result is not None:
        answer = Answer(words=("Tool said: " + prompt.tool_result).split())
    elif tools := _pick_tools(prompt):
        told = prompt.last_user.lstrip().lower().startswith("use ")
        said = PREAMBLE.split() if preamble and prompt.tool_choice == "auto" and not told else []
        answer = Answer(words=said, calls=[_call(model, key, tool) for tool in tools])
    else:
        answer = Answer(words=generate_words(model, key))
    answer = stopped(in_json_mode(answer, response_format), stops or [])
    return capped(answer, max_tokens)


def stopped(answer: Answer, stops: list[str]) -> Answer:
    """The answer cut before the first stop sequence its text holds (the earliest; the
    first listed of two at one place), left out of the text as vendors leave it, and
    the calls after it with it; as it was when its text holds none."""
    text = answer.text
    hits = [(text.find(s), s) for s in stops if s and s in text]
    if not hits:
        return answer
    at, sequence = min(hits, key=lambda hit: hit[0])
    kept = text[:at]
    words = kept.split(" ") if kept else []
    if len(words) > 1 and not words[-1]:  # cut just after a space: it stays with its word
        words.pop()
        words[-1] += " "
    return Answer(words=words, stop_sequence=sequence)


def capped(answer: Answer, max_tokens: int | None) -> Answer:
    """The answer cut to ``max_tokens`` output tokens (marked truncated), if it is longer:
    text first, then the calls in order, the one the cut falls in kept as far as it got
    (its name and ``4 * tokens left`` characters, the chars/4 rule)."""
    if max_tokens is None or answer.completion_tokens <= max_tokens:
        return answer
    cap = max(max_tokens, 0)
    words = answer.words[:cap]
    left, calls = cap - len(words), list[Call]()
    for call in answer.calls:
        if left <= 0:
            break
        if call.tokens > left:
            calls.append(replace(call, budget=max(0, 4 * left - len(call.name))))
            break
        calls.append(call)
        left -= call.tokens
    return Answer(words=words, truncated=True, calls=calls, cap=cap)


def in_json_mode(answer: Answer, response_format: Any) -> Answer:
    """A text answer as OpenAI's JSON mode gives it: an object matching the schema
    (``json_schema``: deterministic values, as for tool arguments) or wrapping the text
    (``json_object``).  Words split at spaces, so the stream and the whole agree."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if answer.calls or kind not in ("json_schema", "json_object"):
        return answer
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        value: Any = tool_arguments(spec.get("schema") if isinstance(spec, dict) else None)
    else:
        value = {"answer": answer.text}
    text = orjson.dumps(value).decode().replace('":', '": ').replace(',"', ', "')
    return Answer(words=text.split(" "))


def embedding(item: Any, dim: int = EMBED_DIM) -> list[float]:
    """A deterministic unit vector for one input (text or token list)."""
    key = item if isinstance(item, str) else orjson.dumps(item).decode()
    rng = random.Random(digest(key))
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [round(v / norm, 6) for v in vec]


def embedding_b64(vec: list[float]) -> str:
    """Encode a vector as base64 little-endian float32, OpenAI's ``encoding_format=base64``."""
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()


def input_tokens(item: Any) -> int:
    """Tokens of one embedding input: ceil(chars/4) for text, its length for a token array."""
    if isinstance(item, str):
        return text_tokens(item)
    return len(item) if isinstance(item, list) else 1
