"""Faust's Kafka consumer, run on the worker's own event loop instead of a thread of its own.

Faust's aiokafka driver puts the consumer on a second thread with a second event loop,
so that an agent that blocks its loop with CPU-bound work does not stall heartbeats.
The relay's agents never block (every vendor call, cache read and send is awaited), and
the thread is what a realtime request paid for: every fetch crossed between the two loops
twice, and the two threads took turns at the GIL.  Measured at 32 clients against a 200 ms
vendor on a 2-core machine, running the consumer here took the relay's added p50 from 12.0
to 8.2 ms and the worker's CPU from 2.6 to 2.1 ms per request.  The consumer service is
served as a task of the worker's loop, and every call the driver makes "in the thread" is
simply awaited.

Its stop is bounded too (``streams.stopping``): without a broker, Faust's would wait for
the offsets commit and the producer's flush as long as the broker stays away.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as driver
from faust.types import TransportT
from mode.threads import ServiceThread
from mode.utils.futures import maybe_async

from streams.stopping import (
    STOP_GRACE_S,
    close_consumer,
    deliver_or_drop,
    finished_within,
    stop_consumer,
)


class _SameLoop:
    """Stands in for mode's ``WorkerThread``: serves the service on the loop it is on."""

    def __init__(self, service: ServiceThread) -> None:
        self.service = service
        self.task: asyncio.Future[None] | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.service._serve(), loop=self.service.parent_loop)
        self.task.add_done_callback(self._served)

    def _served(self, task: asyncio.Future[None]) -> None:
        """However serving ended, the service is down: a stop waiting for that (mode waits
        up to a minute) may go on.  What crashed it, mode has already reported."""
        if not task.cancelled():
            task.exception()
        self.service.set_shutdown()

    def stop(self) -> None:
        """The serving task ends by itself once the service has stopped."""


class InLoopConsumerThread(driver.AIOKafkaConsumerThread):
    """The aiokafka consumer service, on the caller's loop."""

    def __init__(self, consumer: InLoopConsumer, **kwargs: Any) -> None:
        loop = consumer.loop
        super().__init__(consumer, loop=loop, thread_loop=loop, Worker=_SameLoop, **kwargs)

    _closing: asyncio.Future[None] | None = None

    async def call_thread(self, fun: Any, *args: Any, **kwargs: Any) -> Any:
        return await maybe_async(fun(*args, **kwargs))

    async def on_thread_started(self) -> None:
        """No method queue to start: calls are awaited, not queued."""

    async def _keepalive2(self) -> None:
        """mode watches that the thread's loop still turns; there is no thread to watch."""

    def close(self) -> None:
        """Faust closes the consumer this way on a rebalance during shutdown, which marks
        it closed without stopping its fetcher; a thread's loop took the fetcher down
        with it, the worker's must stop it."""
        consumer = self._consumer
        if consumer is not None and self._closing is None:
            consumer._closed = True  # at once, as Faust's close: no more fetches handed out
            self._closing = asyncio.ensure_future(close_consumer(consumer, "the Kafka consumer"))

    async def on_thread_stop(self) -> None:
        # The driver's own: stop the method queue, then the consumer, whose stop without
        # a broker ends early, in its coordinator's cancelled task (``stop_consumer``).
        await super(driver.AIOKafkaConsumerThread, self).on_thread_stop()
        if self._consumer is not None:
            await stop_consumer(self._consumer, "the Kafka consumer")
        if self._closing is not None:
            await asyncio.shield(self._closing)

    async def _gather_remaining_tasks(self) -> None:
        """mode cancels every task left on the thread's loop, which is the worker's here:
        the consumer's own tasks were stopped with it, and the rest are not its to cancel."""


class InLoopConsumer(driver.Consumer):
    async def on_stop(self) -> None:
        """Faust commits what was processed before the consumer stops, retrying until the
        broker answers: wait ``STOP_GRACE_S``, then stop without (whoever takes the
        partitions next starts from the last commit, at most a second older).  Nor does
        it commit once Faust's producer was closed with table changes (or health)
        undelivered: Faust flushes that producer before each commit, so the events it
        took since the last one are what those changes came from, and are taken again.
        (Replies go on a producer no commit waits for, ``streams.replies``: their
        requests' offsets were committed as they were taken, and one lost at stop holds
        back no commit.)"""
        if cast(RelayApp, self.app).undelivered:
            self.log.error("offsets not committed: the producer could not deliver everything")
        elif not await finished_within(super().on_stop(), STOP_GRACE_S):
            self.log.error(
                "offsets not committed within %.0fs of stopping: the broker is unreachable",
                STOP_GRACE_S,
            )

    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return InLoopConsumerThread(self, beacon=self.beacon)


class InLoopTransport(driver.Transport):
    Consumer = InLoopConsumer


class RelayApp(faust.App):
    """A Faust app whose Kafka consumer runs on the worker's event loop."""

    # Faust's producer was closed, at stop, with table changes or health it still held.
    undelivered = False

    def _new_transport(self) -> TransportT:
        return InLoopTransport(self.conf.broker_consumer, self)

    async def _producer_flush(self, logger: Any) -> None:
        """At stop, once requests in flight were answered, Faust waits for the broker as
        long as its producer's request timeout (20 minutes); this waits ``STOP_GRACE_S``,
        then closes the producer and says what was lost.  (The flush of a rebalance,
        while running, waits as Faust's does.)"""
        if not self.should_stop:  # a rebalance: the broker may be back in a minute
            await super()._producer_flush(logger)
            return
        if self._producer is None:
            return
        aiokafka_producer = cast(driver.Producer, self._producer)._producer
        flushing = super()._producer_flush(logger)
        what = "health or table changes"
        if not await deliver_or_drop(flushing, aiokafka_producer, STOP_GRACE_S, what):
            self.undelivered = True
