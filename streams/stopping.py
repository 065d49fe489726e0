"""Stopping Kafka clients when their broker may be gone.

aiokafka's clients, stopped while the broker is unreachable, can end their ``stop()`` in
CancelledError (a fetch or coordinator task of their own that they cancelled) or in the
connection error itself.  Taken at face value, that cuts short the rest of a shutdown:
the next client is never closed and the process waits on what it never finished.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

log = logging.getLogger(__name__)
STOP_GRACE_S = 5.0  # how long a stop waits for the broker to take what is still held


async def stop_quietly(stopping: Awaitable[None], what: str) -> None:
    """Await ``stopping``; a failure, or a cancel that is not this task's own, is logged
    and the shutdown goes on."""
    try:
        await stopping
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # this task itself is being cancelled: so be it
        log.info("%s stopped without its broker", what)
    except Exception as exc:
        log.warning("%s did not stop cleanly: %r", what, exc)


async def stop_consumer(consumer: AIOKafkaConsumer, what: str) -> None:
    """``consumer.stop()``, quietly; when it ends early (in its coordinator's cancelled
    task, without a broker), its fetcher and connections are closed all the same, so
    they stop retrying (and logging) until the process exits."""
    try:
        await consumer.stop()
        return
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        log.info("%s stopped without its broker", what)
    except Exception as exc:
        log.warning("%s did not stop cleanly: %r", what, exc)
    await _close_fetching(consumer, what)  # its coordinator's close is what ended early


async def close_consumer(consumer: AIOKafkaConsumer, what: str) -> None:
    """What ``AIOKafkaConsumer.stop`` does once the consumer is marked closed: its
    coordinator, fetcher and connections closed in turn, each even when the one before
    failed without its broker."""
    await stop_quietly(consumer._coordinator.close(), what)
    await _close_fetching(consumer, what)


async def _close_fetching(consumer: AIOKafkaConsumer, what: str) -> None:
    await stop_quietly(consumer._fetcher.close(), what)
    await stop_quietly(consumer._client.close(), what)


_left: set[asyncio.Future[object]] = set()  # steps given up on that may still be running


async def finished_within(step: Awaitable[object], grace_s: float) -> bool:
    """Run ``step`` for up to ``grace_s``; False (and ``step`` cancelled) when it had not
    finished by then.  Not ``wait_for``: that waits for the cancelled step to end, and
    Faust's flush and commit can swallow that cancel and go on waiting for the broker, so
    such a step is left to end on its own (what it ends with is logged, not lost)."""
    task = asyncio.ensure_future(step)
    try:
        await asyncio.wait([task], timeout=grace_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.done():
        task.result()
        return True
    task.cancel()
    _left.add(task)
    task.add_done_callback(_ended)
    return False


def _ended(task: asyncio.Future[object]) -> None:
    _left.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.info("a stop step given up on ended later: %r", exc)


async def deliver_or_drop(
    flushing: Awaitable[None], producer: AIOKafkaProducer | None, grace_s: float, what: str
) -> bool:
    """Wait up to ``grace_s`` for ``flushing``; past that, close ``producer`` unflushed and
    say that ``what`` it held is lost.  True when everything was delivered."""
    if await finished_within(flushing, grace_s):
        return True
    log.error("%s could not reach the broker within %.0fs of stopping and are lost", what, grace_s)
    if producer is not None:
        await close_unflushed(producer)
    return False


async def close_unflushed(producer: AIOKafkaProducer, grace_s: float = STOP_GRACE_S) -> None:
    """Close ``producer`` without the flush its ``stop()`` would wait on for as long as the
    broker is gone: what it still holds is dropped (its futures never resolve: whoever
    held them has given up on them), and what is sent after is refused as after any
    stop.  (Not the accumulator's ``fail_all``: a batch the cancelled sender put back
    then breaks aiokafka's own bookkeeping with a KeyError in a callback.)"""
    producer._closed = True  # its own stop() now returns at once
    sender = producer._sender.sender_task if producer._sender is not None else None
    if sender is not None and not sender.done():
        sender.cancel()
    await stop_quietly(producer.client.close(), "a producer's connections")  # fails in-flight
    if sender is not None:
        await asyncio.wait([sender], timeout=grace_s)
    producer._message_accumulator._closed = True
