"""Bind the plain agents and tables to the Faust app: the only module that knows both.

relay.requests ─▶ requests agent ─▶ RequestHandler (coalesce → route → dispatch)
                   │ replies ─▶ relay.replies.<gateway>
                   │ ledger  ─▶ relay.usage  ─▶ spend agent  ─▶ tenant_spend table
                   └ outcome ─▶ relay.health ─▶ health agent ─▶ vendor_health table
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from functools import cache, partial
from pathlib import Path
from typing import Any

import faust
import orjson
import redis.asyncio as aioredis
from aiohttp import web
from aiokafka.partitioner import murmur2

from agents.adapters.http import vendor_client
from agents.adapters.registry import make_adapter
from agents.batch_lane import BatchLane
from agents.batch_results import CancelledBatches, cancelled, record_reply
from agents.dispatch import Dispatcher
from agents.handler import REPLY_SEND_S, BatchLines, RequestHandler
from agents.keys import KeyPool
from agents.route import Router
from schemas.config import RelayConfig
from schemas.envelope import (
    AuditEvent,
    DeadLetter,
    HealthBatch,
    HealthEvent,
    ReplyEvent,
    RequestEnvelope,
    UsageEvent,
)
from schemas.errors import BatchCancelled, DeadlineExceeded, StoreUnavailable, answer_lost
from schemas.settings import Settings
from streams import fetch_guard, metrics, topic_guard
from streams.app import make_app
from streams.codec import M, decode, encode
from streams.fetch_guard import Unreadable
from streams.producers import BackgroundProducer
from streams.replies import Replies
from streams.stopping import stop_quietly
from streams.topics import Topics
from tables.batches import BatchStore
from tables.buckets import PriorityGate, TokenBucket
from tables.budgets import BudgetPolicy, Spend, add_spend
from tables.cache import CacheEntry, L1Cache, ResponseCache, redis_prefix
from tables.health import BreakerPolicy, Health, fold, health_key
from tables.holds import Budgets
from tables.lane_journal import LaneJournal
from tables.prices import PriceSheet
from tables.recent import RecentIds

log = logging.getLogger("relay.worker")
HEALTH_WINDOW_S = 0.2
SPEND_BATCH = 500  # ledger lines folded into the spend table per write, at most
SPEND_WINDOW_S = 0.25  # ...and at most this long after the first of them
RECENT_LINES = 100_000  # ledger ids remembered, so a line sent twice is spent once
RECENT_REQUESTS = 100_000  # correlation ids remembered, so an envelope posted twice runs once
STOP_ANSWER_S = 5.0  # for requests cut at shutdown to send their error and ledger line
# The header marking a Batch API line a stopping worker put back on the request topic: its
# value, new for each copy put back, tells that copy from the first (see ``taken_as``).
PUT_BACK = "relay-put-back"


class TenantTable(faust.GlobalTable):
    """A global table keyed by tenant, each tenant's changes kept in the changelog
    partition of its ledger lines (the ledger is keyed by tenant), whatever event is being
    processed when it is written: the spend agent writes once per batch of lines, and a
    batch holds lines of several partitions."""

    def partition_for_key(self, key: Any) -> int:
        return ledger_partition(str(key), self.partitions or 1)


def ledger_partition(tenant: str, partitions: int) -> int:
    """The partition of a tenant's ledger lines: the producers' default partitioner
    (murmur2 of the key, as in the Java client) on the tenant's name."""
    return (murmur2(tenant.encode()) & 0x7FFFFFFF) % partitions


