"""Rate limits in the dispatcher: what a TPM bucket is charged and given back, which key
of a pool gets a call, and what a request held by our own limits hears."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from agents.adapters.base import VendorCall, VendorResult
from agents.dispatch import Dispatcher
from agents.keys import KeyPool
from schemas.config import Candidate
from schemas.envelope import HealthEvent, Priority
from schemas.errors import RateLimited, VendorBadRequest, VendorRateLimited
from schemas.usage import Usage
from tables.buckets import PriorityGate, TokenBucket
from tests.support.envelopes import request_envelope

ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}


class ByKey:
    """A vendor that answers each key as told: "ok", "429" or "400"."""

    def __init__(self, answers: dict[str, str], usage: Usage | None = None) -> None:
        self.answers = answers
        self.usage = usage or Usage(input_tokens=10, output_tokens=5)
        self.keys: list[str] = []

    async def chat(self, call: VendorCall) -> VendorResult:
        self.keys.append(call.api_key)
        answer = self.answers[call.api_key]
        if answer == "429":
            raise VendorRateLimited("429 for this key", retry_after=30.0)
        if answer == "400":
            raise VendorBadRequest("max_tokens is too large")
        return VendorResult(ANSWER, self.usage)

    def stream(self, call: Any) -> Any:
        raise NotImplementedError


def make(
    vendors: dict[str, Any], keys: dict[str, list[str]], gate: PriorityGate | None = None
) -> tuple[Dispatcher, list[HealthEvent]]:
    seen: list[HealthEvent] = []

    async def on_health(ev: HealthEvent) -> None:
        seen.append(ev)

    pools = {name: KeyPool(keys[name]) for name in vendors}
    return Dispatcher(vendors, pools, on_health, gate=gate), seen


def env(seconds: float = 5, **body: Any) -> Any:
    return request_envelope(
        deadline_ms=int((time.time() + seconds) * 1000),
        body={"model": "m", "messages": [{"role": "user", "content": "hi"}], **body},
    )


async def test_a_keys_429_sends_the_call_again_with_the_pools_next_key() -> None:
    """One key's limit is not the model's: the call goes out again at once on a free key,
    and the model's health (every worker's view of it) is not touched."""
    vendor = ByKey({"k0": "429", "k1": "ok"})
    dispatch, seen = make({"a": vendor}, {"a": ["k0", "k1"]})
    out = await dispatch.run(env(), [Candidate(vendor="a", model="m")], None)
    assert out.error is None and vendor.keys == ["k0", "k1"]
    assert [(e.ok, e.error_code) for e in seen] == [(True, None)]
    again = await dispatch.run(env(), [Candidate(vendor="a", model="m")], None)
    assert again.error is None and vendor.keys[-1] == "k1", "k0 sits out its Retry-After"


async def test_when_every_key_is_limited_the_model_is_and_the_client_hears_so() -> None:
    vendor = ByKey({"k0": "429", "k1": "429"})
    dispatch, seen = make({"a": vendor}, {"a": ["k0", "k1"]})
    out = await dispatch.run(env(), [Candidate(vendor="a", model="m")], None)
    assert isinstance(out.error, VendorRateLimited) and vendor.keys == ["k0", "k1"]
    assert [e.error_code for e in seen] == ["vendor_rate_limited"]


def tpm_gate(limit: float, clock: Callable[[], float] = time.monotonic) -> PriorityGate:
    gate = PriorityGate(clock)
    gate.configure("vendor-tpm:a", TokenBucket.from_tpm(limit, now=clock()))
    return gate


async def test_a_tpm_bucket_gets_back_what_a_call_did_not_use() -> None:
    gate = tpm_gate(600_000)  # 10 000 a second: the bucket holds 10 000
    vendor = ByKey({"k": "ok"}, Usage(input_tokens=10, output_tokens=5))
    dispatch, _ = make({"a": vendor}, {"a": ["k"]}, gate)
    await dispatch.run(env(max_tokens=8000), [Candidate(vendor="a", model="m")], None)
    bucket = gate.bucket("vendor-tpm:a")
    assert bucket is not None and bucket.tokens == pytest.approx(10_000 - 15, abs=50)


async def test_a_call_that_used_more_than_its_estimate_is_charged_the_rest() -> None:
    """No max_tokens: admitted on the prompt plus 256, but the answer ran to 5 000 tokens.
    The bucket pays the difference, so the vendor's TPM holds however long answers run."""
    # The bucket holds 10 000 and refills 10 000 a second: on a clock that moves, 5 ms
    # between the charge and the settling (a busy machine's turn) is the whole tolerance.
    now = time.monotonic()
    gate = tpm_gate(600_000, clock=lambda: now)
    vendor = ByKey({"k": "ok"}, Usage(input_tokens=10, output_tokens=5_000))
    dispatch, _ = make({"a": vendor}, {"a": ["k"]}, gate)
    await dispatch.run(env(), [Candidate(vendor="a", model="m")], None)
    bucket = gate.bucket("vendor-tpm:a")
    assert bucket is not None and bucket.tokens == pytest.approx(10_000 - 5_010, abs=50)


