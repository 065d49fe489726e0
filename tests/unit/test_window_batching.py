"""Window batching against the vendor's limits, keys and the ledger: one window is one
vendor call of the vendor's RPM, a rider's own key is tried when the shared call's key
fails, and a share of a call its request was cut from is metered even when another
candidate answered.  Vendors are real OpenAI adapters on httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from agents.adapters.openai import OpenAIAdapter
from agents.dispatch import Dispatcher
from agents.handler import RequestHandler
from agents.keys import KeyPool
from agents.route import Router
from schemas.config import Batching, Candidate, RelayConfig, VendorConfig
from schemas.envelope import HealthEvent, Priority, RequestEnvelope
from schemas.errors import RateLimited
from schemas.usage import Usage
from tables.buckets import PriorityGate, TokenBucket
from tables.prices import PriceSheet, cost_of
from tests.support.envelopes import request_envelope
from tests.support.sinks import Sink

EMB = [Candidate(vendor="a", model="emb")]


class Embeddings:
    """An OpenAI-compatible embeddings server: records (host, key, inputs) of each call;
    ``refuse`` maps a key to the status it gets (429 with Retry-After 20, 401)."""

    def __init__(self, refuse: dict[str, int] | None = None, delay: dict[str, float] | None = None):
        self.calls: list[tuple[str, str, list[str]]] = []
        self.refuse = refuse or {}
        self.delay = delay or {}

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        key = request.headers["authorization"].removeprefix("Bearer ")
        inputs = json.loads(request.content)["input"]
        inputs = inputs if isinstance(inputs, list) else [inputs]
        self.calls.append((request.url.host, key, inputs))
        await asyncio.sleep(self.delay.get(request.url.host, 0.0))
        if status := self.refuse.get(key):
            headers = {"retry-after": "20"} if status == 429 else {}
            error = {"error": {"message": "no", "type": "rate_limit_error"}}
            return httpx.Response(status, json=error, headers=headers)
        data = [{"object": "embedding", "index": i, "embedding": [0.5]} for i in range(len(inputs))]
        usage = {"prompt_tokens": 100 * len(inputs), "total_tokens": 100 * len(inputs)}
        return httpx.Response(200, json={"object": "list", "data": data, "usage": usage})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))


def dispatcher(
    vendor: Embeddings,
    keys: list[str] | None = None,
    gate: PriorityGate | None = None,
    hosts: tuple[str, ...] = ("a",),
    timeout_s: float | None = None,
    window_ms: int = 50,
) -> tuple[Dispatcher, list[HealthEvent]]:
    seen: list[HealthEvent] = []

    async def on_health(ev: HealthEvent) -> None:
        seen.append(ev)

    client = vendor.client()
    adapters: dict[str, Any] = {
        h: OpenAIAdapter(
            VendorConfig(kind="openai", base_url=f"http://{h}/v1", timeout_s=timeout_s), client
        )
        for h in hosts
    }
    pools = {h: KeyPool(keys or ["k"]) for h in hosts}
    batching = {"e": Batching(window_ms=window_ms, max_size=64)}
    return Dispatcher(adapters, pools, on_health, gate=gate, batching=batching), seen


def embed(text: str, seconds: float = 3, **kw: Any) -> RequestEnvelope:
    return request_envelope(
        alias="e",
        endpoint="embeddings",
        body={"model": "e", "input": text},
        deadline_ms=int((time.time() + seconds) * 1000),
        **kw,
    )


def rpm_gate(rpm: float, tokens: float | None = None) -> PriorityGate:
    gate = PriorityGate()
    bucket = TokenBucket.from_rpm(rpm, now=time.monotonic())
    if tokens is not None:
        bucket.tokens = tokens
    gate.configure("vendor:a", bucket)
    return gate


# --- the vendor's RPM: one per vendor call, not per caller -------------------------------


async def test_a_window_under_an_rpm_limit_is_one_call_for_all_its_callers() -> None:
    """60 rpm holds one request at a time: per caller, 20 callers arriving together
    would go out one by one and most be refused 429; one window is one vendor call."""
    vendor = Embeddings()
    gate = rpm_gate(60)
    dispatch, _ = dispatcher(vendor, gate=gate)
    envs = [embed(f"t{i}") for i in range(20)]
    outs = await asyncio.gather(*(dispatch.run(e, EMB, None) for e in envs))
    assert [o.error for o in outs] == [None] * 20
    assert [len(inputs) for _, _, inputs in vendor.calls] == [20]
    bucket = gate.bucket("vendor:a")
    assert bucket is not None and bucket.tokens < 0.5, "the one call took its request"


async def test_a_window_the_rpm_cannot_let_out_in_time_is_a_429_for_each_caller() -> None:
    """Our own limit, for the window's call: no vendor call, no health outcome, and each
    caller hears how long to wait."""
    vendor = Embeddings()
    dispatch, seen = dispatcher(vendor, gate=rpm_gate(1, tokens=0))  # next in a minute
    outs = await asyncio.gather(*(dispatch.run(embed(t, 2), EMB, None) for t in "ab"))
    assert all(isinstance(o.error, RateLimited) for o in outs)
    assert all(o.error is not None and (o.error.retry_after or 0) > 2 for o in outs)
    assert vendor.calls == [] and seen == []


async def test_a_caller_that_gives_up_while_its_window_waits_for_the_rpm_is_never_sent() -> None:
    vendor = Embeddings()
    dispatch, seen = dispatcher(vendor, gate=rpm_gate(60, tokens=0))  # next in a second
    hurried, patient = embed("gone", 0.4), embed("here", 5)
    outs = await asyncio.gather(*(dispatch.run(e, EMB, None) for e in (hurried, patient)))
    assert outs[0].error is not None and outs[0].error.code == "deadline_exceeded"
    assert outs[1].error is None
    assert [inputs for _, _, inputs in vendor.calls] == [["here"]], "never paid for"
    assert [(e.vendor, e.ok) for e in seen] == [("a", True)], "the one call's outcome only"


# --- the vendor's time to answer: from when the window's call goes out -------------------

AB = [Candidate(vendor="a", model="emb"), Candidate(vendor="b", model="emb")]


async def test_a_window_waiting_for_the_rpm_longer_than_the_vendor_s_timeout_is_not_its_failure():
    """The wait for the vendor's RPM is our own limit, as it is for a call of its own: the
    vendor's ``timeout_s`` runs from when the window's call goes out, so a window held
    past it neither fails its callers over to the next candidate nor counts against
    the vendor's health (5 callers reported failed would open its breaker)."""
    vendor = Embeddings()
    gate = rpm_gate(120, tokens=0)  # the next request of the RPM in half a second
    dispatch, seen = dispatcher(vendor, gate=gate, hosts=("a", "b"), timeout_s=0.3)
    outs = await asyncio.gather(*(dispatch.run(embed(f"t{i}", 5), AB, None) for i in range(5)))
    assert [o.error for o in outs] == [None] * 5
    assert [o.candidate.vendor for o in outs if o.candidate] == ["a"] * 5, "no fallback"
    assert [(h, len(inputs)) for h, _, inputs in vendor.calls] == [("a", 5)]
    assert [(e.vendor, e.ok) for e in seen] == [("a", True)]


