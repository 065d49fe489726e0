"""A vendor's time to begin answering: a vendor that takes a call and never answers is
cut in time for the next candidate to answer within the deadline, and counted against
its health; keep-alives do not stretch that time; an answer that began in time may run
on until the deadline."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

import agents.dispatch as dispatch_module
from agents.adapters.registry import make_adapter
from agents.dispatch import Dispatcher
from agents.keys import KeyPool
from schemas.config import Candidate, VendorConfig
from schemas.envelope import HealthEvent
from schemas.usage import Usage
from tables.health import BreakerPolicy, Health, record
from tests.support.envelopes import request_envelope

MESSAGE_START: dict[str, Any] = {
    "type": "message_start",
    "message": {"id": "m", "type": "message", "role": "assistant", "model": "c",
                "content": [], "usage": {"input_tokens": 9, "output_tokens": 1}},
}  # fmt: skip
ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "backup here"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}  # fmt: skip


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


class Events(httpx.AsyncByteStream):
    """A stream body written as ``parts`` comes, at its own pace."""

    def __init__(self, parts: AsyncIterator[bytes]) -> None:
        self.parts = parts

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self.parts:
            yield part


def streaming(parts: Callable[[], AsyncIterator[bytes]]) -> Any:
    """A vendor answering each call with the event stream ``parts()`` makes."""

    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=Events(parts())
        )

    return answer


async def streamed(dispatch: Dispatcher, plan: list[Candidate]) -> tuple[Any, str]:
    """A streamed request with 5 s to go: its outcome, and the text it forwarded."""
    got: list[dict[str, Any]] = []

    async def sink(chunk: dict[str, Any]) -> None:
        got.append(chunk)

    out = await dispatch.run(envelope(5.0, stream=True), plan, sink)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in got if c["choices"])
    return out, text


def vendors(
    primary: Any, *, timeout_s: float | None = None
) -> tuple[Dispatcher, list[HealthEvent], list[Candidate]]:
    """``anthropic`` answers with ``primary(request)``; ``backup`` (OpenAI) at once."""

    async def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "anthropic.test":
            return await primary(request)  # type: ignore[no-any-return]
        stream = json.loads(request.content).get("stream")
        if stream:
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": "backup here"},
                                  "finish_reason": "stop"}]}  # fmt: skip
            text = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"
            return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=ANSWER)

    http = httpx.AsyncClient(transport=httpx.MockTransport(route))
    configs = {
        "anthropic": VendorConfig(
            kind="anthropic", base_url="http://anthropic.test/v1", timeout_s=timeout_s
        ),
        "backup": VendorConfig(kind="openai", base_url="http://backup.test/v1"),
    }
    seen: list[HealthEvent] = []

    async def on_health(ev: HealthEvent) -> None:
        seen.append(ev)

    dispatch = Dispatcher(
        {name: make_adapter(c, http) for name, c in configs.items()},
        {name: KeyPool(["k-0123456789"]) for name in configs},
        on_health,
        max_rounds=1,
    )
    plan = [Candidate(vendor="anthropic", model="c"), Candidate(vendor="backup", model="m")]
    return dispatch, seen, plan


def envelope(seconds: float, *, stream: bool = False) -> Any:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return request_envelope(
        deadline_ms=int((time.time() + seconds) * 1000), body=body, stream=stream
    )


async def hangs(request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(30)
    raise AssertionError("never answers")


async def test_a_vendor_that_never_answers_leaves_the_next_one_time_to_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No timeout_s set: the first vendor has 3/4 of the deadline, then the backup
    answers, and the hang counts against the first vendor's health (the deadline here
    scaled down from the default 120 s, HANG_S and HANG_WHOLE_S with it: 1/60 of each).

    The backup answering at all says the first vendor was cut before the deadline, and
    the time taken that it had its 3/4 (1.5 s) first, not HANG_S or HANG_WHOLE_S.  A
    share counts as a hang from 1 s: a loaded machine may reach the call 0.6 s late and
    the hang still counts (with 1.4 s, 0.13 s late was too late)."""
    monkeypatch.setattr(dispatch_module, "HANG_S", 0.5)
    monkeypatch.setattr(dispatch_module, "HANG_WHOLE_S", 1.0)
    dispatch, seen, plan = vendors(hangs)
    started = time.monotonic()
    out = await dispatch.run(envelope(2.0), plan, None)
    took = time.monotonic() - started
    assert out.error is None and out.candidate == plan[1]
    assert out.body["choices"][0]["message"]["content"] == "backup here"
    assert took >= 1.4, took
    first = seen[0]
    assert (first.vendor, first.ok, first.error_code) == ("anthropic", False, "vendor_unavailable")
    health = record(Health(), first, BreakerPolicy(), time.time())
    assert health.consecutive_failures == 1, "the breaker counts a hang"


