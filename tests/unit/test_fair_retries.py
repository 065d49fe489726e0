"""Retries and limits that must not go too far: a key pool tries each key once per
attempt, a refusal that cannot change is not sent again, a half-open probe is spent by
the call that makes it (not by a plan), tenants' limits stay their own, and a TPM
estimate fits what the request can spend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import pytest

from agents.adapters.base import VendorCall, VendorResult
from agents.batch_lane import BatchLane
from agents.dispatch import Dispatcher
from agents.handler import RequestHandler
from agents.keys import KeyPool
from agents.route import Router
from schemas.config import Batching, Candidate, RelayConfig
from schemas.envelope import HealthEvent, Priority
from schemas.errors import (
    RateLimited,
    VendorAuthFailed,
    VendorNotFound,
    VendorRateLimited,
    VendorUnavailable,
    VendorUnsupported,
)
from schemas.usage import Usage
from tables.buckets import PriorityGate, TokenBucket
from tables.cache import CacheEntry
from tables.health import Health
from tables.prices import PriceSheet
from tests.support.envelopes import request_envelope
from tests.support.sinks import Sink

ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
ONE = [Candidate(vendor="a", model="m")]


class Vendor:
    """Answers, or raises ``fail`` (an error class or instance) after ``delay``."""

    def __init__(self, fail: Any = None, delay: float = 0.0, usage: Usage | None = None):
        self.fail = fail
        self.delay = delay
        self.usage = usage or Usage(input_tokens=1, output_tokens=1)
        self.calls = 0

    async def chat(self, call: VendorCall) -> VendorResult:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail("refused") if isinstance(self.fail, type) else self.fail
        return VendorResult(ANSWER, self.usage)

    async def embed(self, call: VendorCall) -> VendorResult:
        self.calls += 1
        inputs = call.body["input"]
        inputs = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.0]} for i in range(len(inputs))]
        return VendorResult({"object": "list", "data": data}, Usage(input_tokens=2 * len(inputs)))

    def stream(self, call: Any) -> Any:
        raise NotImplementedError


def dispatcher(
    vendors: dict[str, Any], keys: int = 1, gate: PriorityGate | None = None, **kw: Any
) -> tuple[Dispatcher, list[HealthEvent]]:
    seen: list[HealthEvent] = []

    async def on_health(ev: HealthEvent) -> None:
        seen.append(ev)

    pools = {name: KeyPool([f"k{i}" for i in range(keys)]) for name in vendors}
    return Dispatcher(vendors, pools, on_health, gate=gate, **kw), seen


def within(seconds: float, **kw: Any) -> Any:
    return request_envelope(deadline_ms=int((time.time() + seconds) * 1000), **kw)


async def test_a_short_retry_after_never_becomes_a_tight_loop_over_the_keys() -> None:
    """Each key's 429 asks for 5 ms, less than a call takes: the key is free again by the
    time the pool is asked.  Each key is still tried once per attempt, and each extra
    call waits its turn in the vendor's RPM bucket."""
    gate = PriorityGate()
    gate.configure("vendor:a", TokenBucket.from_rpm(60, now=time.monotonic()))
    vendor = Vendor(VendorRateLimited("429", retry_after=0.005), delay=0.01)
    dispatch, _ = dispatcher({"a": vendor}, keys=2, gate=gate)
    out = await dispatch.run(within(1.0), ONE, None)
    assert out.error is not None
    assert vendor.calls <= 2, f"{vendor.calls} calls in 1 s against 60 RPM"


async def test_a_limited_pool_is_tried_key_by_key_then_the_model_s_429_is_reported() -> None:
    vendor = Vendor(VendorRateLimited("429", retry_after=1.0), delay=0.05)
    dispatch, seen = dispatcher({"a": vendor}, keys=5)
    out = await dispatch.run(within(3.0), ONE, None)
    assert isinstance(out.error, VendorRateLimited)
    assert vendor.calls <= 10, "each key once per round, two rounds"
    assert seen and not seen[-1].ok, "the model's 429 reached its health"


@pytest.mark.parametrize("err", [VendorUnsupported, VendorNotFound, VendorAuthFailed])
async def test_a_refusal_that_cannot_change_is_not_sent_again_next_round(err: type) -> None:
    vendor = Vendor(err)
    dispatch, _ = dispatcher({"a": vendor})
    out = await dispatch.run(within(5.0), ONE, None)
    assert isinstance(out.error, err)
    assert vendor.calls == 1


