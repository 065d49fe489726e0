"""The gateway's side of the cache: which answers it keeps in L1 and which it serves."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.envelope import ReplyEvent, RequestEnvelope
from schemas.errors import VendorUnavailable
from schemas.usage import Usage
from tables.cache import storable
from tests.support.gateway import answer_hello, client, gateway_app, hello

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "cache me"}]}


def paid(**extra: Any):  # type: ignore[no-untyped-def]
    """A worker's answer from a vendor (or, with ``cache_hit``, from L2)."""
    finish = extra.pop("finish_reason", "stop")

    def script(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        body = hello(env.alias, finish)
        final = ReplyEvent(
            correlation_id=env.correlation_id,
            kind="final",
            body=body,
            usage=Usage(input_tokens=3, output_tokens=1),
            **{"vendor": "sim-openai", "model": "gpt-4o-mini", **extra},
        )
        return [(0.0, final)]

    return script


async def test_an_answer_older_than_the_request_allows_is_not_served() -> None:
    """``x-relay-cache-ttl`` is also the oldest answer the request takes; 0 asks for none."""
    app, bus = gateway_app(paid())
    async with client(app) as http:
        first = await http.post("/v1/chat/completions", json=BODY)
        assert first.headers["x-relay-cache"] == "miss"
        relay = app.state.relay
        entry = relay.cache.l1.get(bus.published[0].prompt_hash)
        entry.created = time.time() - 7200  # stored two hours ago
        fresh = {"x-relay-cache-ttl": "dynamic"}  # five minutes at most
        again = await http.post("/v1/chat/completions", json=BODY, headers=fresh)
        assert again.headers["x-relay-cache"] == "miss" and len(bus.published) == 2
        assert not bus.published[1].cache_lookup, "the worker must not serve it from L2 either"
        no_cache = await http.post(
            "/v1/chat/completions", json=BODY, headers={"x-relay-cache-ttl": "0"}
        )
        assert no_cache.headers["x-relay-cache"] == "miss" and len(bus.published) == 3
        any_age = await http.post("/v1/chat/completions", json=BODY)
        assert any_age.headers["x-relay-cache"] == "hit-l1"


async def test_a_workers_cache_hit_is_not_kept_again_for_a_whole_ttl() -> None:
    app, bus = gateway_app(paid(cache_hit=True))
    async with client(app) as http:
        first = await http.post("/v1/chat/completions", json=BODY)
        assert first.headers["x-relay-cache"] == "hit-l2"
        second = await http.post("/v1/chat/completions", json=BODY)
        assert second.headers["x-relay-cache"] == "hit-l2" and len(bus.published) == 2


async def test_an_answer_a_content_filter_cut_is_not_kept() -> None:
    app, bus = gateway_app(paid(finish_reason="content_filter"))
    async with client(app) as http:
        for _ in range(2):
            answer = await http.post("/v1/chat/completions", json=BODY)
            assert answer.headers["x-relay-cache"] == "miss"
            assert answer.json()["choices"][0]["finish_reason"] == "content_filter"
    assert len(bus.published) == 2


async def test_a_canarys_answer_is_not_kept_for_users_of_the_stable_version() -> None:
    from schemas.config import Canary, Candidate, load_config
    from tests.support.gateway import EXAMPLE

    config = load_config(EXAMPLE)
    canary = Candidate(vendor="sim-openai", model="gpt-4o-mini-next")
    config.models["gpt-4o-mini"].canary = Canary(candidate=canary, percent=10)
    app, bus = gateway_app(paid(model="gpt-4o-mini-next"), config)
    async with client(app) as http:
        for _ in range(2):
            answer = await http.post("/v1/chat/completions", json=BODY)
            assert answer.headers["x-relay-cache"] == "miss"
    assert len(bus.published) == 2


def streamed(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
    cid = env.correlation_id
    head = {"id": "chatcmpl-vendor", "object": "chat.completion.chunk", "created": 1}
    delta = {"role": "assistant", "content": "Hi"}
    choice = {"index": 0, "delta": delta, "finish_reason": "stop"}
    chunk = {**head, "model": env.alias, "choices": [choice]}
    usage = Usage(input_tokens=3, output_tokens=1)
    return [
        (0.0, ReplyEvent(correlation_id=cid, kind="chunk", seq=1, body=chunk)),
        (0.0, ReplyEvent(correlation_id=cid, kind="final", seq=2, vendor="sim-openai",
                         model="gpt-4o-mini", usage=usage)),
    ]  # fmt: skip


def data_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


async def test_a_hit_whole_or_streamed_comes_under_a_new_id_and_time() -> None:
    chat = {**BODY, "stream": True}
    app, _ = gateway_app(streamed)
    async with client(app) as http:
        first = await http.post("/v1/chat/completions", json=chat)
        now = int(time.time())
        whole = await http.post("/v1/chat/completions", json={**chat, "stream": False})
        replay = await http.post("/v1/chat/completions", json=chat)
    assert first.headers["x-relay-cache"] == "miss"
    assert whole.headers["x-relay-cache"] == replay.headers["x-relay-cache"] == "hit-l1"
    assert whole.json()["created"] >= now and whole.json()["id"] != "chatcmpl-vendor"
    chunks = data_lines(replay.text)
    assert {c["id"] for c in chunks} != {"chatcmpl-vendor"} and len({c["id"] for c in chunks}) == 1
    assert all(c["created"] >= now for c in chunks)


async def test_a_legacy_completion_hit_is_not_served_under_the_first_answer_s_id() -> None:
    def completion(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        body = {
            "id": "cmpl-first",
            "object": "text_completion",
            "created": 1,
            "model": "x",
            "choices": [{"index": 0, "text": "Hi", "finish_reason": "stop"}],
        }
        return [(0.0, ReplyEvent(correlation_id=env.correlation_id, kind="final", body=body,
                                 vendor="sim-openai", model="x", usage=Usage(input_tokens=1)))]  # fmt: skip

    app, _ = gateway_app(completion)
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"}
    async with client(app) as http:
        first = await http.post("/v1/completions", json=body)
        again = await http.post("/v1/completions", json=body)
    assert again.headers["x-relay-cache"] == "hit-l1"
    assert again.json()["id"].startswith("cmpl-") and again.json()["id"] != first.json()["id"]


async def test_an_error_a_vendor_sent_as_an_answer_is_never_kept() -> None:
    """OpenRouter answers 200 with an ``error`` (or a choice finished in ``error``) when a
    model fails part way: it must not be served again from L1."""

    def script(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        body = {"error": {"message": "upstream overloaded", "code": 502}, "model": env.alias}
        return [(0.0, ReplyEvent(correlation_id=env.correlation_id, kind="final", body=body,
                                 vendor="sim-openai", model="gpt-4o-mini",
                                 usage=Usage(input_tokens=2)))]  # fmt: skip

    app, _ = gateway_app(script)
    async with client(app) as http:
        await http.post("/v1/chat/completions", json=BODY)
        again = await http.post("/v1/chat/completions", json=BODY)
    assert again.headers["x-relay-cache"] == "miss"
    finished_in_error = hello("gpt-4o-mini", "error")
    assert not storable(finished_in_error) and storable(hello("gpt-4o-mini", "stop"))


async def test_a_failed_request_still_says_its_trace_id() -> None:
    def fails(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        err = VendorUnavailable("vendor down").to_dict()
        return [(0.0, ReplyEvent(correlation_id=env.correlation_id, kind="error", error=err))]

    app, bus = gateway_app(fails)
    async with client(app) as http:
        given = await http.post(
            "/v1/chat/completions", json=BODY, headers={"x-relay-trace-id": "trace-42"}
        )
        made = await http.post("/v1/chat/completions", json=BODY)
        refused = await http.post(
            "/v1/chat/completions", json=BODY,
            headers={"x-relay-trace-id": "trace-43", "x-relay-priority": "soon"},
        )  # fmt: skip
    assert given.status_code == made.status_code == 502
    assert given.headers["x-relay-trace-id"] == "trace-42"
    assert made.headers["x-relay-trace-id"] == bus.published[-1].trace_id
    assert refused.status_code == 400 and refused.headers["x-relay-trace-id"] == "trace-43"


async def test_ttl_class_names_are_read_whatever_their_case_as_the_other_headers() -> None:
    app, bus = gateway_app(paid())
    async with client(app) as http:
        ok = await http.post(
            "/v1/chat/completions", json=BODY, headers={"x-relay-cache-ttl": "Static"}
        )
        counted = await http.post(
            "/v1/messages/count_tokens", json=BODY, headers={"x-relay-cache": "nonsense"}
        )
    assert ok.status_code == 200 and bus.published[-1].cache_ttl_s == 6 * 3600
    assert counted.status_code == 400, "a bad header is refused whoever counts the tokens"


async def test_a_chunk_that_comes_twice_reaches_the_client_once() -> None:
    """A producer's retry may put a chunk on the reply topic twice: its ``seq`` says so."""

    def twice(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        once = streamed(env)
        return [once[0], once[0], *once[1:]]

    app, _ = gateway_app(twice)
    async with client(app) as http:
        reply = await http.post("/v1/chat/completions", json={**BODY, "stream": True})
    texts = [
        c["choices"][0]["delta"].get("content") for c in data_lines(reply.text) if c["choices"]
    ]
    assert texts == ["Hi"]


async def test_a_tool_schema_with_a_huge_whole_bound_is_relayed() -> None:
    """``maximum: 1e20`` in a tool's schema (or an Anthropic tool's ``input_schema``) is
    a valid request: relayed to a worker, not a 400 from working out its cache key."""
    number = {"type": "number", "maximum": 1e20}
    params = {"type": "object", "properties": {"n": number}}
    chat = {
        **BODY,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": params}}],
    }
    biggest = {"type": "object", "properties": {"n": {"maximum": 1.7976931348623157e308}}}
    messages = {
        "model": "claude-haiku",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "pick", "input_schema": biggest}],
    }
    # An integer literal past 64 bits is read (by orjson, at the edge) as the double
    # 1e20 is: relayed as that number, for the vendor to judge, as 1e20 is.
    seeded = orjson.dumps(BODY)[:-1] + b', "seed": ' + str(2**64).encode() + b"}"
    app, bus = gateway_app(paid())
    async with client(app) as http:
        first = await http.post("/v1/chat/completions", json=chat)
        second = await http.post(
            "/v1/messages", json=messages, headers={"anthropic-version": "2023-06-01"}
        )
        third = await http.post(
            "/v1/chat/completions", content=seeded, headers={"content-type": "application/json"}
        )
    assert first.status_code == second.status_code == third.status_code == 200
    assert len(bus.published) == 3 and bus.published[2].body["seed"] == float(2**64)


async def test_the_gateway_announces_no_replaced_answer_itself() -> None:
    """Only the worker knows whether (and when) an answer was stored in place of another
    (see test_handler): a gateway that announced a refresh itself would tell the others
    to drop an answer nobody replaced (a refresh that rode on a bypass's call)."""
    from gateway.relay import Relay
    from tables.cache import L1Cache, ResponseCache

    class Recording(ResponseCache):
        def __init__(self) -> None:
            super().__init__(L1Cache(100), None)
            self.said: list[str] = []

        async def replaced(self, key: str, created: float | None = None) -> None:
            self.said.append(key)

    app, bus = gateway_app(paid())
    relay = app.state.relay
    cache = Recording()
    app.state.relay = Relay(relay.settings, relay.config, bus, cache)  # type: ignore[arg-type]
    async with client(app) as http:
        await http.post("/v1/chat/completions", json=BODY)
        fresh = await http.post(
            "/v1/chat/completions", json=BODY, headers={"x-relay-cache": "refresh"}
        )
    assert fresh.headers["x-relay-cache"] == "miss" and cache.said == []
    key = bus.published[0].prompt_hash
    assert cache.l1.get(key) is not None, "its own L1 keeps the new answer"


def body_less(notice: bool = False):  # type: ignore[no-untyped-def]
    """A worker's only reply to a stream is its final: the vendor sent no chunk (after a
    degraded notice, which carries none, with ``notice``)."""

    def script(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        cid, usage = env.correlation_id, Usage(input_tokens=3)
        said = [(0.0, ReplyEvent(correlation_id=cid, kind="chunk", degraded="budget"))]
        final = ReplyEvent(correlation_id=cid, kind="final", seq=1, usage=usage,
                           vendor="sim-openai", model="gpt-4o-mini")  # fmt: skip
        return [*(said if notice else []), (0.0, final)]

    return script


async def test_a_stream_the_vendor_ended_without_a_chunk_is_a_502_and_not_kept() -> None:
    """Not a 200 ``application/json`` holding ``null`` (nor an event stream with nothing
    in it): the SDKs retry a 502 themselves; nothing is kept for the next request."""
    stream = {**BODY, "stream": True}
    app, bus = gateway_app(body_less())
    async with client(app) as http:
        first = await http.post("/v1/chat/completions", json=stream)
        whole = await http.post("/v1/chat/completions", json=BODY)
    assert first.status_code == 502 and first.json()["error"]["type"] == "api_error"
    assert whole.status_code == 502 and len(bus.published) == 2
    app, _ = gateway_app(body_less(notice=True))
    async with client(app) as http:
        started = await http.post("/v1/chat/completions", json=stream)
    assert started.status_code == 200  # its headers went out with the notice
    assert data_lines(started.text)[-1]["error"]["code"] == "vendor_unavailable"


async def test_a_stream_answered_whole_is_sent_as_a_stream() -> None:
    def whole(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        final = ReplyEvent(correlation_id=env.correlation_id, kind="final", body=hello(env.alias),
                           usage=Usage(input_tokens=3, output_tokens=1), vendor="sim-openai",
                           model="gpt-4o-mini")  # fmt: skip
        return [(0.0, final)]

    app, _ = gateway_app(whole)
    async with client(app) as http:
        reply = await http.post("/v1/chat/completions", json={**BODY, "stream": True})
    assert reply.headers["content-type"].startswith("text/event-stream")
    chunks = data_lines(reply.text)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_the_sdks_request_id_is_the_trace_id_answered_hit_or_failed() -> None:
    """openai's ``_request_id`` and anthropic's read ``x-request-id`` / ``request-id``:
    both name the request's trace id, the way to its ledger line."""
    import anthropic
    import httpx2  # both official SDKs are built on it and refuse a plain httpx client
    import openai

    from tests.support.gateway import DEMO_KEY

    app, bus = gateway_app(paid())
    transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx2.AsyncClient(transport=transport, base_url="http://relay") as http:
        oa = openai.AsyncOpenAI(base_url="http://relay/v1", api_key=DEMO_KEY, http_client=http)
        ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "id me"}]}
        answered = await oa.chat.completions.create(**ask)  # type: ignore[call-overload]
        hit = await oa.chat.completions.create(**ask)  # type: ignore[call-overload]
        claude = anthropic.AsyncAnthropic(
            base_url="http://relay", api_key=DEMO_KEY, http_client=http
        )
        message = await claude.messages.create(
            model="claude-haiku", max_tokens=16, messages=[{"role": "user", "content": "id me"}]
        )
        with pytest.raises(openai.NotFoundError) as failed:
            await oa.chat.completions.create(model="no-such-model", messages=ask["messages"])
    traces = [env.trace_id for env in bus.published]
    assert answered._request_id == traces[0] and message._request_id == traces[1]
    assert hit._request_id is not None and hit._request_id not in traces, "its own trace id"
    assert failed.value.request_id == failed.value.response.headers["x-relay-trace-id"]


async def test_an_early_400_and_an_estimated_count_carry_a_request_id_too() -> None:
    """A body refused before the relay starts work, and a token count the gateway
    estimates (no vendor that counts), still name a request id: the client's trace id
    when it gave one, else a new one, as the vendors' answers always do."""
    from tests.support.gateway import AUTH

    app, _ = gateway_app(paid())
    async with client(app) as http:
        no_max = {"model": "claude-haiku", "messages": [{"role": "user", "content": "x"}]}
        refused = await http.post("/v1/messages", json=no_max, headers=AUTH)
        count = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "four"}]}
        counted = await http.post(
            "/v1/messages/count_tokens", json=count, headers={**AUTH, "x-relay-trace-id": "mine"}
        )
    assert refused.status_code == 400 and refused.headers["request-id"]
    assert refused.headers["request-id"] == refused.headers["x-relay-trace-id"]
    assert counted.status_code == 200 and counted.json()["input_tokens"] >= 1
    assert counted.headers["request-id"] == counted.headers["x-request-id"] == "mine"


