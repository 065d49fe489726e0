"""Resilience, end to end: fallback under vendor faults, the circuit breaker, 429 storms,
vendor health surviving a worker restart, key pools and fallback across wire formats.

Every vendor here is one of this module's own simulators, so the faults injected through
``configure`` disturb no other module; each vendor model serves one alias, so the
simulators' per-model call counts are one test's alone.  Vendor health is read from what the simulators
count (a vendor the breaker shuts out sees no calls), never from the relay's internals.
The worker's /metrics is read only to know when an outcome has reached its health table
(the breaker opened, closed): a test waits for that, never for a fixed time, since a
loaded machine can take longer than any such time for the trip through Kafka.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.config import hash_key
from schemas.errors import NoHealthyVendor, RateLimited, VendorRateLimited
from tests.integration.conftest import WORKDIR, worker_env
from tests.support.stack import (
    DEMO_KEY,
    SIM_KEY,
    Simulator,
    Stack,
    free_port,
    spawn,
    start_simulator,
)

T = TypeVar("T")


class Breaker(NamedTuple):
    state: int  # 0 closed, 1 half-open (open, its open_s over), 2 open
    opened: int  # times it opened


OPEN_S = 2.0  # the module stack's breaker stays open this long
TRIP = 3  # ... after this many failures in a row
GOOD_KEY_ENV, BAD_KEY_ENV = "RELAY_TEST_POOL_GOOD_KEY", "RELAY_TEST_POOL_BAD_KEY"
FALLBACK = "gpt-4o-mini"
# Vendor models the simulator always fails by name, so no test need configure a fault.
BROKEN = "gpt-4o-mini-fail500-reopening"
THROTTLED = "gpt-4o-mini-fail429-storm"
SATURATED = "gpt-4o-mini-fail429-breaker"
BROKEN_CLAUDE = "claude-haiku-4-5-fail500"
DEAD = "gpt-4o-mini-fail500-restart"
OVERLOADED_CLAUDE = "claude-haiku-4-5-overloaded"  # a 200 stream that errors before text


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, Simulator]]:
    """flaky: 30 % 5xx; toggled: faults switched on and off by the breaker tests;
    steady: the healthy fallback, which also fails the models named to fail."""
    names = ("flaky", "toggled", "steady")
    with ThreadPoolExecutor(len(names)) as pool:
        started = pool.map(
            lambda _: start_simulator(WORKDIR / "sim-resilience", latency_ms=5), names
        )
        by_name = dict(zip(names, started, strict=True))
    yield by_name
    for sim in by_name.values():
        sim.proc.stop()


def vendor(sim: Simulator, kind: str = "openai", **extra: Any) -> dict[str, Any]:
    base = sim.url + "/v1" if kind == "openai" else sim.url
    spec = {"kind": kind, "base_url": base, "api_key_env": "RELAY_SIM_KEY", **extra}
    if kind == "anthropic":
        spec["api_version"] = "2023-06-01"
    return spec


def cand(vendor_name: str, model: str, price: float) -> dict[str, Any]:
    return {"vendor": vendor_name, "model": model, "input_per_1m": price, "output_per_1m": price}


def with_fallback(primary: str, model: str) -> dict[str, Any]:
    """An alias whose cheaper candidate is ``primary``, with ``steady`` as the fallback."""
    return {"candidates": [cand(primary, model, 0.1), cand("steady", FALLBACK, 5.0)]}


def tenants() -> dict[str, Any]:
    demo = hash_key(DEMO_KEY)
    return {"demo": {"keys": [{"id": "demo-key", "sha256": demo}], "models": ["*"]}}


@pytest.fixture(scope="module")
def metrics() -> str:
    """The module stack's worker's /metrics."""
    return f"http://127.0.0.1:{free_port()}/metrics"


def metrics_env(url: str) -> dict[str, str]:
    return {"RELAY_WORKER_METRICS_PORT": url.rsplit(":", 1)[1].split("/")[0]}


@pytest.fixture(scope="module")
def stack(stack_factory: Any, sims: dict[str, Simulator], metrics: str) -> Stack:
    steady, toggled = sims["steady"], sims["toggled"]
    pooled = vendor(steady, api_keys_env=[GOOD_KEY_ENV, BAD_KEY_ENV])
    del pooled["api_key_env"]
    cfg = {
        "vendors": {
            "flaky": vendor(sims["flaky"]),
            "steady": vendor(steady),
            "tripping": vendor(toggled),
            "recovering": vendor(toggled),
            "broken": vendor(steady),
            "throttled": vendor(steady),
            "saturated": vendor(steady),
            "pooled": pooled,
            "claude": vendor(steady, "anthropic"),
        },
        "models": {
            "flaky": with_fallback("flaky", "gpt-4o-mini-flaky"),
            "tripping": with_fallback("tripping", "gpt-4o-mini-tripping"),
            "recovering": with_fallback("recovering", "gpt-4o-mini-recovering"),
            "reopening": with_fallback("broken", BROKEN),
            "throttled": {"candidates": [cand("throttled", THROTTLED, 0.1)]},
            "saturated": {"candidates": [cand("saturated", SATURATED, 0.1)]},
            "pooled": {"candidates": [cand("pooled", "gpt-4o-mini-pooled", 0.1)]},
            "cross": with_fallback("claude", BROKEN_CLAUDE),
            "overloaded": with_fallback("claude", OVERLOADED_CLAUDE),
        },
        "tenants": tenants(),
        "breaker": {"consecutive_failures": TRIP, "open_s": OPEN_S},
    }
    # The simulator knows SIM_KEY only: the pool's second key is rejected with a 401.
    keys = {GOOD_KEY_ENV: SIM_KEY, BAD_KEY_ENV: "sk-revoked-by-the-vendor"}
    return stack_factory(cfg, extra_env={**keys, **metrics_env(metrics)})  # type: ignore[no-any-return]


async def chat(
    http: httpx.AsyncClient,
    stack: Stack,
    alias: str,
    *,
    timeout_s: float = 30,
    stream: bool = False,
) -> httpx.Response:
    """One OpenAI-format chat with a prompt never asked before, past the cache."""
    body: dict[str, Any] = {
        "model": alias,
        "messages": [{"role": "user", "content": f"tell me about {uuid.uuid4().hex}"}],
        "max_tokens": 16,
        "stream": stream,
    }
    headers = {
        "authorization": f"Bearer {DEMO_KEY}",
        "x-relay-cache": "bypass",
        "x-relay-timeout": str(timeout_s),
    }
    return await http.post(
        f"{stack.url}/v1/chat/completions", json=body, headers=headers, timeout=timeout_s + 10
    )


async def sequential(
    http: httpx.AsyncClient, stack: Stack, alias: str, n: int
) -> list[httpx.Response]:
    return [await chat(http, stack, alias) for _ in range(n)]


async def bounded(n: int, concurrency: int, one: Callable[[int], Awaitable[T]]) -> list[T]:
    """``one(i)`` for i < n, at most ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def run(i: int) -> T:
        async with gate:
            return await one(i)

    return await asyncio.gather(*(run(i) for i in range(n)))


