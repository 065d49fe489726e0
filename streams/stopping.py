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

from aiokafka import AIOKafkaProducer

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


async def finished_within(step: Awaitable[object], grace_s: float) -> bool:
    """Run ``step`` for up to ``grace_s``; False (and ``step`` cancelled, not awaited) when
    it had not finished by then.  Not ``wait_for``: that waits for the cancelled step to
    end, and Faust's flush can swallow that cancel (its own short ``wait_for`` racing it)
    and go on waiting for the broker."""
    task = asyncio.ensure_future(step)
    await asyncio.wait([task], timeout=grace_s)
    if task.done():
        task.result()
        return True
    task.cancel()
    return False


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


async def close_unflushed(producer: AIOKafkaProducer) -> None:
    """Close ``producer`` without the flush its ``stop()`` would wait on for as long as the
    broker is gone (what it still holds is dropped)."""
    producer._closed = True  # its stop() now returns at once: close its parts here
    if producer._sender is not None:
        await producer._sender.close()
    await producer.client.close()
