"""The gateway's one job: answer a request from cache, or through Kafka and a worker.

A cache hit never touches Kafka; a miss is published to the request topic and the reply
is awaited on this instance's reply topic.  Streams are handed on chunk by chunk.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.requests import Request

from gateway import metrics
from gateway.auth import Caller, RefusalThrottle
from gateway.bodies import count_refusal
from gateway.bus import Bus
from gateway.errors import trace_headers
from schemas.config import RelayConfig, ttl_seconds
from schemas.envelope import (
    MAX_CACHE_TTL_S,
    MAX_TRACE_ID,
    REPLY_GRACE_S,
    AuditKind,
    Endpoint,
    Priority,
    ReplyEvent,
    RequestEnvelope,
    UsageEvent,
)
from schemas.errors import (
    BadRequest,
    DeadlineExceeded,
    ModelNotFound,
    NoWorker,
    RelayError,
    VendorAnswerUnreadable,
    VendorUnavailable,
)
from schemas.formats.openai import response_to_chunks
from schemas.settings import Settings
from schemas.usage import Usage
from tables.cache import CacheEntry, ResponseCache, cache_key, plain_text, storable
from tables.prices import PriceSheet

log = logging.getLogger("relay.gateway")

CacheMode = Literal["use", "bypass", "refresh"]
MAX_TIMEOUT_S = 3600.0  # x-relay-timeout: an hour at most
MAX_COST_TAG = 128  # x-relay-cost-tag: the same
MAX_BETAS = 32  # anthropic-beta: feature names, such as interleaved-thinking-2025-05-14
_BETA = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# A stream whose first chunk takes longer than this (queued in its lane, a slow vendor)
# starts without it, so keep-alives can flow; one answered sooner gets its real status.
STREAM_START_S = 10.0


@dataclass
class Options:
    """What the client's headers ask of the relay."""

    cache: CacheMode = "use"
    ttl_s: int | None = None
    priority: Priority = Priority.realtime
    timeout_s: float | None = None
    cost_tag: str | None = None
    trace_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    anthropic_beta: list[str] = field(default_factory=list)  # for Anthropic vendors

    @classmethod
    def from_headers(cls, headers: Any) -> Options:
        """The options the headers ask for; a header that makes no sense is a 400 naming
        it, never a silent default."""
        opts = cls()
        mode = headers.get("x-relay-cache", "").strip().lower()
        if mode in ("bypass", "refresh", "use"):
            opts.cache = mode  # type: ignore[assignment]
        elif mode:
            raise BadRequest(f"x-relay-cache: {mode!r} is not one of use, bypass, refresh")
        if opts.cache == "use" and "no-cache" in headers.get("cache-control", "").lower():
            opts.cache = "bypass"
        if ttl := headers.get("x-relay-cache-ttl"):
            opts.ttl_s = _bounded("x-relay-cache-ttl", ttl_seconds, ttl, 0, MAX_CACHE_TTL_S)
        if prio := headers.get("x-relay-priority"):
            try:
                opts.priority = Priority(prio.strip().lower())
            except ValueError:
                allowed = ", ".join(p.value for p in Priority)
                raise BadRequest(f"x-relay-priority: {prio!r} is not one of {allowed}") from None
        if timeout := headers.get("x-relay-timeout"):
            opts.timeout_s = _bounded("x-relay-timeout", float, timeout, 0, MAX_TIMEOUT_S)
            if opts.timeout_s == 0:
                raise BadRequest("x-relay-timeout: must be more than 0 seconds")
        if tag := headers.get("x-relay-cost-tag"):
            if len(tag) > MAX_COST_TAG:  # it rides on every ledger line, kept 400 days
                raise BadRequest(f"x-relay-cost-tag: longer than {MAX_COST_TAG} characters")
            opts.cost_tag = tag
        if trace := headers.get("x-relay-trace-id"):
            if len(trace) > MAX_TRACE_ID:
                raise BadRequest(f"x-relay-trace-id: longer than {MAX_TRACE_ID} characters")
            opts.trace_id = trace
        if betas := headers.get("anthropic-beta"):
            opts.anthropic_beta = _betas(betas)
        return opts


