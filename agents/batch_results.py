"""Answers to the relay's own Batch API lines: each reply becomes a line of its batch's
output (or error) file, in OpenAI's batch output format, and the lines not sent yet of a
batch cancelled (or expired) are answered here without a vendor call."""

from __future__ import annotations

import asyncio
import logging
import time

from schemas.batches import (
    LineError,
    OutputLine,
    OutputResponse,
    legacy_line,
    parse_correlation,
)
from schemas.envelope import ReplyEvent, RequestEnvelope
from schemas.errors import RelayError, StoreUnavailable
from schemas.formats.functions import answer_as_function_call
from tables.batches import BatchStore

log = logging.getLogger("relay.batch")

# How long a batch's cancel state, once read, stands for all its lines: each line asks
# before every vendor attempt, and a batch of 50 000 lines must not cost Redis a read per
# line per attempt.  A cancel is seen this much later at most.
CANCEL_SEEN_S = 1.0
KNOWN_BATCHES = 1024  # batches remembered before the stale ones are dropped

# Relay errors that OpenAI reports as a line's own error rather than a vendor response.
_LINE_ERRORS = {"deadline_exceeded": "batch_expired", "batch_cancelled": "batch_cancelled"}


def output_line(custom_id: str, event: ReplyEvent) -> OutputLine:
    """The output-file line of a batch line's final reply or error (a line asked with
    the deprecated ``functions`` answered with ``function_call``, as the chat route does)."""
    if event.kind == "final" and event.body is not None:
        body = event.body
        if legacy_line(event.correlation_id):
            body = answer_as_function_call(body)
        response = OutputResponse(status_code=200, request_id=event.correlation_id, body=body)
        return OutputLine(custom_id=custom_id, response=response, usage=event.usage)
    err = RelayError.from_dict(event.error or {"message": "the line has no answer"})
    if err.code in _LINE_ERRORS:
        return OutputLine(
            custom_id=custom_id, error=LineError(code=_LINE_ERRORS[err.code], message=err.message)
        )
    response = OutputResponse(
        status_code=err.status, request_id=event.correlation_id, body=err.openai_body()
    )
    return OutputLine(custom_id=custom_id, response=response)


async def record_reply(store: BatchStore, event: ReplyEvent) -> OutputLine | None:
    """Write a batch line's answer into its batch: the line, or None when nothing was
    recorded (a stream chunk, a correlation id of no batch, a batch the store no longer
    holds, a line recorded before: the topic replayed)."""
    found = parse_correlation(event.correlation_id)
    if found is None or event.kind == "chunk":
        return None
    batch_id, index = found
    custom_id = await store.custom_id(batch_id, index)
    if custom_id is None:
        log.warning("a result for %s, a batch the store does not hold", event.correlation_id)
        return None
    line = output_line(custom_id, event)
    return line if await store.record(batch_id, index, line) else None


async def cancelled(store: BatchStore, env: RequestEnvelope, results_topic: str) -> bool:
    """Whether ``env`` is a line of a batch cancelled, or expired, before the line was
    sent (``BatchStore.cancelled``: an expired batch takes no more answers, and the
    line's is recorded ``batch_expired`` already); when the store cannot say, the line is
    sent (a cancel is best effort, an answer is owed)."""
    if env.reply_to != results_topic:
        return False  # not a Batch API line: no lookup on the realtime path
    line = parse_correlation(env.correlation_id)
    if line is None:
        return False
    try:
        return await store.cancelled(line[0])
    except StoreUnavailable:
        return False


class CancelledBatches:
    """Whether a Batch API line's batch was cancelled (or expired), as ``cancelled``
    says, read from the store once per batch per ``ttl_s`` however many of its lines ask
    (those asking together share one read)."""

    def __init__(self, store: BatchStore, results_topic: str, ttl_s: float = CANCEL_SEEN_S):
        self.store = store
        self.results_topic = results_topic
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[float, asyncio.Future[bool]]] = {}

    async def __call__(self, env: RequestEnvelope) -> bool:
        if env.reply_to != self.results_topic:
            return False
        line = parse_correlation(env.correlation_id)
        if line is None:
            return False
        batch_id, now = line[0], time.monotonic()
        known = self._known.get(batch_id)
        if known is None or known[0] <= now:
            if len(self._known) >= KNOWN_BATCHES:
                self._known = {b: k for b, k in self._known.items() if k[0] > now}
            known = (now + self.ttl_s, asyncio.ensure_future(self._read(batch_id)))
            self._known[batch_id] = known
        # Shielded: a line cut while it waits (the worker stopping) leaves the read to
        # the other lines waiting on it.
        return await asyncio.shield(known[1])

    async def _read(self, batch_id: str) -> bool:
        try:
            return await self.store.cancelled(batch_id)
        except Exception as exc:  # the line is sent: a cancel is best effort
            log.warning("cancel state of %s not read: %r", batch_id, exc)
            return False
