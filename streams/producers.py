"""The producer for lines on nobody's critical path: ledger, audit and dead letters.

Gateway and worker both write them this way.  They wait up to ``LEDGER_LINGER_MS`` to
share a produce request: the spend agent folds the ledger every 250 ms anyway, and at 60
requests/s one produce request per line cost the broker and the worker (which reads the
ledger back) ~2 ms of CPU per request more.  Idempotent, so a send retried after a
timeout is not a second ledger line.

Nobody awaits a line's delivery, so the producer itself says when one is lost: a line the
broker never took (it stayed unreachable past the client's request timeout) is logged,
and a stop waits at most ``STOP_GRACE_S`` for the lines still held, then says how many
it could not deliver instead of holding the process up for as long as the broker is gone.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer

from streams.stopping import STOP_GRACE_S, close_unflushed

LEDGER_LINGER_MS = 250

log = logging.getLogger(__name__)


class BackgroundProducer:
    def __init__(self, bootstrap: str, stop_grace_s: float = STOP_GRACE_S) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            linger_ms=LEDGER_LINGER_MS,
            acks="all",
            enable_idempotence=True,
        )
        self.stop_grace_s = stop_grace_s
        self.pending: set[asyncio.Future[object]] = set()

    async def start(self) -> None:
        await self.producer.start()

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Queue one line (raises at once only when the producer refuses it outright)."""
        delivery = await self.producer.send(topic, value, key=key)
        self.pending.add(delivery)
        delivery.add_done_callback(lambda done: self._delivered(topic, done))

    def _delivered(self, topic: str, delivery: asyncio.Future[object]) -> None:
        self.pending.discard(delivery)
        if not delivery.cancelled() and (exc := delivery.exception()) is not None:
            log.error("a line for %s was not written: %r", topic, exc)

    async def stop(self) -> None:
        """Deliver what is held (waiting up to ``stop_grace_s``), then close."""
        if self.pending:
            await asyncio.wait(list(self.pending), timeout=self.stop_grace_s)
        if lost := len(self.pending):
            log.error(
                "%d lines (ledger, audit) could not reach the broker within %.0fs of "
                "stopping and are lost",
                lost,
                self.stop_grace_s,
            )
            await close_unflushed(self.producer)
            return
        await self.producer.stop()
