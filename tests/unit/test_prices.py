"""cost_of and the price sheet: every token class priced, discounts, the direct baseline."""

from __future__ import annotations

import pytest

from schemas.config import Candidate, ModelAlias
from schemas.usage import Usage
from tables.prices import PriceSheet, cost_of

GPT = Candidate(vendor="openai", model="gpt-4o-mini", input_per_1m=0.15, output_per_1m=0.60)
CLAUDE = Candidate(
    vendor="anthropic",
    model="claude-haiku",
    input_per_1m=1.0,
    output_per_1m=5.0,
    cached_input_per_1m=0.1,
)


def test_plain_input_and_output() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=500_000)
    assert cost_of(GPT, usage) == pytest.approx(0.15 + 0.30)


def test_cache_reads_use_the_configured_price() -> None:
    usage = Usage(input_tokens=1_000_000, cache_read_tokens=600_000)
    # 400k uncached at $1, 600k read at $0.10
    assert cost_of(CLAUDE, usage) == pytest.approx(0.4 + 0.06)


def test_cache_reads_default_to_half_the_input_price() -> None:
    usage = Usage(input_tokens=1_000_000, cache_read_tokens=1_000_000)
    assert cost_of(GPT, usage) == pytest.approx(0.075)


def test_cache_writes_cost_a_quarter_more_than_input() -> None:
    usage = Usage(input_tokens=1_000_000, cache_write_tokens=1_000_000)
    assert cost_of(CLAUDE, usage) == pytest.approx(1.25)


def test_mixed_usage_sums_every_part() -> None:
    usage = Usage(
        input_tokens=10_000, cache_read_tokens=4_000, cache_write_tokens=2_000, output_tokens=1_000
    )
    expected = (4_000 * 1.0 + 4_000 * 0.1 + 2_000 * 1.25 + 1_000 * 5.0) / 1e6
    assert cost_of(CLAUDE, usage) == pytest.approx(expected)


def test_over_reported_cache_never_makes_input_negative() -> None:
    usage = Usage(input_tokens=100, cache_read_tokens=300)
    assert cost_of(CLAUDE, usage) == pytest.approx(300 * 0.1 / 1e6)


def test_discount_multiplies_the_total() -> None:
    usage = Usage(input_tokens=2_000_000, output_tokens=1_000_000)
    full = cost_of(GPT, usage)
    assert cost_of(GPT, usage, discount=0.5) == pytest.approx(full / 2)
    assert cost_of(GPT, usage, discount=1.0) == 0.0


def test_discount_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="discount"):
        cost_of(GPT, Usage(input_tokens=1), discount=1.5)


def _sheet() -> PriceSheet:
    cheap_copy = GPT.model_copy(update={"input_per_1m": 0.01})
    return PriceSheet.from_config(
        {
            "smart": ModelAlias(candidates=[CLAUDE, GPT]),
            "fast": ModelAlias(candidates=[GPT, CLAUDE]),
            "again": ModelAlias(candidates=[cheap_copy]),
        }
    )


def test_sheet_finds_candidates_by_vendor_and_model() -> None:
    sheet = _sheet()
    assert sheet.candidate("anthropic", "claude-haiku") == CLAUDE
    assert sheet.candidate("openai", "nope") is None
    # The first alias that names a (vendor, model) sets its price.
    assert sheet.candidate("openai", "gpt-4o-mini") == GPT


def test_sheet_cost_by_name_and_unknown_costs_nothing() -> None:
    sheet = _sheet()
    usage = Usage(input_tokens=1_000_000)
    assert sheet.cost("openai", "gpt-4o-mini", usage) == pytest.approx(0.15)
    assert sheet.cost("openai", "gpt-4o-mini", usage, discount=0.5) == pytest.approx(0.075)
    assert sheet.cost("ghost", "model", usage) == 0.0


def test_direct_cost_is_the_first_candidate_at_full_price() -> None:
    sheet = _sheet()
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert sheet.direct_cost("smart", usage) == pytest.approx(1.0 + 5.0)
    assert sheet.direct_cost("fast", usage) == pytest.approx(0.15 + 0.60)
    with pytest.raises(KeyError, match="unknown-alias"):
        sheet.direct_cost("unknown-alias", usage)


def test_the_dearest_cost_is_at_the_dearest_candidate_canary_included() -> None:
    """What a request may cost whichever candidate serves it: an unpriced local primary
    sets no ceiling, a priced fallback and a dearer canary do."""
    from schemas.config import Canary

    local = Candidate(vendor="ollama", model="llama")
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    sheet = _sheet()
    assert sheet.dearest_cost("fast", usage) == pytest.approx(1.0 + 5.0)  # CLAUDE, second
    canary = Canary(candidate=CLAUDE.model_copy(update={"output_per_1m": 20.0}), percent=5)
    sheet = PriceSheet.from_config(
        {
            "local-first": ModelAlias(candidates=[local, GPT]),
            "canaried": ModelAlias(candidates=[local, GPT], canary=canary),
            "local": ModelAlias(candidates=[local]),
        }
    )
    assert sheet.direct_cost("local-first", usage) == 0.0  # the SaveRate baseline
    assert sheet.dearest_cost("local-first", usage) == pytest.approx(0.15 + 0.60)
    assert sheet.dearest_cost("canaried", usage) == pytest.approx(1.0 + 20.0)
    assert sheet.dearest_cost("local", usage) == 0.0
    with pytest.raises(KeyError, match="unknown-alias"):
        sheet.dearest_cost("unknown-alias", usage)


def test_a_canary_candidate_is_priced_too() -> None:
    from schemas.config import Canary, ModelAlias

    new = Candidate(vendor="a", model="new", input_per_1m=3.0)
    spec = ModelAlias(
        candidates=[Candidate(vendor="a", model="old", input_per_1m=1.0)],
        canary=Canary(candidate=new, percent=5),
    )
    sheet = PriceSheet.from_config({"m": spec})
    assert sheet.candidate("a", "new") == new
    assert sheet.primary["m"].model == "old"


def test_one_hour_cache_writes_cost_twice_the_input_price() -> None:
    cand = Candidate(vendor="anthropic", model="claude", input_per_1m=3.0)
    usage = Usage(input_tokens=3000, cache_write_tokens=3000, cache_write_1h_tokens=1000)
    assert cost_of(cand, usage) == pytest.approx((2000 * 3.0 * 1.25 + 1000 * 3.0 * 2.0) / 1e6)
