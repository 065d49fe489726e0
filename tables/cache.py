"""The response cache: a normalized request key, an in-process LRU (L1) and Redis (L2).

Redis is an optimisation, never a dependency: any Redis error marks L2 unhealthy and the
cache carries on from L1, retrying Redis at most once per ``retry_s``.  Build the client
with short socket timeouts (the relay uses ``socket_timeout=0.25,
socket_connect_timeout=0.25``) so an outage costs a request a quarter second at most,
and only once per retry interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import time
import unicodedata
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeGuard

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, Field, ValidationError
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from schemas.errors import BadRequest
from schemas.formats.openai import assemble_chunks, faithful_chunks, response_to_chunks
from schemas.usage import Usage

log = logging.getLogger("relay.cache")
KEY_VERSION = 4  # bump when normalization changes, so old entries are never misread
# 4: a JSON schema's properties keep their written order (strict structured output emits
# keys in that order), and whitespace where two text parts meet is kept ("Hello " +
# "world" is not "Hello" + "world"), so keys differ from 3's; entries under 3 simply
# miss and expire.

# Fields that do not change the answer: transport (stream), bookkeeping (user and its newer
# name safety_identifier, metadata, store, the vendor's own prompt_cache_key) and the
# model name, which the alias replaces.
IGNORED_FIELDS = frozenset(
    {
        "model",
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)
# Parameters equal to the vendor default are the same request as leaving them out.
DEFAULTS: dict[str, Any] = {
    "temperature": 1,
    "top_p": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "n": 1,
    "logprobs": False,
    "parallel_tool_calls": True,
    "encoding_format": "float",
    "service_tier": "auto",
    "response_format": {"type": "text"},
    "stop": [],
    "logit_bias": {},
}
MAX_NFC_CHARS = 32_768
# A lone text part is its text, unless it carries more than a cache breakpoint (an
# Anthropic document's title and citations ride on it, say).
_PLAIN_PART = frozenset({"type", "text", "cache_control"})


_INT_MIN, _INT_END = -(2**63), 2**64  # the integers orjson writes (i64 and u64)


def _canon(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):  # Python's json reads them; no vendor would
            raise BadRequest("body: NaN and Infinity are not JSON numbers")
        # 1.0 and 1 are the same parameter; JSON would spell them differently.  Only
        # within 64 bits, what orjson writes: 1e20 (a schema's bound, say) stays a float.
        return int(value) if value.is_integer() and _INT_MIN <= value < _INT_END else value
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return value


def _text(s: str, lead: bool = True, trail: bool = True) -> str:
    """Text up to what cannot change its meaning: the same Unicode spelling (NFC), line
    ends, spaces at the ends of lines and of the whole.  Whitespace inside a line stays:
    in code, or between quotes, it is part of the question; so does whitespace where the
    text meets another text part (``lead``/``trail`` false: the part before or after it
    is text), as the parts are read joined.

    Linear in the text's length whatever it holds (a regex stripping line ends went
    quadratic on a long run of spaces); NFC, quadratic on long runs of combining marks,
    is left out past ``MAX_NFC_CHARS`` (such a text is its own spelling)."""
    if len(s) <= MAX_NFC_CHARS:
        s = unicodedata.normalize("NFC", s)
    lines = s.replace("\r\n", "\n").split("\n")
    if lead and trail:  # a whole text: the common case, kept lean
        return "\n".join(line.rstrip(" \t") for line in lines).strip()
    end = lines.pop()  # the last line's end meets the next part, unless ``trail``
    text = "\n".join([*(line.rstrip(" \t") for line in lines), end])
    text = text.lstrip() if lead else text
    return text.rstrip() if trail else text


def _content(content: Any) -> Any:
    if isinstance(content, str):
        return _text(content)
    if isinstance(content, list):
        # Whether each part is text, with no text before the first or after the last.
        texts = [
            False,
            *(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                for p in content
            ),
            False,
        ]
        # Whitespace between two text parts stays: "Hello " + "world" is not "Helloworld".
        parts = [
            {**p, "text": _text(p["text"], not texts[i], not texts[i + 2])} if texts[i + 1] else p
            for i, p in enumerate(content)
        ]
        one = parts[0] if len(parts) == 1 else None
        if isinstance(one, dict) and one.get("type") == "text" and one.keys() <= _PLAIN_PART:
            return one.get("text")
        return parts
    return content


# Defaults that are OpenAI's: a vendor with its own (Ollama: the model's temperature and
# top_p) answers an explicit 1 differently from none.
SAMPLING = frozenset({"temperature", "top_p"})


def _is_default(key: str, value: Any, openai_sampling: bool = True) -> bool:
    if key not in DEFAULTS or (key in SAMPLING and not openai_sampling):
        return False
    default = DEFAULTS[key]
    if isinstance(default, bool) or isinstance(value, bool):  # True == 1 in Python
        return value is default
    return bool(value == default)


def _message(message: Any) -> Any:
    """A message without fields set to null (``name: null`` is no name), its content
    normalized."""
    if not isinstance(message, dict):
        return message
    out = {k: v for k, v in message.items() if v is not None or k == "content"}
    if "content" in out:
        out["content"] = _content(out["content"])
    return out


def _schema(node: Any) -> Any:
    """A JSON schema with each ``properties`` mapping as ``[name, schema]`` pairs in the
    order written: strict structured output and tool calls emit keys in schema order (a
    reasoning field put first changes the answer), and the key's sorted dicts would
    lose it.  Key order stays insignificant everywhere else."""
    if isinstance(node, dict):
        return {
            k: [[name, _schema(sub)] for name, sub in v.items()]
            if k == "properties" and isinstance(v, dict)
            else _schema(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_schema(v) for v in node]
    return node


def _with_schemas(holder: Any, fields: tuple[str, ...]) -> Any:
    """``holder`` (a copy) with its ``fields`` read as JSON schemas (``_schema``)."""
    if not isinstance(holder, dict):
        return holder
    return {k: _schema(v) if k in fields else v for k, v in holder.items()}


def _tool(tool: Any) -> Any:
    """A tool with its schema's property order kept: chat's ``function.parameters``, a
    flat ``parameters`` or an Anthropic ``input_schema``."""
    out = _with_schemas(tool, ("parameters", "input_schema"))
    if isinstance(out, dict) and "function" in out:
        out["function"] = _with_schemas(out["function"], ("parameters",))
    return out


def normalize(body: dict[str, Any], *, openai_sampling: bool = True) -> dict[str, Any]:
    """The request with everything that cannot change the answer taken out
    (``openai_sampling``: the alias's vendors all default temperature and top_p to 1)."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key in IGNORED_FIELDS or value is None or _is_default(key, value, openai_sampling):
            continue
        out[key] = value
    if "max_completion_tokens" in out:  # the newer name of the same limit (which wins)
        out["max_tokens"] = out.pop("max_completion_tokens")
    if out.get("tool_choice") == "auto" and out.get("tools"):
        del out["tool_choice"]  # what a request with tools does unless told otherwise
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]  # one stop sequence, however it is spelled
    if isinstance(out.get("messages"), list):
        out["messages"] = [_message(m) for m in out["messages"]]
    for field in ("tools", "functions"):  # functions: the deprecated spelling of tools
        if isinstance(out.get(field), list):
            out[field] = [_tool(t) for t in out[field]]
    if isinstance(fmt := out.get("response_format"), dict) and "json_schema" in fmt:
        schema = _with_schemas(fmt["json_schema"], ("schema",))
        out["response_format"] = {**fmt, "json_schema": schema}
    return _canon(out)


