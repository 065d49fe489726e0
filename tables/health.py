"""Vendor health and the circuit breaker per (vendor, model), and candidate ranking.

Breaker states::

    closed --(K consecutive failures, or failure rate > X over the window)--> open
    open   --(open_s elapsed; each worker's router has one probe out at a time)--> half_open
    half_open --(probe succeeds)--> closed      half_open --(probe fails)--> open

A late result, from a call sent before the breaker's last transition, moves it in neither
direction: one sent before it opened cannot close it, and a failure of one sent before a
probe closed it (an outage call ending on the vendor's timeout) cannot open it again.

Every function takes ``now`` (epoch seconds) and returns a new ``Health``; nothing here
reads the clock, so the Faust table can replay the same events to the same state.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Literal

from pydantic import BaseModel, Field

from schemas.config import Candidate, Strategy
from schemas.envelope import HealthEvent
from schemas.errors import (
    BadRequest,
    ContentFiltered,
    DeadlineExceeded,
    RateLimited,
    VendorBadRequest,
    VendorRateLimited,
    VendorRequestTooLarge,
    VendorUnsupported,
)

log = logging.getLogger("relay.worker")

BreakerState = Literal["closed", "open", "half_open"]

# A 429 says "slow down", not "broken": it sets retry_after_until but is kept out of the
# failure counts.  Only when the vendor keeps answering 429 (policy.consecutive_failures
# of them in a row) does the breaker open, so routing moves off a throttled vendor.
RATE_LIMIT_CODES = frozenset({VendorRateLimited.code, RateLimited.code})
# The request's own fault, or one this candidate cannot serve: the vendor answered, so
# its health is not in question.
CLIENT_FAULT_CODES = frozenset(
    {
        VendorBadRequest.code,
        BadRequest.code,
        ContentFiltered.code,
        VendorUnsupported.code,
        VendorRequestTooLarge.code,
    }
)
# Outcomes that say nothing of the vendor's health: the client's fault, or a call the
# request's own deadline cut (a client asking sooner than the vendor answers).
NOT_THE_VENDORS = CLIENT_FAULT_CODES | {DeadlineExceeded.code}

# "Blended" price per 1M tokens for the cheapest strategy: the common 3:1 input:output mix.
BLEND_INPUT, BLEND_OUTPUT = 0.75, 0.25


class BreakerPolicy(BaseModel):
    """When the breaker opens, how long it stays open and how EWMAs are smoothed."""

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    min_calls: int = 10
    window_s: float = 60.0
    open_s: float = 10.0
    ewma_alpha: float = 0.2
    buckets: int = 12  # the window is kept as this many time buckets (5 s each by default)

    @property
    def bucket_s(self) -> float:
        return self.window_s / self.buckets


DEFAULT_POLICY = BreakerPolicy()
COST_SCALE_USD = 0.001  # the weighted strategy halves a candidate's share per 0.1 cent a call


class OutcomeBucket(BaseModel):
    """Outcomes of the calls that ended in [start, start + bucket_s)."""

    start: float
    ok: int = 0
    fail: int = 0


class Health(BaseModel):
    """One (vendor, model)'s live record; stored as a JSON dict in the health table."""

    state: BreakerState = "closed"
    consecutive_failures: int = 0
    consecutive_rate_limited: int = 0
    window: list[OutcomeBucket] = Field(default_factory=list)
    latency_ewma_ms: float | None = None
    cost_ewma: float | None = None
    opened_at: float | None = None
    # When a probe last closed the breaker: failures of calls sent before then belong to
    # the outage it ended.  None in records stored before this field (and never closed).
    closed_at: float | None = None
    retry_after_until: float = 0.0
    calls: int = 0
    ok: int = 0
    fail: int = 0
    rate_limited: int = 0
    opened: int = 0  # times the breaker opened (or opened again after a failed probe)
    # The last health-topic offset folded in: what a worker folded but had not committed
    # when it died is read again by the next one, and must not count twice.
    folded_offset: int = -1


def health_key(vendor: str, model: str) -> str:
    """The health-table key of one (vendor, model)."""
    return f"{vendor}/{model}"


def _ewma(old: float | None, value: float, alpha: float) -> float:
    return value if old is None else alpha * value + (1.0 - alpha) * old


def _prune(window: list[OutcomeBucket], policy: BreakerPolicy, now: float) -> None:
    horizon = now - policy.window_s
    window[:] = [b for b in window if b.start + policy.bucket_s > horizon]
    # Bounded even if the clock jumps: never more buckets than the window holds.
    del window[: max(0, len(window) - (policy.buckets + 1))]


def _bucket(window: list[OutcomeBucket], policy: BreakerPolicy, now: float) -> OutcomeBucket:
    start = math.floor(now / policy.bucket_s) * policy.bucket_s
    if window and window[-1].start >= start:  # same bucket, or the clock stepped back
        return window[-1]
    window.append(OutcomeBucket(start=start))
    return window[-1]


def _counts(h: Health, policy: BreakerPolicy, now: float) -> tuple[int, int]:
    horizon = now - policy.window_s
    live = [b for b in h.window if b.start + policy.bucket_s > horizon]
    return sum(b.ok for b in live), sum(b.fail for b in live)


