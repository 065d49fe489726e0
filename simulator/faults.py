"""Live simulator config, call stats and fault injection (latency, 500, 429, hang)."""

from __future__ import annotations

import asyncio
import hmac
import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

HANG_S = 600.0  # "x-sim-fail: timeout" holds the request this long; clients time out first.
CACHE_MIN_CHARS = 1024  # prompts shorter than this never report cached tokens
_CACHE_LIMIT = 200_000  # remembered prompt prefixes before the memory is cleared


class SimConfig(BaseModel):
    """Knobs of the fake vendor; all of them can be changed live through ``POST /sim/config``."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=0, ge=0, description="delay before the first byte")
    chunk_gap_ms: float = Field(default=0, ge=0, description="delay between stream chunks")
    error_rate: float = Field(default=0, ge=0, le=1, description="fraction of calls answered 500")
    rate_429: float = Field(default=0, ge=0, le=1, description="fraction of calls answered 429")
    api_key: str | None = Field(default=None, description="when set, calls must carry this key")
    seed: int = Field(default=0, description="seed of the fault RNG, for reproducible runs")
    batch_complete_after_s: float = Field(default=0.5, ge=0, description="batch jobs end this late")
    batch_expire_after: int | None = Field(
        default=None,
        ge=0,
        description="batch jobs end expired, their window closed after running this many "
        "requests (None: every request runs; a model name with -expire never runs)",
    )
    prompt_cache: bool = Field(default=True, description="report cached prompt tokens on repeats")

    @model_validator(mode="after")
    def _fault_shares_fit(self) -> SimConfig:
        if self.error_rate + self.rate_429 > 1:
            raise ValueError(
                f"error_rate + rate_429 is {self.error_rate + self.rate_429:g}: the two are "
                "shares of the same calls and cannot add up to more than 1"
            )
        return self


class BadRequest(Exception):
    """A malformed vendor request; each vendor module renders it in its own error format."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class Stats:
    """Counts of vendor calls by model and endpoint, faults, input items and batch jobs."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Zero every counter."""
        self.calls: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.inputs: Counter[str] = Counter()
        self.by_endpoint: Counter[str] = Counter()
        self.batches = 0
        self.batches_cancelled = 0
        self.files_deleted = 0  # OpenAI files a client deleted (the lane's, once answered)
        self.batches_deleted = 0  # Anthropic message batches deleted

    def record(self, model: str, endpoint: str, inputs: int = 1) -> None:
        """Count one vendor call carrying ``inputs`` items (prompts, embedding inputs)."""
        self.calls[model] += 1
        self.inputs[model] += inputs
        self.by_endpoint[endpoint] += 1

    def snapshot(self) -> dict[str, Any]:
        """The ``GET /stats`` body."""
        return {
            "calls": dict(self.calls),
            "total": sum(self.calls.values()),
            "by_endpoint": dict(self.by_endpoint),
            "faults": dict(self.faults),
            "inputs": dict(self.inputs),
            "batches": self.batches,
            "batches_cancelled": self.batches_cancelled,
            "files_deleted": self.files_deleted,
            "batches_deleted": self.batches_deleted,
        }


