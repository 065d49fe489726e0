"""The metering step: one ledger event per request, priced from the price sheet."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from schemas.config import Candidate
from schemas.envelope import RequestEnvelope, UsageEvent
from schemas.errors import RelayError
from schemas.usage import Usage
from tables.prices import PriceSheet, cost_of

# A call that went out and was cut before it answered (a begin limit, the deadline, a
# stop): the candidate, and what the vendor bills for it (at an estimate).
Billed = tuple[Candidate, Usage]


def added(usages: Iterable[Usage], start: Usage | None = None) -> Usage:
    """``usages`` added up, field by field (onto ``start``): what several calls billed."""
    total = start or Usage()
    for used in usages:
        total = Usage(**{f: getattr(total, f) + getattr(used, f) for f in Usage.model_fields})
    return total


def usage_event(
    env: RequestEnvelope,
    prices: PriceSheet,
    *,
    candidate: Candidate | None,
    usage: Usage,
    error: RelayError | None = None,
    coalesced: bool = False,
    cache_hit: bool = False,
    batched: bool = False,
    batch_api: bool = False,
    discount: float = 0.0,
    degraded: str | None = None,
    cut: Sequence[Billed] = (),
) -> UsageEvent:
    """Price a request.  A request that shared a call (coalesced, cached) costs nothing and
    saves what the call cost; ``direct_cost`` is what calling the primary vendor straight
    would have cost, the denominator of SaveRate.

    ``cut`` are the request's other calls, cut after they went out and before they
    answered (``Outcome.cut``): the vendors bill them all the same, so their tokens and
    cost (at an estimate, at their own candidates' prices) are the line's too, whether
    the request failed or another candidate answered it; ``direct_cost`` stays its
    answer's.  A coalesced or cached line adds none: it paid for no call."""
    calls = [] if coalesced or cache_hit else list(cut)
    call_cost = cost_of(candidate, usage, discount=discount) if candidate else 0.0
    call_cost += sum(cost_of(cand, used) for cand, used in calls)
    free = coalesced or cache_hit
    # A failed request used nothing, or (a stream broken part way) what it was billed.
    try:
        direct = prices.direct_cost(env.alias, usage)
    except KeyError:  # an alias this worker's config lacks (refused): no baseline to price
        direct = 0.0
    return UsageEvent.for_request(
        env,
        vendor=candidate.vendor if candidate else None,
        vendor_model=candidate.model if candidate else None,
        usage=added((used for _, used in calls), usage),
        cost=0.0 if free else call_cost,
        saved_cost=max(0.0, direct - (0.0 if free else call_cost)),
        direct_cost=direct,
        status="error" if error else "ok",
        error_code=error.code if error else None,
        cache_hit=cache_hit,
        coalesced=coalesced,
        batched=batched,
        batch_api=batch_api,
        degraded=degraded,
    )