def calls(sim: Simulator, model: str) -> int:
    """Calls ``sim`` has had for ``model`` (each vendor model here serves one alias)."""
    return int(sim.stats()["calls"].get(model, 0))


def served_by(replies: list[httpx.Response]) -> list[str | None]:
    return [r.headers.get("x-relay-vendor") if r.status_code == 200 else None for r in replies]


def statuses(replies: list[httpx.Response]) -> list[int]:
    return [r.status_code for r in replies]


async def breaker(http: httpx.AsyncClient, metrics: str, vendor: str, model: str) -> Breaker:
    """The worker's breaker for ``vendor``'s ``model`` as its /metrics shows it (read from
    the health table its router reads); closed and never opened when it has no record."""
    found = {
        (s.name, s.labels.get("vendor"), s.labels.get("model")): s.value
        for family in text_string_to_metric_families((await http.get(metrics)).text)
        for s in family.samples
    }
    state = found.get(("relay_worker_breaker_state", vendor, model), 0.0)
    return Breaker(
        int(state), int(found.get(("relay_worker_breaker_opened_total", vendor, model), 0))
    )


async def until_breaker(
    http: httpx.AsyncClient,
    metrics: str,
    vendor: str,
    model: str,
    ready: Callable[[Breaker], bool],
    within_s: float = 20.0,
) -> None:
    """Wait until the worker's health table has folded the outcomes sent so far, as far as
    ``ready`` says (a breaker opened once more, closed)."""
    deadline = time.monotonic() + within_s
    while not ready(seen := await breaker(http, metrics, vendor, model)):
        assert time.monotonic() < deadline, f"{vendor}/{model}: {seen}"
        await asyncio.sleep(0.05)


