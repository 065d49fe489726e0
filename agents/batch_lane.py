"""The batch-API lane: background requests go through a vendor batch API at its discount.

Requests marked ``background`` are held per (vendor, model) until ``max_size`` of them
wait or the oldest has waited ``max_age_s``, then submitted as one batch (OpenAI
``/v1/files`` + ``/v1/batches``, Anthropic Message Batches) and polled until it ends.
Each result goes back on the request's own reply topic like any other answer, with the
request's own candidate (aliases sharing a vendor model may price it differently).  With a
``LaneJournal`` every vendor batch in flight is written down and leased, so a worker that
dies mid-batch does not lose it: another worker adopts it when the lease lapses, and
answers only what the dead one had not (each answer is noted in the journal as it goes).  A
vendor batch whose every request was cancelled (their Batch API batches were cancelled,
or expired) is cancelled at the vendor, and what it had not run is answered
``batch_cancelled`` (``batch_expired``); what it had run is delivered and metered.  A
request the vendor cannot take in a batch (``CallsRefused``) goes on alone the realtime
way, and the batch goes out without it.  A vendor batch refused as it was sent leaves
its requests to go on the realtime way; one that may have been made though its create
call failed (``BatchVendor``) fails them instead, never sent again, and its vendor is
left alone for ``REFUSED_S``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from agents.adapters.base import (
    BatchCleaner,
    BatchVendor,
    CallsRefused,
    VendorCall,
    VendorResult,
)
from agents.adapters.http import scrubbed
from agents.keys import KeyPool
from schemas.config import BatchLane as LaneRule
from schemas.config import Candidate
from schemas.envelope import RequestEnvelope
from schemas.errors import (
    BadRequest,
    BatchCancelled,
    DeadlineExceeded,
    RelayError,
    VendorAnswerUnreadable,
    VendorAuthFailed,
    VendorBadRequest,
    VendorNotFound,
    VendorUnavailable,
    VendorUnsupported,
)
from tables.cache import REDIS_ERRORS
from tables.lane_journal import LaneJournal, VendorBatch

log = logging.getLogger("relay.batch")

Deliver = Callable[[RequestEnvelope, Candidate, VendorResult | RelayError], Awaitable[None]]
Dropped = Callable[[list[RequestEnvelope]], None]
# Told the unanswered requests of a vendor batch adopted, and the batch's candidate.
Adopted = Callable[[list[RequestEnvelope], Candidate], None]
BatchResults = dict[str, VendorResult | Exception]
# Answers nobody can read, polls in a row, before the batch's callers are told so.
POLL_FAILURES = 5
POLL_MAX_S = 60.0  # polls of a long batch slow down to one a minute, failed ones too
# A vendor batch runs (and bills) up to its 24-hour window whatever its poller hears, so
# a poll that fails is tried again until that window, and an hour more, has passed.
VENDOR_WINDOW_S = 25 * 3600.0
FORGET_ATTEMPTS = 8  # tries to strike an answered batch from the journal (~1 min)
REFUSED_S = 600.0  # a vendor that refused a batch (no batch API) is left alone this long


_Key = tuple[str, str, tuple[str, ...]]  # vendor, model, beta features
# A request with its own candidate: a vendor batch holds one vendor and model, but two
# aliases may price that model differently, and each request is billed (and cached) as
# its own alias prices it.
_Request = tuple[RequestEnvelope, Candidate]


@dataclass
class _Queue:
    items: list[_Request] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class _LeaseLost(Exception):
    """Another worker adopted the batch this one polls."""


def _ids(items: list[_Request]) -> list[str]:
    """Each request's id in its vendor batch: its place in the batch.  (Correlation ids
    hold a slash for Batch API lines, which Anthropic's custom_id pattern refuses.)"""
    return [f"r{i}" for i in range(len(items))]


def _result_for(results: BatchResults, i: int, env: RequestEnvelope) -> object:
    # A batch an older worker sent (and this one adopted) is keyed by correlation id.
    return results.get(f"r{i}", results.get(env.correlation_id))


