"""Spend let go ahead but not counted yet, which a tenant's budget must see besides its
spend table: without it, any number of requests arriving together pass a budget that
has room for one, and a Batch API upload passes one nearly spent (its lines are metered
when the vendor's batch ends, hours later).

A hold is a guess at the worst case, often many times what the request costs: it caps
how much may be in flight at once (``tables.budgets.held_back``), and never counts as
money spent (refusals until the period resets, and degradation, go by the spend table
alone)."""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from schemas.envelope import RequestEnvelope
from schemas.formats.anthropic import DEFAULT_MAX_TOKENS
from schemas.usage import Usage, estimated_tokens, prompt_chars
from tables.budgets import BudgetDecision, BudgetPolicy, Spend, decide, held_back
from tables.prices import PriceSheet

log = logging.getLogger("relay.budgets")

# A request whose line never reaches this worker (its gateway wrote it, at the deadline)
# lets go of its hold this long after its deadline.  (One handed to the vendor-batch lane
# is held longer: see ``Budgets.keep``.)
AFTER_DEADLINE_S = 60.0
# The completion a request without max_tokens is held to: what the relay asks an
# Anthropic vendor for then (which requires a figure), and a fair guess at an answer of
# an OpenAI-kind vendor, which sets none.  (The TPM estimate's smaller 256 is a typical
# answer, for pacing; a hold is a worst case.)
DEFAULT_COMPLETION = DEFAULT_MAX_TOKENS
# The most completion a hold counts a request for: about the longest answer any model
# writes today (128k tokens), so that a client's absurd max_tokens (any positive integer
# passes the gateway) holds what a real answer could cost, not enough to hold back every
# other request of its tenant until its own line comes.
MAX_HELD_COMPLETION = 128_000
# The most answers (``n``, or legacy completions' ``best_of``) a hold counts: OpenAI's
# own bound on ``n``.
MAX_HELD_ANSWERS = 128
# Settled holds the expiry heap may keep beyond as many as are live, before it is rebuilt
# without them (see ``Holds._compact``).
SETTLED_KEPT = 1024
# How long the first of a tenant's waiting requests may be passed by those behind it that
# fit the room it does not fit (first fit): past it, none passes it any more, so what
# the tenant holds drains until it fits, rather than a big request wait out its window
# behind a stream of small ones.  (A realtime request is not held back by waiting ones.)
PASSED_BY_S = 600.0
# Whether a request, degraded for the reason given (None: not degraded), would join an
# identical call under way (the handler knows; ``Budgets`` asks).
Joins = Callable[[str | None], bool]


def worst_cost(env: RequestEnvelope, prices: PriceSheet) -> float:
    """What ``env`` may cost at most, about: its prompt and the completion it allows (up
    to ``MAX_HELD_COMPLETION`` an answer), once for each answer it asks for (``n``, or
    ``best_of``, which the vendor writes and bills all of), at the prices of the dearest
    candidate its alias may send it to (``PriceSheet.dearest_cost``): priced at the
    first-listed, an unpriced local primary held nothing for a request its priced
    fallback may serve."""
    body = env.body
    output = 0
    if env.endpoint != "embeddings":
        limit = (
            body.get("max_completion_tokens")
            or body.get("max_tokens")
            or body.get("max_output_tokens")
        )
        answer = _count(limit, DEFAULT_COMPLETION, MAX_HELD_COMPLETION)
        answers = max(_count(body.get(k), 1, MAX_HELD_ANSWERS) for k in ("n", "best_of"))
        output = answer * answers
    usage = Usage(input_tokens=estimated_tokens(prompt_chars(body)), output_tokens=output)
    try:
        return prices.dearest_cost(env.alias, usage)
    except KeyError:
        return 0.0


def _count(given: object, default: int, most: int) -> int:
    """A count a body gives (tokens, answers), at most ``most``; ``default`` for none, or
    for anything but a positive number (a producer's envelope may carry any JSON)."""
    if isinstance(given, bool) or not isinstance(given, int | float):
        return default
    if not math.isfinite(given) or given < 1:
        return default
    return int(min(given, most))