async def test_a_short_deadline_is_not_shared_out_between_calls() -> None:
    """A 2 s deadline is the client's own: a vendor that is merely slow keeps all of
    it (each call cut may be billed all the same), and its breaker hears nothing."""
    calls: list[str] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        await asyncio.sleep(30)
        raise AssertionError("never answers")

    dispatch, seen, plan = vendors(slow)
    out = await dispatch.run(envelope(1.0), plan, None)
    assert out.error is not None and out.error.code == "deadline_exceeded"
    assert calls == ["anthropic.test"]
    assert (seen[0].vendor, seen[0].error_code) == ("anthropic", "deadline_exceeded")


async def test_a_vendor_alone_keeps_the_whole_deadline() -> None:
    """With nobody to take over, cutting the only vendor early helps no one."""

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.8)
        message = {**MESSAGE_START["message"], "content": [{"type": "text", "text": "late"}],
                   "stop_reason": "end_turn"}  # fmt: skip
        return httpx.Response(200, json=message)

    dispatch, _, plan = vendors(slow)
    out = await dispatch.run(envelope(1.0), plan[:1], None)
    assert out.error is None and out.candidate == plan[0], out.error
    assert out.body["choices"][0]["message"]["content"] == "late"


async def test_keep_alives_do_not_stretch_a_vendor_s_time_to_begin() -> None:
    """Anthropic's pings every 50 ms after message_start, and never a word: its own
    timeout_s (0.3 s) is a limit on the wait as a whole, not on each read."""

    async def pings() -> AsyncIterator[bytes]:
        yield event("message_start", MESSAGE_START)
        for _ in range(200):
            await asyncio.sleep(0.05)
            yield event("ping", {"type": "ping"})

    dispatch, seen, plan = vendors(streaming(pings), timeout_s=0.3)
    started = time.monotonic()
    out, text = await streamed(dispatch, plan)
    assert time.monotonic() - started < 1.5
    assert out.error is None and out.candidate == plan[1]
    assert text == "backup here", "nothing of the silent stream reached the client"
    assert (seen[0].vendor, seen[0].error_code) == ("anthropic", "vendor_unavailable")


async def test_an_answer_that_began_in_time_runs_on_past_the_vendor_s_limit() -> None:
    """timeout_s 0.3 s, the first words at once, then a word every 0.1 s for 0.7 s: the
    answer is whole, from the first vendor.  (The first word came 0.1 s in, a third of
    the limit: a loaded machine's slow turns could put it past the limit.)"""

    async def words() -> AsyncIterator[bytes]:
        yield event("message_start", MESSAGE_START)
        block = {"type": "text", "text": ""}
        yield event("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": block})  # fmt: skip
        for n in range(8):
            if n:
                await asyncio.sleep(0.1)
            delta = {"type": "text_delta", "text": f"w{n} "}
            yield event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                "delta": delta})  # fmt: skip
        yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield event("message_delta", {"type": "message_delta", "usage": {"output_tokens": 8},
                                      "delta": {"stop_reason": "end_turn"}})  # fmt: skip
        yield event("message_stop", {"type": "message_stop"})

    dispatch, seen, plan = vendors(streaming(words), timeout_s=0.3)
    out, text = await streamed(dispatch, plan)
    assert out.error is None and out.candidate == plan[0]
    assert text == "".join(f"w{n} " for n in range(8))
    assert [e.ok for e in seen] == [True]


