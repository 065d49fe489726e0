"""The gateway's request metrics are labelled by route, never by raw path."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY

from gateway.metrics import Measure


def count(endpoint: str, status: str, priority: str = "realtime") -> float:
    labels = {"endpoint": endpoint, "status": status, "priority": priority}
    return REGISTRY.get_sample_value("relay_requests_total", labels) or 0.0


async def test_ids_and_unknown_paths_do_not_become_labels() -> None:
    app = FastAPI()

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> dict[str, str]:
        return {"id": file_id}

    app.add_middleware(Measure, known={"/v1/chat/completions"})
    before = {
        "file": count("/v1/files/{file_id}", "200"),
        "unmatched": count("unmatched", "404"),
    }
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as http:
        for file_id in ("file-a", "file-b", "file-c"):
            assert (await http.get(f"/v1/files/{file_id}")).status_code == 200
        assert (await http.get("/v1/wp-login.php")).status_code == 404
        assert (await http.get("/v1/chat/completions")).status_code == 404

    assert count("/v1/files/{file_id}", "200") - before["file"] == 3
    assert count("unmatched", "404") - before["unmatched"] == 1
    assert count("/v1/chat/completions", "404") >= 1  # a known path keeps its name
    assert count("/v1/files/file-a", "200") == 0
    assert count("/v1/wp-login.php", "404") == 0


def errors(code: str, status: str, priority: str = "realtime") -> float:
    labels = {"code": code, "status": status, "priority": priority}
    return REGISTRY.get_sample_value("relay_errors_total", labels) or 0.0


async def test_errors_are_counted_on_v1_only_and_inside_streams_too() -> None:
    """A scanner's 404s off /v1 are no requests (relay_requests_total counts /v1 only), so
    counting them as errors made an error ratio of nothing; an error event that ends a
    started stream is an error the client got, though its status was 200."""
    from schemas.envelope import ReplyEvent
    from schemas.errors import VendorUnavailable
    from tests.support.gateway import AUTH, answer_hello, client, gateway_app

    def breaks(env):  # type: ignore[no-untyped-def]
        first = answer_hello(env)[0]
        err = VendorUnavailable("the vendor's stream broke").to_dict()
        return [
            first,
            (0.0, ReplyEvent(correlation_id=env.correlation_id, kind="error", error=err)),
        ]

    app, _ = gateway_app(breaks)
    before = errors("not_found", "404"), errors("vendor_unavailable", "502")
    async with client(app) as http:
        assert (await http.get("/wp-login.php")).status_code == 404
        assert (await http.get("/v1/no-such-thing")).status_code == 404
        body = {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        }
        streamed = await http.post("/v1/chat/completions", json=body, headers=AUTH)
        assert streamed.status_code == 200 and "the vendor's stream broke" in streamed.text
    assert errors("not_found", "404") - before[0] == 1
    assert errors("vendor_unavailable", "502") - before[1] == 1


def test_a_breaker_past_its_open_period_shows_half_open_not_open() -> None:
    """The table says open until a call's outcome is folded, which an idle model may never
    have; past open_s the next call is a probe, and the gauge says so (no alert for good)."""
    import time

    from streams.metrics import WorkerState

    now = time.time()
    health = {
        "v/just-opened": {"state": "open", "opened_at": now - 1},
        "v/long-ago": {"state": "open", "opened_at": now - 60},
        "v/fine": {"state": "closed"},
    }
    [*_, breakers, _] = WorkerState(lambda: 0, lambda: 0, lambda: health, open_s=10).collect()
    states = {s.labels["model"]: s.value for s in breakers.samples}
    assert states == {"just-opened": 2, "long-ago": 1, "fine": 0}


def test_breaker_openings_are_counted_from_the_shared_table() -> None:
    """A vendor that hangs, or a model with little traffic, spends little time shown
    open; the openings count is what says a breaker keeps failing its probes."""
    from schemas.envelope import HealthEvent
    from streams.metrics import WorkerState
    from tables.health import BreakerPolicy, Health, fold

    policy = BreakerPolicy(consecutive_failures=1, open_s=1.0)
    h, at = Health(), 1000.0
    for offset in range(3):  # fails, then each probe after the open period fails too
        ev = HealthEvent(
            vendor="v", model="m", ok=False, latency_ms=10, error_code="vendor_unavailable",
            ts_ms=int(at * 1000),
        )  # fmt: skip
        h = fold(h, [ev], offset, policy, at) or h
        at += 2.0
    assert h.opened == 3
    table = {"v/m": h.model_dump(mode="json")}
    [*_, opened] = WorkerState(lambda: 0, lambda: 0, lambda: table).collect()
    [sample] = [s for s in opened.samples if s.name.endswith("_total")]
    assert (sample.name, sample.labels, sample.value) == (
        "relay_worker_breaker_opened_total",
        {"vendor": "v", "model": "m"},
        3.0,
    )


def test_cost_series_start_at_zero_and_direct_cost_is_counted() -> None:
    """A counter born with its first line's cost in it hides that cost from increase();
    and SaveRate needs what the lines would have cost sent straight."""
    from prometheus_client import REGISTRY

    from gateway import metrics
    from schemas.envelope import UsageEvent

    metrics.start_cost_series([("zero-tenant", ["alias-a", "alias-b"])])
    value = REGISTRY.get_sample_value
    labels = {"tenant": "zero-tenant", "alias": "alias-b"}
    assert value("relay_cost_usd_total", labels) == 0.0
    assert value("relay_direct_usd_total", {"tenant": "zero-tenant"}) == 0.0
    line = UsageEvent(
        event_id="e1", trace_id="t1", tenant="zero-tenant", key_id="k", alias="alias-a",
        cost=0.0, saved_cost=0.25, direct_cost=0.25,
    )  # fmt: skip
    metrics.count_line(line)
    assert value("relay_direct_usd_total", {"tenant": "zero-tenant"}) == 0.25


def test_an_empty_metrics_token_leaves_metrics_open() -> None:
    """Compose's ${RELAY_METRICS_TOKEN:-} sets it empty: that is no token, not one that
    no scrape can ever send."""
    from schemas.settings import Settings

    assert Settings(metrics_token="").scrape_allowed(None)
    guarded = Settings(metrics_token="s3cret-token")
    assert not guarded.scrape_allowed(None) and guarded.scrape_allowed("Bearer s3cret-token")


def test_error_and_vendor_call_series_start_at_zero() -> None:
    """A series first scraped at 150 adds nothing to rate(): the first burst of errors
    after a deploy would not show on the dashboard or in the alerts."""
    from gateway import metrics
    from streams import metrics as worker_metrics

    metrics.start_error_series()
    worker_metrics.start_call_series([("zero-vendor", "zero-model")])
    value = REGISTRY.get_sample_value
    for code, status in (("vendor_unavailable", "502"), ("budget_exceeded", "402")):
        for lane in ("realtime", "batch", "background"):
            labels = {"code": code, "status": status, "priority": lane}
            assert value("relay_errors_total", labels) is not None
    for outcome in ("ok", "vendor_unavailable", "deadline_exceeded"):
        labels = {"vendor": "zero-vendor", "model": "zero-model", "outcome": outcome}
        assert value("relay_worker_vendor_calls_total", labels) == 0.0


async def test_a_client_gone_before_its_body_was_read_is_a_499_not_a_500() -> None:
    from tests.support.gateway import DEMO_KEY, gateway_app

    app, _ = gateway_app()
    before = {s: count("/v1/chat/completions", s) for s in ("499", "500")}
    messages = [
        {"type": "http.request", "body": b'{"model": "gpt-4o-mini", "mess', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive():  # type: ignore[no-untyped-def]
        return messages.pop(0)

    sent: list[dict] = []

    async def send(message):  # type: ignore[no-untyped-def]
        sent.append(message)

    headers = [
        (b"host", b"relay"),
        (b"authorization", f"Bearer {DEMO_KEY}".encode()),
        (b"content-type", b"application/json"),
        (b"transfer-encoding", b"chunked"),
    ]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 5000), "server": ("relay", 80), "state": {},
    }  # fmt: skip
    await app(scope, receive, send)
    assert sent == []
    after = {s: count("/v1/chat/completions", s) for s in ("499", "500")}
    assert (after["499"] - before["499"], after["500"] - before["500"]) == (1, 0)


async def test_a_request_the_edge_refuses_counts_under_the_route_it_asked_for() -> None:
    """The edge answers a write with no known key before routing: the refused upload is
    still /v1/files (its latency alert leaves uploads out), not a scanner's `unmatched`."""
    from tests.support.gateway import answer_hello, client, gateway_app

    app, _ = gateway_app(answer_hello)
    before = count("/v1/files", "401"), count("/v1/batches/{batch_id}/cancel", "401")
    async with client(app) as http:
        nobody = {"authorization": ""}
        assert (await http.post("/v1/files", content=b"x", headers=nobody)).status_code == 401
        cancel = await http.post("/v1/batches/batch_1/cancel", headers=nobody)
        assert cancel.status_code == 401
    assert count("/v1/files", "401") - before[0] == 1
    assert count("/v1/batches/{batch_id}/cancel", "401") - before[1] == 1