@pytest.mark.parametrize(("scope", "stored"), [("tenant", 30 * 86400), ("global", None)])
async def test_a_header_ttl_outlives_the_alias_s_only_in_the_tenant_s_own_cache(
    scope: str, stored: int | None
) -> None:
    """``x-relay-cache-ttl`` of thirty days keeps the tenant's own answer that long; an
    answer shared across tenants lives no longer than the alias says."""
    from schemas.config import load_config
    from tests.support.gateway import EXAMPLE

    config = load_config(EXAMPLE)
    config.tenants["demo"].cache_scope = scope  # type: ignore[assignment]
    app, bus = gateway_app(paid(), config)
    month = {"x-relay-cache-ttl": str(30 * 86400)}
    async with client(app) as http:
        await http.post("/v1/chat/completions", json=BODY, headers=month)
    alias_ttl = config.models["gpt-4o-mini"].ttl_seconds()
    assert bus.published[0].cache_ttl_s == (stored or alias_ttl)


def test_a_producer_s_envelope_may_not_keep_an_answer_past_thirty_days() -> None:
    """An envelope posted straight to the request topic is held to the gateway's bound:
    out of it, the envelope is malformed (dead-lettered), not a Redis write refused."""
    from pydantic import ValidationError

    from tests.support.envelopes import request_envelope

    with pytest.raises(ValidationError, match="cache_ttl_s"):
        request_envelope(cache_ttl_s=10**12)


