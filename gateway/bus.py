"""The gateway's Kafka side: publish envelopes, and route replies to waiting requests.

Each gateway instance reads only its own reply topic (``relay.replies.<instance>``);
replies are matched to waiting requests by correlation id through a registry of queues
(the same shape as Faust's own reply futures, with streaming added).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from prometheus_client import Counter

from gateway import metrics
from gateway.audit import AUDIT_WINDOW_S, AuditTrail
from schemas.envelope import AuditEvent, AuditKind, ReplyEvent, RequestEnvelope, UsageEvent
from schemas.errors import BadRequest, NoHealthyVendor, RelayError, RequestTooLarge
from streams import fetch_guard
from streams.codec import encode
from streams.fetch_guard import Unreadable
from streams.producers import BackgroundProducer, Line
from streams.stopping import stop_consumer, stop_quietly
from streams.topics import MAX_MESSAGE_BYTES, Topics, ensure_topics
from tables.recent import RecentIds

log = logging.getLogger("relay.gateway")
SKIPPED = Counter(
    "relay_replies_skipped_total",
    "Records on this gateway's reply topic it could not read and stepped over: a batch "
    "that cannot be read (unreadable), a record that is no reply (unparsed)",
    ["reason"],
)
for _reason in ("unreadable", "unparsed"):
    SKIPPED.labels(_reason)
TOO_LARGE = "the request is larger than the relay's broker takes in one message"
UNQUEUED = "the relay could not queue the request; try again shortly"


MAX_AUDIT_TEXT = 256  # characters of a path, model or detail an audit event keeps
# Requests whose ledger line this gateway wrote, remembered so that a later failure of the
# same request (the producer giving up on an envelope whose deadline passed) writes none.
METERED_REMEMBERED = 100_000
# How long a stop waits for cancel notices and ledger lines still being handed to the
# producers (see ``Bus.stop``).
BACKGROUND_STOP_S = 1.0
KEPT_AT_STOP = "the gateway stopped before the producer took them"


class Bus:
    """``ephemeral``: the instance id was made up at start, so no later gateway will read
    this reply topic again; it is deleted on a clean stop instead of piling up."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        instance: str,
        *,
        ephemeral: bool = False,
        audit_window_s: float = AUDIT_WINDOW_S,
        worker_check_s: float = 5.0,
        spill_dir: Path | None = None,
        replication: int | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.replication = replication  # of topics it creates (RELAY_TOPIC_REPLICATION)
        self.topics = topics
        self.instance = instance
        self.ephemeral = ephemeral
        self.reply_topic = topics.replies(instance).name
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            linger_ms=0,
            acks=1,
            request_timeout_ms=10000,
            max_request_size=MAX_MESSAGE_BYTES,
        )
        self.ledger = BackgroundProducer(bootstrap, spill_dir)  # ledger and audit lines
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=200,
            fetch_min_bytes=1,
        )
        self.waiting: dict[str, asyncio.Queue[ReplyEvent]] = {}
        self._metered = RecentIds(METERED_REMEMBERED)  # requests this gateway metered
        self._background: set[asyncio.Future[None]] = set()
        # Ledger lines on their way to the producer (``meter``), by the task handing each.
        self._unsent: dict[asyncio.Future[None], Line] = {}
        self._reader: asyncio.Task[None] | None = None
        self.audit_trail = AuditTrail(self._send_audit, window_s=audit_window_s)
        # When a worker was last seen in the requests consumer group (monotonic), as
        # admission reads it: a look that cannot tell (broker unreachable, no rights to
        # describe the group) counts as seen, so a failed look never refuses a request.
        self.worker_seen_at = time.monotonic()
        # When one was really seen, for relay_workers_missing_seconds: counting a failed
        # look as a sighting there would hide from the alerts that nothing takes requests.
        self.worker_sighted_at = time.monotonic()
        self.worker_check_s = worker_check_s
        self._watcher: asyncio.Task[None] | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._looking: asyncio.Future[None] | None = None
        self._looked_at = float("-inf")
        self._stopping = False

    async def start(self) -> None:
        made = await ensure_topics(
            self.bootstrap,
            [*self.topics.all(), self.topics.replies(self.instance)],
            replication=self.replication,
        )
        metrics.BROKER_UP.set(1)  # it just answered
        # A record batch the reader cannot read is stepped over (logged and counted),
        # not fetched again for ever: the reply consumer is the only one in the process.
        fetch_guard.install(skipped)
        await self.producer.start()
        await self.ledger.start()
        await self.consumer.start()
        # Every partition: workers spread replies over all a reply topic has (one made
        # earlier, by hand or by a cluster's defaults, may have more than the one declared).
        tps = [TopicPartition(self.reply_topic, p) for p in range(made[self.reply_topic] or 1)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        self._reader = asyncio.create_task(self._read())
        self._watcher = asyncio.create_task(self._watch_workers())

    async def stop(self) -> None:
        self._stopping = True  # no new looks for workers from here on
        for task in (self._reader, self._watcher, self._looking):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Cancel notices and ledger lines still on their way need the producers: they
        # go first.
        await self._settle_background()
        # Each client is closed even when the one before could not reach the broker.
        if self._admin is not None:
            await stop_quietly(self._admin.close(), "the admin client")
        await stop_consumer(self.consumer, "the reply consumer")
        await stop_quietly(self.audit_trail.close(), "the audit trail")
        await stop_quietly(self.ledger.stop(), "the ledger producer")
        await stop_quietly(self.producer.stop(), "the request producer")
        if self.ephemeral:
            await self._drop_reply_topic()

    async def _settle_background(self) -> None:
        """Wait up to ``BACKGROUND_STOP_S`` for what is still being handed to the
        producers (and for what that hands on meanwhile: a failure's ledger line).  A
        broker that answers takes it in milliseconds; one gone would not take it at all,
        so the wait is short.  A ledger line still not handed on then goes to the spill
        file, for the next start to send: never lost (a cancel notice is simply not
        sent: the vendor call it would have stopped runs on to its end)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + BACKGROUND_STOP_S
        while (left := until - loop.time()) > 0:
            running = {task for task in self._background if not task.done()}
            if not running:
                break
            await asyncio.wait(running, timeout=left)
        unsent = {task: line for task, line in self._unsent.items() if not task.done()}
        for task in unsent:
            task.cancel()  # (waiting for room in the producer's buffer: not queued)
        await asyncio.gather(*unsent, return_exceptions=True)
        if kept := [line for task, line in unsent.items() if task.cancelled()]:
            self.ledger.keep(kept, KEPT_AT_STOP)

    async def _drop_reply_topic(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.delete_topics([self.reply_topic])
        except Exception as exc:  # shutting down: say so, never fail the stop
            log.warning("could not delete reply topic %s: %s", self.reply_topic, exc)
        finally:
            await admin.close()

    async def _read(self) -> None:
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=1000)
            except Exception:  # a broker hiccup must not kill the reader
                log.exception("reply consumer failed; retrying")
                await asyncio.sleep(0.5)
                continue
            for records in batches.values():
                for record in records:
                    try:
                        event = ReplyEvent.model_validate_json(record.value or b"")
                    except Exception as exc:
                        log.warning("unreadable reply at offset %s: %s", record.offset, exc)
                        SKIPPED.labels("unparsed").inc()
                        continue
                    queue = self.waiting.get(event.correlation_id)
                    if queue is not None:
                        queue.put_nowait(event)

    def expect(self, correlation_id: str) -> asyncio.Queue[ReplyEvent]:
        queue: asyncio.Queue[ReplyEvent] = asyncio.Queue()
        self.waiting[correlation_id] = queue
        return queue

    def forget(self, correlation_id: str) -> bool:
        """Stop routing replies to this request; False when it was already forgotten."""
        return self.waiting.pop(correlation_id, None) is not None

    async def publish(self, env: RequestEnvelope) -> None:
        """Hand the envelope to the producer without waiting for the broker's ack: the
        worker's reply is the acknowledgement that matters.  A request the producer
        refuses at once raises here; should the broker refuse it later, the waiting
        request gets that error at once instead of waiting out its deadline, and the
        ledger its line."""
        try:
            delivery = await self._send(env)
        except MessageSizeTooLargeError:
            raise RequestTooLarge(TOO_LARGE) from None
        except KafkaError as exc:
            log.warning("request %s not published: %s", env.correlation_id, exc)
            raise NoHealthyVendor(UNQUEUED) from None
        delivery.add_done_callback(lambda fut: self._undelivered(env, fut))

    def cancel(self, notice: RequestEnvelope) -> None:
        """Publish a cancel notice (``RequestEnvelope.cancel``) in the background: nobody
        waits on it, nothing is metered for it, and one the broker does not take only
        leaves the vendor call it would have stopped to run on to its end."""
        task = asyncio.ensure_future(self._withdraw(notice))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _withdraw(self, notice: RequestEnvelope) -> None:
        try:
            await (await self._send(notice))
        except Exception as exc:
            log.warning("cancel of %s not published: %r", notice.correlation_id, exc)

    async def publish_all(self, envs: list[RequestEnvelope]) -> list[Exception | None]:
        """Publish envelopes nobody waits for here (a batch's lines), and wait until the
        broker took each: the error of each one it did not (metered as failed), or None."""
        deliveries: list[asyncio.Future[object] | Exception] = []
        for env in envs:
            try:
                deliveries.append(await self._send(env))
            except Exception as exc:  # refused at once: too large, unencodable, no broker
                deliveries.append(exc)
        errors: list[Exception | None] = []
        for env, delivery in zip(envs, deliveries, strict=True):
            try:
                if isinstance(delivery, Exception):
                    raise delivery
                await delivery
                errors.append(None)
            except Exception as exc:
                await self._unqueued(env, exc)
                errors.append(exc)
        return errors

    async def _send(self, env: RequestEnvelope) -> asyncio.Future[object]:
        """Hand ``env`` to the producer, keyed by its prompt hash; the broker's ack."""
        return await self.producer.send(  # type: ignore[no-any-return]
            self.topics.requests.name, wire(env), key=env.prompt_hash.encode()
        )

    async def _unqueued(self, env: RequestEnvelope, exc: BaseException) -> None:
        """The broker did not take ``env``: no worker will meter it, so this does."""
        log.warning("request %s not published: %s", env.correlation_id, exc)
        await self.meter_failure(env, unqueued_error(exc).code)

    async def meter_failure(self, env: RequestEnvelope, code: str) -> None:
        """The ledger line of a request no worker will meter, once however many ways it
        failed (its deadline passed here, then the producer gave up on the envelope)."""
        if self._metered.first_time(env.correlation_id):
            await self.meter(UsageEvent.failure(env, code))

    def _undelivered(self, env: RequestEnvelope, delivery: asyncio.Future[object]) -> None:
        if delivery.cancelled() or (exc := delivery.exception()) is None:
            return
        err = unqueued_error(exc)
        task = asyncio.ensure_future(self._unqueued(env, exc))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        queue = self.waiting.get(env.correlation_id)
        if queue is not None:
            queue.put_nowait(
                ReplyEvent(correlation_id=env.correlation_id, kind="error", error=err.to_dict())
            )

    async def meter(self, event: UsageEvent) -> None:
        """Ledger events the gateway itself owes (cache hits, edge refusals, requests no
        worker will meter), handed to the ledger producer in the background: returns at
        once.  A broker away makes a send wait up to ``SEND_WAIT_S`` for room in the
        producer's buffer (then spill the line), and every cache hit, the one answer
        left to give in an outage, would wait so too.  Tracked: ``stop`` waits for the
        line, and spills it if it is still not handed on."""
        metrics.count_line(event)
        line = (self.topics.usage.name, event.tenant.encode(), encode(event))
        task = asyncio.ensure_future(self._write(event, line))
        self._background.add(task)
        self._unsent[task] = line
        task.add_done_callback(self._written)

    async def _write(self, event: UsageEvent, line: Line) -> None:
        topic, key, value = line
        try:
            await self.ledger.send(topic, value, key=key)
        except Exception as exc:
            # Refused for good (too large, not authorised): the client had its answer,
            # and the loss is said.  (A broker away is the producer's to wait out.)
            log.error("ledger line %s (%s) not written: %r", event.event_id, event.tenant, exc)

    def _written(self, task: asyncio.Future[None]) -> None:
        self._background.discard(task)
        self._unsent.pop(task, None)

    async def audit(self, kind: AuditKind, **fields: Any) -> None:
        """An audit event from this gateway; like ledger lines, batched for a moment.
        Identical ones within ``audit_window_s`` of the first are counted, and reported
        in one line when the window closes."""
        # What a client chose (a path, a model name) is cut short: an unknown caller must
        # not fill a topic kept 400 days, nor dodge the folding, with made-up paths.
        fields = {k: v[:MAX_AUDIT_TEXT] if isinstance(v, str) else v for k, v in fields.items()}
        event = AuditEvent(kind=kind, role="gateway", instance=self.instance, **fields)
        await self.audit_trail.record(event)

    async def _send_audit(self, event: AuditEvent) -> None:
        await self.ledger.send(self.topics.audit.name, encode(event), key=event.kind.encode())

    def workers_missing_s(self) -> float:
        """How long no worker has been seen taking requests (0 when one was just now)."""
        return max(0.0, time.monotonic() - self.worker_seen_at)

    async def look_for_workers(self, max_age_s: float = 0.1) -> None:
        """Look again unless the last look is under ``max_age_s`` old (and never twice
        at once): a gateway about to refuse for want of workers checks first."""
        if self._looking is None:
            if self._stopping or time.monotonic() - self._looked_at < max_age_s:
                return
            self._looking = asyncio.ensure_future(self._look())
            self._looking.add_done_callback(self._looked)
        await asyncio.shield(self._looking)

    def _looked(self, look: asyncio.Future[None]) -> None:
        self._looking = None

    async def _look(self) -> None:
        present: bool | None = None  # None: cannot tell
        try:
            described = await self._describe_group()
        except Exception as exc:  # no answer: unreachable, timed out, or no coordinator
            log.debug("could not look for workers: %s", exc)
            metrics.BROKER_UP.set(0)
            await self._drop_admin()  # the next look starts afresh, once it is back
        else:
            metrics.BROKER_UP.set(1)
            try:
                present = _workers_in(described)
            except Exception as exc:  # an error answer (a loading coordinator, no rights)
                log.debug("could not look for workers: %s", exc)
        now = time.monotonic()
        if present is not False:  # cannot tell: never refuse on a failed look
            self.worker_seen_at = now
        if present:
            self.worker_sighted_at = now
        self._looked_at = now
        metrics.WORKERS_MISSING.set(max(0.0, now - self.worker_sighted_at))

    async def _describe_group(self) -> list[Any]:
        """The broker's DescribeGroups answer for the requests consumer group."""
        if self._admin is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
            try:
                await admin.start()
            except BaseException:  # cancelled too: never leave a half-started client
                await admin.close()
                raise
            self._admin = admin
        return await self._admin.describe_consumer_groups([self.topics.app_id])

    async def _drop_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await stop_quietly(admin.close(), "the admin client")

    async def _watch_workers(self) -> None:
        while True:
            await self.look_for_workers(max_age_s=self.worker_check_s / 2)
            await asyncio.sleep(self.worker_check_s)

    async def ready(self) -> dict[str, bool]:
        """Whether the broker answers and some worker is in the requests consumer group."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
        try:
            await admin.start()
        except Exception:
            return {"broker": False, "worker": False}
        try:
            groups = await admin.describe_consumer_groups([self.topics.app_id])
            return {"broker": True, "worker": _workers_in(groups)}
        except Exception:
            return {"broker": True, "worker": False}
        finally:
            await admin.close()


def skipped(bad: Unreadable) -> None:
    """A record batch on the reply topic that cannot be read (a codec this install
    lacks, a header key that is not UTF-8): logged and counted, the fetch moves past it.
    Its replies' waiters hear nothing more, and time out at their deadlines."""
    log.error("skipped %s: a record batch that cannot be read (%s)", bad.where, bad.error)
    SKIPPED.labels("unreadable").inc(bad.last - bad.first + 1)


def wire(env: RequestEnvelope) -> bytes:
    """``env`` as the request topic carries it; a 400 for what JSON allows but the topics'
    encoding does not, in a field the cache key leaves out (``user``, ``metadata``): an
    unpaired surrogate, an integer past 64 bits, nesting hundreds deep."""
    try:
        return encode(env)
    except (TypeError, ValueError, RecursionError) as exc:
        raise BadRequest(f"body: cannot be relayed ({exc})") from None


def _workers_in(described: list[Any]) -> bool:
    """Whether a DescribeGroups answer shows workers: members, or a rebalance under way
    (while workers rejoin, the group can list none for a moment)."""
    if not described or not described[0].groups:
        return False
    error, _group, state, _ptype, _protocol, members, *_ = described[0].groups[0]
    if error:  # e.g. the coordinator is still loading: the answer says nothing
        raise RuntimeError(f"DescribeGroups error code {error}")
    return bool(members) or state in ("PreparingRebalance", "CompletingRebalance")


def unqueued_error(exc: BaseException, unqueued: str = UNQUEUED) -> RelayError:
    """What a client hears of an envelope the broker did not take: 413 when it was too
    large (for a topic made with a lower limit than the relay's), else 503 saying
    ``unqueued``."""
    if isinstance(exc, RelayError):  # a line the topics' encoding cannot take (400)
        return exc
    if isinstance(exc, MessageSizeTooLargeError):
        return RequestTooLarge(TOO_LARGE)
    return NoHealthyVendor(unqueued)