async def test_a_window_longer_than_the_vendor_s_timeout_is_not_its_failure():
    """``window_ms`` (up to 5 s) may be longer than the vendor's ``timeout_s``: the
    window is the relay's own wait, and the vendor's time starts when the call goes."""
    vendor = Embeddings()
    dispatch, seen = dispatcher(vendor, hosts=("a", "b"), timeout_s=0.2, window_ms=400)
    outs = await asyncio.gather(*(dispatch.run(embed(t, 5), AB, None) for t in "xyz"))
    assert [o.error for o in outs] == [None] * 3
    assert [(h, inputs) for h, _, inputs in vendor.calls] == [("a", ["x", "y", "z"])]
    assert [(e.vendor, e.ok) for e in seen] == [("a", True)]


async def test_a_caller_whose_deadline_passes_before_its_window_goes_is_no_vendor_outcome():
    """Cut while the window waits for the RPM (a patient caller keeps it waiting): never
    sent, so the vendor is neither blamed nor credited for it, and no other candidate
    is tried for it (its time is up)."""
    vendor = Embeddings()
    dispatch, seen = dispatcher(vendor, gate=rpm_gate(60, tokens=0), hosts=("a", "b"))
    hurried, patient = embed("gone", 0.4), embed("here", 5)
    outs = await asyncio.gather(*(dispatch.run(e, AB, None) for e in (hurried, patient)))
    assert outs[0].error is not None and outs[0].error.code == "deadline_exceeded"
    assert (outs[0].candidate, outs[0].late, outs[0].usage) == (None, [], Usage())
    assert outs[1].candidate is not None and outs[1].candidate.vendor == "a"
    assert [(h, inputs) for h, _, inputs in vendor.calls] == [("a", ["here"])]
    assert [(e.vendor, e.ok) for e in seen] == [("a", True)]


