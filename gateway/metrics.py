"""Prometheus metrics of the gateway (served at /metrics)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextvars import ContextVar

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.envelope import UsageEvent
from schemas.errors import RelayError, error_classes

# No ``*_created`` series beside each counter: nothing reads them, and they would double
# the series of the tenant x alias cost grid started at 0.
disable_created_metrics()

# Cache hits take half a millisecond, generations up to the longest deadline a client may
# set (x-relay-timeout: an hour).
_BUCKETS_S: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025)
_BUCKETS_S += (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# The priority lane a request asked for (x-relay-priority): background work may wait on a
# vendor batch for hours and batch work in the rate limiters' lanes, which alerts on the
# realtime lane's latency and errors must not hear of.
LANES = ("realtime", "batch", "background")
_LANE_OF = {lane.encode(): lane for lane in LANES}
_LANE: ContextVar[str] = ContextVar("relay_lane", default="realtime")
REQUESTS = Counter(
    "relay_requests_total",
    "Requests answered, by endpoint, status and priority lane",
    ["endpoint", "status", "priority"],
)
LATENCY = Histogram(
    "relay_request_latency_seconds",
    "Time to the complete answer, by endpoint and priority lane",
    ["endpoint", "priority"],
    buckets=_BUCKETS_S,
)
# A generation's total time says more of its length than of the relay: long outputs and
# reasoning models take minutes to their last token by nature. When its answer starts
# (a stream's first token) is what a slow vendor or a full lane holds up.
TTFB = Histogram(
    "relay_request_ttfb_seconds",
    "Time to the first byte of the answer (a stream's first event, keep-alives aside), "
    "by endpoint and priority lane",
    ["endpoint", "priority"],
    buckets=_BUCKETS_S,
)
# The frames a stream sends while it waits for its first token (gateway/sse.py), declared
# here so the metric that must not take them for the answer's start need not import the
# streams that send them (sse imports this module).
OPENAI_KEEPALIVE = b": keepalive\n\n"  # an SSE comment: clients skip it
ANTHROPIC_PING = b'event: ping\ndata: {"type": "ping"}\n\n'  # Anthropic's own keep-alive
_KEEPALIVES = (OPENAI_KEEPALIVE, ANTHROPIC_PING)
VENDOR_CALLS = Counter(
    "relay_vendor_calls_total", "Answers that took a vendor call", ["vendor", "model"]
)
ERRORS = Counter(
    "relay_errors_total",
    "Errors returned to clients on /v1 (a stream's error event too), by the relay's code, "
    "the HTTP status it stands for and the request's priority lane",
    ["code", "status", "priority"],
)
CACHE = Counter("relay_cache_total", "Cache outcomes: hit-l1, hit-l2, miss, coalesced", ["result"])
# Each process counts the ledger lines it writes (workers: relay_worker_cost_usd_total),
# so the two together add up to the ledger, Batch API lines included.
COST = Counter(
    "relay_cost_usd_total",
    "Vendor cost in the ledger lines this gateway wrote",
    ["tenant", "alias"],
)
SAVED = Counter(
    "relay_saved_usd_total", "Cost saved in the ledger lines this gateway wrote", ["tenant"]
)
DIRECT = Counter(
    "relay_direct_usd_total",
    "What the ledger lines this gateway wrote would have cost sent straight to the vendor "
    "(SaveRate = 1 - cost / direct)",
    ["tenant"],
)
DEGRADED = Counter(
    "relay_degraded_total",
    "Answers routed to a cheaper model, by reason (budget_80pct, rate_pressure...)",
    ["reason"],
)
REDIS_UP = Gauge("relay_redis_up", "1 when the L2 cache (Redis) answers")
WORKERS_MISSING = Gauge(
    "relay_workers_missing_seconds",
    "Seconds since this gateway last saw a worker in the requests consumer group (a look "
    "that could not tell, the broker away, saw none)",
)
# A broker outage leaves gateways answering scrapes, and refusing every uncached request
# with 503s that a quiet relay's error ratio never pages on: this gauge is what does.
BROKER_UP = Gauge(
    "relay_broker_up",
    "1 when the broker (Kafka) answered this gateway's last look: every few seconds, and /readyz",
)
IN_FLIGHT = Gauge("relay_in_flight", "Requests waiting on a reply")


def count_error(err: RelayError, lane: str | None = None) -> None:
    """An error a client hears, in ``lane``: by default the lane of the request being
    answered, as ``Measure`` set it (a stream's error event)."""
    ERRORS.labels(err.code, str(err.status), lane or _LANE.get()).inc()


def start_error_series() -> None:
    """Every error's series at 0 from the start: a counter first scraped at 150 adds
    nothing to rate(), so the first burst after a deploy would not show."""
    for cls in error_classes():
        for lane in LANES:
            ERRORS.labels(cls.code, str(cls.status), lane)


def lane_of(scope: Scope) -> str:
    """The request's ``x-relay-priority`` (realtime unless it names another lane; a value
    that names none is the request's 400, counted as realtime)."""
    for name, value in scope.get("headers", ()):
        if name == b"x-relay-priority":
            return _LANE_OF.get(value.strip().lower(), "realtime")
    return "realtime"


def count_line(event: UsageEvent) -> None:
    """A ledger line this gateway writes: its cost and saving."""
    COST.labels(event.tenant, event.alias).inc(event.cost)
    SAVED.labels(event.tenant).inc(event.saved_cost)
    DIRECT.labels(event.tenant).inc(event.direct_cost)


def start_cost_series(tenants: Iterable[tuple[str, Iterable[str]]]) -> None:
    """Every tenant's cost series at 0 from the start: a counter born with its first
    line's cost in it hides that cost from rate() and increase()."""
    for tenant, aliases in tenants:
        for alias in aliases:
            COST.labels(tenant, alias)
        SAVED.labels(tenant)
        DIRECT.labels(tenant)


class Measure:
    """Counts and times every /v1 request (plain ASGI: Starlette's BaseHTTPMiddleware
    would cost more per request than a cache hit does): to its complete answer, and to
    the answer's first byte (a stream's keep-alives are none; a request that sent no
    byte of an answer, an error before it or a client gone, has no first byte).

    The ``endpoint`` label is the route's template (``/v1/files/{file_id}``, also for a
    request the edge refused before routing), one of the ``known`` paths the edge answers
    itself, or ``unmatched`` for a path no route knows: never the raw
    path, where every file or batch id, and every path a scanner makes up, would start
    series of its own and grow the gateway's memory and Prometheus' without end.
    """

    def __init__(
        self, app: ASGIApp, known: Iterable[str] = (), routes: Iterable[BaseRoute] = ()
    ) -> None:
        self.app = app
        self.known = frozenset(known)
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None
        answered = False  # a byte of the answer sent (a keep-alive is none)
        endpoint: str | None = None  # worked out once, at the first byte or at the end
        lane = lane_of(scope)
        lane_set = _LANE.set(lane)

        async def send_status(message: Message) -> None:
            # Once the answer has started, a stream's every chunk costs this one check.
            nonlocal status, answered, endpoint
            if not answered:
                if message["type"] == "http.response.start":
                    status = message["status"]
                elif (body := message.get("body")) and body not in _KEEPALIVES:
                    answered = True
                    waited = time.perf_counter() - started
                    endpoint = self._endpoint(scope, path)
                    TTFB.labels(endpoint, lane).observe(waited)
            await send(message)

        failed = True
        try:
            await self.app(scope, receive, send_status)
            failed = False
        finally:
            # No answer started: the app failed (500), or the client left before there
            # was anything to answer (499, as nginx logs it; the routes count it so too).
            if status is None:
                status = 500 if failed else 499
            if endpoint is None:
                endpoint = self._endpoint(scope, path)
            REQUESTS.labels(endpoint, str(status), lane).inc()
            LATENCY.labels(endpoint, lane).observe(time.perf_counter() - started)
            _LANE.reset(lane_set)

    def _endpoint(self, scope: Scope, path: str) -> str:
        template = getattr(scope.get("route"), "path", None)  # set by the router it reached
        if isinstance(template, str):
            return template
        if path in self.known:
            return path
        # Answered before routing (the edge's 401, 413, 429): the route the router would
        # have taken, so a refused upload counts as /v1/files, not as a scanner's path.
        for route in self.routes:
            if route.matches(scope)[0] is not Match.NONE:
                return getattr(route, "path", "unmatched")
        return "unmatched"