async def test_a_vendor_that_failed_is_still_tried_again_next_round() -> None:
    vendor = Vendor(VendorUnavailable)
    dispatch, _ = dispatcher({"a": vendor})
    await dispatch.run(within(5.0), ONE, None)
    assert vendor.calls == 2


async def test_a_burst_of_tiny_embeddings_fits_its_tpm_without_a_completion_allowance() -> None:
    """An embeddings request spends its input only: 40 of ~3 tokens each fit a bucket of
    1 000, where a chat's 256-token completion allowance would refuse most."""
    gate = PriorityGate()
    gate.configure("vendor-tpm:a", TokenBucket.from_tpm(60_000, now=time.monotonic()))
    vendor = Vendor()
    dispatch, _ = dispatcher(
        {"a": vendor}, gate=gate, batching={"e": Batching(window_ms=50, max_size=64)}
    )

    async def one(i: int) -> Any:
        env = within(2.0, endpoint="embeddings", alias="e", body={"model": "e", "input": f"hi {i}"})
        return await dispatch.run(env, [Candidate(vendor="a", model="emb")], None)

    outs = await asyncio.gather(*(one(i) for i in range(40)))
    assert not [o for o in outs if isinstance(o.error, RateLimited)]


TWO = RelayConfig.model_validate(
    {
        "vendors": {
            "a": {"kind": "openai", "base_url": "http://a/v1"},
            "b": {"kind": "openai", "base_url": "http://b/v1"},
        },
        "models": {
            "m": {
                "candidates": [
                    {"vendor": "a", "model": "primary", "input_per_1m": 1},
                    {"vendor": "b", "model": "fallback", "input_per_1m": 2},
                ]
            }
        },
        "tenants": {"t": {}},
    }
)


def due_for_a_probe(key: str) -> dict[str, Any]:
    """A health table where ``key``'s breaker opened long enough ago (open_s is 10 s)."""
    opened = Health(state="open", opened_at=time.time() - 60, consecutive_failures=5)
    return {key: opened.model_dump()}


async def test_a_probe_is_spent_by_the_call_not_by_a_plan_it_was_not_called_in() -> None:
    """A recovered fallback planned behind a primary that answers keeps its probe: when
    the primary fails a moment later, the fallback is there to answer."""
    router = Router(TWO, due_for_a_probe("b/fallback").get)
    a, b = Vendor(), Vendor()
    dispatch, _ = dispatcher({"a": a, "b": b})
    first = await dispatch.run(
        request_envelope(), router.plan("m", time.time()), None, may_call=router.may_call
    )
    assert first.error is None and b.calls == 0
    a.fail = VendorUnavailable
    plan = router.plan("m", time.time())
    assert [c.vendor for c in plan] == ["a", "b"]
    second = await dispatch.run(request_envelope(), plan, None, may_call=router.may_call)
    assert second.error is None and b.calls == 1
    # That was the probe: until it is told, this worker sends no second one.
    assert [c.vendor for c in router.plan("m", time.time())] == ["a"]
    assert not router.may_call(Candidate(vendor="b", model="fallback"))


def handler_for(
    config: RelayConfig, vendors: dict[str, Any], table: dict[str, Any] | None = None, **kw: Any
) -> tuple[RequestHandler, Sink]:
    sink = kw.pop("sink", None) or Sink()
    pools = {name: KeyPool(["k"]) for name in vendors}
    handler = RequestHandler(
        Router(config, (table or {}).get),
        Dispatcher(vendors, pools, sink.health, **kw),
        PriceSheet.from_config(config.models),
        sink,
    )
    return handler, sink


async def test_background_work_sends_the_probe_its_plan_found_due() -> None:
    """Background chat plans twice (for the batch lane, then to call): an Ollama vendor
    has no batch API, and the first plan must not use up the probe the call then needs."""
    config = RelayConfig.model_validate(
        {
            "vendors": {"ollama": {"kind": "ollama", "base_url": "http://o"}},
            "models": {"m": {"candidates": [{"vendor": "ollama", "model": "llama"}]}},
            "tenants": {"t": {}},
        }
    )
    vendor = Vendor()
    handler, sink = handler_for(config, {"ollama": vendor}, due_for_a_probe("ollama/llama"))
    pools = {"ollama": KeyPool([])}
    handler.lane = BatchLane({"ollama": vendor}, pools, config.batch_lane, handler.deliver_batch)
    env = request_envelope(priority=Priority.background)
    await handler.handle(env)
    assert vendor.calls == 1 and sink.for_(env.correlation_id)[-1].kind == "final"