async def test_requests_and_errors_are_counted_in_the_lane_the_request_asked_for() -> None:
    """Background work may wait hours on a vendor batch: alerts on the realtime lane's
    latency and errors filter on ``priority`` and never hear of it."""
    from gateway import metrics
    from schemas.errors import VendorUnavailable

    app = FastAPI()

    @app.post("/v1/lanes")
    async def failing_softly() -> dict[str, str]:
        metrics.count_error(VendorUnavailable("down"))  # as a stream's error event is
        return {}

    app.add_middleware(Measure)
    asked = {"background": "background", "BATCH ": "batch", "soon": "realtime", None: "realtime"}
    before = {lane: (count("/v1/lanes", "200", lane), errors("vendor_unavailable", "502", lane))
              for lane in set(asked.values())}  # fmt: skip
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as http:
        for header in asked:
            headers = {} if header is None else {"x-relay-priority": header}
            assert (await http.post("/v1/lanes", headers=headers)).status_code == 200
    for lane, (requests, failed) in before.items():
        times = list(asked.values()).count(lane)
        assert count("/v1/lanes", "200", lane) - requests == times
        assert errors("vendor_unavailable", "502", lane) - failed == times
    latency = REGISTRY.get_sample_value(
        "relay_request_latency_seconds_count", {"endpoint": "/v1/lanes", "priority": "background"}
    )
    assert latency == 1