def _betas(raw: str) -> list[str]:
    """``anthropic-beta``'s comma-separated feature names, or a 400 naming the header."""
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if len(names) > MAX_BETAS or not all(_BETA.fullmatch(name) for name in names):
        raise BadRequest(
            f"anthropic-beta: {raw[:200]!r} is not a list of up to {MAX_BETAS} feature names"
        )
    return names


def _bounded(name: str, parse: Callable[[str], Any], raw: str, low: float, high: float) -> Any:
    """``raw`` parsed, finite and within ``[low, high]``, or a 400 naming the header."""
    try:
        value = parse(raw.strip())
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None
    # Compared, never converted: an int of any length compares with a float exactly
    # (``math.isfinite`` would overflow on it), and NaN and the infinities fail the test.
    if not low <= value <= high:
        shown = raw.strip() if len(raw.strip()) <= 40 else f"{raw.strip()[:40]}…"
        raise BadRequest(f"{name}: {shown!r} is not between {low:.0f} and {high:.0f}")
    return value


def _nothing() -> None:
    pass


@dataclass
class Answer:
    """A finished answer (``body``) or a live one (``chunks``), with relay headers."""

    headers: dict[str, str]
    body: dict[str, Any] | None = None
    usage: Usage = field(default_factory=Usage)
    chunks: AsyncIterator[dict[str, Any] | Usage] | None = None
    # Releases what a live stream holds; the response calls it however the stream ends,
    # even when the client left before the first chunk and ``chunks`` never started
    # (what it returns is not read).
    close: Callable[[], object] = _nothing


def with_beta(endpoint: Endpoint, body: dict[str, Any], opts: Options) -> dict[str, Any]:
    """``body`` with the Anthropic beta features of the ``anthropic-beta`` header
    (validated) and never any the body itself names."""
    if "anthropic_beta" in body:
        body = {k: v for k, v in body.items() if k != "anthropic_beta"}
    if opts.anthropic_beta and endpoint in ("chat", "count_tokens"):
        # Beta features an Anthropic vendor is asked for (other vendors go without); in
        # the body, so they are part of the cache key too.
        body = {**body, "anthropic_beta": opts.anthropic_beta}
    return body


