"""The dispatcher's fallback rules with fake vendors: a vendor's Retry-After is honoured
(never called again inside it, and a wait past the deadline is said at once), and a
request's own short deadline is not held against the vendor's health."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from agents.adapters.base import VendorResult
from agents.dispatch import Dispatcher, Outcome
from agents.keys import KeyPool
from schemas.config import Candidate
from schemas.envelope import HealthEvent
from schemas.errors import VendorAuthFailed, VendorRateLimited, VendorUnavailable
from schemas.usage import Usage
from tables.health import BreakerPolicy, Health, record
from tests.support.envelopes import request_envelope

CAND = Candidate(vendor="a", model="x", input_per_1m=1)


class Throttled:
    """Always 429 with a Retry-After."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        self.calls: list[float] = []

    async def chat(self, call: Any) -> VendorResult:
        self.calls.append(time.monotonic())
        raise VendorRateLimited("429", retry_after=self.retry_after)

    def stream(self, call: Any) -> Any:
        raise NotImplementedError


class Slow:
    """A healthy vendor that takes its time."""

    async def chat(self, call: Any) -> VendorResult:
        await asyncio.sleep(0.3)
        return VendorResult({"choices": []}, Usage(input_tokens=1))

    def stream(self, call: Any) -> Any:
        raise NotImplementedError


def dispatcher(vendor: Any, seen: list[HealthEvent]) -> Dispatcher:
    async def on_health(ev: HealthEvent) -> None:
        seen.append(ev)

    return Dispatcher({"a": vendor}, {"a": KeyPool(["k"])}, on_health)


def within(seconds: float) -> Any:
    return request_envelope(deadline_ms=int((time.time() + seconds) * 1000))


async def test_a_retry_after_past_the_deadline_is_said_at_once_not_retried_into():
    vendor, seen = Throttled(retry_after=30.0), list[HealthEvent]()
    started = time.monotonic()
    out = await dispatcher(vendor, seen).run(within(2.0), [CAND], None)
    assert len(vendor.calls) == 1, "not called again inside its Retry-After"
    assert time.monotonic() - started < 0.5, "the 429 goes back now, not at the deadline"
    assert out.error is not None and out.error.code == "vendor_rate_limited"
    assert out.error.retry_after == pytest.approx(30.0, abs=0.1)  # counted from now


async def test_a_short_retry_after_is_waited_out_before_the_next_call():
    vendor, seen = Throttled(retry_after=0.4), list[HealthEvent]()
    await dispatcher(vendor, seen).run(within(1.5), [CAND], None)
    gaps = [b - a for a, b in zip(vendor.calls, vendor.calls[1:], strict=False)]
    assert gaps and all(gap >= 0.39 for gap in gaps)


async def test_a_client_s_own_short_deadline_says_nothing_of_the_vendor_s_health():
    seen: list[HealthEvent] = []
    d = dispatcher(Slow(), seen)
    outs = await asyncio.gather(*(d.run(within(0.1), [CAND], None) for _ in range(5)))
    assert all(o.error is not None and o.error.code == "deadline_exceeded" for o in outs)
    # Counted (a vendor that hangs past every deadline shows), as an outcome the breaker
    # leaves be: it stays closed for everyone else.
    assert [e.error_code for e in seen] == ["deadline_exceeded"] * 5
    health = Health()
    for event in seen:
        health = record(health, event, BreakerPolicy(), time.time())
    assert health.state == "closed" and health.consecutive_failures == 0
    ok = await d.run(within(2.0), [CAND], None)
    assert ok.error is None and seen[-1].ok


KEY = "sk-live-0123456789abcdefghij"


def real_vendors(**answers: Any) -> tuple[Dispatcher, list[HealthEvent]]:
    """Real adapters (by vendor name: ``anthropic``, ``openai``) on a MockTransport that
    answers each vendor's requests with ``answers[name]``."""
    import httpx

    from agents.adapters.registry import make_adapter
    from schemas.config import VendorConfig

    def route(request: httpx.Request) -> httpx.Response:
        return answers[request.url.host.split(".")[0]]  # type: ignore[no-any-return]

    http = httpx.AsyncClient(transport=httpx.MockTransport(route))
    kinds = {"anthropic": "anthropic", "openai": "openai", "backup": "openai", "ollama": "ollama"}
    adapters = {
        name: make_adapter(VendorConfig(kind=kinds[name], base_url=f"http://{name}.test/v1"), http)  # type: ignore[arg-type]
        for name in answers
    }
    seen: list[HealthEvent] = []

    async def on_health(ev: HealthEvent) -> None:
        seen.append(ev)

    pools = {name: KeyPool([KEY]) for name in answers}
    return Dispatcher(adapters, pools, on_health), seen