def cache_key(
    *, scope: str, alias: str, endpoint: str, body: dict[str, Any], openai_sampling: bool = True
) -> str:
    """SHA-256 hex of the normalized request, its endpoint, alias and cache scope; a 400
    for a body no vendor could take either (what JSON allows but the topics' encoding
    does not: integers past 64 bits, unpaired surrogates, nesting hundreds deep)."""
    try:
        payload = {
            "v": KEY_VERSION,
            "scope": scope,
            "alias": alias,
            "endpoint": endpoint,
            "body": normalize(body, openai_sampling=openai_sampling),
        }
        return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
    except (TypeError, RecursionError) as exc:
        raise BadRequest(f"body: cannot be relayed ({exc})") from None


UNSTORABLE_FINISH = frozenset({"content_filter", "error"})


def storable(body: dict[str, Any] | None, chunks: list[dict[str, Any]] | None = None) -> bool:
    """Whether an answer may be served again: a whole one (``_whole``), not one a vendor's
    content filter cut (a filter may pass the same question next time; its refusal
    should not stick), nor an error a vendor sent as an answer (an ``error`` in a 200
    body, a choice that finished in ``error``, as OpenRouter does when a model fails part
    way), nor a stream that would not assemble in full for a later non-streamed request
    (``faithful_chunks``), nor a body that would not replay as a stream for a later
    streamed one, nor one not in the shape its format gives (``choices`` not a list of
    objects, a ``finish_reason`` or ``object`` not a string), nor one whose text is not
    text (``plain_text``: a list of parts would replay as a stream saying nothing).  A
    vendor's answer is taken as it comes: one a later request could not be served from
    is simply not stored, never an error for the request it answers."""
    answers = [body] if body is not None else list(chunks or [])
    if not all(_readable(answer) and plain_text(answer) for answer in answers):
        return False
    try:  # (a part of a shape the format's readers do not expect: not one to serve again)
        if chunks and not faithful_chunks(chunks):
            return False
        if body is not None and "choices" in body:
            response_to_chunks(body)
    except Exception:
        return False
    if any(
        "error" in answer
        or any(choice.get("finish_reason") in UNSTORABLE_FINISH for choice in _choices(answer))
        for answer in answers
    ):
        return False
    return _whole(body, answers)


