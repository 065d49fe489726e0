"""The worker's Prometheus metrics, served on ``RELAY_WORKER_METRICS_PORT`` (0: off).

Vendor calls, their latency and the breakers are measured here rather than at the
gateway: only a worker sees every call (fallbacks, retries, batches) and the breakers'
states.  The endpoint runs on the worker's own event loop (aiohttp), so a scrape reads the
tables between two events, never while an agent writes them.

``relay_unsent_lines_total``, a gateway's as much as a worker's, is kept by the producer
both write ledger, audit and dead-letter lines with (``streams.producers``), and served on
each one's /metrics from the default registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.envelope import UsageEvent

disable_created_metrics()  # nothing reads them; they would double the series

VENDOR_CALLS = Counter(
    "relay_worker_vendor_calls_total",
    "Vendor calls made by workers, by outcome (ok, or the relay's error code)",
    ["vendor", "model", "outcome"],
)
# From 5 ms (a local model, a vendor's cached answer) to the longest call a deadline allows.
_VENDOR_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)
_VENDOR_BUCKETS_S += (10, 30, 60, 120, 300, 600, 1800, 3600)
VENDOR_LATENCY = Histogram(
    "relay_worker_vendor_latency_seconds",
    "Vendor call latency seen by workers (to the full answer, or the stream's end)",
    ["vendor", "model"],
    buckets=_VENDOR_BUCKETS_S,
)
BATCH_LINES = Counter(
    "relay_worker_batch_lines_total",
    "Batch API lines recorded, by outcome (succeeded, errored, canceled, expired)",
    ["outcome"],
)
# The ledger lines this worker wrote (gateways count theirs in relay_cost_usd_total):
# together the two add up to the ledger.
COST = Counter(
    "relay_worker_cost_usd_total",
    "Vendor cost in the ledger lines this worker wrote",
    ["tenant", "alias"],
)
SAVED = Counter(
    "relay_worker_saved_usd_total", "Cost saved in the ledger lines this worker wrote", ["tenant"]
)
DIRECT = Counter(
    "relay_worker_direct_usd_total",
    "What the ledger lines this worker wrote would have cost sent straight to the vendor",
    ["tenant"],
)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class WorkerState(Collector):
    """Gauges read when scraped: requests in flight, the batch lane's queue, breakers."""

    def __init__(
        self,
        in_flight: Callable[[], int],
        lane_queued: Callable[[], int],
        health: Callable[[], Mapping[str, Any]],
        open_s: float = 10.0,
    ) -> None:
        self.in_flight = in_flight
        self.lane_queued = lane_queued
        self.health = health
        self.open_s = open_s

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "relay_worker_in_flight",
            "Requests this worker took and has not answered",
            self.in_flight(),
        )
        yield GaugeMetricFamily(
            "relay_worker_batch_lane_queued",
            "Background requests waiting to go out in a vendor batch",
            self.lane_queued(),
        )
        breakers = GaugeMetricFamily(
            "relay_worker_breaker_state",
            "Circuit breaker per vendor model: 0 closed, 1 half-open, 2 open",
            labels=["vendor", "model"],
        )
        opened = CounterMetricFamily(
            "relay_worker_breaker_opened",
            "Times each vendor model's circuit breaker opened, or opened again after a "
            "failed probe (from the shared health table: every worker says the same)",
            labels=["vendor", "model"],
        )
        now = time.time()
        for key, raw in self.health().items():
            vendor, _, model = str(key).partition("/")
            state = raw.get("state", "closed") if isinstance(raw, dict) else "closed"
            if isinstance(raw, dict):
                opened.add_metric([vendor, model], float(raw.get("opened") or 0))
            if state == "open" and (raw.get("opened_at") or 0) + self.open_s <= now:
                # Its open period is over: the next call is let through as a probe.  The
                # table says "open" until a call's outcome is folded, which an idle model
                # may never have; shown as open, it would hold its alert up for good.
                state = "half_open"
            breakers.add_metric([vendor, model], BREAKER_STATES.get(state, 0))
        yield breakers
        yield opened


async def serve(
    host: str, port: int, state: WorkerState, allowed: Callable[[str | None], bool]
) -> web.AppRunner:
    """Start ``GET /metrics`` on ``host:port`` for scrapes ``allowed`` lets through (by
    their Authorization header); the caller cleans the runner up."""
    REGISTRY.register(state)

    async def metrics(request: web.Request) -> web.Response:
        if not allowed(request.headers.get("authorization")):
            return web.Response(status=401, text="metrics need the scrape token\n")
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


UNKNOWN = "unknown"  # the label of a tenant or alias the config does not name


def count_line(event: UsageEvent, tenants: Container[str], aliases: Container[str]) -> None:
    """A ledger line this worker writes: its cost, saving and direct cost, under its
    tenant and alias when the config (``tenants``, ``aliases``) names them, else under
    ``unknown``.  An envelope put straight on the requests topic can name anything, and
    its refusal's line must not make series of its own (one each, for ever)."""
    tenant = event.tenant if event.tenant in tenants else UNKNOWN
    alias = event.alias if event.alias in aliases else UNKNOWN
    # Counters only go up (a negative amount raises, which would cost the line itself):
    # a line that says less than nothing counts as nothing here.
    COST.labels(tenant, alias).inc(max(0.0, event.cost))
    SAVED.labels(tenant).inc(max(0.0, event.saved_cost))
    DIRECT.labels(tenant).inc(max(0.0, event.direct_cost))


def start_cost_series(tenants: Iterable[tuple[str, Iterable[str]]]) -> None:
    """Every tenant's cost series at 0 from the start (see the gateway's twin), those
    ``count_line`` puts under ``unknown`` included: each tenant's unknown alias, and the
    unknown tenant's with every alias a tenant may use and the unknown one."""
    every_alias = {UNKNOWN}
    for tenant, aliases in tenants:
        named = {*aliases, UNKNOWN}
        every_alias |= named
        _start_tenant(tenant, named)
    _start_tenant(UNKNOWN, every_alias)


def _start_tenant(tenant: str, aliases: Iterable[str]) -> None:
    for alias in aliases:
        COST.labels(tenant, alias)
    SAVED.labels(tenant)
    DIRECT.labels(tenant)


# The outcomes a vendor call most often has, started at 0 for every configured model.
COMMON_OUTCOMES = (
    "ok",
    "vendor_error",
    "vendor_unavailable",
    "vendor_overloaded",
    "vendor_rate_limited",
    "vendor_auth_failed",
    "deadline_exceeded",
)


def start_call_series(models: Iterable[tuple[str, str]]) -> None:
    """Every configured (vendor, model)'s common outcomes at 0 from the start, so the
    first failures after a deploy count in rate() (a series born at 150 adds nothing)."""
    for vendor, model in models:
        for outcome in COMMON_OUTCOMES:
            VENDOR_CALLS.labels(vendor, model, outcome)