def holed(missing: int):  # type: ignore[no-untyped-def]
    """A worker's three-chunk stream whose chunk ``missing`` the broker refused after
    taking it (4: the final is numbered as if the last chunk went)."""

    def script(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        cid = env.correlation_id
        head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": env.alias}
        words = [("The answer ", None), ("is not ", None), ("42", "stop")]
        events = [
            ReplyEvent(correlation_id=cid, kind="chunk", seq=i, body={**head, "choices": [
                {"index": 0, "delta": {"content": word}, "finish_reason": finish}]})
            for i, (word, finish) in enumerate(words, 1)
        ]  # fmt: skip
        final = ReplyEvent(correlation_id=cid, kind="final", seq=4, vendor="sim-openai",
                           model="gpt-4o-mini", usage=Usage(input_tokens=3, output_tokens=3))  # fmt: skip
        return [(0.0, e) for e in [*events, final] if e.seq != missing]

    return script


@pytest.mark.parametrize("missing", [2, 3])
async def test_a_stream_missing_a_chunk_ends_in_an_error_and_is_never_kept(missing: int) -> None:
    """A chunk lost between the worker and the gateway, in the middle (the next one's
    ``seq`` skips) or at the end (the final's does): the client hears the stream broke,
    never a 200 answer with a hole in it, and the next request is not served it."""
    stream = {**BODY, "stream": True}
    app, bus = gateway_app(holed(missing))
    async with client(app) as http:
        broken = await http.post("/v1/chat/completions", json=stream)
        again = await http.post("/v1/chat/completions", json=BODY)
    events = data_lines(broken.text)
    texts = [c["choices"][0]["delta"]["content"] for c in events if "choices" in c]
    assert texts == ["The answer ", "is not "][: missing - 1]
    assert "could not be passed back" in events[-1]["error"]["message"]
    assert again.headers["x-relay-cache"] == "miss" and not bus.published[-1].cancel
    # Cut mid-stream, the worker is told (nobody reads the rest); at the final, nothing
    # is left to withdraw.
    assert [e.cancel for e in bus.published[1:-1]] == ([True] if missing == 2 else [])


async def test_an_l1_hit_leaves_the_redis_gauge_as_the_last_look_at_redis_set_it() -> None:
    """An L1 hit touches no Redis: it must not say Redis is down (or up) on the word of
    a look taken long ago, between the health checks that ask Redis itself."""
    from gateway import metrics

    app, _ = gateway_app(paid())
    async with client(app) as http:
        await http.post("/v1/chat/completions", json=BODY)
        metrics.REDIS_UP.set(1)  # as /readyz's ping left it
        app.state.relay.cache.l2_healthy = False  # a blip some while ago
        hit = await http.post("/v1/chat/completions", json=BODY)
    assert hit.headers["x-relay-cache"] == "hit-l1"
    assert metrics.REDIS_UP._value.get() == 1


class Stuck:
    """aiokafka's producer with its buffer full and no broker to drain it: a send waits
    for room that never comes."""

    def __init__(self) -> None:
        self.waiting = 0
        self.entered = asyncio.Event()

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        self.waiting += 1
        self.entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.waiting -= 1

    async def stop(self) -> None:
        return None


def spilled_lines(spill_dir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for path in spill_dir.glob("*.jsonl") for line in path.open()]


async def test_a_hit_in_a_broker_outage_waits_for_no_ledger_line_which_a_stop_spills(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With the broker away, a ledger line waits for room in the producer's buffer (up
    to ``SEND_WAIT_S``): a cache hit is answered without waiting for it, and its one
    line, never taken, is in the spill file once the gateway stops."""
    import gateway.bus
    import streams.producers
    from gateway.bus import Bus
    from streams.topics import Topics

    monkeypatch.setattr(streams.producers, "SEND_WAIT_S", 5.0)
    monkeypatch.setattr(gateway.bus, "BACKGROUND_STOP_S", 0.0)
    app, _ = gateway_app(paid())
    bus = Bus("127.0.0.1:9", Topics("relay"), "gw-1", spill_dir=tmp_path)  # never started
    await bus.ledger.producer.stop()
    stuck = bus.ledger.producer = Stuck()  # type: ignore[assignment]
    async with client(app) as http:
        await http.post("/v1/chat/completions", json=BODY)  # a miss, kept in L1
        app.state.relay.bus = bus
        hit = await http.post("/v1/chat/completions", json=BODY)
        assert hit.headers["x-relay-cache"] == "hit-l1"
        await stuck.entered.wait()
        assert stuck.waiting == 1, "answered while its ledger line still waits for room"
    await bus.stop()
    spilled = spilled_lines(tmp_path)
    assert [line["topic"] for line in spilled] == ["relay.usage"]
    assert orjson.loads(spilled[0]["value"])["cache_hit"] is True


# Some OpenAI-compatible servers (Mistral's reasoning models) send a message's content
# as a list of typed parts.
PARTS = [
    {"type": "thinking", "thinking": [{"type": "text", "text": "Let me think."}]},
    {"type": "text", "text": "Forty-two."},
]


def parts_body(alias: str) -> dict[str, Any]:
    body = hello(alias)
    body["choices"][0]["message"]["content"] = PARTS
    return body


def answering_parts(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
    """A worker's whole answer in parts; a plain stream (Hello) to a streamed request."""
    if env.stream:
        return answer_hello(env)
    return paid_with(parts_body(env.alias))(env)


def paid_with(body: dict[str, Any], **extra: Any):  # type: ignore[no-untyped-def]
    def script(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        final = ReplyEvent(
            correlation_id=env.correlation_id,
            kind="final",
            body=body,
            usage=Usage(input_tokens=3, output_tokens=5),
            **{"vendor": "sim-openai", "model": "gpt-4o-mini", **extra},
        )
        return [(0.0, final)]

    return script


async def test_an_answer_whose_content_is_a_list_of_parts_is_never_kept_or_replayed_empty() -> None:
    """Replayed as a stream, such a body would say nothing (a 200 with no text): it is
    not kept, and the stream that asks next is asked of a worker."""
    app, bus = gateway_app(answering_parts)
    async with client(app) as http:
        whole = await http.post("/v1/chat/completions", json=BODY)
        streamed = await http.post("/v1/chat/completions", json={**BODY, "stream": True})
    assert whole.json()["choices"][0]["message"]["content"] == PARTS, "answered as it came"
    assert streamed.headers["x-relay-cache"] == "miss" and len(bus.published) == 2
    texts = [c["choices"][0]["delta"].get("content") for c in data_lines(streamed.text)]
    assert "Hello" in texts


async def test_a_stream_follower_of_an_answer_the_worker_did_not_store_is_not_kept() -> None:
    """A stream that joined a call whose answer the worker would not store (its content
    a list of parts: the stream it was sent says nothing) spreads no copy of it: the
    plain request that comes next is asked of a worker, not given ``content: ""``."""
    from schemas.formats.openai import response_to_chunks

    def follower(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        cid, chunks = env.correlation_id, response_to_chunks(parts_body(env.alias))
        events = [
            ReplyEvent(correlation_id=cid, kind="chunk", seq=n, body=c, coalesced=True)
            for n, c in enumerate(chunks, 1)
        ]
        final = ReplyEvent(correlation_id=cid, kind="final", seq=len(chunks) + 1,
                           usage=Usage(input_tokens=3, output_tokens=5), vendor="sim-openai",
                           model="gpt-4o-mini", coalesced=True, stored=False)  # fmt: skip
        return [(0.0, e) for e in [*events, final]]

    app, bus = gateway_app(follower)
    async with client(app) as http:
        await http.post("/v1/chat/completions", json={**BODY, "stream": True})
        bus.script = paid()
        plain = await http.post("/v1/chat/completions", json=BODY)
    assert plain.headers["x-relay-cache"] == "miss"
    assert plain.json()["choices"][0]["message"]["content"] == "Hello"


@pytest.mark.parametrize("stream", [False, True])
async def test_an_entry_an_older_version_stored_with_text_in_parts_is_asked_anew(
    stream: bool,
) -> None:
    """An entry stored before answers in parts were refused (a body in parts, a stream
    whose deltas carry them) is served neither way, nor metered as a hit: the request
    goes to a worker, which must not serve it from L2 either."""
    from tables.cache import CacheEntry

    metered: list[Any] = []
    app, bus = gateway_app(paid())
    relay = app.state.relay

    async def meter(event: Any) -> None:
        metered.append(event)

    bus.meter = meter  # type: ignore[method-assign]
    async with client(app) as http:
        await http.post("/v1/chat/completions", json=BODY)  # a plain answer, kept
        key = bus.published[0].prompt_hash
        head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        delta = {"role": "assistant", "content": PARTS}
        chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": "stop"}]}
        stored_as = {"body": parts_body("gpt-4o-mini")} if stream else {"chunks": [chunk]}
        old = CacheEntry(vendor="sim-openai", model="gpt-4o-mini", created=time.time(),
                         endpoint="chat", **stored_as)  # fmt: skip
        relay.cache.l1.put(key, old, 60)
        asked = await http.post("/v1/chat/completions", json={**BODY, "stream": stream})
    assert asked.status_code == 200 and asked.headers["x-relay-cache"] == "miss"
    assert len(bus.published) == 2 and not bus.published[1].cache_lookup
    assert metered == [], "no hit, no hit's ledger line"
    assert relay.cache.l1.get(key).body["choices"][0]["message"]["content"] == "Hello"


async def test_a_whole_answer_in_parts_to_a_streamed_request_is_an_error_not_an_empty_200() -> None:
    app, _ = gateway_app(paid_with({"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": PARTS}, "finish_reason": "stop"}
    ]}))  # fmt: skip
    async with client(app) as http:
        answer = await http.post("/v1/chat/completions", json={**BODY, "stream": True})
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "vendor_answer_unreadable"