def _readable(answer: Any) -> bool:
    """Whether an answer (a body or a chunk) is in its format's shape where the cache
    reads it: an object whose ``object`` is a string, whose ``choices`` is a list of
    objects, each with a string ``finish_reason`` (or none), a whole-number index and
    its message (or a chunk's delta) an object."""
    if not isinstance(answer, dict):
        return False
    if not isinstance(answer.get("object", ""), str):
        return False
    choices = answer.get("choices")
    if choices is None:
        return True
    return isinstance(choices, list) and all(
        isinstance(choice, dict)
        and isinstance(choice.get("finish_reason") or "", str)
        and isinstance(choice.get("index", 0), int)
        and isinstance(choice.get("message") or {}, dict)
        and isinstance(choice.get("delta") or {}, dict)
        for choice in choices
    )


# A message's or delta's text, which a replay says piece by piece and an assembly joins:
# each a string or null.
TEXT_FIELDS = ("content", "refusal", "reasoning_content", "reasoning")


def plain_text(answer: Any) -> bool:
    """Whether each choice's text (``TEXT_FIELDS`` of its message, or a chunk's delta) is a
    string or null.  Some OpenAI-compatible servers send ``content`` as a list of typed
    parts (Mistral's reasoning models: a thinking part, then a text part): served as a
    stream, such a body would say nothing (a replay speaks strings only), and such
    chunks would not assemble into a body.  (An answer in another shape is for
    ``_readable`` to judge: true here.)"""
    return all(
        isinstance(said.get(field), str | None) for said in _said(answer) for field in TEXT_FIELDS
    )


def _said(answer: Any) -> Iterator[dict[str, Any]]:
    """What an answer's choices say: each choice's message, or a chunk's delta (objects
    only; an answer or a choice in another shape says nothing here)."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict):
            for said in (choice.get("message"), choice.get("delta")):
                if isinstance(said, dict):
                    yield said


def _choices(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """A readable answer's choices (``_readable``)."""
    choices: list[dict[str, Any]] = answer.get("choices") or []
    return choices


