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

    @property
    def key(self) -> str:
        """The text the answer is derived from."""
        return "\n".join(self.texts)

    @property
    def tokens(self) -> int:
        """Prompt tokens as reported in usage."""
        return prompt_tokens(self.texts)


@dataclass(slots=True)
class Answer:
    """A vendor-neutral reply: either words of text or a single tool call.

    ``truncated`` when the request's max_tokens (``cap``) cut it short: text keeps its
    first ``cap`` words, a tool call the first ``4 * cap`` characters of name + arguments
    (the chars/4 token rule), and either way the answer used exactly ``cap`` tokens.
    """

    words: list[str]
    truncated: bool = False
    tool_name: str | None = None
    tool_args: dict[str, Any] | None = None
    tool_id: str = ""
    cap: int | None = None

    @property
    def text(self) -> str:
        """The words joined as the full reply text."""
        return " ".join(self.words)

    @property
    def whole_tool_json(self) -> str:
        """The tool arguments as JSON, whole."""
        return orjson.dumps(self.tool_args or {}).decode()

    @property
    def tool_json(self) -> str:
        """Tool arguments as the JSON string OpenAI-style vendors send: when max_tokens
        cut the call, only what was written before the cut (no longer valid JSON)."""
        whole = self.whole_tool_json
        if not self.truncated or self.cap is None:
            return whole
        return whole[: max(0, 4 * self.cap - len(self.tool_name or ""))]

    def finished_args(self) -> tuple[dict[str, Any], str]:
        """The arguments as a vendor that holds each value back until it is whole
        (Anthropic) gives a call that max_tokens cut: the values written in full, and the
        JSON its stream sent for them (no closing brace); the whole call when not cut."""
        args = self.tool_args or {}
        if not self.truncated:
            return args, self.whole_tool_json
        budget, done = len(self.tool_json), dict[str, Any]()
        for name, value in args.items():
            more = {**done, name: value}
            if len(orjson.dumps(more)) - 1 > budget:
                break
            done = more
        return done, orjson.dumps(done).decode()[:-1] if done else ""

    @property
    def completion_tokens(self) -> int:
        """Completion tokens: one per word, or the size of the tool call; never more
        than the cap that cut the answer."""
        if self.tool_name is not None:
            used = text_tokens(self.tool_name + self.tool_json)
        else:
            used = len(self.words)
        return min(used, self.cap) if self.truncated and self.cap is not None else used

    def stream_pieces(self) -> list[str]:
        """Text deltas, one word each, leading space except on the first."""
        return [w if i == 0 else " " + w for i, w in enumerate(self.words)]

    def json_pieces(self, text: str | None = None, size: int = 8) -> list[str]:
        """Tool arguments JSON (``tool_json`` unless given) cut into fragments the way
        vendors stream them."""
        s = self.tool_json if text is None else text
        return [s[i : i + size] for i in range(0, len(s), size)]


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


def _pick_tool(prompt: Prompt) -> tuple[str, dict[str, Any]] | None:
    if not prompt.tools or prompt.tool_choice == "none":
        return None
    if prompt.tool_choice not in ("auto", "required"):
        for tool in prompt.tools:
            if tool[0] == prompt.tool_choice:
                return tool
    if prompt.tool_choice != "auto":
        return prompt.tools[0]
    low = prompt.last_user.lower()
    return prompt.tools[0] if any(k in low for k in TOOL_KEYWORDS) else None


def compose(
    model: str, prompt: Prompt, max_tokens: int | None, response_format: Any = None
) -> Answer:
    """Decide the reply: echo a tool result, call a tool, or deterministic text (as JSON
    in JSON mode), then cut to ``max_tokens``, whatever kind of answer it is."""
    if prompt.tool_result is not None:
        answer = Answer(words=("Tool said: " + prompt.tool_result).split())
    elif (tool := _pick_tool(prompt)) is not None:
        seed = digest(model, prompt.key, tool[0])
        answer = Answer(
            words=[],
            tool_name=tool[0],
            tool_args=tool_arguments(tool[1]),
            tool_id=f"{seed:016x}{seed % 99991:08x}",
        )
    else:
        answer = Answer(words=generate_words(model, prompt.key))
    return capped(in_json_mode(answer, response_format), max_tokens)


def capped(answer: Answer, max_tokens: int | None) -> Answer:
    """The answer cut to ``max_tokens`` output tokens (marked truncated), if it is longer."""
    if max_tokens is None or answer.completion_tokens <= max_tokens:
        return answer
    cap = max(max_tokens, 0)
    if answer.tool_name is not None:
        return replace(answer, truncated=True, cap=cap)
    return Answer(words=answer.words[:cap], truncated=True, cap=cap)


def in_json_mode(answer: Answer, response_format: Any) -> Answer:
    """A text answer as OpenAI's JSON mode gives it: an object matching the schema
    (``json_schema``: deterministic values, as for tool arguments) or wrapping the text
    (``json_object``).  Words split at spaces, so the stream and the whole agree."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if answer.tool_name is not None or kind not in ("json_schema", "json_object"):
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
