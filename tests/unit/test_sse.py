"""EventStream releases its request however the stream ends; silent streams keep alive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import pytest
from openai._streaming import SSEDecoder
from starlette.requests import ClientDisconnect

from gateway.sse import EventStream, anthropic_sse, openai_sse, responses_sse
from schemas.usage import Usage


async def never() -> AsyncIterator[bytes]:
    await asyncio.Event().wait()  # the first chunk never comes
    yield b""


async def two() -> AsyncIterator[bytes]:
    yield b"data: 1\n\n"
    yield b"data: 2\n\n"


def scope(spec: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"spec_version": spec}, "method": "POST", "headers": []}


async def test_a_client_leaving_before_the_first_chunk_still_releases_the_request() -> None:
    """ASGI 2.3 (uvicorn here): Starlette cancels the stream when the client disconnects,
    before the content generator ever started, so only the response can release it."""
    closed: list[bool] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    response = EventStream(never(), lambda: closed.append(True))
    await asyncio.wait_for(response(scope("2.3"), receive, send), timeout=5)
    assert closed == [True]


async def test_a_finished_stream_releases_once() -> None:
    closed: list[bool] = []
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    async def send(message: dict[str, Any]) -> None:
        body.append(message.get("body", b""))

    await EventStream(two(), lambda: closed.append(True))(scope("2.3"), receive, send)
    assert b"".join(body) == b"data: 1\n\ndata: 2\n\n" and closed == [True]


def chunk(text: str) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


async def slow_start(sent: list[bytes]) -> AsyncIterator[dict[str, Any] | Usage]:
    """A model thinking before its first token: silent until the client has been sent
    two frames (a second at most), rather than for a time a loaded machine may not fit
    two keep-alives into."""
    for _ in range(100):
        if len(sent) >= 2:
            break
        await asyncio.sleep(0.01)
    yield chunk("hel")
    yield chunk("lo")
    yield Usage(input_tokens=3, output_tokens=2)


async def collect(stream: AsyncIterator[bytes], sent: list[bytes] | None = None) -> bytes:
    """The stream's bytes; each frame also goes to ``sent`` as it is written."""
    parts = [] if sent is None else sent
    async for part in stream:
        parts.append(part)
    return b"".join(parts)


async def test_a_silent_openai_stream_sends_keepalives_the_sdk_skips() -> None:
    sent: list[bytes] = []
    raw = await collect(openai_sse(slow_start(sent), include_usage=True, keepalive_s=0.1), sent)
    assert raw.startswith(b": keepalive\n\n: keepalive\n\n")
    events = [e async for e in SSEDecoder().aiter_bytes(_aiter(raw))]
    data = [e.data for e in events]
    assert data[-1] == "[DONE]" and len(data) == 4, "two chunks, usage, done: nothing else"


async def test_a_silent_anthropic_stream_pings() -> None:
    sent: list[bytes] = []
    raw = await collect(anthropic_sse(slow_start(sent), "claude", "msg_1", keepalive_s=0.1), sent)
    names = [line for line in raw.decode().splitlines() if line.startswith("event: ")]
    assert names[:2] == ["event: ping", "event: ping"]
    assert "event: message_start" in names and names[-1] == "event: message_stop"


async def test_a_client_leaving_mid_wait_cancels_the_pending_read() -> None:
    cancelled = asyncio.Event()

    async def stuck() -> AsyncIterator[dict[str, Any] | Usage]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        yield chunk("never")

    stream = cast(
        AsyncGenerator[bytes, None], openai_sse(stuck(), include_usage=False, keepalive_s=0.05)
    )
    assert await anext(stream) == b": keepalive\n\n"
    await stream.aclose()
    await asyncio.wait_for(cancelled.wait(), timeout=2)


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
async def test_a_response_that_ends_inside_send_stops_its_read_ahead(spec: str) -> None:
    """A client that stopped reading (``send`` waits), then left: the response ends inside
    ``send`` (cancelled there under ASGI 2.3, an ``OSError`` from it under 2.4), its
    events paused at a ``yield``.  Their read of the answer and their keep-alive timer
    stop then, not when the garbage collector gets to them (meanwhile the read waited out
    the request's deadline and the gateway metered a 504 for a request withdrawn)."""
    cancelled, left = asyncio.Event(), asyncio.Event()
    closed: list[bool] = []

    async def one_then_stuck() -> AsyncIterator[dict[str, Any] | Usage]:
        yield chunk("one")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        yield chunk("never")

    async def receive() -> dict[str, Any]:
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message.get("body"):  # the first event: the client reads no more, then leaves
            left.set()
            if spec == "2.4":
                raise OSError("connection lost")
            await asyncio.Event().wait()

    events = openai_sse(one_then_stuck(), include_usage=False, keepalive_s=0.05)
    response = EventStream(events, lambda: closed.append(True))
    with contextlib.suppress(ClientDisconnect):
        await asyncio.wait_for(response(scope(spec), receive, send), timeout=5)
    assert closed == [True]
    await asyncio.wait_for(cancelled.wait(), timeout=1)


