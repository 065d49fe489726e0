"""The router's plans: a canary in front while it is available, the stable candidates
behind it (and alone when the canary's breaker is open), a 503 only when none is left."""

from __future__ import annotations

import random
from typing import Any

import pytest

from agents.route import Router
from schemas.config import RelayConfig
from schemas.errors import NoHealthyVendor
from tables.health import Health

CONFIG = RelayConfig.model_validate(
    {
        "vendors": {
            "a": {"kind": "openai", "base_url": "http://a/v1"},
            "b": {"kind": "openai", "base_url": "http://b/v1"},
        },
        "models": {
            "m": {
                "candidates": [{"vendor": "a", "model": "stable", "input_per_1m": 1}],
                "canary": {
                    "candidate": {"vendor": "b", "model": "next", "input_per_1m": 1},
                    "percent": 100,
                },
            }
        },
        "tenants": {"t": {}},
    }
)
NOW = 1_000_000.0


def plan(table: dict[str, Any]) -> list[tuple[str, str]]:
    router = Router(CONFIG, table.get, random.Random(0))
    return [(c.vendor, c.model) for c in router.plan("m", NOW, user="u1")]


def broken() -> dict[str, Any]:
    return Health(state="open", opened_at=NOW, consecutive_failures=5).model_dump()


def test_the_canary_goes_first_while_it_is_available():
    assert plan({}) == [("b", "next"), ("a", "stable")]


def test_an_open_canary_breaker_sends_its_share_to_the_stable_candidates():
    assert plan({"b/next": broken()}) == [("a", "stable")]


def test_an_open_stable_breaker_leaves_the_canary_serving():
    assert plan({"a/stable": broken()}) == [("b", "next")]


def test_with_every_breaker_open_the_request_is_a_503_with_retry_after():
    with pytest.raises(NoHealthyVendor) as refused:
        plan({"a/stable": broken(), "b/next": broken()})
    assert refused.value.retry_after is not None and refused.value.retry_after >= 1


def test_a_degraded_request_falls_back_on_its_own_alias_when_the_cheaper_one_is_down():
    """A tenant at 80 % of its budget is sent cheaper, not turned away: with degrade_to's
    candidates down, the alias's own serve it, cheapest first."""
    config = RelayConfig.model_validate(
        {
            "vendors": {"a": {"kind": "openai", "base_url": "http://a/v1"}},
            "models": {
                "chat": {
                    "degrade_to": "small",
                    "candidates": [
                        {"vendor": "a", "model": "big", "input_per_1m": 5},
                        {"vendor": "a", "model": "mid", "input_per_1m": 1},
                    ],
                },
                "small": {"candidates": [{"vendor": "a", "model": "tiny", "input_per_1m": 0.1}]},
            },
            "tenants": {"t": {}},
        }
    )
    table = {"a/tiny": broken()}
    router = Router(config, table.get, random.Random(0))
    assert [c.model for c in router.plan("chat", NOW, degraded=True)] == ["mid", "big"]
    assert [c.model for c in Router(config, {}.get).plan("chat", NOW, degraded=True)] == [
        "tiny",
        "mid",
        "big",
    ]


def test_a_degraded_request_tries_degrade_to_before_an_unpriced_candidate_of_its_own():
    """Unpriced counts as free when ranking by price: ranked together, the alias's own
    local model would always come first and degrade_to would never be reached."""
    config = RelayConfig.model_validate(
        {
            "vendors": {"a": {"kind": "openai", "base_url": "http://a/v1"}},
            "models": {
                "chat": {
                    "degrade_to": "small",
                    "candidates": [
                        {"vendor": "a", "model": "big", "input_per_1m": 5},
                        {"vendor": "a", "model": "local"},
                    ],
                },
                "small": {"candidates": [{"vendor": "a", "model": "tiny", "input_per_1m": 0.1}]},
            },
            "tenants": {"t": {}},
        }
    )
    planned = Router(config, {}.get).plan("chat", NOW, degraded=True)
    assert [c.model for c in planned] == ["tiny", "local", "big"]


def test_may_call_reads_the_breaker_again_after_the_plan() -> None:
    """A plan may be seconds old by the call (a wait at the gate, a second round): a
    breaker that opened since says no; one past its open period lets this worker's one
    probe through, and no second until it is told."""
    import time

    table: dict[str, Any] = {}
    router = Router(CONFIG, table.get, random.Random(0))
    stable = CONFIG.models["m"].candidates[0]
    assert router.may_call(stable)
    table["a/stable"] = Health(
        state="open", opened_at=time.time(), consecutive_failures=5
    ).model_dump()
    assert not router.may_call(stable)
    table["a/stable"] = Health(state="open", opened_at=time.time() - 60).model_dump()
    assert router.may_call(stable, spend=False) and router.may_call(stable, spend=False)
    assert router.may_call(stable)  # the probe
    assert not router.may_call(stable) and not router.may_call(stable, spend=False)
    table["a/stable"] = Health(retry_after_until=time.time() + 30).model_dump()
    assert not router.may_call(stable), "a Retry-After that came since the plan holds"


