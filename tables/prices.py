"""The price sheet: what one call cost in USD, and what it would have cost sent straight."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.config import Candidate, ModelAlias
from schemas.usage import Usage

# When the config gives no cached-input price, cache reads cost half the input price.
# That is OpenAI's long-standing discount for prompt-cache hits; vendors that charge
# less (Anthropic's 10%) publish the number, so the missing-price case is the
# OpenAI-like one, and erring high keeps the relay from under-reporting spend.
CACHE_READ_DEFAULT_RATIO = 0.5
# Writing a prompt-cache entry costs 1.25x the input price (Anthropic's 5-minute cache),
# 2x for its one-hour cache; vendors with implicit caching never report cache writes, so
# this never misprices them.
CACHE_WRITE_RATIO = 1.25
CACHE_WRITE_1H_RATIO = 2.0

PER_TOKEN = 1e-6  # prices are quoted per million tokens


def cost_of(candidate: Candidate, usage: Usage, *, discount: float = 0.0) -> float:
    """USD for ``usage`` at ``candidate``'s prices; ``discount`` (0.5 for batch APIs)
    takes that fraction off the total."""
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount must be within [0, 1], got {discount}")
    input_price = candidate.input_per_1m
    read_price = candidate.cached_input_per_1m
    if read_price is None:
        read_price = input_price * CACHE_READ_DEFAULT_RATIO
    # input_tokens includes the cached part; a vendor that double-reports must not make
    # the uncached part negative.
    uncached = max(0, usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens)
    total = (
        uncached * input_price
        + usage.cache_read_tokens * read_price
        + (usage.cache_write_tokens - usage.cache_write_1h_tokens) * input_price * CACHE_WRITE_RATIO
        + usage.cache_write_1h_tokens * input_price * CACHE_WRITE_1H_RATIO
        + usage.output_tokens * candidate.output_per_1m
    ) * PER_TOKEN
    return total * (1.0 - discount)


@dataclass
class PriceSheet:
    """Prices by (vendor, model), and each alias's primary candidate and every candidate
    it may route to (canary included), from the config."""

    by_vendor_model: dict[tuple[str, str], Candidate] = field(default_factory=dict)
    primary: dict[str, Candidate] = field(default_factory=dict)
    routes: dict[str, list[Candidate]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, models: dict[str, ModelAlias]) -> PriceSheet:
        """Index every candidate (canaries too); when two aliases price the same (vendor,
        model), the first one in config order wins, so the sheet does not depend on dict
        churn."""
        sheet = cls()
        for alias, spec in models.items():
            sheet.primary[alias] = spec.candidates[0]
            sheet.routes[alias] = spec.all_candidates()
            for cand in sheet.routes[alias]:
                sheet.by_vendor_model.setdefault((cand.vendor, cand.model), cand)
        return sheet

    def candidate(self, vendor: str, model: str) -> Candidate | None:
        """The priced candidate for ``vendor``/``model``, or None if no alias names it."""
        return self.by_vendor_model.get((vendor, model))

    def cost(self, vendor: str, model: str, usage: Usage, *, discount: float = 0.0) -> float:
        """``cost_of`` by name; an unpriced (vendor, model) costs 0.0 rather than failing
        the meter, since the config is what says a call is billable."""
        cand = self.candidate(vendor, model)
        return 0.0 if cand is None else cost_of(cand, usage, discount=discount)

    def direct_cost(self, alias: str, usage: Usage) -> float:
        """What the client would have paid calling the alias's primary (first) candidate
        directly, at full price: the baseline the SaveRate is measured against."""
        try:
            cand = self.primary[alias]
        except KeyError:
            raise KeyError(f"no model alias {alias!r} in the price sheet") from None
        return cost_of(cand, usage)

    def dearest_cost(self, alias: str, usage: Usage) -> float:
        """What ``usage`` would cost at the dearest of the alias's candidates, canary
        included: the most a request may cost whichever one serves it (a fallback behind
        an unpriced local primary, the canary, a quality or latency pick).  A degraded
        route is not counted: its candidates are no dearer than the alias's cheapest, at
        the blended 3:1 price the router compares them by."""
        try:
            cands = self.routes[alias]
        except KeyError:
            raise KeyError(f"no model alias {alias!r} in the price sheet") from None
        return max(cost_of(cand, usage) for cand in cands)