async def test_a_vendor_echoing_its_key_in_an_error_never_passes_the_key_on() -> None:
    """Anthropic's stream error event and OpenAI's mid-stream error carry the vendor's
    text as it is; the key is struck from it before it goes anywhere."""
    import httpx

    leak = f"invalid key {KEY}"
    anthropic_stream = (
        'event: error\ndata: {"type": "error", "error": {"type": "api_error", '
        f'"message": "{leak}"}}}}\n\n'
    )
    openai_stream = f'data: {{"error": {{"message": "{leak}"}}}}\n\n'
    for vendor, body in (("anthropic", anthropic_stream), ("openai", openai_stream)):
        answer = httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        dispatch, _ = real_vendors(**{vendor: answer})
        cand = Candidate(vendor=vendor, model="m")
        env = request_envelope(
            deadline_ms=int((time.time() + 5) * 1000),
            body={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            stream=True,
        )
        out = await dispatch.run(env, [cand], lambda chunk: asyncio.sleep(0))
        assert out.error is not None and "[redacted]" in out.error.message, vendor
        assert KEY not in out.error.message and KEY not in str(out.error.to_dict())


MASKED = "Incorrect API key provided: sk-proj-****abcd. You can find your API key at ..."
_OPENAI_ERROR = {"error": {"message": MASKED, "type": "invalid_request_error"}}
_ANTHROPIC_ERROR = {"type": "error", "error": {"type": "authentication_error", "message": MASKED}}
_SSE = {"content-type": "text/event-stream"}


@pytest.mark.parametrize(
    ("vendor", "stream", "status", "body", "headers"),
    [
        ("openai", False, 401, _OPENAI_ERROR, None),  # an error status (was redacted already)
        ("openai", False, 200, _OPENAI_ERROR, None),  # OpenRouter's 200 with an error body
        ("openai", True, 200, f"data: {json.dumps(_OPENAI_ERROR)}\n\n", _SSE),
        ("anthropic", True, 200, f"event: error\ndata: {json.dumps(_ANTHROPIC_ERROR)}\n\n", _SSE),
        ("ollama", False, 200, {"error": MASKED}, None),
        ("ollama", True, 200, json.dumps({"error": MASKED}) + "\n", None),
    ],
    ids=["openai-401", "openai-200-error", "openai-stream", "anthropic-stream", "ollama",
         "ollama-stream"],
)  # fmt: skip
async def test_a_key_a_vendor_quotes_masked_reaches_no_client_on_any_path(
    vendor: str, stream: bool, status: int, body: Any, headers: Any
) -> None:
    """A vendor refusing a key quotes it masked ("sk-proj-****abcd"), its last characters
    still the operator's key's: struck on every path a vendor error takes, not only an
    error status (a 200 with an error body, a stream's error event or line)."""
    import httpx

    if isinstance(body, str):
        answer = httpx.Response(status, text=body, headers=headers)
    else:
        answer = httpx.Response(status, json=body)
    dispatch, _ = real_vendors(**{vendor: answer})
    env = request_envelope(
        deadline_ms=int((time.time() + 5) * 1000),
        body={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream},
        stream=stream,
    )
    forward = (lambda chunk: asyncio.sleep(0)) if stream else None
    out = await dispatch.run(env, [Candidate(vendor=vendor, model="m")], forward)
    assert out.error is not None
    said = str(out.error.to_dict())
    assert "Incorrect API key provided: [redacted]." in said
    assert "abcd" not in said and "****" not in said


async def test_an_unreadable_answer_is_the_vendor_s_failure_and_the_next_one_answers() -> None:
    import httpx

    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
    dispatch, seen = real_vendors(
        openai=httpx.Response(200, json=["not", "an", "object"]),
        backup=httpx.Response(200, json=body),
    )
    plan = [Candidate(vendor="openai", model="m"), Candidate(vendor="backup", model="m")]
    env = request_envelope(
        deadline_ms=int((time.time() + 5) * 1000),
        body={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    )
    out = await dispatch.run(env, plan, None)
    assert out.error is None and out.candidate == plan[1]
    assert [(e.vendor, e.ok) for e in seen] == [("openai", False), ("backup", True)]


async def test_an_unreadable_answer_tells_the_client_no_python_exception() -> None:
    """With nobody else to ask, the client hears the vendor's failure in words, never the
    exception the adapter met (``KeyError``, ``TypeError``: the relay's insides)."""
    import httpx

    dispatch, _ = real_vendors(openai=httpx.Response(200, json=["not", "an", "object"]))
    env = request_envelope(
        deadline_ms=int((time.time() + 5) * 1000),
        body={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    )
    out = await dispatch.run(env, [Candidate(vendor="openai", model="m")], None)
    assert out.error is not None
    said = out.error.to_dict()["message"]
    assert "could not be read" in said
    assert not any(name in said for name in ("Error", "Exception", "KeyError", "TypeError"))


async def test_a_model_without_tools_passes_the_request_on_and_stays_healthy() -> None:
    import httpx

    from tables.health import BreakerPolicy, Health, record

    refusal = {"error": "registry.ollama.ai/library/gemma:2b does not support tools"}
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
    dispatch, seen = real_vendors(
        ollama=httpx.Response(400, json=refusal), backup=httpx.Response(200, json=body)
    )
    plan = [Candidate(vendor="ollama", model="gemma:2b"), Candidate(vendor="backup", model="m")]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    env = request_envelope(
        deadline_ms=int((time.time() + 5) * 1000),
        body={"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools},
    )
    out = await dispatch.run(env, plan, None)
    assert out.error is None and out.candidate == plan[1]
    refused = seen[0]
    assert (refused.vendor, refused.error_code) == ("ollama", "vendor_unsupported")
    health = Health()
    for _ in range(10):
        health = record(health, refused, BreakerPolicy(), time.time())
    assert health.state == "closed" and health.fail == 0

    # With nobody else to ask, the client hears the model's limit as a 400.
    dispatch, _ = real_vendors(ollama=httpx.Response(400, json=refusal))
    out = await dispatch.run(env, plan[:1], None)
    assert out.error is not None and out.error.status == 400
    assert "does not support tools" in out.error.message


class BreaksMidStream:
    """Streams 40 characters of answer, then fails."""

    async def chat(self, call: Any) -> VendorResult:
        raise NotImplementedError

    async def stream(self, call: Any) -> Any:
        from schemas.errors import VendorUnavailable

        for _ in range(4):
            yield {"choices": [{"index": 0, "delta": {"content": "x" * 10}}]}
        raise VendorUnavailable("the vendor's stream broke")


async def test_a_stream_broken_part_way_names_its_vendor_and_what_it_was_billed() -> None:
    seen: list[HealthEvent] = []
    env = request_envelope(
        deadline_ms=int((time.time() + 5) * 1000),
        body={"model": "m", "messages": [{"role": "user", "content": "y" * 40}], "stream": True},
        stream=True,
    )
    out = await dispatcher(BreaksMidStream(), seen).run(env, [CAND], lambda c: asyncio.sleep(0))
    assert out.error is not None and out.candidate == CAND
    assert out.usage.output_tokens == 11 and out.usage.input_tokens > 10


async def test_a_broken_stream_s_ledger_line_is_an_error_that_cost_something() -> None:
    from agents.handler import RequestHandler
    from agents.route import Router
    from schemas.config import RelayConfig
    from tables.prices import PriceSheet
    from tests.support.sinks import Sink

    config = RelayConfig.model_validate(
        {
            "vendors": {"a": {"kind": "openai", "base_url": "http://a/v1"}},
            "models": {"m": {"candidates": [CAND.model_dump()]}},
            "tenants": {"t": {}},
        }
    )
    sink = Sink()
    handler = RequestHandler(
        Router(config, {}.get),
        Dispatcher({"a": BreaksMidStream()}, {"a": KeyPool(["k"])}, sink.health),
        PriceSheet.from_config(config.models),
        sink,
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    await handler.handle(request_envelope(body=body, stream=True, alias="m"))
    [line] = sink.ledger
    assert (line.status, line.vendor, line.error_code) == ("error", "a", "vendor_unavailable")
    assert line.cost > 0 and line.direct_cost == line.cost


def _sse(events: list[tuple[str | None, dict[str, Any]]], *, done: bool = False) -> Any:
    import json

    import httpx

    text = "".join(
        (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n"
        for name, data in events
    ) + ("data: [DONE]\n\n" if done else "")
    return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


async def _streamed(
    dispatch: Dispatcher, plan: list[Candidate]
) -> tuple[Any, list[dict[str, Any]]]:
    """A streamed request through ``plan``: its outcome, and the chunks forwarded."""
    env = request_envelope(
        deadline_ms=int((time.time() + 5) * 1000),
        body={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        stream=True,
    )
    got: list[dict[str, Any]] = []

    async def sink(chunk: dict[str, Any]) -> None:
        got.append(chunk)

    return await dispatch.run(env, plan, sink), got


# Anthropic's opening event of a stream, before any text.
MESSAGE_START = {
    "type": "message_start",
    "message": {"id": "m", "type": "message", "role": "assistant", "model": "c",
                "content": [], "usage": {"input_tokens": 900, "output_tokens": 1}},
}  # fmt: skip


def _openai_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "choices": [choice]}


async def test_an_error_after_a_stream_opened_but_before_any_text_falls_back() -> None:
    """Anthropic may answer 200, send message_start, then an overloaded error: nothing
    of that answer has reached the client, so the next candidate answers and the first
    is neither forwarded nor billed."""
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 1},
        },
    }  # fmt: skip
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    dispatch, seen = real_vendors(
        anthropic=_sse(
            [("message_start", start), ("ping", {"type": "ping"}), ("error", overloaded)]
        ),
        backup=_sse(
            [
                (None, _openai_chunk({"role": "assistant", "content": ""})),
                (None, _openai_chunk({"content": "hello"})),
                (None, _openai_chunk({}, "stop")),
                (
                    None,
                    {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage},
                ),
            ],
            done=True,
        ),
    )
    plan = [Candidate(vendor="anthropic", model="claude"), Candidate(vendor="backup", model="m")]
    out, got = await _streamed(dispatch, plan)
    assert out.error is None and out.candidate == plan[1] and out.cut == []
    assert out.usage.input_tokens == 3 and out.usage.output_tokens == 1, "the backup's usage"
    deltas = [c["choices"][0]["delta"] for c in got if c["choices"]]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "hello"}, {}]
    assert [(e.vendor, e.ok) for e in seen] == [("anthropic", False), ("backup", True)]


async def test_a_stream_that_says_nothing_still_forwards_its_opening_chunks() -> None:
    """Held back only until something follows: an empty answer reaches the client whole."""
    dispatch, _ = real_vendors(
        openai=_sse(
            [
                (None, _openai_chunk({"role": "assistant", "content": ""})),
                (None, _openai_chunk({"content": ""})),
            ],
            done=True,
        )
    )
    out, got = await _streamed(dispatch, [Candidate(vendor="openai", model="m")])
    assert out.error is None
    assert [c["choices"][0]["delta"] for c in got] == [
        {"role": "assistant", "content": ""},
        {"content": ""},
    ]


async def test_a_stream_that_opened_then_stayed_silent_is_billed_its_prompt() -> None:
    """The vendor took the call (200 and its opening chunk), then said nothing before
    the deadline, or before the worker stopped: it bills the prompt, and so does the
    ledger.  An opening followed by the vendor's own error is not billed."""
    import json

    import httpx

    from agents.adapters.openai import OpenAIAdapter
    from agents.dispatch import Progress
    from schemas.config import VendorConfig

    async def silent() -> Any:
        yield f"data: {json.dumps(_openai_chunk({'role': 'assistant'}))}\n\n".encode()
        await asyncio.sleep(30)

    def route(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=silent(), headers={"content-type": "text/event-stream"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(route))
    adapter = OpenAIAdapter(VendorConfig(kind="openai", base_url="http://a/v1"), http)
    dispatch = Dispatcher({"a": adapter}, {"a": KeyPool(["k"])}, lambda ev: asyncio.sleep(0))
    cand = Candidate(vendor="a", model="m", input_per_1m=5)
    body = {"model": "m", "messages": [{"role": "user", "content": "word " * 800}], "stream": True}
    env = request_envelope(deadline_ms=int((time.time() + 0.5) * 1000), stream=True, body=body)
    out = await dispatch.run(env, [cand], lambda chunk: asyncio.sleep(0))
    assert out.error is not None and out.error.code == "deadline_exceeded"
    assert out.candidate == cand and out.usage.input_tokens > 1000, "the prompt, billed"

    progress = Progress()
    env = request_envelope(deadline_ms=int((time.time() + 10) * 1000), stream=True, body=body)
    task = asyncio.create_task(
        dispatch.run(env, [cand], lambda chunk: asyncio.sleep(0), progress=progress)
    )
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stopped = progress.bill(Outcome(), body)  # as the handler does when the worker stops
    assert stopped.candidate == cand and stopped.usage.input_tokens > 1000


async def test_a_stream_the_vendor_opened_then_refused_is_not_billed() -> None:
    start = MESSAGE_START
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    dispatch, _ = real_vendors(anthropic=_sse([("message_start", start), ("error", overloaded)]))
    out, got = await _streamed(dispatch, [Candidate(vendor="anthropic", model="c")])
    assert out.error is not None and out.candidate is None and out.usage.input_tokens == 0
    assert got == []


async def test_a_key_s_in_stream_refusal_bills_nothing_when_the_next_key_never_answers() -> None:
    """Key one opens, then its vendor says rate_limit_error (a refusal: nothing billed);
    key two never answers before the deadline: the ledger charges no one."""
    import httpx

    from agents.adapters.registry import make_adapter
    from schemas.config import VendorConfig

    start = MESSAGE_START
    limited = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}

    async def route(request: httpx.Request) -> httpx.Response:
        if request.headers["x-api-key"] == "key-one-11111":
            return _sse([("message_start", start), ("error", limited)])  # type: ignore[no-any-return]
        await asyncio.sleep(30)
        raise AssertionError("never answers")

    http = httpx.AsyncClient(transport=httpx.MockTransport(route))
    adapter = make_adapter(VendorConfig(kind="anthropic", base_url="http://a/v1"), http)
    pool = KeyPool(["key-one-11111", "key-two-22222"])
    dispatch = Dispatcher({"a": adapter}, {"a": pool}, lambda ev: asyncio.sleep(0))
    body = {"model": "m", "messages": [{"role": "user", "content": "word " * 800}], "stream": True}
    env = request_envelope(deadline_ms=int((time.time() + 0.5) * 1000), stream=True, body=body)
    cand = Candidate(vendor="a", model="c", input_per_1m=5)
    out = await dispatch.run(env, [cand], lambda chunk: asyncio.sleep(0))
    assert out.error is not None and out.error.code == "deadline_exceeded"
    assert out.candidate is None and out.usage.input_tokens == 0


async def test_a_stream_opened_then_cut_by_the_vendor_s_own_timeout_is_billed_its_prompt() -> None:
    """Not a refusal: the vendor took the call and went quiet past its timeout_s."""
    import json

    from agents.adapters.http import vendor_client
    from agents.adapters.registry import make_adapter
    from schemas.config import VendorConfig

    start = MESSAGE_START

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        writer.write(head + b"transfer-encoding: chunked\r\n\r\n")
        event = f"event: message_start\ndata: {json.dumps(start)}\n\n".encode()
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        await asyncio.sleep(30)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = VendorConfig(kind="anthropic", base_url=f"http://127.0.0.1:{port}/v1", timeout_s=0.5)
    client = vendor_client(config.timeout_s)
    try:
        adapter = make_adapter(config, client)
        dispatch = Dispatcher(
            {"a": adapter},
            {"a": KeyPool(["k-1234567890"])},
            lambda ev: asyncio.sleep(0),
            max_rounds=1,
        )
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "word " * 800}],
            "stream": True,
        }
        env = request_envelope(deadline_ms=int((time.time() + 5) * 1000), stream=True, body=body)
        cand = Candidate(vendor="a", model="c", input_per_1m=5)
        out = await dispatch.run(env, [cand], lambda chunk: asyncio.sleep(0))
    finally:
        await client.aclose()
        server.close()
    assert out.error is not None and out.error.code == "vendor_unavailable"
    assert out.candidate == cand and out.usage.input_tokens == 900  # message_start's count