class KafkaSink:
    """The handler's outputs, as Kafka messages (and the L2 cache).

    Replies go out on a producer of their own (``streams.replies``: linger 0, a client
    is waiting), so one to a topic deleted meanwhile never holds up Faust's flush before
    each offset commit.  Health goes out on Faust's (a breaker is waiting).  Ledger lines
    are on nobody's critical path, so a third producer lets them batch for up to 250 ms:
    fewer, larger produce requests for the broker.
    """

    def __init__(
        self,
        app: faust.App,
        topics: Topics,
        cache: ResponseCache,
        bootstrap: str,
        spill_dir: Path | None = None,
        *,
        tenants: Collection[str] = frozenset(),
        aliases: Collection[str] = frozenset(),
        replies: Replies | None = None,
    ) -> None:
        self.app = app
        self.replies = replies if replies is not None else Replies(bootstrap)
        self.topics = topics
        self.cache_store = cache
        self.bootstrap = bootstrap
        self.spill_dir = spill_dir
        # The config's names: a ledger line's metrics label any other ``unknown``.
        self.tenants = frozenset(tenants)
        self.aliases = frozenset(aliases)
        self._background: BackgroundProducer | None = None
        self._starting = asyncio.Lock()
        self._health: dict[str, list[HealthEvent]] = {}
        self._last_ok: dict[str, bool] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        # Told of every ledger line (tenant, correlation id): the budgets' holds let go.
        self.on_line: Callable[[str, str | None], None] = lambda tenant, request: None
        # Told of a stream's chunk the broker refused after taking it: the handler loses
        # that waiter (told at once, its line failed) instead of streaming on past a hole.
        self.on_chunk_lost: Callable[[ReplyEvent, BaseException], None] = lambda e, exc: None

    async def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one message on Faust's producer; the future of its delivery."""
        delivery = await self.app.producer.send(
            topic, key, value, partition=None, timestamp=None, headers=headers
        )
        return asyncio.ensure_future(delivery)  # (aiokafka's future, typed as an awaitable)

    async def put_back(self, env: RequestEnvelope) -> None:
        """Put ``env`` (a Batch API line the worker's stop cut) back on the request topic,
        keyed as the gateway keys it and marked ``PUT_BACK``; returns once the broker has
        it."""
        mark = [(PUT_BACK, uuid.uuid4().hex.encode())]
        key = env.prompt_hash.encode()
        await (await self._send(self.topics.requests.name, key, encode(env), mark))

    async def _send_later(self, topic: str, key: bytes | None, value: bytes) -> None:
        if self._background is None:
            async with self._starting:
                if self._background is None:
                    producer = BackgroundProducer(self.bootstrap, self.spill_dir)
                    try:
                        await producer.start()
                    except Exception as exc:
                        # No broker to start on yet: the line waits in the spill file
                        # (sent by the producer that starts), and the next line tries again.
                        producer.keep([(topic, key, value)], f"no producer ({exc!r})")
                        await stop_quietly(producer.producer.stop(), "a ledger producer")
                        return
                    self._background = producer
        await self._background.send(topic, value, key=key)

    async def close(self) -> bool:
        """Deliver the replies and lines still held, each producer within its grace;
        True when every reply was delivered (a line not delivered is spilled)."""
        replies = asyncio.ensure_future(self.replies.close())  # both waits at once
        if self._background is not None:
            await self._background.stop()
        return await replies

    async def reply(self, topic: str, event: ReplyEvent) -> None:
        key = event.correlation_id.encode()
        delivery = await self.replies.send(topic, key, encode(event))
        if event.kind != "chunk" or event.body is not None:  # (a degraded notice: no matter)
            # An answer or a chunk the broker took, then failed to store.
            delivery.add_done_callback(partial(self._replied, topic, event))

    def _replied(self, topic: str, event: ReplyEvent, delivery: asyncio.Future[Any]) -> None:
        """A reply the broker refused after taking it (a topic with a smaller message
        limit than the relay's, say): logged, and its waiter told at once (a small error
        goes where a large answer would not) rather than left to its deadline; a chunk's
        waiter by the handler (``on_chunk_lost``), which knows its stream."""
        if delivery.cancelled() or (exc := delivery.exception()) is None:
            return
        log.warning("reply to %s on %s not delivered: %r", event.correlation_id, topic, exc)
        if event.kind == "chunk":
            self.on_chunk_lost(event, exc)
            return
        if event.kind != "final":
            return
        lost = answer_lost(exc)
        told = ReplyEvent(correlation_id=event.correlation_id, kind="error", error=lost.to_dict())
        task = asyncio.ensure_future(self._tell(topic, told))
        self._tasks.add(task)
        task.add_done_callback(self._sent_or_logged)

    async def _tell(self, topic: str, told: ReplyEvent) -> None:
        """Queue ``told`` within ``REPLY_SEND_S``, as the handler's replies are: a topic
        gone meanwhile would keep the send asking the broker for its metadata."""
        async with asyncio.timeout(REPLY_SEND_S):
            await self.replies.send(topic, told.correlation_id.encode(), encode(told))

    async def usage(self, event: UsageEvent) -> None:
        metrics.count_line(event, self.tenants, self.aliases)
        self.on_line(event.tenant, event.correlation_id)
        await self._send_later(self.topics.usage.name, event.tenant.encode(), encode(event))

    async def health(self, event: HealthEvent) -> None:
        """Successes in a row wait up to ``HEALTH_WINDOW_S`` and go out together per key,
        so healthy traffic costs the health agent one table write per window.  A failure,
        or the first success after one (a probe, a recovery), goes at once: breakers must
        react to those without delay."""
        outcome = "ok" if event.ok else event.error_code or "error"
        metrics.VENDOR_CALLS.labels(event.vendor, event.model, outcome).inc()
        metrics.VENDOR_LATENCY.labels(event.vendor, event.model).observe(event.latency_ms / 1000)
        key = health_key(event.vendor, event.model)
        urgent = not event.ok or not self._last_ok.get(key, True)
        self._last_ok[key] = event.ok
        pending = self._health.setdefault(key, [])
        pending.append(event)
        if urgent:
            self._flush_health(key)
        elif len(pending) == 1:
            asyncio.get_running_loop().call_later(HEALTH_WINDOW_S, self._flush_health, key)

    def _flush_health(self, key: str) -> None:
        events = self._health.pop(key, [])
        if not events:
            return
        # One producer for every health message, so a key's batches stay in order.
        batch = encode(HealthBatch(events=events))
        task = asyncio.ensure_future(self._send(self.topics.health.name, key.encode(), batch))
        self._tasks.add(task)
        task.add_done_callback(self._sent_or_logged)

    def _sent_or_logged(self, task: asyncio.Future[Any]) -> None:
        """A message queued off the request's path (health, a late error): a failure to
        queue it is logged where the relay's logs are, never left to asyncio's."""
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("a worker message could not be sent: %r", exc)

    async def cache(
        self, key: str, entry: CacheEntry, ttl_s: int, *, replacing: bool = False
    ) -> None:
        """Store an answer in L2; one ``replacing`` what may be there (a refresh) is then
        announced, so every gateway drops its L1 copy and reads the new answer, which is
        in L2 by then.  The worker announces, not a gateway: only it knows the answer
        was stored (one a bypass leader's flight answered is not), and when."""
        if await self.cache_store.put(key, entry, ttl_s) and replacing:
            await self.cache_store.replaced(key, entry.created)

    async def cached(self, key: str, *, stale_ok: bool = False) -> CacheEntry | None:
        hit = await self.cache_store.get(key, stale_ok=stale_ok)
        return hit[0] if hit else None

    async def dead_letter(self, letter: DeadLetter) -> None:
        # Keyed (by where it came from): a topic a cluster's default compacts refuses
        # a message without a key.
        await self._send_later(self.topics.dead_letter.name, letter.topic.encode(), encode(letter))

    def dead_letter_soon(self, letter: DeadLetter) -> None:
        """Send ``letter`` from a task of its own: for a fetch, which cannot wait."""
        task = asyncio.ensure_future(self.dead_letter(letter))
        self._tasks.add(task)
        task.add_done_callback(self._sent_or_logged)

    async def audit(self, event: AuditEvent) -> None:
        await self._send_later(self.topics.audit.name, event.kind.encode(), encode(event))