async def open_breaker(
    http: httpx.AsyncClient,
    stack: Stack,
    metrics: str,
    alias: str,
    sim: Simulator,
    vendor: str,
    model: str,
) -> float:
    """Send requests to a failing primary until its breaker trips, and wait until the
    worker has it open; returns when the trip's last reply came (monotonic), which is
    after the breaker opened (at that failure)."""
    before, opened = calls(sim, model), (await breaker(http, metrics, vendor, model)).opened
    replies = await sequential(http, stack, alias, TRIP)
    tripped = time.monotonic()
    assert served_by(replies) == ["steady"] * TRIP, statuses(replies)
    assert calls(sim, model) - before == TRIP, "each request tried the primary, then fell back"
    await until_breaker(http, metrics, vendor, model, lambda b: b.opened > opened)
    return tripped


async def at_once(
    http: httpx.AsyncClient, stack: Stack, alias: str, n: int
) -> list[httpx.Response]:
    """``n`` requests together: those meant to land inside an open window (OPEN_S) do,
    however slow each round trip is on a loaded machine, as they would not in turn."""
    return list(await asyncio.gather(*(chat(http, stack, alias) for _ in range(n))))


async def until_open_s_passed(tripped: float) -> None:
    await asyncio.sleep(max(0.0, tripped + OPEN_S + 0.3 - time.monotonic()))


async def test_fallback_keeps_success_above_three_nines_with_a_30pct_failing_primary(
    stack: Stack, sims: dict[str, Simulator]
):
    sims["flaky"].configure(error_rate=0.3, seed=1234)
    total = 300
    async with httpx.AsyncClient() as http:
        replies = await bounded(total, 16, lambda _: chat(http, stack, "flaky"))
    ok = sum(r.status_code == 200 for r in replies)
    rate = ok / total
    failed = [(r.status_code, r.text[:200]) for r in replies if r.status_code != 200]
    faults = sum(sims["flaky"].stats()["faults"].values())
    assert rate >= 0.999, f"client success {rate:.2%} ({ok}/{total}); failures: {failed[:5]}"
    assert faults > 0, "the primary really failed some calls"
    assert {"flaky", "steady"} <= set(served_by(replies)), "both candidates served"