async def test_a_shared_call_that_hangs_past_the_vendor_s_timeout_is_one_failure():
    """Five callers cut from one call by the vendor's ``timeout_s`` are one failed call
    for its health (the default breaker opens at five in a row), then the next
    candidate answers them; each is billed its share of the call that went out."""
    vendor = Embeddings(delay={"a": 1.0})
    dispatch, seen = dispatcher(vendor, hosts=("a", "b"), timeout_s=0.3)
    outs = await asyncio.gather(*(dispatch.run(embed(f"t{i}", 5), AB, None) for i in range(5)))
    assert [o.candidate.vendor for o in outs if o.candidate] == ["b"] * 5
    assert [(e.vendor, e.ok, e.error_code) for e in seen] == [
        ("a", False, "vendor_unavailable"),
        ("b", True, None),
    ]
    shares = [share for o in outs for _, share in o.late]
    assert len(shares) == 5
    answers = await asyncio.gather(*shares)  # vendor a's one call, answered late
    assert sum(a.usage.input_tokens for a in answers) == 500


async def test_a_window_waits_for_the_rpm_in_its_most_urgent_caller_s_lane() -> None:
    """A realtime caller riding with background work is not queued behind batch work
    for the vendor's RPM."""
    vendor = Embeddings()
    gate = rpm_gate(60, tokens=0)
    dispatch, _ = dispatcher(vendor, gate=gate)
    order: list[str] = []

    async def batch_work() -> None:
        await gate.acquire({"vendor:a": 1.0}, Priority.batch, time.monotonic() + 5)
        order.append("batch")

    queued = asyncio.create_task(batch_work())
    await asyncio.sleep(0.01)  # batch work waits first for the next request of the RPM
    envs = [embed("bg", priority=Priority.background), embed("rt", priority=Priority.realtime)]
    outs = await asyncio.gather(*(dispatch.run(e, EMB, None) for e in envs))
    order.append("window")
    await queued
    assert [o.error for o in outs] == [None, None]
    assert order == ["window", "batch"]
    assert [inputs for _, _, inputs in vendor.calls] == [["bg", "rt"]]


# --- a rider's own key ------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 401])
async def test_a_rider_whose_own_key_is_healthy_is_answered_when_the_shared_key_fails(
    status: int,
) -> None:
    """The shared call goes with the first caller's key; when the vendor refuses or
    limits that key, the other caller's own key never went out: it is tried."""
    vendor = Embeddings(refuse={"sk-limited-000": status})
    dispatch, _ = dispatcher(vendor, keys=["sk-limited-000", "sk-healthy-111"])
    outs = await asyncio.gather(*(dispatch.run(embed(t, 10), EMB, None) for t in "AB"))
    assert [o.error for o in outs] == [None, None]
    assert [(key, inputs) for _, key, inputs in vendor.calls] == [
        ("sk-limited-000", ["A", "B"]),
        ("sk-healthy-111", ["A", "B"]),
    ]


# --- the ledger: a share of a call the request was cut from --------------------------


CONFIG = RelayConfig.model_validate(
    {
        "vendors": {
            "a": {"kind": "openai", "base_url": "http://a/v1"},
            "b": {"kind": "openai", "base_url": "http://b/v1"},
        },
        "models": {
            "e": {
                "kind": "embeddings",
                "batching": {"window_ms": 20},
                "candidates": [
                    {"vendor": "a", "model": "emb", "input_per_1m": 1000},
                    {"vendor": "b", "model": "emb", "input_per_1m": 3000},
                ],
            }
        },
        "tenants": {"t": {}},
    }
)


