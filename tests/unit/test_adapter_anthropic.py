"""The Anthropic adapter against a MockTransport playing the Messages API."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import httpx
import pytest

from agents.adapters import AnthropicAdapter, VendorCall, VendorResult
from agents.adapters.base import CallsRefused
from schemas.config import VendorConfig
from schemas.errors import (
    BadRequest,
    VendorAnswerUnreadable,
    VendorAuthFailed,
    VendorBadRequest,
    VendorNotFound,
    VendorOverloaded,
    VendorRateLimited,
    VendorRequestTooLarge,
    VendorUnavailable,
    VendorUnsupported,
)
from schemas.formats.anthropic import MessageEventsToChunks, opening_usage
from schemas.formats.openai import assemble_chunks
from schemas.usage import Usage

BASE = "https://api.anthropic.com"
KEY = "made-up-anthropic-key-for-tests"
PNG = "iVBORw0KGgo="
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
# A multi-turn OpenAI-format conversation: system prompt, an image, a tool round trip.
BODY = {
    "model": "relay-alias",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Where is this, and the weather there?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_01",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_01", "content": "12C"},
    ],
    "tools": TOOLS,
    "tool_choice": "auto",
    "max_tokens": 300,
    "stream": True,
}
MESSAGES_BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 300,
    "system": "You are terse.",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Where is this, and the weather there?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {"city": "Oslo"}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "12C"}],
        },
    ],
    "tools": [
        {
            "name": "weather",
            "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ],
}
MESSAGE = {
    "id": "msg_01XFD",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Oslo, 12C."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 40,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 2000,
        "output_tokens": 6,
    },
}


def adapter_for(handler, base: str = BASE, api_version: str | None = None) -> AnthropicAdapter:
    config = VendorConfig(kind="anthropic", base_url=base, api_version=api_version, timeout_s=9)
    return AnthropicAdapter(config, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def call(body: dict | None = None) -> VendorCall:
    return VendorCall(model="claude-sonnet-4-5", body=body or BODY, api_key=KEY, timeout_s=20)


def recorder(*responses: httpx.Response):
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return seen, handler


def sse(*events: tuple[str, dict]) -> bytes:
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
    )


async def test_chat_translates_request_and_answer():
    seen, handler = recorder(httpx.Response(200, json=MESSAGE))
    result = await adapter_for(handler).chat(call())

    request = seen[0]
    assert str(request.url) == f"{BASE}/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert json.loads(request.content) == MESSAGES_BODY
    assert result.usage == Usage(input_tokens=2040, output_tokens=6, cache_read_tokens=2000)
    assert result.body["id"] == "msg_01XFD"
    assert result.body["choices"][0]["message"] == {"role": "assistant", "content": "Oslo, 12C."}
    assert result.body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("answer", "cls", "said"),
    [
        (
            {"type": "error", "error": {"type": "overloaded_error", "message": f"busy {KEY}"}},
            VendorOverloaded,
            "anthropic: overloaded_error: busy [redacted]",
        ),
        (
            {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}},
            VendorBadRequest,
            "anthropic: invalid_request_error: bad",
        ),
        (
            {"error": {"message": f"upstream failed for {KEY}", "code": 502}},
            VendorUnavailable,
            "anthropic: HTTP 200 without a message: upstream failed for [redacted]",
        ),
        ({**MESSAGE, "content": None}, VendorUnavailable, "anthropic: HTTP 200 without a message"),
        ({**MESSAGE, "type": "completion"}, VendorUnavailable, "without a message"),
        ([MESSAGE], VendorUnavailable, "not an object"),
    ],
)
async def test_a_200_that_is_not_a_message_is_the_vendor_s_error_never_an_empty_answer(
    answer, cls, said
):
    """An Anthropic-compatible gateway may answer a failure with a 200: read as a Message
    it would be an empty, free answer, cached and served again."""
    _, handler = recorder(httpx.Response(200, json=answer))
    with pytest.raises(cls) as err:
        await adapter_for(handler).chat(call())
    assert type(err.value) is cls
    assert said in err.value.message and KEY not in err.value.message


async def test_count_tokens_answered_with_an_error_body_raises_it():
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}
    _, handler = recorder(httpx.Response(200, json=body), httpx.Response(200, json={}))
    with pytest.raises(VendorRateLimited):
        await adapter_for(handler).count_tokens(call())
    with pytest.raises(VendorUnavailable, match="without input_tokens"):
        await adapter_for(handler).count_tokens(call())


@pytest.mark.parametrize("base", [BASE + "/v1", BASE + "/v1/", BASE + "/"])
async def test_base_url_with_or_without_v1(base):
    seen, handler = recorder(httpx.Response(200, json=MESSAGE))
    await adapter_for(handler, base=base, api_version="2024-01-01").chat(call())
    assert str(seen[0].url) == f"{BASE}/v1/messages"
    assert seen[0].headers["anthropic-version"] == "2024-01-01"


def event(name: str, **data) -> tuple[str, dict]:
    return name, {"type": name, **data}


def delta(index: int, **fields) -> tuple[str, dict]:
    return event("content_block_delta", index=index, delta=fields)


START: dict[str, Any] = {
    "id": "msg_s",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [],
    "stop_reason": None,
    "stop_sequence": None,
    "usage": {
        "input_tokens": 12,
        "cache_creation_input_tokens": 500,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    },
}
TOOL_BLOCK = {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {}}
STREAM = [
    event("message_start", message=START),
    event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
    event("ping"),
    delta(0, type="text_delta", text="Checking"),
    event("content_block_stop", index=0),
    event("content_block_start", index=1, content_block=TOOL_BLOCK),
    delta(1, type="input_json_delta", partial_json='{"ci'),
    delta(1, type="input_json_delta", partial_json='ty": "Bergen"}'),
    event("content_block_stop", index=1),
    event(
        "message_delta",
        delta={"stop_reason": "tool_use", "stop_sequence": None},
        usage={"output_tokens": 27},
    ),
    event("message_stop"),
]


async def test_stream_turns_events_into_chunks_and_usage():
    seen, handler = recorder(httpx.Response(200, content=sse(*STREAM)))
    items = [item async for item in adapter_for(handler).stream(call())]

    assert json.loads(seen[0].content) == {**MESSAGES_BODY, "stream": True}
    *chunks, usage = items
    assert usage == Usage(input_tokens=512, output_tokens=27, cache_write_tokens=500)
    answer = assemble_chunks(chunks)
    assert answer["id"] == "msg_s"
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert answer["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Checking",
        "tool_calls": [
            {
                "id": "toolu_9",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Bergen"}'},
            }
        ],
    }
    # the tool call's id and name come before any of its argument fragments
    tool_deltas = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if "tool_calls" in c["choices"][0]["delta"]
    ]
    assert tool_deltas[0]["id"] == "toolu_9" and tool_deltas[0]["function"]["arguments"] == ""


async def test_the_opening_chunk_carries_the_prompt_the_vendor_counted():
    """message_start's counts come with the stream's first chunk, before any answer: a
    stream cut after it is billed them (``opening_usage``), its output alone estimated."""
    _, handler = recorder(httpx.Response(200, content=sse(*STREAM[:2])))
    items = []
    with pytest.raises(VendorUnavailable, match="before message_stop"):
        async for item in adapter_for(handler).stream(call()):
            items.append(item)
    first, *rest = items
    assert opening_usage(first) == Usage(input_tokens=512, output_tokens=1, cache_write_tokens=500)
    assert [opening_usage(c) for c in rest] == [None] * len(rest)


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": 0, "output_tokens": 0},  # a compatible server counting at the end
        {"input_tokens": "many"},
        {"input_tokens": {"n": 3}},
        None,
    ],
)
def test_an_opening_without_a_readable_count_of_its_prompt_leaves_the_estimate(usage):
    convert = MessageEventsToChunks()
    message = {**START, "usage": usage}
    [opening] = convert.feed("message_start", {"type": "message_start", "message": message})
    assert opening_usage(opening) is None


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("overloaded_error", VendorOverloaded),
        ("api_error", VendorUnavailable),
        ("rate_limit_error", VendorRateLimited),
        ("invalid_request_error", VendorBadRequest),
    ],
)
async def test_stream_error_event_raises_the_mapped_error(kind, cls):
    error = ("error", {"type": "error", "error": {"type": kind, "message": "Overloaded"}})
    _, handler = recorder(httpx.Response(200, content=sse(*STREAM[:4], error)))

    items = []
    with pytest.raises(cls) as err:
        async for item in adapter_for(handler).stream(call()):
            items.append(item)
    assert type(err.value) is cls
    assert err.value.message == f"anthropic: {kind}: Overloaded"
    assert len(items) == 2  # the role chunk and "Checking" went out first


async def test_stream_cut_before_message_stop_is_vendor_unavailable():
    _, handler = recorder(httpx.Response(200, content=sse(*STREAM[:5])))
    with pytest.raises(VendorUnavailable, match="before message_stop"):
        _ = [item async for item in adapter_for(handler).stream(call())]


async def test_stream_ends_at_message_stop_though_the_connection_stays_open():
    """A keep-alive proxy may hold the connection after the last event: the answer is
    whole at message_stop, not when the read times out (then reported as a failure)."""

    class Held(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield sse(*STREAM)
            await asyncio.sleep(3600)

    _, handler = recorder(httpx.Response(200, stream=Held()))

    async def read() -> list:
        return [item async for item in adapter_for(handler).stream(call())]

    *_, usage = await asyncio.wait_for(read(), 2)
    assert usage == Usage(input_tokens=512, output_tokens=27, cache_write_tokens=500)


@pytest.mark.parametrize(
    ("status", "kind", "cls"),
    [
        (400, "invalid_request_error", VendorBadRequest),
        (401, "authentication_error", VendorAuthFailed),
        (403, "permission_error", VendorAuthFailed),
        (404, "not_found_error", VendorNotFound),
        (413, "request_too_large", VendorRequestTooLarge),
        (500, "api_error", VendorUnavailable),
        (529, "overloaded_error", VendorOverloaded),
    ],
)
async def test_error_statuses_map_to_the_error_tree(status, kind, cls):
    body = {"type": "error", "error": {"type": kind, "message": "messages.0: bad"}}
    _, handler = recorder(httpx.Response(status, json=body))
    with pytest.raises(cls) as err:
        await adapter_for(handler).chat(call())
    assert type(err.value) is cls
    assert err.value.message == f"anthropic: HTTP {status}: messages.0: bad"


async def test_stream_rate_limited_status_carries_retry_after():
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}
    _, handler = recorder(httpx.Response(429, json=body, headers={"retry-after": "13"}))
    with pytest.raises(VendorRateLimited) as err:
        _ = [item async for item in adapter_for(handler).stream(call())]
    assert err.value.retry_after == 13.0


async def test_a_429_without_retry_after_waits_for_the_exhausted_limit_s_reset():
    from datetime import UTC, datetime, timedelta

    def at(seconds: float) -> str:
        return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")

    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}
    headers = {
        "anthropic-ratelimit-requests-remaining": "40",
        "anthropic-ratelimit-requests-reset": at(2),
        "anthropic-ratelimit-input-tokens-remaining": "0",
        "anthropic-ratelimit-input-tokens-reset": at(30),
    }
    _, handler = recorder(httpx.Response(429, json=body, headers=headers))
    with pytest.raises(VendorRateLimited) as err:
        await adapter_for(handler).chat(call())
    assert err.value.retry_after is not None and 28 < err.value.retry_after <= 30


async def test_untranslatable_request_fails_before_any_http():
    seen, handler = recorder()
    body = {"messages": [{"role": "user", "content": [{"type": "hologram"}]}]}
    with pytest.raises(BadRequest, match="hologram"):
        await adapter_for(handler).chat(call(body))
    audio = {
        "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]
    }
    with pytest.raises(VendorUnsupported, match="audio"):  # an OpenAI candidate may hear it
        await adapter_for(handler).chat(call(audio))
    assert seen == []


async def test_count_tokens_sends_only_the_fields_it_accepts():
    seen, handler = recorder(httpx.Response(200, json={"input_tokens": 2095}))
    assert await adapter_for(handler).count_tokens(call()) == 2095

    assert str(seen[0].url) == f"{BASE}/v1/messages/count_tokens"
    sent = json.loads(seen[0].content)
    assert sent == {k: v for k, v in MESSAGES_BODY.items() if k != "max_tokens"}


async def test_submit_batch_sends_translated_params():
    seen, handler = recorder(
        httpx.Response(
            200,
            json={"id": "msgbatch_01", "type": "message_batch", "processing_status": "in_progress"},
        )
    )
    other = {"messages": [{"role": "user", "content": "hi"}]}
    batch_id = await adapter_for(handler).submit_batch([("a", call()), ("b", call(other))], KEY)

    assert batch_id == "msgbatch_01"
    assert str(seen[0].url) == f"{BASE}/v1/messages/batches"
    assert seen[0].headers["x-api-key"] == KEY
    assert json.loads(seen[0].content) == {
        "requests": [
            {"custom_id": "a", "params": MESSAGES_BODY},
            {
                "custom_id": "b",
                "params": {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 4096,
                    "messages": other["messages"],
                },
            },
        ]
    }


def _dropped_after_sending() -> httpx.ConnectTimeout:
    """What httpx-aiohttp raises for a connection the vendor closed after the request went
    out: a ConnectTimeout, from aiohttp's ServerDisconnectedError."""
    try:
        raise httpx.ConnectTimeout("Server disconnected") from aiohttp.ServerDisconnectedError()
    except httpx.ConnectTimeout as exc:
        return exc