def test_a_ledger_line_that_says_less_than_nothing_is_counted_as_nothing() -> None:
    """A counter refuses a negative amount by raising, which must never cost the worker
    the ledger line being written; nor may a vendor's negative token count make one."""
    from schemas.envelope import UsageEvent
    from schemas.usage import Usage
    from streams import metrics

    before = REGISTRY.get_sample_value("relay_worker_cost_usd_total", {"tenant": "t", "alias": "a"})
    line = UsageEvent(
        event_id="e1", trace_id="t1", tenant="t", key_id="k", alias="a",
        cost=-0.5, saved_cost=-0.5, direct_cost=-0.5,
    )  # fmt: skip
    metrics.count_line(line, {"t"}, {"a"})
    after = REGISTRY.get_sample_value("relay_worker_cost_usd_total", {"tenant": "t", "alias": "a"})
    assert (after or 0.0) == (before or 0.0)
    usage = Usage.from_openai({"prompt_tokens": 10, "completion_tokens": -100000})
    assert (usage.input_tokens, usage.output_tokens) == (10, 0)


async def test_a_relay_bug_is_counted_in_the_lane_of_the_request_that_hit_it() -> None:
    """The catch-all handler answers from Starlette's ServerErrorMiddleware, outside
    ``Measure``, once the lane it set is gone: the 500 and its error must still land in
    the same lane, or a batch-lane crash loop pages on the realtime error ratio."""
    from gateway import errors as error_handlers

    app = FastAPI()
    error_handlers.install(app)

    @app.post("/v1/embeddings")
    async def broken() -> None:
        raise ValueError("a bug")

    app.add_middleware(Measure, routes=app.routes)
    lanes = ("realtime", "batch")
    before = {lane: (count("/v1/embeddings", "500", lane), errors("internal_error", "500", lane))
              for lane in lanes}  # fmt: skip
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as http:
        answer = await http.post("/v1/embeddings", headers={"x-relay-priority": "batch"})
        assert answer.status_code == 500
    assert count("/v1/embeddings", "500", "batch") - before["batch"][0] == 1
    assert errors("internal_error", "500", "batch") - before["batch"][1] == 1
    assert errors("internal_error", "500", "realtime") - before["realtime"][1] == 0