class SlowL2(Sink):
    """Every L2 lookup takes a Redis round trip (so identical requests overlap)."""

    async def cached(self, key: str, *, stale_ok: bool = False) -> CacheEntry | None:
        await asyncio.sleep(0.02)
        return None


async def test_a_tenant_without_limits_never_hears_another_tenant_s_429() -> None:
    """Under a global cache scope tenants share calls; the one with limits of its own
    flies apart, so a tenant without limits is neither refused by them nor lets the
    limited one ride free of them."""
    config = RelayConfig.model_validate(
        {
            "vendors": {"a": {"kind": "openai", "base_url": "http://a/v1"}},
            "models": {"m": {"candidates": [{"vendor": "a", "model": "x"}]}},
            "tenants": {
                "noisy": {"cache_scope": "global", "rpm": 1},
                "quiet": {"cache_scope": "global"},
            },
        }
    )
    gate = PriorityGate()
    spent = TokenBucket(capacity=1, refill_per_s=1 / 60, tokens=0, updated=time.monotonic())
    gate.configure("tenant:noisy", spent)  # its one request of the minute is used
    vendor = Vendor()
    handler, sink = handler_for(config, {"a": vendor}, gate=gate, sink=SlowL2())
    noisy = within(0.5, tenant="noisy", prompt_hash="same", cache_lookup=True)
    quiet = within(0.5, tenant="quiet", prompt_hash="same", cache_lookup=True)
    leader = asyncio.create_task(handler.handle(noisy))
    await asyncio.sleep(0.005)
    await handler.handle(quiet)
    await leader
    assert sink.for_(quiet.correlation_id)[-1].kind == "final"
    told = sink.for_(noisy.correlation_id)[-1]
    assert told.kind == "error" and told.error is not None
    assert told.error["code"] == RateLimited.code


async def test_a_call_degraded_by_rate_pressure_is_charged_to_its_tenant_s_tpm() -> None:
    config = RelayConfig.model_validate(
        {
            "vendors": {
                "big": {"kind": "openai", "base_url": "http://big/v1"},
                "small": {"kind": "openai", "base_url": "http://small/v1"},
            },
            "models": {
                "m": {
                    "degrade_to": "cheap",
                    "degrade_after_wait_ms": 100,
                    "candidates": [{"vendor": "big", "model": "x", "input_per_1m": 5}],
                },
                "cheap": {"candidates": [{"vendor": "small", "model": "y", "input_per_1m": 1}]},
            },
            "tenants": {"t": {"tpm": 60_000}},
        }
    )
    now = time.monotonic()
    gate = PriorityGate()
    gate.configure(
        "vendor:big", TokenBucket(capacity=1, refill_per_s=1 / 60, tokens=0, updated=now)
    )
    gate.configure(
        "tenant-tpm:t", TokenBucket(capacity=1000, refill_per_s=0.001, tokens=1000, updated=now)
    )
    big, small = Vendor(), Vendor(usage=Usage(input_tokens=40, output_tokens=10))
    handler, sink = handler_for(config, {"big": big, "small": small}, gate=gate)
    await handler.handle(within(5.0))
    assert (big.calls, small.calls) == (0, 1)
    assert sink.ledger[-1].status == "ok" and sink.ledger[-1].degraded == "rate_pressure"
    bucket = gate.bucket("tenant-tpm:t")
    assert bucket is not None and bucket.tokens == pytest.approx(1000 - 50, abs=1)