async def test_a_healthy_vendor_cut_at_a_share_of_a_short_deadline_is_not_blamed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client's short deadline (scaled down: HANG_WHOLE_S 3 s stands for 90 s, so
    1 s stands for 30 s) gives the first vendor 3/4 of it; a healthy vendor answering
    unstreamed just past that is cut and the backup answers, but the cut came from the
    client's deadline: the breaker hears ``deadline_exceeded`` and stays closed for
    everyone else, however many such requests come."""
    monkeypatch.setattr(dispatch_module, "HANG_S", 0.5)
    monkeypatch.setattr(dispatch_module, "HANG_WHOLE_S", 3.0)

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.85)
        message = {**MESSAGE_START["message"], "content": [{"type": "text", "text": "late"}],
                   "stop_reason": "end_turn"}  # fmt: skip
        return httpx.Response(200, json=message)

    dispatch, seen, plan = vendors(slow)
    outs = await asyncio.gather(*(dispatch.run(envelope(1.0), plan, None) for _ in range(6)))
    assert all(o.error is None and o.candidate == plan[1] for o in outs)
    first = [e for e in seen if e.vendor == "anthropic"]
    assert [e.error_code for e in first] == ["deadline_exceeded"] * 6
    health = Health()
    for e in first:
        health = record(health, e, BreakerPolicy(), time.time())
    assert health.state == "closed" and health.consecutive_failures == 0


async def test_a_stream_that_has_not_begun_within_its_share_still_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream is judged on its first content, which no healthy vendor holds back for
    HANG_S: cut at a share that long (scaled down: 1.5 s of a 2 s deadline, HANG_S 1 s),
    its silence counts against its health, whatever the whole-answer floor."""
    monkeypatch.setattr(dispatch_module, "HANG_S", 1.0)

    async def pings() -> AsyncIterator[bytes]:
        yield event("message_start", MESSAGE_START)
        for _ in range(100):
            await asyncio.sleep(0.05)
            yield event("ping", {"type": "ping"})

    dispatch, seen, plan = vendors(streaming(pings))
    got: list[dict[str, Any]] = []

    async def sink(chunk: dict[str, Any]) -> None:
        got.append(chunk)

    out = await dispatch.run(envelope(2.0, stream=True), plan, sink)
    assert out.error is None and out.candidate == plan[1]
    assert (seen[0].vendor, seen[0].error_code) == ("anthropic", "vendor_unavailable")


async def opened_then_silent() -> AsyncIterator[bytes]:
    """The vendor takes the call (message_start) and then says nothing."""
    yield event("message_start", MESSAGE_START)
    await asyncio.sleep(30)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_call_cut_by_its_begin_limit_is_billed_when_the_next_one_answers(
    stream: bool,
) -> None:
    """Unstreamed, the first vendor took the call and hung past its timeout_s; streamed,
    it opened its stream and went quiet.  It was cut and the backup answered; the vendor
    bills the cut call's prompt all the same, so the outcome carries it beside the
    answer (the count its message_start gave, else an estimate), for the request's one
    ledger line — as it would were the request to fail instead."""
    dispatch, _, plan = vendors(streaming(opened_then_silent) if stream else hangs, timeout_s=0.3)
    env = envelope(5.0, stream=stream)
    out = await dispatch.run(env, plan, _ignore if stream else None)
    assert out.error is None and out.candidate == plan[1]
    said = Usage(input_tokens=9, output_tokens=1)  # MESSAGE_START's count
    assert out.cut == [(plan[0], said if stream else Usage.estimated(env.body, 0))]
    assert out.spent().input_tokens == out.usage.input_tokens + out.cut[0][1].input_tokens


async def test_a_stream_cut_before_the_vendor_opened_it_is_not_billed() -> None:
    """No answer at all (not even the stream's opening) within timeout_s: the vendor did
    not take the call, as far as the relay can tell, and nothing is billed for it."""
    dispatch, _, plan = vendors(hangs, timeout_s=0.3)
    out = await dispatch.run(envelope(5.0, stream=True), plan, _ignore)
    assert out.error is None and out.candidate == plan[1] and out.cut == []


async def _ignore(chunk: dict[str, Any]) -> None:
    return None
