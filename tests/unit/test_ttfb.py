"""Time to first byte (relay_request_ttfb_seconds): a stream's answer starts at its first
real frame, not at a keep-alive it sent while it waited; an answer is timed once; a
request that sent no byte of an answer is not timed at all."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY

import gateway.relay
import gateway.sse
from gateway import metrics
from gateway.metrics import ANTHROPIC_PING, OPENAI_KEEPALIVE, Measure
from schemas.envelope import ReplyEvent, RequestEnvelope
from tests.support.gateway import AUTH, answer_hello, gateway_app

CHAT = "/v1/chat/completions"


def ttfb(endpoint: str = CHAT, priority: str = "realtime") -> tuple[float, float]:
    """(count, sum) of the endpoint's TTFB histogram."""
    labels = {"endpoint": endpoint, "priority": priority}
    count = REGISTRY.get_sample_value("relay_request_ttfb_seconds_count", labels) or 0.0
    total = REGISTRY.get_sample_value("relay_request_ttfb_seconds_sum", labels) or 0.0
    return count, total


def since(
    before: tuple[float, float], endpoint: str = CHAT, priority: str = "realtime"
) -> tuple[float, Any]:
    """(observations, seconds) added to the histogram since ``before``."""
    count, total = ttfb(endpoint, priority)
    return count - before[0], pytest.approx(total - before[1])


class Clock:
    """perf_counter as the scripted app moves it on."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


Step = tuple[float, dict[str, Any]]  # (clock at which it is sent, ASGI message)


async def run(
    steps: list[Step], clock: Clock, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """``steps`` sent by an app behind ``Measure``, the clock set to each one's time."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for at, message in steps:
            clock.t = at
            await send(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    scope = {"type": "http", "path": CHAT, "headers": headers or []}
    await Measure(app, known={CHAT})(scope, receive, send)


def start(status: int = 200) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": []}


def body(data: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(metrics.time, "perf_counter", clock)
    return clock


@pytest.mark.parametrize(
    "keepalive", [OPENAI_KEEPALIVE, ANTHROPIC_PING], ids=["openai", "anthropic"]
)
async def test_a_stream_is_timed_at_its_first_real_frame_not_at_a_keepalive(
    clock: Clock, keepalive: bytes
) -> None:
    before = ttfb()
    steps = [
        (0.1, start()),
        (15.0, body(keepalive)),
        (30.0, body(keepalive)),
        (42.0, body(b'data: {"choices": []}\n\n')),
        (43.0, body(keepalive)),  # a quiet spell later changes nothing
        (90.0, body(b"data: [DONE]\n\n")),
        (90.0, body(b"", more=False)),
    ]
    await run(steps, clock)
    assert since(before) == (1, 42.0)


async def test_an_answer_in_several_bodies_is_timed_once_at_its_first(clock: Clock) -> None:
    before = ttfb()
    await run([(0.5, start()), (2.0, body(b'{"id": ')), (3.0, body(b"1}", more=False))], clock)
    assert since(before) == (1, 2.0)


async def test_a_plain_answer_is_timed_once_in_its_lane(clock: Clock) -> None:
    before = ttfb(priority="batch")
    await run(
        [(0.5, start()), (0.75, body(b"{}", more=False))], clock, [(b"x-relay-priority", b"batch")]
    )
    assert since(before, priority="batch") == (1, 0.75)


@pytest.mark.parametrize(
    "steps",
    [
        [(0.5, start(204)), (0.5, body(b"", more=False))],  # an empty answer
        [(1.0, start()), (15.0, body(OPENAI_KEEPALIVE)), (20.0, body(ANTHROPIC_PING))],  # left
    ],
    ids=["empty", "keepalives-only"],
)
async def test_a_request_that_sent_no_byte_of_an_answer_is_not_timed(
    clock: Clock, steps: list[Step]
) -> None:
    before = ttfb()
    await run(steps, clock)
    assert since(before) == (0, 0.0)


async def test_an_app_that_failed_before_answering_is_not_timed(clock: Clock) -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("a bug")

    async def nothing(*_: Any) -> None:
        return None

    before = ttfb()
    with pytest.raises(RuntimeError):
        await Measure(broken, known={CHAT})({"type": "http", "path": CHAT}, nothing, nothing)
    assert since(before) == (0, 0.0)


async def _timed_bodies(app: Any, request: dict[str, Any]) -> list[tuple[float, bytes]]:
    """The app driven over ASGI (httpx would buffer): each body it sends, with when."""
    raw = json.dumps(request).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in AUTH.items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": CHAT, "raw_path": CHAT.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("relay", 80), "state": {},
    }  # fmt: skip
    messages = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()
        return {}

    began, seen = time.perf_counter(), []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            seen.append((time.perf_counter() - began, message.get("body", b"")))

    await app(scope, receive, send)
    return seen


async def test_the_gateways_stream_slow_to_start_is_timed_past_its_keepalives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the real routes: the stream starts, keeps the line alive while the first
    token is late, and its time to first byte is that token's."""
    monkeypatch.setattr(gateway.relay, "STREAM_START_S", 0.1)
    monkeypatch.setattr(gateway.sse.openai_sse, "__defaults__", (0.05,))

    def slow(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        return [(0.6 if i == 0 else 0.0, event) for i, (_, event) in enumerate(answer_hello(env))]

    app, _ = gateway_app(slow)
    before = ttfb()
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    bodies = await _timed_bodies(app, {**request, "stream": True})
    first_data = next(t for t, b in bodies if b.startswith(b"data: {"))
    assert any(b == OPENAI_KEEPALIVE and t < first_data for t, b in bodies)
    count, total = ttfb()
    assert count - before[0] == 1
    assert 0.5 <= total - before[1] <= first_data

    bodies = await _timed_bodies(app, request)  # not streamed: one body, timed once
    assert [b for _, b in bodies if b] and ttfb()[0] - count == 1