async def test_a_breaker_that_opened_during_the_gate_wait_is_not_called() -> None:
    """A request planned while the primary's breaker was closed waits at the primary's
    RPM bucket; meanwhile the breaker opens.  Once the gate lets it through the router is
    asked again: the primary is not called, its request slot goes back, and the fallback
    answers."""
    table: dict[str, Any] = {}
    router = Router(TWO, table.get)
    gate = PriorityGate()
    gate.configure(
        "vendor:a", TokenBucket(capacity=1, refill_per_s=10, tokens=0, updated=time.monotonic())
    )
    a, b = Vendor(), Vendor()
    dispatch, _ = dispatcher({"a": a, "b": b}, gate=gate)
    plan = router.plan("m", time.time())
    assert [c.vendor for c in plan] == ["a", "b"]
    acquire = gate.acquire

    async def opens_meanwhile(
        needs: Mapping[str, float], priority: Priority, deadline: float
    ) -> None:
        """The breaker opens once the request waits at the primary's gate: at that step,
        not after a sleep a busy machine could stretch past the token 0.1 s away."""
        if "vendor:a" not in needs:
            return await acquire(needs, priority, deadline)
        waiting = asyncio.ensure_future(acquire(needs, priority, deadline))
        await asyncio.sleep(0)  # it takes its place in the queue, then this goes on
        assert gate.waiting == 1  # at the primary's gate
        opened = Health(state="open", opened_at=time.time(), consecutive_failures=5)
        table["a/primary"] = opened.model_dump()
        await waiting

    gate.acquire = opens_meanwhile  # type: ignore[method-assign]
    out = await dispatch.run(within(5.0), plan, None, may_call=router.may_call)
    assert out.error is None and out.candidate == plan[1]
    assert (a.calls, b.calls) == (0, 1)
    assert gate.bucket("vendor:a").tokens > 0.5  # type: ignore[union-attr]


async def test_a_breaker_that_opened_after_round_one_is_not_called_in_round_two() -> None:
    """The vendor fails and its failures open the breaker (here at once) before the
    second round: the second round reads the breaker again and leaves the vendor be."""
    table: dict[str, Any] = {}
    router = Router(TWO, table.get)
    a = Vendor(VendorUnavailable)

    dispatch, seen = dispatcher({"a": a})

    async def opens(ev: HealthEvent) -> None:
        seen.append(ev)
        opened = Health(state="open", opened_at=time.time(), consecutive_failures=5)
        table["a/primary"] = opened.model_dump()

    dispatch.on_health = opens
    primary = [Candidate(vendor="a", model="primary")]
    out = await dispatch.run(within(5.0), primary, None, may_call=router.may_call)
    assert isinstance(out.error, VendorUnavailable)
    assert a.calls == 1


class Counter(Vendor):
    """Counts tokens too (Anthropic's count_tokens)."""

    async def count_tokens(self, call: VendorCall) -> int:
        self.calls += 1
        return 7


async def test_a_token_count_does_not_spend_the_probe() -> None:
    """count_tokens reports no health outcome: a count sent to a breaker due for a probe
    leaves the probe to the chat that follows, which closes the breaker."""
    router = Router(TWO, due_for_a_probe("a/primary").get)
    a, b = Counter(), Counter()
    dispatch, seen = dispatcher({"a": a, "b": b})
    plan = router.plan("m", time.time())
    count = request_envelope(endpoint="count_tokens")
    counted = await dispatch.run(count, plan, None, may_call=router.may_call)
    assert counted.error is None and counted.candidate == plan[0] and seen == []
    chat = await dispatch.run(
        request_envelope(), router.plan("m", time.time()), None, may_call=router.may_call
    )
    assert chat.error is None and chat.candidate == plan[0]
    assert [(e.vendor, e.ok) for e in seen] == [("a", True)], "the chat was the probe"


async def test_a_call_our_own_gate_refuses_does_not_spend_the_probe() -> None:
    """The probe's request waits at the vendor's RPM bucket past its deadline and gets
    our own 429: nothing went out, so the next request still has the probe."""
    router = Router(TWO, due_for_a_probe("a/primary").get)
    gate = PriorityGate()
    gate.configure(
        "vendor:a", TokenBucket(capacity=1, refill_per_s=1, tokens=0, updated=time.monotonic())
    )
    a = Vendor()
    dispatch, _ = dispatcher({"a": a}, gate=gate)
    primary = [Candidate(vendor="a", model="primary")]
    refused = await dispatch.run(within(0.3), primary, None, may_call=router.may_call)
    assert isinstance(refused.error, RateLimited) and a.calls == 0
    assert router.may_call(primary[0], spend=False), "the probe is still this worker's"


async def test_a_probe_call_that_is_stopped_gives_the_probe_back() -> None:
    """The probe's client goes away (or the worker stops) before the vendor answers: the
    call is cancelled and never reported, so the probe is given back for the next
    request instead of holding the breaker open on this worker for open_s."""
    router = Router(TWO, due_for_a_probe("a/primary").get)
    a = Vendor(delay=5.0)
    dispatch, seen = dispatcher({"a": a})
    primary = [Candidate(vendor="a", model="primary")]
    run = asyncio.create_task(
        dispatch.run(within(10.0), primary, None, may_call=router.may_call, release=router.release)
    )
    await asyncio.sleep(0.05)
    assert a.calls == 1 and not router.may_call(primary[0], spend=False), "the probe is out"
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert seen == [] and router.may_call(primary[0], spend=False)