def _open(h: Health, now: float) -> None:
    h.state = "open"
    h.opened_at = now
    h.opened += 1


def fold(
    h: Health, events: list[HealthEvent], offset: int, policy: BreakerPolicy, now: float
) -> Health | None:
    """``h`` with a batch of outcomes (read at ``offset`` of the one-partition health
    topic) folded in, each at the time it was observed; None when that offset was folded
    already (the topic read again after a crash)."""
    if offset <= h.folded_offset:
        return None
    for ev in events:
        try:
            h = record(h, ev, policy, min(now, ev.ts_ms / 1000))
        except Exception:  # one bad outcome must not stop every breaker
            log.exception("health outcome for %s/%s not folded", ev.vendor, ev.model)
    return h.model_copy(update={"folded_offset": offset})


def record(h: Health, ev: HealthEvent, policy: BreakerPolicy, now: float) -> Health:
    """Fold one call's outcome into ``h`` and apply the breaker transitions.

    Late results from calls sent before the breaker's open period ended do not move an
    open breaker either way; only probes decide when it closes.  Failures (and 429s) of
    calls sent before a probe closed it count in the totals only, not towards opening it.
    (Half-open lasts the one outcome: which worker may send a probe when is the router's
    rule, ``Router.may_call``, each worker holding one out at a time.)
    """
    h = h.model_copy(deep=True)
    h.calls += 1
    started = now - ev.latency_ms / 1000  # when the call went out
    # A latency figure no success in the window backs (the candidate unused a while):
    # its next success measures it afresh rather than moving an old figure a fifth of
    # the way, so a vendor that became fast is ranked so after one call.
    measured_afresh = stale_latency(h, now, policy)
    client_fault = not ev.ok and ev.error_code in NOT_THE_VENDORS
    if (
        h.state == "open"
        and h.opened_at is not None
        and started >= h.opened_at + policy.open_s
        and not client_fault  # says nothing of the vendor's health: the breaker stays
    ):
        # A call sent after the open period is a probe, whichever worker sent it: its
        # outcome decides, as if the breaker had been marked half-open when it went.  One
        # sent before (or while it was open) is not: its late outcome moves nothing.
        h.state = "half_open"
    if ev.retry_after is not None:  # any answer may carry Retry-After, e.g. a 503
        h.retry_after_until = max(h.retry_after_until, now + ev.retry_after)
    _prune(h.window, policy, now)

    if ev.ok:
        h.ok += 1
        h.consecutive_failures = 0
        h.consecutive_rate_limited = 0
        # Only successes feed the EWMAs: a fast error would make a broken vendor
        # look like the quickest one to the latency strategy.
        old = None if measured_afresh else h.latency_ewma_ms
        h.latency_ewma_ms = _ewma(old, ev.latency_ms, policy.ewma_alpha)
        h.cost_ewma = _ewma(h.cost_ewma, ev.cost, policy.ewma_alpha)
        if h.state == "half_open":
            # A fresh start: the failures that opened the breaker must not re-open it.
            h.state, h.opened_at = "closed", None
            h.closed_at = now
            h.consecutive_failures = 0
            h.window = []
        _bucket(h.window, policy, now).ok += 1
        return h

    if client_fault:
        return h

    # Sent before the probe closed the breaker: the outage's news, already acted on.
    stale = h.state == "closed" and h.closed_at is not None and started < h.closed_at
    if ev.error_code in RATE_LIMIT_CODES:
        h.rate_limited += 1
        if stale:
            return h
        h.consecutive_rate_limited += 1
        if ev.retry_after is None:
            # No Retry-After: back off 1, 2, 4 ... seconds, never longer than open_s.
            # (The exponent is capped: a vendor out of quota answers 429 for days.)
            backoff = min(policy.open_s, 2.0 ** min(h.consecutive_rate_limited - 1, 30))
            h.retry_after_until = max(h.retry_after_until, now + backoff)
        if h.state == "half_open" or (
            h.state == "closed" and h.consecutive_rate_limited >= policy.consecutive_failures
        ):
            _open(h, now)
        return h

    h.fail += 1
    if stale:
        return h
    h.consecutive_failures += 1
    _bucket(h.window, policy, now).fail += 1
    if h.state == "half_open":
        _open(h, now)
    elif h.state == "closed":
        ok, fail = _counts(h, policy, now)
        tripped_rate = ok + fail >= policy.min_calls and fail / (ok + fail) > policy.failure_rate
        if h.consecutive_failures >= policy.consecutive_failures or tripped_rate:
            _open(h, now)
    return h


def available_at(h: Health, policy: BreakerPolicy = DEFAULT_POLICY) -> float:
    """The earliest time a call may be sent (closed and not throttled: 0.0)."""
    at = h.retry_after_until
    if h.state == "open" and h.opened_at is not None:
        at = max(at, h.opened_at + policy.open_s)
    return at


def available(h: Health, policy: BreakerPolicy, now: float) -> bool:
    """Whether a call may go now: closed, or open with its open period over (a probe is
    due); never before a 429's Retry-After has passed."""
    return now >= available_at(h, policy)


