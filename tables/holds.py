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
        """A request's line is written: the spend table counts it from now on.  A line
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


class Turn:
    """A request's place among its tenant's requests waiting for room under the budget
    (``Waiting.turn``): only the first in line is judged again, whenever it is woken (a
    hold of its tenant was let go, or the one before it left the line) or its wait ends;
    the others wait behind it, so a hold let go wakes one request, not every one."""

    def __init__(self, line: OrderedDict[Turn, None]) -> None:
        self._line = line
        self._woken = asyncio.Event()

    @property
    def first(self) -> bool:
        return next(iter(self._line)) is self

    def wake(self) -> None:
        self._woken.set()

    async def wait(self, most_s: float) -> None:
        """Until woken or ``most_s`` has passed, whichever comes first: the caller looks
        at where it stands (``first``) either way, so a wake that comes as the wait ends
        is never missed."""
        try:
            async with asyncio.timeout(most_s):
                await self._woken.wait()
        except TimeoutError:
            pass
        self._woken.clear()


class Waiting:
    """Each tenant's line of requests waiting for room under its budget (Batch API lines,
    which have no client to try again later), first come, first judged."""

    def __init__(self) -> None:
        self._lines: dict[str, OrderedDict[Turn, None]] = {}

    @contextmanager
    def turn(self, tenant: str) -> Iterator[Turn]:
        """A place at the end of ``tenant``'s line, held until the block ends, when the
        next in line (first now) is woken to be judged at once: the one before it went
        ahead (there may be room for it too), or gave up."""
        line = self._lines.setdefault(tenant, OrderedDict())
        turn = Turn(line)
        line[turn] = None
        try:
            yield turn
        finally:
            first = turn.first
            del line[turn]
            if not line:
                del self._lines[tenant]
            elif first:
                next(iter(line)).wake()

    def settled(self, tenant: str) -> None:
        """A hold of ``tenant`` was let go: the first in its line is judged again."""
        if line := self._lines.get(tenant):
            next(iter(line)).wake()

    def waiting(self, tenant: str) -> int:
        """How many of ``tenant``'s requests wait."""
        return len(self._lines.get(tenant, ()))


class Budgets:
    """The budget verdict for each request (``RequestHandler``'s ``budget``): refused,
    degraded or let go by the tenant's spend as its table has counted it; held back a
    few seconds (429) when what its requests in flight hold, with its own worst case,
    could pass the limit.  A request let go ahead holds its ``worst_cost`` until its
    ledger line is written, unless it joins an identical call under way: its line costs
    nothing (the call's leader holds for the call), so it neither holds nor is held back.
    A request held back with no client to come back (a Batch API line) waits in its
    tenant's line instead (``turn``), to be judged again as holds are let go."""

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
        self.waiting = Waiting()

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
        worst case: a vendor batch bills at its discount.  ``lasting``: it is in a vendor
        batch (a request held back by such holds is told to wait longer)."""
        if env.tenant in self.policies:
            worst = worst_cost(env, self.prices) * max(0.0, min(share, 1.0))
            self.holds.take(env.tenant, env.correlation_id, worst, until, lasting=lasting)

    def turn(self, tenant: str) -> AbstractContextManager[Turn]:
        """A place in ``tenant``'s line of requests waiting for room (``Waiting.turn``),
        whose first is woken each time a hold of the tenant is let go."""
        return self.waiting.turn(tenant)

    def metered(self, tenant: str, request_id: str | None) -> None:
        """A ledger line about request ``request_id`` (its correlation id) is written:
        the worker's sink says so for each one.  The first request waiting for room in
        the tenant's budget is judged again when a hold goes (the spend table counts the
        line within its batch window, so for that while its cost is neither held nor
        counted: a waiting request goes ahead then as a client's retry would)."""
        if self.holds.settle(tenant, request_id):
            self.waiting.settled(tenant)
