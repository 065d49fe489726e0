"""One request end to end on a worker: coalesce, route, dispatch, reply, meter.

Plain asyncio with its outputs injected (``Sink``), so it runs the same under Faust and in
unit tests.  Every request that reaches a worker gets exactly one final reply (answer or
error) and exactly one ledger event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol

from agents.adapters.base import VendorResult
from agents.batch_lane import VENDOR_WINDOW_S, BatchLane
from agents.dispatch import Deadline, Dispatcher, Late, Outcome, Progress
from agents.flights import Flight, Flights, Waiter, given_up
from agents.meter import Billed, usage_event
from agents.route import Router
from schemas.config import Candidate, ModelAlias
from schemas.envelope import (
    HealthEvent,
    Priority,
    ReplyEvent,
    RequestEnvelope,
    UsageEvent,
)
from schemas.errors import (
    BadRequest,
    BatchCancelled,
    BudgetExceeded,
    ClientClosed,
    DeadlineExceeded,
    ModelNotFound,
    NoWorker,
    PermissionDenied,
    RateLimited,
    RelayError,
    VendorAnswerUnreadable,
    answer_lost,
)
from schemas.formats.openai import response_to_chunks
from schemas.usage import Usage
from tables.budgets import IN_FLIGHT_RETRY_S, BudgetDecision
from tables.cache import CacheEntry, cache_key, plain_text, storable
from tables.health import blended_price
from tables.holds import AFTER_DEADLINE_S, Joins, Turn, Waiting
from tables.prices import PriceSheet, cost_of

log = logging.getLogger("relay.worker")
LATE_SHARE_S = 600.0  # how long a shared call's answer is awaited to meter a late share
# How long one reply may wait for the broker to take it.  Taking a message waits only for
# its topic's metadata (and buffer room), so this is hit when the reply topic does not
# exist on a broker that does not create topics: without it the send would hold the call's
# every waiter for the reply producer's request timeout.
REPLY_SEND_S = 10.0
# How long a stopping worker waits for the broker to take back a Batch API line it cut
# (within the stop's 5 s to answer what it cut): past it, the line is answered as cut.
PUT_BACK_S = 2.0
# How often a Batch API line waiting behind others for room in its tenant's budget looks
# whether its batch was cancelled (it looks too whenever it is woken: let go ahead, or
# first in line now).
WAITING_LOOK_S = 60.0
STOPPED = "the worker stopped before the answer; try again"
CLOSED = "the client went away before the answer ended"


class Sink(Protocol):
    async def reply(self, topic: str, event: ReplyEvent) -> None: ...

    async def usage(self, event: UsageEvent) -> None: ...

    async def health(self, event: HealthEvent) -> None: ...

    async def cache(
        self, key: str, entry: CacheEntry, ttl_s: int, *, replacing: bool = False
    ) -> None: ...

    async def cached(self, key: str, *, stale_ok: bool = False) -> CacheEntry | None: ...


class Budget(Protocol):
    """The tenants' budgets as the handler asks them (``tables.holds.Budgets``): the
    verdict for a request, told whether it would join an identical call under way
    (which costs its tenant nothing); ``keep``, to hold a request's worst case until
    ``until`` (epoch seconds) or its ledger line, whatever it held before (``lasting``
    for a request in a vendor batch); and ``turn``, a place in the tenant's line of
    requests waiting for room, judged again in order as holds of the tenant go."""

    def __call__(self, env: RequestEnvelope, joins: Joins) -> BudgetDecision | None: ...

    def keep(
        self, env: RequestEnvelope, until: float, *, share: float = 1.0, lasting: bool = False
    ) -> None: ...

    def turn(self, tenant: str) -> AbstractContextManager[Turn]: ...


class _NoBudget:
    """No tenant has a budget: no verdict, nothing held (so nobody waits in line)."""

    def __init__(self) -> None:
        self.waiting = Waiting()

    def __call__(self, env: RequestEnvelope, joins: Joins) -> BudgetDecision | None:
        return None

    def keep(
        self, env: RequestEnvelope, until: float, *, share: float = 1.0, lasting: bool = False
    ) -> None:
        return None

    def turn(self, tenant: str) -> AbstractContextManager[Turn]:
        return self.waiting.turn(tenant)


@dataclass
class BatchLines:
    """What the worker does for the relay's own Batch API lines (the envelopes replying
    to ``topic``), which nobody waits on and a cancel may withdraw: ask ``cancelled``
    before each vendor attempt, and ``put_back`` on the request topic a line the worker's
    stop cut (returning once the broker has it; raising when it cannot), for the next
    worker to run rather than have the line fail for good."""

    topic: str
    cancelled: Callable[[RequestEnvelope], Awaitable[bool]]
    put_back: Callable[[RequestEnvelope], Awaitable[None]]


class RequestHandler:
    def __init__(
        self,
        router: Router,
        dispatcher: Dispatcher,
        prices: PriceSheet,
        sink: Sink,
        *,
        discounts: dict[str, float] | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.router = router
        self.dispatcher = dispatcher
        self.prices = prices
        self.sink = sink
        self.flights = Flights()
        self.discounts = discounts or {}
        self.budget: Budget = budget or _NoBudget()
        self.lane: BatchLane | None = None  # set by the wiring: it needs adapters and keys
        self.batch_lines: BatchLines | None = None  # set by the wiring: it needs the store
        # Lane requests a gateway waits on: their deadline timers, and those answered 504
        self._lane_deadlines: dict[str, asyncio.TimerHandle] = {}
        self._late: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: set[asyncio.Task[Any]] = set()  # Batch API lines waiting for room

    async def handle(self, env: RequestEnvelope) -> None:
        now = time.time()
        if env.stream and env.endpoint != "chat":  # only chat streams; the rest answer whole
            env = env.model_copy(update={"stream": False})
        try:
            wrong = self._not_its(env) or self._wrong_kind(env)
            if wrong is None:
                env = self._held_to_terms(env)
        except BadRequest as err:  # a body no key can be made of (nor vendor take)
            wrong = err
        if wrong is not None:
            await self._fail(env, wrong)
            return
        if env.deadline_ms / 1000 <= now:
            await self._expired(env)
            return
        # Counting tokens costs nothing, so a spent budget never stops it; nor does a
        # cheaper model stand in for it, whose count would be of another tokenizer.
        decision = None
        if env.endpoint == "count_tokens":
            pass
        elif self._is_line(env):
            try:
                judged = await self._in_turn(env)
            except asyncio.CancelledError:  # the worker stops: the line goes back, unanswered
                await self.cut(env)
                raise
            if isinstance(judged, RelayError):
                await self._fail(env, judged)
                return
            decision = judged
        else:
            decision = self.budget(env, self._joins(env))
        if decision is not None and decision.action != "allow":
            if decision.cache_only:
                await self._stale_or_refuse(env.model_copy(update={"degraded": decision.reason}))
                return
            if decision.action == "refuse":
                await self._fail(env, self._refusal(env, decision))
                return
            # (A stream is told so once it is known how it is answered: see _fly.)
            env = env.model_copy(update={"degraded": decision.reason})
        try:
            deferred = await self._deferred(env)
        except asyncio.CancelledError:  # the worker stops: no call yet, so nothing to bill
            await self.cut(env)
            raise
        if deferred:
            return
        if env.stream and self.flights.left_before(env):
            # Its client went away before it joined (its cancel notice was taken first,
            # a follower was about to run again): no call for nobody, just its line.
            await self._fail(env, ClientClosed(CLOSED), reply=False)
            return
        flight, waiter = self.flights.join(env, time.monotonic(), self._apart(env))
        if not waiter.leader:
            # A budget-degraded stream joining a call under way is told so first; one
            # joining before the leader knows whether L2 answers is told by the leader.
            await self._catch_up(flight, waiter, tell=flight.flying and env.degraded is not None)
            return
        progress = Progress()
        stopping = False
        try:
            if env.stream:
                # On a task of its own: should every client of the stream go away, a
                # cancel notice stops it (``cancel``), and this task goes on to meter it.
                flight.call = asyncio.ensure_future(self._answer(flight, env, progress))
                outcome = await flight.call
            else:  # nobody withdraws a plain request: no task spent on it
                outcome = await self._answer(flight, env, progress)
        except RelayError as err:  # (any call cut before it is billed all the same)
            outcome = progress.bill(Outcome(error=err), env.body)
        except Exception as exc:  # a bug must still answer every waiter, never hang them
            log.exception("request %s failed inside the worker", env.correlation_id)
            bug = RelayError(f"internal error: {type(exc).__name__}")
            outcome = progress.bill(Outcome(error=bug), env.body)  # what streamed was billed
        except asyncio.CancelledError:
            if _stopped_for_nobody(flight):
                # Every client of the stream went away and the call was stopped: the
                # vendor bills what it streamed till then, which the line says.  (A call
                # stopped so says nothing of the vendor's health: it is not reported.)
                outcome = progress.bill(Outcome(error=ClientClosed(CLOSED)), env.body)
            else:
                # The worker is stopping with this call unfinished: every waiter hears so
                # now rather than at its deadline, and the ledger gets the line (with what
                # a stream sent before it was cut, which the vendor bills).
                # (A Batch API line goes back on the request topic instead: see _land_one.)
                stopping = True
                outcome = progress.bill(Outcome(error=NoWorker(STOPPED), stopped=True), env.body)
        flight.cached = outcome.cached
        storing: asyncio.Future[None] | None = None
        try:
            if outcome.error is None and not outcome.cached:
                # The answer goes to L2 while the replies go out, and the flight stays
                # open until it is stored: an identical request either joins this flight
                # or, arriving later, finds the answer in L2 — never pays again, and no
                # waiter waits for Redis.
                storing = self._store(flight, outcome)
            await self._land(flight, outcome, stored=storing is not None)
            if storing is not None:
                await _settled(storing)
        finally:  # whatever failed, the flight closes and nobody who joined it hangs
            if flight.due is not None:  # (its leader's deadline has not come: answered)
                flight.due.cancel()
                flight.due = None
            self.flights.land(flight)
            # (those who joined meanwhile)
            await self._land(flight, outcome, stored=storing is not None)
        for follower in flight.rerun:
            if follower.gone:  # its client left while the flight landed: no call for nobody
                self._spawn(self._closed(flight, follower, Outcome()))
            else:
                self._spawn(self.handle(follower.envelope))
        if stopping:
            raise asyncio.CancelledError

    async def _expired(self, env: RequestEnvelope) -> None:
        """A request past its deadline when taken (a lagging partition, a rebalance, a
        restart): answered 504 without a call.  Past the grace too, a waiting gateway has
        written its ledger line already, unless its stream's client left first: then the
        gateway sent a cancel notice instead and wrote nothing, and the worker writes the
        ``client_closed`` line, whether that notice came before the request was taken or
        comes after it was answered."""
        if env.stream and self.flights.left_before(env):
            await self._fail(env, ClientClosed(CLOSED), reply=False)
            return
        metered = given_up(env)
        if metered and env.stream:  # (before any await: the notice may come meanwhile)
            self.flights.unmetered(env, coalesced=False, degraded=env.degraded)
        expired = DeadlineExceeded("the request expired before a worker took it")
        await self._fail(env, expired, meter=not metered)

    async def _answer(self, flight: Flight, env: RequestEnvelope, progress: Progress) -> Outcome:
        """The leader's answer: from L2 (another replica's identical request finished
        meanwhile), else from a vendor."""
        return await self._from_cache(env) or await self._fly(flight, env, progress)

    def cancel(self, notice: RequestEnvelope) -> None:
        """A cancel notice (``RequestEnvelope.cancel``): the client of the request it
        names went away.  Its waiter is sent nothing more (its line, when its flight
        lands, says ``client_closed``); when nobody else waits on the call, the call is
        stopped, and the flight closed first, so that an identical request arriving now
        starts a call of its own rather than join one that will not answer.  A notice for
        a request not waiting here (unknown, answered, another tenant's, a Batch API line:
        its batch's cancel withdraws it) changes nothing; none is answered or metered,
        except a stream answered without a line because its gateway was taken to have
        metered it (past its deadline and grace): a gateway that sends a notice writes no
        line, so the worker writes its ``client_closed`` line now."""
        lines = self.batch_lines
        if lines is not None and notice.reply_to == lines.topic:
            return
        left = self.flights.unmetered_left(notice.correlation_id, notice.tenant)
        if left is not None:
            closed = ClientClosed(CLOSED)
            self._spawn(self._fail(left.envelope, closed, coalesced=left.coalesced, reply=False))
            return
        flight = self.flights.leave(notice.correlation_id, notice.tenant)
        if flight is not None:  # (else others still wait)
            self._stop(flight)

    def _unread(self, flight: Flight) -> None:
        """A waiter of ``flight`` stopped reading it (a chunk did not reach it, or, its
        leader, it was answered 504 at its own deadline): the call runs to the latest
        deadline of those still reading (``Flights.reckon``), and is stopped when none is
        left, as when every client went away."""
        if not self.flights.reckon(flight):
            self._stop(flight)

    def _stop(self, flight: Flight) -> None:
        """Nobody reads ``flight``'s call any more: a stream's is stopped, and the flight
        closed first, so that an identical request arriving now starts a call of its own
        rather than join one that will not answer.  A plain call (on its leader's own
        task) ends at its leader's deadline, which is the call's now (``reckon``)."""
        if flight.call is None or flight.call.done():
            return  # a plain call, or the call is over (its answer is landing)
        self.flights.land(flight)
        flight.call.cancel()

    async def refuse(self, env: RequestEnvelope, err: RelayError) -> None:
        """Answer ``env`` with ``err`` without any vendor call; metered as failed."""
        await self._fail(env, err)

    async def cut(self, env: RequestEnvelope) -> None:
        """A request the worker's stop cut before any vendor call: a Batch API line is put
        back on the request topic (nothing metered), any other answered ``NoWorker`` and
        metered as failed."""
        if not await self._put_back(env):
            await self._fail(env, NoWorker(STOPPED))

    async def _put_back(self, env: RequestEnvelope) -> bool:
        """Put a Batch API line cut by the stop back on the request topic; False for any
        other request, or when the broker did not take it (then it is answered as cut)."""
        lines = self.batch_lines
        if lines is None or env.reply_to != lines.topic:
            return False
        # The worker's own routing choice (a budget's downgrade) is the next worker's to
        # make again.
        again = env.model_copy(update={"degraded": None}) if env.degraded else env
        try:
            async with asyncio.timeout(PUT_BACK_S):
                await lines.put_back(again)
        except Exception as exc:
            # Should the broker take it later all the same, the line runs again and its
            # answer is ignored: the first one recorded is the line's.
            log.warning("batch line %s not put back (%r): answered as cut", env.correlation_id, exc)
            return False
        log.info("batch line %s cut by the stop: put back for the next worker", env.correlation_id)
        return True

    def _joins(self, env: RequestEnvelope) -> Joins:
        """Whether ``env``, degraded for a reason or not (a budget-degraded request flies
        apart), would join an identical call under way: asked by the budget before
        anything else is awaited, so a request found joining does join (``_deferred``
        sends no request a live call answers to the batch lane)."""

        def joins(degraded: str | None) -> bool:
            asked = env.model_copy(update={"degraded": degraded}) if degraded else env
            return self.flights.live(asked, self._apart(asked))

        return joins

    def _is_line(self, env: RequestEnvelope) -> bool:
        """Whether ``env`` is a Batch API line (OpenAI's or Anthropic's: both reply to the
        results topic): held back by what its tenant has in flight, it has no client to
        come back after a Retry-After, and its batch may take hours, so it waits its turn
        (``_in_turn``); a request with a client is told to come back."""
        lines = self.batch_lines
        return lines is not None and env.reply_to == lines.topic

    async def _in_turn(self, env: RequestEnvelope) -> BudgetDecision | RelayError | None:
        """The budget's verdict for a Batch API line (``_is_line``), once it has waited its
        turn if it must, or the error it ends with.  It takes a place at the end of its
        tenant's line of lines held back by what the tenant has in flight, and is judged
        in it (``tables.holds.Waiting``): first fit, in order, so it goes at once if there
        is room for it once those before it have had theirs (with nobody waiting: if there
        is room), and otherwise waits to be judged again whenever a hold of the tenant is
        let go, or after the Retry-After the first was given (holds also lapse), until it
        may go or is refused for good (a spent budget: 402, or the throttle's 429).  A
        first passed by others for ``PASSED_BY_S`` is passed by none any more.  Each looks
        at its batch's cancel state when woken, and every ``WAITING_LOOK_S``: a cancelled
        batch, or its deadline (the batch's window) passing, ends it.

        It waits on its own task (each envelope has one), so neither the partition nor
        other requests wait for it, and keeps nothing but the envelope the worker took
        already; it holds nothing of the budget while it waits (a line handled again, its
        vendor batch failed or its leader cut, lets go of its hold as it takes its place:
        ``Turn.ask``).  A worker that stops puts it back on the request topic for the
        next one (``cut``: at once with ``stop_waiting``, else when the drain ends),
        letting go of what it was let go ahead to hold, should that come first."""
        lines = self.batch_lines
        assert lines is not None
        task = asyncio.current_task()
        if task is not None:
            self._waiting.add(task)
        try:
            with self.budget.turn(env.tenant) as turn:
                # (Told whether it goes on at once: a line judged while it waits holds its
                # worst case, as the call it would join may be over when its task runs.)
                judge = partial(_judged, self.budget, env, self._joins(env))
                turn.ask(env, judge)
                try:
                    while not turn.gone:
                        left = env.deadline_ms / 1000 - time.time()
                        if left <= 0:
                            return DeadlineExceeded(
                                "the batch's window ended while this line waited for requests "
                                f"in flight of tenant `{env.tenant}` that may reach its budget"
                            )
                        patience: float | None = WAITING_LOOK_S
                        if turn.first:  # its Retry-After (none yet if it came in behind a
                            verdict = turn.verdict  # first passed by long enough: 5 s)
                            patience = verdict.retry_after_s if verdict else IN_FLIGHT_RETRY_S
                        woken = await turn.wait(min(patience or WAITING_LOOK_S, left))
                        if await lines.cancelled(env):
                            # (Let go ahead meanwhile: the line it ends with lets go of that.)
                            if env.deadline_ms / 1000 <= time.time():
                                return DeadlineExceeded("the batch's window ended before this line")
                            return BatchCancelled("the batch was cancelled before this line")
                        if not turn.gone and not woken and turn.first:
                            turn.look()  # its Retry-After passed
                except asyncio.CancelledError:
                    if turn.gone:  # let go ahead before the worker stopped: it holds nothing
                        self.budget.keep(env, time.time())
                    raise
                if turn.failed is not None:
                    raise turn.failed
                return turn.verdict
        finally:
            if task is not None:
                self._waiting.discard(task)

    def stop_waiting(self) -> None:
        """The worker stops: Batch API lines waiting for room in their tenant's budget
        (``_in_turn``) go back on the request topic now, for the next worker, rather than
        hold the drain to its end (each is ``cut``, on its own task)."""
        for task in list(self._waiting):
            task.cancel()

    def _refusal(self, env: RequestEnvelope, decision: BudgetDecision) -> RelayError:
        """The error for a budget's refusal: 402 for a spent budget, or 429 until the
        period resets (``throttle``), or 429 for a few seconds when the budget is not
        spent but what is in flight may reach it (the message must not say "spent": the
        client only has to wait for those requests to end)."""
        if decision.retry_after_s is not None:
            return RateLimited(
                f"tenant `{env.tenant}` has requests in flight that may reach its budget "
                "for this period (vendor batches among them, when the wait is long); try "
                "again after the Retry-After",
                retry_after=decision.retry_after_s,
            )
        if decision.throttle and decision.resets_at is not None:
            return RateLimited(
                f"tenant `{env.tenant}` has spent its budget for this period; "
                "it resets at the next period",
                retry_after=max(1.0, decision.resets_at - time.time()),
            )
        return self._spent(env)

    def _spent(self, env: RequestEnvelope, cache_only: bool = False) -> BudgetExceeded:
        return BudgetExceeded(
            f"tenant `{env.tenant}` has spent its budget for this period"
            + ("; only cached answers are served" if cache_only else "")
        )

    async def _stale_or_refuse(self, env: RequestEnvelope) -> None:
        """A tenant past its budget on ``cache_only``: any answer L2 still holds, stale
        ones included (the gateway already looked for a fresh one), else 402.  Alone, not
        in a flight: another tenant's identical request must not share this refusal."""
        outcome = await self._from_cache(env, stale_ok=True)
        if outcome is None:
            await self._fail(env, self._spent(env, cache_only=True))
            return
        flight = Flight(key=env.prompt_hash, stream=env.stream, cached=True)
        flight.degraded = env.degraded  # (served because the budget is spent: says so)
        flight.waiters.append(Waiter(env, leader=True, joined_at=time.monotonic()))
        await self._land(flight, outcome)

    async def _from_cache(self, env: RequestEnvelope, *, stale_ok: bool = False) -> Outcome | None:
        """An answer stored between the gateway's cache miss and now (another replica's
        identical request finished meanwhile)."""
        entry = await self._hit(env, stale_ok=stale_ok)
        if entry is None:
            return None
        body = entry.whole(env.alias)
        if env.endpoint == "chat":
            body.setdefault("usage", entry.usage.to_openai())
        # A pair no longer in the config still names who answered (a hit costs nothing).
        cand = self.prices.candidate(entry.vendor, entry.model) or Candidate(
            vendor=entry.vendor, model=entry.model
        )
        return Outcome(candidate=cand, body=body, usage=entry.usage, cached=True)

    async def _hit(self, env: RequestEnvelope, *, stale_ok: bool = False) -> CacheEntry | None:
        """What L2 holds that may answer ``env``: asked for by it, for its endpoint, and
        no older than it takes (its gateway's own look-up may not have asked L2)."""
        if not env.cache_lookup:
            return None
        entry = await self.sink.cached(env.prompt_hash, stale_ok=stale_ok)
        if entry is None or not entry.answers(env.endpoint) or not entry.plain():
            return None  # (one whose text is not text would be served saying nothing)
        return entry if entry.young_enough(env.cache_max_age_s) else None

    def _not_its(self, env: RequestEnvelope) -> RelayError | None:
        """A refusal for a tenant the config does not name, or a model it may not use, as
        the gateway refuses them: an envelope a producer posts straight to the topic
        names its tenant itself, and must not bill another one or pass its allow-list."""
        policy = self.router.config.tenants.get(env.tenant)
        if policy is None:
            return PermissionDenied(f"tenant `{env.tenant}` is not configured")
        if env.alias not in self.router.config.models or not policy.may_use(env.alias):
            return ModelNotFound(
                f"The model `{env.alias}` does not exist or you do not have access to it.",
                param="model",
            )
        return None

    def _held_to_terms(self, env: RequestEnvelope) -> RequestEnvelope:
        """``env`` keyed and cached as the gateway would (``Relay.cache_terms``): the
        envelope's terms may come from anyone who can post.  A producer's own key (or a
        forged one: another tenant's, to plant an answer in its cache or read one from
        it) chose the partition, no more; and under a ``global`` cache scope an answer,
        shared with every tenant of that scope, is stored no longer than the alias's own
        TTL (not at all, nor looked for, when the alias caches nothing), whatever the
        envelope asks (a tenant's own scope may keep its answers as long as it likes)."""
        update: dict[str, Any] = {}
        if (key := self._key(env)) != env.prompt_hash:
            update["prompt_hash"] = key
        config = self.router.config
        if config.tenants[env.tenant].cache_scope == "global":
            most = config.models[env.alias].ttl_seconds()
            if env.cache_ttl_s is not None and env.cache_ttl_s > most:
                update["cache_ttl_s"] = most if most > 0 else None
            if most <= 0 and env.cache_lookup:
                update["cache_lookup"] = False
        return env.model_copy(update=update) if update else env

    def _key(self, env: RequestEnvelope) -> str:
        """The request's cache and coalescing key, as the gateway works it out (the
        worker's own reckoning: the envelope's may come from anyone who can post)."""
        config = self.router.config
        policy = config.tenants[env.tenant]
        return cache_key(
            scope="global" if policy.cache_scope == "global" else f"tenant:{env.tenant}",
            alias=env.alias,
            endpoint=env.endpoint,
            body=env.body,
            openai_sampling=config.openai_sampling(env.alias),
        )

    def _wrong_kind(self, env: RequestEnvelope) -> RelayError | None:
        """A 400 for an alias asked for what it does not serve (an embeddings model for a
        chat, a count of tokens no vendor of it counts), as the gateway refuses it: a
        producer posting straight to the topic must not have a vendor refuse it (which
        would count toward the alias's breaker), nor be told to try again."""
        config = self.router.config
        if (refusal := config.kind_refusal(env.alias, env.endpoint)) is not None:
            return refusal
        spec = config.models.get(env.alias)
        if env.endpoint != "count_tokens" or spec is None:
            return None
        if any(self.dispatcher.counts(c.vendor) for c in spec.candidates):
            return None
        return BadRequest(
            f"model: no vendor of `{env.alias}` counts tokens (the gateway estimates them "
            "for such an alias)",
            param="model",
        )

    def _apart(self, env: RequestEnvelope) -> str:
        """What keeps a request out of a flight it must not share: another tenant's
        (tenants share one under a global cache scope) when the flight may be routed to
        the alias's ``degrade_to`` under rate pressure, which a tenant held to some models
        may not use; another tenant's too when this one has rate limits of its own (the
        leader's tenant is the one admitted: a tenant without limits must not hear another
        one's 429, nor one with limits ride free of them); and, for a canary sticky per
        user, a flight of the other version."""
        try:
            spec = self.router.spec(env.alias)
        except RelayError:  # an alias this worker does not know: the flight will say so
            return ""
        apart = ""
        rule = self.router.config.tenants.get(env.tenant)
        if rule is not None and rule.cache_scope == "global" and (rule.rpm or rule.tpm):
            apart += f":limits:{env.tenant}"
        if spec.degrade_after_wait_ms is not None and spec.degrade_to:
            if not self.router.may_use(env.tenant, spec.degrade_to):
                apart += ":undegradable"
        if spec.canary and spec.canary.sticky and env.user:
            canary = self.router.in_canary(env.alias, spec, env.user)
            apart += ":canary" if canary else ":stable"
        return apart

    async def _deferred(self, env: RequestEnvelope) -> bool:
        """Background chat goes to the batch-API lane when a candidate's vendor has one
        and its batch price is no higher than the realtime way's, unless it costs nothing
        now: the same call is under way (it joins that), or the answer is in the cache
        (it is served from there).  (A Batch API line whose batch ends before its vendor
        batch answers is not sent, or its vendor batch is cancelled: see the lane.)"""
        if self.lane is None or env.priority is not Priority.background:
            return False
        if env.stream or env.endpoint != "chat" or self.flights.live(env, self._apart(env)):
            return False
        if await self._hit(env) is not None:
            return False
        try:  # a request degraded by its tenant's budget goes the cheaper way here too
            plan = self.router.plan(
                env.alias,
                time.time(),
                user=env.user,  # a canary sticky per user stays so on this lane too
                degraded=env.degraded is not None,
                tenant=env.tenant,
                # No stale latency is measured with it: a vendor batch reports none, and
                # the worker's one measurement a window is the realtime way's to make.
                room_s=0.0,
            )
        except RelayError:
            return False
        batchable = _batchable(plan, self.router.spec(env.alias))
        cand = next((c for c in batchable if self.lane.accepts(c)), None)
        # Closed breakers only: a vendor batch reports no outcome, so it can neither be
        # the probe nor go to a vendor no probe has said is back (the realtime way can).
        if cand is None or not self.router.closed(cand):
            return False
        if not self._batch_pays(env, cand, plan[0]):
            return False
        self.lane.submit(env, cand)
        # Its line comes when its vendor batch is read back, maybe a day from now (its
        # deadline's 504 is unmetered), so its hold lasts till then, not till just after
        # its deadline: bounded by the wait for the batch to go out and the vendor's
        # window, past which the lane answers it (and meters it) whatever happened.
        until = time.time() + self.lane.rule.max_age_s + VENDOR_WINDOW_S
        share = 1.0 - self.discounts.get(cand.vendor, 0.0)  # billed at the batch price
        self.budget.keep(env, until, share=share, lasting=True)
        if env.gateway_meters_timeout:
            # A gateway waits on it, and a vendor batch may outlast the request's
            # deadline: the worker answers 504 at the deadline itself, before the gateway
            # gives up and writes a ledger line of its own, so that the request keeps one
            # line: the vendor's answer, metered whenever it comes (or nothing, when the
            # request was still waiting to go out and is withdrawn).
            self._arm(env)
        return True

    def _batch_pays(self, env: RequestEnvelope, cand: Candidate, first: Candidate) -> bool:
        """Whether ``env`` costs no more through ``cand``'s vendor batch (at its discount)
        than the realtime way, whose first candidate is ``first`` (blended prices, as the
        route ranks them): a background request never costs more for waiting, so a
        cheaper candidate without a batch API (a local model, say) answers it now.  A
        budget-degraded request never goes to a dearer model than its cheaper plan's
        first, discount or not: the downgrade is to that model."""
        price = blended_price(cand)
        if env.degraded is None:
            price *= 1.0 - self.discounts.get(cand.vendor, 0.0)
        return price <= blended_price(first)

    def _arm(self, env: RequestEnvelope) -> None:
        """Answer ``env`` (a lane request a gateway waits on) 504 at its deadline, or at
        once when that has passed (``_lane_deadline``)."""
        delay = max(0.0, env.deadline_ms / 1000 - time.time())
        self._lane_deadlines[env.correlation_id] = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self._lane_deadline(env))
        )

    def adopted(self, envs: list[RequestEnvelope], cand: Candidate) -> None:
        """The unanswered requests of a vendor batch this worker adopted (the worker that
        sent it died, or stopped and left it): the deadline timers that worker kept for
        those a gateway waits on died with it, and are armed again here, so each still
        gets its 504 from a worker (unmetered) and keeps its one line, the vendor's
        answer.  One whose deadline has passed but not the gateway's grace is answered
        504 now.  One past both is late already: nobody reads it, and its line is written
        when the vendor answers.  That line is its only one if its first worker answered
        it 504 (its deadline passed while that worker ran); if not (its deadline passed
        after that worker went, before the adoption), its gateway wrote a
        ``deadline_exceeded`` line and the vendor's answer, billed all the same, is a
        second line for the request: the adopter cannot tell the two apart.

        Each holds its worst case at the batch price of ``cand``'s vendor (the vendor
        batch's) against its tenant's budget here until its line, as it did on the worker
        that sent it (whose holds died with it), or a budget would let its tenant pass it
        again by what those vendor batches will bill.  (A request the journal could not
        say was answered is held too, until the vendor's window ends.)"""
        share = 1.0 - self.discounts.get(cand.vendor, 0.0)
        for env in envs:
            self.budget.keep(env, time.time() + VENDOR_WINDOW_S, share=share, lasting=True)
            cid = env.correlation_id
            if not env.gateway_meters_timeout or cid in self._lane_deadlines or cid in self._late:
                continue  # nobody waits on it, or this worker keeps its deadline already
            if given_up(env):
                self._late.add(cid)
            else:
                self._arm(env)

    def dropped(self, envs: list[RequestEnvelope]) -> None:
        """Requests the batch lane took but another worker answers (its vendor batch
        carries them, or it took over the batch): their holds are that worker's, and go
        here, or the tenant would be held twice until the vendor's window ends; and
        their 504 at the deadline is that worker's to send (it arms its own timers)."""
        for env in envs:
            self.budget.keep(env, time.time())
            if timer := self._lane_deadlines.pop(env.correlation_id, None):
                timer.cancel()
            self._late.discard(env.correlation_id)

    async def _lane_deadline(self, env: RequestEnvelope) -> None:
        self._lane_deadlines.pop(env.correlation_id, None)
        late = DeadlineExceeded("the vendor batch did not answer within the request's deadline")
        assert self.lane is not None
        if self.lane.withdraw(env.correlation_id):
            await self._fail(env, late)  # never sent: never paid
            return
        self._late.add(env.correlation_id)
        await self._fail(env, late, meter=False)  # its vendor answer is metered when it comes

    @property
    def spawned(self) -> set[asyncio.Task[None]]:
        """Tasks the handler started on its own, still running: followers run again after
        their leader's call, Batch API lines sent the realtime way, late ledger lines.  A
        stopping worker drains (and at the end cuts) them with the requests it took."""
        return self._tasks

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deliver_batch(
        self, env: RequestEnvelope, cand: Candidate, result: VendorResult | RelayError
    ) -> None:
        """A batch-API result: answered and metered like any other, at the batch price
        (only metered when its caller had its 504 at the deadline already, or its
        gateway gave up on it before this worker adopted its batch: see ``adopted``)."""
        if timer := self._lane_deadlines.pop(env.correlation_id, None):
            timer.cancel()
        late = env.correlation_id in self._late
        self._late.discard(env.correlation_id)
        if isinstance(result, RelayError):
            if late:
                line = usage_event(env, self.prices, candidate=None, usage=Usage(), error=result)
                await self.sink.usage(line)
                return
            if result.retryable:
                # The vendor's batch failed it (no batch API after all, expired, cancelled):
                # the request is answered the realtime way instead, at the full price.
                log.warning("batch lane failed %s (%s): sent on", env.correlation_id, result.code)
                if self._is_line(env):
                    # A Batch API line is judged again in its tenant's line (_in_turn),
                    # which holds it afresh if it goes: till then it holds nothing, or its
                    # full price would keep out the others sent on with it (and itself).
                    self.budget.keep(env, time.time(), share=0.0)
                else:
                    # Held as a realtime request again: the budget holds it afresh if it
                    # goes ahead, and a line that never comes here (expired, its gateway
                    # metered it) lets go of it after its deadline, not at the end of the
                    # lane's bound.
                    self.budget.keep(env, env.deadline_ms / 1000 + AFTER_DEADLINE_S)
                # (on its own task: the batch's other requests go on meanwhile)
                self._spawn(self.handle(env.model_copy(update={"priority": Priority.batch})))
                return
            await self._fail(env, result)
            return
        body = {**result.body, "model": env.alias}
        stored = False  # (its final says so: a gateway keeps only what the worker stored)
        if env.cache_ttl_s and self._keeps(env, cand, body):
            stored = True
            entry = _entry(env, cand, result.usage, body=body)
            try:  # a cache that fails costs a later request a call, never this answer
                await self.sink.cache(
                    env.prompt_hash, entry, env.cache_ttl_s, replacing=not env.cache_lookup
                )
            except Exception:
                log.warning("batch answer for %s not cached", env.correlation_id)
        line = usage_event(
            env,
            self.prices,
            candidate=cand,
            usage=result.usage,
            batch_api=True,
            discount=self.discounts.get(cand.vendor, 0.0),
            degraded=env.degraded,
        )
        if not late:
            try:
                await self._send(env, ReplyEvent.final(env, line, body, stored=stored))
            except Exception as exc:  # paid all the same: the line is written
                log.warning("batch answer to %s not delivered: %r", env.correlation_id, exc)
        await self.sink.usage(line)

    async def _fly(self, flight: Flight, env: RequestEnvelope, progress: Progress) -> Outcome:
        flight.flying = True
        if env.degraded is not None:
            # A budget's downgrade (the flight is its tenant's alone, every waiter
            # degraded): each stream is told now, as the leader or a follower of a vendor
            # call, before a slow first token; not before the L2 look-up, whose answer
            # would be a hit, free, and not the cheaper model's.
            for w in list(flight.waiters):
                if w.envelope.stream:
                    self._spawn(self._catch_up(flight, w, tell=True))
        # The call runs to the latest deadline of its waiters (followers that joined while
        # the leader looked in L2 count already), retries and fallbacks included.
        deadline = Deadline(flight.deadline)
        flight.moved = partial(self._moved, flight, deadline)
        try:
            self._moved(flight, deadline)
            return await self._dispatch(flight, env, progress, deadline)
        finally:
            flight.moved = None  # the call is over: its waiters' deadlines move nothing

    async def _dispatch(
        self, flight: Flight, env: RequestEnvelope, progress: Progress, deadline: Deadline
    ) -> Outcome:
        """The leader's call to a vendor, run to the flight's ``deadline``."""
        now = time.time()
        plan = self.router.plan(
            env.alias,
            now,
            user=env.user,
            degraded=env.degraded is not None,
            tenant=env.tenant,
            room_s=deadline() - now,  # (a short deadline measures nothing)
        )

        async def fan_out(chunk: dict[str, Any]) -> None:
            # Each waiter's sends run on their own task, so the vendor's stream is read on
            # whatever a reply topic does; a waiter already sending takes this chunk too.
            flight.chunks.append(chunk)
            for w in flight.waiters:  # (none to one nobody reads: gone, lost, given up)
                if w.waits and not w.sending.locked():
                    self._spawn(self._catch_up(flight, w))

        on_chunk = fan_out if env.stream else None
        lines = self.batch_lines
        withdrawn = None  # a Batch API line's batch may be cancelled while it waits
        if lines is not None and env.reply_to == lines.topic:
            withdrawn = partial(lines.cancelled, env)
        patience = self.router.spec(env.alias).degrade_after_wait_ms
        wait_s = patience / 1000 if patience is not None and env.degraded is None else None
        may_call = self.router.may_call
        outcome = await self.dispatcher.run(
            env,
            plan,
            on_chunk,
            vendor_wait_s=wait_s,
            progress=progress,
            may_call=may_call,
            release=self.router.release,
            withdrawn=withdrawn,
            deadline=deadline,
        )
        if wait_s is not None and isinstance(outcome.error, RateLimited):
            # Sustained rate pressure: no candidate's rate limits let it through within
            # the alias's patience.  Route it as degraded (cheaper), flagged as such.
            flight.degraded = "rate_pressure"
            env = env.model_copy(update={"degraded": flight.degraded})
            # Told side by side: one waiter's stalled reply topic holds up no other, nor
            # the cheaper call (each notice is given up after REPLY_SEND_S).
            await _together(
                self._say_degraded(w.envelope, flight.degraded, coalesced=not w.leader)
                for w in list(flight.waiters)
                if not w.sent and w.waits
            )
            refused: RelayError | None = None
            try:
                plan = self.router.plan(
                    env.alias, time.time(), user=env.user, degraded=True, tenant=env.tenant
                )
            except RelayError as err:
                # Nothing cheaper is up either: the run of an empty plan still settles the
                # tenant's TPM and bills the calls the first run cut (``Progress.cut``).
                plan, refused = [], err
            shares = outcome.late  # shares the first run gave up on: billed all the same
            outcome = await self.dispatcher.run(
                env,
                plan,
                on_chunk,
                admit_tenant=False,  # taken by the first run, settled by this one
                settle_tenant=True,
                progress=progress,
                may_call=may_call,
                release=self.router.release,
                withdrawn=withdrawn,
                deadline=deadline,
            )
            outcome.late[:0] = shares
            if refused is not None:
                outcome.error = refused  # the router's reason, and its Retry-After
        if outcome.body is not None and "model" in outcome.body:
            outcome.body["model"] = env.alias  # the alias asked for, never a vendor's name
        return outcome

    def _moved(self, flight: Flight, deadline: Deadline) -> None:
        """The flight's deadline may have moved (a waiter joined or left): the call under
        way follows it.  Past its leader's own, the leader's budget hold lasts as long as
        the call may (its line bills the call, when it ends), and the leader is answered
        504 at its own deadline (``_overdue``), as a call of its own would have been."""
        deadline.moved()
        leader = flight.waiters[0].envelope
        until = flight.deadline()
        if until <= leader.deadline_ms / 1000:
            return
        self.budget.keep(leader, until + AFTER_DEADLINE_S)
        if flight.due is None:
            delay = max(0.0, leader.deadline_ms / 1000 - time.time())
            flight.due = asyncio.get_running_loop().call_later(delay, self._overdue, flight)

    def _overdue(self, flight: Flight) -> None:
        """The leader's own deadline passed while its call runs on for a follower with a
        later one: the leader is answered 504 now and sent nothing more (``broken``).
        Its one ledger line is written when the call ends, and bills the whole call, as a
        leader's line always does (followers' lines cost nothing): the call went out on
        its request, and the line waits for what the vendor billed, as a window-batched
        caller's does for its share."""
        flight.due = None
        w = flight.waiters[0]
        if flight.finished or flight.answered or not w.waits:
            return  # answered, landing, or nobody reads it (its line is written anyway)
        if flight.call is not None and flight.call.done():
            return  # the answer is in, about to land
        if flight.deadline() <= w.envelope.deadline_ms / 1000:
            return  # nobody waits longer now: the call ends at this deadline, and says so
        w.lost = True
        w.broken = DeadlineExceeded(
            "no answer within the request's deadline (the call goes on for identical "
            "requests with later deadlines)"
        )
        self._spawn(self._tell(w, w.broken))
        self._unread(flight)  # (a follower that has stopped reading meanwhile keeps nothing)

    async def _tell(self, w: Waiter, err: RelayError) -> None:
        """Tell ``w`` its answer failed with ``err`` (after any chunk being sent to it);
        its line is written when its flight lands."""
        async with w.sending:
            await self._fail(w.envelope, err, coalesced=not w.leader, meter=False)

    async def _say_degraded(
        self, env: RequestEnvelope, reason: str | None = None, *, coalesced: bool = False
    ) -> None:
        """Tell a stream's gateway at once that it goes the cheaper way: the response's
        headers go out before a slow first token does, and must carry the flag, and
        ``x-relay-cache`` as its chunks would say it (a follower's ``coalesced``)."""
        if not env.stream:
            return
        notice = ReplyEvent(
            correlation_id=env.correlation_id,
            kind="chunk",
            degraded=reason or env.degraded,
            coalesced=coalesced,
        )
        try:
            await self._send(env, notice)
        except Exception as exc:  # the answer itself will say so, or fail on its own
            log.warning("degraded notice to %s not sent: %r", env.correlation_id, exc)

    async def _send(self, env: RequestEnvelope, event: ReplyEvent) -> None:
        """One reply to ``env``'s topic, given up after ``REPLY_SEND_S``."""
        async with asyncio.timeout(REPLY_SEND_S):
            await self.sink.reply(env.reply_to, event)

    async def _catch_up(self, flight: Flight, waiter: Waiter, *, tell: bool = False) -> None:
        """Send ``waiter`` the stream's chunks it lacks (a late joiner: those so far; the
        rest come live).  A waiter whose reply topic fails is sent nothing more, and its
        failure holds up neither the stream nor the call's other waiters.  With ``tell``,
        one sent nothing yet is first told its budget routes it cheaper (as the sender,
        which also sends the chunks that came meanwhile)."""
        async with waiter.sending:
            if tell and not waiter.sent and waiter.waits:
                await self._say_degraded(waiter.envelope, coalesced=not waiter.leader)
            await self._deliver(flight, waiter)

    async def _deliver(self, flight: Flight, w: Waiter) -> None:
        """Send ``w`` the chunks it lacks; the caller holds ``w.sending``, so two senders
        (a catch-up and the live stream) never interleave one waiter's chunks.  A chunk
        that does not go out loses the waiter (``_lose``)."""
        if not w.envelope.stream:
            return
        while w.sent < len(flight.chunks) and not w.lost:
            chunk = flight.chunks[w.sent]
            w.sent += 1
            try:
                await self._send(
                    w.envelope,
                    ReplyEvent(
                        correlation_id=w.envelope.correlation_id,
                        kind="chunk",
                        seq=w.sent,
                        body=chunk,
                        coalesced=not w.leader and not flight.cached,
                        cache_hit=flight.cached,
                        degraded=_flagged(flight, w.envelope),
                    ),
                )
            except Exception as exc:
                self._lose(flight, w, exc)

    def reply_lost(self, event: ReplyEvent, exc: BaseException) -> None:
        """A chunk the broker refused after taking it (the sink hears so after ``reply``
        returned: a reply topic with a smaller message limit than the relay's, say).  Its
        waiter, while its flight is under way, is lost as if the send had failed.  One
        answered already got its final: its gateway sees the hole in ``seq`` and fails
        the stream itself (its line, written, says ok: the failure came too late)."""
        if event.kind != "chunk" or event.body is None:
            return  # a final's failure the sink reports itself; a notice's changes nothing
        if (found := self.flights.waiter(event.correlation_id)) is not None:
            self._lose(*found, exc)

    def _lose(self, flight: Flight, w: Waiter, exc: BaseException) -> None:
        """A chunk of its stream did not reach ``w``: it is sent nothing more, and told
        why on a fresh send (a small error goes where a large chunk would not; after a
        send the broker did not take in time, it may go once the broker is back) rather
        than left to its deadline, when its gateway would answer 504 and write a second
        line.  Its one line, when the flight lands, says it failed (``Waiter.broken``).
        The error goes on a task of its own: a topic that takes nothing holds up neither
        the call nor the flight's landing."""
        if not w.waits:  # told already, or nobody reads it (its client left, its gateway
            return  # gave up on it and wrote its line)
        log.warning("chunk to %s not sent: %r", w.envelope.correlation_id, exc)
        w.lost = True
        w.broken = answer_lost(exc)
        self._spawn(self._fail(w.envelope, w.broken, coalesced=not w.leader, meter=False))
        self._unread(flight)  # (its deadline no longer keeps the call going)

    async def _land(self, flight: Flight, out: Outcome, *, stored: bool = False) -> None:
        """Answer the flight's waiters not answered yet, all at once (one whose reply
        topic fails holds up no other)."""
        landing = []
        while flight.answered < len(flight.waiters):
            w = flight.waiters[flight.answered]
            flight.answered += 1
            # (a gateway that sent a cancel notice never meters the request itself, nor
            # one told its answer was lost: those lines are the worker's, however late)
            if w.gone or w.broken is not None or not given_up(w.envelope):
                landing.append(self._land_one(flight, w, out, stored))
            elif w.leader and not out.cached and (out.candidate is not None or out.late):
                # Its gateway answered 504 and wrote a line at no cost, but the vendor was
                # paid, and the leader's line alone carries that: written still, unsent.
                w.lost = True
                landing.append(self._land_one(flight, w, out, stored))
            elif w.envelope.stream:
                # Past its own deadline and grace (a follower with a shorter deadline than
                # the leader's call, a notice lagging): its gateway answered 504 and wrote
                # its line, unless its client left first, which a notice still to come
                # would say (then the line is ours).
                degraded = _flagged(flight, w.envelope)
                self.flights.unmetered(w.envelope, coalesced=not w.leader, degraded=degraded)
            # else a plain request past its deadline and grace: its gateway wrote its line.
        await _together(landing)

    async def _land_one(
        self, flight: Flight, w: Waiter, out: Outcome, stored: bool = False
    ) -> None:
        """Answer one waiter and write its ledger line; its final says whether the
        answer was ``stored`` (the flight's leader chose: a gateway keeps only what the
        worker stored)."""
        env = w.envelope
        if w.gone:
            await self._closed(flight, w, out)
            return
        if _outlives(flight, w, out.error) or (
            isinstance(out.error, BatchCancelled) and not w.leader
        ):
            # Its own call, once this flight has landed: cut by the leader's deadline, or
            # by the cancel of the leader's batch (its own is checked on its own call).
            flight.rerun.append(w)
            return
        if out.error is not None:
            # A stream that broke part way was billed for what it sent: the leader's
            # line says so (at an estimate), with the vendor that sent it.
            paid = (out.candidate, out.usage) if w.leader else (None, Usage())
            late = out.late if w.leader else []
            # A Batch API line cut by the stop goes back on the request topic, unanswered:
            # its one answer is the next worker's.  Metered here only if a vendor was paid.
            put_back = out.stopped and await self._put_back(env)
            if put_back and paid[0] is None and not late:
                return
            async with w.sending:
                await self._fail(
                    _as_flagged(flight, env),
                    w.broken or out.error,  # (what it was told, when a chunk was lost)
                    coalesced=not w.leader,
                    paid=paid,
                    late=late,
                    cut=out.cut if w.leader else [],
                    reply=not w.lost and not put_back,
                )
            return
        if env.stream and not flight.chunks and out.body is not None:
            # A streaming waiter that joined a non-streamed call gets it as chunks; a
            # body of a shape they cannot be made of (a vendor's, taken as it came), or
            # whose text is not text (chunks of it would say nothing), is an answer it
            # cannot be given: it fails as an unreadable answer does, its line the one it
            # would have had (a leader's carries what the vendor billed).
            if not plain_text(out.body):
                log.warning(
                    "answer to %s cannot be streamed: its text is not a string", env.correlation_id
                )
                await self._land_one(flight, w, _unstreamable(out))
                return
            try:
                flight.chunks.extend(response_to_chunks(out.body))
            except Exception:
                log.exception("answer to %s cannot be streamed", env.correlation_id)
                await self._land_one(flight, w, _unstreamable(out))
                return
        line = usage_event(
            env,
            self.prices,
            candidate=out.candidate,
            usage=out.usage,
            coalesced=not w.leader and not out.cached,
            cache_hit=out.cached,
            # A follower paid nothing: its saving is coalescing's, not a batched share's.
            batched=out.batched and w.leader,
            degraded=_flagged(flight, env),
            cut=out.cut,  # calls cut before the answer: billed too (a follower's: none)
        )
        try:
            async with w.sending:  # every chunk out before the final
                await self._deliver(flight, w)
                if not w.lost:
                    body = None if env.stream else out.body
                    final = ReplyEvent.final(env, line, body, seq=w.sent + 1, stored=stored)
                    await self._send(env, final)
        except TimeoutError:
            # The broker did not take it (no such topic): an error would not go either.
            log.warning("answer to %s not sent: %s took nothing", env.correlation_id, env.reply_to)
        except Exception as exc:
            # An answer the broker will not carry (over its size limit, say) was paid
            # for all the same: the waiter hears why at once, and the ledger its line.
            # (the broker is the relay's own: a 500; when even that cannot go out, its
            # gateway answers at the deadline)
            log.warning("answer to %s not delivered: %r", env.correlation_id, exc)
            lost = answer_lost(exc)
            await self._fail(env, lost, meter=False)
        if w.broken is not None:
            # A chunk did not reach it (told so already): its stream is of no use to it,
            # so its line says it failed, with the figures the answer would have had.
            await self._unreached(flight, w, out, w.broken)
            return
        if w.leader and out.late:
            # Shares of window-batched calls the request was cut from before this answer
            # came: billed too, so its one line adds them once they are known (the
            # reply above carries the answer's own figures, as the client got them).
            self._spawn(self._meter_share(partial(_plus_shares, line), out.late))
            return
        await self.sink.usage(line)

    async def _closed(self, flight: Flight, w: Waiter, out: Outcome) -> None:
        """The ledger line of a waiter whose client went away, whatever the call's
        outcome: ``client_closed`` (see ``_unreached``); or, for one lost first (a chunk
        of its stream did not reach it, so its gateway failed the stream and withdrew it),
        what it was told then.  No reply: nobody reads it."""
        await self._unreached(flight, w, out, w.broken or ClientClosed(CLOSED))

    async def _unreached(self, flight: Flight, w: Waiter, out: Outcome, err: RelayError) -> None:
        """The ledger line of a waiter the answer did not reach (its client went away, a
        chunk of its stream was lost), whatever the call's outcome: failed with ``err``,
        with the figures it would have had otherwise, as coalesced calls are metered: the
        leader's line carries what the vendor billed (what streamed when the call was
        stopped; the whole answer when the call went on for other waiters), a follower's
        costs nothing.  No reply: it was told already, or nobody reads it."""
        paid = (out.candidate, out.usage) if w.leader and not out.cached else (None, Usage())
        await self._fail(
            _as_flagged(flight, w.envelope),
            err,
            coalesced=not w.leader,
            paid=paid,
            late=out.late if w.leader else [],
            cut=out.cut if w.leader and not out.cached else [],
            reply=False,
        )

    def _store(self, flight: Flight, out: Outcome) -> asyncio.Future[None] | None:
        """Start storing the answer (as it stands now), or None when it is not cached."""
        leader = flight.waiters[0].envelope
        if not leader.cache_ttl_s or out.candidate is None or flight.degraded:
            return None
        if not self._keeps(leader, out.candidate, out.body, flight.chunks):
            return None
        entry = _entry(leader, out.candidate, out.usage, body=out.body, chunks=list(flight.chunks))
        # Stored without looking (a refresh, an answer too old for the request): in place
        # of whatever is there, which the gateways are told to drop from their L1.
        store = self.sink.cache(
            leader.prompt_hash, entry, leader.cache_ttl_s, replacing=not leader.cache_lookup
        )
        return asyncio.ensure_future(store)

    def _keeps(
        self,
        env: RequestEnvelope,
        cand: Candidate,
        body: dict[str, Any] | None,
        chunks: list[dict[str, Any]] | None = None,
    ) -> bool:
        """Whether an answer to ``env`` may be stored for later requests to be served.
        Never raises: an answer that cannot be checked (a vendor's of a shape ``storable``
        did not foresee, an alias a new config no longer has) is simply not stored, and
        the request is answered all the same."""
        if env.degraded:
            return False  # a cheaper model's answer must not be served later as the alias's
        try:
            if self.router.spec(env.alias).is_canary(cand.vendor, cand.model):
                return False  # nor a canary's to users of the stable version
            return storable(body, chunks)  # nor one a filter cut, nor an error sent as one
        except Exception:
            log.exception("answer to %s not cached: it could not be checked", env.correlation_id)
            return False

    async def _fail(
        self,
        env: RequestEnvelope,
        err: RelayError,
        coalesced: bool = False,
        meter: bool = True,
        paid: tuple[Candidate | None, Usage] = (None, Usage()),
        late: list[Late] | None = None,
        reply: bool = True,
        cut: Sequence[Billed] = (),
    ) -> None:
        """Answer ``env`` with ``err`` (unless ``reply`` is false: its topic failed
        already) and meter it: billed what ``paid`` names (a stream broken part way, the
        last call cut) and the other calls ``cut`` after they went out (``Outcome.cut``);
        with ``late``, its shares of window-batched calls that went out are added when
        those answers come.  The line is written even when the reply cannot go out,
        flagged ``degraded`` as ``env`` is when the request was sent the cheaper way."""
        degraded = env.degraded
        error = ReplyEvent(
            correlation_id=env.correlation_id,
            kind="error",
            error=err.to_dict(),
            coalesced=coalesced,
        )
        try:
            if reply:
                await self._send(env, error)
        except Exception as exc:
            log.warning("error reply to %s not delivered: %r", env.correlation_id, exc)
        if not meter:
            return
        if late:

            def failed(billed: list[tuple[Candidate, Usage]]) -> UsageEvent:
                # Failed, and billed its shares and the calls cut (the vendor it paid
                # named, else the first share's); none, if nothing was paid.
                if paid[0] is not None:
                    line = usage_event(
                        env,
                        self.prices,
                        candidate=paid[0],
                        usage=paid[1],
                        error=err,
                        degraded=degraded,
                        cut=cut,
                    )
                    return _plus_shares(line, billed)
                cand, usage = billed[0] if billed else (None, Usage())
                line = usage_event(
                    env,
                    self.prices,
                    candidate=cand,
                    usage=usage,
                    error=err,
                    batched=cand is not None,
                    degraded=degraded,
                    cut=cut,
                )
                return _plus_shares(line, billed[1:])

            self._spawn(self._meter_share(failed, late))
            return
        candidate, usage = paid
        await self.sink.usage(
            usage_event(
                env,
                self.prices,
                candidate=candidate,
                usage=usage,
                error=err,
                coalesced=coalesced,
                degraded=degraded,
                cut=cut,
            )
        )

    async def _meter_share(
        self, line_for: Callable[[list[tuple[Candidate, Usage]]], UsageEvent], late: list[Late]
    ) -> None:
        """The one ledger line of a request cut from window-batched calls after its inputs
        went out (``late``): written once those calls answer, by ``line_for`` the shares
        the vendors billed (a call that failed billed nothing)."""
        stopping = False
        try:
            await asyncio.wait([share for _, share in late], timeout=LATE_SHARE_S)
        except asyncio.CancelledError:
            stopping = True  # the worker stops: the line goes now, with the shares that came
        billed = [
            (cand, share.result().usage)
            for cand, share in late
            if share.done() and not share.cancelled() and share.exception() is None
        ]
        await self.sink.usage(line_for(billed))
        if stopping:
            raise asyncio.CancelledError


async def _together(sends: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run ``sends`` side by side (the common single one without a task)."""
    pending = list(sends)
    if len(pending) == 1:
        await pending[0]
    elif pending:
        await asyncio.gather(*pending)


RERUN_MIN_S = 1.0  # time a follower must have left to be worth a call of its own


def _outlives(flight: Flight, w: Waiter, error: RelayError | None) -> bool:
    """Whether a follower was cut by its leader's deadline, not its own: a shorter
    deadline (another client's, another tenant's under a global cache scope) must not
    fail a request that would still wait.  The call runs to the latest deadline of its
    waiters (``Flight.deadline``), but one that joined after our own rate limits said the
    deadline the call had then could not be met (``RateLimited``: a gate's wait keeps the
    deadline it began with), or as a call cut at it was landing, gets a call of its own.
    Only before it was sent any of the stream."""
    if not isinstance(error, DeadlineExceeded | RateLimited) or w.leader or w.sent:
        return False
    leader = flight.waiters[0].envelope
    left_s = w.envelope.deadline_ms / 1000 - time.time()
    return w.envelope.deadline_ms > leader.deadline_ms and left_s > RERUN_MIN_S


def _batchable(plan: list[Candidate], spec: ModelAlias) -> list[Candidate]:
    """The candidates of a background request's ``plan`` whose vendor batch may answer it:
    the alias's canary only when it comes first (the request is the canary's, or nothing
    else is up).  A user the canary did not take has it behind the stable candidates, as
    the realtime way's last resort (``Router.plan``): never a vendor batch to send the
    request to while a stable candidate is up."""
    return [c for i, c in enumerate(plan) if i == 0 or not spec.is_canary(c.vendor, c.model)]


def _plus_shares(line: UsageEvent, billed: list[tuple[Candidate, Usage]]) -> UsageEvent:
    """``line`` with shares of window-batched calls its request was cut from added: their
    tokens and cost (at their own candidates' prices), flagged ``batched``.  The request
    keeps its one ledger line (its vendor the one that answered, if one did); what it
    would have cost sent straight (``direct_cost``) stays its answer's."""
    if not billed:
        return line
    usage, cost = line.usage, line.cost
    for cand, used in billed:
        usage = Usage(**{f: getattr(usage, f) + getattr(used, f) for f in Usage.model_fields})
        cost += cost_of(cand, used)
    saved = max(0.0, line.direct_cost - cost)
    update = {"usage": usage, "cost": cost, "saved_cost": saved, "batched": True}
    return line.model_copy(update=update)


def _unstreamable(out: Outcome) -> Outcome:
    """``out`` (an answer whose body cannot be sent as a stream: not in the chat format,
    or its text not a string) as the error a streaming waiter gets instead, its figures
    kept for the leader's line."""
    said = (
        "the vendor's answer could not be sent as a stream (it is not in the chat format, "
        "or its text is not a string)"
    )
    return replace(out, error=VendorAnswerUnreadable(said), body=None)


def _judged(
    budget: Budget, env: RequestEnvelope, joins: Joins, at_once: bool
) -> BudgetDecision | None:
    """``budget``'s verdict for ``env``, a waiting Batch API line: it may join an
    identical call under way only if it goes on at once (``Turn.ask``)."""
    return budget(env, joins if at_once else _alone)


def _alone(degraded: str | None) -> bool:
    """Joins nothing: holds as a call of its own."""
    return False


def _flagged(flight: Flight, env: RequestEnvelope) -> str | None:
    """Why the answer to ``env`` is flagged degraded: it went the cheaper way (its budget's
    downgrade, or the flight's rate pressure).  An answer from the cache did not: it is
    the full model's, and free, whatever the request's budget said; but for the answer a
    spent ``cache_only`` budget is served, stale maybe, which its flight says
    (``budget_exhausted``, see ``_stale_or_refuse``)."""
    return flight.degraded if flight.cached else flight.degraded_for(env)


def _as_flagged(flight: Flight, env: RequestEnvelope) -> RequestEnvelope:
    """``env`` flagged as its line is (``_flagged``), for ``_fail``, which flags a line
    as the envelope it is given."""
    flagged = _flagged(flight, env)
    return env if flagged == env.degraded else env.model_copy(update={"degraded": flagged})


def _stopped_for_nobody(flight: Flight) -> bool:
    """Whether the leader's ``CancelledError`` is its call stopped by ``cancel`` (every
    client gone), not the worker stopping (which cancels the leader's own task)."""
    call, task = flight.call, asyncio.current_task()
    return call is not None and call.cancelled() and not (task and task.cancelling())


def _entry(
    env: RequestEnvelope,
    cand: Candidate,
    usage: Usage,
    *,
    body: dict[str, Any] | None = None,
    chunks: list[dict[str, Any]] | None = None,
) -> CacheEntry:
    """An answer as the cache keeps it: the whole body, or a stream's chunks."""
    return CacheEntry(
        chunks=chunks or None,
        body=body,
        usage=usage,
        vendor=cand.vendor,
        model=cand.model,
        created=time.time(),
        endpoint=env.endpoint,
    )


async def _settled(storing: asyncio.Future[None]) -> None:
    """Wait for the answer to be stored; a cache that failed costs a later request a
    vendor call, never this flight its landing."""
    try:
        await storing
    except Exception as exc:
        log.warning("could not store an answer in the cache: %s", exc)
