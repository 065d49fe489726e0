"""The worker's producer for replies: one of its own, never Faust's.

A reply goes to a topic the relay does not keep: a gateway's (an ephemeral gateway
deletes its own when it stops), a service's.  On Faust's producer, an answer to a topic
deleted after that producer had cached its metadata stayed queued there, a batch with no
leader to go to, for the producer's request timeout (Faust's: 20 minutes).  Faust flushes
its producer before every offset commit and at every rebalance, so for as long the worker
committed no offset, then took no more requests, then missed its rebalance.  Here such a
batch holds up no flush but this producer's own, and expires after ``REPLY_TIMEOUT_MS``;
its reply's waiter is long gone with its topic.

As Faust's producer was for replies: linger 0 (a client is waiting), every in-sync replica
(on one broker, the leader alone: no longer a wait), messages as large as requests.  At
stop, what it holds is delivered within ``STOP_GRACE_S`` or dropped and said
(``close``).  Those requests are not taken again: Faust counts a request done once its
task is under way, and commits every second while the worker drains, so their offsets
were committed long before (holding back the last commit would only run again the
requests answered in the second before it).  Their waiters hear their deadline, if they
are still there: a gateway's topic deleted as it stopped is what most often loses them.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerClosed

from streams.stopping import STOP_GRACE_S, deliver_or_drop, stop_quietly
from streams.topics import MAX_MESSAGE_BYTES

# How long a reply batch may wait for its topic's leader (a deleted topic has none) or
# the broker's answer: past it the reply fails, and its waiter hears of it if it can.
REPLY_TIMEOUT_MS = 30_000
UNDELIVERED = "replies (the broker away, or their reply topic deleted meanwhile)"


def reply_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="relay-worker-replies",
        linger_ms=0,
        acks="all",
        max_request_size=MAX_MESSAGE_BYTES,
        request_timeout_ms=REPLY_TIMEOUT_MS,
    )


class Replies:
    """Started by the first reply if not before (``start``); closed once, by ``close``.
    Its producer is made as it starts: aiokafka's need the running event loop."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.producer: AIOKafkaProducer | None = None  # the started one
        self._closed = False
        self._starting = asyncio.Lock()

    async def start(self) -> AIOKafkaProducer:
        """The started producer; a producer that fails to start is not tried again, the
        next call makes a new one."""
        async with self._starting:
            if self.producer is not None:
                return self.producer
            if self._closed:
                raise ProducerClosed()
            producer = reply_producer(self.bootstrap)
            try:
                await producer.start()
            except BaseException:
                await stop_quietly(producer.stop(), "a reply producer that could not start")
                raise
            if self._closed:  # closed while it started: it has nothing to deliver
                await stop_quietly(producer.stop(), "the reply producer")
                raise ProducerClosed()
            self.producer = producer
            return producer

    async def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[object]:
        """Queue one reply; the future of its delivery."""
        producer = self.producer or await self.start()
        return await producer.send(topic, value, key=key)  # type: ignore[no-any-return]

    async def close(self, grace_s: float = STOP_GRACE_S) -> bool:
        """Deliver what is held, waiting up to ``grace_s``, then close; True when every
        reply was delivered (False: the rest were dropped, and the log says so).  A reply
        sent after this is refused (``ProducerClosed``)."""
        self._closed = True
        producer, self.producer = self.producer, None
        if producer is None:
            return True
        if not await deliver_or_drop(producer.flush(), producer, grace_s, UNDELIVERED):
            return False
        await stop_quietly(producer.stop(), "the reply producer")
        return True
