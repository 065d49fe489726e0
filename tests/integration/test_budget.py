"""Tenant budgets and canaries, end to end: degrade to a cheaper alias past ``degrade_at``,
402 past the limit (or cached answers only), and a sticky canary share.

Spend reaches the budget check asynchronously (ledger → spend agent → tenant_spend table),
so each budget test sends one request at a time, a little apart, and watches the answers
change.  Prices are set high enough that a handful of requests crosses each threshold.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from schemas.config import hash_key
from schemas.errors import BudgetExceeded
from tests.integration.conftest import WORKDIR, read_ledger
from tests.support.stack import DEMO_KEY, Simulator, Stack, start_simulator

LIMIT_USD = 0.5
PREMIUM_MODEL, ECONOMY_MODEL = "gpt-4o-budget-premium", "gpt-4o-mini-budget-economy"
PRESSURED_MODEL = "gpt-4o-rate-pressured"
STABLE_MODEL, CANARY_MODEL = "gpt-4o-mini-canary-stable", "gpt-4o-mini-canary-next"
# About 31 tokens a request (15 in, up to 16 out): ~$0.06 premium, ~$0.03 economy.
PREMIUM_PER_1M, ECONOMY_PER_1M = 2000.0, 1000.0
REFUSING_KEY, CACHE_ONLY_KEY = "rk-budget-refuse-tests", "rk-budget-cache-only-tests"
PACE_S = 0.25  # between budget requests: lets the spend agent keep up


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    started = start_simulator(WORKDIR / "sim-budget", latency_ms=5)
    yield started
    started.proc.stop()


def tenant(key_id: str, key: str, budget: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"keys": [{"id": key_id, "sha256": hash_key(key)}], "models": ["*"]}
    if budget is not None:
        spec["budget"] = {"limit_usd": LIMIT_USD, "degrade_at": 0.5, **budget}
    return spec


@pytest.fixture(scope="module")
def stack(stack_factory: Any, sim: Simulator) -> Stack:
    def vendor() -> dict[str, Any]:
        return {"kind": "openai", "base_url": sim.url + "/v1", "api_key_env": "RELAY_SIM_KEY"}

    def cand(vendor_name: str, model: str, price: float = 0.15) -> dict[str, Any]:
        return {
            "vendor": vendor_name,
            "model": model,
            "input_per_1m": price,
            "output_per_1m": price,
        }

    cfg = {
        "vendors": {
            "premium": vendor(),
            "economy": vendor(),
            "sim": vendor(),
            "throttled": {**vendor(), "rpm": 2},  # one request now, the next in ~30 s
        },
        "models": {
            "premium": {
                "candidates": [cand("premium", PREMIUM_MODEL, PREMIUM_PER_1M)],
                "degrade_to": "economy",
            },
            "economy": {"candidates": [cand("economy", ECONOMY_MODEL, ECONOMY_PER_1M)]},
            "pressured": {
                "candidates": [cand("throttled", PRESSURED_MODEL, PREMIUM_PER_1M)],
                "degrade_to": "economy",
                "degrade_after_wait_ms": 300,
            },
            "canaried": {
                "candidates": [cand("sim", STABLE_MODEL)],
                "canary": {"candidate": cand("sim", CANARY_MODEL), "percent": 30, "sticky": True},
            },
        },
        "tenants": {
            "demo": tenant("demo-key", DEMO_KEY),
            "refusing": tenant("refusing-key", REFUSING_KEY, {}),
            "cache-only": tenant("cache-only-key", CACHE_ONLY_KEY, {"on_exhausted": "cache_only"}),
        },
    }
    return stack_factory(cfg)  # type: ignore[no-any-return]


@dataclass
class Sent:
    trace: str
    reply: httpx.Response


async def chat(
    http: httpx.AsyncClient,
    stack: Stack,
    key: str,
    alias: str,
    *,
    prompt: str | None = None,
    user: str | None = None,
    ttl: str | None = None,
) -> Sent:
    """One chat; a fresh prompt (past the cache) unless ``prompt`` is given (cacheable)."""
    trace = uuid.uuid4().hex
    body: dict[str, Any] = {
        "model": alias,
        "messages": [{"role": "user", "content": prompt or f"tell me about {uuid.uuid4().hex}"}],
        "max_tokens": 16,
    }
    if user:
        body["user"] = user
    headers = {"authorization": f"Bearer {key}", "x-relay-trace-id": trace}
    if prompt is None:
        headers["x-relay-cache"] = "bypass"
    if ttl is not None:
        headers["x-relay-cache-ttl"] = ttl
    reply = await http.post(f"{stack.url}/v1/chat/completions", json=body, headers=headers)
    return Sent(trace, reply)


@dataclass
class Spending:
    """A tenant's requests, by what the relay did with them."""

    full: list[Sent] = field(default_factory=list)
    degraded: list[Sent] = field(default_factory=list)
    refused: Sent | None = None