async def test_breaker_opens_then_a_probe_closes_it_and_traffic_returns(
    stack: Stack, sims: dict[str, Simulator], metrics: str
):
    sim, model = sims["toggled"], "gpt-4o-mini-tripping"
    sim.configure(error_rate=0.0)
    async with httpx.AsyncClient() as http:
        warm = await sequential(http, stack, "tripping", 3)
        assert served_by(warm) == ["tripping"] * 3, "the cheapest candidate serves when healthy"

        sim.configure(error_rate=1.0)
        tripped = await open_breaker(http, stack, metrics, "tripping", sim, "tripping", model)
        shut = calls(sim, model)
        while_open = await at_once(http, stack, "tripping", 5)
        assert time.monotonic() - tripped < OPEN_S, "still inside the open window"
        assert served_by(while_open) == ["steady"] * 5
        assert calls(sim, model) == shut, "an open breaker sends nothing to the primary"

        sim.configure(error_rate=0.0)
        await until_open_s_passed(tripped)
        [probe] = await sequential(http, stack, "tripping", 1)
        assert calls(sim, model) == shut + 1, "after open_s one probe reaches the primary"
        assert served_by([probe]) == ["tripping"], "the probe succeeded"
        await until_breaker(http, metrics, "tripping", model, lambda b: b.state == 0)
        back = await sequential(http, stack, "tripping", 5)
        assert served_by(back) == ["tripping"] * 5, "traffic returns to the cheapest"
        assert calls(sim, model) == shut + 6


async def test_a_failed_probe_opens_the_breaker_again(
    stack: Stack, sims: dict[str, Simulator], metrics: str
):
    sim = sims["steady"]  # BROKEN always answers 500
    async with httpx.AsyncClient() as http:
        tripped = await open_breaker(http, stack, metrics, "reopening", sim, "broken", BROKEN)
        shut = calls(sim, BROKEN)
        opened = (await breaker(http, metrics, "broken", BROKEN)).opened
        await until_open_s_passed(tripped)
        [probe] = await sequential(http, stack, "reopening", 1)
        assert served_by([probe]) == ["steady"]
        assert calls(sim, BROKEN) == shut + 1, "after open_s one probe reaches the primary"
        # The probe's failure folded (the breaker opened again, or it never will: then
        # this waits in vain and says so); the next requests land in the new window.
        await until_breaker(http, metrics, "broken", BROKEN, lambda b: b.opened > opened)
        after = await at_once(http, stack, "reopening", 5)
        assert served_by(after) == ["steady"] * 5
        reached = calls(sim, BROKEN) - shut - 1
        assert reached == 0, (
            f"the probe failed, so the breaker should be open again for {OPEN_S}s, "
            f"but {reached} of the next 5 requests still went to the failing primary"
        )


async def test_a_closed_breaker_opens_again_on_new_failures(
    stack: Stack, sims: dict[str, Simulator], metrics: str
):
    sim, model = sims["toggled"], "gpt-4o-mini-recovering"
    async with httpx.AsyncClient() as http:
        sim.configure(error_rate=1.0)
        tripped = await open_breaker(http, stack, metrics, "recovering", sim, "recovering", model)
        sim.configure(error_rate=0.0)
        await until_open_s_passed(tripped)
        [probe] = await sequential(http, stack, "recovering", 1)
        # Until the probe's success is folded this worker has no second probe to give.
        await until_breaker(http, metrics, "recovering", model, lambda b: b.state == 0)
        healed = [probe, *await sequential(http, stack, "recovering", 2)]
        assert served_by(healed) == ["recovering"] * 3, "the probe closed the breaker"

        sim.configure(error_rate=1.0)
        await open_breaker(http, stack, metrics, "recovering", sim, "recovering", model)
        shut = calls(sim, model)
        after = await at_once(http, stack, "recovering", 5)
        sim.configure(error_rate=0.0)
        assert served_by(after) == ["steady"] * 5
        reached = calls(sim, model) - shut
        assert reached == 0, (
            f"{TRIP} new failures in a row should open the breaker again, "
            f"but {reached} of the next 5 requests still went to the failing primary"
        )


def rate_limit_shaped(reply: httpx.Response) -> None:
    """A throttled answer, as the error tree documents it: VendorRateLimited or the
    relay's own RateLimited (429), or NoHealthyVendor (503); always with Retry-After."""
    documented = {
        VendorRateLimited.code: VendorRateLimited.status,
        RateLimited.code: RateLimited.status,
        NoHealthyVendor.code: NoHealthyVendor.status,
    }
    code = orjson.loads(reply.content)["error"]["code"]
    assert documented.get(code) == reply.status_code, (reply.status_code, reply.text)
    assert int(reply.headers["retry-after"]) >= 1


