"""What one tenant (or one request) can do to others: open a breaker with a malformed
body, reach a model it may not use by degradation, fail a shared vendor batch, read the
metrics, or fill the ledger with an outsized trace id."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from agents.batch_lane import BatchLane
from agents.dispatch import Dispatcher
from agents.keys import KeyPool
from agents.route import Router
from schemas.config import BatchLane as LaneRule
from schemas.config import Candidate, RelayConfig
from schemas.envelope import HealthEvent, Priority, RequestEnvelope
from schemas.errors import VendorBadRequest, VendorUnsupported
from schemas.settings import Settings
from tests.support.envelopes import request_envelope
from tests.support.gateway import AUTH, client, gateway_app


def real_vendor(kind: str) -> tuple[Dispatcher, list[HealthEvent], list[httpx.Request]]:
    from agents.adapters.registry import make_adapter
    from schemas.config import VendorConfig

    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    adapter = make_adapter(VendorConfig(kind=kind, base_url="http://v.test"), http)  # type: ignore[arg-type]
    seen: list[HealthEvent] = []

    async def on_health(ev: HealthEvent) -> None:
        seen.append(ev)

    return Dispatcher({"v": adapter}, {"v": KeyPool(["k"])}, on_health), seen, sent


async def test_a_body_no_adapter_can_translate_is_a_400_and_opens_no_breaker() -> None:
    """Failing inside the adapter before anything went out is the request's fault: it used
    to count as the vendor's (twice a request), so three bad requests opened the breaker
    for every tenant."""
    bad_bodies: dict[str, dict[str, Any]] = {
        "anthropic": {"anthropic_beta": [1]},
        "ollama": {"messages": [{"role": "assistant", "tool_calls": 5}]},
    }
    for kind, extra in bad_bodies.items():
        dispatch, seen, sent = real_vendor(kind)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
        env = request_envelope(body=body, deadline_ms=int((time.time() + 5) * 1000))
        out = await dispatch.run(env, [Candidate(vendor="v", model="m")], None)
        assert out.error is not None and out.error.status == 400, kind
        assert seen == [] and sent == [], f"{kind}: no health event, no vendor call"


async def test_a_client_cannot_smuggle_anthropic_beta_in_the_body() -> None:
    app, bus = gateway_app()
    async with client(app) as http:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
        await http.post("/v1/chat/completions", json={**body, "anthropic_beta": [1]})
        await http.post(
            "/v1/chat/completions",
            json={**body, "anthropic_beta": ["x"]},
            headers={"anthropic-beta": "prompt-caching-2024-07-31"},
        )
    assert "anthropic_beta" not in bus.published[0].body
    assert bus.published[1].body["anthropic_beta"] == ["prompt-caching-2024-07-31"]


# A tenant held to an EU model, and a cheaper US one to degrade to.
RESIDENCY_VENDORS = {
    "eu": {"kind": "openai", "base_url": "http://eu/v1"},
    "us": {"kind": "openai", "base_url": "http://us/v1"},
}


def test_degradation_never_sends_a_tenant_to_a_model_it_may_not_use() -> None:
    config = RelayConfig.model_validate(
        {
            "vendors": RESIDENCY_VENDORS,
            "models": {
                "eu-chat": {
                    "degrade_to": "us-cheap",
                    "candidates": [
                        {"vendor": "eu", "model": "big", "input_per_1m": 5},
                        {"vendor": "eu", "model": "small", "input_per_1m": 1},
                    ],
                },
                "us-cheap": {
                    "candidates": [{"vendor": "us", "model": "tiny", "input_per_1m": 0.1}]
                },
            },
            "tenants": {"eu-only": {"models": ["eu-chat"]}, "anyone": {}},
        }
    )
    router = Router(config, {}.get)

    def degraded(tenant: str) -> list[str]:
        return [c.model for c in router.plan("eu-chat", time.time(), degraded=True, tenant=tenant)]

    assert degraded("eu-only") == ["small", "big"], "the cheapest of its own alias"
    assert degraded("anyone") == ["tiny", "small", "big"], "degrade_to's first, its own behind"


async def test_a_vendor_refusing_a_whole_batch_fails_no_tenant_and_keeps_the_lane_on() -> None:
    """One tenant's oversized request made the vendor refuse the batch: everyone's line
    goes on alone, the realtime way (retryable), and the lane stays open."""

    class Refuses:
        async def submit_batch(self, calls: list[Any], api_key: str) -> str:
            raise VendorBadRequest("HTTP 400: file too large")

        async def poll_batch(self, batch_id: str, api_key: str) -> None:
            return None

        async def cancel_batch(self, batch_id: str, api_key: str) -> None:
            return None

    got: list[Any] = []

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        got.append(out)

    lane = BatchLane(
        {"v": Refuses()}, {"v": KeyPool(["k"])}, LaneRule(max_size=3, poll_s=0.01), deliver
    )
    cand = Candidate(vendor="v", model="m")
    for _ in range(3):
        lane.submit(request_envelope(priority=Priority.background), cand)
    for task in list(lane._tasks):
        await task
    assert len(got) == 3 and all(isinstance(r, VendorUnsupported) and r.retryable for r in got)
    assert lane.accepts(cand), "the lane is not switched off by a refusal of content"


async def test_metrics_ask_for_the_scrape_token_when_one_is_set() -> None:
    from gateway.app import create_app
    from schemas.config import load_config
    from tests.support.gateway import EXAMPLE

    settings = Settings(config=EXAMPLE, metrics_token="scrape-me")  # type: ignore[arg-type]
    app = create_app(settings, load_config(EXAMPLE), "unused:9092")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as http:
        assert (await http.get("/metrics")).status_code == 401
        bad = await http.get("/metrics", headers={"authorization": "Bearer nope"})
        assert bad.status_code == 401
        ok = await http.get("/metrics", headers={"authorization": "Bearer scrape-me"})
        assert ok.status_code == 200 and "relay_requests_total" in ok.text
    assert Settings().scrape_allowed(None), "open without a token, as before"


@pytest.mark.parametrize("header", ["x-relay-trace-id", "x-relay-cost-tag"])
async def test_an_outsized_trace_id_or_cost_tag_is_refused(header: str) -> None:
    """Both ride on every ledger line: a megabyte of tag made a line too large to send,
    and the request went unmetered."""
    app, bus = gateway_app()
    async with client(app) as http:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
        long = await http.post(
            "/v1/chat/completions", json=body, headers={**AUTH, header: "t" * 129}
        )
        fine = await http.post(
            "/v1/chat/completions", json=body, headers={**AUTH, header: "t" * 128}
        )
    assert long.status_code == 400 and header in long.json()["error"]["message"]
    assert fine.status_code == 200 and len(bus.published) == 1


async def test_audit_events_keep_no_more_of_a_path_than_they_need() -> None:
    """Refused callers choose the path: a 60 KB one per request would fill the audit
    topic and dodge the folding of a flood."""
    from gateway.bus import Bus
    from schemas.envelope import AuditEvent
    from streams.topics import Topics

    bus = Bus("127.0.0.1:9", Topics("t"), "gw-1")  # never started: nothing is sent
    seen: list[AuditEvent] = []

    class Trail:
        async def record(self, event: AuditEvent) -> None:
            seen.append(event)

    bus.audit_trail = Trail()  # type: ignore[assignment]
    await bus.audit("access_denied", path="/v1/" + "x" * 60_000, model="m" * 1_000, client="::1")
    for kafka in (bus.producer, bus.ledger, bus.consumer):  # never started: closed anyway
        await kafka.stop()
    [event] = seen
    assert event.path is not None and len(event.path) == 256 and event.path.startswith("/v1/x")
    assert event.model == "m" * 256 and event.client == "::1"


def test_a_batch_line_cannot_smuggle_anthropic_beta_and_the_header_s_features_apply() -> None:
    """Batch lines become envelopes away from the realtime path: the same rule holds."""
    import time

    from gateway.auth import Caller
    from gateway.batch_submit import Line, _envelope
    from gateway.relay import Options
    from schemas.batches import BatchObject
    from schemas.config import TenantConfig

    app, _ = gateway_app()
    relay = app.state.relay
    who = Caller(tenant="demo", key_id="k", policy=TenantConfig())
    now = int(time.time())
    batch = BatchObject(
        id="batch_1",
        endpoint="/v1/chat/completions",
        input_file_id="file_1",
        status="in_progress",
        created_at=now,
        expires_at=now + 3600,
    )
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "x"}],
        "anthropic_beta": "not-a-list\r\nx-injected: 1",
    }
    line = Line("a", body=body)
    plain = _envelope(relay, who, Options(), batch, "chat", 0, line)
    assert "anthropic_beta" not in plain.body
    opts = Options(anthropic_beta=["context-1m-2025-08-07"])
    asked = _envelope(relay, who, opts, batch, "chat", 1, line)
    assert asked.body["anthropic_beta"] == ["context-1m-2025-08-07"]


async def test_rate_pressure_never_hands_a_tenant_an_answer_from_a_model_it_may_not_use() -> None:
    """Tenants of a global cache scope share flights; one that may not use the alias's
    degrade_to (data residency) must not ride a flight routed there under rate
    pressure: it flies apart, and waits for its own vendor or hears 429."""
    from agents.adapters.openai import OpenAIAdapter
    from agents.handler import RequestHandler
    from tables.buckets import PriorityGate, TokenBucket
    from tables.prices import PriceSheet
    from tests.support.sinks import Sink
    from tests.unit.test_handler import vendor

    config = RelayConfig.model_validate(
        {
            "vendors": RESIDENCY_VENDORS,
            "models": {
                "eu-chat": {
                    "candidates": [{"vendor": "eu", "model": "big", "input_per_1m": 5}],
                    "degrade_to": "us-cheap",
                    "degrade_after_wait_ms": 100,
                },
                "us-cheap": {"candidates": [{"vendor": "us", "model": "tiny", "input_per_1m": 1}]},
            },
            "tenants": {
                "eu-only": {"models": ["eu-chat"], "cache_scope": "global"},
                "anyone": {"cache_scope": "global"},
            },
        }
    )
    calls: list[str] = []
    sink, http = Sink(), vendor(calls)
    gate = PriorityGate()
    gate.configure("vendor:eu", TokenBucket.from_rpm(1, now=time.monotonic()))
    router = Router(config, {}.get)
    adapters = {name: OpenAIAdapter(v, http) for name, v in config.vendors.items()}
    dispatcher = Dispatcher(
        adapters, {n: KeyPool(["k"]) for n in config.vendors}, sink.health, gate=gate
    )
    handler = RequestHandler(router, dispatcher, PriceSheet.from_config(config.models), sink)
    body = {"model": "eu-chat", "messages": [{"role": "user", "content": "hi"}]}

    def asking(tenant: str, prompt_hash: str) -> RequestEnvelope:
        return request_envelope(tenant=tenant, alias="eu-chat", body=body, prompt_hash=prompt_hash)

    await handler.handle(asking("anyone", "warm"))  # the eu vendor's one call this minute
    leader, follower = asking("anyone", "shared"), asking("eu-only", "shared")
    await asyncio.gather(handler.handle(leader), handler.handle(follower))
    led = sink.for_(leader.correlation_id)[-1]
    assert (led.vendor, led.degraded) == ("us", "rate_pressure"), "the leader was routed cheaper"
    answer = sink.for_(follower.correlation_id)[-1]
    assert answer.vendor != "us" and not answer.coalesced
    assert answer.kind == "error" and answer.error is not None
    assert answer.error["code"] == "rate_limited"


async def test_one_tenant_s_short_deadline_never_breaks_another_tenant_s_stream() -> None:
    """Under a global cache scope another tenant's stream may ride on a call led by a
    request with a short deadline: it reads on to the end, the leader alone answered 504
    at its deadline; the call is billed once, on the leader's line, the rider's costing
    nothing."""
    from agents.adapters.openai import OpenAIAdapter
    from agents.handler import RequestHandler
    from tables.prices import PriceSheet
    from tests.support.sinks import Sink
    from tests.unit.test_handler import held, in_, text_of, when_told

    config = RelayConfig.model_validate(
        {
            "vendors": {"a": {"kind": "openai", "base_url": "http://a/v1"}},
            "models": {"m": {"candidates": [{"vendor": "a", "model": "x", "input_per_1m": 1}]}},
            "tenants": {"hasty": {"cache_scope": "global"}, "patient": {"cache_scope": "global"}},
        }
    )
    calls: list[str] = []
    go_on = asyncio.Event()
    sink = Sink()
    handler = RequestHandler(
        Router(config, {}.get),
        Dispatcher(
            {"a": OpenAIAdapter(config.vendors["a"], held(calls, go_on))},
            {"a": KeyPool(["k"])},
            sink.health,
        ),
        PriceSheet.from_config(config.models),
        sink,
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    def asking(tenant: str, seconds: float) -> RequestEnvelope:
        return request_envelope(
            tenant=tenant, alias="m", body=body, stream=True, deadline_ms=in_(seconds)
        )

    leader, rider = asking("hasty", 0.3), asking("patient", 30)
    told = when_told(sink, leader)

    async def vendor_goes_on() -> None:
        await told.wait()
        go_on.set()

    await asyncio.gather(handler.handle(leader), handler.handle(rider), vendor_goes_on())
    await asyncio.gather(*handler.spawned)
    assert calls == ["a"]
    cut = sink.for_(leader.correlation_id)[-1]
    assert cut.error is not None and cut.error["code"] == "deadline_exceeded"
    assert sink.for_(rider.correlation_id)[-1].kind == "final"
    assert text_of(sink, rider) == "".join(f"w{i} " for i in range(8))
    lines = {line.tenant: line for line in sink.ledger}
    assert len(sink.ledger) == 2
    assert lines["hasty"].error_code == "deadline_exceeded" and lines["hasty"].cost > 0
    assert (lines["patient"].status, lines["patient"].cost) == ("ok", 0)


@pytest.mark.parametrize(
    ("scope", "alias_ttl", "stored_ttl"),
    [("global", "dynamic", 60), ("global", 0, None), ("tenant", "dynamic", 30 * 86_400)],
)
async def test_a_producer_cannot_keep_a_shared_answer_past_the_alias_s_ttl(
    scope: str, alias_ttl: str | int, stored_ttl: int | None
) -> None:
    """A service posting straight to the request topic asks 30 days of cache for an
    alias whose TTL is 60 s (or 0: it caches nothing).  Under a ``global`` scope every
    tenant of it would be served that answer for a month: the worker holds the envelope
    to the gateway's rule, the alias's TTL at most (none at all for 0, nor a look-up).
    A tenant's own scope keeps what it asked."""
    from tables.cache import cache_key
    from tests.unit.test_handler import CONFIG, make, vendor

    config = RelayConfig.model_validate(
        {
            **CONFIG.model_dump(mode="json"),
            "models": {"m": {**CONFIG.models["m"].model_dump(mode="json"), "cache_ttl": alias_ttl}},
            "tenants": {"t": {"cache_scope": scope}},
        }
    )
    calls: list[str] = []
    handler, sink = make(vendor(calls), config)
    ttls: dict[str, int] = {}
    cache = sink.cache

    async def kept(key: str, entry: Any, ttl_s: int, *, replacing: bool = False) -> None:
        ttls[key] = ttl_s
        await cache(key, entry, ttl_s, replacing=replacing)

    sink.cache = kept  # type: ignore[method-assign]
    looked: list[str] = []
    cached = sink.cached

    async def look(key: str, *, stale_ok: bool = False) -> Any:
        looked.append(key)
        return await cached(key, stale_ok=stale_ok)

    sink.cached = look  # type: ignore[method-assign]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    month = 30 * 86_400
    env = request_envelope(
        body=body, tenant="t", prompt_hash="any", cache_ttl_s=month, cache_lookup=True
    )
    await handler.handle(env)
    assert calls == ["a"] and sink.for_(env.correlation_id)[-1].kind == "final"
    key = cache_key(
        scope="global" if scope == "global" else "tenant:t", alias="m", endpoint="chat", body=body
    )
    assert ttls == ({} if stored_ttl is None else {key: stored_ttl})
    assert looked == ([] if stored_ttl is None else [key])