def _whole(body: dict[str, Any] | None, answers: list[dict[str, Any]]) -> bool:
    """Whether the answer says something: a stream, a chat or legacy completion has a
    choice and each of its choices finished (a ``finish_reason``); embeddings have a
    vector.  Else (``choices: []``, a stream of no choice) a later request would be
    served nothing.  Anything else, a token count say, is whole as it is.  (``answers``
    are readable: see ``storable``.)"""
    if body is None or "choices" in body or body.get("object") in ID_PREFIXES:
        finished: dict[int, bool] = {}
        for answer in answers:
            for choice in _choices(answer):
                index = choice.get("index", 0)
                finished[index] = finished.get(index, False) or bool(choice.get("finish_reason"))
        return bool(finished) and all(finished.values())
    if "data" in body or body.get("object") == "list":  # embeddings: each item a vector
        data = body.get("data")
        return isinstance(data, list) and bool(data) and all(_vector(item) for item in data)
    return True


def _vector(item: Any) -> bool:
    """Whether an embeddings item holds a vector: a list of numbers, or the base64 string
    of one (``encoding_format: base64``)."""
    vector = item.get("embedding") if isinstance(item, dict) else None
    return isinstance(vector, list | str) and bool(vector)


ID_PREFIXES = {"chat.completion": "chatcmpl-", "text_completion": "cmpl-"}


def fresh(body: dict[str, Any], alias: str) -> dict[str, Any]:
    """A cached completion under a new id and time and the alias's name, so no two
    answers share an id (a copy: the cached body is shared)."""
    out = dict(body)
    kind = out.get("object")
    if isinstance(kind, str) and (prefix := ID_PREFIXES.get(kind)) is not None:
        out["id"] = f"{prefix}{uuid.uuid4().hex[:24]}"
        out["created"] = int(time.time())
    if "model" in out:
        out["model"] = alias
    return out


def audio_expiry(answers: list[dict[str, Any]]) -> float | None:
    """When the earliest audio answer among ``answers`` (a body, or a stream's chunks)
    stops being the vendor's to use: its ``audio.expires_at`` (epoch seconds), on a
    choice's message or a streamed delta; None for an answer holding none.  OpenAI keeps
    an audio answer for a later turn to name by its id until then; a copy served later
    would send the client back with an id its vendor no longer knows (a 400)."""
    return _earliest(_audio_of(answers))