def _all_read(results: BatchResults, items: list[_Request]) -> bool:
    """Whether every request's answer was read: none missing (a results line nobody could
    read is skipped, its request with it) and none ``VendorAnswerUnreadable``."""
    for i, (env, _) in enumerate(items):
        got = _result_for(results, i, env)
        if not isinstance(got, VendorResult | RelayError) or isinstance(
            got, VendorAnswerUnreadable
        ):
            return False
    return True


def _withdrawn(env: RequestEnvelope, before: str) -> RelayError:
    """Why a request its Batch API batch withdrew goes unsent (or unrun): that batch was
    cancelled, or its window ended (a line's deadline is its batch's end) and it takes
    no more answers: ``deadline_exceeded``, which its error file says ``batch_expired``,
    as the store recorded the line when it found the batch expired."""
    if time.time() * 1000 >= env.deadline_ms:
        return DeadlineExceeded(f"the batch's window ended {before}")
    return BatchCancelled(f"the batch was cancelled {before}")


def _scrub(got: Any, key: str) -> Any:
    """A vendor's error without the key it was made with (a batch line's error may echo
    it); answers and other exceptions (reported by type only) as they are."""
    return scrubbed(got, key) if isinstance(got, RelayError) else got


def _failure(exc: Exception, *, alone: bool = False) -> RelayError:
    """What a request hears of its vendor batch's failure (``alone``: of its own refusal,
    left out of the batch)."""
    if isinstance(exc, VendorBadRequest | BadRequest):
        # Refused or failed as a whole (too large, one bad line, the vendor's
        # queued-token limit), or a request the adapter could not put to the vendor: one
        # tenant's request must not fail the others, nor switch the lane off.  Each goes
        # on alone, the realtime way, where only a bad one is refused.
        what = (
            "the vendor batch could not take it" if alone else "the vendor batch failed as a whole"
        )
        return VendorUnsupported(f"{what}: {exc}")
    if isinstance(exc, RelayError):
        return exc
    # A bug of the relay's (the caller logged it): its exception names our code, not for
    # clients.  Retryable: the requests go on the realtime way.
    return VendorUnavailable("the vendor batch failed (an internal error; it has been logged)")