async def _aiter(raw: bytes) -> AsyncIterator[bytes]:
    yield raw


async def test_an_anthropic_stream_s_error_event_says_anthropic_s_error_type() -> None:
    """After the 200 the error is an event, typed as Anthropic types that status."""
    import json

    from schemas.errors import (
        BudgetExceeded,
        NotFound,
        NoWorker,
        RelayError,
        VendorOverloaded,
        VendorUnavailable,
    )

    def failing(err: RelayError) -> AsyncIterator[dict[str, Any] | Usage]:
        async def chunks() -> AsyncIterator[dict[str, Any] | Usage]:
            delta = {"role": "assistant", "content": "Hel"}
            yield {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            raise err

        return chunks()

    for err, kind in (
        (BudgetExceeded("spent"), "billing_error"),
        (NotFound("gone"), "not_found_error"),
        (NoWorker("none"), "overloaded_error"),
        (VendorOverloaded("anthropic: overloaded_error: Overloaded"), "overloaded_error"),
        (VendorUnavailable("openai: HTTP 500: boom"), "api_error"),
    ):
        raw = (await collect(anthropic_sse(failing(err), "claude", "msg_1"))).decode()
        last = raw.strip().split("\n\n")[-1].splitlines()
        assert last[0] == "event: error"
        body = json.loads(last[1].removeprefix("data: "))
        assert body == {"type": "error", "error": {"type": kind, "message": err.message}}


def _response_events(raw: bytes) -> list[dict[str, Any]]:
    import json

    blocks = raw.decode().strip().split("\n\n")
    return [json.loads(b.split("data: ", 1)[1]) for b in blocks if "data: " in b]


async def test_a_responses_stream_s_late_client_error_stays_the_client_s() -> None:
    """A vendor's 400 after the stream began: the error event names its field and
    response.failed is invalid_prompt, not server_error."""
    from schemas.errors import VendorBadRequest

    async def chunks() -> AsyncIterator[dict[str, Any] | Usage]:
        raise VendorBadRequest("openai: HTTP 400: image too large", param="messages")
        yield {}

    events = _response_events(await collect(responses_sse(chunks(), {"model": "m"}, "resp_1")))
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert (events[-2]["code"], events[-2]["param"]) == ("vendor_bad_request", "input")
    assert events[-1]["response"]["error"]["code"] == "invalid_prompt"


async def test_a_responses_stream_that_hits_a_bug_still_ends_failed(caplog: Any) -> None:
    """An unexpected exception mid-stream is logged, and the client gets the error event
    and response.failed (internal_error, server_error) rather than a cut stream."""

    async def chunks() -> AsyncIterator[dict[str, Any] | Usage]:
        delta = {"role": "assistant", "content": "Hel"}
        yield {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        raise TypeError("a bug")

    events = _response_events(await collect(responses_sse(chunks(), {"model": "m"}, "resp_1")))
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert events[-2]["code"] == "internal_error"
    failed = events[-1]["response"]
    assert failed["error"]["code"] == "server_error" and failed["output"][0]["type"] == "message"
    assert "Responses stream failed" in caplog.text and "TypeError: a bug" in caplog.text


async def test_an_openai_client_never_sees_the_anthropic_start_usage() -> None:
    async def chunks() -> AsyncIterator[dict[str, Any] | Usage]:
        delta = {"role": "assistant", "content": ""}
        yield {
            "id": "c",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            "anthropic_start_usage": {"input_tokens": 25},
        }
        yield Usage(input_tokens=25, output_tokens=1)

    raw = await collect(openai_sse(chunks(), include_usage=True))
    assert b"anthropic_start_usage" not in raw and raw.count(b"data: ") == 3


def reasoning(text: str) -> dict[str, Any]:
    return {**chunk(""), "choices": [{"index": 0, "delta": {"reasoning_content": text}}]}


async def reasons_then_answers(log: list[str], beat: str) -> AsyncIterator[dict[str, Any] | Usage]:
    """A vendor whose thinking comes as reasoning_content (Ollama, DeepSeek, vLLM), which
    an Anthropic client is not shown, then silent until the client has been sent two
    keep-alives (a second at most), then the answer.  What it does goes in ``log``, where
    the test puts what the client is sent: one order of events, no clock."""
    yield chunk("")
    for _ in range(5):
        await asyncio.sleep(0.03)
        log.append("reasoning")
        yield reasoning("hmm ")
    log.append("quiet")  # the vendor itself silent a while
    quiet = len(log)
    for _ in range(100):
        if log[quiet:].count(beat) >= 2:
            break
        await asyncio.sleep(0.01)
    log.append("answer")
    yield chunk("Answer")
    yield Usage(input_tokens=3, output_tokens=12)


async def test_a_stream_that_has_begun_keeps_alive_while_nothing_is_written() -> None:
    """Not only before the first chunk: while the client is shown nothing (reasoning an
    Anthropic client does not see, a vendor gone quiet) a keep-alive goes out whenever
    keepalive_s has passed since the last frame, in each dialect's own form.  Asserted
    on the order of events, not on gaps between them: a loaded machine stretches those."""
    for dialect, beat in (("anthropic", "event: ping"), ("openai", ": keepalive")):
        log: list[str] = []
        vendor = reasons_then_answers(log, beat)
        stream = (
            anthropic_sse(vendor, "claude", "msg_1", keepalive_s=0.06)
            if dialect == "anthropic"
            else openai_sse(vendor, include_usage=True, keepalive_s=0.06)
        )
        async for frame in stream:
            log.append(frame.decode().split("\n")[0])
        quiet, answer = log.index("quiet"), log.index("answer")
        # Two keep-alives while the vendor said nothing, within its second of patience
        # (at 60 ms they take 120 ms): else it answers first and this fails.
        assert log[quiet:answer].count(beat) >= 2, log
        assert log[-1] in ("event: message_stop", "data: [DONE]"), log
        if dialect == "anthropic":
            # Reasoning the client is not shown does not put the keep-alive off: one
            # goes out between the vendor's first and last reasoning chunks (at 60 ms
            # and 120 ms of the 150 ms of them).
            first = log.index("reasoning")
            last = max(i for i, event in enumerate(log) if event == "reasoning")
            assert beat in log[first:last], log


async def test_a_stream_that_flows_sends_no_keepalives() -> None:
    async def flowing() -> AsyncIterator[dict[str, Any] | Usage]:
        for _ in range(8):
            await asyncio.sleep(0.02)
            yield chunk("x")
        yield Usage(input_tokens=1, output_tokens=8)

    raw = await collect(openai_sse(flowing(), include_usage=False, keepalive_s=0.1))
    assert b"keepalive" not in raw and raw.count(b"data: ") == 9


async def test_an_anthropic_stream_that_hits_a_bug_still_ends_with_an_error_event(
    caplog: Any,
) -> None:
    """An unexpected exception mid-stream is logged, and the client gets Anthropic's
    ``error`` event (api_error), which the official SDK raises as an API error, rather
    than a stream cut with no word."""
    import json

    import anthropic
    import httpx2
    from anthropic.lib.streaming import MessageStreamEvent

    async def chunks() -> AsyncIterator[dict[str, Any] | Usage]:
        delta = {"role": "assistant", "content": "Hel"}
        yield {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        raise TypeError("a bug")

    raw = await collect(anthropic_sse(chunks(), "claude", "msg_1"))
    last = raw.decode().strip().split("\n\n")[-1].splitlines()
    assert last[0] == "event: error"
    error = {"type": "api_error", "message": "internal error; it has been logged"}
    assert json.loads(last[1].removeprefix("data: ")) == {"type": "error", "error": error}
    assert "Anthropic stream failed" in caplog.text and "TypeError: a bug" in caplog.text

    def answer(request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": "text/event-stream"}
        return httpx2.Response(200, content=raw, headers=headers)

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
    claude = anthropic.AsyncAnthropic(api_key="x", http_client=http, max_retries=0)
    seen: list[MessageStreamEvent] = []
    user: Any = [{"role": "user", "content": "hi"}]
    try:
        async with claude.messages.stream(model="claude", max_tokens=9, messages=user) as s:
            async for event in s:
                seen.append(event)
    except anthropic.APIStatusError as err:
        assert err.body == {"type": "error", "error": error}
    else:
        raise AssertionError("the SDK raises the error event")
    assert [e.type for e in seen][:2] == ["message_start", "content_block_start"]


async def test_a_late_vendor_error_tells_openai_clients_the_vendor_s_code() -> None:
    """A vendor's 400 after the stream began: the chat stream's error line and the
    Responses stream's error event both carry the vendor's code (context overflow)."""
    import json

    from schemas.errors import VendorBadRequest

    async def chunks() -> AsyncIterator[dict[str, Any] | Usage]:
        err = VendorBadRequest("openai: HTTP 400: too long", param="messages")
        err.vendor_code = "context_length_exceeded"
        raise err
        yield {}

    raw = (await collect(openai_sse(chunks(), include_usage=False))).decode()
    lines = [b.removeprefix("data: ") for b in raw.strip().split("\n\n")]
    assert lines[-1] == "[DONE]"
    assert json.loads(lines[-2])["error"]["code"] == "context_length_exceeded"
    events = _response_events(await collect(responses_sse(chunks(), {"model": "m"}, "resp_1")))
    assert events[-2]["code"] == "context_length_exceeded"


async def test_an_openai_stream_that_hits_a_bug_still_ends_with_an_error_line(
    caplog: Any,
) -> None:
    """An unexpected exception mid-stream is logged, and the client gets an ``error``
    line (internal_error) and ``[DONE]``, which the official SDK raises as an API error,
    rather than a stream cut with no word (or, over ASGI, one that seems to end well)."""
    import json

    import httpx2
    import openai

    async def chunks() -> AsyncIterator[dict[str, Any] | Usage]:
        head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        delta = {"role": "assistant", "content": "Hel"}
        yield {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        raise KeyError("a bug")

    raw = await collect(openai_sse(chunks(), include_usage=False))
    lines = [b.removeprefix("data: ") for b in raw.decode().strip().split("\n\n")]
    assert lines[-1] == "[DONE]"
    error = json.loads(lines[-2])["error"]
    assert (error["code"], error["message"]) == (
        "internal_error",
        "internal error; it has been logged",
    )
    assert "OpenAI stream failed" in caplog.text and "KeyError: 'a bug'" in caplog.text

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
    oa = openai.AsyncOpenAI(api_key="x", base_url="http://v/v1", http_client=http, max_retries=0)
    said: list[str] = []
    with pytest.raises(openai.APIError, match="internal error"):
        stream = await oa.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for chunk in stream:
            said.append(chunk.choices[0].delta.content or "")
    assert said == ["Hel"]


@pytest.mark.parametrize("dialect", ["openai", "anthropic", "responses"])
@pytest.mark.parametrize("failure", ["vendor", "bug"])
async def test_a_stream_s_failure_is_counted_once_in_every_dialect(
    dialect: str, failure: str
) -> None:
    """A failure after the stream began is an error the client hears, counted once
    (relay_errors_total) whichever dialect says it: the vendor's, by its own code; a
    bug of ours, as internal_error."""
    from gateway.metrics import ERRORS
    from schemas.errors import VendorUnavailable

    async def chunks() -> AsyncIterator[dict[str, Any] | Usage]:
        delta = {"role": "assistant", "content": "Hel"}
        yield {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        if failure == "vendor":
            raise VendorUnavailable("down")
        raise TypeError("a bug")

    labels = ("vendor_unavailable", "502") if failure == "vendor" else ("internal_error", "500")
    counter = ERRORS.labels(*labels, "realtime")
    before = counter._value.get()
    frames = {
        "openai": lambda: openai_sse(chunks(), include_usage=False),
        "anthropic": lambda: anthropic_sse(chunks(), "claude", "msg_1"),
        "responses": lambda: responses_sse(chunks(), {"model": "m"}, "resp_1"),
    }[dialect]()
    raw = await collect(frames)
    assert counter._value.get() == before + 1
    assert (b"internal error" in raw) == (failure == "bug")