async def test_a_refresh_that_rode_on_a_call_whose_answer_was_not_stored_keeps_none() -> None:
    """A refresh that rode on an identical bypass request's call: the worker stored
    nothing and says so, and this replica keeps nothing either, so it serves what every
    other replica serves."""
    app, bus = gateway_app(paid(coalesced=True, stored=False))
    async with client(app) as http:
        first = await http.post(
            "/v1/chat/completions", json=BODY, headers={"x-relay-cache": "refresh"}
        )
        assert first.headers["x-relay-cache"] == "coalesced" and bus.published[0].cache_ttl_s
        bus.script = paid()
        again = await http.post("/v1/chat/completions", json=BODY)
    assert again.headers["x-relay-cache"] == "miss" and len(bus.published) == 2


@pytest.mark.parametrize("stored", [True, None])
async def test_an_answer_the_worker_stored_or_did_not_say_is_kept(stored: bool | None) -> None:
    """Kept as before when the worker stored it, or when it does not say (a worker from
    before ``stored``: judged by the request's own terms)."""
    app, bus = gateway_app(paid(stored=stored))
    async with client(app) as http:
        await http.post("/v1/chat/completions", json=BODY)
        again = await http.post("/v1/chat/completions", json=BODY)
    assert again.headers["x-relay-cache"] == "hit-l1" and len(bus.published) == 1