def test_only_the_request_that_took_the_probe_gives_it_back() -> None:
    """A call that was not the probe (sent while the breaker was closed, say) ending
    unheard frees nothing: only the probing request's task gives its probe back."""
    router = Router(TWO, due_for_a_probe("a/primary").get)
    primary = Candidate(vendor="a", model="primary")

    async def probe() -> None:
        assert router.may_call(primary)

    async def other() -> None:
        router.release(primary)

    asyncio.run(probe())
    asyncio.run(other())
    assert not router.may_call(primary, spend=False)


class FailsOnce(Vendor):
    """A transient 502 on its first call, then answers."""

    async def chat(self, call: VendorCall) -> VendorResult:
        self.calls += 1
        if self.calls == 1:
            raise VendorUnavailable("a: HTTP 502 once")
        return VendorResult(ANSWER, self.usage)


def spent_bucket(vendor: str) -> PriorityGate:
    """A gate whose ``vendor`` has spent its one request of this minute."""
    gate = PriorityGate()
    gate.configure(
        f"vendor:{vendor}",
        TokenBucket(capacity=1, refill_per_s=1 / 60, tokens=0, updated=time.monotonic()),
    )
    return gate


@pytest.mark.parametrize("order", ["ab", "ba"])
@pytest.mark.parametrize("patience", [None, 0.1])
async def test_a_full_bucket_never_keeps_another_candidate_s_transient_error_from_its_retry(
    order: str, patience: float | None
) -> None:
    """``a`` fails once with a 502 and would answer on retry; ``b``'s vendor RPM bucket is
    empty for a minute (past the deadline; past the alias's patience).  Whatever the
    plan's order, ``a`` is retried and answers: no 429 with a minute's Retry-After, and
    no rate-pressure downgrade (a ``RateLimited`` outcome), because ``b`` came last."""
    a, b = FailsOnce(), Vendor()
    dispatch, _ = dispatcher({"a": a, "b": b}, gate=spent_bucket("b"))
    cands = {"a": Candidate(vendor="a", model="m"), "b": Candidate(vendor="b", model="m")}
    out = await dispatch.run(within(5.0), [cands[x] for x in order], None, vendor_wait_s=patience)
    assert out.error is None and out.candidate == cands["a"]
    assert (a.calls, b.calls) == (2, 0)


@pytest.mark.parametrize("order", ["ab", "ba"])
@pytest.mark.parametrize("patience", [None, 0.1])
async def test_a_request_every_candidate_failed_hears_the_same_whatever_the_plan_s_order(
    order: str, patience: float | None
) -> None:
    """``a`` keeps failing with a 502 (it may be called again now), ``b``'s bucket is
    empty: the verdict is ``a``'s error, in either order, not our own 429 when ``b``
    happened to be tried last."""
    a, b = Vendor(VendorUnavailable), Vendor()
    dispatch, _ = dispatcher({"a": a, "b": b}, gate=spent_bucket("b"))
    cands = {"a": Candidate(vendor="a", model="m"), "b": Candidate(vendor="b", model="m")}
    out = await dispatch.run(within(5.0), [cands[x] for x in order], None, vendor_wait_s=patience)
    assert isinstance(out.error, VendorUnavailable)
    assert (a.calls, b.calls) == (2, 0)


async def test_every_candidate_held_by_our_own_buckets_is_said_at_once() -> None:
    """Both buckets empty past the deadline: one round, no backoff, our own 429."""
    gate = spent_bucket("a")
    gate.configure(
        "vendor:b",
        TokenBucket(capacity=1, refill_per_s=1 / 60, tokens=0, updated=time.monotonic()),
    )
    a, b = Vendor(), Vendor()
    dispatch, _ = dispatcher({"a": a, "b": b}, gate=gate)
    backoffs: list[int] = []

    async def no_backoff(env: Any, round_no: int, until: float) -> None:
        backoffs.append(round_no)

    dispatch._backoff = no_backoff  # type: ignore[method-assign,assignment]
    plan = [Candidate(vendor="a", model="m"), Candidate(vendor="b", model="m")]
    out = await dispatch.run(within(5.0), plan, None)
    assert isinstance(out.error, RateLimited) and backoffs == []
    assert (a.calls, b.calls) == (0, 0)