@pytest.mark.parametrize(
    "lost",
    [
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected"),
        _dropped_after_sending(),
        httpx.Response(500, json={"type": "error", "error": {"type": "api_error"}}),
        httpx.Response(502, text="Bad Gateway"),
        httpx.Response(200, json={"type": "message_batch"}),  # no id
    ],
)
async def test_a_batch_create_call_that_failed_unclearly_fails_its_requests_for_good(lost):
    """A message batch carries nothing to find it by: one whose create call went out and
    failed without a clear answer may have been made (to run and bill), so its requests
    are never sent again."""

    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(lost, Exception):
            raise lost
        return lost

    with pytest.raises(VendorAnswerUnreadable) as caught:
        await adapter_for(handler).submit_batch([("a", call())], KEY)
    assert not caught.value.retryable and "not sent again" in caught.value.message


def _connect_timed_out() -> httpx.ConnectTimeout:
    """httpx-aiohttp's ConnectTimeout for a connect that timed out (nothing went out)."""
    try:
        raise httpx.ConnectTimeout("Connection timeout") from aiohttp.ConnectionTimeoutError()
    except httpx.ConnectTimeout as exc:
        return exc


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (httpx.ConnectError("Connection refused"), VendorUnavailable),
        (httpx.ConnectError("Name or service not known"), VendorUnavailable),
        (httpx.ConnectTimeout("timed out"), VendorUnavailable),
        (_connect_timed_out(), VendorUnavailable),
        (
            httpx.Response(529, json={"type": "error", "error": {"type": "overloaded_error"}}),
            VendorOverloaded,
        ),
        (httpx.Response(503, text="Service Unavailable"), VendorOverloaded),
        (
            httpx.Response(429, json={"type": "error", "error": {"type": "rate_limit_error"}}),
            VendorRateLimited,
        ),
    ],
    ids=["refused", "dns", "connect-timeout", "aiohttp-connect-timeout", "529", "503", "429"],
)
async def test_a_batch_create_call_that_never_went_out_or_was_turned_away_stands(failure, error):
    """No connection (nothing was sent), or the vendor busy or limiting (it turned the
    call away): no batch was made, so the failure stands as it is, retryable, and the
    batch's requests go on the realtime way."""

    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(failure, Exception):
            raise failure
        return failure

    with pytest.raises(error) as caught:
        await adapter_for(handler).submit_batch([("a", call())], KEY)
    assert caught.value.retryable and not isinstance(caught.value, VendorAnswerUnreadable)