async def test_a_probe_another_request_sent_first_is_a_503_with_retry_after_at_once() -> None:
    """Two requests planned the same half-open probe and waited at a gate; the first
    spent it.  The second calls nothing and hears what a request planned a moment later
    hears, a 503 with Retry-After, without backing off first."""
    calls: list[float] = []

    class Answers:
        async def chat(self, call: Any) -> VendorResult:
            calls.append(time.monotonic())
            return VendorResult({"choices": []}, Usage(input_tokens=1))

        def stream(self, call: Any) -> Any:
            raise NotImplementedError

    dispatch = dispatcher(Answers(), [])
    backoffs: list[int] = []

    async def no_backoff(env: Any, round_no: int, until: float) -> None:
        backoffs.append(round_no)

    dispatch._backoff = no_backoff  # type: ignore[method-assign,assignment]
    out = await dispatch.run(within(5), [CAND], None, may_call=lambda cand, spend=True: False)
    assert out.error is not None and out.error.code == "no_healthy_vendor"
    assert out.error.retry_after == 1.0 and out.error.status == 503
    assert calls == [] and backoffs == [] and out.attempts == 0


async def test_a_second_key_s_wait_that_fails_gives_the_vendor_tpm_estimate_back() -> None:
    """Key one is rate-limited; key two would wait for the vendor's RPM past the
    deadline: the 429 goes back, and the TPM estimate taken for the call is returned,
    so no token of the vendor's minute stays spent on a call that never went out."""
    from tables.buckets import PriorityGate, TokenBucket

    class OneKeyLimited:
        async def chat(self, call: Any) -> VendorResult:
            raise VendorRateLimited("429", retry_after=30.0)

        def stream(self, call: Any) -> Any:
            raise NotImplementedError

    gate = PriorityGate()
    gate.configure("vendor:a", TokenBucket.from_rpm(1, now=time.monotonic()))
    gate.configure("vendor-tpm:a", TokenBucket.from_tpm(600_000, now=time.monotonic()))
    tpm = gate.bucket("vendor-tpm:a")
    assert tpm is not None
    full = tpm.tokens
    pools = {"a": KeyPool(["key-one-11111", "key-two-22222"])}
    dispatch = Dispatcher({"a": OneKeyLimited()}, pools, lambda ev: asyncio.sleep(0), gate=gate)
    body = {"model": "m", "messages": [{"role": "user", "content": "word " * 800}]}
    env = request_envelope(deadline_ms=int((time.time() + 0.5) * 1000), body=body)
    out = await dispatch.run(env, [CAND], None)
    assert out.error is not None and out.error.status == 429
    assert tpm.tokens == pytest.approx(full, abs=1.0), "the estimate came back"