async def test_a_share_of_a_call_cut_short_is_metered_when_another_candidate_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A is cut from vendor a's shared call (slow to begin answering) after its input
    went out, and vendor b answers it: vendor a bills A's share all the same, so A's one
    ledger line carries it besides b's answer; its reply carries the answer's own."""
    monkeypatch.setattr("agents.dispatch.HANG_S", 0.1)  # a spare candidate takes over soon
    vendor = Embeddings(delay={"a": 1.0})
    sink = Sink()
    client = vendor.client()
    handler = RequestHandler(
        Router(CONFIG, {}.get),
        Dispatcher(
            {n: OpenAIAdapter(v, client) for n, v in CONFIG.vendors.items()},
            {n: KeyPool(["k"]) for n in CONFIG.vendors},
            sink.health,
            batching={"e": CONFIG.models["e"].batching},  # type: ignore[dict-item]
        ),
        PriceSheet.from_config(CONFIG.models),
        sink,
    )
    hurried, patient = embed("A", 1.2), embed("B", 20)
    await asyncio.gather(handler.handle(hurried), handler.handle(patient))
    assert [(h, i) for h, _, i in vendor.calls] == [("a", ["A", "B"]), ("b", ["A"])]
    for _ in range(100):  # A's line waits for vendor a's answer
        if len(sink.ledger) == 2:
            break
        await asyncio.sleep(0.02)
    lines = {line.trace_id: line for line in sink.ledger}
    assert len(sink.ledger) == 2, "one line per request"
    line = lines[hurried.trace_id]
    a, b = (Candidate(vendor=v, model="emb", input_per_1m=p) for v, p in (("a", 1000), ("b", 3000)))
    share = Usage(input_tokens=100)
    assert (line.status, line.vendor) == ("ok", "b")
    assert line.usage.input_tokens == 200, "b's answer and a's share"
    assert line.cost == pytest.approx(cost_of(b, share) + cost_of(a, share))
    assert line.batched
    [final] = [e for e in sink.for_(hurried.correlation_id) if e.kind == "final"]
    assert final.vendor == "b" and final.usage is not None and final.usage.input_tokens == 100
    assert final.cost == pytest.approx(cost_of(b, share)), "the answer's own figures"
    assert lines[patient.trace_id].usage.input_tokens == 100


# --- a shared call too large for the vendor ----------------------------------------------


class SizeLimited(Embeddings):
    """A vendor behind a body-size limit (nginx's client_max_body_size, say): 413."""

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if len(request.content) > 2_000:
            inputs = json.loads(request.content)["input"]
            self.calls.append(
                (request.url.host, "", inputs if isinstance(inputs, list) else [inputs])
            )
            return httpx.Response(413, text="request entity too large")
        return await super().__call__(request)


async def test_a_shared_call_too_large_for_the_vendor_is_split_so_a_small_input_goes_through():
    """One tenant's large input in a window must not fail another tenant's small one:
    the shared call's 413 sends each caller on its own, as a shared 400 does."""
    vendor = SizeLimited()
    dispatch, _ = dispatcher(vendor)
    small, large = embed("s" * 100, tenant="victim"), embed("L" * 1_900, tenant="other")
    outs = await asyncio.gather(*(dispatch.run(e, EMB, None) for e in (small, large)))
    assert [o.error for o in outs] == [None, None]
    assert [len(inputs) for _, _, inputs in vendor.calls] == [2, 1, 1]


# --- a shared answer that cannot be split back ------------------------------------------


class Skipping(Embeddings):
    """A compatible server that leaves out an input it will not embed (here "skip me")
    instead of refusing the call, and bills every input it was sent."""

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        inputs = json.loads(request.content)["input"]
        inputs = inputs if isinstance(inputs, list) else [inputs]
        self.calls.append((request.url.host, "", inputs))
        kept = [t for t in inputs if t != "skip me"]
        data = [{"object": "embedding", "index": i, "embedding": [0.5]} for i in range(len(kept))]
        usage = {"prompt_tokens": 100 * len(inputs), "total_tokens": 100 * len(inputs)}
        return httpx.Response(200, json={"object": "list", "data": data, "usage": usage})


async def test_a_shared_answer_that_cannot_be_split_is_on_its_callers_ledger_lines():
    """The vendor billed the merged call it answered: its tokens are on its callers' one
    line each (a share by the size of their inputs) besides their calls after, so the
    ledger adds up to what the vendors billed."""
    vendor = Skipping()
    sink = Sink()
    client = vendor.client()
    handler = RequestHandler(
        Router(CONFIG, {}.get),
        Dispatcher(
            {n: OpenAIAdapter(v, client) for n, v in CONFIG.vendors.items()},
            {n: KeyPool(["k"]) for n in CONFIG.vendors},
            sink.health,
            batching={"e": CONFIG.models["e"].batching},  # type: ignore[dict-item]
        ),
        PriceSheet.from_config(CONFIG.models),
        sink,
    )
    envs = [embed(t, 10) for t in ("abcd", "efgh", "skip me")]
    await asyncio.gather(*(handler.handle(e) for e in envs))
    for task in list(handler.spawned):  # lines with shares go once the shares are known
        await task
    assert vendor.calls[0][2] == ["abcd", "efgh", "skip me"], "one merged call first"
    assert len(sink.ledger) == 3, "one line per request"
    billed = sum(100 * len(inputs) for _, _, inputs in vendor.calls)
    assert sum(line.usage.input_tokens for line in sink.ledger) == billed
    lines = {line.trace_id: line for line in sink.ledger}
    assert [lines[e.trace_id].status for e in envs] == ["ok", "ok", "error"]
    assert all(line.batched for line in sink.ledger)