# Perplexity's sources, which the answer's "[1]" points into, beside the text.
CITATIONS = ["https://a.example/paris", "https://b.example/france"]


def cited(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
    """A search vendor's answer: its citations on every chunk of a stream (as Perplexity
    sends them), or at the top of a whole body."""
    cid, usage = env.correlation_id, Usage(input_tokens=3, output_tokens=4)
    end = {"vendor": "sim-openai", "model": "gpt-4o-mini", "usage": usage}
    if not env.stream:
        body = {**hello(env.alias), "citations": CITATIONS}
        body["choices"][0]["message"]["content"] = "Paris [1]."
        return [(0.0, ReplyEvent(correlation_id=cid, kind="final", body=body, **end))]
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": env.alias}
    said = [({"role": "assistant", "content": "Paris"}, None), ({"content": " [1]."}, "stop")]
    events = [
        ReplyEvent(correlation_id=cid, kind="chunk", seq=n, body={**head, "citations": CITATIONS,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        for n, (delta, finish) in enumerate(said, 1)
    ]  # fmt: skip
    final = ReplyEvent(correlation_id=cid, kind="final", seq=len(events) + 1, **end)
    return [(0.0, e) for e in [*events, final]]


@pytest.mark.parametrize("stored_as_stream", [True, False])
async def test_a_vendors_citations_survive_a_hit_served_the_other_way(
    stored_as_stream: bool,
) -> None:
    """A streamed answer served whole to a later request, or a whole one replayed as a
    stream, keeps what the vendor said beside its text: "[1]" still has its source."""
    app, bus = gateway_app(cited)
    stream = {**BODY, "stream": True}
    first, then = (stream, BODY) if stored_as_stream else (BODY, stream)
    async with client(app) as http:
        live = await http.post("/v1/chat/completions", json=first)
        hit = await http.post("/v1/chat/completions", json=then)
    assert live.headers["x-relay-cache"] == "miss" and hit.headers["x-relay-cache"] == "hit-l1"
    assert len(bus.published) == 1
    if stored_as_stream:
        assert hit.json()["citations"] == CITATIONS
        assert hit.json()["choices"][0]["message"]["content"] == "Paris [1]."
    else:
        chunks = data_lines(hit.text)
        assert chunks[0]["citations"] == CITATIONS, "where the SDKs' stream snapshot reads it"
        said = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert "".join(s or "" for s in said) == "Paris [1]."


def audio_answer(expires_at: float) -> dict[str, Any]:
    """An audio answer (``modalities: ["audio"]``): its id names it for a later turn
    until ``expires_at``."""
    audio = {"id": "audio_abc", "expires_at": int(expires_at), "data": "UklGR", "transcript": "Hi"}
    message = {"role": "assistant", "content": None, "audio": audio}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [choice]}  # fmt: skip


async def test_an_audio_answer_is_not_served_after_its_vendor_forgets_it() -> None:
    """A client sends the audio's id back on its next turn; past ``expires_at`` the
    vendor answers that with a 400, so a copy is no answer then: asked anew (and the
    worker must not serve it from L2 either).  One that came already expired is not
    kept at all."""
    app, bus = gateway_app(paid_with(audio_answer(time.time() + 3600)))
    async with client(app) as http:
        await http.post("/v1/chat/completions", json=BODY)
        hit = await http.post("/v1/chat/completions", json=BODY)
        assert hit.headers["x-relay-cache"] == "hit-l1"
        kept = app.state.relay.cache.l1.get(bus.published[0].prompt_hash)
        kept.body["choices"][0]["message"]["audio"]["expires_at"] = int(time.time()) - 1
        after = await http.post("/v1/chat/completions", json=BODY)
        assert after.headers["x-relay-cache"] == "miss" and len(bus.published) == 2
        assert not bus.published[1].cache_lookup
        bus.script = paid_with(audio_answer(time.time() - 3600))
        other = {**BODY, "messages": [{"role": "user", "content": "say it again"}]}
        await http.post("/v1/chat/completions", json=other)
        again = await http.post("/v1/chat/completions", json=other)
    assert again.headers["x-relay-cache"] == "miss" and len(bus.published) == 4