def build_worker(settings: Settings, config: RelayConfig, bootstrap: str) -> faust.App:
    """The worker app with its agents and tables; run it with ``app.main()``/``Worker``."""
    topics = Topics(settings.topic_prefix)
    app = make_app(settings, bootstrap)
    metrics.start_cost_series(config.tenant_aliases())
    metrics.start_call_series(
        {(c.vendor, c.model) for spec in config.models.values() for c in spec.all_candidates()}
    )
    # httpcore traces every request at DEBUG; left to inherit, building those records
    # costs the worker more CPU than the rest of a vendor call.
    for name in ("httpx", "httpcore", "aiokafka"):
        logging.getLogger(name).setLevel(logging.WARNING)
    requests = app.topic(topics.requests.name, key_serializer="raw", value_serializer="raw")
    health_events = app.topic(topics.health.name, key_serializer="raw", value_serializer="raw")
    health: faust.GlobalTable = app.GlobalTable(  # type: ignore[assignment]
        "vendor_health", partitions=1, key_type=str
    )
    usage_events = app.topic(topics.usage.name, key_serializer="raw", value_serializer="raw")
    spend: TenantTable = app.tables.add(  # type: ignore[assignment]
        TenantTable(
            app,
            name="tenant_spend",
            partitions=topics.usage.partitions,
            key_type=str,
            beacon=app.tables.beacon,
            standby_buffer_size=1,  # as app.GlobalTable: apply changes as they come
            is_global=True,
        )
    )
    policy = BreakerPolicy(**config.breaker.model_dump())

    redis = aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=0.25, socket_connect_timeout=0.25
    )
    cache = ResponseCache(
        L1Cache(1),
        redis,
        stale_s=settings.cache_stale_s,
        prefix=redis_prefix(settings.topic_prefix),
    )
    sink = KafkaSink(
        app,
        topics,
        cache,
        bootstrap,
        settings.spill_dir(),
        tenants=config.tenants.keys(),
        aliases=config.models.keys(),
    )
    # A fetched batch aiokafka cannot read no longer stops the worker (streams.fetch_guard),
    # and no topic is made by naming it: a deleted reply topic stays deleted.
    fetch_guard.install(partial(unreadable, sink, topics.requests.name))
    topic_guard.install()
    http = vendor_client(settings.default_timeout_s)
    adapters = {name: make_adapter(v, http) for name, v in config.vendors.items()}
    pools = {name: KeyPool(v.keys()) for name, v in config.vendors.items()}
    for name, v in config.vendors.items():
        if (v.api_key_env or v.api_keys_env) and not len(pools[name]):
            named = ", ".join(n for n in [v.api_key_env, *v.api_keys_env] if n)
            log.warning("vendor %s: no key in %s; its calls go without one", name, named)

    def view(key: str) -> dict[str, Any] | None:
        return health.get(key)  # type: ignore[no-any-return]

    prices = PriceSheet.from_config(config.models)
    budgets = Budgets(
        {t: BudgetPolicy(**c.budget.model_dump()) for t, c in config.tenants.items() if c.budget},
        lambda tenant: Spend(**(spend.get(tenant) or {})),
        prices,
    )
    sink.on_line = budgets.metered

    handler = RequestHandler(
        Router(config, view),
        Dispatcher(
            adapters,
            pools,
            sink.health,
            batching={a: m.batching for a, m in config.models.items() if m.batching},
            gate=make_gate(config, settings.workers),
        ),
        prices,
        sink,
        discounts={name: v.batch_discount for name, v in config.vendors.items()},
        budget=budgets,
    )
    sink.on_chunk_lost = handler.reply_lost
    # The Batch API's store and the lane's journal: Redis with room for whole batches.
    store_redis = aioredis.Redis.from_url(
        settings.store_redis(), socket_timeout=5, socket_connect_timeout=1
    )
    store = BatchStore(store_redis, settings.topic_prefix, settings.batch_retention_s)
    owner = f"{settings.instance_id or 'worker'}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lease_s = config.batch_lane.lease_s
    journal = LaneJournal(store_redis, settings.topic_prefix, owner, lease_s)

    results_topic = topics.batch_results.name

    async def line_cancelled(env: RequestEnvelope) -> bool:
        return await cancelled(store, env, results_topic)

    # Batch API lines the worker took: a cancel still reaches them before each vendor
    # attempt, and a stop puts those it cut back on the request topic.
    handler.batch_lines = BatchLines(
        results_topic, CancelledBatches(store, results_topic), sink.put_back
    )

    lane = handler.lane = BatchLane(
        adapters,
        pools,
        config.batch_lane,
        handler.deliver_batch,
        journal=journal,
        cancelled=line_cancelled,
        on_adopted=handler.adopted,  # the deadlines its first worker kept are set again
        on_dropped=handler.dropped,  # and the holds of those another worker answers go
    )
    in_flight: set[asyncio.Task[None]] = set()
    batch_results = app.topic(
        topics.batch_results.name, key_serializer="raw", value_serializer="raw"
    )

    @app.timer(interval=max(0.5, lease_s / 2))
    async def _adopt_vendor_batches() -> None:
        """Vendor batches whose worker died (its lease lapsed) are polled on from here."""
        await lane.adopt()

    async def handle(env: RequestEnvelope) -> None:
        try:
            gone = await cancelled(store, env, results_topic)
        except asyncio.CancelledError:  # the worker stops while the store is slow to say
            await handler.cut(env)
            raise
        if gone:
            # Done with: its batch cancelled, or expired (its window, the line's deadline, over).
            ended = env.deadline_ms / 1000 <= time.time()
            await handler.refuse(
                env,
                DeadlineExceeded("the batch's window ended before this line")
                if ended
                else BatchCancelled("the batch was cancelled before this line"),
            )
            return
        await handler.handle(env)

    def _finished(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("request task failed", exc_info=exc)

    taken = RecentIds(RECENT_REQUESTS)

    async def requests_agent(stream: faust.StreamT[bytes]) -> None:
        """Take each envelope and let it fly on its own task, so a slow vendor call never
        holds up the partition behind it.  An envelope taken already (a producer's retry,
        a service posting twice) is dropped: one request, one answer, one ledger line."""
        async for event in stream.events():
            msg = event.message
            try:
                env = decode(RequestEnvelope, event.value)
                if refusal := reply_refusal(env.reply_to, topics):
                    raise ValueError(refusal)
            except Exception as exc:
                log.warning("dead letter %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, exc)
                value = event.value
                raw = (
                    value
                    if isinstance(value, bytes)
                    else b""
                    if value is None
                    else str(value).encode()
                )
                letter = DeadLetter.of(msg.topic, msg.partition, msg.offset, str(exc), raw)
                try:
                    await sink.dead_letter(letter)
                except Exception as again:  # the next envelope must still be taken
                    log.warning("dead letter not written: %r", again)
                continue
            if env.cancel:  # a notice, not a request: no task, reply or ledger line
                handler.cancel(env)
                continue
            if not taken.first_time(taken_as(env, msg.headers)):
                log.warning("request %s arrived twice: the copy is dropped", env.correlation_id)
                continue
            task = asyncio.create_task(handle(env))
            in_flight.add(task)
            task.add_done_callback(_finished)

    async def batch_results_agent(stream: faust.StreamT[bytes]) -> None:
        """Write each answer to a Batch API line into its batch; while the store is down
        the partition waits (the topic keeps the answers), then carries on."""
        async for event, _ in readable(stream, ReplyEvent):
            while True:
                try:
                    if line := await record_reply(store, event):
                        metrics.BATCH_LINES.labels(line.outcome).inc()
                    break
                except StoreUnavailable:
                    log.warning("batch store unavailable; result %s waits", event.correlation_id)
                    await asyncio.sleep(1.0)
                except Exception:  # this result cannot be recorded; the next ones can
                    log.exception("batch result %s not recorded", event.correlation_id)
                    break

    async def health_agent(stream: faust.StreamT[bytes]) -> None:
        """Fold every call's outcome into the vendor-health table (one writer: 1 partition)."""
        async for batch, offset in readable(stream, HealthBatch):
            first = batch.events[0]
            key = health_key(first.vendor, first.model)
            raw = health.get(key)
            current = Health.model_validate(raw) if raw else Health()
            folded = fold(current, batch.events, offset, policy, time.time())
            if folded is not None:
                health[key] = folded.model_dump(mode="json")

    recent_lines = RecentIds(RECENT_LINES)

    async def spend_agent(stream: faust.StreamT[bytes]) -> None:
        """Accumulate each tenant's spend from the ledger, a batch of lines at a time:
        one table write per tenant per batch instead of one per request, which spares
        every worker a changelog message to send and to read back for each call.  Only
        the fields needed are read from each line; a line sent twice is spent once."""
        batches = stream.take_events(SPEND_BATCH, within=SPEND_WINDOW_S)  # type: ignore[attr-defined]
        async for events in batches:
            held: dict[str, Spend] = {}  # each tenant's spend, read once per batch

            def spent(tenant: str, held: dict[str, Spend] = held) -> Spend:
                if tenant not in held:
                    held[tenant] = Spend(**(spend.get(tenant) or {}))
                return held[tenant]

            fresh, last = unfolded(events, spent)
            for tenant, cost, at in spend_by_tenant(fresh, recent_lines):
                rule = config.tenants.get(tenant)
                period = rule.budget.period if rule and rule.budget else "month"
                added = add_spend(spent(tenant), cost, at, period)
                if tenant in last:
                    added = added.model_copy(update={"folded": last[tenant]})
                held[tenant] = added
                spend[tenant] = added.model_dump()

    app.agent(requests, name="requests")(requests_agent)
    app.agent(health_events, name="health")(health_agent)
    app.agent(batch_results, name="batch_results")(batch_results_agent)
    app.agent(usage_events, name="spend")(spend_agent)

    @app.task
    async def _started() -> None:
        """Start the reply producer (now, not at the first reply, which starts it
        otherwise); say in the audit log that this worker runs, and with which config;
        and take what start-up made out of the collector's scans (a full collection under
        load then pauses the loop ~2 ms instead of ~45 ms)."""
        try:
            await sink.replies.start()
        except Exception as exc:
            log.warning("the reply producer could not start yet: %r", exc)
        gc.freeze()
        # The lease owner's name unless one is set: not the pid alone, as every worker in
        # a container is pid 1.
        instance = settings.instance_id or owner
        await sink.audit(
            AuditEvent(
                kind="started", role="worker", instance=instance, config_sha256=config.digest()
            )
        )

    serving: list[web.AppRunner] = []

    @app.task
    async def _serve_metrics() -> None:
        if not settings.worker_metrics_port:
            return
        state = metrics.WorkerState(
            in_flight=lambda: len(in_flight),
            lane_queued=lambda: lane.queued,
            health=lambda: dict(health.items()),
            open_s=policy.open_s,
        )
        port, allowed = settings.worker_metrics_port, settings.scrape_allowed
        serving.append(await metrics.serve(settings.host, port, state, allowed))

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _close(app: faust.App, **_: Any) -> None:
        """Faust has stopped consuming (what it fetched but never handed over stays
        uncommitted, for the next owner of the partition).  The requests already taken
        are answered and metered before the producer and vendor clients close, so a
        rolling restart leaves nobody waiting out a deadline."""
        lane.stopping = True  # adopts nothing more, and sends at once what comes now
        handler.stop_waiting()  # Batch API lines waiting on a budget go back now
        batches = lane.flush_all()  # the lane's live set: what the drain's requests send too
        await finish(lambda: in_flight | handler.spawned, batches, settings.worker_drain_s)
        # Vendor batches still running stay journaled: their leases lapse and another
        # worker adopts them.  Stopped here, before the vendor clients close under them.
        running = [task for task in batches if not task.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for runner in serving:
            await runner.cleanup()
        await store_redis.aclose()
        await http.aclose()
        # Replies still held past the grace are dropped and said lost (``Replies.close``),
        # and the last commit is made all the same: their requests' offsets went with
        # Faust's commits as they were taken, so nothing would take them again.
        await sink.close()

    return app


def reply_refusal(reply_to: str, topics: Topics) -> str | None:
    """Why the worker may not write a reply to ``reply_to``, or None: replies go to a
    producer's own topic, a gateway's, or this deployment's Batch API results, never
    into a topic whose readers would take a reply (keyed by the producer's own
    ``correlation_id``) for one of their records.  Refused: this deployment's own topics,
    and under any prefix (another deployment sharing the cluster) Kafka's internal topics
    (``__consumer_offsets``), the changelogs and internal topics of Faust and Kafka
    Streams apps (a record in ``<app>-tenant_spend-changelog`` keyed by a tenant would
    reset its spend), and a relay's ledger, audit, request, health, dead-letter and
    results topics (``streams.topics``), whatever their prefix."""
    if reply_to == topics.batch_results.name:
        return None
    if reply_to in _own_names(topics):
        return f"reply_to names the relay's own topic {reply_to}"
    if reply_to.startswith("__"):
        return f"reply_to names a Kafka internal topic {reply_to}"
    if reply_to.endswith(("-changelog", "-repartition")) or "-__" in reply_to:
        return f"reply_to names a stream app's internal topic {reply_to}"
    if reply_to.endswith(_relay_suffixes(topics)):
        return f"reply_to names a relay topic of another deployment {reply_to}"
    return None


@cache  # (asked for every envelope: worked out once)
def _own_names(topics: Topics) -> frozenset[str]:
    return frozenset(t.name for t in topics.all())


@cache
def _relay_suffixes(topics: Topics) -> tuple[str, ...]:
    """The endings of a relay deployment's own topics under its prefix (``.usage``,
    ``.dead-letter``...): the same under every prefix."""
    head = f"{topics.prefix}."
    return tuple(
        t.name.removeprefix(topics.prefix) for t in topics.all() if t.name.startswith(head)
    )


def unreadable(sink: KafkaSink, requests: str, bad: Unreadable) -> None:
    """Records of a fetched batch that could not be read (a header key that is not
    UTF-8, say): on the request topic they are dead-lettered, as an envelope that does
    not parse is, with the whole batch as the letter's value; on the relay's own topics
    they are logged and skipped, as a message that does not parse there is."""
    if bad.topic != requests:
        fetch_guard.skipped(bad)
        return
    log.warning("dead letter %s: a record batch that cannot be read (%s)", bad.where, bad.error)
    error = (
        f"offsets {bad.first} to {bad.last} of a record batch that cannot be read "
        f"({bad.error}); the value is the whole batch, as fetched"
    )
    sink.dead_letter_soon(DeadLetter.of(bad.topic, bad.partition, bad.first, error, bad.raw))


def taken_as(env: RequestEnvelope, headers: Any) -> str:
    """What the worker remembers an envelope by, to drop a copy of one it took: its
    correlation id; for a Batch API line a stopping worker put back, that and the copy's
    own ``PUT_BACK`` mark, so the copy is taken (by a worker that took the first, too)
    while a producer's retry of either is still dropped."""
    if headers:  # (the gateway's envelopes carry none)
        for name, value in headers.items() if isinstance(headers, Mapping) else headers:
            if name == PUT_BACK:
                mark = value.decode(errors="replace") if isinstance(value, bytes) else value
                return f"{env.correlation_id}#{mark}"
    return env.correlation_id


def unfolded(
    events: Sequence[Any], spent: Callable[[str], Spend]
) -> tuple[list[bytes], dict[str, tuple[int, int]]]:
    """The values of ledger ``events`` not folded into their tenant's spend yet (read
    again after a worker died before committing), and each tenant's last line here, as
    (partition, offset).  Lines are keyed by tenant; one without a key is let through.
    ``spent`` is asked once per line: the caller reads each tenant's spend once."""
    fresh: list[bytes] = []
    last: dict[str, tuple[int, int]] = {}
    for event in events:
        key, msg = event.key, event.message
        tenant = key.decode(errors="replace") if isinstance(key, bytes) else key
        if isinstance(tenant, str):
            if spent(tenant).has_folded(msg.partition, msg.offset):
                continue
            last[tenant] = (msg.partition, msg.offset)
        fresh.append(event.value)
    return fresh, last


def spend_by_tenant(
    values: list[bytes], recent: RecentIds | None = None
) -> list[tuple[str, float, float]]:
    """(tenant, summed cost, latest time) over ledger lines, summed per tenant and UTC day
    (budget periods start at midnight UTC, so no sum straddles one) and in time order;
    only the fields needed are read, a line that does not parse is skipped (the ledger's
    readers own it), and a line whose event id is in ``recent`` (sent twice) is not
    counted again."""
    totals: dict[tuple[str, int], tuple[float, float]] = {}
    now = time.time()
    for raw in values:
        try:
            line = orjson.loads(raw)
            tenant, cost, at = str(line["tenant"]), float(line.get("cost", 0)), line["ts_ms"] / 1000
            event_id = line.get("event_id")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if recent is not None and isinstance(event_id, str) and not recent.first_time(event_id):
            continue
        # A line stamped ahead (a skewed clock, microseconds for milliseconds) counts now:
        # taken at its word it would open a later budget period and make every line
        # stamped rightly look late, which would switch the tenant's budget off.
        at = min(at, now) if at > 0 else None
        if at is None or not math.isfinite(cost):
            continue
        if cost > 0:
            day = (tenant, int(at // 86400))
            sum_, last = totals.get(day, (0.0, 0.0))
            totals[day] = (sum_ + cost, max(last, at))
    return sorted(((t, c, at) for (t, _), (c, at) in totals.items()), key=lambda s: s[2])


Tasks = Callable[[], set[asyncio.Task[None]]]


async def finish(
    requests: Tasks,
    batches: Collection[asyncio.Task[None]],
    drain_s: float,
    answer_s: float = STOP_ANSWER_S,
) -> None:
    """Answer and meter the requests a stopping worker took: let the tasks ``requests``
    names (the agent's, and those the handler started on its own) and the vendor
    ``batches`` finish for up to ``drain_s``; then cut the requests still unanswered (a
    long stream), while the producer is open: each waiter is told at once and each gets
    its ledger line (a Batch API line is put back on the request topic instead), within
    ``answer_s``.  ``requests`` is asked again as tasks end, so a
    follower run again when its leader's call landed is waited for (and cut) too."""
    loop = asyncio.get_running_loop()
    end = loop.time() + drain_s
    told = False
    while pending := {t for t in requests() | set(batches) if not t.done()}:
        if (left := end - loop.time()) <= 0:
            log.warning("stopping: %d requests still unanswered after the drain", len(pending))
            break
        if not told:
            log.warning(
                "stopping: finishing %d requests in flight (up to %.0fs)", len(pending), left
            )
            told = True
        await asyncio.wait(pending, timeout=left)
    end = loop.time() + answer_s
    cut: set[asyncio.Task[None]] = set()
    while (left := end - loop.time()) > 0:
        # One turn of the loop first: a task spawned just now takes its first step, so
        # it is cut inside the request (which answers), not before it began (nobody).
        await asyncio.sleep(0)
        if not (pending := {t for t in requests() if not t.done()}):
            break
        for task in pending - cut:  # once each: a second cancel would cut its answer
            task.cancel()
        cut |= pending
        await asyncio.wait(pending, timeout=left)


async def readable(stream: faust.StreamT[bytes], cls: type[M]) -> AsyncIterator[tuple[M, int]]:
    """The stream's messages as ``cls``, each with its offset; one that does not parse is
    logged and skipped (these topics are ours alone, so a bad message is a bug to see, not
    a client's)."""
    async for event in stream.events():
        msg = event.message
        try:
            value = decode(cls, event.value)
        except Exception as exc:
            log.warning("skipped %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, exc)
            continue
        yield value, msg.offset


def make_gate(config: RelayConfig, workers: int) -> PriorityGate:
    """Token buckets for every configured RPM/TPM limit, this worker's share of each."""
    gate = PriorityGate()
    share = max(1, workers)
    limits: list[tuple[str, int | None, bool]] = []
    for name, v in config.vendors.items():
        limits += [(f"vendor:{name}", v.rpm, False), (f"vendor-tpm:{name}", v.tpm, True)]
    for name, t in config.tenants.items():
        limits += [(f"tenant:{name}", t.rpm, False), (f"tenant-tpm:{name}", t.tpm, True)]
    for key, limit, tokens in limits:
        if limit:
            # A fractional share, so the workers' refills add up to the limit itself (a
            # share rounded up to 1 per minute would let 4 workers send 4 against a 3).
            per_worker = limit / share
            gate.configure(
                key,
                TokenBucket.from_tpm(per_worker) if tokens else TokenBucket.from_rpm(per_worker),
            )
    return gate