class Relay:
    def __init__(self, settings: Settings, config: RelayConfig, bus: Bus, cache: ResponseCache):
        self.settings = settings
        self.config = config
        self.bus = bus
        self.cache = cache
        self.keys = config.key_index()
        self.prices = PriceSheet.from_config(config.models)
        self.refusals = RefusalThrottle(settings.auth_refusals_per_minute)

    async def check_model(self, who: Caller, alias: str) -> None:
        """404 for a model the caller may not use; an ``access_denied`` audit event when
        the model exists (asking for one that does not is a typo, not an attempt)."""
        if alias in self.config.models and who.policy.may_use(alias):
            return
        if alias in self.config.models:
            await self.bus.audit(
                "access_denied",
                tenant=who.tenant,
                key_id=who.key_id,
                model=alias,
                detail="model not allowed for this tenant",
            )
        raise ModelNotFound(
            f"The model `{alias}` does not exist or you do not have access to it.",
            param="model",
        )

    def check_kind(self, alias: str, endpoint: Endpoint) -> None:
        """A 400 for an alias asked for what it does not serve (embeddings of a chat
        model, say), before a vendor is paid to refuse it."""
        if (refusal := self.config.kind_refusal(alias, endpoint)) is not None:
            raise refusal

    async def audit_refusal(self, request: Request, kind: AuditKind, **fields: Any) -> None:
        """An audit event about a request the gateway refused before knowing its caller."""
        client = request.client.host if request.client else None
        await self.bus.audit(kind, client=client, path=request.url.path, **fields)

    async def answer(
        self, who: Caller, endpoint: Endpoint, body: dict[str, Any], opts: Options
    ) -> Answer:
        """The answer to one request (cache, or a worker through Kafka); an error says
        the request's trace id, made here when the client sent none."""
        try:
            return await self._answer(who, endpoint, body, opts)
        except RelayError as err:
            err.trace_id = err.trace_id or opts.trace_id
            raise

    async def _answer(
        self, who: Caller, endpoint: Endpoint, body: dict[str, Any], opts: Options
    ) -> Answer:
        alias = str(body.get("model", ""))
        await self.check_model(who, alias)
        self.check_kind(alias, endpoint)
        # Every route counted the turns as its client sent them (chat's model, Anthropic's
        # and Responses' translations): counted here in a body translated since, they
        # could be more than were sent.  The lists a translation keeps item for item are.
        if (refusal := count_refusal(body, turns=None)) is not None:
            raise refusal
        body = with_beta(endpoint, body, opts)
        stream = bool(body.get("stream")) and endpoint == "chat"
        key, ttl = self.cache_terms(who, endpoint, body, opts)
        lookup = opts.cache == "use" and ttl > 0  # x-relay-cache-ttl: 0 asks for no cache
        if lookup:
            hit = await self.cache.get(key)
            if hit is None or hit[1] != "l1":  # (an L1 hit says nothing of Redis)
                metrics.REDIS_UP.set(1 if self.cache.l2_healthy else 0)
            if hit is not None:
                entry, level = hit
                if entry.young_enough(opts.ttl_s):
                    served = await self._from_cache(
                        who, endpoint, alias, entry, level, stream, opts
                    )
                    if served is not None:
                        return served
                    self.cache.l1.delete(key)  # one it cannot serve: asked of a vendor anew
                # Older than this request takes, or not one to serve: a new answer
                # replaces it (the worker must not serve it from L2 either).
                lookup = False
        env = self.envelope(
            who,
            endpoint,
            body,
            opts,
            terms=(key, ttl),
            cache_lookup=lookup,
            stream=stream,
            deadline_ms=int(
                (time.time() + (opts.timeout_s or self.settings.default_timeout_s)) * 1000
            ),
            gateway_meters_timeout=True,
        )
        return await self._through_kafka(env)

    def cache_terms(
        self, who: Caller, endpoint: Endpoint, body: dict[str, Any], opts: Options
    ) -> tuple[str, int]:
        """The request's cache key (also its coalescing and partition key) and TTL."""
        alias = str(body.get("model", ""))
        scope = "global" if who.policy.cache_scope == "global" else f"tenant:{who.tenant}"
        key = cache_key(
            scope=scope,
            alias=alias,
            endpoint=endpoint,
            body=body,
            openai_sampling=self.config.openai_sampling(alias),
        )
        ttl = self.config.models[alias].ttl_seconds()
        if opts.ttl_s is not None:
            # An answer shared across tenants lives no longer than the alias says: one
            # tenant's header must not keep it for everyone (its own, it may).
            ttl = min(opts.ttl_s, ttl) if scope == "global" else opts.ttl_s
        return key, ttl

    def envelope(
        self,
        who: Caller,
        endpoint: Endpoint,
        body: dict[str, Any],
        opts: Options,
        *,
        terms: tuple[str, int] | None = None,
        **fields: Any,
    ) -> RequestEnvelope:
        """The envelope of a request the caller may send (``check_model`` passed), keyed
        and cached by ``terms`` (``cache_terms``, worked out here unless the caller has
        them already); ``fields`` override the defaults (a reply to this gateway, a fresh
        correlation id)."""
        key, ttl = terms or self.cache_terms(who, endpoint, body, opts)
        user = body.get("user") or body.get("safety_identifier")  # OpenAI's newer name
        values: dict[str, Any] = {
            "correlation_id": uuid.uuid4().hex,
            "reply_to": self.bus.reply_topic,
            "tenant": who.tenant,
            "key_id": who.key_id,
            "alias": str(body.get("model", "")),
            "endpoint": endpoint,
            "body": body,
            "prompt_hash": key,
            "priority": opts.priority,
            "trace_id": opts.trace_id,
            "cost_tag": opts.cost_tag,
            "user": user if isinstance(user, str) else None,
            "cache_ttl_s": None if opts.cache == "bypass" or ttl <= 0 else ttl,
            "cache_lookup": opts.cache == "use" and ttl > 0,
            "cache_max_age_s": opts.ttl_s,
        }
        return RequestEnvelope(**(values | fields))

    async def _through_kafka(self, env: RequestEnvelope) -> Answer:
        if self.bus.workers_missing_s() > self.settings.worker_grace_s:
            await self.bus.look_for_workers()  # the last look may be a while old
        missing = self.bus.workers_missing_s()
        if missing > self.settings.worker_grace_s:
            await self._meter_failure(env, NoWorker.code)
            raise NoWorker(
                f"no relay worker has taken requests for {missing:.0f}s, so this one was not "
                "queued; try again shortly",
                retry_after=self.bus.worker_check_s,
            )
        queue = self.bus.expect(env.correlation_id)
        metrics.IN_FLIGHT.inc()
        try:
            try:
                await self.bus.publish(env)
            except RelayError as err:  # never queued: no worker will meter it
                self._done(env, ended=True)  # (nor hear of it: nothing to withdraw)
                await self._meter_failure(env, err.code)
                raise
            first = await self._first(env, queue)
        except BaseException:
            self._done(env)
            raise
        if first is None:  # a stream still waiting: start it, keep-alives and all
            headers = {"x-relay-cache": "miss", **trace_headers(env.trace_id)}
            return Answer(
                headers, chunks=self._stream(env, queue, None), close=lambda: self._done(env)
            )
        headers = {"x-relay-cache": _cache_header(first), **trace_headers(env.trace_id)}
        if first.degraded:  # a stream's headers go out with its first chunk
            headers["x-relay-degraded"] = first.degraded
        if first.kind == "final":
            self._done(env)
            self._count(env, first)
            if first.body is None:  # no chunk came before it, nor a body with it
                raise _as_told(_broken(1) if first.seq > 1 else _unanswered(), first)
            await self._keep(env, first.body, None, first)
            headers.update(_vendor_headers(first))
            headers.update(_cost_headers(first.cost, first.saved_cost))
            usage = first.usage or Usage()
            if env.stream:  # asked as a stream: sent as one, whole as the answer came
                try:
                    chunks = _as_stream(first.body)
                except RelayError as err:
                    raise _as_told(err, first) from None
                return Answer(headers, chunks=_replay(chunks, usage))
            return Answer(headers, body=first.body, usage=usage)
        return Answer(
            headers, chunks=self._stream(env, queue, first), close=lambda: self._done(env)
        )

    async def _first(
        self, env: RequestEnvelope, queue: asyncio.Queue[ReplyEvent]
    ) -> ReplyEvent | None:
        """The first reply; for a stream, None once it has taken ``STREAM_START_S``: the
        response then starts without it (an error after that comes in the stream)."""
        if not env.stream:
            return await self._next(env, queue)
        try:
            async with asyncio.timeout(STREAM_START_S):
                return await self._next(env, queue)
        except TimeoutError:
            return None

    async def _stream(
        self, env: RequestEnvelope, queue: asyncio.Queue[ReplyEvent], first: ReplyEvent | None
    ) -> AsyncIterator[dict[str, Any] | Usage]:
        chunks: list[dict[str, Any]] = []
        sent = 0  # the last chunk's seq: one that comes again (a producer's retry) is dropped
        try:
            event = first or await self._next(env, queue)
            while event.kind == "chunk":
                if event.body is not None and event.seq > sent:
                    if event.seq != sent + 1:
                        raise _broken(sent + 1)
                    sent = event.seq
                    chunks.append(event.body)
                    yield event.body
                event = await self._next(env, queue)
            if event.seq != sent + 1:  # the worker numbers its final after the last chunk
                raise _broken(sent + 1)
            self._count(env, event)
            if not chunks:
                raise _unanswered()
            await self._keep(env, None, chunks, event)
            yield event.usage or Usage()
        finally:
            self._done(env)

    async def _next(self, env: RequestEnvelope, queue: asyncio.Queue[ReplyEvent]) -> ReplyEvent:
        remaining = env.deadline_ms / 1000 - time.time() + REPLY_GRACE_S
        try:
            # What already came is delivered even past the deadline (a slow reader).
            event = queue.get_nowait() if not queue.empty() else None
            if event is None:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for returns a reply
                # that came as the reader was cancelled (its client gone) and drops the
                # cancel, and the reader then waited out the deadline to meter a second
                # ledger line.
                async with asyncio.timeout(max(0.0, remaining)):
                    event = await queue.get()
        except TimeoutError:
            # Metered only by the read that released the request: one released already
            # lost its client (its response let go of it while this read still waited,
            # as when cancelled inside ``send``), so a cancel notice went out, and the
            # worker writes its line.
            if self._done(env, ended=True):
                await self._meter_failure(env, DeadlineExceeded.code)
            raise DeadlineExceeded("no answer within the request's deadline") from None
        if event.kind != "chunk":  # its last reply: from here nothing is withdrawn
            self._done(env, ended=True)
        if event.kind == "error":
            raise _as_told(RelayError.from_dict(event.error or {}), event)
        return event

    def _done(self, env: RequestEnvelope, *, ended: bool = False) -> bool:
        """Release the request's reply queue (once, however often it is called); whether
        this call released it (False: released already).

        A stream released before it ``ended`` (its final or error came, or the gateway
        gave up at the deadline and metered it) lost its client: the worker is told with
        a cancel notice, keyed as the request so it follows it to the same worker, and
        stops the vendor call when nobody else waits on it, rather than pay for an answer
        nobody reads.  Released once, so told at most once."""
        if not self.bus.forget(env.correlation_id):
            return False
        metrics.IN_FLIGHT.dec()
        if env.stream and not ended:
            self.bus.cancel(env.cancel_notice())
        return True

    def _count(self, env: RequestEnvelope, final: ReplyEvent) -> None:
        metrics.CACHE.labels(_cache_header(final)).inc()
        if final.degraded:
            metrics.DEGRADED.labels(final.degraded).inc()
        if not final.coalesced and not final.cache_hit and final.vendor:
            metrics.VENDOR_CALLS.labels(final.vendor, final.model or "").inc()

    async def _keep(
        self,
        env: RequestEnvelope,
        body: dict[str, Any] | None,
        chunks: list[dict[str, Any]] | None,
        final: ReplyEvent,
    ) -> None:
        """Put a fresh answer in this replica's L1 (the worker wrote L2, and when it
        replaced an answer there — a refresh, an answer too old for the request — told
        every replica to drop its L1 copy once the new one was in L2).  Only one the
        worker stored: a request that rode on another's call (a refresh on a bypass
        request's, which stores nothing) keeps what that call's leader chose, and an
        answer the worker would not store (its text not text, say) is not one to serve
        here either.  A final that does not say (a worker from before ``stored``) is
        judged by this request's own terms, as then."""
        if final.stored is False:
            return
        if not env.cache_ttl_s or final.vendor is None or final.degraded:
            return  # a degraded (cheaper) answer is not the alias's answer to keep
        spec = self.config.models.get(env.alias)
        if spec and spec.is_canary(final.vendor, final.model):
            return  # nor a canary's, for users of the stable version
        if final.cache_hit or not storable(body, chunks):
            return  # a worker's L2 hit may be near its end: not kept a whole TTL more
        entry = CacheEntry(
            chunks=chunks or None,
            body=body,
            usage=final.usage or Usage(),
            vendor=final.vendor,
            model=final.model or "",
            created=time.time(),
            endpoint=env.endpoint,
        )
        self.cache.l1.put(env.prompt_hash, entry, env.cache_ttl_s)

    async def _from_cache(
        self,
        who: Caller,
        endpoint: Endpoint,
        alias: str,
        entry: CacheEntry,
        level: str,
        stream: bool,
        opts: Options,
    ) -> Answer | None:
        """A cache hit's answer, or None for an entry that cannot be served as asked: one
        stored before its text was checked (``CacheEntry.plain``), or of a shape that
        will not render.  Made before its ledger line, so a hit that is not served
        writes none.  The line is handed to the bus, never waited for (``Bus.meter``):
        a broker away must not hold up a hit."""
        if not entry.plain():
            return None
        try:
            body, chunks = _served(entry, alias, endpoint, stream)
        except Exception:
            log.warning("a cached answer for %s could not be served", alias, exc_info=True)
            return None
        metrics.CACHE.labels(f"hit-{level}").inc()
        direct = self.prices.direct_cost(alias, entry.usage)
        await self.bus.meter(
            UsageEvent(
                event_id=uuid.uuid4().hex,
                tenant=who.tenant,
                key_id=who.key_id,
                alias=alias,
                endpoint=endpoint,
                vendor=entry.vendor,
                vendor_model=entry.model,
                usage=entry.usage,
                saved_cost=direct,
                direct_cost=direct,
                cost_tag=opts.cost_tag,
                trace_id=opts.trace_id,
                priority=opts.priority,
                cache_hit=True,
            )
        )
        headers = {"x-relay-cache": f"hit-{level}", **trace_headers(opts.trace_id)}
        headers.update(_cost_headers(0.0, direct))
        if chunks is not None:
            return Answer(headers, chunks=_replay(chunks, entry.usage))
        return Answer(headers, body=body, usage=entry.usage)

    async def _meter_failure(self, env: RequestEnvelope, code: str) -> None:
        """No worker answered (deadline), none would (no worker), or the request never
        reached one: the gateway writes the request's ledger line."""
        await self.bus.meter_failure(env, code)


