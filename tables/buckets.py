"""Token buckets for RPM/TPM limits, and the priority gate that makes callers wait on them.

A lane is a ``Priority``: realtime waiters are served before batch before background,
first-come first-served within a lane.  Waiters only queue behind earlier ones that share
a bucket, so a throttled vendor never holds up calls to another.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel

from schemas.envelope import Priority
from schemas.errors import RateLimited

# Float refill arithmetic lands a hair short of a whole token; treat that as whole.
EPSILON = 1e-9
# The gate never re-checks sooner than this, so rounding cannot make it spin.
MIN_TICK_S = 0.001

LANES = {Priority.realtime: 0, Priority.batch: 1, Priority.background: 2}


class TokenBucket(BaseModel):
    """A refilling allowance; ``take`` spends it.  Times are on the caller's clock.

    A request larger than ``capacity`` (a long prompt against a TPM bucket) is let through
    once the bucket is full and leaves it in debt, which later refills repay: the average
    rate still holds and big requests are not starved forever.  One take counts for a
    minute's refill at most, so no single estimate (``max_tokens`` of a billion) can put
    the bucket in debt for longer than that; what a call did not use is given back
    (``give_back``), and what it used beyond its estimate is charged after (``charge``).
    """

    capacity: float
    refill_per_s: float
    tokens: float
    updated: float = 0.0

    @classmethod
    def per_minute(cls, limit: float, *, now: float = 0.0) -> TokenBucket:
        """A bucket for a per-minute limit, full at ``now``.

        Capacity is one second's worth (at least 1).  Over any minute the bucket admits at
        most limit + capacity: within 2% of a limit of 60 a minute or more, where capacity
        = limit/6 would admit 17% too many in the first minute and trip the vendor's own
        limiter (a smaller limit overshoots by its 1-request floor: 4 of rpm 3 at once).
        Vendors enforce per-minute limits over sub-minute slices too, so a small burst is
        the safe side.
        """
        capacity = max(1.0, limit / 60.0)
        return cls(capacity=capacity, refill_per_s=limit / 60.0, tokens=capacity, updated=now)

    @classmethod
    def from_rpm(cls, rpm: float, *, now: float = 0.0) -> TokenBucket:
        """A requests-per-minute bucket (take 1 per request)."""
        return cls.per_minute(rpm, now=now)

    @classmethod
    def from_tpm(cls, tpm: float, *, now: float = 0.0) -> TokenBucket:
        """A tokens-per-minute bucket (take the request's estimated tokens)."""
        return cls.per_minute(tpm, now=now)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            gained = (now - self.updated) * self.refill_per_s
            self.tokens = min(self.capacity, self.tokens + gained)
            self.updated = now

    def backlog_wait(self, n: float, now: float) -> float:
        """Seconds until ``n`` tokens' worth has refilled, ignoring capacity: how long a
        queue that will spend ``n`` in total takes to drain."""
        self._refill(now)
        deficit = n - self.tokens
        if deficit <= EPSILON:
            return 0.0
        return math.inf if self.refill_per_s <= 0 else deficit / self.refill_per_s

    def wait(self, n: float, now: float) -> float:
        """Seconds until ``take(n)`` would succeed; 0.0 if it would now.  Takes nothing."""
        return self.backlog_wait(min(n, self.capacity), now)

    def bounded(self, n: float) -> float:
        """What a take of ``n`` counts for: a minute's refill (or a full bucket) at most."""
        return min(n, max(self.capacity, self.refill_per_s * 60))

    def take(self, n: float, now: float) -> float:
        """Spend ``n`` tokens and return 0.0, or spend nothing and return the wait."""
        wait = self.wait(n, now)
        if wait == 0.0:
            self.tokens -= self.bounded(n)
        return wait

    def charge(self, n: float, now: float) -> None:
        """Spend ``n`` more tokens now, whatever the bucket holds: a call that used more
        than it was admitted on pays the rest from later refills, as a take beyond
        capacity does."""
        self._refill(now)
        self.tokens -= max(0.0, n)

    def give_back(self, n: float, now: float) -> None:
        """Return ``n`` tokens taken but not used (a call that used fewer than estimated,
        or that the vendor refused), never past a full bucket."""
        self._refill(now)
        self.tokens = min(self.capacity, self.tokens + max(0.0, n))


@dataclass(eq=False)
class _Waiter:
    needs: dict[str, float]  # bucket key -> tokens to spend there
    lane: int
    future: asyncio.Future[None]
    # What it counts for in each bucket's queue (its need, bounded as a take bounds it):
    # kept so that leaving takes off the running totals exactly what joining added.
    counts: dict[str, float]
    queued: bool = True  # False once granted, expired or gone: its queue entries are dead
    taken: dict[str, float] = field(default_factory=dict)  # what its grant spent


@dataclass(eq=False)
class _Line:
    """One bucket's queue: a FIFO per lane and running totals per lane, so the gate
    prices and serves a queue without walking it.  A waiter leaving from the middle
    (expired, cancelled) stays in its deque, dead, until it reaches the front or the deque
    is compacted: leaving is O(1), whatever the queue's length."""

    lanes: tuple[deque[_Waiter], ...] = field(default_factory=lambda: tuple(deque() for _ in LANES))
    tokens: list[float] = field(default_factory=lambda: [0.0] * len(LANES))
    members: list[int] = field(default_factory=lambda: [0] * len(LANES))

    def head(self) -> _Waiter | None:
        """The first live waiter, best lane first."""
        for queue in self.lanes:
            while queue and not queue[0].queued:
                queue.popleft()
            if queue:
                return queue[0]
        return None

    def ahead(self, lane: int) -> float:
        """Tokens queued in ``lane`` and the better lanes: what a newcomer to ``lane``
        waits behind."""
        return sum(self.tokens[: lane + 1])

    def join(self, waiter: _Waiter, count: float) -> None:
        self.lanes[waiter.lane].append(waiter)
        self.tokens[waiter.lane] += count
        self.members[waiter.lane] += 1

    def leave(self, waiter: _Waiter, count: float) -> None:
        lane, queue = waiter.lane, self.lanes[waiter.lane]
        self.members[lane] -= 1
        self.tokens[lane] -= count
        if not self.members[lane]:
            # Empty: the total starts afresh (a float sum drifts), the dead go.
            self.tokens[lane] = 0.0
            queue.clear()
        elif len(queue) > 2 * self.members[lane] + 64:
            # Mostly dead entries (waiters behind a long-lived head came and went).
            alive = [w for w in queue if w.queued]
            queue.clear()
            queue.extend(alive)

    @property
    def empty(self) -> bool:
        return not any(self.members)


class PriorityGate:
    """Admits calls when every named bucket allows, realtime first.

    Each bucket keeps its own queue (``_Line``), one FIFO per lane, with running totals
    of what its waiters will spend: an arrival is priced in O(buckets x lanes) and a
    pump looks only at each bucket's first waiter, so a backlog of tens of thousands of
    background waiters (a Batch API upload) costs a realtime arrival, any tenant's, no
    more than an empty queue does.  A waiter goes when it is first in every one of its
    buckets' queues and each has its tokens: the same order as walking every waiter by
    (lane, arrival) and holding back whoever shares a bucket with an earlier one still
    waiting, without the walk.

    ``clock`` must tick in real seconds (the gate sleeps on the event loop between
    checks); it is injectable so the buckets' time base can be shared with other code.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lines: dict[str, _Line] = {}  # buckets someone waits on
        self._waiting = 0
        self._timer: asyncio.TimerHandle | None = None

    def configure(self, key: str, bucket: TokenBucket) -> None:
        """Limit ``key`` by ``bucket`` (replacing any earlier one); keys never configured
        are unlimited."""
        self._buckets[key] = bucket
        if self._waiting:
            self._pump()

    def bucket(self, key: str) -> TokenBucket | None:
        """The bucket configured for ``key``, if any."""
        return self._buckets.get(key)

    @property
    def waiting(self) -> int:
        """How many callers are queued."""
        return self._waiting

    async def acquire(
        self, needs: Mapping[str, float], priority: Priority, deadline: float
    ) -> None:
        """Wait until every bucket named in ``needs`` has its tokens, then spend them
        all at once: a request's RPM and TPM are taken together or not at all, so a
        request refused on tokens never used up a request slot.

        ``deadline`` is on the gate's clock.  Raises ``RateLimited`` at once if the
        estimated wait (this lane's queue and the lanes above it) passes the deadline, or
        when the deadline passes while queued; ``retry_after`` is the estimated wait.
        """
        now = self._clock()
        limited = {k: n for k, n in needs.items() if k in self._buckets}
        if not limited:
            return
        lane = LANES[Priority(priority)]
        wait = self._estimate(limited, lane, now)
        if wait > 0 and now + wait > deadline:
            raise RateLimited(
                f"rate limited: about {wait:.2f}s to wait, past the request's deadline",
                retry_after=wait,
            )
        loop = asyncio.get_running_loop()
        counts = {k: self._buckets[k].bounded(n) for k, n in limited.items()}
        waiter = _Waiter(limited, lane, loop.create_future(), counts)
        if wait == 0.0 and not any(self._lines.get(k) for k in limited):
            self._grant(waiter, now)  # nobody queued on these buckets: no queue, no pump
            return
        for key, count in counts.items():
            self._lines.setdefault(key, _Line()).join(waiter, count)
        self._waiting += 1
        self._pump()
        if waiter.future.done():
            return
        expiry = loop.call_later(max(0.0, deadline - now), self._expire, waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.taken and not waiter.future.cancelled():
                # Granted, then cancelled in the same tick, before this task ran: the
                # tokens were spent for a call that will never go, and nobody else would
                # give them back.
                now = self._clock()
                for key, n in waiter.taken.items():
                    self._buckets[key].give_back(n, now)
                self._pump()
            raise
        finally:
            expiry.cancel()
            if waiter.queued:  # our caller was cancelled: give the place up
                self._leave(waiter)
                self._pump()

    def _estimate(self, needs: Mapping[str, float], lane: int, now: float) -> float:
        # Waiters queued in this lane or a better one spend first; later realtime
        # arrivals may still overtake, which the deadline timer then catches.
        worst = 0.0
        for key, tokens in needs.items():
            bucket = self._buckets[key]
            line = self._lines.get(key)
            ahead = line.ahead(lane) if line is not None else 0.0
            worst = max(worst, bucket.backlog_wait(ahead + min(tokens, bucket.capacity), now))
        return worst

    def settle(self, key: str, estimated: float, used: float) -> None:
        """A call admitted on ``estimated`` tokens of ``key`` used ``used``: what it was
        charged beyond that goes back to the bucket (if it has one), and whoever can go
        now is admitted; what it used beyond its charge is spent from the bucket now, so
        a vendor's TPM holds however long the answers run."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return
        charged, owed = bucket.bounded(estimated), bucket.bounded(used)
        if owed > charged:  # a minute's refill at most, the estimate's share included
            bucket.charge(owed - charged, self._clock())
        elif used < charged:
            bucket.give_back(charged - used, self._clock())
            if self._waiting:
                self._pump()

    def _leave(self, waiter: _Waiter) -> None:
        """Take ``waiter`` out of every queue it is in (granted, expired or gone)."""
        waiter.queued = False
        self._waiting -= 1
        for key, count in waiter.counts.items():
            line = self._lines[key]
            line.leave(waiter, count)
            if line.empty:
                del self._lines[key]

    def _grant(self, waiter: _Waiter, now: float) -> None:
        for key, n in waiter.needs.items():
            bucket = self._buckets[key]
            bucket.take(n, now)
            waiter.taken[key] = bucket.bounded(n)
        waiter.future.set_result(None)

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.future.done() or not waiter.queued:
            return
        self._leave(waiter)
        # The wait it would have as a newcomer to its lane: what a retry would queue
        # behind, and no walk of the queue to find its place in it.
        wait = self._estimate(waiter.needs, waiter.lane, self._clock())
        waiter.future.set_exception(
            RateLimited("rate limited: the deadline passed while queued", retry_after=wait)
        )
        self._pump()

    def _pump(self) -> None:
        """Admit every waiter that can go now, in lane order, and sleep until the next.

        Only each bucket's first waiter is looked at: one behind it on that bucket waits
        its turn, and one first on this bucket but behind another waiter on its other
        bucket is looked at when that bucket's turn comes."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self._clock()
        soonest = math.inf
        pending = list(self._lines)
        while pending:
            line = self._lines.get(pending.pop())
            head = line.head() if line is not None else None
            if head is None:
                continue
            if head.future.done():  # its task was cancelled and has not run yet: gone
                self._leave(head)
                pending.extend(k for k in head.needs if k in self._lines)
                continue
            if any(self._lines[k].head() is not head for k in head.needs):
                continue  # behind another waiter on one of its other buckets
            wait = max(self._buckets[k].wait(n, now) for k, n in head.needs.items())
            if wait == 0.0:
                self._leave(head)
                self._grant(head, now)
                pending.extend(k for k in head.needs if k in self._lines)  # new heads
            else:
                soonest = min(soonest, wait)
        if self._waiting and soonest < math.inf:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(soonest, MIN_TICK_S), self._pump)