def test_a_degraded_plan_is_never_dearer_than_the_alias_s_own_route():
    """degrade_to's own fallback (a dear quality pick) is left out of the degraded plan
    when it costs more than the alias's cheapest available candidate: with the cheap
    model down, a tenant past degrade_at is served by the alias itself, not a model six
    times its price."""
    config = RelayConfig.model_validate(
        {
            "vendors": {
                "o": {"kind": "openai", "base_url": "http://o/v1"},
                "an": {"kind": "anthropic", "base_url": "http://an/v1"},
            },
            "models": {
                "gpt-4o": {
                    "degrade_to": "cheap",
                    "candidates": [
                        {"vendor": "o", "model": "gpt-4o", "input_per_1m": 2.5, "output_per_1m": 10}
                    ],
                },
                "cheap": {
                    "strategy": "quality",
                    "candidates": [
                        {
                            "vendor": "o",
                            "model": "mini",
                            "input_per_1m": 0.15,
                            "output_per_1m": 0.6,
                            "quality": 1,
                        },
                        {
                            "vendor": "an",
                            "model": "opus",
                            "input_per_1m": 15,
                            "output_per_1m": 75,
                            "quality": 3,
                        },
                    ],
                },
            },
            "tenants": {"t": {}},
        }
    )
    healthy = Router(config, {}.get, random.Random(0))
    assert [c.model for c in healthy.plan("gpt-4o", NOW, degraded=True)] == ["mini", "gpt-4o"]
    down = Router(config, {"o/mini": broken()}.get, random.Random(0))
    assert [c.model for c in down.plan("gpt-4o", NOW, degraded=True)] == ["gpt-4o"]


def test_a_stale_latency_is_measured_by_one_call_per_window_per_worker() -> None:
    """The slow candidate of a latency alias has had no call for a window (the fast one
    answers them all): one plan on this worker puts it first to measure it again; the
    others keep the fast one first until the next window."""
    from tables.health import OutcomeBucket

    config = RelayConfig.model_validate(
        {
            "vendors": {"a": {"kind": "openai", "base_url": "http://a/v1"}},
            "models": {
                "fast-first": {
                    "strategy": "latency",
                    "candidates": [
                        {"vendor": "a", "model": "fast", "input_per_1m": 1},
                        {"vendor": "a", "model": "slow", "input_per_1m": 1},
                    ],
                }
            },
            "tenants": {"t": {}},
        }
    )
    fresh = [OutcomeBucket(start=NOW, ok=5)]
    old = [OutcomeBucket(start=NOW - 3600, ok=5)]
    table = {
        "a/fast": Health(latency_ewma_ms=200, window=fresh).model_dump(),
        "a/slow": Health(latency_ewma_ms=5000, window=old).model_dump(),
    }
    router = Router(config, table.get, random.Random(0))
    firsts = [router.plan("fast-first", NOW + i * 0.1)[0].model for i in range(100)]
    assert firsts.count("slow") == 1 and firsts[0] == "slow"
    assert router.plan("fast-first", NOW + 61)[0].model == "slow"  # the next window
    # A request with little time left is never the one that measures: it would lose its
    # answer to the slow candidate's share of its deadline.
    assert router.plan("fast-first", NOW + 122, room_s=30)[0].model == "fast"
    assert router.plan("fast-first", NOW + 122.1, room_s=120)[0].model == "slow"


def test_a_stale_latency_is_not_measured_by_a_canary_user_s_short_request() -> None:
    """A canary user's request with little time left keeps the stable candidates in
    their order behind the canary: if the canary fails, its deadline is not spent on the
    slow candidate."""
    from tables.health import OutcomeBucket

    config = RelayConfig.model_validate(
        {
            "vendors": {"a": {"kind": "openai", "base_url": "http://a/v1"}},
            "models": {
                "m": {
                    "strategy": "latency",
                    "candidates": [
                        {"vendor": "a", "model": "fast", "input_per_1m": 1},
                        {"vendor": "a", "model": "slow", "input_per_1m": 1},
                    ],
                    "canary": {"candidate": {"vendor": "a", "model": "next"}, "percent": 100},
                }
            },
            "tenants": {"t": {}},
        }
    )
    table = {
        "a/fast": Health(latency_ewma_ms=200, window=[OutcomeBucket(start=NOW, ok=5)]).model_dump(),
        "a/slow": Health(latency_ewma_ms=20_000).model_dump(),  # no success in the window
    }
    router = Router(config, table.get, random.Random(0))
    short = router.plan("m", NOW, user="u", room_s=5)
    assert [c.model for c in short] == ["next", "fast", "slow"]
    roomy = router.plan("m", NOW + 0.1, user="u", room_s=120)
    assert [c.model for c in roomy] == ["next", "slow", "fast"], "one with time to spare measures"