def _served(
    entry: CacheEntry, alias: str, endpoint: Endpoint, stream: bool
) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """A cached entry as the request asked for it: a whole body, or a stream's chunks."""
    if stream:
        return None, entry.chunks or response_to_chunks(entry.whole(alias))
    body = entry.whole(alias)
    if endpoint == "chat":
        body.setdefault("usage", entry.usage.to_openai())
    return body, None


def _as_stream(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A worker's whole answer to a streamed request as the chunks of one; an error
    when it cannot be (text that is not a string would replay as a stream saying
    nothing): never an empty answer passed off as whole."""
    try:
        if plain_text(body):
            return response_to_chunks(body)
    except Exception:
        log.warning("a worker's answer could not be sent as a stream", exc_info=True)
    said = "the vendor's answer could not be sent as a stream (it is not in the chat format)"
    raise VendorAnswerUnreadable(said)


async def _replay(
    chunks: list[dict[str, Any]], usage: Usage
) -> AsyncIterator[dict[str, Any] | Usage]:
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    for chunk in chunks:  # under a new id and time, as a whole answer is
        yield {**chunk, "id": cid, "created": created}
    yield usage


def _unanswered() -> VendorUnavailable:
    """An answer that ended without saying anything (a stream with no chunk, a final with
    no body): a vendor failure, not a 200 holding ``null`` or an event stream with no
    answer in it.  A client SDK retries a 502 by itself; an empty stream it would take as
    an answer with no message (the openai SDK's ``stream().get_final_completion()``
    fails on it, and is not retried)."""
    return VendorUnavailable("the vendor ended without sending an answer")


def _broken(seq: int) -> RelayError:
    """A stream missing chunk ``seq`` (the broker refused it after the worker's send, and
    what came after went through): an error in the stream, never an answer with a hole in
    it passed off as whole (nor kept in L1).  The worker, told of the refusal, meters the
    request as failed and says so too, as it does for a reply it could not pass back."""
    return RelayError(f"the answer could not be passed back (its chunk {seq} went missing)")


def _as_told(err: RelayError, event: ReplyEvent) -> RelayError:
    """``err`` with the x-relay-cache its response says, as ``event`` told it (a caller
    that shared another's failed call hears ``coalesced``)."""
    err.cache = _cache_header(event)
    return err


def _cache_header(event: ReplyEvent) -> str:
    if event.cache_hit:
        return "hit-l2"  # found by the worker: stored after this gateway's own look-up
    return "coalesced" if event.coalesced else "miss"


def _cost_headers(cost: float, saved: float) -> dict[str, str]:
    """What the answer cost and saved, in USD, as its ledger line says (a stream's come
    too late for headers: they are on its ledger line and in the metrics)."""
    return {"x-relay-cost-usd": f"{cost:.10g}", "x-relay-saved-usd": f"{saved:.10g}"}


def _vendor_headers(final: ReplyEvent) -> dict[str, str]:
    out = {}
    if final.vendor:
        out["x-relay-vendor"] = final.vendor
    return out