def success_rate(h: Health, now: float, policy: BreakerPolicy = DEFAULT_POLICY) -> float:
    """Share of successes over the window, with one phantom success as a prior so an
    untried candidate scores 1.0 and a single failure does not zero it."""
    ok, fail = _counts(h, policy, now)
    return (ok + 1) / (ok + fail + 1)


def recent_latency(h: Health, now: float, policy: BreakerPolicy = DEFAULT_POLICY) -> float:
    """The latency EWMA; 0.0 for a candidate never measured, so it is tried first and
    measured.  A figure the health window no longer backs (``stale_latency``) still
    counts: read as untried, it sent every request, on every worker, to a candidate known
    slow until its first answer came back.  The router sends a stale candidate one call
    per worker and window instead, to measure it again (``Router._explore``)."""
    return h.latency_ewma_ms or 0.0


def stale_latency(h: Health, now: float, policy: BreakerPolicy = DEFAULT_POLICY) -> bool:
    """Whether ``h`` has a latency figure but no success in the health window to back
    it: measured long ago, unused since (ranked last), and due to be measured again."""
    if not h.latency_ewma_ms:
        return False
    horizon = now - policy.window_s
    return not any(b.ok for b in h.window if b.start + policy.bucket_s > horizon)


def expected_latency(h: Health, now: float, policy: BreakerPolicy = DEFAULT_POLICY) -> float:
    """The latency EWMA over the success rate: what a call to this candidate costs in
    time once its failures (each a wasted attempt before a fallback) are counted.  A fast
    vendor failing 40 % of calls ranks behind one a little slower that answers."""
    return recent_latency(h, now, policy) / success_rate(h, now, policy)


def blended_price(c: Candidate) -> float:
    """USD per 1M tokens at a 3:1 input:output mix, to compare candidates on one number."""
    return BLEND_INPUT * c.input_per_1m + BLEND_OUTPUT * c.output_per_1m


def score(
    h: Health,
    candidate: Candidate,
    strategy: Strategy,
    now: float,
    policy: BreakerPolicy = DEFAULT_POLICY,
) -> float:
    """The strategy's primary score; higher is tried first.

    cheapest: minus the blended price.  quality: the configured quality.  latency: minus
    the expected latency, the EWMA over the success rate (unknown counts as 0 so new
    candidates get tried).  weighted: the
    effective weight, weight x success rate / (1 + latency_s) / (1 + cost_per_call / $0.001),
    drawn from proportionally: a candidate loses half its share for every second of
    latency and for every tenth of a cent a call costs, over the health window.
    """
    latency = recent_latency(h, now, policy)
    if strategy == "cheapest":
        return -blended_price(candidate)
    if strategy == "quality":
        return float(candidate.quality)
    if strategy == "latency":
        return -expected_latency(h, now, policy)
    cost = h.cost_ewma or 0.0
    return (
        candidate.weight
        * success_rate(h, now, policy)
        / (1.0 + latency / 1000.0)
        / (1.0 + cost / COST_SCALE_USD)
    )


def _weighted_order(
    cands: list[Candidate], weights: list[float], rng: random.Random
) -> list[Candidate]:
    # Draw without replacement, each pick proportional to the remaining weights.
    pool = list(zip(cands, weights, strict=True))
    out: list[Candidate] = []
    while pool:
        total = sum(max(w, 0.0) for _, w in pool)
        if total <= 0:  # all weights zero: keep config order
            out.extend(c for c, _ in pool)
            break
        x = rng.random() * total
        for i, (c, w) in enumerate(pool):
            x -= max(w, 0.0)
            if x < 0 or i == len(pool) - 1:
                out.append(c)
                del pool[i]
                break
    return out


def rank(
    candidates: list[Candidate],
    healths: dict[str, Health],
    strategy: Strategy,
    now: float,
    rng: random.Random,
    policy: BreakerPolicy = DEFAULT_POLICY,
) -> list[Candidate]:
    """Candidates in the order to try: only available ones, ordered by ``strategy``.

    If none is available, the one that becomes available soonest is returned alone as a
    last resort, so a request is never refused just because every breaker is open.
    Ties keep config order (the sort is stable).
    """

    def health(c: Candidate) -> Health:
        return healths.get(health_key(c.vendor, c.model)) or Health()

    live = [c for c in candidates if available(health(c), policy, now)]
    if not live:
        if not candidates:
            return []
        return [min(candidates, key=lambda c: available_at(health(c), policy))]

    def latency(c: Candidate) -> float:
        return recent_latency(health(c), now, policy)

    if strategy == "weighted":
        weights = [score(health(c), c, strategy, now, policy) for c in live]
        return _weighted_order(live, weights, rng)
    if strategy == "cheapest":
        return sorted(live, key=lambda c: (blended_price(c), latency(c)))
    if strategy == "quality":
        return sorted(live, key=lambda c: (-c.quality, blended_price(c), latency(c)))
    return sorted(live, key=lambda c: (expected_latency(health(c), now, policy), blended_price(c)))
