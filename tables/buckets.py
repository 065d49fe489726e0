"""Token buckets for RPM/TPM limits, and the priority gate that makes callers wait on them.

A lane is a ``Priority``: realtime waiters are served before batch before background,
first-come first-served within a lane.  Waiters only queue behind earlier ones that share
a bucket, so a throttled vendor never holds up calls to another.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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
    seq: int
    future: asyncio.Future[None]

    @property
    def order(self) -> tuple[int, int]:
        return (self.lane, self.seq)


class PriorityGate:
    """Admits calls when every named bucket allows, realtime first.

    ``clock`` must tick in real seconds (the gate sleeps on the event loop between
    checks); it is injectable so the buckets' time base can be shared with other code.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._waiters: list[_Waiter] = []  # sorted by (lane, arrival)
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def configure(self, key: str, bucket: TokenBucket) -> None:
        """Limit ``key`` by ``bucket`` (replacing any earlier one); keys never configured
        are unlimited."""
        self._buckets[key] = bucket
        if self._waiters:
            self._pump()

    def bucket(self, key: str) -> TokenBucket | None:
        """The bucket configured for ``key``, if any."""
        return self._buckets.get(key)

    @property
    def waiting(self) -> int:
        """How many callers are queued."""
        return len(self._waiters)

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
        lane, seq = LANES[Priority(priority)], next(self._seq)
        wait = self._estimate(limited, (lane, seq), now)
        if wait > 0 and now + wait > deadline:
            raise RateLimited(
                f"rate limited: about {wait:.2f}s to wait, past the request's deadline",
                retry_after=wait,
            )
        loop = asyncio.get_running_loop()
        waiter = _Waiter(limited, lane, seq, loop.create_future())
        bisect.insort(self._waiters, waiter, key=lambda w: w.order)
        self._pump()
        if waiter.future.done():
            return
        expiry = loop.call_later(max(0.0, deadline - now), self._expire, waiter)
        try:
            await waiter.future
        finally:
            expiry.cancel()
            if waiter in self._waiters:  # our caller was cancelled: give the place up
                self._waiters.remove(waiter)
                self._pump()

    def _estimate(self, needs: dict[str, float], order: tuple[int, int], now: float) -> float:
        # Waiters ahead in this lane or a better one spend first; later realtime arrivals
        # may still overtake, which the deadline timer then catches.
        worst = 0.0
        for key, tokens in needs.items():
            bucket = self._buckets[key]
            ahead = sum(
                bucket.bounded(w.needs.get(key, 0.0)) for w in self._waiters if w.order < order
            )
            need = ahead + min(tokens, bucket.capacity)
            worst = max(worst, bucket.backlog_wait(need, now))
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
            if self._waiters:
                self._pump()

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.future.done() or waiter not in self._waiters:
            return
        self._waiters.remove(waiter)
        now = self._clock()
        wait = self._estimate(waiter.needs, waiter.order, now)
        waiter.future.set_exception(
            RateLimited("rate limited: the deadline passed while queued", retry_after=wait)
        )
        self._pump()

    def _pump(self) -> None:
        """Admit every waiter that can go now, in lane order, and sleep until the next."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self._clock()
        claimed: set[str] = set()  # buckets an earlier, still-waiting waiter is first on
        soonest = math.inf
        for waiter in list(self._waiters):
            if waiter.future.done():  # cancelled; its task removes it
                continue
            if claimed.intersection(waiter.needs):
                claimed.update(waiter.needs)
                continue
            wait = max(self._buckets[k].wait(n, now) for k, n in waiter.needs.items())
            if wait == 0.0:
                for key, n in waiter.needs.items():
                    self._buckets[key].take(n, now)
                self._waiters.remove(waiter)
                waiter.future.set_result(None)
            else:
                claimed.update(waiter.needs)
                soonest = min(soonest, wait)
        if self._waiters and soonest < math.inf:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(soonest, MIN_TICK_S), self._pump)