async def storm(
    http: httpx.AsyncClient, stack: Stack, alias: str, sim: Simulator, model: str, burst: int
) -> tuple[list[httpx.Response], float, int]:
    """``burst`` requests at once: the replies, the slowest one's seconds, vendor calls made."""

    async def timed(_: int) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        reply = await chat(http, stack, alias)
        return reply, time.monotonic() - started

    before = calls(sim, model)
    done = await bounded(burst, burst, timed)
    return [r for r, _ in done], max(s for _, s in done), calls(sim, model) - before


async def test_a_429_storm_is_answered_quickly_without_a_retry_storm(
    stack: Stack, sims: dict[str, Simulator]
):
    burst = 10
    async with httpx.AsyncClient() as http:
        replies, slowest, made = await storm(
            http, stack, "throttled", sims["steady"], THROTTLED, burst
        )
    # The vendor's 429 is passed on; a request planned after the storm has opened the
    # breaker (a busy machine spreads the burst out) gets the breaker's 503 instead.
    # Either way: rate-limit shaped, with Retry-After, at once.
    for reply in replies:
        rate_limit_shaped(reply)
    assert any(r.status_code == VendorRateLimited.status for r in replies)
    # Each waits out the vendor's Retry-After (1 s) once at most, then says it: about a
    # second.  Held to its 30 s deadline it would take all of it; under a third of that
    # tells the two apart however loaded the machine (3 s was under 3x the second).
    assert slowest < 10.0, f"a throttled request took {slowest:.1f}s"
    assert made <= 2 * burst, f"{made} vendor calls for {burst} requests"


async def test_an_open_breaker_spares_a_vendor_that_only_answers_429(
    stack: Stack, sims: dict[str, Simulator], metrics: str
):
    burst = 10
    async with httpx.AsyncClient() as http:
        # The first burst's 429s trip the breaker (TRIP in a row) within its first calls.
        _, _, first = await storm(http, stack, "saturated", sims["steady"], SATURATED, burst)
        await until_breaker(http, metrics, "saturated", SATURATED, lambda b: b.opened > 0)
        replies, slowest, while_open = await storm(
            http, stack, "saturated", sims["steady"], SATURATED, burst
        )
    for reply in replies:
        rate_limit_shaped(reply)
    assert slowest < 3.0, f"a throttled request took {slowest:.1f}s"
    assert while_open <= burst // 2, (
        f"with the breaker open, {burst} requests still made {while_open} calls to a "
        f"vendor answering only 429 (the burst that opened it made {first})"
    )


async def test_a_key_the_vendor_rejects_is_benched_and_every_request_succeeds(
    stack: Stack, sims: dict[str, Simulator]
):
    sim, model, total = sims["steady"], "gpt-4o-mini-pooled", 40
    before = calls(sim, model)
    async with httpx.AsyncClient() as http:
        replies = await bounded(total, 8, lambda _: chat(http, stack, "pooled"))
    assert statuses(replies) == [200] * total, [r.text for r in replies if r.status_code != 200]
    assert served_by(replies) == ["pooled"] * total
    # The simulator counts only calls with the good key (a 401 is refused before counting).
    assert calls(sim, model) - before == total


