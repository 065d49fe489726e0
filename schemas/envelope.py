"""Messages on the relay's topics: request envelope, reply, usage, dead letter, audit.

Every topic carries JSON (never pickle) so that other services may produce and consume
them; ``schemas/jsonschema/`` holds the JSON Schema of each, generated from these models.
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.usage import Usage


class Priority(StrEnum):
    """Lanes, best first: realtime is never starved by the others."""

    realtime = "realtime"
    batch = "batch"
    background = "background"


Endpoint = Literal["chat", "embeddings", "completions", "count_tokens"]


# How long past a request's deadline its gateway still waits for the worker's own answer
# (a timeout error, say) before it gives up and writes the ledger line itself.
REPLY_GRACE_S = 2.0
MAX_TRACE_ID = 128  # x-relay-trace-id: it travels in every envelope and ledger line
MAX_EPOCH_MS = 10**15  # a time in epoch ms beyond any deadline (the year 33 658)
MAX_CACHE_TTL_S = 30 * 86400  # a stored answer lives thirty days at most


def now_ms() -> int:
    return int(time.time() * 1000)


class RequestEnvelope(BaseModel):
    """One client request on its way to a vendor; keyed on the topic by ``prompt_hash``.

    ``body`` is the request normalised to the OpenAI wire format, the relay's neutral
    shape; ``alias`` is the model name the client asked for.
    """

    correlation_id: str
    reply_to: str = Field(
        description="topic the reply goes to; a producer's own topic",
        pattern=r"^[A-Za-z0-9._-]{1,249}$",  # what Kafka takes as a topic name
    )
    tenant: str
    key_id: str
    alias: str
    endpoint: Endpoint = "chat"
    body: dict[str, Any]
    stream: bool = False
    prompt_hash: str = Field(description="cache/coalescing key; also the Kafka message key")
    priority: Priority = Priority.realtime
    deadline_ms: int = Field(
        ge=0, lt=MAX_EPOCH_MS, description="epoch milliseconds after which nobody waits"
    )
    trace_id: str
    cost_tag: str | None = None
    user: str | None = None
    cache_ttl_s: int | None = Field(
        None, ge=0, le=MAX_CACHE_TTL_S, description="store the answer for this long"
    )
    cache_lookup: bool = Field(False, description="a stored answer may serve this request")
    cache_max_age_s: int | None = Field(
        None,
        ge=0,
        le=MAX_CACHE_TTL_S,
        description="the oldest stored answer that may serve it (x-relay-cache-ttl)",
    )
    degraded: str | None = Field(None, description="why the worker routes it cheaper")
    gateway_meters_timeout: bool = Field(
        False,
        description="a gateway waits for this reply and writes the ledger line itself if "
        "none reaches it by deadline_ms + REPLY_GRACE_S; producers posting straight to the "
        "topic leave it false",
    )
    created_ms: int = Field(default_factory=now_ms, ge=0, lt=MAX_EPOCH_MS)
    cancel: bool = Field(
        False,
        description="not a request but a notice that the client of the request with this "
        "correlation_id and tenant, posted before it with the same key, went away: the worker "
        "sends that request nothing more, and stops its vendor call (a stream's) when nobody "
        "else waits on it; its one ledger line says client_closed (billed what streamed "
        "when the call was stopped). The notice "
        "itself gets no reply and no ledger line, and its body is not read; one for a request "
        "answered already, or unknown, is ignored, and so is one for a Batch API line (its "
        "batch's cancel withdraws it)",
    )

    def cancel_notice(self) -> RequestEnvelope:
        """The notice withdrawing this request (``cancel``): the same envelope without
        its body, so it is small, and keyed alike on the topic (it reaches the same worker,
        after the request)."""
        return self.model_copy(update={"cancel": True, "body": {}})

    @field_validator("reply_to")
    @classmethod
    def _a_topic_name(cls, topic: str) -> str:
        if topic in (".", ".."):  # the one pair the pattern lets through
            raise ValueError("`.` and `..` are not topic names")
        return topic


class ReplyEvent(BaseModel):
    """One message back to the gateway: a stream chunk, the final answer, or an error.

    A streamed reply is ``chunk`` events numbered by ``seq`` followed by one ``final``
    (holding usage and no body); a non-streamed reply is a single ``final`` with ``body``.
    A ``chunk`` without a body (``seq`` 0) only says, ahead of the first token, that the
    stream was ``degraded``.
    """

    correlation_id: str
    kind: Literal["chunk", "final", "error"]
    seq: int = 0
    body: dict[str, Any] | None = None
    usage: Usage | None = None
    error: dict[str, Any] | None = None
    vendor: str | None = None
    model: str | None = None
    coalesced: bool = False
    cache_hit: bool = False
    degraded: str | None = None
    cost: float = Field(0.0, description="on a final: what this request cost (its ledger line)")
    saved_cost: float = Field(0.0, description="on a final: what it saved (its ledger line)")
    stored: bool | None = Field(
        None,
        description="on a final: whether the worker stored the answer in the cache (or "
        "would have, with Redis down), so a gateway may keep it too; a follower of another "
        "request's call is told that call's choice (none stored after a bypass request's); "
        "null: not said (a worker from before this field), the gateway judges by the "
        "request's own terms",
    )

    @classmethod
    def final(
        cls,
        env: RequestEnvelope,
        line: UsageEvent,
        body: dict[str, Any] | None,
        seq: int = 0,
        *,
        stored: bool | None = None,
    ) -> ReplyEvent:
        """The final reply to ``env``: its answer's ``body`` (None after a stream's
        chunks) with what its ledger ``line`` says: usage, vendor, flags, cost; and
        whether the answer was ``stored``."""
        return cls(
            correlation_id=env.correlation_id,
            kind="final",
            seq=seq,
            body=body,
            usage=line.usage,
            vendor=line.vendor,
            model=line.vendor_model,
            coalesced=line.coalesced,
            cache_hit=line.cache_hit,
            degraded=line.degraded,
            cost=line.cost,
            saved_cost=line.saved_cost,
            stored=stored,
        )


# Floats that JSON can say: a table that folded NaN or Infinity would write it to its
# changelog as null, which the record recovered after a restart fails to read.
FINITE = ConfigDict(allow_inf_nan=False)


class UsageEvent(BaseModel):
    """One line of the cost ledger: exactly one per answered or failed request."""

    model_config = FINITE

    event_id: str
    ts_ms: int = Field(default_factory=now_ms)
    tenant: str
    key_id: str
    alias: str
    endpoint: Endpoint = "chat"
    vendor: str | None = None
    vendor_model: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cost: float = 0.0
    saved_cost: float = 0.0
    direct_cost: float = Field(0.0, description="what the call would cost sent straight")
    latency_ms: float = 0.0
    status: Literal["ok", "error"] = "ok"
    error_code: str | None = None
    cost_tag: str | None = None
    trace_id: str
    correlation_id: str | None = Field(
        None,
        description="the request the line is about (its envelope's correlation id); none "
        "for a cache hit the gateway answered",
    )
    priority: Priority = Priority.realtime
    cache_hit: bool = False
    coalesced: bool = False
    batched: bool = False
    batch_api: bool = False
    degraded: str | None = None

    @classmethod
    def for_request(cls, env: RequestEnvelope, **fields: Any) -> UsageEvent:
        """A ledger line about ``env``: who asked what, when, and with which tags; the
        outcome (vendor, usage, cost, flags) comes in ``fields``."""
        return cls(
            event_id=uuid.uuid4().hex,
            tenant=env.tenant,
            key_id=env.key_id,
            alias=env.alias,
            endpoint=env.endpoint,
            latency_ms=max(0.0, now_ms() - env.created_ms),
            cost_tag=env.cost_tag,
            trace_id=env.trace_id,
            correlation_id=env.correlation_id,
            priority=env.priority,
            **fields,
        )

    @classmethod
    def failure(cls, env: RequestEnvelope, code: str) -> UsageEvent:
        """The line for a request no worker answered (nor will): the gateway's to write."""
        return cls.for_request(env, status="error", error_code=code)