async def spend_until_refused(http: httpx.AsyncClient, stack: Stack, key: str) -> Spending:
    """Ask ``premium`` one fresh question at a time until the budget refuses one."""
    out = Spending()
    for _ in range(60):
        sent = await chat(http, stack, key, "premium")
        if sent.reply.status_code == BudgetExceeded.status:
            out.refused = sent
            return out
        assert sent.reply.status_code == 200, sent.reply.text
        if "x-relay-degraded" in sent.reply.headers:
            out.degraded.append(sent)
        else:
            assert not out.degraded, "spend only grows: once degraded, never full price again"
            out.full.append(sent)
        await asyncio.sleep(PACE_S)
    raise AssertionError(f"never refused: {len(out.full)} full, {len(out.degraded)} degraded")


def budget_error(sent: Sent) -> str:
    error = orjson.loads(sent.reply.content)["error"]
    assert error["code"] == BudgetExceeded.code, error
    return str(error["message"])


async def test_past_half_the_budget_requests_degrade_and_past_all_of_it_they_are_refused(
    stack: Stack,
):
    async with httpx.AsyncClient(timeout=30) as http:
        spent = await spend_until_refused(http, stack, REFUSING_KEY)
        again = await chat(http, stack, REFUSING_KEY, "premium")
    assert spent.full and spent.degraded and spent.refused
    for sent in spent.full:
        assert sent.reply.headers["x-relay-vendor"] == "premium"
    for sent in spent.degraded:
        assert sent.reply.headers["x-relay-degraded"] == "budget_50pct"
        assert sent.reply.headers["x-relay-vendor"] == "economy"
        assert sent.reply.json()["model"] == "premium", "the client sees the alias it asked for"
    assert "has spent its budget" in budget_error(spent.refused)
    assert again.reply.status_code == BudgetExceeded.status

    events = await read_ledger(stack, {s.trace for s in [*spent.full, *spent.degraded]})
    by_trace = {e.trace_id: e for e in events}
    full = [by_trace[s.trace] for s in spent.full]
    degraded = [by_trace[s.trace] for s in spent.degraded]
    assert {(e.vendor_model, e.degraded) for e in full} == {(PREMIUM_MODEL, None)}
    assert {(e.vendor_model, e.degraded) for e in degraded} == {(ECONOMY_MODEL, "budget_50pct")}
    full_cost = sum(e.cost for e in full)
    total_cost = full_cost + sum(e.cost for e in degraded)
    assert full_cost >= 0.5 * LIMIT_USD, f"degraded after only ${full_cost:.3f}"
    assert total_cost >= LIMIT_USD, f"refused after only ${total_cost:.3f}"