class Refusing:
    """Always raises ``err``, noting when it was called and with which key."""

    def __init__(self, err: Any) -> None:
        self.err = err
        self.calls: list[tuple[float, str]] = []

    async def chat(self, call: Any) -> VendorResult:
        self.calls.append((time.monotonic(), call.api_key))
        raise self.err("refused") if isinstance(self.err, type) else self.err

    def stream(self, call: Any) -> Any:
        raise NotImplementedError


def several(vendors: dict[str, Any], keys: int = 1, gate: Any = None) -> Dispatcher:
    async def on_health(ev: HealthEvent) -> None:
        pass

    pools = {name: KeyPool([f"k{i}" for i in range(keys)]) for name in vendors}
    return Dispatcher(vendors, pools, on_health, gate=gate)


async def test_a_pool_whose_every_key_is_benched_is_not_called_again_before_one_is_back():
    """Three keys, each 429 without Retry-After (benched 1 s): the second round waits
    for the keys to be back (each tried once again) instead of calling the first again
    50 ms after its 429."""
    vendor = Refusing(VendorRateLimited("429"))
    out = await several({"a": vendor}, keys=3).run(within(5.0), [CAND], None)
    assert out.error is not None and out.error.code == "vendor_rate_limited"
    assert [key for _, key in vendor.calls] == ["k0", "k1", "k2"] * 2
    assert vendor.calls[3][0] - vendor.calls[0][0] >= 0.95, "not inside the key's bench"