async def test_a_batch_leaves_out_only_the_requests_anthropic_cannot_take():
    """A stop sequence of whitespace alone is that request's refusal, named before
    anything is sent, so the lane can send the others in the batch without it."""
    seen, handler = recorder()
    newline = call({**BODY, "stop": ["\n"]})
    with pytest.raises(CallsRefused) as caught:
        await adapter_for(handler).submit_batch([("a", call()), ("b", newline)], KEY)
    [(cid, refusal)] = caught.value.refused.items()
    assert cid == "b" and isinstance(refusal, VendorUnsupported) and refusal.retryable
    assert seen == []


async def test_a_refused_batch_create_stands():
    _, handler = recorder(
        httpx.Response(
            400,
            json={"type": "error", "error": {"type": "invalid_request_error", "message": "no"}},
        )
    )
    with pytest.raises(VendorBadRequest):
        await adapter_for(handler).submit_batch([("a", call())], KEY)


async def test_poll_batch_is_none_while_in_progress():
    _, handler = recorder(
        httpx.Response(200, json={"id": "msgbatch_01", "processing_status": "in_progress"})
    )
    assert await adapter_for(handler).poll_batch("msgbatch_01", KEY) is None


async def test_poll_batch_reads_every_kind_of_result():
    results_url = "https://elsewhere.test/v1/messages/batches/msgbatch_01/results"
    lines = [
        {"custom_id": "ok", "result": {"type": "succeeded", "message": MESSAGE}},
        {
            "custom_id": "bad",
            "result": {
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "max_tokens: too big"},
                },
            },
        },
        {"custom_id": "late", "result": {"type": "expired"}},
        {"custom_id": "stopped", "result": {"type": "canceled"}},
    ]
    seen, handler = recorder(
        httpx.Response(
            200,
            json={"id": "msgbatch_01", "processing_status": "ended", "results_url": results_url},
        ),
        httpx.Response(200, text="\n".join(json.dumps(x) for x in lines) + "\n"),
    )
    results = await adapter_for(handler).poll_batch("msgbatch_01", KEY)

    assert str(seen[0].url) == f"{BASE}/v1/messages/batches/msgbatch_01"
    assert str(seen[1].url) == f"{BASE}/v1/messages/batches/msgbatch_01/results"
    assert seen[1].headers["x-api-key"] == KEY
    assert isinstance(results["ok"], VendorResult)
    assert results["ok"].usage == Usage(input_tokens=2040, output_tokens=6, cache_read_tokens=2000)
    assert isinstance(results["bad"], VendorBadRequest)
    assert results["bad"].message == "anthropic: invalid_request_error: max_tokens: too big"
    assert isinstance(results["late"], VendorUnavailable)
    assert isinstance(results["stopped"], VendorUnavailable)