@dataclass(eq=False)
class _Hold:
    tenant: str
    usd: float
    until: float
    key: tuple[str, str]  # (tenant, correlation id)
    live: bool = True
    lasting: bool = False  # a request in a vendor batch, metered when its batch ends


class Holds:
    """One worker's holds on its tenants' budgets.

    A request admitted against a budget holds its ``worst_cost`` until its ledger line is
    written (``settle``, by tenant and the request's correlation id: unique per request,
    unlike a trace id a client may give many requests); the spend agent counts the line
    within a batch window (250 ms) — holding its cost on for a while longer would count
    it twice in that while, for a tenant whose requests keep coming.  A request handled
    again (a vendor batch that failed, sent the realtime way; a follower whose leader was
    cut) holds once, not twice.  Each worker holds for what it has taken: with several, a
    budget can be overshot by what they have in flight at once, not by every request that
    arrived before the spend agent caught up."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._by_request: dict[tuple[str, str], _Hold] = {}
        self._expiring: list[tuple[float, int, _Hold]] = []  # a heap, by ``until``
        self._held: dict[str, float] = {}
        self._lasting: dict[str, float] = {}  # of those, requests in vendor batches
        self._count = 0

    def held(self, tenant: str, besides: str | None = None) -> float:
        """USD the tenant's requests hold now, but for request ``besides``'s own hold (a
        request handled again is not held back by what it holds itself)."""
        self._expire()
        total = self._held.get(tenant, 0.0)
        if besides is not None and (own := self._by_request.get((tenant, besides))):
            total -= own.usd
        return total if total > 1e-12 else 0.0  # (float dust is nothing held)

    def lasting(self, tenant: str) -> float:
        """USD the tenant's requests in vendor batches hold now (held ``lasting``: metered
        when their batch ends, hours maybe)."""
        self._expire()
        return self._lasting.get(tenant, 0.0)  # (``_add_to`` leaves no float dust)

    def take(
        self, tenant: str, request_id: str, usd: float, until: float, *, lasting: bool = False
    ) -> None:
        """Hold ``usd`` for a request until its line is written (or ``until``, epoch
        seconds, if it never is); a request that holds already holds this instead.
        ``lasting``: the request is in a vendor batch, its line comes when the batch ends
        (said by the caller, who sent it there: a realtime request with a long deadline
        holds long too, and its line comes when its call ends)."""
        key = (tenant, request_id)
        if (earlier := self._by_request.get(key)) is not None:
            self._drop(earlier)
        if usd > 0:
            self._by_request[key] = self._add(tenant, usd, until, key, lasting)

    def settle(self, tenant: str, request_id: str | None) -> bool:
        """A request's line is written: the spend table counts it from now on (or it
        takes its place among its tenant's waiting requests, which hold nothing).  A line
        without a hold (a tenant without budget, a request taken before a restart, a
        cache hit) lets go of nothing.  Whether a hold was let go."""
        if request_id is not None and (hold := self._by_request.get((tenant, request_id))):
            self._drop(hold)
            self._compact()
            return True
        return False

    def _add(
        self, tenant: str, usd: float, until: float, key: tuple[str, str], lasting: bool
    ) -> _Hold:
        hold = _Hold(tenant, usd, until, key, lasting=lasting)
        self._count += 1
        heapq.heappush(self._expiring, (until, self._count, hold))
        _add_to(self._held, tenant, usd)
        if hold.lasting:
            _add_to(self._lasting, tenant, usd)
        return hold

    def _drop(self, hold: _Hold) -> None:
        if not hold.live:
            return
        hold.live = False
        _add_to(self._held, hold.tenant, -hold.usd)
        if hold.lasting:
            _add_to(self._lasting, hold.tenant, -hold.usd)
        if self._by_request.get(hold.key) is hold:
            del self._by_request[hold.key]

    def _expire(self) -> None:
        now = self.clock()
        while self._expiring and self._expiring[0][0] <= now:
            self._drop(heapq.heappop(self._expiring)[2])

    def _compact(self) -> None:
        """Rebuild the expiry heap without settled holds once they outnumber the live
        ones (and ``SETTLED_KEPT``): a settled hold leaves the heap only at its ``until``,
        a day away for a request sent in a vendor batch, so a busy lane would otherwise
        keep a day of answered requests in memory.  Each rebuild drops at least half the
        heap, so it costs O(1) a settle over time."""
        if len(self._expiring) > 2 * len(self._by_request) + SETTLED_KEPT:
            self._expiring = [entry for entry in self._expiring if entry[2].live]
            heapq.heapify(self._expiring)


def _add_to(totals: dict[str, float], tenant: str, usd: float) -> None:
    left = totals.get(tenant, 0.0) + usd
    if left > 1e-12:
        totals[tenant] = left
    else:
        totals.pop(tenant, None)  # and float dust with it


def waits(decision: BudgetDecision | None) -> bool:
    """Whether ``decision`` only holds its request back for what its tenant has in flight
    (``held_back``'s 429 for seconds): a Batch API line so held back waits in its
    tenant's line (``Waiting``) rather than end; any other verdict ends its wait."""
    return (
        decision is not None and decision.action == "refuse" and decision.retry_after_s is not None
    )


# The verdict for a waiting request, told whether the request goes on at once: only then
# may it join an identical call under way for nothing (``Joins``), as by the time a
# waiting request's task runs that call may be over and the request would lead a call
# it holds nothing for.
Judge = Callable[[bool], BudgetDecision | None]


class Turn:
    """A request's place among its tenant's requests waiting for room under the budget
    (``Waiting.turn``).  Its request (``ask``) is judged in its place whenever its line
    is looked at (``Waiting.look``): it either goes (``gone``, with its ``verdict``: let
    go ahead, or refused for good; or what judging it ``failed`` with), woken to do so,
    or stays in its place."""

    def __init__(self, waiting: Waiting, tenant: str) -> None:
        self._waiting = waiting
        self.tenant = tenant
        self.env: RequestEnvelope | None = None
        self.judge: Judge | None = None
        self.worst = 0.0  # what it would hold, to pass over it at a glance when it cannot
        self.verdict: BudgetDecision | None = None  # its latest verdict
        self.gone = False  # judged to go: it left the line
        self.passed_at: float | None = None  # first passed by one behind it, as the first
        self.led = False  # it knows it is the first (it waits the first's Retry-After)
        self.failed: Exception | None = None  # what judging it raised: it leaves with it
        self._woken = asyncio.Event()

    @property
    def first(self) -> bool:
        """Whether it is the first in its line (the one whose Retry-After is kept)."""
        line = self._waiting._lines.get(self.tenant)
        return line is not None and next(iter(line.turns), None) is self

    def ask(self, env: RequestEnvelope, judge: Judge) -> None:
        """Take the place for ``env``, judged by ``judge``, and judge the line at once:
        ``env`` goes now if there is room for it once those before it have had theirs
        (first fit), else it waits in its place.  What ``env`` holds already is let go
        first (a request handled again: a Batch API line its vendor batch failed, a
        follower whose leader was cut): a waiting request is not in flight, so it holds
        nothing that keeps others, or itself, out; its verdict holds it afresh if it
        goes."""
        self.env, self.judge = env, judge
        self._waiting.let_go(env)
        self._waiting.measured(self)
        self._waiting.look(self.tenant, asking=self)

    def look(self) -> None:
        """Its line judged again, it first (its Retry-After passed: holds also lapse
        with no line written to say so)."""
        self._waiting.look(self.tenant, asking=self)

    def wake(self) -> None:
        self._woken.set()

    async def wait(self, most_s: float) -> bool:
        """Until woken or ``most_s`` has passed, whichever comes first; whether it was
        woken.  The caller looks at where it stands (``gone``, ``first``) either way, so
        a wake that comes as the wait ends is never missed."""
        try:
            async with asyncio.timeout(most_s):
                await self._woken.wait()
        except TimeoutError:
            pass
        woken = self._woken.is_set()
        self._woken.clear()
        return woken


@dataclass
class _Line:
    """A tenant's waiting requests in order, and their worst cases, smallest first (a
    heap, of requests gone too until they come up): when even the smallest cannot fit,
    nobody behind the first is looked at."""

    turns: OrderedDict[Turn, None]
    smallest: list[tuple[float, int, Turn]]

    def least(self) -> float:
        """The smallest worst case of those waiting."""
        while self.smallest and self.smallest[0][2] not in self.turns:
            heapq.heappop(self.smallest)
        return self.smallest[0][0] if self.smallest else math.inf

    def compact(self) -> None:
        """Drop those gone from the heap once they outnumber those waiting (one gone
        stays under smaller ones that wait, else)."""
        if len(self.smallest) > 2 * len(self.turns) + SETTLED_KEPT:
            self.smallest = [entry for entry in self.smallest if entry[2] in self.turns]
            heapq.heapify(self.smallest)


class Waiting:
    """Each tenant's line of requests waiting for room under its budget (Batch API lines,
    which have no client to try again later), judged in order, first fit: whenever the
    line is looked at (a hold of the tenant let go, the first's Retry-After, a request
    joining it), each request is judged in turn while there may be room, so one that fits
    goes though one before it does not, which keeps its place.  A first request passed
    by others for ``passed_by_s`` is passed by nobody any more: those behind it wait
    until it goes, so what they hold drains until it fits.

    The line is judged at once, one request after another, each verdict taking its hold
    as it is given (``Budgets.__call__``): two requests never both take the same room,
    and a request let go is woken to go, one task for each that goes.  ``fits`` (tenant,
    worst case, and the request it is, whose own hold it leaves out as its verdict does;
    None for the smallest worst case of the line) says whether a request may fit, at a
    glance (only those are judged), and ``measure`` its worst case: a line none of which
    fits costs O(1) to look at (its smallest worst case does not fit), any other at most
    one pass.  ``let_go`` lets go of what a request holds as it takes its place: waiting,
    it holds nothing (so no hold of a waiting request is left out of that glance at the
    smallest)."""

    def __init__(
        self,
        fits: Callable[[str, float, str | None], bool] | None = None,
        measure: Callable[[RequestEnvelope], float] | None = None,
        clock: Callable[[], float] = time.time,
        passed_by_s: float = PASSED_BY_S,
        let_go: Callable[[RequestEnvelope], object] | None = None,
    ) -> None:
        self._lines: dict[str, _Line] = {}
        self._fits = fits or (lambda tenant, worst, besides: True)
        self._measure = measure or (lambda env: 0.0)
        self.let_go = let_go or (lambda env: None)
        self.clock = clock
        self.passed_by_s = passed_by_s
        self._count = 0

    @contextmanager
    def turn(self, tenant: str) -> Iterator[Turn]:
        """A place at the end of ``tenant``'s line (``Turn.ask`` says for what), held
        until the block ends.  A first that leaves without going (its batch cancelled,
        its window over, the worker stopping) lets those behind it pass again: the line
        is looked at."""
        line = self._lines.get(tenant)
        if line is None:
            line = self._lines[tenant] = _Line(OrderedDict(), [])
        turn = Turn(self, tenant)
        line.turns[turn] = None
        try:
            yield turn
        finally:
            if not turn.gone:
                first = turn.first
                self._leave(line, turn)
                if first:
                    self._look_for_others(tenant)

    def measured(self, turn: Turn) -> None:
        """``turn``'s worst case, now that it says what it asks for."""
        assert turn.env is not None
        turn.worst = self._measure(turn.env)
        line = self._lines[turn.tenant]
        self._count += 1
        heapq.heappush(line.smallest, (turn.worst, self._count, turn))

    def look(self, tenant: str, asking: Turn | None = None) -> None:
        """Judge ``tenant``'s line in order while there may be room (first fit): each
        that may fit the room left (``fits``) is judged, and goes if let go, until none
        of those left may fit, or the first that stays has been passed by others for
        ``passed_by_s``.  ``asking``: the request whose own task looks (the one joining
        the line, last; or the first, its Retry-After passed), which goes on at once if
        let go: it is judged whatever its size, as it may join a call under way for
        nothing, unless the first has been passed by long enough."""
        line = self._lines.get(tenant)
        if line is None:
            return
        stays: Turn | None = None  # the first that stays in line
        asked = asking is None
        for turn in list(line.turns):
            if turn.judge is None:  # (its task has not said for what yet)
                continue
            if stays is not None and self._passed_enough(stays):
                break  # nobody passes it any more
            asked = asked or turn is asking
            besides = turn.env.correlation_id if turn.env is not None else None
            if turn is not asking and not self._fits(tenant, turn.worst, besides):
                stays = stays or turn
                if not self._fits(tenant, line.least(), None):
                    break  # nobody left may fit (but the one asking, below)
                continue
            if not self._judged(line, turn, at_once=turn is asking):
                stays = stays or turn
            elif stays is not None and stays.passed_at is None:
                stays.passed_at = self.clock()
        if not asked and asking is not None and asking in line.turns:
            if stays is None or not self._passed_enough(stays):
                went = self._judged(line, asking, at_once=True)
                if went and stays is not None and stays.passed_at is None:
                    stays.passed_at = self.clock()
        head = next(iter(line.turns), None)
        if head is not None and not head.led:
            head.led = True
            if head is not asking:
                head.wake()  # first now: it waits its Retry-After from here
        line.compact()

    def _judged(self, line: _Line, turn: Turn, *, at_once: bool) -> bool:
        """Judge ``turn``: whether it goes (let go ahead, refused for good, or judging it
        failed), woken to, or stays in its place."""
        assert turn.judge is not None
        try:
            turn.verdict = turn.judge(at_once)
        except Exception as exc:  # (a bug: its own task raises it, not whoever looks)
            turn.failed, turn.verdict = exc, None
        if turn.failed is None and waits(turn.verdict):
            return False
        turn.gone = True
        self._leave(line, turn)
        turn.wake()
        return True

    def _passed_enough(self, first: Turn) -> bool:
        return first.passed_at is not None and self.clock() - first.passed_at >= self.passed_by_s

    def _leave(self, line: _Line, turn: Turn) -> None:
        line.turns.pop(turn, None)
        if not line.turns and self._lines.get(turn.tenant) is line:
            del self._lines[turn.tenant]

    def settled(self, tenant: str) -> None:
        """A hold of ``tenant`` was let go: its line is judged again (``look``)."""
        self._look_for_others(tenant)

    def _look_for_others(self, tenant: str) -> None:
        """``look``, for a caller that is not in the line (a ledger line being written,
        a request leaving it): what fails is logged, not its (the line is looked at again
        at the first's Retry-After)."""
        try:
            self.look(tenant)
        except Exception:
            log.exception("tenant %s's waiting requests not judged again", tenant)

    def waiting(self, tenant: str) -> int:
        """How many of ``tenant``'s requests wait."""
        line = self._lines.get(tenant)
        return len(line.turns) if line is not None else 0


class Budgets:
    """The budget verdict for each request (``RequestHandler``'s ``budget``): refused,
    degraded or let go by the tenant's spend as its table has counted it; held back a
    few seconds (429) when what its requests in flight hold, with its own worst case,
    could pass the limit.  A request let go ahead holds its ``worst_cost`` until its
    ledger line is written, unless it joins an identical call under way: its line costs
    nothing (the call's leader holds for the call), so it neither holds nor is held back.
    A request held back with no client to come back (a Batch API line) waits in its
    tenant's line instead (``turn``), holding nothing (what it held, handled again, is
    let go as it takes its place), to be judged again, in order, as holds are let go."""

    def __init__(
        self,
        policies: dict[str, BudgetPolicy],
        spend: Callable[[str], Spend],
        prices: PriceSheet,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policies = policies
        self.spend = spend
        self.prices = prices
        self.clock = clock
        self.holds = Holds(clock)
        self.waiting = Waiting(
            self._may_fit,
            lambda env: worst_cost(env, self.prices),
            clock,
            let_go=lambda env: self.holds.settle(env.tenant, env.correlation_id),
        )

    def __call__(
        self, env: RequestEnvelope, joins: Joins = lambda degraded: False
    ) -> BudgetDecision | None:
        policy = self.policies.get(env.tenant)
        if policy is None:
            return None
        now, spend = self.clock(), self.spend(env.tenant)
        decision = decide(policy, spend, now)
        if decision.action == "refuse" or decision.cache_only:
            return decision
        if joins(decision.reason if decision.action == "degrade" else None):
            return decision
        worst = worst_cost(env, self.prices)
        held = self.holds.held(env.tenant, besides=env.correlation_id)
        lasting = self.holds.lasting(env.tenant)
        if (refusal := held_back(policy, spend, now, held, worst, lasting)) is not None:
            return refusal
        until = env.deadline_ms / 1000 + AFTER_DEADLINE_S
        self.holds.take(env.tenant, env.correlation_id, worst, until)
        return decision

    def keep(
        self, env: RequestEnvelope, until: float, *, share: float = 1.0, lasting: bool = False
    ) -> None:
        """Hold ``env``'s worst case until its line is written or ``until`` (epoch
        seconds), whatever it held before: a request handed to the vendor-batch lane is
        metered when its batch is read back, hours after its deadline maybe, and one of a
        vendor batch this worker adopted held nothing here (its holds died with the
        worker that sent it).  Admitted already, it is not held back.  ``share`` of its
        worst case: a vendor batch bills at its discount (none: what it held is let go
        now).  ``lasting``: it is in a vendor batch (a request held back by such holds is
        told to wait longer)."""
        if env.tenant in self.policies:
            worst = worst_cost(env, self.prices) * max(0.0, min(share, 1.0))
            self.holds.take(env.tenant, env.correlation_id, worst, until, lasting=lasting)

    def turn(self, tenant: str) -> AbstractContextManager[Turn]:
        """A place in ``tenant``'s line of requests waiting for room (``Waiting.turn``),
        judged again in order (first fit) each time a hold of the tenant is let go."""
        return self.waiting.turn(tenant)

    def _may_fit(self, tenant: str, worst: float, besides: str | None = None) -> bool:
        """Whether a waiting request of ``tenant`` whose worst case is ``worst`` may be
        let go now, at a glance (``Waiting.look`` judges only those): its budget is
        spent (it is judged, to be refused for good), or ``held_back`` lets it go.  What
        request ``besides`` (its correlation id) holds itself is left out, as its verdict
        leaves it out: the glance never passes over a request its verdict would let go."""
        policy = self.policies.get(tenant)
        if policy is None:
            return True
        now, spend = self.clock(), self.spend(tenant)
        decision = decide(policy, spend, now)
        if decision.action == "refuse" or decision.cache_only:
            return True
        held = self.holds.held(tenant, besides=besides)
        return held_back(policy, spend, now, held, worst) is None

    def metered(self, tenant: str, request_id: str | None) -> None:
        """A ledger line about request ``request_id`` (its correlation id) is written:
        the worker's sink says so for each one.  The requests waiting for room in the
        tenant's budget are judged again when a hold goes, in order while there may be
        room (``Waiting.look``; the spend table counts the line within its batch window,
        so for that while its cost is neither held nor counted: a waiting request goes
        ahead then as a client's retry would)."""
        if self.holds.settle(tenant, request_id):
            self.waiting.settled(tenant)
