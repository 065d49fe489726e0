"""The batch-API lane: background requests go through a vendor batch API at its discount.

Requests marked ``background`` are held per (vendor, model) until ``max_size`` of them
wait or the oldest has waited ``max_age_s``, then submitted as one batch (OpenAI
``/v1/files`` + ``/v1/batches``, Anthropic Message Batches) and polled until it ends.
Each result goes back on the request's own reply topic like any other answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from agents.adapters.base import BatchVendor, VendorCall, VendorResult
from agents.keys import KeyPool
from schemas.config import BatchLane as LaneRule
from schemas.config import Candidate
from schemas.envelope import RequestEnvelope
from schemas.errors import RelayError, VendorUnavailable

log = logging.getLogger("relay.batch")

Deliver = Callable[[RequestEnvelope, Candidate, VendorResult | RelayError], Awaitable[None]]
BatchResults = dict[str, VendorResult | Exception]
POLL_FAILURES = 5  # failed polls in a row before the batch's callers are told it failed


@dataclass
class _Queue:
    items: list[RequestEnvelope] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class BatchLane:
    def __init__(
        self,
        adapters: Mapping[str, object],
        pools: dict[str, KeyPool],
        rule: LaneRule,
        deliver: Deliver,
    ) -> None:
        self.adapters = adapters
        self.pools = pools
        self.rule = rule
        self.deliver = deliver
        self._queues: dict[tuple[str, str], _Queue] = {}
        self._cands: dict[tuple[str, str], Candidate] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches_sent = 0

    @property
    def queued(self) -> int:
        """Requests waiting for their batch to go out."""
        return sum(len(q.items) for q in self._queues.values())

    def accepts(self, cand: Candidate) -> bool:
        return isinstance(self.adapters.get(cand.vendor), BatchVendor)

    def submit(self, env: RequestEnvelope, cand: Candidate) -> None:
        key = (cand.vendor, cand.model)
        self._cands[key] = cand
        queue = self._queues.setdefault(key, _Queue())
        queue.items.append(env)
        if len(queue.items) >= self.rule.max_size:
            self._flush(key)
        elif queue.timer is None:
            loop = asyncio.get_running_loop()
            queue.timer = loop.call_later(self.rule.max_age_s, self._flush, key)

    def flush_all(self) -> set[asyncio.Task[None]]:
        """Send every waiting batch now (the worker is stopping); the tasks running them."""
        for key in list(self._queues):
            self._flush(key)
        return set(self._tasks)

    def _flush(self, key: tuple[str, str]) -> None:
        queue = self._queues.pop(key, None)
        if queue is None or not queue.items:
            return
        if queue.timer is not None:
            queue.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._run(self._cands[key], queue.items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, cand: Candidate, items: list[RequestEnvelope]) -> None:
        adapter = self.adapters[cand.vendor]
        assert isinstance(adapter, BatchVendor)
        _, key = self.pools[cand.vendor].pick()
        calls = [
            (env.correlation_id, VendorCall(model=cand.model, body=env.body, api_key=key))
            for env in items
        ]
        by_id = {env.correlation_id: env for env in items}
        try:
            batch_id = await adapter.submit_batch(calls, key)
            self.batches_sent += 1
            results = await self._poll(adapter, batch_id, key)
        except Exception as exc:  # a vendor error, or an answer we could not read
            err = (
                exc
                if isinstance(exc, RelayError)
                else VendorUnavailable(f"the batch could not be read back ({type(exc).__name__})")
            )
            log.warning("batch to %s/%s failed: %s", cand.vendor, cand.model, err)
            results = dict.fromkeys(by_id, err)
        for cid, env in by_id.items():
            got = results.get(cid)
            if not isinstance(got, VendorResult | RelayError):
                got = VendorUnavailable("the batch returned no result")
            try:  # one caller's delivery failing must not leave the others unanswered
                await self.deliver(env, cand, got)
            except Exception:
                log.exception("could not deliver the batch result for %s", cid)

    async def _poll(self, adapter: BatchVendor, batch_id: str, key: str) -> BatchResults:
        """Poll until the batch ends; a failed poll (the vendor busy for a moment) is
        tried again, up to ``POLL_FAILURES`` in a row, since the batch runs on anyway."""
        failures = 0
        while True:
            await asyncio.sleep(self.rule.poll_s)
            try:
                results = await adapter.poll_batch(batch_id, key)
            except RelayError as err:
                failures += 1
                if not err.retryable or failures >= POLL_FAILURES:
                    raise
                log.warning("polling batch %s failed (%d in a row): %s", batch_id, failures, err)
                continue
            failures = 0
            if results is not None:
                return results