async def test_a_batch_result_that_cannot_be_read_is_its_request_s_alone():
    """The vendor ran the request and may have billed it: an answer nobody can read is
    that request's VendorAnswerUnreadable (never sent again), and the batch's other
    answers are read all the same."""
    bad_count = {**MESSAGE, "usage": {"input_tokens": "a", "output_tokens": 6}}
    error_body = {"type": "error", "error": {"type": "api_error", "message": "x"}}
    lines = [
        {"custom_id": "ok", "result": {"type": "succeeded", "message": MESSAGE}},
        {"custom_id": "count", "result": {"type": "succeeded", "message": bad_count}},
        {"custom_id": "string", "result": "succeeded"},
        {"custom_id": "none", "result": None},
        {"custom_id": "error", "result": {"type": "succeeded", "message": error_body}},
        {"custom_id": "block", "result": {"type": "succeeded", "message": {**MESSAGE, "content": ["x"]}}},
        {"custom_id": "errored", "result": {"type": "errored", "error": "overloaded"}},
        {"custom_id": "odd", "result": {"type": "pending"}},
        {"custom_id": "late", "result": {"type": "expired"}},
    ]  # fmt: skip
    _, handler = recorder(
        httpx.Response(200, json={"id": "msgbatch_01", "processing_status": "ended"}),
        httpx.Response(200, text="\n".join(json.dumps(x) for x in lines) + "\n"),
    )
    results = await adapter_for(handler).poll_batch("msgbatch_01", KEY)
    assert isinstance(results.pop("ok"), VendorResult)
    late = results.pop("late")
    assert type(late) is VendorUnavailable and late.retryable, "never run: another route may"
    assert set(results) == {"count", "string", "none", "error", "block", "errored", "odd"}
    for got in results.values():
        assert isinstance(got, VendorAnswerUnreadable) and not got.retryable