async def test_an_openai_client_falls_back_from_anthropic_to_openai(
    stack: Stack, sims: dict[str, Simulator]
):
    sim = sims["steady"]  # BROKEN_CLAUDE always answers 500, in Anthropic's error shape
    before = calls(sim, BROKEN_CLAUDE)
    async with httpx.AsyncClient() as http:
        replies = await sequential(http, stack, "cross", TRIP)
        tried = calls(sim, BROKEN_CLAUDE) - before
        streamed = await chat(http, stack, "cross", stream=True)
    assert tried == TRIP, "each request tried the Anthropic vendor first"
    assert served_by(replies) == ["steady"] * TRIP, statuses(replies)
    for reply in replies:
        body = reply.json()
        assert body["object"] == "chat.completion" and body["model"] == "cross"
        assert body["choices"][0]["message"]["content"]
    assert streamed.status_code == 200, streamed.text
    data = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(orjson.loads, data[:-1])
        if c["choices"]
    )
    assert text


async def test_a_stream_the_vendor_opened_then_failed_before_any_text_falls_back(
    stack: Stack, sims: dict[str, Simulator]
):
    """Anthropic may answer 200, send message_start, then an overloaded error: nothing
    of it reached the client, so the fallback answers the stream whole, in either
    dialect, with one message_start and the fallback's text."""
    sim = sims["steady"]
    before = calls(sim, OVERLOADED_CLAUDE)
    async with httpx.AsyncClient() as http:
        openai_stream = await chat(http, stack, "overloaded", stream=True)
        body = {
            "model": "overloaded",
            "max_tokens": 16,
            "stream": True,
            "messages": [{"role": "user", "content": f"tell me about {uuid.uuid4().hex}"}],
        }
        headers = {"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01"}
        headers["x-relay-cache"] = "bypass"
        anthropic_stream = await http.post(
            f"{stack.url}/v1/messages", json=body, headers=headers, timeout=40
        )
    assert calls(sim, OVERLOADED_CLAUDE) - before == 2, "each stream tried Claude first"
    assert [openai_stream.status_code, anthropic_stream.status_code] == [200, 200], (
        openai_stream.headers,
        anthropic_stream.text[:300],
    )
    data = [line[6:] for line in openai_stream.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and "error" not in openai_stream.text
    chunks = [orjson.loads(d) for d in data[:-1]]
    assert sum(1 for c in chunks for ch in c["choices"] if "role" in ch["delta"]) == 1
    assert "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    names = [x[7:] for x in anthropic_stream.text.splitlines() if x.startswith("event: ")]
    assert names.count("message_start") == 1 and "error" not in names, names
    assert names[-1] == "message_stop" and "content_block_delta" in names


async def test_a_restarted_worker_still_avoids_a_vendor_whose_breaker_is_open(
    stack_factory: Any, redis_url: str, sims: dict[str, Simulator]
):
    sim = sims["steady"]  # DEAD always answers 500
    cfg = {
        "vendors": {"dead": vendor(sim), "steady": vendor(sim)},
        "models": {"restart": with_fallback("dead", DEAD)},
        "tenants": tenants(),
        "breaker": {"consecutive_failures": TRIP, "open_s": 120},
    }
    own_metrics = f"http://127.0.0.1:{free_port()}/metrics"
    own: Stack = stack_factory(cfg, extra_env=metrics_env(own_metrics))
    async with httpx.AsyncClient() as http:
        await open_breaker(http, own, own_metrics, "restart", sim, "dead", DEAD)
        shut = calls(sim, DEAD)
        assert served_by(await sequential(http, own, "restart", 2)) == ["steady"] * 2
        assert calls(sim, DEAD) == shut, "the breaker is open before the restart"

        old = own.procs[0]
        assert old.name == "worker-0"
        old.stop()
        fresh = spawn("worker-0-restarted", ["worker"], worker_env(own, redis_url), old.log.parent)
        own.procs.insert(0, fresh)  # stopped with the stack

        # The first request waits on the topic until the new worker has joined the group.
        first = await chat(http, own, "restart", timeout_s=120)
        rest = await sequential(http, own, "restart", 4)
    assert served_by([first, *rest]) == ["steady"] * 5, statuses([first, *rest])
    assert calls(sim, DEAD) == shut, (
        "the new worker sent traffic to a vendor whose breaker is open: "
        "vendor health was not recovered from the changelog"
    )