def one_in_twenty() -> tuple[RelayConfig, str]:
    """CONFIG with its canary at 5 %, and a user the canary does not take."""
    raw = CONFIG.model_dump()
    raw["models"]["m"]["canary"]["percent"] = 5
    config = RelayConfig.model_validate(raw)
    router = Router(config, {}.get)
    user = next(
        u
        for u in (f"user{n}" for n in range(100))
        if not router.in_canary("m", config.models["m"], u)
    )
    return config, user


def test_the_canary_is_the_last_resort_of_the_users_it_does_not_take() -> None:
    """A stable user is sent the stable candidates first, and the canary behind them: with
    every stable breaker open it is served by the canary rather than refused."""
    config, user = one_in_twenty()

    def plan_for(table: dict[str, Any]) -> list[str]:
        return [c.model for c in Router(config, table.get).plan("m", NOW, user=user)]

    assert plan_for({}) == ["stable", "next"]
    assert plan_for({"a/stable": broken()}) == ["next"]
    assert plan_for({"b/next": broken()}) == ["stable"]
    with pytest.raises(NoHealthyVendor):
        plan_for({"a/stable": broken(), "b/next": broken()})
    # A canary at 0 % is switched off: it takes nobody, not even as a last resort.
    raw = config.model_dump()
    raw["models"]["m"]["canary"]["percent"] = 0
    off = RelayConfig.model_validate(raw)
    with pytest.raises(NoHealthyVendor):
        Router(off, {"a/stable": broken()}.get).plan("m", NOW, user=user)


async def test_a_worker_sends_no_second_probe_while_its_first_is_out() -> None:
    """A hanging vendor keeps the probe's request waiting (up to 3/4 of its deadline):
    this worker sends no second probe however many open periods pass, until that request
    ends or the breaker moves (the probe's outcome, or another worker's, is folded in)."""
    import asyncio
    from unittest import mock

    import agents.route as route

    table = {"a/stable": Health(state="open", opened_at=NOW, consecutive_failures=5).model_dump()}
    config, user = one_in_twenty()
    router = Router(config, table.get)
    stable = config.models["m"].candidates[0]
    clock = [NOW + 10]  # the open period (10 s) is over: a probe may go
    sent, answered = asyncio.Event(), asyncio.Event()

    async def probe() -> None:
        assert router.may_call(stable)
        sent.set()
        await answered.wait()  # the vendor hangs

    with mock.patch.object(route.time, "time", lambda: clock[0]):
        prober = asyncio.create_task(probe())
        await sent.wait()
        for later in (NOW + 10.5, NOW + 21, NOW + 95):
            clock[0] = later
            assert not router.may_call(stable, spend=False) and not router.may_call(stable)
            assert [c.model for c in router.plan("m", later, user=user)] == ["next"]
        answered.set()
        await prober  # its request ended; its outcome (a 400, say) moved nothing
        assert router.may_call(stable, spend=False), "the next request may probe"

        # Out again, with a request that hangs; another worker's probe fails meanwhile:
        # a new open period, whose probe this worker may send when it is over.
        clock[0] = NOW + 100
        answered.clear()
        sent.clear()
        prober = asyncio.create_task(probe())
        await sent.wait()
        table["a/stable"] = Health(state="open", opened_at=NOW + 101).model_dump()
        clock[0] = NOW + 105
        assert not router.may_call(stable), "the new open period is not over"
        clock[0] = NOW + 111
        assert router.may_call(stable)
        answered.set()
        await prober


async def test_a_probe_whose_request_ended_is_out_for_its_open_period() -> None:
    """The probe's request ends a moment before its outcome is folded in: the breaker
    still reads open as before, and for open_s no second probe goes."""
    import asyncio
    from unittest import mock

    import agents.route as route

    table = {"a/stable": Health(state="open", opened_at=NOW, consecutive_failures=5).model_dump()}
    router = Router(CONFIG, table.get)
    stable = CONFIG.models["m"].candidates[0]
    clock = [NOW + 10]

    async def probe() -> bool:
        return router.may_call(stable)

    with mock.patch.object(route.time, "time", lambda: clock[0]):
        assert await asyncio.create_task(probe())
        clock[0] = NOW + 19.9
        assert not await asyncio.create_task(probe())
        clock[0] = NOW + 20
        assert await asyncio.create_task(probe())