async def test_an_exhausted_cache_only_tenant_still_gets_cache_hits(stack: Stack):
    question = f"what is in the cache for {uuid.uuid4().hex}?"
    short_lived = f"what was in the cache for {uuid.uuid4().hex}?"
    async with httpx.AsyncClient(timeout=30) as http:
        first = await chat(http, stack, CACHE_ONLY_KEY, "premium", prompt=question)
        assert first.reply.status_code == 200, first.reply.text
        once = await chat(http, stack, CACHE_ONLY_KEY, "premium", prompt=short_lived, ttl="1")
        assert once.reply.status_code == 200, once.reply.text
        spent = await spend_until_refused(http, stack, CACHE_ONLY_KEY)
        cached = await chat(http, stack, CACHE_ONLY_KEY, "premium", prompt=question)
        missed = await chat(http, stack, CACHE_ONLY_KEY, "premium")
        await asyncio.sleep(1.1)  # the short-lived answer is past its TTL by now...
        stale = await chat(http, stack, CACHE_ONLY_KEY, "premium", prompt=short_lived)
    # ...but a spent cache_only tenant may still have it: stale beats a refusal.
    assert stale.reply.status_code == 200, stale.reply.text
    assert stale.reply.headers["x-relay-cache"] == "hit-l2"
    assert stale.reply.headers["x-relay-degraded"] == "budget_exhausted"
    assert stale.reply.json()["choices"] == once.reply.json()["choices"]
    assert spent.refused is not None
    assert "only cached answers are served" in budget_error(spent.refused)
    assert cached.reply.status_code == 200, cached.reply.text
    assert cached.reply.headers["x-relay-cache"].startswith("hit-")
    answer = cached.reply.json()["choices"][0]["message"]["content"]
    assert answer == first.reply.json()["choices"][0]["message"]["content"]
    assert missed.reply.status_code == BudgetExceeded.status
    assert "only cached answers are served" in budget_error(missed)


async def test_a_sticky_canary_takes_about_30pct_of_users_each_always_on_one_version(
    stack: Stack,
):
    users = [f"user-{i}-{uuid.uuid4().hex[:6]}" for i in range(200)]
    gate = asyncio.Semaphore(16)

    async def ask(http: httpx.AsyncClient, user: str) -> tuple[str, Sent]:
        async with gate:
            return user, await chat(http, stack, DEMO_KEY, "canaried", user=user)

    async with httpx.AsyncClient(timeout=30) as http:
        sent = await asyncio.gather(*(ask(http, u) for u in users + users))
    assert [s.reply.status_code for _, s in sent] == [200] * len(sent)
    events = await read_ledger(stack, {s.trace for _, s in sent})
    model_of = {e.trace_id: e.vendor_model for e in events}
    versions: dict[str, set[str | None]] = defaultdict(set)
    for user, s in sent:
        versions[user].add(model_of[s.trace])
    flapping = [u for u, v in versions.items() if len(v) != 1]
    assert not flapping, f"users served by both versions: {flapping[:5]}"
    on_canary = sum(v == {CANARY_MODEL} for v in versions.values())
    assert all(v <= {CANARY_MODEL, STABLE_MODEL} for v in versions.values())
    share = on_canary / len(users)
    assert 0.2 <= share <= 0.4, f"{share:.0%} of users on the canary, configured 30%"


async def test_sustained_rate_pressure_degrades_to_the_cheaper_alias(stack: Stack) -> None:
    """The throttled vendor's bucket holds the second request ~30 s, past the alias's
    300 ms patience: it is answered at once by the degrade_to alias, and says so."""
    async with httpx.AsyncClient(timeout=30) as http:
        sent = [await chat(http, stack, DEMO_KEY, "pressured") for _ in range(3)]
    assert [s.reply.status_code for s in sent] == [200, 200, 200]
    assert [s.reply.headers.get("x-relay-degraded") for s in sent] == [
        None,
        "rate_pressure",
        "rate_pressure",
    ]
    assert [s.reply.headers["x-relay-vendor"] for s in sent] == ["throttled", "economy", "economy"]
    ledger = {e.trace_id: e for e in await read_ledger(stack, {s.trace for s in sent})}
    assert [ledger[s.trace].degraded for s in sent] == [None, "rate_pressure", "rate_pressure"]
    assert [ledger[s.trace].vendor_model for s in sent] == [
        PRESSURED_MODEL,
        ECONOMY_MODEL,
        ECONOMY_MODEL,
    ]
    async with httpx.AsyncClient(timeout=10) as http:
        exposed = (await http.get(f"{stack.url}/metrics")).text
    assert 'relay_degraded_total{reason="rate_pressure"} 2.0' in exposed