async def test_a_429_without_retry_after_tells_the_client_when_a_key_is_back():
    vendor = Refusing(VendorRateLimited("429"))
    out = await several({"a": vendor}, keys=2).run(within(0.5), [CAND], None)
    assert out.error is not None and out.error.code == "vendor_rate_limited"
    assert len(vendor.calls) == 2, "no key free before the deadline: said at once"
    assert out.error.retry_after is not None and 0.8 < out.error.retry_after <= 1.0


async def test_our_own_limits_tell_the_client_the_soonest_wait_not_the_last():
    """Two candidates our own buckets hold past the deadline, 5 s and 200 s: the client's
    Retry-After is 5, not the last candidate's 200."""
    from tables.buckets import PriorityGate, TokenBucket

    now = time.monotonic()
    gate = PriorityGate()
    gate.configure("vendor:a", TokenBucket(capacity=1, refill_per_s=0.2, tokens=0, updated=now))
    gate.configure("vendor:b", TokenBucket(capacity=1, refill_per_s=0.005, tokens=0, updated=now))
    a, b = Refusing(VendorRateLimited("429")), Refusing(VendorRateLimited("429"))
    plan = [CAND, Candidate(vendor="b", model="y")]
    out = await several({"a": a, "b": b}, gate=gate).run(within(1.0), plan, None)
    assert out.error is not None and out.error.code == "rate_limited"
    assert out.error.retry_after == pytest.approx(5.0, abs=0.2)
    assert a.calls == b.calls == []


async def test_a_candidate_ruled_out_does_not_hide_another_s_retry_after():
    """The first candidate asks for 20 s, the second rejects every key (ruled out for the
    request): the client hears the 429 and its Retry-After, not a 502 without one."""
    a = Refusing(VendorRateLimited("429", retry_after=20.0))
    b = Refusing(VendorAuthFailed)
    plan = [CAND, Candidate(vendor="b", model="y")]
    out = await several({"a": a, "b": b}).run(within(5.0), plan, None)
    assert out.error is not None and out.error.code == "vendor_rate_limited"
    assert out.error.retry_after == pytest.approx(20.0, abs=0.2)
    assert len(a.calls) == len(b.calls) == 1


# Cut calls: a call that went out and was cut before it answered (a begin limit, the
# deadline, a stop) is billed its prompt at an estimate, whatever came after.

PROMPT = {"model": "m", "messages": [{"role": "user", "content": "word " * 800}]}


def hanging(
    timeout_s: dict[str, float] | None = None, *, names: tuple[str, ...] = ("a",)
) -> tuple[Dispatcher, asyncio.Event]:
    """OpenAI adapters (one per name) whose vendors take each call and never answer; the
    event is set once a call has reached a vendor."""
    import httpx

    from agents.adapters.registry import make_adapter
    from schemas.config import VendorConfig

    reached = asyncio.Event()

    async def route(request: Any) -> Any:
        reached.set()
        await asyncio.sleep(30)
        raise AssertionError("never answers")

    http = httpx.AsyncClient(transport=httpx.MockTransport(route))
    adapters = {
        name: make_adapter(
            VendorConfig(
                kind="openai",
                base_url=f"http://{name}.test/v1",
                timeout_s=(timeout_s or {}).get(name),
            ),
            http,
        )
        for name in names
    }
    pools = {name: KeyPool(["k-0123456789"]) for name in names}
    return Dispatcher(adapters, pools, lambda ev: asyncio.sleep(0), max_rounds=1), reached


async def test_an_unstreamed_call_cut_by_the_deadline_is_billed_its_prompt() -> None:
    """The prompt went out and the vendor was still generating at the deadline: it
    finishes (and bills) the call all the same, so the failed request's line names it,
    with its prompt at an estimate, rather than a free call."""
    dispatch, _ = hanging()
    env = request_envelope(deadline_ms=int((time.time() + 0.5) * 1000), body=PROMPT)
    out = await dispatch.run(env, [CAND], None)
    assert out.error is not None and out.error.code == "deadline_exceeded"
    assert out.candidate == CAND and out.usage == Usage.estimated(PROMPT, 0)
    assert out.usage.input_tokens > 1000 and out.cut == []


async def test_an_unstreamed_call_stopped_after_it_went_out_is_billed_its_prompt() -> None:
    from agents.dispatch import Progress

    dispatch, reached = hanging()
    env = request_envelope(deadline_ms=int((time.time() + 10) * 1000), body=PROMPT)
    progress = Progress()
    task = asyncio.create_task(dispatch.run(env, [CAND], None, progress=progress))
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stopped = progress.bill(Outcome(), PROMPT)  # as the handler does when the worker stops
    assert stopped.candidate == CAND and stopped.usage == Usage.estimated(PROMPT, 0)


async def test_every_call_cut_is_billed_on_the_failed_request_s_line() -> None:
    """``a`` is cut by its timeout_s, ``b`` by the deadline: the line names ``b`` (the
    last) and adds ``a``'s call, each at its own candidate's prices."""
    dispatch, _ = hanging({"a": 0.2}, names=("a", "b"))
    a, b = CAND, Candidate(vendor="b", model="y", input_per_1m=3)
    env = request_envelope(deadline_ms=int((time.time() + 1.0) * 1000), body=PROMPT)
    out = await dispatch.run(env, [a, b], None)
    assert out.error is not None and out.error.code == "deadline_exceeded"
    estimate = Usage.estimated(PROMPT, 0)
    assert (out.candidate, out.usage, out.cut) == (b, estimate, [(a, estimate)])