class Sim:
    """Everything one simulator app holds: config, fault RNG, stats, prompt cache, batch store."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.stats = Stats()
        self.seen_prefixes: set[int] = set()
        self.files: dict[str, dict[str, Any]] = {}
        self.file_data: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}

    def update(self, patch: Mapping[str, Any]) -> SimConfig:
        """Apply a partial config; a new seed restarts the fault RNG."""
        self.config = SimConfig.model_validate({**self.config.model_dump(), **patch})
        if "seed" in patch:
            self.rng = random.Random(self.config.seed)
        return self.config

    def authorized(self, supplied: str | None) -> bool:
        """True when no key is configured or the supplied key matches."""
        if self.config.api_key is None:
            return True
        return supplied is not None and hmac.compare_digest(supplied, self.config.api_key)

    def cache_seen(self, key: int) -> bool:
        """Whether a prompt prefix was written to the cache by an earlier, answered call."""
        return key in self.seen_prefixes

    def cache_write(self, key: int | None) -> None:
        """Remember the prefix of a call that was answered (None: it took no part in
        caching).  A refused call (429, 500, overloaded) writes nothing, so its retry
        still reports a cache write, not a read."""
        if key is None or key in self.seen_prefixes:
            return
        if len(self.seen_prefixes) >= _CACHE_LIMIT:
            self.seen_prefixes.clear()
        self.seen_prefixes.add(key)

    def caching(self, prompt_chars: int) -> bool:
        """Whether a prompt of this size takes part in prompt caching."""
        return self.config.prompt_cache and prompt_chars >= CACHE_MIN_CHARS

    @staticmethod
    def model_fault(model: str) -> str | None:
        """Faults forced by the model name: ``-fail500``, ``-fail429`` and ``-overloaded``
        (a stream that opens, then errors before any text; else 529/503)."""
        if "-fail500" in model:
            return "500"
        if "-fail429" in model:
            return "429"
        if "-overloaded" in model:
            return "overloaded"
        return None

    def _fault(self, headers: Mapping[str, str], model: str) -> str | None:
        # Draw on every call so the sequence depends only on the call count, not on forcing.
        r = self.rng.random()
        forced = headers.get("x-sim-fail")
        if forced in ("500", "429", "timeout", "overloaded"):
            return forced
        named = self.model_fault(model)
        if named:
            return named
        if r < self.config.error_rate:
            return "500"
        if r < self.config.error_rate + self.config.rate_429:
            return "429"
        return None

    async def admit(
        self, request: Request, model: str, endpoint: str, inputs: int = 1
    ) -> str | None:
        """Count a vendor call and return the fault to answer with ("500"/"429"), or None.

        A fault is answered after the same latency as an answer (a slow vendor is slow
        to fail too); a forced ``timeout`` hangs for HANG_S and then answers 500.
        """
        self.stats.record(model, endpoint, inputs)
        fault = self._fault(request.headers, model)
        if fault is None:
            return None
        self.stats.faults[model] += 1
        if fault == "timeout":
            await asyncio.sleep(HANG_S)
            return "500"
        await self.delay(request)
        return fault

    def latency_s(self, request: Request) -> float:
        """Delay before answering: ``x-sim-latency-ms`` header, else the configured latency."""
        raw = request.headers.get("x-sim-latency-ms")
        try:
            ms = float(raw) if raw is not None else self.config.latency_ms
        except ValueError:
            ms = self.config.latency_ms
        if not math.isfinite(ms):  # "nan" or "inf" would sleep forever
            ms = self.config.latency_ms
        return max(ms, 0.0) / 1000.0

    async def delay(self, request: Request) -> None:
        """Sleep the answer latency, if any."""
        s = self.latency_s(request)
        if s:
            await asyncio.sleep(s)

    async def stream(
        self,
        request: Request,
        chunks: list[bytes],
        media_type: str = "text/event-stream",
        *,
        waited: bool = False,
    ) -> StreamingResponse:
        """A streamed answer.  The latency passes before the response starts, status and
        headers included (a client's first-byte timeout sees it as with a plain answer),
        unless it has passed already (``waited``: a fault's stream, delayed by ``admit``),
        then the chunks go chunk_gap_ms apart (one write when there is no gap)."""
        if not waited:
            await self.delay(request)
        gap = self.config.chunk_gap_ms / 1000.0
        return StreamingResponse(_paced(chunks, gap), media_type=media_type)


async def _paced(chunks: list[bytes], gap: float) -> AsyncIterator[bytes]:
    if not gap:
        yield b"".join(chunks)
        return
    for i, chunk in enumerate(chunks):
        if i:
            await asyncio.sleep(gap)
        yield chunk


def json_response(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response encoded with orjson (much cheaper than the default encoder)."""
    return Response(
        orjson.dumps(obj), status_code=status, headers=headers, media_type="application/json"
    )


async def read_json(request: Request) -> dict[str, Any] | None:
    """The request body as a JSON object, or None when it is not one."""
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def bearer(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header."""
    auth = request.headers.get("authorization", "")
    return auth[7:] if auth[:7].lower() == "bearer " else None