async def test_a_call_the_vendor_refused_costs_its_tpm_nothing() -> None:
    gate = tpm_gate(600_000)
    dispatch, _ = make({"a": ByKey({"k": "400"})}, {"a": ["k"]}, gate)
    out = await dispatch.run(env(max_tokens=8000), [Candidate(vendor="a", model="m")], None)
    assert isinstance(out.error, VendorBadRequest)
    bucket = gate.bucket("vendor-tpm:a")
    assert bucket is not None and bucket.tokens == pytest.approx(10_000, abs=50)


async def test_one_absurd_max_tokens_cannot_hold_a_vendor_for_more_than_a_minute() -> None:
    """Charged a minute's limit at most: the next request waits about a minute (a 429 with
    that Retry-After when its deadline is sooner), not days."""
    gate = tpm_gate(60_000)
    vendor = ByKey({"k": "ok"}, Usage(input_tokens=60_000, output_tokens=0))  # all used
    dispatch, _ = make({"a": vendor}, {"a": ["k"]}, gate)
    await dispatch.run(env(max_tokens=10**9), [Candidate(vendor="a", model="m")], None)
    out = await dispatch.run(env(seconds=2), [Candidate(vendor="a", model="m")], None)
    assert isinstance(out.error, RateLimited)
    assert out.error.retry_after is not None and 55 < out.error.retry_after < 65


async def test_a_lane_wait_that_outlives_the_deadline_is_a_429_whatever_comes_next() -> None:
    """With a second candidate next in the plan, the deadline check used to answer 504."""
    gate = PriorityGate()
    now = time.monotonic()
    gate.configure("vendor:a", TokenBucket(capacity=1, refill_per_s=1.0, tokens=0.6, updated=now))
    gate.configure("vendor:b", TokenBucket(capacity=1, refill_per_s=1.0, tokens=0.6, updated=now))
    dispatch, _ = make(
        {"a": ByKey({"k": "ok"}), "b": ByKey({"k": "ok"})}, {"a": ["k"], "b": ["k"]}, gate
    )
    plan = [Candidate(vendor="a", model="m"), Candidate(vendor="b", model="m")]
    out = await dispatch.run(env(seconds=0.3), plan, None)
    assert isinstance(out.error, RateLimited) and out.error.status == 429


async def test_no_patience_still_admits_a_call_the_bucket_has_room_for() -> None:
    gate = PriorityGate()
    gate.configure("v", TokenBucket.from_rpm(6000, now=time.monotonic()))
    for _ in range(5):  # degrade_after_wait_ms: 0 sent every one to the cheaper plan
        await gate.acquire({"v": 1}, Priority.realtime, deadline=time.monotonic())
    bucket = gate.bucket("v")
    assert bucket is not None and bucket.tokens == pytest.approx(95, abs=1)


async def test_a_token_count_never_waits_on_other_requests_tpm() -> None:
    gate = tpm_gate(60_000)
    bucket = gate.bucket("vendor-tpm:a")
    assert bucket is not None
    bucket.tokens = -50_000  # in debt from earlier calls

    class Counter(ByKey):
        async def count_tokens(self, call: VendorCall) -> int:
            return 7

    dispatch, _ = make({"a": Counter({"k": "ok"})}, {"a": ["k"]}, gate)
    count = request_envelope(endpoint="count_tokens", deadline_ms=int((time.time() + 1) * 1000))
    out = await dispatch.run(count, [Candidate(vendor="a", model="m")], None)
    assert out.error is None and out.body == {"input_tokens": 7}


def test_retry_after_is_rounded_up_so_waiting_it_out_is_enough() -> None:
    from starlette.requests import Request

    from gateway.errors import error_response

    request = Request(
        {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    )
    for wait, header in ((2.49, "3"), (0.2, "1"), (2.0, "2")):
        response = error_response(request, RateLimited("slow down", retry_after=wait))
        assert response.headers["retry-after"] == header


async def test_a_shared_calls_refused_key_is_not_benched_for_a_rider_with_its_own() -> None:
    """A window-batched call goes with its first caller's key: its 401 says nothing of
    another caller's key, which stays in the pool."""
    from schemas.errors import VendorAuthFailed

    class SharedCallRefused:
        async def chat(self, call: VendorCall) -> VendorResult:
            err = VendorAuthFailed("401 for the shared call's key")
            err.other_key = True
            raise err

        def stream(self, call: Any) -> Any:
            raise NotImplementedError

    pool = KeyPool(["k0"])
    dispatch = Dispatcher({"a": SharedCallRefused()}, {"a": pool}, _no_health)
    out = await dispatch.run(env(), [Candidate(vendor="a", model="m")], None)
    assert isinstance(out.error, VendorAuthFailed)
    assert pool.free(), "its own key was not refused"


async def _no_health(event: HealthEvent) -> None:
    return None