async def test_cancel_batch_posts_to_the_message_batch_s_cancel_path():
    body = {"id": "msgbatch_01", "type": "message_batch", "processing_status": "canceling"}
    seen, handler = recorder(httpx.Response(200, json=body))
    await adapter_for(handler).cancel_batch("msgbatch_01", KEY)
    assert seen[0].method == "POST"
    assert str(seen[0].url) == f"{BASE}/v1/messages/batches/msgbatch_01/cancel"
    assert seen[0].headers["x-api-key"] == KEY and seen[0].headers["anthropic-version"]


async def test_overloaded_status_keeps_retry_after_for_the_breaker():
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    _, handler = recorder(httpx.Response(529, json=body, headers={"retry-after": "4"}))
    with pytest.raises(VendorOverloaded) as err:
        await adapter_for(handler).chat(call())
    assert err.value.retry_after == 4.0
    assert (err.value.status, err.value.type) == (503, "overloaded_error")


async def test_the_client_s_beta_features_go_as_the_anthropic_beta_header_not_in_the_body():
    asked = {**BODY, "anthropic_beta": ["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"]}
    count = httpx.Response(200, json={"input_tokens": 7})
    seen, handler = recorder(
        httpx.Response(200, json=MESSAGE),
        httpx.Response(200, content=sse(*STREAM)),
        count,
        httpx.Response(200, json=MESSAGE),
    )
    adapter = adapter_for(handler)
    await adapter.chat(call(asked))
    _ = [item async for item in adapter.stream(call(asked))]
    await adapter.count_tokens(call(asked))
    want = "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
    assert [r.headers.get("anthropic-beta") for r in seen] == [want] * 3
    assert all("anthropic_beta" not in json.loads(r.content) for r in seen)
    await adapter.chat(call())
    assert "anthropic-beta" not in seen[-1].headers, "none asked, none sent"