class BatchLane:
    def __init__(
        self,
        adapters: Mapping[str, object],
        pools: dict[str, KeyPool],
        rule: LaneRule,
        deliver: Deliver,
        journal: LaneJournal | None = None,
        cancelled: Callable[[RequestEnvelope], Awaitable[bool]] | None = None,
        on_adopted: Adopted | None = None,
        on_dropped: Dropped | None = None,
    ) -> None:
        self.adapters = adapters
        # Told the requests this lane will not answer after all, though it took them:
        # another worker's vendor batch carries them already, or another worker took over
        # the batch this one followed.  What the caller keeps for them (their budget
        # holds) is that worker's now.
        self.on_dropped = on_dropped
        # Told the requests of a vendor batch adopted here that are not answered yet, and
        # the batch's candidate (whose vendor's discount it bills at): what the worker
        # that sent it kept in memory for them (the deadline timers of those a gateway
        # waits on, their budget holds) died with it, and is the caller's to set up again.
        self.on_adopted = on_adopted
        # Whether a request was cancelled while it waited to go out (a Batch API line of
        # a batch cancelled, or expired, since): asked again just before the vendor batch
        # is sent, and at each poll (every request cancelled: so is the vendor batch).
        self.cancelled = cancelled
        self.journal = journal
        self.stopping = False  # set when the worker stops: it adopts nothing more
        self._following: set[str] = set()  # vendor batches this lane polls now
        self.pools = pools
        self.rule = rule
        self.deliver = deliver
        self._queues: dict[_Key, _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._refused: dict[str, float] = {}  # vendor -> when its batch API may be tried again
        self.batches_sent = 0

    @property
    def queued(self) -> int:
        """Requests waiting for their batch to go out."""
        return sum(len(q.items) for q in self._queues.values())

    def accepts(self, cand: Candidate) -> bool:
        """Whether the vendor has a batch API (and did not just refuse a batch: an
        OpenAI-compatible server without one is left alone for ``REFUSED_S``)."""
        if self._refused.get(cand.vendor, 0.0) > time.monotonic():
            return False
        return isinstance(self.adapters.get(cand.vendor), BatchVendor)

    def submit(self, env: RequestEnvelope, cand: Candidate) -> None:
        # One vendor batch per (vendor, model) and beta features asked (Anthropic's
        # ``anthropic-beta``): a batch goes out with one set of headers.
        betas = env.body.get("anthropic_beta")
        # (As text: a producer's body may hold anything there; a batch of ones no vendor
        # takes fails as a whole, and each goes on alone, to its own 400.)
        key = (cand.vendor, cand.model, tuple(map(str, betas)) if isinstance(betas, list) else ())
        queue = self._queues.setdefault(key, _Queue())
        queue.items.append((env, cand))
        if len(queue.items) >= self.rule.max_size or self.stopping:
            # (A stopping worker's drain waits for the lane's tasks, not for its timers.)
            self._flush(key)
        elif queue.timer is None:
            loop = asyncio.get_running_loop()
            queue.timer = loop.call_later(self.rule.max_age_s, self._flush, key)

    def withdraw(self, correlation_id: str) -> bool:
        """Take a request back that still waits for its batch to go out (its caller gave
        up): True when it was waiting, so it never reaches the vendor."""
        for queue in self._queues.values():
            for item in queue.items:
                if item[0].correlation_id == correlation_id:
                    queue.items.remove(item)
                    return True
        return False

    def flush_all(self) -> set[asyncio.Task[None]]:
        """Send every waiting batch now (the worker is stopping); the lane's set of tasks
        running them, live: a batch sent later (by a request the worker is finishing)
        joins it, so a drain that watches it waits for that one too."""
        for key in list(self._queues):
            self._flush(key)
        return self._tasks

    def _flush(self, key: _Key) -> None:
        queue = self._queues.pop(key, None)
        if queue is None or not queue.items:
            return
        if queue.timer is not None:
            queue.timer.cancel()
        self._spawn(self._run(queue.items))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as one of the lane's tasks (``flush_all`` hands them over)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, items: list[_Request]) -> None:
        if not (items := await self._not_carried(items)):
            return
        if self.cancelled is not None:
            stopped = [await self.cancelled(env) for env, _ in items]
            for (env, own), no in zip(items, stopped, strict=True):
                if no:
                    await self.deliver(env, own, _withdrawn(env, "first"))
            items = [item for item, no in zip(items, stopped, strict=True) if not no]
            if not items:
                return
        cand = items[0][1]  # the vendor and model, every request's (not their prices)
        adapter = self.adapters[cand.vendor]
        assert isinstance(adapter, BatchVendor)
        index, key = self.pools[cand.vendor].pick()
        sent = await self._submit(adapter, items, key)
        if sent is None:
            return
        batch_id, items = sent
        self.batches_sent += 1
        entry = VendorBatch(
            id=batch_id,
            submitted_at=time.time(),
            candidate=cand,
            key_index=index,
            envelopes=[env for env, _ in items],
            candidates=[own for _, own in items],
        )
        write_down = self.journal.submitted if self.journal else None
        leased = await self._journal("write down", write_down, entry)
        if self.journal is not None and not leased:
            # The write may have landed all the same (only its answer was lost): then the
            # lease is this worker's and must be kept, or another would adopt it too.
            leased = await self._still_mine(entry.id)
        await self._follow(entry, key, leased=leased)

    async def _submit(
        self, adapter: BatchVendor, items: list[_Request], key: str
    ) -> tuple[str, list[_Request]] | None:
        """Send ``items`` as one vendor batch: its id and the requests it holds, or None
        when none went out (each request answered why).  A request the vendor cannot
        take (``CallsRefused``) is answered its own refusal, to go on alone the realtime
        way, and the batch goes out without it: one request must not cost the others
        the discount."""
        while True:
            calls = [
                (vendor_id, VendorCall(model=items[0][1].model, body=env.body, api_key=key))
                for vendor_id, (env, _) in zip(_ids(items), items, strict=True)
            ]
            try:
                return await adapter.submit_batch(calls, key), items
            except CallsRefused as exc:
                refusal = exc
            except Exception as exc:
                await self._not_submitted(items, exc, key)
                return None
            if not refusal.refused.keys() & set(_ids(items)):  # (an adapter's bug)
                await self._not_submitted(items, refusal, key)
                return None
            if not (items := await self._left_out(items, refusal, key)):
                return None

    async def _left_out(
        self, items: list[_Request], refusal: CallsRefused, key: str
    ) -> list[_Request]:
        """Answer the requests the vendor cannot take in a batch, each its own refusal
        (to go on alone, the realtime way); the others."""
        ids = _ids(items)
        out = [item for i, item in zip(ids, items, strict=True) if i in refusal.refused]
        why = [
            _failure(_scrub(refusal.refused[i], key), alone=True)
            for i in ids
            if i in refusal.refused
        ]
        cand = items[0][1]
        log.warning(
            "%d requests left out of a batch to %s/%s: %s",
            len(out),
            cand.vendor,
            cand.model,
            why[0],
        )
        await self._deliver_all(out, dict(zip(_ids(out), why, strict=True)))
        return [item for i, item in zip(ids, items, strict=True) if i not in refusal.refused]

    async def _not_submitted(self, items: list[_Request], exc: Exception, key: str) -> None:
        """Answer the requests of a vendor batch that did not go out, or may have."""
        cand = items[0][1]
        exc = _scrub(exc, key)
        log.warning(
            "batch to %s/%s not submitted: %s",
            cand.vendor,
            cand.model,
            exc,
            exc_info=None if isinstance(exc, RelayError) else exc,  # a bug: its trace
        )
        # No batch API there, or one whose create calls fail without an answer (the batch
        # may run all the same: its requests are not sent again, and fail): background
        # requests go the realtime way for a while.
        if isinstance(exc, VendorNotFound | VendorAnswerUnreadable):
            self._refused[cand.vendor] = time.monotonic() + REFUSED_S
        await self._deliver_all(items, dict.fromkeys(_ids(items), _failure(exc)))

    async def _follow(self, batch: VendorBatch, key: str, *, leased: bool) -> None:
        """Poll a vendor batch to its end and deliver its answers; a ``leased`` one (in
        the journal) only while this worker holds its lease, so that when another worker
        adopted it (this one stalled past the lease) only that one answers."""
        adapter = self.adapters[batch.candidate.vendor]
        assert isinstance(adapter, BatchVendor)
        self._following.add(batch.id)
        try:
            await self._follow_through(batch, adapter, key, leased=leased)
        finally:
            self._following.discard(batch.id)

    async def _follow_through(
        self, batch: VendorBatch, adapter: BatchVendor, key: str, *, leased: bool
    ) -> None:
        # The lease is renewed all along, not only between polls: a slow poll or a long
        # delivery must not let it lapse under a live worker (another would answer too).
        heartbeat = asyncio.create_task(self._keep_lease(batch.id)) if leased else None
        try:
            await self._poll_and_deliver(batch, adapter, key, leased=leased)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()

    async def _keep_lease(self, batch_id: str) -> None:
        while True:
            await asyncio.sleep(self.rule.lease_s / 3)
            await self._still_mine(batch_id)

    async def _poll_and_deliver(
        self, batch: VendorBatch, adapter: BatchVendor, key: str, *, leased: bool
    ) -> None:
        cand, items = batch.candidate, batch.requests()
        read = False  # every answer was read: what it left at the vendor may go
        try:
            # Cancelled (the worker stops while the vendor works on): it stays in the
            # journal under a lease that lapses, for another worker to adopt.
            results, key = await self._poll(adapter, batch, key, leased=leased)
            read = _all_read(results, items)
        except _LeaseLost:
            log.warning("batch %s was taken over by another worker", batch.id)
            self._dropped(batch.envelopes)
            return
        except RelayError as exc:  # it failed as a whole, or could not be read back
            log.warning("batch to %s/%s failed: %s", cand.vendor, cand.model, exc)
            results = dict.fromkeys(_ids(items), _failure(exc))
        except Exception:  # a bug: its callers still hear, and it is not resent
            log.exception("batch %s could not be followed", batch.id)
            # Its text is the relay's own business (it may quote anything): the log has it.
            unread = VendorAnswerUnreadable(
                "the vendor batch could not be read back (an internal error; it has been logged)"
            )
            results = dict.fromkeys(_ids(items), unread)
        if leased and not await self._still_mine(batch.id):
            log.warning("batch %s was taken over by another worker", batch.id)
            self._dropped(batch.envelopes)
            return
        await self._deliver_all(items, results, journaled=batch if leased else None)
        # Cleaned once no adopter can need it: struck from the journal (or never in it).
        forgotten = await self._forget(batch) if leased else True
        if read and forgotten and isinstance(adapter, BatchCleaner):
            await self._clean(adapter, batch.id, key)

    async def _clean(self, adapter: BatchCleaner, batch_id: str, key: str) -> None:
        """Delete what an answered vendor batch left at the vendor (OpenAI's files count
        against the account's storage, which, full, would refuse the lane's next upload),
        best effort: only after every answer was delivered (and the batch struck from the
        journal), since an adopter must still be able to read them before."""
        try:
            await adapter.clean_batch(batch_id, key)
        except Exception as exc:
            what = scrubbed(exc, key) if isinstance(exc, RelayError) else type(exc).__name__
            log.warning("vendor batch %s answered, but not cleaned up: %s", batch_id, what)

    async def _forget(self, batch: VendorBatch) -> bool:
        """Strike an answered batch from the journal, retrying while Redis is away and
        keeping the lease meanwhile: left there, it would be adopted and answered again.
        False when it is still there."""
        assert self.journal is not None
        for attempt in range(FORGET_ATTEMPTS):
            if await self._journal("forget", self.journal.done, batch):
                return True
            await asyncio.sleep(min(2.0**attempt, 10.0))
            await self._still_mine(batch.id)  # renew, if Redis answers again
        log.error("batch %s answered but still in the lane journal", batch.id)
        return False

    async def _not_carried(self, items: list[_Request]) -> list[_Request]:
        """``items`` minus those already in a vendor batch in flight (a dead worker sent
        them before its offsets were committed): the batch's adopter answers those."""
        if self.journal is None:
            return items
        try:
            carried = await self.journal.carried([env.correlation_id for env, _ in items])
        except REDIS_ERRORS:
            return items
        if carried:
            log.warning("%d requests are in a vendor batch already: not sent again", len(carried))
            self._dropped([env for env, _ in items if env.correlation_id in carried])
        return [item for item in items if item[0].correlation_id not in carried]

    def _dropped(self, envs: list[RequestEnvelope]) -> None:
        if self.on_dropped is not None and envs:
            self.on_dropped(envs)

    async def adopt(self) -> int:
        """Take over the vendor batches whose worker stopped renewing its lease (it died);
        how many this lane now follows."""
        if self.journal is None or self.stopping:
            return 0
        try:
            found = await self.journal.adopt()
        except REDIS_ERRORS as exc:
            log.warning("the lane journal is unavailable: %s", exc)
            return 0
        adopted = 0
        for entry in found:
            if entry.id in self._following:
                continue  # its lease lapsed while this worker stalled: it polls it still
            cand = entry.candidate
            if cand.vendor not in self.adapters or cand.vendor not in self.pools:
                log.warning("batch %s is for vendor %s, not configured here", entry.id, cand.vendor)
                continue
            log.warning("adopting vendor batch %s (%d requests)", entry.id, len(entry.envelopes))
            key = self.pools[cand.vendor].key(entry.key_index)
            if self.on_adopted is not None:
                self.on_adopted(await self._unanswered(entry), cand)
            self._spawn(self._follow(entry, key, leased=True))
            adopted += 1
        return adopted

    async def _unanswered(self, batch: VendorBatch) -> list[RequestEnvelope]:
        """The requests of a journaled batch not answered yet (every one, when the
        journal cannot say: the caller's set-up must bear a request answered already)."""
        assert self.journal is not None
        try:
            done = await self.journal.delivered(batch.id)
        except REDIS_ERRORS:
            done = set()
        return [env for env in batch.envelopes if env.correlation_id not in done]

    async def _delivered(self, batch: VendorBatch) -> set[str] | None:
        """The requests of a journaled batch answered already (by a worker that died, or
        lost Redis, before striking the batch out); None when the journal cannot say."""
        assert self.journal is not None
        try:
            done = await self.journal.delivered(batch.id)
        except REDIS_ERRORS as exc:
            log.warning(
                "the lane journal is unavailable, batch %s is answered in full: %s", batch.id, exc
            )
            return None
        if done:
            log.warning("batch %s: %d requests were answered before", batch.id, len(done))
        return done

    async def _deliver_all(
        self,
        items: list[_Request],
        results: BatchResults,
        journaled: VendorBatch | None = None,
    ) -> None:
        """Answer each request with its own candidate (its alias's prices); of a
        ``journaled`` batch only those not answered before, noting each in the journal
        once it is delivered."""
        done = await self._delivered(journaled) if journaled is not None else None
        # Noted after each delivery (one Redis call a request), so a worker that dies
        # mid-way leaves at most the request it was on to be answered twice.  The first
        # note Redis refuses ends the noting for this batch: delivering never waits on a
        # Redis outage more than once, and _forget strikes the whole batch out later (if
        # Redis does not come back in time, an adopter answers the unnoted ones again).
        note = None
        if journaled is not None and self.journal is not None and done is not None:
            note = partial(self.journal.mark_delivered, journaled.id)
        for i, (env, cand) in enumerate(items):
            if done and env.correlation_id in done:
                continue
            got = _result_for(results, i, env)
            if not isinstance(got, VendorResult | RelayError):
                # An ended batch lists every request it had, run or not (those it did not
                # run with their reason): one missing was on a line nobody could read,
                # and may have been paid for.
                got = VendorAnswerUnreadable("the vendor batch's answer to it could not be read")
            if isinstance(got, RelayError) and got.retryable and await self._all_cancelled([env]):
                # Not run because its batch was cancelled (or expired): answered so, never
                # sent on the realtime way at the full price.
                got = _withdrawn(env, "before this request ran")
            try:  # one caller's delivery failing must not leave the others unanswered
                await self.deliver(env, cand, got)
            except Exception:
                # Noted all the same: it may be part-way out (answered, not metered), and
                # the batch is struck out after this delivery, failed or not, anyway.
                log.exception("could not deliver the batch result for %s", env.correlation_id)
            if note and not await self._journal("note an answer of", note, [env.correlation_id]):
                note = None

    async def _journal(
        self, what: str, step: Callable[[Any], Awaitable[Any]] | None, arg: Any
    ) -> bool:
        """One journal step, True when it was taken; without Redis (or a journal) the
        lane carries on, unjournaled."""
        if step is None:
            return False
        try:
            await step(arg)
        except REDIS_ERRORS as exc:
            log.warning("could not %s a vendor batch in the lane journal: %s", what, exc)
            return False
        return True

    async def _still_mine(self, batch_id: str) -> bool:
        assert self.journal is not None
        try:
            return await self.journal.renew(batch_id)
        except REDIS_ERRORS:
            return True  # the journal cannot say: this worker polled it, it answers

    async def _poll(
        self, adapter: BatchVendor, batch: VendorBatch, key: str, *, leased: bool
    ) -> tuple[BatchResults, str]:
        """Poll until the batch ends, renewing a ``leased`` batch's lease each time; its
        results, and the key they were read with.  Every result and error comes back
        without the key the batch was sent with, nor the one it was read with.  Once every request
        in it was cancelled (the Batch API batches they came from were cancelled, or
        expired: their lines take no more answers), the vendor is asked to cancel it
        too, so what has not run yet is never paid for; what has is still answered, and
        metered.

        Once sent, a vendor batch runs (and is billed) whatever its poller hears, so its
        requests are never sent again the realtime way while it may run, or may have:
        a poll that fails (a rate limit, an outage, a key refused: the pool's next key is
        tried) is tried again, backing off to one a minute, until the vendor's window
        has passed; an answer nobody can read, ``POLL_FAILURES`` times in a row, is
        ``VendorAnswerUnreadable``.  Only a batch the vendor says failed as a whole
        (``VendorBadRequest``: nothing in it ran) raises for its requests to go on."""
        failures = unreadable = 0
        wait, stopped = self.rule.poll_s, False
        began = batch.submitted_at or time.time()
        give_up_at = began + VENDOR_WINDOW_S
        pool, index = self.pools[batch.candidate.vendor], batch.key_index
        sent_with = key

        def unkeyed(got: Any) -> Any:  # without the key it was sent with, nor read with
            return _scrub(_scrub(got, key), sent_with)

        while True:
            await asyncio.sleep(wait)
            if leased and not await self._still_mine(batch.id):
                raise _LeaseLost
            try:
                results = await adapter.poll_batch(batch.id, key)
            except VendorBadRequest as err:
                raise unkeyed(err) from None
            except RelayError as err:
                failures = min(failures + 1, 30)  # (2**30 poll_s: beyond any window)
                err = unkeyed(err)
                log.warning("polling batch %s failed (%d in a row): %s", batch.id, failures, err)
                if time.time() >= give_up_at:
                    raise VendorAnswerUnreadable(
                        f"the vendor batch could not be read back in its window: {err.message}"
                    ) from None
                if isinstance(err, VendorAuthFailed | VendorNotFound) and len(pool) > 1:
                    index = (index + 1) % len(pool)  # rotated, or revoked: another key
                    key = pool.key(index)
                backoff = self.rule.poll_s * 2.0**failures
                wait = min(max(backoff, err.retry_after or 0.0), POLL_MAX_S)
                continue
            except Exception as exc:  # an answer in a shape no adapter reads
                unreadable += 1
                what = type(exc).__name__  # its text may quote the answer
                log.warning("batch %s: its answer could not be read (%s)", batch.id, what)
                if unreadable >= POLL_FAILURES:
                    raise VendorAnswerUnreadable(  # (its type is the log's, not the client's)
                        "the vendor batch's answers could not be read (a shape the relay "
                        "does not read; it has been logged)"
                    ) from None
                wait = min(self.rule.poll_s * 2.0**unreadable, POLL_MAX_S)
                continue
            failures = unreadable = 0
            if results is not None:
                return {cid: unkeyed(got) for cid, got in results.items()}, key
            # A tenth of the batch's age: an answer is read at most ~10 % later than it
            # came, and a batch of hours is not asked after every second.
            wait = max(self.rule.poll_s, min((time.time() - began) / 10, POLL_MAX_S))
            if not stopped and await self._all_cancelled(batch.envelopes):
                stopped = await self._cancel(adapter, batch, key)

    async def _all_cancelled(self, items: list[RequestEnvelope]) -> bool:
        """Whether every request was cancelled, its Batch API batch cancelled or expired
        (the first that was not ends the look)."""
        if self.cancelled is None:
            return False
        for env in items:
            if not await self.cancelled(env):
                return False
        return True

    async def _cancel(self, adapter: BatchVendor, batch: VendorBatch, key: str) -> bool:
        """Cancel the vendor batch; False when the vendor did not take it (asked again
        at the next poll)."""
        try:
            await adapter.cancel_batch(batch.id, key)
        except RelayError as err:
            log.warning("could not cancel vendor batch %s: %s", batch.id, scrubbed(err, key))
            return False
        log.warning("every request of vendor batch %s was cancelled: cancelled it", batch.id)
        return True