DEAD_LETTER_BYTES = 64 * 1024  # of an unreadable message kept in its dead letter


class DeadLetter(BaseModel):
    """A message a worker could not read, kept with where it came from."""

    topic: str
    partition: int | None = None
    offset: int | None = None
    error: str
    value: str = Field(
        description="the raw message, decoded as UTF-8 with replacement; its first "
        "DEAD_LETTER_BYTES only when ``truncated``"
    )
    truncated: bool = False
    size: int | None = Field(None, description="bytes of the raw message")
    ts_ms: int = Field(default_factory=now_ms)

    @classmethod
    def of(
        cls, topic: str, partition: int | None, offset: int | None, error: str, raw: bytes
    ) -> DeadLetter:
        """A letter for ``raw``, cut to ``DEAD_LETTER_BYTES``: a large unreadable message
        must not become one too large for the dead-letter topic."""
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            error=error[:2000],
            value=raw[:DEAD_LETTER_BYTES].decode("utf-8", "replace"),
            truncated=len(raw) > DEAD_LETTER_BYTES,
            size=len(raw),
        )


class HealthEvent(BaseModel):
    """The outcome of one vendor call, folded into the vendor-health table."""

    model_config = FINITE

    vendor: str
    model: str
    ok: bool
    latency_ms: float
    error_code: str | None = None
    retry_after: float | None = None
    cost: float = 0.0
    ts_ms: int = Field(default_factory=now_ms)


class HealthBatch(BaseModel):
    """Outcomes of one (vendor, model) from one worker over a short window, in order:
    every call is folded into the table, in one table write per window."""

    events: list[HealthEvent] = Field(min_length=1)


AuditKind = Literal["auth_failed", "access_denied", "started"]


class AuditEvent(BaseModel):
    """A security-relevant event on the audit topic: who tried what, and what the relay
    decided, or which process started with which config.  Never a secret: a presented
    key that matched none appears only as a fingerprint."""

    kind: AuditKind
    role: Literal["gateway", "worker"]
    instance: str
    tenant: str | None = None
    key_id: str | None = None
    key_fingerprint: str | None = Field(
        None, description="first 12 hex digits of the SHA-256 of a key that matched none"
    )
    client: str | None = Field(None, description="the client's address, as the gateway saw it")
    path: str | None = None
    model: str | None = None
    detail: str = ""
    config_sha256: str | None = Field(None, description="digest of the config a process loaded")
    repeats: int = Field(
        1,
        ge=1,
        description="how many events this line stands for: after the first of a flood, "
        "identical ones (but for time and key fingerprint) fold into one line per window",
    )
    ts_ms: int = Field(default_factory=now_ms)