async def test_a_stream_opened_then_broken_before_any_text_is_billed_when_the_next_answers():
    """The vendor opened the stream (its role chunk) and the connection then dropped: it
    took the call (not a refusal), so it is billed its prompt, the next candidate's
    answer notwithstanding — as it is when no candidate answers after it."""
    import httpx

    from agents.adapters.registry import make_adapter
    from schemas.config import VendorConfig

    async def opened_then_dropped() -> Any:
        yield f"data: {json.dumps(_openai_chunk({'role': 'assistant'}))}\n\n".encode()
        raise httpx.ReadError("connection reset")

    answer = "".join(
        f"data: {json.dumps(c)}\n\n"
        for c in (_openai_chunk({"content": "hello"}), _openai_chunk({}, "stop"))
    )

    def route(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream"}
        if request.url.host == "a.test":
            return httpx.Response(200, content=opened_then_dropped(), headers=headers)
        return httpx.Response(200, text=answer + "data: [DONE]\n\n", headers=headers)

    http = httpx.AsyncClient(transport=httpx.MockTransport(route))
    adapters = {
        name: make_adapter(VendorConfig(kind="openai", base_url=f"http://{name}.test/v1"), http)
        for name in ("a", "b")
    }
    pools = {name: KeyPool(["k-0123456789"]) for name in adapters}
    dispatch = Dispatcher(adapters, pools, lambda ev: asyncio.sleep(0), max_rounds=1)
    body = {**PROMPT, "stream": True}
    env = request_envelope(deadline_ms=int((time.time() + 5) * 1000), body=body, stream=True)
    b = Candidate(vendor="b", model="y")
    out = await dispatch.run(env, [CAND, b], lambda chunk: asyncio.sleep(0))
    assert out.error is None and out.candidate == b
    assert out.cut == [(CAND, Usage.estimated(body, 0))]

    out = await dispatch.run(env, [CAND], lambda chunk: asyncio.sleep(0))
    assert out.error is not None and out.candidate == CAND and out.cut == []


def test_a_cut_call_is_added_to_the_request_s_one_line_at_its_own_prices() -> None:
    """The answer's figures plus the cut calls' (tokens, and cost at their candidates'
    prices); the direct cost stays the answer's.  A coalesced line pays for no call."""
    from agents.meter import usage_event
    from tables.prices import PriceSheet, cost_of

    answered = Candidate(vendor="b", model="y", input_per_1m=10, output_per_1m=20)
    cut = Candidate(vendor="a", model="x", input_per_1m=1, output_per_1m=2)
    sheet = PriceSheet(primary={"m": answered})
    env = request_envelope(alias="m")
    usage, estimate = Usage(input_tokens=100, output_tokens=50), Usage(input_tokens=1000)
    line = usage_event(env, sheet, candidate=answered, usage=usage, cut=[(cut, estimate)])
    assert line.vendor == "b" and line.status == "ok"
    assert (line.usage.input_tokens, line.usage.output_tokens) == (1100, 50)
    assert line.cost == pytest.approx(cost_of(answered, usage) + cost_of(cut, estimate))
    assert line.direct_cost == pytest.approx(cost_of(answered, usage))
    coalesced = usage_event(
        env, sheet, candidate=answered, usage=usage, cut=[(cut, estimate)], coalesced=True
    )
    assert coalesced.cost == 0 and coalesced.usage == usage


async def test_an_unstreamed_request_cut_by_the_deadline_has_one_line_that_bills_the_call():
    from agents.handler import RequestHandler
    from agents.route import Router
    from schemas.config import RelayConfig
    from tables.prices import PriceSheet
    from tests.support.sinks import Sink

    config = RelayConfig.model_validate(
        {
            "vendors": {"a": {"kind": "openai", "base_url": "http://a.test/v1"}},
            "models": {"m": {"candidates": [CAND.model_dump()]}},
            "tenants": {"t": {}},
        }
    )
    dispatch, _ = hanging()
    sink = Sink()
    dispatch.on_health = sink.health
    handler = RequestHandler(
        Router(config, {}.get), dispatch, PriceSheet.from_config(config.models), sink
    )
    env = request_envelope(deadline_ms=int((time.time() + 0.5) * 1000), body=PROMPT, alias="m")
    await handler.handle(env)
    [line] = sink.ledger
    assert (line.status, line.error_code, line.vendor) == ("error", "deadline_exceeded", "a")
    assert line.usage == Usage.estimated(PROMPT, 0) and line.cost > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_call_cut_by_its_begin_limit_is_on_the_line_of_the_request_the_next_answered(
    stream: bool,
) -> None:
    import httpx

    from agents.adapters.registry import make_adapter
    from agents.handler import RequestHandler
    from agents.route import Router
    from schemas.config import RelayConfig
    from tables.prices import PriceSheet, cost_of
    from tests.support.sinks import Sink

    a = Candidate(vendor="a", model="x", input_per_1m=1, output_per_1m=2)
    b = Candidate(vendor="b", model="y", input_per_1m=5, output_per_1m=10)
    config = RelayConfig.model_validate(
        {
            "vendors": {
                "a": {"kind": "openai", "base_url": "http://a.test/v1", "timeout_s": 0.3},
                "b": {"kind": "openai", "base_url": "http://b.test/v1"},
            },
            "models": {"m": {"candidates": [a.model_dump(), b.model_dump()]}},
            "tenants": {"t": {}},
        }
    )

    async def opened_then_silent() -> Any:
        yield f"data: {json.dumps(_openai_chunk({'role': 'assistant'}))}\n\n".encode()
        await asyncio.sleep(30)

    usage = {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}

    async def route(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream"}
        if request.url.host == "a.test":
            if stream:
                return httpx.Response(200, content=opened_then_silent(), headers=headers)
            await asyncio.sleep(30)
        if stream:
            chunks = [_openai_chunk({"content": "Hi"}), _openai_chunk({}, "stop"),
                      {"id": "c", "object": "chat.completion.chunk", "choices": [],
                       "usage": usage}]  # fmt: skip
            text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, text=text, headers=headers)
        message = {"role": "assistant", "content": "Hi"}
        return httpx.Response(200, json={"id": "c", "object": "chat.completion", "created": 1,
            "model": "y", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage})  # fmt: skip

    http = httpx.AsyncClient(transport=httpx.MockTransport(route))
    sink = Sink()
    adapters = {name: make_adapter(v, http) for name, v in config.vendors.items()}
    pools = {name: KeyPool(["k-0123456789"]) for name in adapters}
    dispatch = Dispatcher(adapters, pools, sink.health, max_rounds=1)
    handler = RequestHandler(
        Router(config, {}.get), dispatch, PriceSheet.from_config(config.models), sink
    )
    body = {**PROMPT, "stream": stream}
    await handler.handle(request_envelope(body=body, stream=stream, alias="m"))
    [line] = sink.ledger
    answer, estimate = Usage(input_tokens=7, output_tokens=1), Usage.estimated(body, 0)
    assert (line.status, line.vendor) == ("ok", "b")
    assert line.usage.input_tokens == 7 + estimate.input_tokens
    assert line.cost == pytest.approx(cost_of(b, answer) + cost_of(a, estimate))


def _cut_then_answered() -> tuple[Any, Any, Candidate, Candidate]:
    """A handler for alias ``m`` whose first candidate ``a`` takes each call and never
    answers (cut by its 0.3 s begin limit), and whose second ``b`` answers (7 tokens in,
    1 out); its sink; ``a`` and ``b``."""
    import httpx

    from agents.adapters.registry import make_adapter
    from agents.handler import RequestHandler
    from agents.route import Router
    from schemas.config import RelayConfig
    from tables.prices import PriceSheet
    from tests.support.sinks import Sink

    a = Candidate(vendor="a", model="x", input_per_1m=1, output_per_1m=2)
    b = Candidate(vendor="b", model="y", input_per_1m=5, output_per_1m=10)
    config = RelayConfig.model_validate(
        {
            "vendors": {
                "a": {"kind": "openai", "base_url": "http://a.test/v1", "timeout_s": 0.3},
                "b": {"kind": "openai", "base_url": "http://b.test/v1"},
            },
            "models": {"m": {"candidates": [a.model_dump(), b.model_dump()]}},
            "tenants": {"t": {}},
        }
    )
    usage = {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}

    async def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a.test":
            await asyncio.sleep(30)
        message = {"role": "assistant", "content": "Hi"}
        return httpx.Response(200, json={"id": "c", "object": "chat.completion", "created": 1,
            "model": "y", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage})  # fmt: skip

    http = httpx.AsyncClient(transport=httpx.MockTransport(route))
    sink = Sink()
    adapters = {name: make_adapter(v, http) for name, v in config.vendors.items()}
    pools = {name: KeyPool(["k-0123456789"]) for name in adapters}
    dispatch = Dispatcher(adapters, pools, sink.health, max_rounds=1)
    handler = RequestHandler(
        Router(config, {}.get), dispatch, PriceSheet.from_config(config.models), sink
    )
    return handler, sink, a, b


async def test_a_follower_of_a_call_that_cut_another_pays_nothing_and_the_leader_pays_once():
    """Two identical requests share one flight: ``a``'s call is cut by its begin limit
    and ``b`` answers.  The leader's one line bills both calls; the follower's (coalesced)
    line adds nothing, however many calls the leader's request cut."""
    from tables.prices import cost_of

    handler, sink, a, b = _cut_then_answered()
    envs = [request_envelope(body=PROMPT, alias="m") for _ in range(2)]
    await asyncio.gather(*(handler.handle(env) for env in envs))
    assert sorted(line.correlation_id for line in sink.ledger) == sorted(
        env.correlation_id for env in envs
    ), "one line per request"
    first, second = sorted(sink.ledger, key=lambda line: line.coalesced)
    answer, estimate = Usage(input_tokens=7, output_tokens=1), Usage.estimated(PROMPT, 0)
    assert (first.status, first.vendor, first.coalesced) == ("ok", "b", False)
    assert first.cost == pytest.approx(cost_of(b, answer) + cost_of(a, estimate))
    assert (second.status, second.coalesced, second.cost) == ("ok", True, 0.0)
    assert second.usage.input_tokens == 7, "the answer's figures, not the cut call's"


async def test_a_request_whose_cheaper_route_is_down_too_is_billed_what_its_first_run_cut():
    """Rate pressure: the first run's calls were cut (``a``'s, billed its prompt) and it
    ended ``RateLimited``; the cheaper route the handler asks for next is all down, so
    the router refuses it (503, its Retry-After).  The request's one line still bills
    the call that went out, and its tenant's TPM is settled with what it was billed."""
    from agents.dispatch import Progress
    from schemas.errors import NoHealthyVendor, RateLimited
    from tables.prices import cost_of

    handler, sink, a, _ = _cut_then_answered()
    handler.router.config.models["m"].degrade_after_wait_ms = 100
    real_run, real_plan = handler.dispatcher.run, handler.router.plan
    settled: list[Usage] = []
    handler.dispatcher._settle = lambda env, key, used: settled.append(used)  # type: ignore[method-assign]

    async def first_run_cut(env: Any, plan: Any, on_chunk: Any, **kw: Any) -> Outcome:
        if kw.get("admit_tenant", True):  # the first run: a's call went out, then cut
            progress: Progress = kw["progress"]
            progress.cut_off(a, env.body)
            return Outcome(error=RateLimited("held", retry_after=1.0))
        return await real_run(env, plan, on_chunk, **kw)

    def plan(*args: Any, degraded: bool = False, **kw: Any) -> Any:
        if degraded:
            raise NoHealthyVendor("every vendor for this model is down", retry_after=7.0)
        return real_plan(*args, degraded=degraded, **kw)

    handler.dispatcher.run = first_run_cut  # type: ignore[method-assign]
    handler.router.plan = plan  # type: ignore[method-assign]
    env = request_envelope(body=PROMPT, alias="m")
    await handler.handle(env)
    [line] = sink.ledger
    estimate = Usage.estimated(PROMPT, 0)
    assert (line.status, line.error_code, line.vendor) == ("error", "no_healthy_vendor", "a")
    assert line.usage == estimate and line.cost == pytest.approx(cost_of(a, estimate))
    assert line.degraded == "rate_pressure"
    assert settled == [estimate], "the tenant's TPM settled once, with what was billed"


async def test_a_failed_request_s_line_bills_its_cut_calls_and_its_late_shares_together():
    """A request that failed after a call it paid for (``a``'s, the last cut), another cut
    call (``c``'s) and a share of a window-batched call it was cut from (``b``'s, billed
    when that call answers): its one line names ``a`` and adds the other two."""
    from schemas.errors import DeadlineExceeded
    from tables.prices import cost_of

    handler, sink, a, b = _cut_then_answered()
    c = Candidate(vendor="c", model="z", input_per_1m=3, output_per_1m=3)
    estimate, share = Usage.estimated(PROMPT, 0), Usage(input_tokens=11, output_tokens=2)
    answer: asyncio.Future[VendorResult] = asyncio.get_running_loop().create_future()
    env = request_envelope(body=PROMPT, alias="m")
    await handler._fail(
        env,
        DeadlineExceeded("late"),
        paid=(a, estimate),
        late=[(b, answer)],
        cut=[(c, estimate)],
    )
    assert sink.ledger == [], "written once the shared call answers"
    answer.set_result(VendorResult({"choices": []}, share))
    for task in list(handler.spawned):
        await task
    [line] = sink.ledger
    assert (line.status, line.vendor, line.batched) == ("error", "a", True)
    assert line.usage.input_tokens == 2 * estimate.input_tokens + 11
    assert line.cost == pytest.approx(
        cost_of(a, estimate) + cost_of(c, estimate) + cost_of(b, share)
    )


class Held:
    """A healthy vendor that answers once ``go_on`` is set (its calls' own time limits
    kept), and says when a call has come."""

    def __init__(self) -> None:
        self.go_on, self.called = asyncio.Event(), asyncio.Event()
        self.limits: list[float] = []

    async def chat(self, call: Any) -> VendorResult:
        self.limits.append(call.timeout_s)
        self.called.set()
        await asyncio.wait_for(self.go_on.wait(), 10)
        return VendorResult({"choices": []}, Usage(input_tokens=1))

    def stream(self, call: Any) -> Any:
        raise NotImplementedError


async def test_a_call_follows_its_deadline_when_it_moves_later():
    """A call several requests share runs to the latest of their deadlines, which moves
    as they join: one under way is not cut at the deadline it began with, and the
    adapter's own time limit (httpx's) does not cut it there either."""
    from agents.dispatch import Deadline

    vendor, seen = Held(), list[HealthEvent]()
    env = within(0.2)
    until = [env.deadline_ms / 1000]
    deadline = Deadline(lambda: until[0])
    run = asyncio.ensure_future(dispatcher(vendor, seen).run(env, [CAND], None, deadline=deadline))
    await vendor.called.wait()
    until_was, until[0] = until[0], time.time() + 30  # a follower with a later one joined
    deadline.moved()
    # The vendor answers past the deadline the call began with.
    asyncio.get_running_loop().call_later(until_was - time.time() + 0.1, vendor.go_on.set)
    out = await run
    assert out.error is None and out.candidate == CAND
    assert vendor.limits[0] > 30, "the adapter's own limit leaves the cut to the deadline"
    assert [e.ok for e in seen] == [True]


class HeldToItsLimit(Held):
    """``Held``, but its own time limit (httpx's read timeout) cuts the call as an
    adapter's would: a vendor failure."""

    async def chat(self, call: Any) -> VendorResult:
        self.limits.append(call.timeout_s)
        self.called.set()
        try:
            await asyncio.wait_for(self.go_on.wait(), min(call.timeout_s, 10))
        except TimeoutError:
            raise VendorUnavailable("vendor timed out") from None
        return VendorResult({"choices": []}, Usage(input_tokens=1))


async def test_a_share_of_the_deadline_follows_it_when_it_moves_later(monkeypatch):
    """A spare candidate leaves the first a share of the deadline to begin answering: the
    adapter's own limit is not that share, fixed when the call went out, but the call's
    window, which follows the deadline should a later waiter move it, so the vendor
    answering inside the moved share is not cut as a failure (unbilled, its breaker
    charged)."""
    from agents import dispatch as dispatch_module
    from agents.dispatch import Deadline

    monkeypatch.setattr(dispatch_module, "HANG_S", 0.1)  # (a 1 s deadline gets a share)
    a, b, seen = HeldToItsLimit(), Held(), list[HealthEvent]()
    b.go_on.set()

    async def on_health(ev: HealthEvent) -> None:
        seen.append(ev)

    pools = {"a": KeyPool(["k"]), "b": KeyPool(["k"])}
    run_on = Dispatcher({"a": a, "b": b}, pools, on_health)
    env = within(1.0)
    until = [env.deadline_ms / 1000]
    deadline = Deadline(lambda: until[0])
    spare = Candidate(vendor="b", model="y", input_per_1m=1)
    run = asyncio.ensure_future(run_on.run(env, [CAND, spare], None, deadline=deadline))
    await a.called.wait()
    until[0] = time.time() + 30  # a follower with a later one joined
    deadline.moved()
    # a answers past the share it began with (0.75 s), well inside the moved one.
    asyncio.get_running_loop().call_later(1.0, a.go_on.set)
    out = await run
    assert a.limits[0] > 30, "the adapter's own limit leaves the cut to the call's window"
    assert out.error is None and out.candidate == CAND and b.limits == []
    assert [(e.vendor, e.ok) for e in seen] == [("a", True)]


async def test_a_call_is_cut_when_its_deadline_moves_earlier():
    """The waiter with the latest deadline left: the call under way is cut at the
    deadline of those still waiting, which has passed, as any deadline cuts it (the
    vendor's health not in question)."""
    from agents.dispatch import Deadline

    vendor, seen = Held(), list[HealthEvent]()
    env = within(30)
    until = [env.deadline_ms / 1000]
    deadline = Deadline(lambda: until[0])
    run = asyncio.ensure_future(dispatcher(vendor, seen).run(env, [CAND], None, deadline=deadline))
    await vendor.called.wait()
    until[0] = time.time()
    deadline.moved()
    out = await asyncio.wait_for(run, 5)  # (a hang guard: cut at once)
    assert out.error is not None and out.error.code == "deadline_exceeded"
    assert [e.error_code for e in seen] == ["deadline_exceeded"]


async def test_no_call_starts_once_the_deadline_of_every_waiter_has_passed():
    from agents.dispatch import Deadline

    vendor, seen = Held(), list[HealthEvent]()
    env = within(30)
    out = await dispatcher(vendor, seen).run(
        env, [CAND], None, deadline=Deadline(lambda: time.time() - 1)
    )
    assert out.error is not None and out.error.code == "deadline_exceeded"
    assert vendor.limits == [] and seen == []