async def test_a_batch_goes_out_with_the_beta_features_its_requests_asked():
    """The lane batches requests by the betas they ask (as their anthropic-beta header):
    the batch carries them as realtime calls do."""
    seen, handler = recorder(
        httpx.Response(200, json={"id": "msgbatch_01", "processing_status": "in_progress"})
    )
    asked = call({**BODY, "anthropic_beta": ["output-128k-2025-02-19", "context-1m-2025-08-07"]})
    await adapter_for(handler).submit_batch([("a", asked)], KEY)
    assert seen[0].headers["anthropic-beta"] == "output-128k-2025-02-19,context-1m-2025-08-07"
    assert "anthropic_beta" not in json.loads(seen[0].content)["requests"][0]["params"]


async def test_batch_results_keep_an_answer_holding_a_unicode_line_separator():
    message = {**MESSAGE, "content": [{"type": "text", "text": "a\u2028b"}]}
    line = {"custom_id": "ok", "result": {"type": "succeeded", "message": message}}
    _, handler = recorder(
        httpx.Response(200, json={"id": "msgbatch_01", "processing_status": "ended"}),
        httpx.Response(200, content=(json.dumps(line, ensure_ascii=False) + "\n").encode()),
    )
    results = await adapter_for(handler).poll_batch("msgbatch_01", KEY)
    assert isinstance(results["ok"], VendorResult)
    assert results["ok"].body["choices"][0]["message"]["content"] == "a\u2028b"


async def test_a_server_tool_smuggled_in_a_neutral_body_is_refused_before_sending():
    """Server tools (web search, code execution: billed per use, beside the tokens) are
    refused on /v1/messages; a chat body naming one in ``anthropic_tool`` is too."""
    seen, handler = recorder(httpx.Response(200, json=MESSAGE))
    server = {"type": "web_search_20250305", "name": "web_search", "max_uses": 50}
    smuggled = {"type": "function", "function": {"name": "web_search"}, "anthropic_tool": server}
    body = {"messages": [{"role": "user", "content": "search"}], "tools": [smuggled]}
    with pytest.raises(BadRequest, match="web_search_20250305"):
        await adapter_for(handler).chat(call(body))
    assert seen == []
    bash = {"type": "bash_20250124", "name": "bash"}
    client_run = {"type": "function", "function": {"name": "bash"}, "anthropic_tool": bash}
    await adapter_for(handler).chat(call({**body, "tools": [client_run]}))
    assert json.loads(seen[0].content)["tools"] == [bash]