def _audio_of(answers: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The ``audio`` objects of ``answers``' choices (a message's or a delta's) that say
    when they expire (``audio_expiry``)."""
    return tuple(
        audio
        for answer in answers
        for said in _said(answer)
        if isinstance(audio := said.get("audio"), dict) and _epoch(audio.get("expires_at"))
    )


def _earliest(audio: tuple[dict[str, Any], ...]) -> float | None:
    return min((at for a in audio if _epoch(at := a.get("expires_at"))), default=None)


def _epoch(at: Any) -> TypeGuard[float]:
    return isinstance(at, int | float) and not isinstance(at, bool)


def redis_prefix(topic_prefix: str) -> str:
    """The L2 keys' prefix of one deployment (its ``RELAY_TOPIC_PREFIX``): deployments
    sharing a Redis, production and staging say, never serve each other's answers."""
    return f"{topic_prefix}:cache:"


class CacheEntry(BaseModel):
    """A stored answer: a stream's chunks (without the usage chunk) or a whole body.

    The answer is fixed once made (``chunks`` and ``body`` are frozen, their contents
    read-only), so what it points to at its vendor (``expires_at``: its audio) is found
    in it once, as it is made or read back from L2: a hit reads that audio's expiry
    alone, and nothing for an answer of no audio, never a stream's every chunk."""

    chunks: list[dict[str, Any]] | None = Field(default=None, frozen=True)
    body: dict[str, Any] | None = Field(default=None, frozen=True)
    usage: Usage = Usage()
    vendor: str
    model: str
    created: float
    # The endpoint it answers (None in entries written before it was kept): a producer
    # posting straight to the request topic picks its own ``prompt_hash``, and a chat
    # answer must never come back as its embeddings.
    endpoint: str | None = None

    def model_post_init(self, context: Any, /) -> None:
        self._audio  # noqa: B018  (found now: a hit reads it as a plain attribute)

    @functools.cached_property
    def _audio(self) -> tuple[dict[str, Any], ...]:
        """The audio its answer points to at its vendor (``audio_expiry``)."""
        answers = [self.body] if self.body is not None else []
        return _audio_of([*answers, *(self.chunks or [])])

    def answers(self, endpoint: str) -> bool:
        return self.endpoint is None or self.endpoint == endpoint

    def young_enough(self, max_age_s: int | None) -> bool:
        """Whether it is no older than a request takes (``x-relay-cache-ttl``), and
        still usable as the live answer was (``usable_for``: an audio answer before its
        vendor forgets it)."""
        now = time.time()
        young = max_age_s is None or now - self.created <= max_age_s
        return young and self.usable_for(now) > 0

    def expires_at(self) -> float | None:
        """When what it points to at its vendor goes (``audio_expiry``), if ever."""
        return _earliest(self._audio) if self._audio else None

    def usable_for(self, now: float) -> float:
        """Seconds from ``now`` it may still be served (``expires_at``): infinite for
        an answer that points to nothing of its vendor's, none once that has gone."""
        expires = self.expires_at()
        return math.inf if expires is None else expires - now

    def ttl_within(self, ttl_s: float, now: float) -> float:
        """``ttl_s``, or less: never past what it points to (``usable_for``)."""
        return min(ttl_s, self.usable_for(now))

    def plain(self) -> bool:
        """Whether its text is text (``plain_text``): an entry stored before that was
        checked (a list of parts as ``content``) would replay as a stream saying nothing,
        or not assemble at all, so it is not one to serve.  Judged once, at its first
        hit (its answer is fixed), not on every hit."""
        return self._plain

    @functools.cached_property
    def _plain(self) -> bool:
        answers = [self.body] if self.body is not None else []
        return all(plain_text(answer) for answer in [*answers, *(self.chunks or [])])

    def whole(self, alias: str) -> dict[str, Any]:
        """The answer as one body (a stream's assembled), fresh for this request."""
        body = self.body if self.body is not None else assemble_chunks(self.chunks or [])
        return fresh(body, alias)


# What an entry takes in memory, as Python objects, against its size as JSON (measured:
# a plain chat body 1.1x, an embeddings list 1.7x, a stream's chunks 4.4-5.5x).
BODY_IN_MEMORY = 2
STREAM_IN_MEMORY = 5


class L1Cache:
    """A bounded in-process LRU with a TTL per entry, held to a count of entries and to
    a total of bytes of memory (each entry's size as stored in L2, times what its Python
    objects take against that); an entry larger than ``max_entry_bytes`` as JSON is left
    to L2 alone.  Entries are shared, not copied: treat what ``get`` returns as
    read-only."""

    def __init__(
        self,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        max_entry_bytes: int = 8 * 1024 * 1024,  # a long streamed answer: ~250 B a token
        wall: Callable[[], float] = time.time,  # epoch seconds, as an audio expiry is
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.clock = clock
        self.wall = wall
        self.bytes = 0
        self._items: OrderedDict[str, tuple[CacheEntry, float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> CacheEntry | None:
        """The live entry for ``key`` (now the most recently used), or None."""
        item = self._items.get(key)
        if item is None:
            return None
        entry, expires, _ = item
        if self.clock() >= expires:
            self.delete(key)
            return None
        self._items.move_to_end(key)
        return entry

    def put(self, key: str, entry: CacheEntry, ttl_s: float, size: int | None = None) -> None:
        """Store ``entry`` (``size`` bytes: measured here when the caller does not know
        them from storing it) for ``ttl_s`` seconds, or until what it points to at its
        vendor goes (``CacheEntry.ttl_within``: an audio answer's expiry), evicting the
        least recently used past either bound."""
        self.delete(key)
        ttl_s = entry.ttl_within(ttl_s, self.wall())
        if size is None:  # orjson: microseconds, against the vendor call that made it
            size = len(orjson.dumps(entry.body)) if entry.body else 0
            size += len(orjson.dumps(entry.chunks)) if entry.chunks else 0
        if ttl_s <= 0 or self.max_entries <= 0 or size > self.max_entry_bytes:
            return
        held = size * (STREAM_IN_MEMORY if entry.chunks else BODY_IN_MEMORY)
        self._items[key] = (entry, self.clock() + ttl_s, held)
        self.bytes += held
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, _, gone) = self._items.popitem(last=False)
            self.bytes -= gone

    def delete(self, key: str) -> None:
        """Forget ``key``."""
        if (item := self._items.pop(key, None)) is not None:
            self.bytes -= item[2]


# Redis errors, and socket errors that slip past redis-py (OSError covers TimeoutError).
REDIS_ERRORS = (RedisError, OSError)
# How long the replacement follower waits for a message before it pings Redis; a ping
# not answered within as long again means a dead connection, made anew.
FOLLOW_IDLE_S = 30.0


class ResponseCache:
    """L1 in front of a shared Redis L2; every replica sees every other's answers.

    A replica that replaces an answer (``x-relay-cache: refresh``, or one too old for the
    request) says so on the ``replaced`` channel, and every other replica following it
    (``follow``) drops the key from its L1, which would otherwise serve the old answer
    for the rest of its TTL.  Pub/sub is best effort: a notice sent while a replica's
    subscription is down is lost to it (while Redis itself is down none is sent, as no
    answer is stored there either); clearing L1 on every reconnection would cost every
    replica its hits after each Redis restart for a rare refresh it might have missed."""

    def __init__(
        self,
        l1: L1Cache,
        redis: aioredis.Redis | None,
        prefix: str = "relay:cache:",
        *,
        retry_s: float = 1.0,
        stale_s: float = 3600.0,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.l1 = l1
        self.redis = redis
        self.prefix = prefix
        self.retry_s = retry_s
        self.stale_s = stale_s
        self.wall = wall
        self.clock = clock or l1.clock
        self.l2_healthy = True
        self.l2_errors = 0
        self._failed_at = -float("inf")
        self.channel = prefix + "replaced"  # one deployment's, like its keys
        self._origin = uuid.uuid4().hex.encode()  # this replica's own notices are no news

    def _l2(self) -> aioredis.Redis | None:
        # The client, unless absent or failed less than retry_s ago; once that passed,
        # one caller probes it (the others go on without L2 until its answer or the
        # next retry_s), so a Redis that hangs costs one request a timeout per retry_s.
        if self.redis is None:
            return None
        if self.l2_healthy:
            return self.redis
        if self.clock() - self._failed_at >= self.retry_s:
            self._failed_at = self.clock()
            return self.redis
        return None

    def _l2_failed(self) -> None:
        self.l2_healthy = False
        self.l2_errors += 1
        self._failed_at = self.clock()

    async def get(
        self, key: str, *, stale_ok: bool = False
    ) -> tuple[CacheEntry, Literal["l1", "l2"]] | None:
        """The cached entry and which level had it, or None on a miss (or Redis down).
        Only fresh answers, unless ``stale_ok`` (then an answer past its TTL, kept in L2
        ``stale_s`` longer, will do)."""
        entry = self.l1.get(key)
        if entry is not None:
            return entry, "l1"
        redis = self._l2()
        if redis is None:
            return None
        try:
            # One round trip, atomically: the value and how long it has left.
            async with redis.pipeline(transaction=True) as pipe:
                pipe.get(self.prefix + key)
                pipe.pttl(self.prefix + key)
                raw, ttl_ms = await pipe.execute()
        except REDIS_ERRORS:
            self._l2_failed()
            return None
        self.l2_healthy = True
        if raw is None:
            return None
        try:
            stored = orjson.loads(raw)
            entry = CacheEntry.model_validate(stored["entry"])
            now = self.wall()
            fresh_s = float(stored["fresh_until"]) - now
        except (orjson.JSONDecodeError, ValidationError, KeyError, TypeError, ValueError):
            return None  # written by an incompatible version: a miss, overwritten later
        if entry.usable_for(now) <= 0:
            return None  # stale or not, gone at its vendor (one stored before it was capped)
        if fresh_s <= 0:
            return (entry, "l2") if stale_ok else None
        self.l1.put(key, entry, min(fresh_s, ttl_ms / 1000.0), len(raw))
        return entry, "l2"

    async def put(self, key: str, entry: CacheEntry, ttl_s: float) -> bool:
        """Store ``entry`` in both levels, fresh for ``ttl_s`` seconds; L2 keeps it
        ``stale_s`` longer for readers that accept a stale answer.  Neither outlives what
        it points to at its vendor (``CacheEntry.usable_for``: an audio answer's id is
        no use once its vendor forgot it, stale or not).  True when it is in L2 (shared
        by every replica)."""
        now = self.wall()
        usable_s = entry.usable_for(now)
        ttl_s = min(ttl_s, usable_s)
        if ttl_s <= 0:
            return False
        stored = {"fresh_until": now + ttl_s, "entry": entry.model_dump(mode="json")}
        data = orjson.dumps(stored)
        self.l1.put(key, entry, ttl_s, len(data))
        redis = self._l2()
        if redis is None:
            return False
        keep_ms = max(1, round(min(ttl_s + self.stale_s, usable_s) * 1000))
        try:
            await redis.set(self.prefix + key, data, px=keep_ms)
        except ResponseError as exc:  # this command refused (too large, say): Redis is up
            log.warning("answer not stored in L2: %s", exc)
            return False
        except REDIS_ERRORS:
            self._l2_failed()
            return False
        self.l2_healthy = True
        return True

    async def replaced(self, key: str, created: float | None = None) -> None:
        """Tell the other replicas following the ``replaced`` channel to drop ``key`` from
        their L1: this one has put a new answer in place of whatever they hold (made at
        ``created``, when given: a copy of that answer or a newer one, which the
        replica that asked for it may hold already, is kept)."""
        redis = self._l2()
        if redis is None:
            return
        notice = self._origin + b" " + key.encode()
        if created is not None:
            notice += b" " + repr(created).encode()
        try:
            await redis.publish(self.channel, notice)
        except REDIS_ERRORS:
            self._l2_failed()
            return
        self.l2_healthy = True

    async def follow(self, retry_s: float = 1.0) -> None:
        """Until cancelled, drop from L1 each key another replica says it replaced (run
        beside the gateway for its lifetime).  A Redis that is down or stops answering is
        tried again every ``retry_s``, quietly."""
        if self.redis is None:
            return
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                await self._drop_replaced(pubsub)
            except REDIS_ERRORS:
                pass  # Redis is down, or the connection went: subscribed again shortly
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()
            await asyncio.sleep(retry_s)

    async def _drop_replaced(self, pubsub: PubSub) -> None:
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=FOLLOW_IDLE_S)
            if message is None:
                if pinged:  # a connection that went quiet without closing
                    raise RedisConnectionError("no answer to a ping")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False  # any message (a subscription's, a pong) says it is alive
            if message["type"] == "message":
                origin, _, rest = message["data"].partition(b" ")
                key, _, created = rest.partition(b" ")
                if origin != self._origin:
                    self._drop_older(key.decode(), created)

    def _drop_older(self, key: str, created: bytes) -> None:
        """Drop ``key`` from L1 unless what is there was made at ``created`` or later
        (the new answer itself, kept by the gateway that got it)."""
        held = self.l1.get(key)
        if held is None:
            return
        try:
            newer = bool(created) and held.created >= float(created)
        except ValueError:
            newer = False
        if not newer:
            self.l1.delete(key)

    async def invalidate(self, key: str) -> None:
        """Drop ``key`` from both levels."""
        self.l1.delete(key)
        redis = self._l2()
        if redis is None:
            return
        try:
            await redis.delete(self.prefix + key)
        except REDIS_ERRORS:
            self._l2_failed()
            return
        self.l2_healthy = True
